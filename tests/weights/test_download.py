"""Vi downloads against the fake Vi API: progress, resume, reuse, overwrite, errors, secrets."""

from __future__ import annotations

import logging
import tarfile
from pathlib import Path

import pytest

from nim_async.deploy.weights import CONTAINER_MODEL_DIR, MARKER_NAME, RunMetadata, prepare_weights
from nim_async.errors import WeightsDownloadError, WeightsError


def _assert_no_secret(kit, *texts: str) -> None:
    for text in texts:
        assert kit.SECRET not in text


async def test_download_unpacks_model_and_shows_progress(
    fake_vi, vi_config, models_dir, kit, capsys
):
    prepared = await prepare_weights(vi_config(), quiet=False)

    assert prepared is not None
    target = models_dir / kit.RUN_ID
    assert prepared.host_dir == target / "model_full"
    assert prepared.container_dir == CONTAINER_MODEL_DIR
    assert prepared.has_adapter is False
    assert prepared.run_metadata == RunMetadata(
        task_type="phrase-grounding", system_prompt="You find things in pictures."
    )
    assert (target / "model_full" / "model.safetensors").read_bytes() == kit.weights_bytes()
    assert (target / MARKER_NAME).is_file()
    # The archive and the temporary file are gone; no staging directories remain.
    assert kit.all_paths(models_dir) == {
        ".downloads",
        kit.RUN_ID,
        f"{kit.RUN_ID}/{MARKER_NAME}",
        f"{kit.RUN_ID}/model_full",
        f"{kit.RUN_ID}/model_full/config.json",
        f"{kit.RUN_ID}/model_full/run.json",
        f"{kit.RUN_ID}/model_full/model.safetensors",
    }
    # The documented request: path, query, headers.
    (api,) = fake_vi.api_requests
    assert api["path"] == f"/workspaces/{kit.ORG}/runs/{kit.RUN_ID}/outputs"
    assert api["query"] == {"intent": "sdkLocalDeploy", "contents": "y"}
    assert api["headers"]["Organization-Id"] == kit.ORG
    assert api["headers"]["Authorization"] == f"Bearer {kit.SECRET}"
    assert "X-Secret-Key" not in api["headers"]
    # The secret goes to the Vi API only, never to the storage behind the pre-signed URL.
    (storage,) = fake_vi.storage_requests
    assert "Authorization" not in storage["headers"]
    assert storage["range"] is None
    err = capsys.readouterr().err
    assert f"Downloading run {kit.RUN_ID}" in err
    _assert_no_secret(kit, err)


async def test_quiet_download_prints_nothing(fake_vi, vi_config, capsys):
    await prepare_weights(vi_config(), quiet=True)
    captured = capsys.readouterr()
    assert captured.err == ""
    assert captured.out == ""


async def test_interrupted_download_resumes_with_range(fake_vi, vi_config, models_dir, kit):
    archive = fake_vi.outputs["out-1"]
    half = len(archive) // 2
    fake_vi.drop_after = half
    fake_vi.drops = 1

    prepared = await prepare_weights(vi_config(), quiet=True)

    assert prepared is not None
    assert [r["range"] for r in fake_vi.storage_requests] == [None, f"bytes={half}-"]
    assert (prepared.host_dir / "model.safetensors").read_bytes() == kit.weights_bytes()


async def test_resume_survives_a_failed_deploy(fake_vi, vi_config, models_dir, kit):
    archive = fake_vi.outputs["out-1"]
    fake_vi.drop_after = 10_000
    fake_vi.drops = 100  # every attempt breaks off

    with pytest.raises(WeightsDownloadError, match="resume") as info:
        await prepare_weights(vi_config(), quiet=True)
    _assert_no_secret(kit, str(info.value))
    assert "X-Signature" not in str(info.value)  # the pre-signed URL's signature stays out
    partial = list((models_dir / ".downloads").glob("*.part"))
    assert len(partial) == 1
    have = partial[0].stat().st_size
    assert 0 < have < len(archive)
    assert not (models_dir / kit.RUN_ID).exists()

    fake_vi.drops = 0
    fake_vi.storage_requests.clear()
    prepared = await prepare_weights(vi_config(), quiet=True)

    assert prepared is not None
    assert fake_vi.storage_requests[0]["range"] == f"bytes={have}-"
    assert (prepared.host_dir / "model.safetensors").read_bytes() == kit.weights_bytes()


async def test_server_without_range_support_restarts_cleanly(fake_vi, vi_config, kit):
    fake_vi.support_range = False
    fake_vi.drop_after = 5000
    fake_vi.drops = 1

    prepared = await prepare_weights(vi_config(), quiet=True)

    assert prepared is not None
    assert (prepared.host_dir / "model.safetensors").read_bytes() == kit.weights_bytes()


