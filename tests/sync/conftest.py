"""Helpers of the exit tests: run a script in a fresh interpreter and judge how it ended.

* ``run_script(code, ...)``: run ``code`` with ``sys.executable`` in a new process (optionally
  sending SIGINT once it prints a marker line) and return its :class:`Ended`;
* ``assert_clean(ended)``: stderr carries no ``Unclosed``, ``Exception ignored`` or traceback;
* ``docker_test_env`` (session): the registry facts of ``scripts/test-env.sh`` or a skip.

The emulator the scripts talk to runs in the test process (the ``emulator`` and
``start_emulator`` fixtures of the root conftest), over real HTTP.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

#: A hang fails the test; a healthy script ends in well under a second or two.
TIME_BOUND = 60.0
NOISE = ("Unclosed", "Exception ignored", "Traceback")


@dataclass(frozen=True)
class Ended:
    """How a child process ended."""

    returncode: int
    stdout: str
    stderr: str
    elapsed: float


async def run_script(
    code: str,
    tmp_path: Path,
    *,
    env: dict[str, str] | None = None,
    interrupt_on: str | None = None,
    limit: float = TIME_BOUND,
) -> Ended:
    """Run ``code`` (dedented) as a script in a fresh interpreter.

    Args:
        code: The script.
        tmp_path: Where the script file is written (also its working directory).
        env: Extra environment variables.
        interrupt_on: Send SIGINT once the child prints this line on stdout.
        limit: Seconds before the child counts as hung (killed, and the test fails).
    """
    script = tmp_path / f"script_{time.monotonic_ns()}.py"
    script.write_text(textwrap.dedent(code))
    child_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    child_env.pop("PYTEST_CURRENT_TEST", None)
    start = time.monotonic()
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(script),
        cwd=tmp_path,
        env=child_env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None
    assert proc.stderr is not None
    out_lines: list[str] = []

    async def read_stdout() -> None:
        assert proc.stdout is not None
        async for raw in proc.stdout:
            line = raw.decode(errors="replace")
            out_lines.append(line)
            if interrupt_on is not None and line.strip() == interrupt_on:
                proc.send_signal(signal.SIGINT)

    try:
        _, err = await asyncio.wait_for(asyncio.gather(read_stdout(), proc.stderr.read()), limit)
        await asyncio.wait_for(proc.wait(), limit)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        pytest.fail(f"the script did not end within {limit:g} s (hung):\n{code}")
    assert proc.returncode is not None
    return Ended(
        proc.returncode, "".join(out_lines), err.decode(errors="replace"), time.monotonic() - start
    )


def assert_clean(ended: Ended) -> None:
    """The child's stderr has none of the exit noise (unclosed sessions, ignored errors)."""
    for word in NOISE:
        assert word not in ended.stderr, f"{word!r} on stderr:\n{ended.stderr}"


@dataclass(frozen=True)
class DockerTestEnv:
    """What scripts/test-env.sh set up (the key is a fake the local registry accepts)."""

    registry_path: str
    ngc_key: str
    image_name: str
    tag: str
    image: str

    def __repr__(self) -> str:
        return f"DockerTestEnv(image={self.image!r})"


@pytest.fixture(scope="session")
def docker_test_env(docker_test_exports: dict[str, str]) -> DockerTestEnv:
    """The local registry and emulator image (scripts/test-env.sh), or skip with the reason."""
    values = docker_test_exports
    return DockerTestEnv(
        registry_path=values["NIM_TEST_REGISTRY_PATH"],
        ngc_key=values["NIM_TEST_NGC_KEY"],
        image_name=values["NIM_TEST_IMAGE_NAME"],
        tag=values["NIM_TEST_IMAGE_TAG"],
        image=values["NIM_TEST_IMAGE"],
    )
