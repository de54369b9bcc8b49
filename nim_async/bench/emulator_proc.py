"""Run the emulator (a test double, not a model) in a child process for the benchmark.

The suite drives the emulator from another process so the emulator's CPU time and event loop
do not count against the client being measured. The child prints its URL on the first line of
stdout and stops when its stdin closes.

``python -m nim_async.bench.emulator_proc '{"ttft_ms": 100}'``
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from types import TracebackType
from typing import Any

import orjson

__all__ = ["EmulatorProcess", "main"]


class EmulatorProcess:
    """An emulator in a child process, as an async context manager.

    Args:
        settings: ``EmulatorSettings`` fields (for example ``ttft_ms``, ``itl_ms``,
            ``max_num_seqs``).
        start_timeout: Seconds to wait for the child to report its URL.

    Attributes:
        url: The emulator's base URL once started.
    """

    def __init__(
        self, settings: dict[str, Any] | None = None, *, start_timeout: float = 60.0
    ) -> None:
        self.settings = dict(settings or {})
        self.start_timeout = start_timeout
        self.url = ""
        self._proc: asyncio.subprocess.Process | None = None

    def __repr__(self) -> str:
        return f"EmulatorProcess(url={self.url!r})"

    async def __aenter__(self) -> EmulatorProcess:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "nim_async.bench.emulator_proc",
            orjson.dumps(self.settings).decode(),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        self._proc = proc
        assert proc.stdout is not None
        try:
            line = await asyncio.wait_for(proc.stdout.readline(), self.start_timeout)
        except TimeoutError:
            await self._stop()
            raise RuntimeError("the emulator process did not start in time") from None
        url = line.decode().strip()
        if not url.startswith("http"):
            await self._stop()
            raise RuntimeError(f"the emulator process failed to start (settings {self.settings})")
        self.url = url
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._stop()

    async def _stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.stdin is not None:
            proc.stdin.close()
        try:
            await asyncio.wait_for(proc.wait(), 10.0)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()


async def _serve(settings: dict[str, Any]) -> None:
    from nim_async.emulator import Emulator, EmulatorSettings

    async with Emulator(EmulatorSettings(**settings), host="127.0.0.1", port=0) as emu:
        sys.stdout.write(emu.url + "\n")
        sys.stdout.flush()
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, sys.stdin.buffer.read)


def main(argv: list[str] | None = None) -> int:
    """Serve an emulator with the JSON settings in ``argv[0]`` until stdin closes."""
    args = sys.argv[1:] if argv is None else argv
    settings = orjson.loads(args[0]) if args else {}
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(settings))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
