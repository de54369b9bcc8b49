"""Draws deploy events (:mod:`nim_async.deploy.events`) on a rich console.

:class:`ConsoleReporter` is the sink a deploy uses when the caller is not quiet and gives no
``on_event``: state changes and notices as lines, container logs prefixed with the container's
name, and image pulls and weight downloads as one :class:`~nim_async.ui.progress.ProgressDisplay`
each (per-layer bytes and speed; bytes, speed and ETA).
"""

from __future__ import annotations

from collections.abc import Mapping
from types import TracebackType
from typing import Any, Self

from rich.console import Console
from rich.markup import escape
from rich.text import Text

from nim_async.deploy.events import (
    DeployEvent,
    DeployState,
    Level,
    LogLine,
    Notice,
    PullTracker,
    StateChanged,
    TransferFinished,
    TransferProgress,
    TransferStarted,
)
from nim_async.ui.progress import ProgressDisplay, byte_columns

__all__ = ["ConsoleReporter", "PullDisplay", "console_reporter"]

_LABELS = {
    Level.NOTE: "[yellow]Note[/]: ",
    Level.WARNING: "[yellow]Warning[/]: ",
}


class ConsoleReporter:
    """An :data:`~nim_async.deploy.events.EventSink` that draws on a rich console.

    Args:
        console: Where to draw (default: a console on stderr).
    """

    def __init__(self, console: Console | None = None) -> None:
        self.console = console if console is not None else Console(stderr=True)
        self._display: ProgressDisplay | None = None

    def __call__(self, event: DeployEvent) -> None:
        """Draw one event."""
        match event:
            case StateChanged():
                self._state(event)
            case Notice(text=text, level=level):
                self.console.print(_LABELS.get(level, "") + escape(text), highlight=False)
            case LogLine(container=container, line=line):
                prefix = Text(f"{container} | ", style="dim")
                self.console.print(prefix + Text(line), highlight=False)
            case TransferStarted(title=title):
                self._start(title)
            case TransferProgress():
                self._progress(event)
            case TransferFinished(summary=summary):
                self._finish(summary)

    def _state(self, event: StateChanged) -> None:
        text = escape(event.message)
        if event.container:
            text = text.replace(escape(event.container), f"[bold]{escape(event.container)}[/]", 1)
        if event.state is DeployState.READY:
            text = f"[green]Ready[/]: {text}"
        self.console.print(text)

    def _start(self, title: str | None) -> None:
        self._finish(None)
        if title is not None:
            self.console.print(_bold_tail(title))
        self._display = ProgressDisplay(self.console, byte_columns(eta=title is None))
        self._display.start()

    def _progress(self, event: TransferProgress) -> None:
        if self._display is None:
            self._start(None)
        assert self._display is not None
        self._display.update(
            event.key,
            description=event.description,
            completed=event.completed,
            total=event.total,
            restart=event.restart,
            phase=event.phase,
        )

    def _finish(self, summary: str | None) -> None:
        display, self._display = self._display, None
        if display is not None:
            display.stop()
        if summary is not None:
            self.console.print(summary, markup=False, highlight=False)

    def close(self) -> None:
        """Stop a progress display left running (after an interrupted transfer)."""
        self._finish(None)


def _bold_tail(title: str) -> str:
    """``Pulling [bold]ref[/]``: the object of a heading in bold."""
    verb, _, rest = title.partition(" ")
    return f"{escape(verb)} [bold]{escape(rest)}[/]"


def console_reporter(console: Any = None) -> ConsoleReporter:
    """The factory :func:`nim_async.deploy.events.set_console_reporter` is given.

    Args:
        console: A rich console, or ``None`` for one on stderr.
    """
    return ConsoleReporter(console)


class PullDisplay:
    """Draws one image pull from the engine's raw progress objects (per-layer bytes, speed).

    Args:
        console: Where to draw.
        ref: The image being pulled.
    """

    def __init__(self, console: Console, ref: str) -> None:
        self.tracker = PullTracker(ref)
        self._reporter = ConsoleReporter(console)

    @property
    def tasks(self) -> list[str]:
        """The layers seen so far."""
        return list(self.tracker.layers)

    @property
    def layer_bytes(self) -> dict[str, int]:
        """Download size of each layer that reported one."""
        return self.tracker.layer_bytes

    def __enter__(self) -> Self:
        self._reporter(self.tracker.start())
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._reporter.close()

    def update(self, raw: Mapping[str, Any]) -> None:
        """Draw one progress object of the engine's pull stream."""
        event = self.tracker.feed(raw)
        if event is not None:
            self._reporter(event)

    def summary(self) -> str:
        """One line: layers, megabytes, seconds and speed of the pull."""
        return self.tracker.summary()
