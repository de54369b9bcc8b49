"""Helpers of the hostile-input tests: the real ``nim-async`` command and scripts in subprocesses.

* ``run_cli(*args, cwd=...)``: run the console script, return its :class:`Done`;
* ``free_port()``: a free TCP port on 127.0.0.1;
* ``failing_emulator`` (fixture, from ``tests/conftest.py``): an emulator process answering 503;
* ``docker_env`` (fixture): the facts of ``scripts/test-env.sh`` (registry, key, emulator image)
  or a skip.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
from collections.abc import Sequence
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

    def one_line_error(self, rc: int = 1) -> str:
        """Assert the command failed with exactly one clear line on stderr; return it."""
        assert self.rc == rc, (self.rc, self.out, self.err)
        assert "Traceback" not in self.err, self.err
        lines = [line for line in self.err.splitlines() if line.strip()]
        assert len(lines) == 1, self.err
        assert lines[0].startswith("nim-async: error: "), lines[0]
        return lines[0]


def cli_env(**extra: str) -> dict[str, str]:
    """The child's environment: unbuffered, wide, no colour."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", COLUMNS="200", NO_COLOR="1")
    env.pop("PYTEST_CURRENT_TEST", None)
    env.update(extra)
    return env


async def run_cli(
    *args: str,
    cwd: Path,
    env: dict[str, str] | None = None,
    stdin: bytes | None = None,
    signal_on: tuple[str, signal.Signals] | None = None,
    limit_s: float = 90.0,
    prefix: Sequence[str] = (),
) -> Done:
    """Run ``nim-async ARGS`` in ``cwd``.

    Args:
        args: The arguments.
        cwd: Working directory.
        env: The whole environment (default :func:`cli_env`).
        stdin: Bytes on stdin (default: none, /dev/null).
        signal_on: ``(text, sig)``: send ``sig`` once stderr or stdout shows ``text``.
        limit_s: Seconds before the command counts as hung (killed; the test fails).
        prefix: A command that runs ``nim-async`` (for example ``setpriv ...``).
    """
    proc = await asyncio.create_subprocess_exec(
        *prefix,
        *COMMAND,
        *args,
        stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=cwd,
        env=env or cli_env(),
    )
    assert proc.stdout is not None
    assert proc.stderr is not None
    if stdin is not None:
        assert proc.stdin is not None
        proc.stdin.write(stdin)
        await proc.stdin.drain()
        proc.stdin.close()
    chunks: dict[str, list[str]] = {"out": [], "err": []}

    async def pump(stream: asyncio.StreamReader, key: str) -> None:
        async for raw in stream:
            line = raw.decode(errors="replace")
            chunks[key].append(line)
            if signal_on is not None and signal_on[0] in line and proc.returncode is None:
                proc.send_signal(signal_on[1])

    try:
        await asyncio.wait_for(
            asyncio.gather(pump(proc.stdout, "out"), pump(proc.stderr, "err"), proc.wait()),
            limit_s,
        )
    except TimeoutError:
        proc.kill()
        await proc.wait()
        pytest.fail(f"nim-async {' '.join(args)} did not end within {limit_s:g} s")
    assert proc.returncode is not None
    return Done(proc.returncode, "".join(chunks["out"]), "".join(chunks["err"]))


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class DockerEnv:
    """What scripts/test-env.sh set up (the key is a fake the local registry accepts)."""

    registry: str
    registry_path: str
    ngc_key: str
    image_name: str
    tag: str
    image: str

    def __repr__(self) -> str:
        return f"DockerEnv(image={self.image!r})"


@pytest.fixture(scope="session")
def docker_env(docker_test_exports: dict[str, str]) -> DockerEnv:
    """The local registry and emulator image, or skip with the reason."""
    values = docker_test_exports
    return DockerEnv(
        registry=values["NIM_TEST_REGISTRY"],
        registry_path=values["NIM_TEST_REGISTRY_PATH"],
        ngc_key=values["NIM_TEST_NGC_KEY"],
        image_name=values["NIM_TEST_IMAGE_NAME"],
        tag=values["NIM_TEST_IMAGE_TAG"],
        image=values["NIM_TEST_IMAGE"],
    )