async def test_complete_model_is_reused_without_network(fake_vi, vi_config, models_dir, kit):
    await prepare_weights(vi_config(), quiet=True)
    fake_vi.outputs["out-1"] = kit.model_archive(weights=b"new weights")

    prepared = await prepare_weights(vi_config(), quiet=True)

    assert prepared is not None
    assert len(fake_vi.api_requests) == 1
    assert len(fake_vi.storage_requests) == 1
    assert (prepared.host_dir / "model.safetensors").read_bytes() == kit.weights_bytes()


async def test_overwrite_downloads_again_and_replaces(fake_vi, vi_config, models_dir, kit):
    await prepare_weights(vi_config(), quiet=True)
    stray = models_dir / kit.RUN_ID / "model_full" / "stale.txt"
    stray.write_text("from the old download")
    fake_vi.outputs["out-1"] = kit.model_archive(weights=b"new weights")

    prepared = await prepare_weights(vi_config(overwrite=True), quiet=True)

    assert prepared is not None
    assert len(fake_vi.api_requests) == 2
    assert (prepared.host_dir / "model.safetensors").read_bytes() == b"new weights"
    assert not stray.exists()
    assert not [p for p in models_dir.iterdir() if p.name.startswith(f".{kit.RUN_ID}")]


async def test_incomplete_directory_is_not_reused(fake_vi, vi_config, models_dir, kit):
    leftover = models_dir / kit.RUN_ID / "model_full"
    leftover.mkdir(parents=True)
    (leftover / "config.json").write_text("{}")  # no weights: an interrupted unpack

    prepared = await prepare_weights(vi_config(), quiet=True)

    assert prepared is not None
    assert len(fake_vi.storage_requests) == 1
    assert (prepared.host_dir / "model.safetensors").read_bytes() == kit.weights_bytes()


async def test_page_takes_the_latest_output(fake_vi, vi_config, models_dir, kit):
    fake_vi.outputs["out-2"] = kit.model_archive(weights=b"latest checkpoint")

    prepared = await prepare_weights(vi_config(), quiet=True)

    assert prepared is not None
    assert (prepared.host_dir / "model.safetensors").read_bytes() == b"latest checkpoint"
    assert "out-2" in (models_dir / kit.RUN_ID / MARKER_NAME).read_text()


async def test_single_model_body_and_explicit_ckpt(fake_vi, vi_config, models_dir, kit):
    fake_vi.outputs["out-2"] = kit.model_archive(weights=b"latest checkpoint")
    fake_vi.paged = False

    prepared = await prepare_weights(vi_config(ckpt="out-1"), quiet=True)

    assert prepared is not None
    assert fake_vi.api_requests[-1]["path"].endswith("/outputs/out-1")
    assert (prepared.host_dir / "model.safetensors").read_bytes() == kit.weights_bytes()

    # A different checkpoint of the same run is not "already there".
    prepared = await prepare_weights(vi_config(ckpt="out-2"), quiet=True)
    assert prepared is not None
    assert (prepared.host_dir / "model.safetensors").read_bytes() == b"latest checkpoint"
    # ...while asking for the one that is there reuses it.
    requests = len(fake_vi.api_requests)
    await prepare_weights(vi_config(ckpt="out-2"), quiet=True)
    assert len(fake_vi.api_requests) == requests


async def test_expired_url_is_requested_again_once(fake_vi, vi_config, kit):
    fake_vi.expired_urls = 1

    prepared = await prepare_weights(vi_config(), quiet=True)

    assert prepared is not None
    assert len(fake_vi.api_requests) == 2
    assert len(fake_vi.storage_requests) == 1  # the expired URL was not even tried


async def test_url_refused_by_storage_is_requested_again(fake_vi, vi_config, kit):
    fake_vi.refused_urls = 1  # expiresAt looks fine, but the storage says 403 (clock skew)

    prepared = await prepare_weights(vi_config(), quiet=True)

    assert prepared is not None
    assert len(fake_vi.api_requests) == 2
    assert len(fake_vi.storage_requests) == 2


async def test_url_that_stays_expired_is_a_clear_error(fake_vi, vi_config, kit, caplog):
    fake_vi.expired_urls = 10

    with caplog.at_level(logging.DEBUG), pytest.raises(WeightsDownloadError) as info:
        await prepare_weights(vi_config(), quiet=True)

    assert "expired" in str(info.value)
    assert kit.RUN_ID in str(info.value)
    assert len(fake_vi.api_requests) == 2
    _assert_no_secret(kit, str(info.value), repr(info.value), caplog.text)


async def test_storage_refusing_twice_is_a_clear_error(fake_vi, vi_config, kit):
    fake_vi.refused_urls = 10

    with pytest.raises(WeightsDownloadError, match="expired"):
        await prepare_weights(vi_config(), quiet=True)
    assert len(fake_vi.api_requests) == 2


