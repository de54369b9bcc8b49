"""Custom weights deployed on the real Docker engine (the NIM image is the emulator's: an
emulator, not a model). A loopback fake Vi API stands in for the unreachable Vi cloud."""

from __future__ import annotations

import io
import json
import tarfile
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiohttp import web

from nim_async.config import NIMConfig
from nim_async.deploy.deployer import AsyncNIMDeployer
from nim_async.deploy.docker import DockerClient
from nim_async.deploy.weights import CONTAINER_MODEL_DIR
from nim_async.errors import ModelIncompatibilityError
from nim_async.predict.predictor import AsyncNIMPredictor

pytestmark = pytest.mark.docker

MakeConfig = Callable[..., NIMConfig]

VI_SECRET = "vi-sk-DEPLOYTEST-0123456789"
VI_ORG = "org-deploy"
VI_RUN = "run-deploy-1"
QWEN = {
    "architectures": ["Qwen2_5_VLForConditionalGeneration"],
    "model_type": "qwen2_5_vl",
    "nim_async_test_marker": "custom-weights-deploy",
}
RUN_JSON = {
    "flow": {
        "blocks": [
            {"block": "dataset", "settings": {"projectKind": "Vqa"}},
            {"block": "system-prompt", "settings": {"systemPrompt": "Answer in one word."}},
        ]
    }
}


def _model_files(config: dict[str, Any]) -> dict[str, bytes]:
    return {
        "model_full/config.json": json.dumps(config).encode(),
        "model_full/run.json": json.dumps(RUN_JSON).encode(),
        "model_full/model.safetensors": bytes(range(256)) * 64,
    }


def _tar(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, content in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
    return buffer.getvalue()


@pytest.fixture
async def fake_vi_url() -> AsyncIterator[str]:
    """A minimal loopback Vi API serving one run whose archive holds a Qwen2.5-VL config."""
    archive = _tar(_model_files(QWEN))
    base = ""

    async def outputs(request: web.Request) -> web.Response:
        if request.headers.get("Authorization") != f"Bearer {VI_SECRET}":
            return web.json_response({"message": "unauthorized"}, status=401)
        model = {
            "runId": VI_RUN,
            "runOutputId": "out-1",
            "spec": {"kind": "nim"},
            "status": {
                "contents": {
                    "downloadUrl": {
                        "url": f"{base}/storage/model.tar?sig=abc",
                        "expiresAt": int((time.time() + 600) * 1000),
                    }
                }
            },
        }
        return web.json_response({"items": [model], "nextPage": None})

    async def storage(request: web.Request) -> web.Response:
        return web.Response(body=archive, content_type="application/x-tar")

    app = web.Application()
    app.router.add_get(f"/workspaces/{VI_ORG}/runs/{VI_RUN}/outputs", outputs)
    app.router.add_get("/storage/model.tar", storage)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    base = f"http://127.0.0.1:{port}"
    try:
        yield base
    finally:
        await runner.cleanup()


async def _get_json(url: str) -> Any:
    async with httpx.AsyncClient(trust_env=False, timeout=10) as client:
        response = await client.get(url)
        response.raise_for_status()
        return response.json()


async def _assert_custom_weights_container(
    docker_client: DockerClient, container_id: str, host_dir: Path, base_url: str
) -> None:
    info = await docker_client.inspect_container(container_id)
    assert info is not None
    env = dict(item.split("=", 1) for item in info["Config"]["Env"])
    assert env["NIM_MODEL_NAME"] == CONTAINER_MODEL_DIR
    mounts = {m["Destination"]: m for m in info["Mounts"]}
    weights = mounts[CONTAINER_MODEL_DIR]
    assert weights["Type"] == "bind"
    assert weights["RW"] is False  # read-only
    assert weights["Source"] == str(host_dir)  # tmp_path is already resolved

    # The emulator in the container read config.json through the mount and reports the model
    # directory as the model root, as NIM does for NIM_MODEL_NAME.
    models = await _get_json(f"{base_url}/v1/models")
    assert [card["root"] for card in models["data"]] == [CONTAINER_MODEL_DIR]
    metadata = await _get_json(f"{base_url}/v1/metadata")
    config = metadata["modelInfo"][0]["config"]
    assert config["nim_async_test_marker"] == "custom-weights-deploy"


async def test_deploy_vi_run_mounts_weights_read_only(
    nim_config: MakeConfig,
    docker_client: DockerClient,
    fake_vi_url: str,
    tmp_path: Path,
) -> None:
    config = nim_config(
        secret_key=VI_SECRET,
        organization_id=VI_ORG,
        run_id=VI_RUN,
        endpoint=fake_vi_url,
        model_save_path=tmp_path / "vi-models",
    )
    async with AsyncNIMDeployer(config, quiet=True) as deployer:
        result = await deployer.deploy()

    host_dir = tmp_path / "vi-models" / VI_RUN / "model_full"
    assert (host_dir / "model.safetensors").is_file()
    await _assert_custom_weights_container(
        docker_client, result.container_id, host_dir, result.base_url
    )

    # The predictor built from the same config takes the task type and system prompt from the
    # downloaded run.json and talks to the deployed container.
    async with AsyncNIMPredictor(config=config) as predictor:
        assert predictor.task_type == "vqa"
        assert predictor.model_name == config.served_model_name
        assert await predictor.list_models() == [config.served_model_name]


async def test_deploy_local_checkpoint(
    nim_config: MakeConfig, docker_client: DockerClient, tmp_path: Path
) -> None:
    root = tmp_path / "ckpt"
    for name, content in _model_files(QWEN).items():
        path = root / name.removeprefix("model_full/")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
    config = nim_config(model_path=root)

    result = await AsyncNIMDeployer(config, quiet=True).deploy()

    await _assert_custom_weights_container(
        docker_client, result.container_id, root, result.base_url
    )


async def test_mismatched_config_raises_before_any_container(
    nim_config: MakeConfig, docker_client: DockerClient, tmp_path: Path
) -> None:
    root = tmp_path / "llama"
    root.mkdir()
    (root / "config.json").write_text(
        json.dumps({"architectures": ["LlamaForCausalLM"], "model_type": "llama"})
    )
    (root / "model.safetensors").write_bytes(b"weights")
    config = nim_config(model_path=root)

    with pytest.raises(ModelIncompatibilityError) as info:
        await AsyncNIMDeployer(config, quiet=True).deploy()

    assert info.value.image_name == config.image_name
    assert info.value.details is not None
    assert "LlamaForCausalLM" in info.value.details
    assert await docker_client.inspect_container(config.container_name) is None
