"""What a deploy reports while it runs: plain event values and the callback that receives them.

The deployer and the custom-weights download draw nothing themselves. They call an
:data:`EventSink` with the values below; :mod:`nim_async.ui` draws them on a console (progress
bars for pulls and downloads, container log lines, state changes), and a program can pass its
own sink to show them anywhere else or to record them::

    events: list[DeployEvent] = []
    await AsyncNIMDeployer(config, on_event=events.append).deploy()

Which sink a deploy uses (:func:`resolve_sink`): the ``on_event`` the caller gave, else the
console reporter unless ``quiet``, else none. The console reporter is installed by the package
(``nim_async/__init__.py`` calls :func:`set_console_reporter` with :mod:`nim_async.ui`'s); without
one, :class:`PlainReporter` writes plain lines. This module does no IO of its own.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol

__all__ = [
    "DeployEvent",
    "DeployState",
    "EventSink",
    "Level",
    "LogLine",
    "Notice",
    "PlainReporter",
    "PullTracker",
    "StateChanged",
    "TransferFinished",
    "TransferProgress",
    "TransferStarted",
    "resolve_sink",
    "set_console_reporter",
]


class Level(StrEnum):
    """How a :class:`Notice` should be shown."""

    INFO = "info"
    NOTE = "note"
    WARNING = "warning"


class DeployState(StrEnum):
    """The steps of a deploy (and of a stop) that a :class:`StateChanged` announces."""

    IMAGE_PRESENT = "image-present"
    REMOVING_EXISTING = "removing-existing"
    STARTING = "starting"
    REUSING = "reusing"
    READY = "ready"
    STOPPING = "stopping"
    REMOVED = "removed"
    NOT_FOUND = "not-found"


@dataclass(frozen=True, slots=True)
class StateChanged:
    """The deploy reached a new step.

    Attributes:
        state: The step.
        container: The container it concerns.
        message: One line for a person, without markup.
    """

    state: DeployState
    container: str
    message: str


@dataclass(frozen=True, slots=True)
class Notice:
    """A line for the person watching that is not a state change (a note, a warning).

    Attributes:
        text: The line, without markup.
        level: How to show it.
    """

    text: str
    level: Level = Level.INFO


@dataclass(frozen=True, slots=True)
class LogLine:
    """One line the container wrote (secrets already scrubbed).

    Attributes:
        container: Container name.
        line: The line, without its line break.
    """

    container: str
    line: str


@dataclass(frozen=True, slots=True)
class TransferStarted:
    """A group of byte transfers begins: an image pull (one per layer) or a weights download.

    Attributes:
        title: A heading to print, or ``None`` for none.
    """

    title: str | None


@dataclass(frozen=True, slots=True)
class TransferProgress:
    """Progress of one transfer of the current group.

    Attributes:
        key: Identifies the transfer within its group (a layer id, a download label).
        description: What to label it with.
        completed: Bytes done, or ``None`` to leave it as it was.
        total: Bytes in all, or ``None`` to leave it as it was (unknown, after a restart).
        phase: What it is doing (``Downloading``, ``Extracting``, ``Pull complete``; may be "").
        restart: The transfer began a new phase whose byte counts start again from zero.
    """

    key: str
    description: str
    completed: int | None = None
    total: int | None = None
    phase: str = ""
    restart: bool = False


@dataclass(frozen=True, slots=True)
class TransferFinished:
    """The current transfer group ended.

    Attributes:
        summary: One line about it (sizes, speed), or ``None`` when it failed.
    """

    summary: str | None


DeployEvent = (
    StateChanged | Notice | LogLine | TransferStarted | TransferProgress | TransferFinished
)
"""Every value an :data:`EventSink` receives."""

EventSink = Callable[[DeployEvent], None]
"""A callback receiving deploy events; it must not block (it runs on the event loop)."""


class _Printable(Protocol):
    def print(self, *objects: Any, **kwargs: Any) -> None: ...


ReporterFactory = Callable[[Any], EventSink]
_console_reporter: ReporterFactory | None = None


def set_console_reporter(factory: ReporterFactory | None) -> None:
    """Install what draws events on a console when a caller gives no sink and is not quiet.

    Args:
        factory: Called with the caller's ``console`` argument (``None`` for the default
            console); returns the sink. ``None`` falls back to :class:`PlainReporter`.
    """
    global _console_reporter
    _console_reporter = factory


def resolve_sink(
    *, quiet: bool, on_event: EventSink | None = None, console: Any = None
) -> EventSink | None:
    """The sink a deploy reports to.

    Args:
        quiet: Show nothing on a console.
        on_event: The caller's own sink; when given it receives every event (also when
            ``quiet``) and nothing is drawn.
        console: Handed to the console reporter (for :mod:`nim_async.ui`, a rich console).

    Returns:
        ``on_event``; else the console reporter unless ``quiet``; else ``None``.
    """
    if on_event is not None:
        return on_event
    if quiet:
        return None
    if _console_reporter is not None:
        return _console_reporter(console)
    return PlainReporter(console)


class PlainReporter:
    """Writes events as plain lines (no progress bars): the fallback console reporter.

    Args:
        console: An object with a ``print`` method (used without markup); ``None`` writes to
            ``sys.stderr``.
    """

    def __init__(self, console: _Printable | None = None) -> None:
        self._console = console
        self._phases: dict[str, str] = {}

    def _line(self, text: str) -> None:
        if self._console is not None:
            self._console.print(text, markup=False, highlight=False)
        else:
            sys.stderr.write(text + "\n")

    def __call__(self, event: DeployEvent) -> None:
        """Write ``event`` if it has something to say."""
        match event:
            case StateChanged(message=message) | TransferFinished(summary=str(message)):
                self._line(message)
            case Notice(text=text, level=level):
                prefix = {Level.NOTE: "Note: ", Level.WARNING: "Warning: "}.get(level, "")
                self._line(prefix + text)
            case LogLine(container=container, line=line):
                self._line(f"{container} | {line}")
            case TransferStarted(title=str(title)):
                self._line(title)
            case TransferProgress(key=key, description=description, phase=phase):
                if phase and self._phases.get(key) != phase:
                    self._phases[key] = phase
                    self._line(f"{description}: {phase}")


_DONE_PHASES = ("Pull complete", "Already exists", "Download complete")


@dataclass
class PullTracker:
    """Turns the Docker engine's pull progress objects into :class:`TransferProgress` events.

    It also counts the layers and their sizes for the closing summary.

    Args:
        ref: The image being pulled.
    """

    ref: str
    started: float = field(default_factory=time.perf_counter)
    layers: dict[str, str] = field(default_factory=dict)
    """Phase of each layer seen so far."""
    layer_bytes: dict[str, int] = field(default_factory=dict)
    """Download size of each layer that reported one."""
    _totals: dict[str, int | None] = field(default_factory=dict)

    def start(self) -> TransferStarted:
        """The event that opens the pull."""
        return TransferStarted(f"Pulling {self.ref}")

    def feed(self, raw: Mapping[str, Any]) -> DeployEvent | None:
        """The event for one engine progress object, or ``None`` when it says nothing.

        Args:
            raw: One object of the engine's pull stream (``status``, ``id``, ``progressDetail``).
        """
        status = str(raw.get("status", ""))
        layer = raw.get("id")
        if not layer or status.startswith("Pulling from"):
            if status and not status.startswith("Pulling from"):
                return Notice(status)
            return None
        key = str(layer)
        detail = raw.get("progressDetail") or {}
        total = detail.get("total") if isinstance(detail.get("total"), int) else None
        current = detail.get("current") if isinstance(detail.get("current"), int) else None
        previous = self.layers.get(key)
        self.layers[key] = status
        restart = status in ("Downloading", "Extracting") and previous != status
        if restart:
            self._totals[key] = total
        if status == "Downloading" and total is not None:
            self.layer_bytes[key] = total
        if current is not None and total is not None:
            self._totals[key] = total
        elif current is None and status in _DONE_PHASES:
            current = self._totals.get(key) or 0
        return TransferProgress(
            key=key,
            description=f"layer {key}",
            completed=current,
            total=total,
            phase=status,
            restart=restart,
        )

    def summary(self) -> str:
        """One line: layers, megabytes, seconds and speed of the pull."""
        elapsed = max(time.perf_counter() - self.started, 1e-6)
        size = sum(self.layer_bytes.values())
        return (
            f"Pulled {self.ref}: {len(self.layers)} layers, {size / 1e6:.1f} MB in "
            f"{elapsed:.1f} s ({size / 1e6 / elapsed:.1f} MB/s)"
        )
