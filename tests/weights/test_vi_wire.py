"""The Vi API wire exactly as vi-sdk 0.1.0b7 speaks it, and vi-sdk's download directory.

vi-sdk: ``SecretKeyAuth.get_headers`` sends ``Authorization: Bearer <secret key>`` and
``Organization-Id``; ``ModelLinkParser`` asks ``.../runs/{run_id}/outputs[/{ckpt}]`` with
``intent=sdkLocalDeploy`` and ``contents=y`` (``LinkBuilder.add_param`` writes booleans as y/n);
the answer's ``status.contents.downloadUrl.url`` / ``.expiresAt`` and ``runOutputId`` are read.
Models land in ``~/.datature/vi/models/{run_id}/model_full/``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from nim_async.config import NIMConfig
from nim_async.deploy.weights import load_run_metadata, prepare_weights
from nim_async.errors import WeightsDownloadError

OLD_HEADERS = ("X-Secret-Key", "X-Organization-Id")


def _outputs_url(fake_vi: Any, kit: Any) -> str:
    return f"{fake_vi.url}/workspaces/{kit.ORG}/runs/{kit.RUN_ID}/outputs"


async def test_fake_vi_rejects_the_old_headers_and_accepts_vi_sdks(fake_vi: Any, kit: Any) -> None:
    url = _outputs_url(fake_vi, kit)
    query = {"intent": "sdkLocalDeploy", "contents": "y"}
    async with httpx.AsyncClient() as client:
        old = await client.get(
            url,
            params={"intent": "sdkLocalDeploy", "contents": "true"},
            headers={"X-Secret-Key": kit.SECRET, "X-Organization-Id": kit.ORG},
        )
        old_headers_new_query = await client.get(
            url, params=query, headers={"X-Secret-Key": kit.SECRET, "X-Organization-Id": kit.ORG}
        )
        no_org = await client.get(
            url, params=query, headers={"Authorization": f"Bearer {kit.SECRET}"}
        )
        wrong_scheme = await client.get(
            url, params=query, headers={"Authorization": kit.SECRET, "Organization-Id": kit.ORG}
        )
        visdk = await client.get(
            url,
            params=query,
            headers={"Authorization": f"Bearer {kit.SECRET}", "Organization-Id": kit.ORG},
        )
        true_not_y = await client.get(
            url,
            params={"intent": "sdkLocalDeploy", "contents": "true"},
            headers={"Authorization": f"Bearer {kit.SECRET}", "Organization-Id": kit.ORG},
        )
    assert old.status_code == 401
    assert old_headers_new_query.status_code == 401
    assert no_org.status_code == 401
    assert wrong_scheme.status_code == 401
    assert visdk.status_code == 200
    assert true_not_y.status_code == 400
    (model,) = visdk.json()["items"]
    assert model["runOutputId"] == "out-1"
    assert model["status"]["contents"]["downloadUrl"]["url"].startswith(fake_vi.url)


async def test_download_speaks_vi_sdks_wire(fake_vi: Any, vi_config: Any, kit: Any) -> None:
    await prepare_weights(vi_config(ckpt="out-1"), quiet=True)
    (api,) = fake_vi.api_requests
    assert api["path"] == f"/workspaces/{kit.ORG}/runs/{kit.RUN_ID}/outputs/out-1"
    assert api["query"] == {"intent": "sdkLocalDeploy", "contents": "y"}
    assert api["headers"]["Authorization"] == f"Bearer {kit.SECRET}"
    assert api["headers"]["Organization-Id"] == kit.ORG
    assert not set(OLD_HEADERS) & set(api["headers"])


async def test_wrong_key_is_a_401_that_names_the_credential(
    fake_vi: Any, vi_config: Any, kit: Any
) -> None:
    with pytest.raises(WeightsDownloadError, match="secret_key") as info:
        await prepare_weights(vi_config(secret_key="vi-sk-wrong"), quiet=True)
    assert info.value.status_code == 401
    assert kit.SECRET not in str(info.value)


def _visdk_download(home: Path, kit: Any) -> Path:
    """A model as vi-sdk leaves it: ~/.datature/vi/models/{run_id}/model_full/..."""
    root = home / ".datature" / "vi" / "models" / kit.RUN_ID
    for name, content in kit.model_files().items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
    return root


def _default_dir_config(fake_vi: Any, kit: Any, **overrides: Any) -> NIMConfig:
    values: dict[str, Any] = {
        "nvidia_api_key": kit.NGC_KEY,
        "secret_key": kit.SECRET,
        "organization_id": kit.ORG,
        "run_id": kit.RUN_ID,
        "endpoint": fake_vi.url + "/",
    }
    values.update(overrides)
    return NIMConfig(**values)


async def test_a_vi_sdk_download_is_found_in_its_default_dir(
    fake_vi: Any, kit: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    root = _visdk_download(tmp_path, kit)
    config = _default_dir_config(fake_vi, kit)
    assert config.model_save_path == "~/.vi/models"  # the seed's default, left as it is

    prepared = await prepare_weights(config, quiet=True)

    assert prepared is not None
    assert prepared.host_dir == root / "model_full"
    assert fake_vi.api_requests == []  # reused: no request to Vi
    assert not (tmp_path / ".vi").exists()
    metadata = load_run_metadata(config)
    assert metadata is not None
    assert metadata.system_prompt == "You find things in pictures."


async def test_vi_sdk_dir_is_not_used_for_a_chosen_dir_a_checkpoint_or_overwrite(
    fake_vi: Any, kit: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    root = _visdk_download(tmp_path, kit)
    chosen = tmp_path / "mine"
    cases = [
        {"model_save_path": chosen},
        {"ckpt": "out-1"},
        {"overwrite": True},
    ]
    for overrides in cases:
        fake_vi.api_requests.clear()
        prepared = await prepare_weights(_default_dir_config(fake_vi, kit, **overrides), quiet=True)
        assert prepared is not None
        assert ".datature" not in str(prepared.host_dir), overrides
        assert len(fake_vi.api_requests) == 1, overrides
    # vi-sdk's copy is left as it was
    assert (root / "model_full" / "model.safetensors").read_bytes() == kit.weights_bytes()
