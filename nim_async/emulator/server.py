"""The NIM emulator: an aiohttp.web server speaking the NIM / vLLM OpenAI-compatible API.

It is a test double for a NIM serving a vision-language model, never a model itself. It looks
at images with Pillow (see :mod:`nim_async.emulator.scene`) and answers phrase grounding and VQA
deterministically, with a timing model, queueing, fault injection and vLLM-shaped errors.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import importlib.metadata
import itertools
import json
import logging
import math
import random
import re
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from aiohttp import ClientError, ClientSession, ClientTimeout, web

from nim_async.emulator import guided
from nim_async.emulator.metrics import Metrics
from nim_async.emulator.responder import (
    detect_task,
    grounding_output,
    render_json,
    vqa_output,
)
from nim_async.emulator.scene import Scene, analyse_bytes
from nim_async.emulator.settings import EmulatorSettings
from nim_async.emulator.tokens import count_tokens, split_tokens
from nim_async.protocol.geometry import qwen_image_tokens

__all__ = ["OWNED_BY", "Emulator", "EmulatorStartupError", "image_prompt_tokens"]

log = logging.getLogger("nim_async.emulator")

OWNED_BY = "nim-async-emulator"
"""``owned_by`` of the served model: marks the server as an emulator."""

_EMULATOR_NOTE = "nim-async NIM emulator: a NIM-compatible test double, not a model"

_OPENAI_FIELDS = frozenset(
    {
        "model", "messages", "max_tokens", "max_completion_tokens", "temperature", "top_p",
        "n", "stream", "stream_options", "stop", "seed", "presence_penalty",
        "frequency_penalty", "logit_bias", "logprobs", "top_logprobs", "user",
        "response_format", "tools", "tool_choice", "parallel_tool_calls", "metadata", "store",
        "modalities", "reasoning_effort", "service_tier", "nvext",
    }
)  # fmt: skip
_EXTENSION_FIELDS = frozenset(
    {
        "top_k", "min_p", "repetition_penalty", "min_tokens", "ignore_eos", "guided_json",
        "guided_regex", "guided_choice", "guided_grammar", "guided_decoding_backend",
        "guided_whitespace_pattern", "structured_outputs", "skip_special_tokens",
        "spaces_between_special_tokens", "include_stop_str_in_output", "stop_token_ids",
        "length_penalty", "use_beam_search", "best_of", "echo", "add_generation_prompt",
        "continue_final_message", "chat_template", "chat_template_kwargs",
        "mm_processor_kwargs", "documents", "priority", "request_id", "prompt_logprobs",
        "return_tokens_as_token_ids", "truncate_prompt_tokens", "bad_words",
        "allowed_token_ids", "logits_processors", "add_special_tokens", "cache_salt",
        "vllm_xargs",
    }
)  # fmt: skip
_GUIDED_FIELDS = ("guided_json", "guided_regex", "guided_choice", "guided_grammar")
_ROLES = frozenset({"system", "user", "assistant", "tool", "developer", "function"})
_DATA_URI = re.compile(r"data:([\w.+-]+/[\w.+-]+)?((?:;[\w.+-]+=[^;,]*)*)(;base64)?,", re.ASCII)
_FILLER = tuple(split_tokens(" The emulator keeps writing filler text past the answer."))
_SCENE_CACHE_SIZE = 64
_SSE_HEADERS = {"Content-Type": "text/event-stream; charset=utf-8", "Cache-Control": "no-cache"}
_ERROR_TYPES = {
    400: "BadRequestError",
    404: "NotFoundError",
    413: "BadRequestError",
    429: "RateLimitError",
    500: "InternalServerError",
    503: "ServiceUnavailableError",
}


def _package_version() -> str:
    try:
        return importlib.metadata.version("nim-async")
    except importlib.metadata.PackageNotFoundError:
        return "0+unknown"


_VERSION = _package_version()


class EmulatorStartupError(RuntimeError):
    """The emulator cannot start (for example custom weights without ``config.json``)."""


class _RequestError(Exception):
    """A request the emulator rejects; becomes a vLLM-shaped JSON error."""

    def __init__(self, status: int, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param


def _error_body(status: int, message: str, param: str | None = None) -> bytes:
    return orjson.dumps(
        {
            "error": {
                "message": message,
                "type": _ERROR_TYPES.get(status, "APIError"),
                "param": param,
                "code": status,
            }
        }
    )


def _bad(message: str, param: str | None = None) -> _RequestError:
    return _RequestError(400, message, param=param)


@dataclass(slots=True)
class _Job:
    """A validated chat request, ready to be generated."""

    request_id: str
    stream: bool
    include_usage: bool
    continuous_usage: bool
    prompt_tokens: int
    pieces: list[str]
    finish_reason: str
    stop_reason: str | None


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


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
        self._settings = base.replace(**overrides) if overrides else base
        self._host = host
        self._requested_port = port
        self._port: int | None = None
        self._runner: web.AppRunner | None = None
        self._metrics = Metrics()
        self._started_at = 0.0
        self._created = int(time.time())
        self._ready_at = 0.0
        self._sem: asyncio.Semaphore | None = None
        self._rng = random.Random(self._settings.seed)
        self._scenes: OrderedDict[tuple[int, int, str], Scene] = OrderedDict()
        self._stopped = asyncio.Event()
        self._stop_reason = ""
        self._exit_handle: asyncio.TimerHandle | None = None
        self._closing: asyncio.Task[None] | None = None
        self._http: ClientSession | None = None
        self._ignored_logged: set[frozenset[str]] = set()
        self._model_config: dict[str, Any] | None = None
        self._model_json = orjson.dumps(self._settings.served_model_name)

    # ------------------------------------------------------------------ lifecycle
    @property
    def settings(self) -> EmulatorSettings:
        """The settings in effect."""
        return self._settings

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
        """Live counters (the values ``/v1/metrics`` renders)."""
        return self._metrics

    @property
    def model_config(self) -> dict[str, Any] | None:
        """The ``config.json`` of :attr:`EmulatorSettings.model_path`, if one is set."""
        return self._model_config

    @property
    def stop_reason(self) -> str:
        """Why serving stopped: ``""`` while serving, ``"exit_after"`` or ``"stopped"``."""
        return self._stop_reason

    def _load_model_config(self) -> None:
        path = self._settings.model_path
        if path is None:
            return
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
        self._model_config = data
        log.info(
            "emulator: custom weights %s (model_type=%s, architectures=%s)",
            path,
            data.get("model_type"),
            data.get("architectures"),
        )

    def make_app(self) -> web.Application:
        """Build the aiohttp application (routes only; :meth:`start` serves it)."""
        app = web.Application(client_max_size=256 * 1024 * 1024)
        app.router.add_get("/v1/health/live", self._live)
        app.router.add_get("/v1/health/ready", self._ready)
        app.router.add_get("/health", self._live)
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/v1/version", self._version)
        app.router.add_get("/v1/metadata", self._metadata)
        app.router.add_get("/v1/metrics", self._metrics_handler)
        app.router.add_get("/metrics", self._metrics_handler)
        app.router.add_post("/v1/chat/completions", self._chat)
        return app

    async def start(self) -> None:
        """Bind and start serving.

        Raises:
            EmulatorStartupError: when custom weights lack ``config.json``.
            OSError: when the address cannot be bound.
        """
        if self._runner is not None:
            return
        self._load_model_config()
        loop = asyncio.get_running_loop()
        s = self._settings
        self._sem = asyncio.Semaphore(s.max_num_seqs) if s.max_num_seqs > 0 else None
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
        addr = runner.addresses[0]
        self._port = int(addr[1])
        self._started_at = loop.time()
        self._ready_at = self._started_at + s.startup_seconds
        if s.exit_after is not None:
            self._exit_handle = loop.call_later(s.exit_after, self._exit_now)
        log.info(
            "emulator: %s serving %r at %s (box format %s, max_model_len %d)",
            _EMULATOR_NOTE,
            s.served_model_name,
            self.url,
            s.box_format,
            s.max_model_len,
        )

    def _exit_now(self) -> None:
        log.warning(
            "emulator: --exit-after %.3gs reached, the emulator stops serving (fault injection)",
            self._settings.exit_after,
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
        if self._http is not None:
            await self._http.close()
            self._http = None
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

    # ------------------------------------------------------------------ simple endpoints
    def _is_ready(self) -> bool:
        return asyncio.get_running_loop().time() >= self._ready_at

    async def _live(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "health.response", "message": "Service is live."})

    async def _ready(self, request: web.Request) -> web.Response:
        if self._is_ready():
            return web.json_response({"object": "health.response", "message": "Service is ready."})
        return web.json_response(
            {"object": "health.response", "message": "Service is not ready."}, status=503
        )

    def _root(self) -> str:
        return self._settings.model_path or self._settings.served_model_name

    async def _models(self, request: web.Request) -> web.Response:
        s = self._settings
        card = {
            "id": s.served_model_name,
            "object": "model",
            "created": self._created,
            "owned_by": OWNED_BY,
            "root": self._root(),
            "parent": None,
            "max_model_len": s.max_model_len,
            "permission": [],
        }
        return _json({"object": "list", "data": [card]})

    async def _version(self, request: web.Request) -> web.Response:
        return _json({"release": f"{_VERSION}-emulator", "api": "1.0.0", "emulator": True})

    async def _metadata(self, request: web.Request) -> web.Response:
        s = self._settings
        return _json(
            {
                "emulator": True,
                "description": _EMULATOR_NOTE,
                "version": f"{_VERSION}-emulator",
                "modelInfo": [
                    {
                        "shortName": s.served_model_name,
                        "modelUrl": self._root(),
                        "boxFormat": s.box_format,
                        "maxModelLen": s.max_model_len,
                        "config": self._model_config,
                    }
                ],
                "assetInfo": [],
                "licenseInfo": {"name": "Apache-2.0", "note": "emulator, no model weights"},
                "repository_override": "",
            }
        )

    async def _metrics_handler(self, request: web.Request) -> web.Response:
        text = self._metrics.render(self._settings.served_model_name)
        return web.Response(
            body=text.encode(), headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"}
        )

    # ------------------------------------------------------------------ chat completions
    def _error(self, status: int, message: str, param: str | None = None) -> web.Response:
        self._metrics.errors[status] = self._metrics.errors.get(status, 0) + 1
        return web.Response(
            status=status,
            body=_error_body(status, message, param),
            headers={"Content-Type": "application/json"},
        )

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        loop = asyncio.get_running_loop()
        arrived = loop.time()
        s = self._settings
        if arrived < self._ready_at:
            return self._error(503, "Service is not ready.")
        if s.fail_rate > 0 and self._rng.random() < s.fail_rate:
            await request.read()
            return self._error(
                s.fail_status,
                f"injected failure (emulator --fail-rate {s.fail_rate:g}, "
                f"--fail-status {s.fail_status})",
            )
        try:
            body = await request.read()
            job = await self._prepare(body)
        except _RequestError as exc:
            log.info("emulator: rejected request (%d): %s", exc.status, exc.message)
            return self._error(exc.status, exc.message, exc.param)
        except Exception:  # never crash the server on one request
            log.exception("emulator: internal error while preparing a request")
            return self._error(500, "internal emulator error")
        m = self._metrics
        m.prompt_tokens += job.prompt_tokens
        resp: web.StreamResponse | None = None
        if job.stream:
            # Headers go out at once, as vLLM's StreamingResponse does; tokens follow the clock.
            resp = web.StreamResponse(headers=_SSE_HEADERS)
            try:
                await resp.prepare(request)
            except ConnectionError:
                return resp
        sem = self._sem
        started = arrived  # the clock starts at arrival unless the request has to queue
        if sem is not None and sem.locked():
            m.waiting += 1
            try:
                await sem.acquire()
            finally:
                m.waiting -= 1
            started = loop.time()
        elif sem is not None:
            await sem.acquire()
        m.running += 1
        m.queue.observe(started - arrived)
        try:
            if resp is not None:
                return await self._stream(request, resp, job, arrived, started)
            return await self._complete(request, job, arrived, started)
        finally:
            m.running -= 1
            if sem is not None:
                sem.release()

    def _first_token_at(self, job: _Job, started: float) -> float:
        s = self._settings
        delay_ms = s.ttft_ms + s.prefill_ms_per_1k_tokens * job.prompt_tokens / 1000.0
        return started + delay_ms / 1000.0

    def _finish_metrics(self, job: _Job, arrived: float, first: float, n_sent: int) -> None:
        m = self._metrics
        now = asyncio.get_running_loop().time()
        m.generation_tokens += n_sent
        m.ttft.observe(max(0.0, first - arrived))
        if n_sent > 1:
            m.itl.observe(max(0.0, (now - first) / (n_sent - 1)))
        m.e2e.observe(now - arrived)
        m.success[job.finish_reason] = m.success.get(job.finish_reason, 0) + 1

    def _usage(self, prompt: int, completion: int) -> dict[str, int]:
        return {
            "prompt_tokens": prompt,
            "total_tokens": prompt + completion,
            "completion_tokens": completion,
        }

    async def _complete(
        self, request: web.Request, job: _Job, arrived: float, started: float
    ) -> web.StreamResponse:
        loop = asyncio.get_running_loop()
        s = self._settings
        first = self._first_token_at(job, started)
        n = len(job.pieces)
        cut = s.disconnect_after
        if cut is not None and n > cut:
            await _sleep_until(loop, first + max(cut - 1, 0) * s.itl_ms / 1000.0)
            log.warning("emulator: dropping the connection after %d tokens (fault injection)", cut)
            self._metrics.success["abort"] = self._metrics.success.get("abort", 0) + 1
            _drop(request)
            return web.Response(status=200)
        await _sleep_until(loop, first + max(n - 1, 0) * s.itl_ms / 1000.0)
        text = "".join(job.pieces)
        body = {
            "id": job.request_id,
            "object": "chat.completion",
            "created": int(time.time()),
            "model": s.served_model_name,
            "choices": [
                {
                    "index": 0,
                    "message": {
                        "role": "assistant",
                        "content": text,
                        "reasoning_content": None,
                        "tool_calls": [],
                    },
                    "logprobs": None,
                    "finish_reason": job.finish_reason,
                    "stop_reason": job.stop_reason,
                }
            ],
            "usage": self._usage(job.prompt_tokens, n),
            "prompt_logprobs": None,
        }
        self._finish_metrics(job, arrived, first, n)
        return web.Response(body=orjson.dumps(body), headers={"Content-Type": "application/json"})

    async def _stream(
        self,
        request: web.Request,
        resp: web.StreamResponse,
        job: _Job,
        arrived: float,
        started: float,
    ) -> web.StreamResponse:
        loop = asyncio.get_running_loop()
        s = self._settings
        created = str(int(time.time())).encode()
        head = (
            b'data: {"id":"' + job.request_id.encode() + b'","object":"chat.completion.chunk",'
            b'"created":' + created + b',"model":' + self._model_json + b',"choices":['
        )
        prompt = job.prompt_tokens
        pieces = job.pieces
        n = len(pieces)
        cont = job.continuous_usage
        first = self._first_token_at(job, started)
        itl = s.itl_ms / 1000.0
        cut = s.disconnect_after
        finish = orjson.dumps(job.finish_reason)
        stop_reason = orjson.dumps(job.stop_reason)

        def usage_tail(done: int) -> bytes:
            if not cont:
                return b"]}\n\n"
            return b'],"usage":' + orjson.dumps(self._usage(prompt, done)) + b"}\n\n"

        role = (
            head + b'{"index":0,"delta":{"role":"assistant","content":""},'
            b'"logprobs":null,"finish_reason":null}' + usage_tail(0)
        )
        mid = b'"},"logprobs":null,"finish_reason":null}'
        buf: list[bytes] = [role]
        sent = 0
        try:
            for i, piece in enumerate(pieces or [""]):
                due = first + i * itl
                if due - loop.time() > 0.0002:
                    if buf and i > 0:  # the role chunk travels with the first token
                        await resp.write(b"".join(buf))
                        buf.clear()
                    await _sleep_until(loop, due)
                if cut is not None and i >= cut:
                    if buf:
                        await resp.write(b"".join(buf))
                    log.warning(
                        "emulator: dropping the stream after %d chunks (fault injection)", cut
                    )
                    self._metrics.success["abort"] = self._metrics.success.get("abort", 0) + 1
                    self._metrics.generation_tokens += sent
                    _drop(request)
                    return resp
                content = orjson.dumps(piece)
                sent = i + 1 if pieces else 0
                if i == n - 1 or not pieces:
                    buf.append(
                        head + b'{"index":0,"delta":{"content":' + content
                        + b'},"logprobs":null,"finish_reason":' + finish
                        + b',"stop_reason":' + stop_reason + b"}" + usage_tail(sent)
                    )  # fmt: skip
                else:
                    buf.append(
                        head + b'{"index":0,"delta":{"content":' + content[:-1] + mid
                        + usage_tail(sent)
                    )  # fmt: skip
            if job.include_usage:
                buf.append(
                    head[:-1] + b'[],"usage":' + orjson.dumps(self._usage(prompt, n)) + b"}\n\n"
                )
            buf.append(b"data: [DONE]\n\n")
            await resp.write(b"".join(buf))
            await resp.write_eof()
        except ConnectionError:
            log.info("emulator: client went away mid-stream after %d tokens", sent)
            self._metrics.success["abort"] = self._metrics.success.get("abort", 0) + 1
            self._metrics.generation_tokens += sent
            return resp
        self._finish_metrics(job, arrived, first, n)
        return resp

    # ------------------------------------------------------------------ request parsing
    def _log_ignored(self, names: set[str], where: str) -> None:
        key = frozenset(names)
        if key in self._ignored_logged:
            return
        if len(self._ignored_logged) < 256:
            self._ignored_logged.add(key)
        log.warning(
            "emulator: the following fields were present in the request %sbut ignored: %s",
            where,
            sorted(names),
        )

    def _sampling(self, body: dict[str, Any]) -> dict[str, Any]:
        """Merge sampling fields from the top level and ``nvext`` per the dialect."""
        dialect = self._settings.dialect
        nvext = body.get("nvext")
        if nvext is not None and not isinstance(nvext, dict):
            raise _bad("nvext must be an object", "nvext")
        unknown = {k for k in body if k not in _OPENAI_FIELDS and k not in _EXTENSION_FIELDS}
        if unknown:
            self._log_ignored(unknown, "")
        params = {k: v for k, v in body.items() if k not in unknown}
        if dialect == "openai":
            if nvext:
                self._log_ignored({f"nvext.{k}" for k in nvext}, "(dialect openai) ")
            return params
        if dialect == "nvext":
            top_ext = {k for k in params if k in _EXTENSION_FIELDS}
            if top_ext:
                self._log_ignored(top_ext, "(dialect nvext, use nvext) ")
                params = {k: v for k, v in params.items() if k not in top_ext}
        if nvext:
            bad = {k for k in nvext if k not in _OPENAI_FIELDS and k not in _EXTENSION_FIELDS}
            if bad:
                self._log_ignored({f"nvext.{k}" for k in bad}, "")
            params.update({k: v for k, v in nvext.items() if k not in bad})
        return params

    async def _prepare(self, raw: bytes) -> _Job:
        s = self._settings
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise _bad(f"the request body is not valid JSON: {exc}") from None
        if not isinstance(body, dict):
            raise _bad("the request body must be a JSON object")
        model = body.get("model")
        if model is not None and model != s.served_model_name:
            if not isinstance(model, str):
                raise _bad("model must be a string", "model")
            raise _RequestError(404, f"The model `{model}` does not exist.", param="model")
        p = self._sampling(body)

        # -- messages
        system_texts, user_texts, image_urls, prompt_tokens = _read_messages(body.get("messages"))

        # -- sampling values
        stream = p.get("stream", False)
        if not isinstance(stream, bool):
            raise _bad("stream must be a boolean", "stream")
        include_usage = continuous = False
        opts = p.get("stream_options")
        if opts is not None:
            if not stream:
                raise _bad(
                    "Stream options can only be defined when `stream=True`.", "stream_options"
                )
            if not isinstance(opts, dict):
                raise _bad("stream_options must be an object", "stream_options")
            include_usage = bool(opts.get("include_usage", False))
            continuous = bool(opts.get("continuous_usage_stats", False))
        temperature = _number(p, "temperature", 1.0, lo=0.0)
        _number(p, "top_p", 1.0, lo=0.0, lo_open=True, hi=1.0)
        _number(p, "min_p", 0.0, lo=0.0, hi=1.0)
        _number(p, "presence_penalty", 0.0, lo=-2.0, hi=2.0)
        _number(p, "frequency_penalty", 0.0, lo=-2.0, hi=2.0)
        _number(p, "repetition_penalty", 1.0, lo=0.0, lo_open=True)
        top_k = p.get("top_k")
        if top_k is not None and (not _is_int(top_k) or top_k < -1):
            raise _bad(f"top_k must be -1 (disable), 0 or at least 1, got {top_k!r}.", "top_k")
        n_choices = p.get("n", 1)
        if n_choices is not None and (not _is_int(n_choices) or n_choices < 1):
            raise _bad(f"n must be at least 1, got {n_choices!r}.", "n")
        if n_choices not in (None, 1):
            raise _bad("the emulator generates one choice per request (n must be 1)", "n")
        seed = p.get("seed")
        if seed is not None and not _is_int(seed):
            raise _bad("seed must be an integer", "seed")
        max_tokens = p.get("max_completion_tokens")
        max_param = "max_completion_tokens"
        if max_tokens is None:
            max_tokens = p.get("max_tokens")
            max_param = "max_tokens"
        if max_tokens is not None and (not _is_int(max_tokens) or max_tokens < 1):
            raise _bad(f"{max_param} must be at least 1, got {max_tokens!r}.", max_param)
        min_tokens = p.get("min_tokens", 0)
        if min_tokens is None:
            min_tokens = 0
        if not _is_int(min_tokens) or min_tokens < 0:
            raise _bad(f"min_tokens must be greater than or equal to 0, got {min_tokens!r}.")
        if max_tokens is not None and min_tokens > max_tokens:
            raise _bad(
                f"min_tokens must be less than or equal to max_tokens={max_tokens}, "
                f"got {min_tokens}.",
                "min_tokens",
            )
        ignore_eos = p.get("ignore_eos", False)
        if not isinstance(ignore_eos, bool):
            raise _bad("ignore_eos must be a boolean", "ignore_eos")
        stops = _stops(p.get("stop"))
        include_stop = bool(p.get("include_stop_str_in_output", False))
        logprobs = p.get("logprobs")
        if logprobs is not None and not isinstance(logprobs, bool):
            raise _bad("logprobs must be a boolean", "logprobs")
        top_logprobs = p.get("top_logprobs")
        if top_logprobs is not None and (not _is_int(top_logprobs) or not 0 <= top_logprobs <= 20):
            raise _bad("top_logprobs must be between 0 and 20", "top_logprobs")

        # -- images (their tokens count toward the context)
        scenes = [await self._scene(url) for url in image_urls]
        for sc in scenes:
            prompt_tokens += image_prompt_tokens(sc.size, s.max_pixels)

        # -- context length
        if prompt_tokens >= s.max_model_len:
            raise _bad(
                f"This model's maximum context length is {s.max_model_len} tokens. However, "
                f"your request has {prompt_tokens} input tokens. Please reduce the length of "
                "the input messages.",
                "messages",
            )
        room = s.max_model_len - prompt_tokens
        if max_tokens is not None and max_tokens > room:
            raise _bad(
                f"'{max_param}' is too large: {max_tokens}. This model's maximum context length "
                f"is {s.max_model_len} tokens and your request has {prompt_tokens} input tokens "
                f"({max_tokens} > {s.max_model_len} - {prompt_tokens}).",
                max_param,
            )
        limit = max_tokens if max_tokens is not None else room

        # -- guided decoding
        constraint = self._constraint(p)

        # -- the answer
        scene = scenes[0] if scenes else None
        rng = random.Random(seed) if seed is not None and temperature > 0 else None
        question = user_texts[-1] if user_texts else ""
        text = self._answer(constraint, scene, system_texts, user_texts, question, rng)

        # -- stop / min_tokens / max_tokens
        finish = "stop"
        stop_reason: str | None = None
        if stops:
            min_chars = len("".join(split_tokens(text)[:min_tokens])) if min_tokens else 0
            best = -1
            for stop in stops:
                at = text.find(stop, min_chars)
                if at != -1 and (best == -1 or at < best):
                    best, stop_reason = at, stop
            if best != -1 and stop_reason is not None:
                text = text[: best + (len(stop_reason) if include_stop else 0)]
        pieces = split_tokens(text)
        want = limit if ignore_eos and stop_reason is None else min_tokens
        if len(pieces) < want:
            extra = want - len(pieces)
            pieces.extend(itertools.islice(itertools.cycle(_FILLER), extra))
        if len(pieces) > limit or (ignore_eos and stop_reason is None):
            del pieces[limit:]
            finish, stop_reason = "length", None
        return _Job(
            request_id=f"chatcmpl-{uuid.uuid4().hex}",
            stream=stream,
            include_usage=include_usage,
            continuous_usage=continuous,
            prompt_tokens=prompt_tokens,
            pieces=pieces,
            finish_reason=finish,
            stop_reason=stop_reason,
        )

    def _constraint(self, p: dict[str, Any]) -> tuple[str, Any] | None:
        """Return ``(kind, value)`` of the one guided-decoding constraint, if any."""
        found: list[tuple[str, Any]] = []
        ignore = self._settings.ignore_guided
        for name in _GUIDED_FIELDS:
            value = p.get(name)
            if value is None:
                continue
            if ignore:
                log.debug("emulator: ignoring %s (--ignore-guided)", name)
                continue
            found.append((name[len("guided_") :], value))
        so = p.get("structured_outputs")
        if so is not None:
            if not isinstance(so, dict):
                raise _bad("structured_outputs must be an object", "structured_outputs")
            for key in ("json", "regex", "choice", "grammar"):
                if so.get(key) is not None:
                    found.append((key, so[key]))
            if so.get("json_object"):
                found.append(("json_object", True))
        rf = p.get("response_format")
        if rf is not None:
            if not isinstance(rf, dict) or rf.get("type") not in (
                "text",
                "json_object",
                "json_schema",
            ):
                raise _bad(
                    "response_format must be {'type': 'text' | 'json_object' | 'json_schema'}",
                    "response_format",
                )
            if rf["type"] == "json_object":
                found.append(("json_object", True))
            elif rf["type"] == "json_schema":
                js = rf.get("json_schema")
                schema = js.get("schema") if isinstance(js, dict) else None
                if not isinstance(schema, dict):
                    raise _bad(
                        "response_format json_schema needs json_schema.schema (an object)",
                        "response_format",
                    )
                found.append(("json", schema))
        if not found:
            return None
        if len(found) > 1:
            raise _bad(
                "You can only use one kind of guided decoding "
                "('guided_json', 'guided_regex', 'guided_choice' or 'response_format')."
            )
        kind, value = found[0]
        if kind == "json":
            if isinstance(value, str):
                try:
                    value = json.loads(value)
                except ValueError as exc:
                    raise _bad(f"guided_json is not valid JSON: {exc}", "guided_json") from None
            if not isinstance(value, (dict, bool)):
                raise _bad("guided_json must be a JSON schema object", "guided_json")
        elif kind == "choice":
            if (
                not isinstance(value, list)
                or not value
                or not all(isinstance(c, str) for c in value)
            ):
                raise _bad("guided_choice must be a non-empty list of strings", "guided_choice")
        elif kind == "regex":
            if not isinstance(value, str):
                raise _bad("guided_regex must be a string", "guided_regex")
            try:
                guided.check_regex(value)
            except guided.GuidedError as exc:
                raise _bad(str(exc), "guided_regex") from None
        elif kind == "grammar":
            if not isinstance(value, str):
                raise _bad("guided_grammar must be a string", "guided_grammar")
            log.info("emulator: guided_grammar is accepted but not enforced by the emulator")
            return None
        return kind, value

    def _answer(
        self,
        constraint: tuple[str, Any] | None,
        scene: Scene | None,
        system_texts: list[str],
        user_texts: list[str],
        question: str,
        rng: random.Random | None,
    ) -> str:
        s = self._settings
        schema_key = None
        if constraint is not None and constraint[0] == "json":
            schema_key = guided.schema_task_key(constraint[1])
        task = detect_task(schema_key, "\n".join(system_texts + user_texts))
        prompt = "\n".join(user_texts)
        if task == "phrase_grounding":
            obj = grounding_output(scene, prompt, s.box_format, s.max_pixels, rng)
            natural = [render_json(obj)]
            answer = obj["phrase_grounding"]["sentence"]
        elif task == "vqa":
            obj = vqa_output(scene, question, rng)
            natural = [render_json(obj)]
            answer = obj["vqa"]["answer"]
        else:
            try:
                natural = [
                    render_json(guided.schema_instance(constraint[1] if constraint else {}, rng))
                ]
            except guided.GuidedError as exc:
                raise _bad(str(exc), "guided_json") from None
            answer = natural[0]
        if constraint is None or constraint[0] in ("json", "json_object"):
            text = natural[0]
        elif constraint[0] == "choice":
            text = guided.choose(constraint[1], [answer, natural[0]], rng)
        else:  # regex
            try:
                text = guided.regex_output(constraint[1], [answer, natural[0]], rng)
            except guided.GuidedError as exc:
                raise _bad(str(exc), "guided_regex") from None
        if s.reasoning:
            n_regions = len(scene.regions) if scene is not None else 0
            text = (
                "<think>\nThe emulator scans the image for solid colour regions and finds "
                f"{n_regions}. It answers from those regions.\n</think>\n\n" + text
            )
        return text

    async def _scene(self, url: str) -> Scene:
        key = (len(url), hash(url), url[-48:])
        cached = self._scenes.get(key)
        if cached is not None:
            self._scenes.move_to_end(key)
            return cached
        if url.startswith("data:"):
            data = _decode_data_uri(url)
        elif url.startswith(("http://", "https://")):
            data = await self._fetch(url)
        else:
            raise _bad(
                "image_url must be a data: URI (data:image/...;base64,...) or an http(s) URL",
                "messages",
            )
        try:
            if len(data) > 32 * 1024:
                scene = await asyncio.to_thread(analyse_bytes, data)
            else:
                scene = analyse_bytes(data)
        except ValueError as exc:
            raise _bad(f"Failed to load image: {exc}", "messages") from None
        self._scenes[key] = scene
        if len(self._scenes) > _SCENE_CACHE_SIZE:
            self._scenes.popitem(last=False)
        return scene

    async def _fetch(self, url: str) -> bytes:
        if self._http is None:
            self._http = ClientSession(timeout=ClientTimeout(total=30))
        try:
            async with self._http.get(url) as resp:
                if resp.status != 200:
                    raise _bad(f"fetching the image at {url} returned HTTP {resp.status}")
                return await resp.read()
        except ClientError as exc:
            raise _bad(f"cannot fetch the image at {url}: {exc}") from None


def _json(obj: Any) -> web.Response:
    return web.Response(body=orjson.dumps(obj), headers={"Content-Type": "application/json"})


async def _sleep_until(loop: asyncio.AbstractEventLoop, when: float) -> None:
    delay = when - loop.time()
    if delay > 0:
        await asyncio.sleep(delay)


def _drop(request: web.Request) -> None:
    transport = request.transport
    if transport is not None:
        transport.close()


def _decode_data_uri(url: str) -> bytes:
    m = _DATA_URI.match(url)
    if m is None:
        raise _bad("Invalid data URI: expected data:<mime>;base64,<data>", "messages")
    if not m.group(3):
        raise _bad("Invalid data URI: only base64-encoded images are supported", "messages")
    mime = m.group(1) or ""
    if mime and not mime.startswith("image/"):
        raise _bad(f"Invalid data URI: {mime!r} is not an image type", "messages")
    try:
        return base64.b64decode(url[m.end() :], validate=True)
    except (binascii.Error, ValueError) as exc:
        raise _bad(
            f"Invalid data URI: the base64 payload cannot be decoded ({exc})", "messages"
        ) from None


def _number(
    p: dict[str, Any],
    name: str,
    default: float,
    *,
    lo: float | None = None,
    hi: float | None = None,
    lo_open: bool = False,
) -> float:
    value = p.get(name)
    if value is None:
        return default
    if not _is_num(value):
        raise _bad(f"{name} must be a number, got {value!r}", name)
    v = float(value)
    if lo is not None and (v < lo or (lo_open and v == lo)):
        bound = f"greater than {lo}" if lo_open else f"at least {lo}"
        raise _bad(f"{name} must be {bound}, got {v}.", name)
    if hi is not None and v > hi:
        raise _bad(f"{name} must be at most {hi}, got {v}.", name)
    return v


def _stops(value: object) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value] if value else []
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return [v for v in value if v]
    raise _bad("stop must be a string or a list of strings", "stop")


def _read_messages(messages: object) -> tuple[list[str], list[str], list[str], int]:
    """Validate ``messages``; return system texts, user texts, image URLs and prompt tokens."""
    if not isinstance(messages, list) or not messages:
        raise _bad("messages must be a non-empty list of message objects", "messages")
    system_texts: list[str] = []
    user_texts: list[str] = []
    images: list[str] = []
    tokens = 3  # assistant turn header
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict):
            raise _bad(f"messages[{i}] must be an object", "messages")
        role = msg.get("role")
        if role not in _ROLES:
            raise _bad(
                f"messages[{i}].role must be one of system, user, assistant, tool, developer; "
                f"got {role!r}",
                "messages",
            )
        tokens += 4
        content = msg.get("content")
        texts: list[str] = []
        if isinstance(content, str):
            texts.append(content)
        elif isinstance(content, list):
            for j, part in enumerate(content):
                if not isinstance(part, dict):
                    raise _bad(f"messages[{i}].content[{j}] must be an object", "messages")
                kind = part.get("type")
                if kind in ("text", "input_text"):
                    text = part.get("text")
                    if not isinstance(text, str):
                        raise _bad(f"messages[{i}].content[{j}].text must be a string", "messages")
                    texts.append(text)
                elif kind == "image_url":
                    iu = part.get("image_url")
                    url = iu.get("url") if isinstance(iu, dict) else iu
                    if not isinstance(url, str) or not url:
                        raise _bad(
                            f"messages[{i}].content[{j}].image_url.url must be a string",
                            "messages",
                        )
                    images.append(url)
                else:
                    raise _bad(
                        f"messages[{i}].content[{j}].type {kind!r} is not supported "
                        "(use 'text' or 'image_url')",
                        "messages",
                    )
        elif content is None:
            if role != "assistant":
                raise _bad(f"messages[{i}].content is required for role {role!r}", "messages")
        else:
            raise _bad(
                f"messages[{i}].content must be a string or a list of content parts", "messages"
            )
        for text in texts:
            tokens += count_tokens(text)
        if role in ("system", "developer"):
            system_texts.extend(texts)
        elif role == "user":
            user_texts.append("\n".join(texts))
    return system_texts, user_texts, images, tokens


def image_prompt_tokens(size: tuple[int, int], max_pixels: int) -> int:
    """Prompt tokens of one image: one per 28×28 patch after the Qwen2.5-VL resize, plus 2.

    Args:
        size: ``(width, height)`` of the image as sent.
        max_pixels: Vision pixel budget.
    """
    return qwen_image_tokens(size[0], size[1], max_pixels=max_pixels) + 2
