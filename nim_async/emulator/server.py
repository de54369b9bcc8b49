"""The NIM emulator's lifecycle: an aiohttp.web server speaking the NIM / vLLM OpenAI API.

It is a test double for a NIM serving a vision-language model, never a model itself. The parts:
:mod:`~nim_async.emulator.routes` (endpoints), :mod:`~nim_async.emulator.validation` and
:mod:`~nim_async.emulator.constraints` (requests), :mod:`~nim_async.emulator.answer` (what it
says), :mod:`~nim_async.emulator.timing` (when, and the injected faults),
:mod:`~nim_async.emulator.rendering` (the bytes), :mod:`~nim_async.emulator.geometry` (its own
resize and box math).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web

from nim_async.emulator.chat import image_prompt_tokens
from nim_async.emulator.metrics import Metrics
from nim_async.emulator.routes import EMULATOR_NOTE, OWNED_BY, build_app
from nim_async.emulator.settings import EmulatorSettings
from nim_async.emulator.state import ServerState

__all__ = ["OWNED_BY", "Emulator", "EmulatorStartupError", "image_prompt_tokens"]

log = logging.getLogger("nim_async.emulator")


class EmulatorStartupError(RuntimeError):
    """The emulator cannot start (for example custom weights without ``config.json``)."""


def _load_model_config(path: str | None) -> dict[str, Any] | None:
    if path is None:
        return None
    cfg = Path(path) / "config.json"
    try:
        raw = cfg.read_bytes()
    except OSError as exc:
        raise EmulatorStartupError(
            f"custom weights at {path!r} have no readable config.json ({exc.strerror or exc})"
        ) from exc
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise EmulatorStartupError(f"{cfg} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise EmulatorStartupError(f"{cfg} does not hold a JSON object")
    log.info(
        "emulator: custom weights %s (model_type=%s, architectures=%s)",
        path,
        data.get("model_type"),
        data.get("architectures"),
    )
    return data


class Emulator:
    """An in-process NIM emulator on ``host:port`` (port 0 = an ephemeral port).

    Use it as an async context manager::

        async with Emulator(EmulatorSettings(ttft_ms=5), port=0) as emu:
            print(emu.url)

    Args:
        settings: Behaviour; defaults to :class:`EmulatorSettings`.
        host: Address to listen on.
        port: Port to listen on; 0 picks a free one (see :attr:`port`).
        **overrides: Setting fields that replace those of ``settings``.

    Raises:
        TypeError: for an override that is not a setting.
        ValueError: for a setting out of range.
    """

    def __init__(
        self,
        settings: EmulatorSettings | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        **overrides: Any,
    ) -> None:
        base = settings if settings is not None else EmulatorSettings()
        s = base.replace(**overrides) if overrides else base
        self._state = ServerState(settings=s, rng=random.Random(s.seed), created=int(time.time()))
        self._host = host
        self._requested_port = port
        self._port: int | None = None
        self._runner: web.AppRunner | None = None
        self._stopped = asyncio.Event()
        self._stop_reason = ""
        self._exit_handle: asyncio.TimerHandle | None = None
        self._closing: asyncio.Task[None] | None = None

    @property
    def settings(self) -> EmulatorSettings:
        """The settings in effect."""
        return self._state.settings

    @property
    def host(self) -> str:
        """The address listened on."""
        return self._host

    @property
    def port(self) -> int:
        """The bound port (known once started).

        Raises:
            RuntimeError: before :meth:`start`.
        """
        if self._port is None:
            raise RuntimeError("the emulator is not started")
        return self._port

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:8000`` (no ``/v1``)."""
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"http://{host}:{self.port}"

    @property
    def metrics(self) -> Metrics:
        """Live counters (the values ``/metrics`` and ``/v1/metrics`` render)."""
        return self._state.metrics

    @property
    def model_config(self) -> dict[str, Any] | None:
        """The ``config.json`` of :attr:`EmulatorSettings.model_path`, if one is set."""
        return self._state.model_config

    @property
    def stop_reason(self) -> str:
        """Why serving stopped: ``""`` while serving, ``"exit_after"`` or ``"stopped"``."""
        return self._stop_reason

    def make_app(self) -> web.Application:
        """Build the aiohttp application (routes only; :meth:`start` serves it)."""
        return build_app(self._state)

    async def start(self) -> None:
        """Bind and start serving.

        Raises:
            EmulatorStartupError: when custom weights lack ``config.json``.
            OSError: when the address cannot be bound.
        """
        if self._runner is not None:
            return
        st = self._state
        s = st.settings
        st.model_config = _load_model_config(s.model_path)
        loop = asyncio.get_running_loop()
        st.slots = asyncio.Semaphore(s.max_num_seqs) if s.max_num_seqs > 0 else None
        runner = web.AppRunner(
            self.make_app(), access_log=None, handle_signals=False, shutdown_timeout=0.5
        )
        await runner.setup()
        site = web.TCPSite(runner, self._host, self._requested_port)
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self._port = int(runner.addresses[0][1])
        st.ready_at = loop.time() + s.startup_seconds
        if s.exit_after is not None:
            self._exit_handle = loop.call_later(s.exit_after, self._exit_now)
        log.info(
            "emulator: %s serving %r at %s (box format %s, max_model_len %d, %s)",
            EMULATOR_NOTE,
            s.served_model_name,
            self.url,
            s.box_convention,
            s.max_model_len,
            "legacy guided_* enforced" if s.legacy_guided else f"vLLM {s.vllm_version} fields",
        )

    def _exit_now(self) -> None:
        log.warning(
            "emulator: --exit-after %.3gs reached, the emulator stops serving (fault injection)",
            self.settings.exit_after,
        )
        self._closing = asyncio.get_running_loop().create_task(self._shutdown("exit_after"))

    async def _shutdown(self, reason: str) -> None:
        if not self._stop_reason:
            self._stop_reason = reason
        if self._exit_handle is not None:
            self._exit_handle.cancel()
            self._exit_handle = None
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()
        await self._state.images.close()
        self._stopped.set()

    async def stop(self) -> None:
        """Stop serving and close every connection (idempotent)."""
        if self._closing is not None:
            await self._closing
        await self._shutdown("stopped")

    async def wait_stopped(self) -> str:
        """Wait until serving stops; return :attr:`stop_reason`."""
        await self._stopped.wait()
        return self._stop_reason

    async def __aenter__(self) -> Emulator:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
