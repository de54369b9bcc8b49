"""Deployer behaviour that needs no Docker daemon: config checks, no IO at construction,
daemon-unreachable errors, the readiness probe (against the in-process emulator) and the pull
progress display (fed a recorded engine stream)."""

from __future__ import annotations

import io
from pathlib import Path

import orjson
import pytest
from rich.console import Console

from nim_async.config import NIMConfig
from nim_async.deploy.deployer import AsyncNIMDeployer
from nim_async.deploy.docker import DockerClient, RegistryAuth
from nim_async.errors import APIError, DockerUnavailableError, InvalidConfigError
from nim_async.http.health import ReadinessProbe
from nim_async.sync.deployer import NIMDeployer
from nim_async.ui.deploy import PullDisplay as _PullDisplay

KEY = "nvapi-offline-test-key-0123456789"
DATA = Path(__file__).parent / "data"


def test_no_key_anywhere_is_invalid_config(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NGC_API_KEY", raising=False)
    with pytest.raises(InvalidConfigError) as sync_err:
        NIMDeployer()
    assert sync_err.value.field == "nvidia_api_key"
    assert "NGC_API_KEY" in str(sync_err.value)
    with pytest.raises(InvalidConfigError):
        AsyncNIMDeployer()


def test_key_from_environment_and_config_exposed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NGC_API_KEY", KEY)
    deployer = NIMDeployer(quiet=True)
    assert deployer.config.nvidia_api_key.get_secret_value() == KEY
    assert deployer.quiet
    assert KEY not in repr(deployer)
    assert KEY not in repr(deployer.config)
    deployer.close()


def test_construction_makes_no_docker_connection(no_docker_env: str) -> None:
    # DOCKER_HOST points at nothing: constructing must still succeed (nothing is contacted).
    config = NIMConfig(nvidia_api_key=KEY, gpus=None)
    sync = NIMDeployer(config)
    core = AsyncNIMDeployer(config)
    assert sync.config is config
    assert core.config is config
    sync.close()


async def test_deploy_without_daemon_names_docker_host(no_docker_env: str, tmp_path: Path) -> None:
    config = NIMConfig(nvidia_api_key=KEY, gpus=None, local_cache_dir=str(tmp_path / "c"))
    with pytest.raises(DockerUnavailableError) as err:
        await AsyncNIMDeployer(config, quiet=True).deploy()
    message = str(err.value)
    assert "DOCKER_HOST" in message
    assert no_docker_env in message
    assert KEY not in message
    assert isinstance(err.value, APIError)


async def test_stop_and_list_without_daemon(no_docker_env: str) -> None:
    with pytest.raises(DockerUnavailableError, match="DOCKER_HOST"):
        await AsyncNIMDeployer.stop("anything", quiet=True)
    with pytest.raises(DockerUnavailableError, match="DOCKER_HOST"):
        await AsyncNIMDeployer.list()


def test_sync_stop_without_daemon(no_docker_env: str) -> None:
    with pytest.raises(DockerUnavailableError, match="DOCKER_HOST"):
        NIMDeployer.stop("anything", quiet=True)


async def test_unwritable_cache_dir_fails_before_docker(tmp_path: Path, no_docker_env: str) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    config = NIMConfig(nvidia_api_key=KEY, gpus=None, local_cache_dir=str(blocker / "cache"))
    with pytest.raises(InvalidConfigError) as err:
        await AsyncNIMDeployer(config, quiet=True).deploy()
    assert err.value.field == "local_cache_dir"


def test_registry_auth_hides_password() -> None:
    auth = RegistryAuth("nvcr.io", "$oauthtoken", NIMConfig(nvidia_api_key=KEY).nvidia_api_key)
    assert KEY not in repr(auth)
    decoded = orjson.loads(__import__("base64").urlsafe_b64decode(auth.header()))
    assert decoded == {"username": "$oauthtoken", "password": KEY, "serveraddress": "nvcr.io"}


def test_docker_client_is_lazy() -> None:
    client = DockerClient("unix:///nonexistent.sock")
    with pytest.raises(RuntimeError, match="not connected"):
        client._api  # noqa: B018


async def test_readiness_probe_waits_for_emulator(start_emulator) -> None:  # type: ignore[no-untyped-def]
    async with start_emulator(startup_seconds=0.4) as emu, ReadinessProbe(emu.url) as probe:
        assert not await probe.is_ready()
        ready_at = await probe.wait()
        assert probe.ready_at == ready_at
        assert probe.polls >= 2
        assert await probe.is_ready()
        assert await probe.models() == ["cosmos-reason1-7b"]


async def test_readiness_probe_nothing_listening(free_port) -> None:  # type: ignore[no-untyped-def]
    async with ReadinessProbe(f"http://127.0.0.1:{free_port()}") as probe:
        assert not await probe.is_ready()
        with pytest.raises(APIError, match="/v1/models"):
            await probe.models()


def test_pull_display_tracks_layers_bytes_and_status() -> None:
    out = io.StringIO()
    console = Console(file=out, width=160, force_terminal=False, color_system=None)
    events = [orjson.loads(line) for line in (DATA / "pull-stream.jsonl").read_text().splitlines()]
    with _PullDisplay(console, "127.0.0.1:5555/nim/test:1.0") as display:
        for event in events:
            display.update(event)
    summary = display.summary()
    text = out.getvalue()
    assert len(display.tasks) == 4
    assert sum(display.layer_bytes.values()) == 12893131 + 8391367 + 1207 + 10073
    assert "4 layers" in summary
    assert "21.3 MB" in summary
    for layer in ("0f61d95afe71", "0028de8fa2a2", "5f2d133f986d", "38a214eec437"):
        assert f"layer {layer}" in text
    assert "Pull complete" in text
    assert "Status: Downloaded newer image" in text