async def test_not_ready_for_download(fake_vi, vi_config, models_dir, kit):
    fake_vi.ready = False

    with pytest.raises(WeightsDownloadError, match="not ready for download yet") as info:
        await prepare_weights(vi_config(), quiet=True)
    assert kit.RUN_ID in str(info.value)
    assert not (models_dir / kit.RUN_ID).exists()


async def test_run_without_outputs(fake_vi, vi_config):
    fake_vi.outputs.clear()

    with pytest.raises(WeightsDownloadError, match="no outputs"):
        await prepare_weights(vi_config(), quiet=True)


async def test_wrong_secret_key_names_the_credential_not_its_value(fake_vi, vi_config, kit, caplog):
    wrong = "vi-sk-WRONG-fedcba9876543210"
    with caplog.at_level(logging.DEBUG), pytest.raises(WeightsDownloadError) as info:
        await prepare_weights(vi_config(secret_key=wrong), quiet=True)

    assert info.value.status_code == 401
    assert "secret_key" in str(info.value)
    assert "DATATURE_VI_SECRET_KEY" in str(info.value)
    for text in (str(info.value), repr(info.value), caplog.text):
        assert wrong not in text
        assert kit.SECRET not in text


async def test_forbidden_names_the_organization(fake_vi, vi_config, kit):
    with pytest.raises(WeightsDownloadError) as info:
        await prepare_weights(vi_config(organization_id="org-other"), quiet=True)

    assert info.value.status_code == 403
    assert "org-other" in str(info.value)
    _assert_no_secret(kit, str(info.value))


async def test_unknown_run_names_the_run_id(fake_vi, vi_config, kit):
    with pytest.raises(WeightsDownloadError) as info:
        await prepare_weights(vi_config(run_id="run-missing"), quiet=True)

    assert info.value.status_code == 404
    assert "run-missing" in str(info.value)
    _assert_no_secret(kit, str(info.value))


async def test_unknown_checkpoint_names_it(fake_vi, vi_config, kit):
    with pytest.raises(WeightsDownloadError) as info:
        await prepare_weights(vi_config(ckpt="out-404"), quiet=True)

    assert info.value.status_code == 404
    assert "out-404" in str(info.value)


async def test_server_error_body_is_redacted(fake_vi, vi_config, kit):
    fake_vi.status_override = 400

    with pytest.raises(WeightsDownloadError) as info:
        await prepare_weights(vi_config(), quiet=True)
    assert info.value.status_code == 400
    _assert_no_secret(kit, str(info.value))


async def test_unreachable_api_is_a_weights_error(vi_config, kit, unused_tcp_port):
    config = vi_config(endpoint=f"http://127.0.0.1:{unused_tcp_port}")
    with pytest.raises(WeightsDownloadError, match="Cannot reach") as info:
        await prepare_weights(config, quiet=True)
    assert isinstance(info.value.__cause__, Exception)
    _assert_no_secret(kit, str(info.value))


async def test_archive_without_a_model_is_rejected(fake_vi, vi_config, models_dir, kit):
    fake_vi.outputs["out-1"] = kit.make_tar({"README.md": b"nothing here"})

    with pytest.raises(WeightsError, match="holds no Hugging Face model"):
        await prepare_weights(vi_config(), quiet=True)
    assert not (models_dir / kit.RUN_ID).exists()


async def test_gzip_archive_is_accepted(fake_vi, vi_config, kit, tmp_path: Path):
    import io

    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, content in kit.model_files().items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
    fake_vi.outputs["out-1"] = buffer.getvalue()

    prepared = await prepare_weights(vi_config(), quiet=True)
    assert prepared is not None
    assert (prepared.host_dir / "model.safetensors").read_bytes() == kit.weights_bytes()


async def test_transient_api_errors_are_retried(fake_vi, vi_config):
    fake_vi.transient_failures = 2

    prepared = await prepare_weights(vi_config(), quiet=True)

    assert prepared is not None
    assert len(fake_vi.api_requests) == 3


async def test_relative_model_save_path_gives_an_absolute_mount_source(
    fake_vi, vi_config, tmp_path, monkeypatch, kit
):
    monkeypatch.chdir(tmp_path)

    prepared = await prepare_weights(vi_config(model_save_path="rel/models"), quiet=True)

    assert prepared is not None
    assert prepared.host_dir.is_absolute()
    assert prepared.host_dir == tmp_path / "rel" / "models" / kit.RUN_ID / "model_full"


async def test_unusable_model_save_path(fake_vi, vi_config, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")

    with pytest.raises(WeightsError, match="model_save_path"):
        await prepare_weights(vi_config(model_save_path=blocker / "models"), quiet=True)
    assert fake_vi.api_requests == []
