"""Custom weights: Datature Vi run downloads, local checkpoints, and a compatibility pre-flight.

:func:`prepare_weights` is the deployer's hook between image pull and container creation. It
makes the configured weights available on the host and checks them against what the NIM image
can serve, so an incompatible checkpoint fails in a second instead of after a long start-up:

* ``NIMConfig(run_id=...)``: the run output is requested from the Vi API
  (``GET {endpoint}/workspaces/{organization_id}/runs/{run_id}/outputs[/{ckpt}]``), its
  pre-signed archive is downloaded with resume (HTTP ``Range``) into a temporary file that is
  renamed when complete, and the tar archive is checked member by member and unpacked into
  ``{model_save_path}/{run_id}/``. A complete model already there is reused unless
  ``overwrite=True``; with ``model_save_path`` left at its default, a complete download that
  vi-sdk made (``~/.datature/vi/models/{run_id}/``) is reused too (latest checkpoint only).
* ``NIMConfig(model_path=...)``: a local Hugging Face-format directory is used as it is.

The model directory is bind-mounted read-only at :data:`CONTAINER_MODEL_DIR` and named to NIM
through ``NIM_MODEL_NAME``. :func:`load_run_metadata` reads the task type and system prompt a Vi
run was trained with from its ``run.json`` (no network).

The parts: :mod:`~nim_async.deploy.weights.vi` (the Vi API client),
:mod:`~nim_async.deploy.weights.download` (the resumable download),
:mod:`~nim_async.deploy.weights.archive` (the safe unpacking) and
:mod:`~nim_async.deploy.weights.preflight` (the model directory and the compatibility check).
Progress and warnings are :mod:`nim_async.deploy.events` values.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from pathlib import Path

from nim_async.config import NIMConfig
from nim_async.deploy.events import EventSink, Notice, resolve_sink
from nim_async.deploy.lora import require_merge_support
from nim_async.deploy.weights.archive import (
    MARKER_NAME,
    install_archive,
    marker_matches,
    safe_extract,
)
from nim_async.deploy.weights.download import (
    ExpiredURL,
    archive_path,
    download_archive,
    expired_error,
    remove,
    remove_downloads,
)
from nim_async.deploy.weights.preflight import (
    CONTAINER_MODEL_DIR,
    LORA_WARNING,
    PreparedModel,
    RunMetadata,
    inspect_model,
    is_complete,
    local_model_dir,
    parse_run_json,
    read_run_metadata,
)
from nim_async.deploy.weights.vi import RunOutput, request_run_output
from nim_async.errors import InvalidConfigError, WeightsError
from nim_async.http.download import DownloadClient

__all__ = [
    "CONTAINER_MODEL_DIR",
    "LORA_WARNING",
    "MARKER_NAME",
    "PreparedModel",
    "RunMetadata",
    "load_run_metadata",
    "parse_run_json",
    "prepare_weights",
    "safe_extract",
]

logger = logging.getLogger(__name__)


async def prepare_weights(
    config: NIMConfig, *, quiet: bool = False, on_event: EventSink | None = None
) -> PreparedModel | None:
    """Make the configured custom weights available locally and check them against the image.

    For a Vi run (``config.run_id``) the model is downloaded and unpacked into
    ``{model_save_path}/{run_id}/`` unless a complete copy is already there (and
    ``config.overwrite`` is false). For ``config.model_path`` the local directory is used.
    Either way the compatibility pre-flight runs before anything is handed to Docker.

    Args:
        config: The deployment configuration (``run_id`` or ``model_path``).
        quiet: Suppress console output (the download progress bar and warnings).
        on_event: Receives the progress and warnings instead of the console (also when
            ``quiet``).

    Returns:
        The prepared model, or ``None`` when neither ``run_id`` nor ``model_path`` is set.

    Raises:
        InvalidConfigError: ``model_path`` is not a directory, or ``run_id`` is not a usable
            directory name.
        WeightsDownloadError: the Vi API or the download failed (names the credential or run
            id at fault, never a secret's value).
        WeightsError: the archive is unsafe or unreadable, or the model cannot be stored.
        ModelIncompatibilityError: the checkpoint cannot be served by ``config.image_name``
            (architecture mismatch, no full weights, adapter only).
    """
    if config.run_id is None and config.model_path is None:
        return None
    if config.merge_adapter:
        require_merge_support()  # before any download: names pip install 'nim-async[merge]'
    sink = resolve_sink(quiet=quiet, on_event=on_event)
    if config.run_id is not None:
        root = await _ensure_vi_model(config, sink)
    else:
        assert config.model_path is not None
        root = await asyncio.to_thread(local_model_dir, config.model_path)
    return await asyncio.to_thread(
        inspect_model,
        root,
        config.image_name,
        sink,
        merge_adapter=config.merge_adapter,
        overwrite=config.overwrite,
    )


def load_run_metadata(config: NIMConfig) -> RunMetadata | None:
    """Read the task type and system prompt from a Vi run's ``run.json`` (no network).

    The run must already be on disk (``{model_save_path}/{run_id}/`` after a deploy), or
    ``config.model_path`` must hold a ``run.json``. The reader is tolerant of shape variations:
    it looks for the dataset block's ``settings.projectKind`` and the system-prompt block's
    ``settings.systemPrompt`` wherever the flow blocks sit.

    Args:
        config: The configuration naming the run (``run_id``) or a local ``model_path``.

    Returns:
        The metadata, or ``None`` when there is no readable ``run.json`` or it says nothing
        about the task type or system prompt.
    """
    if config.run_id is not None:
        if not _is_safe_name(config.run_id):
            return None
        root = config.models_dir / config.run_id
        if not root.is_dir():
            root = _visdk_download(config) or root
    elif config.model_path is not None:
        root = Path(config.model_path).expanduser()
    else:
        return None
    return read_run_metadata(root)


VISDK_MODELS_DIR = "~/.datature/vi/models"
"""Where vi-sdk stores downloaded models (``{dir}/{run_id}/model_full/``)."""


def _visdk_download(config: NIMConfig) -> Path | None:
    """A complete download of the run by vi-sdk, when ``model_save_path`` was left at its default.

    Only the latest checkpoint can be told apart there (vi-sdk records no checkpoint), so a
    configured ``ckpt`` is never served from it.
    """
    if "model_save_path" in config.model_fields_set or config.ckpt is not None:
        return None
    assert config.run_id is not None
    target = Path(os.path.abspath(Path(VISDK_MODELS_DIR).expanduser())) / config.run_id
    return target if is_complete(target) else None


def _is_safe_name(name: str) -> bool:
    return bool(name) and name not in (".", "..") and "/" not in name and "\\" not in name


async def _ensure_vi_model(config: NIMConfig, sink: EventSink | None) -> Path:
    """Return ``{models_dir}/{run_id}``, downloading and unpacking the run when needed."""
    assert config.run_id is not None
    run_id = config.run_id
    if not _is_safe_name(run_id):
        raise InvalidConfigError(
            f"run_id {run_id!r} cannot name a directory (no '/', '\\', '.' or '..')",
            field="run_id",
        )
    models_dir, reusable = await asyncio.to_thread(_local_state, config)
    target = models_dir / run_id
    if reusable:
        logger.info("Reusing the model of run %s in %s", run_id, target)
        if sink is not None:
            sink(Notice(f"Using the downloaded model in {target}"))
        return target
    downloads = models_dir / ".downloads"
    async with DownloadClient() as api, DownloadClient() as storage:
        output = await request_run_output(api, config)
        if config.overwrite:
            remove_downloads(downloads, run_id, output.run_output_id)
        archive = await _fetch_archive(api, storage, config, output, downloads, sink)
    marker = {"runId": run_id, "runOutputId": output.run_output_id, "ckpt": config.ckpt}
    try:
        await asyncio.to_thread(install_archive, archive, target, run_id=run_id, marker=marker)
    finally:
        # Unpacked, or unsafe/corrupt: either way the archive is not kept.
        await asyncio.to_thread(remove, archive)
    return target


def _local_state(config: NIMConfig) -> tuple[Path, bool]:
    """The absolute models dir (a bind-mount source) and whether the run can be reused.

    Creates ``{models_dir}/.downloads`` when the run must be downloaded.
    """
    assert config.run_id is not None
    models_dir = Path(os.path.abspath(config.models_dir))
    target = models_dir / config.run_id
    if not config.overwrite and is_complete(target) and marker_matches(target, config.ckpt):
        return models_dir, True
    visdk = None if config.overwrite or target.exists() else _visdk_download(config)
    if visdk is not None:
        return visdk.parent, True
    try:
        (models_dir / ".downloads").mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise WeightsError(f"model_save_path: cannot create {models_dir}: {exc.strerror}") from exc
    return models_dir, False


async def _fetch_archive(
    api: DownloadClient,
    storage: DownloadClient,
    config: NIMConfig,
    output: RunOutput,
    downloads: Path,
    sink: EventSink | None,
) -> Path:
    """Download the run's archive (resuming a partial one); one fresh URL if it expired."""
    assert config.run_id is not None
    for renewed in (False, True):
        archive = archive_path(downloads, config.run_id, output.run_output_id)
        if archive.exists():
            return archive  # downloaded earlier, unpacking did not finish
        if output.expires_at is not None and output.expires_at <= time.time():
            if renewed:
                break
            logger.info("Download URL of run %s has expired; requesting a fresh one", config.run_id)
            output = await request_run_output(api, config)
            continue
        part = archive.with_name(archive.name + ".part")
        try:
            await download_archive(
                storage, output.url, part, label=f"run {config.run_id}", on_event=sink
            )
        except ExpiredURL as exc:
            if renewed:
                break
            logger.info("Download URL refused (%s); requesting a fresh one", exc)
            output = await request_run_output(api, config)
            continue
        except OSError as exc:
            raise WeightsError(
                f"model_save_path: cannot write the download to {part}: {exc.strerror or exc}"
            ) from exc
        os.replace(part, archive)
        return archive
    raise expired_error(config)
