"""merge_adapter in the deploy path: the weights preparation, and a real deploy on dockerd.

The weights are a run folder (``model_full/`` + ``model_adapter/``) written with numpy. The
docker test deploys the emulator image from the local registry of ``scripts/test-env.sh`` (an
emulator, not a model) and checks that the merged directory is what is mounted as
``NIM_MODEL_NAME``; an adapter that cannot be merged fails before any container exists.
"""

from __future__ import annotations

import asyncio
import json
import os
import shlex
import socket
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import numpy as np
import pytest

from nim_async.config import NIMConfig
from nim_async.deploy.events import Notice, TransferFinished, TransferProgress, TransferStarted
from nim_async.deploy.lora import MERGE_MARKER, MERGED_DIR
from nim_async.deploy.weights import CONTAINER_MODEL_DIR, LORA_WARNING, prepare_weights
from nim_async.errors import ModelIncompatibilityError

P = "base_model.model."
KEY = "nvapi-lora-test"
QWEN = {
    "architectures": ["Qwen2_5_VLForConditionalGeneration"],
    "model_type": "qwen2_5_vl",
    "nim_async_test_marker": "merged-lora",
}


BROKEN = {  # how a run's adapter is broken -> what the error must name
    "dora": "DoRA",
    "unknown_module": "has no counterpart in the base checkpoint",
    "base_mismatch": "base mismatch",
    "truncated": "not a valid safetensors file",
}


def _run_folder(synth: ModuleType, root: Path, *, broken: str | None = None) -> Path:
    rng = np.random.default_rng(5)
    shards = [
        {f"model.layers.{i}.self_attn.q_proj.weight": ("BF16", synth.bf16_exact(rng, (16, 16)))}
        for i in range(2)
    ]
    full = synth.write_base(root / "model_full", shards, {"tokenizer.json": "{}"})
    (full / "config.json").write_text(json.dumps(QWEN))
    tensors = {}
    for i in range(2):
        layer = 7 if broken == "unknown_module" and i == 1 else i  # the base has layers 0, 1
        name = f"{P}model.language_model.layers.{layer}.self_attn.q_proj"
        cols = 32 if broken == "base_mismatch" and i == 1 else 16  # trained on a wider model
        tensors[f"{name}.lora_A.weight"] = (
            "F32",
            rng.standard_normal((4, cols)).astype(np.float32),
        )
        tensors[f"{name}.lora_B.weight"] = ("F32", rng.standard_normal((16, 4)).astype(np.float32))
    adapter = synth.write_adapter(
        root / "model_adapter", tensors, target_modules=["q_proj"], use_dora=broken == "dora"
    )
    if broken == "truncated":  # a download cut short
        weights = adapter / "adapter_model.safetensors"
        weights.write_bytes(weights.read_bytes()[:-100])
    return root


def _no_merge_output(root: Path) -> None:
    """No merged entry and no half-written staging directory under the run's cache."""
    cache = root / MERGED_DIR
    left = [p.name for p in cache.iterdir()] if cache.exists() else []
    assert [n for n in left if n != ".hashes.json"] == []


async def test_prepare_weights_serves_the_merged_checkpoint(
    tmp_path: Path, synth: ModuleType
) -> None:
    root = _run_folder(synth, tmp_path / "run")
    events: list[Any] = []
    config = NIMConfig(nvidia_api_key=KEY, model_path=root, merge_adapter=True)
    prepared = await prepare_weights(config, on_event=events.append)
    assert prepared is not None
    assert prepared.has_adapter
    host = prepared.host_dir
    assert host.parent == root / MERGED_DIR
    assert (host / MERGE_MARKER).is_file()
    assert json.loads((host / "config.json").read_text()) == QWEN
    assert sorted(p.name for p in host.glob("*.safetensors")) == sorted(
        p.name for p in (root / "model_full").glob("*.safetensors")
    )
    kinds = [type(e) for e in events]
    assert kinds[0] is TransferStarted
    progress = [e for e in events if isinstance(e, TransferProgress)]
    assert [e.phase for e in progress] == ["shard 0/2", "shard 1/2", "shard 2/2"]
    assert TransferFinished in kinds
    notices = [e.text for e in events if isinstance(e, Notice)]
    assert not any(LORA_WARNING in n for n in notices)  # the adapter is applied: no warning
    assert any("merged into" in n for n in notices)

    # the second deploy reuses it (no merge progress), overwrite rebuilds it
    events.clear()
    again = await prepare_weights(config, on_event=events.append)
    assert again is not None
    assert again.host_dir == host
    assert not [e for e in events if isinstance(e, TransferProgress)]
    inode = (host / "model-00001-of-00002.safetensors").stat().st_ino
    rebuilt = await prepare_weights(config.model_copy(update={"overwrite": True}))
    assert rebuilt is not None
    assert rebuilt.host_dir == host
    assert (host / "model-00001-of-00002.safetensors").stat().st_ino != inode


