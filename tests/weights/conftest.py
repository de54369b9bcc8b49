"""A fake Datature Vi API on loopback (the Vi cloud is not reachable from here) and model archives.

The fake serves the documented outputs endpoint, as vi-sdk 0.1.0b7 speaks to it
(``Authorization: Bearer <secret key>``, ``Organization-Id``; anything else is 401, and the query
must be ``intent=sdkLocalDeploy&contents=y``), and a "storage" route for the pre-signed
download URLs it hands out, with knobs for the failure modes the weights code must handle:
dropped connections, expired URLs, missing contents, wrong credentials.
"""

from __future__ import annotations

import io
import json
import sys
import tarfile
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from aiohttp import web

import nim_async.deploy.weights.download as weights_module
from nim_async.config import NIMConfig

SECRET = "vi-sk-TOPSECRET-0123456789abcdef"
ORG = "org-7f3a"
RUN_ID = "run-abc123"
NGC_KEY = "nvapi-test-key-not-real"

QWEN_CONFIG = {
    "architectures": ["Qwen2_5_VLForConditionalGeneration"],
    "model_type": "qwen2_5_vl",
    "hidden_size": 64,
}

RUN_JSON = {
    "runId": RUN_ID,
    "spec": {
        "flow": {
            "blocks": [
                {"block": "dataset", "settings": {"projectKind": "PhraseGrounding"}},
                {
                    "block": "system-prompt",
                    "settings": {"systemPrompt": "You find things in pictures."},
                },
                {"block": "model", "settings": {"architecture": "qwen2.5-vl-7b"}},
            ]
        }
    },
}


def weights_bytes(size: int = 192 * 1024, seed: int = 7) -> bytes:
    """Deterministic pseudo-random bytes standing in for a safetensors file."""
    out = bytearray()
    value = seed
    while len(out) < size:
        value = (value * 6364136223846793005 + 1442695040888963407) % 2**64
        out += value.to_bytes(8, "little")
    return bytes(out[:size])


