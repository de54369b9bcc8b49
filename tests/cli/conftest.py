"""Run the real ``nim-async`` console script in a subprocess."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent / "nim-async"
COMMAND = [str(BIN)] if BIN.exists() else [sys.executable, "-m", "nim_async.cli"]


@dataclass
class Done:
    """A finished command: exit status and output."""

    rc: int
    out: str
    err: str

    def one_line_error(self) -> str:
        """Assert the command failed with exactly one clear line on stderr; return it."""
        assert self.rc == 1, (self.rc, self.out, self.err)
        assert "Traceback" not in self.err
        lines = [line for line in self.err.splitlines() if line.strip()]
        assert len(lines) == 1, self.err
        assert lines[0].startswith("nim-async: error: ")
        return lines[0]


RunCLI = Callable[..., Awaitable[Done]]


def cli_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ, PYTHONUNBUFFERED="1", COLUMNS="200", NO_COLOR="1")
    env.update(extra)
    return env


@pytest.fixture
def cli(tmp_path: Path) -> RunCLI:
    """``done = await cli("predict", img, "--url", url)``; the event loop stays free meanwhile,
    so an emulator in this process keeps serving."""

    async def run(
        *args: str,
        stdin: bytes | None = None,
        env: dict[str, str] | None = None,
        limit_s: float = 90.0,
    ) -> Done:
        proc = await asyncio.create_subprocess_exec(
            *COMMAND,
            *args,
            stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            cwd=tmp_path,
            env=env or cli_env(),
        )
        out, err = await asyncio.wait_for(proc.communicate(stdin), limit_s)
        assert proc.returncode is not None
        return Done(proc.returncode, out.decode(), err.decode())

    return run


@pytest.fixture
def image_dir(tmp_path: Path, image_factory: Callable[..., bytes]) -> Path:
    """Twenty PNG images: image i has 1 + i % 3 rectangles."""
    folder = tmp_path / "images"
    folder.mkdir()
    colours = ["red", "blue", "green", "orange"]
    for i in range(20):
        shapes = [
            (colours[(i + k) % 4], (10 + 60 * k, 20, 60 + 60 * k, 90)) for k in range(1 + i % 3)
        ]
        (folder / f"img{i:03d}.png").write_bytes(
            image_factory(size=(200, 120), shapes=shapes, fmt="PNG")
        )
    return folder


Spawn = Callable[..., Awaitable[asyncio.subprocess.Process]]


@pytest.fixture
def spawn(tmp_path: Path) -> Spawn:
    """``proc = await spawn("batch", ..., env=None)``: start the command, don't wait for it
    (for kill / Ctrl-C tests). stdout and stderr are pipes."""

    async def start(*args: str, env: dict[str, str] | None = None) -> asyncio.subprocess.Process:
        return await asyncio.create_subprocess_exec(
            *COMMAND,
            *args,
            cwd=tmp_path,
            env=env or cli_env(),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )

    return start


@pytest.fixture
def no_key_env() -> dict[str, str]:
    """The CLI environment without an NGC key."""
    return {k: v for k, v in cli_env().items() if k != "NGC_API_KEY"}


@pytest.fixture
def base_env() -> dict[str, str]:
    """The environment the CLI runs with (add to a copy for one command)."""
    return cli_env()