async def test_without_merge_the_warning_names_the_option(
    tmp_path: Path, synth: ModuleType
) -> None:
    root = _run_folder(synth, tmp_path / "run")
    events: list[Any] = []
    prepared = await prepare_weights(
        NIMConfig(nvidia_api_key=KEY, model_path=root), on_event=events.append
    )
    assert prepared is not None
    assert prepared.host_dir == root / "model_full"
    assert not (root / MERGED_DIR).exists()
    warning = [e.text for e in events if isinstance(e, Notice)]
    assert warning == [LORA_WARNING]
    assert "merge_adapter=True" in LORA_WARNING
    assert "--merge-adapter" in LORA_WARNING


async def test_quiet_merge_prints_nothing(
    tmp_path: Path, synth: ModuleType, capsys: pytest.CaptureFixture[str]
) -> None:
    root = _run_folder(synth, tmp_path / "run")
    config = NIMConfig(nvidia_api_key=KEY, model_path=root, merge_adapter=True)
    prepared = await prepare_weights(config, quiet=True)
    assert prepared is not None
    assert prepared.host_dir.parent == root / MERGED_DIR
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == ""


@pytest.mark.parametrize("broken", sorted(BROKEN))
async def test_unmergeable_adapter_fails_in_the_preflight(
    tmp_path: Path, synth: ModuleType, broken: str
) -> None:
    root = _run_folder(synth, tmp_path / "run", broken=broken)
    config = NIMConfig(
        nvidia_api_key=KEY, model_path=root, merge_adapter=True, image_name="cosmos-reason1-7b"
    )
    with pytest.raises(ModelIncompatibilityError, match=BROKEN[broken]) as info:
        await prepare_weights(config, quiet=True)
    assert info.value.image_name == "cosmos-reason1-7b"
    _no_merge_output(root)


