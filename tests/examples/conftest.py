"""Run the scripts of examples/ as a user would: a fresh Python process each."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

RunExample = Callable[..., Awaitable[tuple[int, str, str]]]


@pytest.fixture
def run_example(tmp_path: Path) -> RunExample:
    """``rc, out, err = await run_example("streaming.py", "--url", url)``.

    Runs with the event loop free, so an emulator fixture in this process keeps serving.
    """

    async def run(name: str, *args: str, limit_s: float = 90.0) -> tuple[int, str, str]:
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            str(EXAMPLES / name),
            *args,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            cwd=tmp_path,
            env=env,
        )
        out, err = await asyncio.wait_for(proc.communicate(), limit_s)
        assert proc.returncode is not None
        return proc.returncode, out.decode(), err.decode()

    return run
