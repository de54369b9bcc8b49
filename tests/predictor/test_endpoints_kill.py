"""Endpoints that die: emulator processes killed (SIGKILL, as ``docker kill``) mid-work.

Each emulator runs as its own ``python -m nim_async.emulator`` process; what each one served is
read from its own ``/v1/metrics`` (``vllm:request_success_total``).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import sys
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from nim_async.errors import StreamError
from nim_async.predict.batch import predict_many
from nim_async.predict.endpoints import Balancing
from nim_async.predict.journal import BatchJournal
from nim_async.predict.predictor import AsyncNIMPredictor

from .conftest import MODEL, wait_until

FAST_HEALTH = Balancing(health_interval=0.05, health_max_interval=0.2, health_timeout=2.0)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class EmulatorProc:
    """One emulator process on a fixed loopback port."""

    def __init__(self, port: int, args: tuple[str, ...]) -> None:
        self.port = port
        self.args = args
        self.url = f"http://127.0.0.1:{port}"
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> EmulatorProc:
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "nim_async.emulator",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--log-level",
            "ERROR",
            *self.args,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        for _ in range(600):
            if self.proc.returncode is not None:
                pytest.fail(f"the emulator on port {self.port} exited: {self.proc.returncode}")
            with contextlib.suppress(OSError):
                await asyncio.to_thread(
                    urllib.request.urlopen, f"{self.url}/v1/health/ready", None, 1
                )
                return self
            await asyncio.sleep(0.05)
        pytest.fail("the emulator did not start")

    async def kill(self) -> None:
        """SIGKILL: every connection drops at once, nothing is answered any more."""
        proc, self.proc = self.proc, None
        if proc is not None and proc.returncode is None:
            proc.send_signal(signal.SIGKILL)
            await proc.wait()

    async def served(self) -> int:
        """Requests finished (stop or length), from the process's own /v1/metrics."""

        def read() -> bytes:
            with urllib.request.urlopen(f"{self.url}/v1/metrics", None, 5) as answer:
                return bytes(answer.read())

        total = 0
        for line in (await asyncio.to_thread(read)).decode().splitlines():
            if line.startswith("vllm:request_success_total") and "abort" not in line:
                total += int(float(line.rsplit(" ", 1)[1]))
        return total


Spawn = Callable[..., Awaitable[EmulatorProc]]


@pytest.fixture
async def spawn() -> AsyncIterator[Spawn]:
    """``await spawn("--itl-ms", "5", port=None)``: an emulator process; all killed at teardown."""
    made: list[EmulatorProc] = []

    async def factory(*args: str, port: int | None = None) -> EmulatorProc:
        emu = EmulatorProc(port or free_port(), args)
        made.append(emu)
        return await emu.start()

    yield factory
    for emu in made:
        await emu.kill()


@pytest.fixture
def image_files(tmp_path: Path, image_factory: Any) -> list[str]:
    colours = ["red", "blue", "green", "orange"]
    paths = []
    for i in range(48):
        path = tmp_path / "images" / f"img{i:03d}.png"
        path.parent.mkdir(exist_ok=True)
        box = (4 + i % 20, 6, 50 + i % 30, 40)
        path.write_bytes(image_factory(size=(96, 64), shapes=[(colours[i % 4], box)], fmt="PNG"))
        paths.append(str(path))
    return paths


@pytest.mark.parametrize(
    ("predictor_retries", "batch_retries"),
    [(3, 0), (0, 2)],
    ids=["predictor-retries", "batch-retries"],
)
async def test_a_replica_killed_mid_batch_loses_and_repeats_nothing(
    spawn: Spawn,
    image_files: list[str],
    tmp_path: Path,
    predictor_retries: int,
    batch_retries: int,
) -> None:
    a = await spawn("--itl-ms", "4")
    b = await spawn("--itl-ms", "4")
    out = tmp_path / "results.jsonl"
    written = 0
    async with AsyncNIMPredictor(
        MODEL, "vqa", endpoints=[a.url, b.url], retries=predictor_retries
    ) as p:
        with BatchJournal(out) as journal:
            async for result in predict_many(
                p, journal.pending(image_files), concurrency=8, retries=batch_retries
            ):
                journal.record(result)
                written += 1
                if written == 12:
                    await a.kill()  # about four requests are in flight there
        status = p.endpoint_status()
        assert journal.ok == len(image_files)
        assert journal.failed == 0
    records = [orjson.loads(line) for line in out.read_bytes().splitlines()]
    assert len(records) == len(image_files)  # one line per input: nothing lost, no duplicate
    assert sorted(r["key"] for r in records) == sorted(image_files)
    assert sorted(r["index"] for r in records) == list(range(len(image_files)))
    assert all(r["status"] == "ok" for r in records)
    assert not status[0].up
    assert status[0].failed >= 1  # requests were in flight when it died
    assert all(s.outstanding == 0 for s in status)
    assert await b.served() >= len(image_files) - 12


async def test_streams_on_a_killed_replica_fail_and_new_ones_go_elsewhere(
    spawn: Spawn, image_factory: Any
) -> None:
    image = image_factory(size=(96, 64), shapes=[("red", (8, 8, 60, 40))], fmt="PNG")
    a = await spawn("--itl-ms", "20")
    b = await spawn("--itl-ms", "20")
    async with AsyncNIMPredictor(MODEL, "vqa", endpoints=[a.url, b.url], dialect="openai") as p:
        streams = [p.stream(image) for _ in range(4)]
        for stream in streams:  # least outstanding: a, b, a, b
            await stream.__aenter__()
        for stream in streams:
            await stream.__anext__()  # each has handed a token out
        assert [s.outstanding for s in p.endpoint_status()] == [2, 2]
        await a.kill()
        failed = 0
        for stream in streams:
            try:
                async for _ in stream:
                    pass
                await stream.get_final_response()
            except StreamError as exc:
                failed += 1
                assert exc.partial_text  # what had arrived; it is not resent
            finally:
                await stream.aclose()
        assert failed == 2
        down, up = p.endpoint_status()
        assert not down.up
        assert str(down.reason).startswith("the stream broke")
        assert up.up
        assert (down.outstanding, up.outstanding) == (0, 0)
        async with p.stream(image) as stream:  # not started yet: goes to the live one
            assert [t async for t in stream]
        assert await b.served() == 3


async def test_a_killed_replica_started_again_is_used_again(
    spawn: Spawn, image_factory: Any
) -> None:
    image = image_factory(size=(96, 64), shapes=[("red", (8, 8, 60, 40))], fmt="PNG")
    a = await spawn()
    b = await spawn()
    async with AsyncNIMPredictor(
        MODEL, "vqa", endpoints=[a.url, b.url], balancing=FAST_HEALTH
    ) as p:
        await p(image)
        await a.kill()
        for _ in range(4):
            await p(image)  # the first finds it refused, then all go to b
        assert p.endpoint_status()[0].reason == "connection refused"
        again = await spawn(port=a.port)
        await wait_until(lambda: p.endpoint_status()[0].up, limit=10.0)
        for _ in range(10):
            await p(image)
        assert await again.served() == 5