async def test_merge_progress_is_drawn_by_the_ui(
    tmp_path: Path,
    synth: ModuleType,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Not quiet and no on_event: nim_async.ui's console reporter draws the shard progress."""
    import nim_async  # registers the rich console reporter  # noqa: F401

    monkeypatch.setenv("COLUMNS", "200")
    root = _run_folder(synth, tmp_path / "run")
    await prepare_weights(NIMConfig(nvidia_api_key=KEY, model_path=root, merge_adapter=True))
    err = capsys.readouterr().err
    assert "Merging the LoRA adapter into the model weights" in err
    assert "shard 2/2" in err
    assert "merged checkpoint" in err
    assert "Serving the LoRA fine-tune" in err


_NO_NUMPY_DEPLOY = """
import asyncio, sys
sys.modules["numpy"] = None  # importing numpy now raises ImportError, as if not installed
import importlib.util
_find = importlib.util.find_spec
importlib.util.find_spec = lambda name, *a: None if name == "numpy" else _find(name, *a)
from nim_async.config import NIMConfig
from nim_async.deploy.deployer import AsyncNIMDeployer
from nim_async.errors import InvalidConfigError
config = NIMConfig(nvidia_api_key="nvapi-x", model_path=sys.argv[1], merge_adapter=True,
                   local_cache_dir=sys.argv[2], gpus=None)
async def main():
    async with AsyncNIMDeployer(config, quiet=True) as deployer:
        await deployer.deploy()
try:
    asyncio.run(main())
except InvalidConfigError as exc:
    print("ERR", exc.field, exc)
"""


def test_deploy_without_numpy_fails_before_docker(tmp_path: Path, synth: ModuleType) -> None:
    """No numpy: the deploy names the install command before it talks to Docker at all.

    DOCKER_HOST points at a socket that does not exist, so reaching the image pull (or any
    Docker call) would raise DockerUnavailableError instead.
    """
    root = _run_folder(synth, tmp_path / "run")
    proc = subprocess.run(
        [sys.executable, "-c", _NO_NUMPY_DEPLOY, str(root), str(tmp_path / "cache")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=tmp_path,
        env={
            **os.environ,
            "PYTHONPATH": str(Path(__file__).resolve().parents[2]),
            "DOCKER_HOST": f"unix://{tmp_path / 'no-docker.sock'}",
        },
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("ERR merge_adapter "), proc.stdout
    assert "pip install 'nim-async[merge]'" in proc.stdout
    assert not (root / MERGED_DIR).exists()


# --------------------------------------------------------------------------- real dockerd

ENV_FILE = Path(os.environ.get("NIM_TEST_STATE", "/tmp/nim-async-test-env")) / "env"


def _docker_env() -> dict[str, str]:
    if not ENV_FILE.is_file():
        msg = f"no test registry: {ENV_FILE} is missing (run `scripts/test-env.sh up`)"
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)
    values: dict[str, str] = {}
    for line in ENV_FILE.read_text().splitlines():
        line = line.strip()
        if line.startswith("export ") and "=" in line:
            key, _, raw = line[len("export ") :].partition("=")
            if not raw.startswith("${"):
                parts = shlex.split(raw)
                values[key] = parts[0] if parts else ""
    return values


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
async def docker_config(tmp_path: Path) -> AsyncIterator[Any]:
    from nim_async.deploy.docker import DockerClient

    env = _docker_env()
    names: list[str] = []

    def make(**overrides: Any) -> NIMConfig:
        values: dict[str, Any] = {
            "nvidia_api_key": env["NIM_TEST_NGC_KEY"],
            "registry": env["NIM_TEST_REGISTRY_PATH"],
            "image_name": env["NIM_TEST_IMAGE_NAME"],
            "tag": env["NIM_TEST_IMAGE_TAG"],
            "served_model_name": f"nimtest-lora-{uuid.uuid4().hex[:8]}",
            "port": _free_port(),
            "gpus": None,
            "shm_size": "64MB",
            "local_cache_dir": str(tmp_path / "nim-cache"),
            "startup_timeout": 60.0,
            "stream_logs": False,
            **overrides,
        }
        config = NIMConfig(**values)
        names.append(config.container_name)
        return config

    yield make
    async with DockerClient() as client:
        for name in names:
            await client.remove_container(name, force=True)


@pytest.mark.docker
async def test_deploy_mounts_the_merged_checkpoint(
    docker_config: Any, tmp_path: Path, synth: ModuleType
) -> None:
    from nim_async.deploy.deployer import AsyncNIMDeployer
    from nim_async.deploy.docker import DockerClient

    root = _run_folder(synth, tmp_path / "run")
    config = docker_config(model_path=root, merge_adapter=True)
    async with AsyncNIMDeployer(config, quiet=True) as deployer:
        result = await deployer.deploy()
    merged = next(p for p in (root / MERGED_DIR).iterdir() if (p / MERGE_MARKER).is_file())
    async with DockerClient() as client:
        info = await client.inspect_container(result.container_id)
    assert info is not None
    env = dict(item.split("=", 1) for item in info["Config"]["Env"])
    assert env["NIM_MODEL_NAME"] == CONTAINER_MODEL_DIR
    mount = {m["Destination"]: m for m in info["Mounts"]}[CONTAINER_MODEL_DIR]
    assert mount["Source"] == str(merged)
    assert mount["RW"] is False
    async with httpx.AsyncClient(trust_env=False, timeout=10) as http:
        metadata = (await http.get(f"{result.base_url}/v1/metadata")).json()
    # the emulator in the container read config.json through the mount: the merged copy
    assert metadata["modelInfo"][0]["config"]["nim_async_test_marker"] == "merged-lora"


@pytest.mark.docker
@pytest.mark.parametrize("broken", sorted(BROKEN))
async def test_unmergeable_adapter_starts_no_container(
    docker_config: Any, tmp_path: Path, synth: ModuleType, broken: str
) -> None:
    from nim_async.deploy.deployer import AsyncNIMDeployer
    from nim_async.deploy.docker import DockerClient

    root = _run_folder(synth, tmp_path / "run", broken=broken)
    config = docker_config(model_path=root, merge_adapter=True)
    with pytest.raises(ModelIncompatibilityError, match=BROKEN[broken]):
        async with AsyncNIMDeployer(config, quiet=True) as deployer:
            await deployer.deploy()
    async with DockerClient() as client:
        assert await client.inspect_container(config.container_name) is None
    _no_merge_output(root)


@pytest.mark.docker
async def test_cli_deploy_merge_adapter(
    docker_config: Any, tmp_path: Path, synth: ModuleType
) -> None:
    """`nim-async deploy --merge-adapter` mounts the merged checkpoint (and shows its progress)."""
    from nim_async.deploy.docker import DockerClient

    root = _run_folder(synth, tmp_path / "run")
    config = docker_config(model_path=root)  # the name and port the CLI is given; cleaned up
    argv = [
        sys.executable, "-m", "nim_async.cli", "deploy", "--merge-adapter",
        "--model-path", str(root), "--registry", str(config.registry),
        "--image-name", config.image_name, "--tag", config.tag, "--port", str(config.port),
        "--gpus", "none", "--shm-size", "64MB", "--cache-dir", str(config.local_cache_dir),
        "--served-model-name", config.served_model_name, "--startup-timeout", "60",
        "--no-logs", "--json",
    ]  # fmt: skip
    env = {
        **os.environ,
        "NGC_API_KEY": config.nvidia_api_key.get_secret_value(),
        "COLUMNS": "200",
    }
    proc = await asyncio.to_thread(
        subprocess.run, argv, capture_output=True, text=True, timeout=120, env=env, check=False
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert "shard 2/2" in proc.stderr
    merged = next(p for p in (root / MERGED_DIR).iterdir() if (p / MERGE_MARKER).is_file())
    async with DockerClient() as client:
        info = await client.inspect_container(result["container_id"])
    assert info is not None
    env_vars = dict(item.split("=", 1) for item in info["Config"]["Env"])
    assert env_vars["NIM_MODEL_NAME"] == CONTAINER_MODEL_DIR
    mount = {m["Destination"]: m for m in info["Mounts"]}[CONTAINER_MODEL_DIR]
    assert mount["Source"] == str(merged)
