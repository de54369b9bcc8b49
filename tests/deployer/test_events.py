"""Deploy events: the pull tracker, the plain fallback reporter, the sink choice, the scrubber."""

from __future__ import annotations

import io
from pathlib import Path

import orjson
import pytest
from pydantic import SecretStr
from rich.console import Console

from nim_async.deploy import events
from nim_async.deploy.deployer import AsyncNIMDeployer
from nim_async.deploy.events import (
    DeployState,
    Level,
    LogLine,
    Notice,
    PlainReporter,
    PullTracker,
    StateChanged,
    TransferFinished,
    TransferProgress,
    TransferStarted,
    resolve_sink,
)
from nim_async.protocol.scrub import Scrubber, scrub, strip_query
from nim_async.ui.deploy import ConsoleReporter

DATA = Path(__file__).parent / "data"


def _recorded_pull() -> list[dict[str, object]]:
    lines = (DATA / "pull-stream.jsonl").read_text().splitlines()
    return [orjson.loads(line) for line in lines]


def test_pull_tracker_turns_engine_objects_into_layer_progress() -> None:
    tracker = PullTracker("127.0.0.1:5555/nim/test:1.0")
    out = [e for e in map(tracker.feed, _recorded_pull()) if e is not None]
    progress = [e for e in out if isinstance(e, TransferProgress)]
    assert {e.key for e in progress} == set(tracker.layers)
    assert len(tracker.layers) == 4
    assert all(e.description == f"layer {e.key}" for e in progress)
    # A new phase restarts the byte count; a finished layer is shown complete.
    assert any(e.restart and e.phase == "Extracting" for e in progress)
    done = [e for e in progress if e.phase == "Pull complete"]
    assert len(done) == 4
    assert all(e.completed is not None for e in done)
    assert Notice("Status: Downloaded newer image for 127.0.0.1:5555/nim/test:1.0") in out
    assert "4 layers, 21.3 MB" in tracker.summary()


def test_plain_reporter_writes_lines_without_markup() -> None:
    out = io.StringIO()
    report = PlainReporter(Console(file=out, width=200, color_system=None))
    report(StateChanged(DeployState.STARTING, "c1", "Starting c1 [bold]"))
    report(Notice("careful", Level.WARNING))
    report(LogLine("c1", "hello"))
    report(TransferStarted("Pulling img"))
    report(TransferProgress("a", "layer a", 1, 2, "Downloading"))
    report(TransferProgress("a", "layer a", 2, 2, "Downloading"))
    report(TransferFinished("Pulled img"))
    assert out.getvalue().splitlines() == [
        "Starting c1 [bold]",
        "Warning: careful",
        "c1 | hello",
        "Pulling img",
        "layer a: Downloading",
        "Pulled img",
    ]


def test_sink_choice_quiet_own_sink_and_console() -> None:
    mine: list[object] = []
    assert resolve_sink(quiet=True) is None
    assert resolve_sink(quiet=True, on_event=mine.append) == mine.append
    assert resolve_sink(quiet=False, on_event=mine.append) == mine.append
    # The package installs the rich reporter of nim_async.ui as the console default ...
    assert isinstance(resolve_sink(quiet=False), ConsoleReporter)
    # ... and without it the plain one is used.
    saved = events._console_reporter
    events.set_console_reporter(None)
    try:
        assert isinstance(resolve_sink(quiet=False), PlainReporter)
    finally:
        events.set_console_reporter(saved)


def test_console_reporter_draws_states_logs_and_one_progress_display() -> None:
    out = io.StringIO()
    report = ConsoleReporter(Console(file=out, width=200, color_system=None))
    report(StateChanged(DeployState.READY, "c1", "c1 at http://127.0.0.1:1"))
    report(Notice("different settings", Level.NOTE))
    report(LogLine("c1", "[not markup]"))
    report(TransferStarted(None))
    report(TransferProgress("run x", "Downloading run x", 5, 10))
    report(TransferFinished("Downloaded run x: 0.0 MB"))
    text = out.getvalue()
    assert "Ready: c1 at http://127.0.0.1:1" in text
    assert "Note: different settings" in text
    assert "c1 | [not markup]" in text
    assert "Downloading run x" in text
    assert "Downloaded run x" in text


def test_scrub_hides_every_secret_longest_first() -> None:
    assert scrub("key abc and abcdef", ["abc", SecretStr("abcdef"), None, ""]) == (
        "key *** and ***"
    )
    scrubber = Scrubber(["s3cret"])
    scrubber.add(SecretStr("t0ken"))
    scrubber.add(None)
    assert scrubber("s3cret t0ken x") == "*** *** x"
    assert "s3cret" not in repr(scrubber)
    assert strip_query("https://h/p/a.tar?X-Sig=abc#f") == "https://h/p/a.tar"


@pytest.mark.docker
async def test_a_real_deploy_reports_to_its_own_sink(  # type: ignore[no-untyped-def]
    nim_config, derived_image, capsys
) -> None:
    """on_event gets the state changes and the container's log lines; nothing is printed."""
    await derived_image()  # the emulator image is present: no pull
    config = nim_config(stream_logs=True)
    got: list[object] = []
    async with AsyncNIMDeployer(config, quiet=True, on_event=got.append) as deployer:
        await deployer.deploy()
    states = [e.state for e in got if isinstance(e, StateChanged)]
    assert states[0] is DeployState.IMAGE_PRESENT
    assert DeployState.STARTING in states
    assert states[-1] is DeployState.READY
    assert any(isinstance(e, LogLine) and e.container == config.container_name for e in got)
    assert all(config.nvidia_api_key.get_secret_value() not in str(e) for e in got)
    assert capsys.readouterr() == ("", "")