def make_tar(files: dict[str, bytes], *, extra: list[tarfile.TarInfo] | None = None) -> bytes:
    """Build an in-memory tar archive from ``{name: content}`` plus raw extra members."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, content in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(content))
        for info in extra or []:
            tar.addfile(info)
    return buffer.getvalue()


def model_files(
    *,
    config: dict[str, Any] | None = None,
    run_json: dict[str, Any] | None = None,
    weights: bytes | None = None,
    adapter: bool = False,
    full: bool = True,
) -> dict[str, bytes]:
    """The files of a tiny Vi model archive (``model_full/`` and optionally ``model_adapter/``)."""
    files: dict[str, bytes] = {}
    if full:
        files["model_full/config.json"] = json.dumps(config or QWEN_CONFIG).encode()
        files["model_full/run.json"] = json.dumps(run_json or RUN_JSON).encode()
        files["model_full/model.safetensors"] = weights if weights is not None else weights_bytes()
    if adapter:
        files["model_adapter/adapter_config.json"] = b'{"peft_type": "LORA", "r": 8}'
        files["model_adapter/adapter_model.safetensors"] = weights_bytes(4096, seed=3)
    return files


def model_archive(**kwargs: Any) -> bytes:
    """A tiny Vi model archive (see :func:`model_files`)."""
    return make_tar(model_files(**kwargs))


@dataclass
class FakeVi:
    """State and knobs of the fake Vi API."""

    url: str = ""
    # runOutputId -> archive bytes; the last one is the "latest" checkpoint.
    outputs: dict[str, bytes] = field(default_factory=dict)
    runs: set[str] = field(default_factory=lambda: {RUN_ID})
    paged: bool = True
    ready: bool = True
    status_override: int | None = None
    # Answer this many of the next API requests with a transient 503 / 429.
    transient_failures: int = 0
    # How many of the next URLs to issue already expired (expiresAt in the past).
    expired_urls: int = 0
    # How many of the next URLs the storage refuses with 403 although not yet expired.
    refused_urls: int = 0
    # Drop the connection after this many bytes, for the next `drops` storage requests.
    drop_after: int | None = None
    drops: int = 0
    support_range: bool = True
    api_requests: list[dict[str, Any]] = field(default_factory=list)
    storage_requests: list[dict[str, Any]] = field(default_factory=list)
    _tokens: dict[str, tuple[str, float, bool]] = field(default_factory=dict)

    def _model(self, output_id: str) -> dict[str, Any]:
        model: dict[str, Any] = {
            "kind": "RunOutput",
            "runId": RUN_ID,
            "runOutputId": output_id,
            "spec": {"kind": "nim", "format": "huggingface"},
            "status": {"conditions": [{"condition": "Exported", "status": "Reached"}]},
        }
        if self.ready:
            token = f"tok{len(self._tokens)}"
            expired = self.expired_urls > 0
            if expired:
                self.expired_urls -= 1
            refused = self.refused_urls > 0
            if refused:
                self.refused_urls -= 1
            expires = time.time() + (-120 if expired else 3600)
            self._tokens[token] = (output_id, expires, refused)
            model["status"]["contents"] = {
                "downloadUrl": {
                    "url": f"{self.url}/storage/{token}?X-Signature=sig{token}",
                    "method": "GET",
                    "expiresAt": int(expires * 1000),
                }
            }
        return model

    async def outputs_handler(self, request: web.Request) -> web.Response:
        self.api_requests.append(
            {
                "path": request.path,
                "query": dict(request.query),
                "headers": dict(request.headers),
            }
        )
        if self.transient_failures > 0:
            self.transient_failures -= 1
            return web.json_response(
                {"message": "busy"}, status=503 if self.transient_failures % 2 else 429
            )
        if self.status_override is not None:
            return web.json_response({"message": "nope"}, status=self.status_override)
        # Only vi-sdk's wire is accepted: Authorization: Bearer <key> and Organization-Id.
        if request.headers.get("Authorization") != f"Bearer {SECRET}":
            return web.json_response({"message": "Invalid secret key"}, status=401)
        if "Organization-Id" not in request.headers:
            return web.json_response({"message": "Missing Organization-Id"}, status=401)
        if request.match_info["org"] != ORG or request.headers["Organization-Id"] != ORG:
            return web.json_response({"message": "Forbidden"}, status=403)
        if dict(request.query) != {"intent": "sdkLocalDeploy", "contents": "y"}:
            return web.json_response({"message": "Bad query"}, status=400)
        if request.match_info["run"] not in self.runs:
            return web.json_response({"message": "Run not found"}, status=404)
        ckpt = request.match_info.get("ckpt")
        if ckpt is not None:
            if ckpt not in self.outputs:
                return web.json_response({"message": "Run output not found"}, status=404)
            return web.json_response(self._model(ckpt))
        models = [self._model(output_id) for output_id in self.outputs]
        if self.paged:
            return web.json_response({"items": models, "nextPage": None})
        return web.json_response(models[-1])

    async def storage_handler(self, request: web.Request) -> web.StreamResponse:
        token = request.match_info["token"]
        range_header = request.headers.get("Range")
        self.storage_requests.append(
            {"token": token, "range": range_header, "headers": dict(request.headers)}
        )
        if token not in self._tokens:
            return web.Response(status=404, text="NoSuchKey")
        output_id, expires, refused = self._tokens[token]
        if refused or expires < time.time():
            return web.Response(status=403, text="<Error>Request has expired</Error>")
        data = self.outputs[output_id]
        start = 0
        status = 200
        headers = {"Content-Type": "application/x-tar", "Accept-Ranges": "bytes"}
        if range_header and self.support_range:
            start = int(range_header.removeprefix("bytes=").split("-", 1)[0])
            if start >= len(data):
                return web.Response(status=416)
            status = 206
            headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
        body = data[start:]
        headers["Content-Length"] = str(len(body))
        response = web.StreamResponse(status=status, headers=headers)
        await response.prepare(request)
        if self.drops > 0 and self.drop_after is not None:
            self.drops -= 1
            await response.write(body[: self.drop_after])
            assert request.transport is not None
            request.transport.close()  # the connection breaks mid-body
            return response
        await response.write(body)
        await response.write_eof()
        return response


@pytest.fixture(autouse=True)
def _no_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    """Retries in these tests need no real waiting."""
    monkeypatch.setattr(weights_module, "_BACKOFF_BASE", 0.0)


@pytest.fixture
async def fake_vi() -> AsyncIterator[FakeVi]:
    """A running fake Vi API serving one tiny model archive for ``RUN_ID``."""
    fake = FakeVi(outputs={"out-1": model_archive()})
    app = web.Application()
    app.router.add_get("/workspaces/{org}/runs/{run}/outputs", fake.outputs_handler)
    app.router.add_get("/workspaces/{org}/runs/{run}/outputs/{ckpt}", fake.outputs_handler)
    app.router.add_get("/storage/{token}", fake.storage_handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    fake.url = f"http://127.0.0.1:{port}"
    try:
        yield fake
    finally:
        await runner.cleanup()


@pytest.fixture
def models_dir(tmp_path: Path) -> Path:
    """Where downloaded models go (``model_save_path``)."""
    return tmp_path / "models"


@pytest.fixture
def vi_config(fake_vi: FakeVi, models_dir: Path) -> Callable[..., NIMConfig]:
    """Build a NIMConfig pointing at the fake Vi API (keyword overrides allowed)."""

    def build(**overrides: Any) -> NIMConfig:
        values: dict[str, Any] = {
            "nvidia_api_key": NGC_KEY,
            "secret_key": SECRET,
            "organization_id": ORG,
            "run_id": RUN_ID,
            "endpoint": fake_vi.url + "/",
            "model_save_path": models_dir,
        }
        values.update(overrides)
        return NIMConfig(**values)

    return build


def all_paths(root: Path) -> set[str]:
    """Every path below ``root``, relative, as strings."""
    return {str(p.relative_to(root)) for p in root.rglob("*")}


@pytest.fixture
def kit() -> ModuleType:
    """This module: constants (SECRET, ORG, RUN_ID, ...) and archive builders for the tests."""
    return sys.modules[__name__]
