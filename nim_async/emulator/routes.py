"""The emulator's HTTP routes: NIM's and vLLM's endpoints over one :class:`ServerState`.

NIM: ``/v1/health/live``, ``/v1/health/ready``, ``/v1/version``, ``/v1/metadata``,
``/v1/metrics``. vLLM: ``/health`` (200 with an empty body once ready), ``/version``
(``{"version": ...}``), ``/metrics``. Both: ``/v1/models``, ``POST /v1/chat/completions``.
"""

from __future__ import annotations

import importlib.metadata
from typing import Any

import orjson
from aiohttp import web

from nim_async.emulator.chat import ChatEndpoint
from nim_async.emulator.state import ServerState

__all__ = ["EMULATOR_NOTE", "OWNED_BY", "PACKAGE_VERSION", "build_app"]

OWNED_BY = "nim-async-emulator"
"""``owned_by`` of the served model: marks the server as an emulator."""

EMULATOR_NOTE = "nim-async NIM emulator: a NIM-compatible test double, not a model"


def _package_version() -> str:
    try:
        return importlib.metadata.version("nim-async")
    except importlib.metadata.PackageNotFoundError:
        return "0+unknown"


PACKAGE_VERSION = _package_version()
"""Version of the installed ``nim-async`` distribution."""


def _json(obj: Any, status: int = 200) -> web.Response:
    return web.Response(
        status=status, body=orjson.dumps(obj), headers={"Content-Type": "application/json"}
    )


class _Routes:
    def __init__(self, state: ServerState) -> None:
        self.state = state

    def root(self) -> str:
        s = self.state.settings
        return s.model_path or s.served_model_name

    async def live(self, request: web.Request) -> web.Response:
        return _json({"object": "health.response", "message": "Service is live."})

    async def ready(self, request: web.Request) -> web.Response:
        if self.state.is_ready():
            return _json({"object": "health.response", "message": "Service is ready."})
        return _json({"object": "health.response", "message": "Service is not ready."}, 503)

    async def vllm_health(self, request: web.Request) -> web.Response:
        return web.Response(status=200 if self.state.is_ready() else 503)

    async def models(self, request: web.Request) -> web.Response:
        s = self.state.settings
        card = {
            "id": s.served_model_name,
            "object": "model",
            "created": self.state.created,
            "owned_by": OWNED_BY,
            "root": self.root(),
            "parent": None,
            "max_model_len": s.max_model_len,
            "permission": [],
        }
        return _json({"object": "list", "data": [card]})

    async def nim_version(self, request: web.Request) -> web.Response:
        return _json(
            {
                "release": f"{PACKAGE_VERSION}-emulator",
                "api": "1.0.0",
                "emulator": True,
                "vllm": self.state.settings.vllm_version,
            }
        )

    async def vllm_version(self, request: web.Request) -> web.Response:
        return _json({"version": self.state.settings.vllm_version})

    async def metadata(self, request: web.Request) -> web.Response:
        s = self.state.settings
        info = {
            "shortName": s.served_model_name,
            "modelUrl": self.root(),
            "boxFormat": s.box_convention,
            "maxModelLen": s.max_model_len,
            "config": self.state.model_config,
        }
        return _json(
            {
                "emulator": True,
                "description": EMULATOR_NOTE,
                "version": f"{PACKAGE_VERSION}-emulator",
                "modelInfo": [info],
                "assetInfo": [],
                "licenseInfo": {"name": "Apache-2.0", "note": "emulator, no model weights"},
                "repository_override": "",
            }
        )

    async def metrics(self, request: web.Request) -> web.Response:
        text = self.state.metrics.render(self.state.settings.served_model_name)
        return web.Response(
            body=text.encode(), headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"}
        )


def build_app(state: ServerState) -> web.Application:
    """The aiohttp application serving every route over ``state``."""
    routes = _Routes(state)
    app = web.Application(client_max_size=256 * 1024 * 1024)
    add = app.router.add_get
    add("/v1/health/live", routes.live)
    add("/v1/health/ready", routes.ready)
    add("/health", routes.vllm_health)
    add("/v1/models", routes.models)
    add("/v1/version", routes.nim_version)
    add("/version", routes.vllm_version)
    add("/v1/metadata", routes.metadata)
    add("/v1/metrics", routes.metrics)
    add("/metrics", routes.metrics)
    app.router.add_post("/v1/chat/completions", ChatEndpoint(state).handle)
    return app
