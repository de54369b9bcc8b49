"""Custom weights: Datature Vi run downloads, local checkpoints, and a compatibility pre-flight.

:func:`prepare_weights` is the deployer's hook between image pull and container creation. It
makes the configured weights available on the host and checks them against what the NIM image
can serve, so an incompatible checkpoint fails in a second instead of after a long start-up:

* ``NIMConfig(run_id=...)``: the run output is requested from the Vi API
  (``GET {endpoint}/workspaces/{organization_id}/runs/{run_id}/outputs[/{ckpt}]``), its
  pre-signed archive is downloaded with resume (HTTP ``Range``) into a temporary file that is
  renamed when complete, and the tar archive is checked member by member and unpacked into
  ``{model_save_path}/{run_id}/``. A complete model already there is reused unless
  ``overwrite=True``.
* ``NIMConfig(model_path=...)``: a local Hugging Face-format directory is used as it is.

The model directory is bind-mounted read-only at :data:`CONTAINER_MODEL_DIR` and named to NIM
through ``NIM_MODEL_NAME``. :func:`load_run_metadata` reads the task type and system prompt a Vi
run was trained with from its ``run.json`` (no network).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import posixpath
import shutil
import tarfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import httpx
import orjson
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from nim_async.catalog import KNOWN_IMAGES
from nim_async.config import NIMConfig
from nim_async.errors import (
    InvalidConfigError,
    ModelIncompatibilityError,
    WeightsDownloadError,
    WeightsError,
)

__all__ = [
    "CONTAINER_MODEL_DIR",
    "PreparedModel",
    "RunMetadata",
    "load_run_metadata",
    "prepare_weights",
]

logger = logging.getLogger(__name__)

CONTAINER_MODEL_DIR = "/opt/nim/custom-model"
"""Where the custom model directory is bind-mounted (read-only) inside the container."""

MARKER_NAME = ".nim_async_model.json"
"""File written last into ``{model_save_path}/{run_id}/``: the download is complete."""

_FULL_DIR = "model_full"
_ADAPTER_DIR = "model_adapter"
_DOWNLOAD_ATTEMPTS = 6
_API_ATTEMPTS = 3
_BACKOFF_BASE = 0.2
_BACKOFF_MAX = 5.0
_NOT_WEIGHTS = ("training_args", "optimizer", "scheduler", "rng_state", "adapter_")

LORA_WARNING = (
    "This checkpoint holds a LoRA/PEFT adapter as well as full weights. NVIDIA NIM does not "
    "support PEFT adapters: it serves the full base model weights only, and the adapter "
    "weights are not used."
)


@dataclass(frozen=True)
class RunMetadata:
    """What a Vi run's ``run.json`` says about how to prompt the model.

    Attributes:
        task_type: ``"phrase-grounding"`` or ``"vqa"``, when the run says.
        system_prompt: The run's system prompt, when it has one.
    """

    task_type: str | None
    system_prompt: str | None


@dataclass(frozen=True)
class PreparedModel:
    """A custom model ready to be mounted into a NIM container.

    Attributes:
        host_dir: Hugging Face-format directory holding ``config.json`` (mounted read-only).
        container_dir: The ``NIM_MODEL_NAME`` value: the directory's path inside the container.
        run_metadata: Task type and system prompt from ``run.json``, when present.
        has_adapter: Whether the checkpoint also holds a LoRA/PEFT adapter (not served by NIM).
    """

    host_dir: Path
    container_dir: str
    run_metadata: RunMetadata | None
    has_adapter: bool


# =========================================================================== public API


async def prepare_weights(config: NIMConfig, *, quiet: bool = False) -> PreparedModel | None:
    """Make the configured custom weights available locally and check them against the image.

    For a Vi run (``config.run_id``) the model is downloaded and unpacked into
    ``{model_save_path}/{run_id}/`` unless a complete copy is already there (and
    ``config.overwrite`` is false). For ``config.model_path`` the local directory is used.
    Either way the compatibility pre-flight runs before anything is handed to Docker.

    Args:
        config: The deployment configuration (``run_id`` or ``model_path``).
        quiet: Suppress console output (the download progress bar and warnings).

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
    if config.run_id is not None:
        root = await _ensure_vi_model(config, quiet=quiet)
    elif config.model_path is not None:
        root = await asyncio.to_thread(_local_model_dir, config.model_path)
    else:
        return None
    return await asyncio.to_thread(_inspect, root, config.image_name, quiet)


def _local_model_dir(model_path: str | Path) -> Path:
    root = Path(model_path).expanduser()
    if not root.is_dir():
        raise InvalidConfigError(
            f"model_path: {root} is not a directory holding a Hugging Face checkpoint",
            field="model_path",
        )
    return root.resolve()


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
    elif config.model_path is not None:
        root = Path(config.model_path).expanduser()
    else:
        return None
    return _read_run_metadata(root)


# =========================================================================== run.json


def _run_json_candidates(root: Path) -> Iterator[Path]:
    yield root / "run.json"
    yield root / _FULL_DIR / "run.json"
    full = _find_full_dir(root)
    if full is not None:
        yield full / "run.json"


def _read_run_metadata(root: Path) -> RunMetadata | None:
    for candidate in _run_json_candidates(root):
        try:
            data = orjson.loads(candidate.read_bytes())
        except (OSError, orjson.JSONDecodeError):
            continue
        meta = parse_run_json(data)
        if meta is not None:
            return meta
    return None


def _task_from_project_kind(kind: object) -> str | None:
    if not isinstance(kind, str):
        return None
    norm = "".join(ch for ch in kind.lower() if ch.isalnum())
    if "grounding" in norm:
        return "phrase-grounding"
    if "vqa" in norm or "questionanswer" in norm:
        return "vqa"
    return None


def _walk_settings(node: object, depth: int = 0) -> Iterator[dict[str, Any]]:
    """Yield every ``settings`` mapping in a JSON tree, shallowest first per branch."""
    if depth > 12:
        return
    if isinstance(node, dict):
        settings = node.get("settings")
        if isinstance(settings, dict):
            yield settings
        for value in node.values():
            yield from _walk_settings(value, depth + 1)
    elif isinstance(node, list):
        for value in node:
            yield from _walk_settings(value, depth + 1)


def parse_run_json(data: object) -> RunMetadata | None:
    """Extract :class:`RunMetadata` from a parsed ``run.json``.

    Args:
        data: The parsed JSON document, in any shape.

    Returns:
        The metadata, or ``None`` when neither the task type nor a system prompt is found.
    """
    task_type: str | None = None
    system_prompt: str | None = None
    for settings in _walk_settings(data):
        if task_type is None:
            task_type = _task_from_project_kind(settings.get("projectKind"))
        if system_prompt is None:
            prompt = settings.get("systemPrompt")
            if isinstance(prompt, str) and prompt.strip():
                system_prompt = prompt
    if task_type is None and system_prompt is None:
        return None
    return RunMetadata(task_type=task_type, system_prompt=system_prompt)


# =========================================================================== pre-flight


def _is_full_weight(path: Path) -> bool:
    name = path.name
    if not path.is_file() or name.startswith(_NOT_WEIGHTS):
        return False
    return name.endswith(".safetensors") or name.endswith(".bin")


def _has_full_weights(directory: Path) -> bool:
    try:
        return any(_is_full_weight(p) for p in directory.iterdir())
    except OSError:
        return False


def _find_full_dir(root: Path) -> Path | None:
    """Locate the Hugging Face model directory (the one holding ``config.json``)."""
    for candidate in (root, root / _FULL_DIR):
        if (candidate / "config.json").is_file():
            return candidate
    # An archive wrapped in one top-level folder: <root>/<something>/model_full/config.json.
    try:
        subdirs = [p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")]
    except OSError:
        return None
    if len(subdirs) == 1:
        for candidate in (subdirs[0], subdirs[0] / _FULL_DIR):
            if (candidate / "config.json").is_file():
                return candidate
    return None


def _find_adapter(root: Path, full: Path | None) -> Path | None:
    for candidate in (root / _ADAPTER_DIR, *(p / _ADAPTER_DIR for p in _subdirs(root))):
        if candidate.is_dir() and any(candidate.iterdir()):
            return candidate
    for hf_dir in (root, full):
        if hf_dir is not None and (hf_dir / "adapter_config.json").is_file():
            return hf_dir
    return None


def _subdirs(root: Path) -> list[Path]:
    try:
        return [p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")]
    except OSError:
        return []


def _is_complete(root: Path) -> bool:
    full = _find_full_dir(root)
    return full is not None and _has_full_weights(full)


def _inspect(root: Path, image_name: str, quiet: bool) -> PreparedModel:
    """Run the compatibility pre-flight on a model directory and describe it for mounting."""
    full = _find_full_dir(root)
    adapter = _find_adapter(root, full)
    if full is None or not _has_full_weights(full):
        if adapter is not None:
            raise ModelIncompatibilityError(
                image_name,
                f"{root} holds only a LoRA/PEFT adapter ({adapter.name}) and no full model "
                "weights. NVIDIA NIM cannot serve adapters; export the run with merged/full "
                "weights (model_full/ with config.json and *.safetensors).",
            )
        if full is None:
            raise ModelIncompatibilityError(
                image_name,
                f"no config.json found in {root} (expected a Hugging Face model directory, "
                f"or {_FULL_DIR}/ inside it)",
            )
        raise ModelIncompatibilityError(
            image_name,
            f"{full} has config.json but no model weights (*.safetensors or *.bin)",
        )
    try:
        model_config = orjson.loads((full / "config.json").read_bytes())
    except (OSError, orjson.JSONDecodeError) as exc:
        raise ModelIncompatibilityError(
            image_name, f"cannot read {full / 'config.json'}: {exc}"
        ) from exc
    if not isinstance(model_config, dict):
        raise ModelIncompatibilityError(image_name, f"{full / 'config.json'} is not an object")
    _check_architecture(model_config, image_name)

    has_adapter = adapter is not None
    if has_adapter:
        logger.warning("%s (%s)", LORA_WARNING, adapter)
        if not quiet:
            Console(stderr=True).print(f"[yellow]Warning:[/yellow] {LORA_WARNING}")
    return PreparedModel(
        host_dir=full,
        container_dir=CONTAINER_MODEL_DIR,
        run_metadata=_read_run_metadata(root),
        has_adapter=has_adapter,
    )


def _check_architecture(model_config: dict[str, Any], image_name: str) -> None:
    spec = KNOWN_IMAGES[image_name]
    raw_archs = model_config.get("architectures")
    archs = [a for a in raw_archs if isinstance(a, str)] if isinstance(raw_archs, list) else []
    model_type = model_config.get("model_type")
    if not archs and not isinstance(model_type, str):
        raise ModelIncompatibilityError(
            image_name,
            "config.json names neither 'architectures' nor 'model_type', so the model cannot "
            "be checked against the image",
        )
    wanted = (
        f"{image_name} serves architectures {list(spec.architectures)} "
        f"(model_type {list(spec.model_types)})"
    )
    if archs and not set(archs) & set(spec.architectures):
        raise ModelIncompatibilityError(
            image_name, f"config.json architectures {archs} do not match: {wanted}"
        )
    if isinstance(model_type, str) and model_type not in spec.model_types:
        raise ModelIncompatibilityError(
            image_name, f"config.json model_type {model_type!r} does not match: {wanted}"
        )


# =========================================================================== Vi download


def _is_safe_name(name: str) -> bool:
    return bool(name) and name not in (".", "..") and "/" not in name and "\\" not in name


def _redact(text: str, config: NIMConfig) -> str:
    if config.secret_key is not None:
        secret = config.secret_key.get_secret_value()
        if secret:
            text = text.replace(secret, "***")
    return text


def _strip_query(url: str) -> str:
    """A pre-signed URL without its signature, for messages."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))


def _backoff(attempt: int) -> float:
    return float(min(_BACKOFF_MAX, _BACKOFF_BASE * (2**attempt)))


@dataclass(frozen=True)
class _RunOutput:
    run_output_id: str
    url: str
    expires_at: float | None  # epoch seconds


def _parse_expiry(value: object) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        number = float(value)
        return number / 1000.0 if number > 1e11 else number  # epoch ms or s
    if isinstance(value, str) and value:
        try:
            return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
        except ValueError:
            with contextlib.suppress(ValueError):
                return _parse_expiry(float(value))
    return None


def _parse_run_output(body: object, config: NIMConfig) -> _RunOutput:
    what = f"run {config.run_id!r}" + (f" checkpoint {config.ckpt!r}" if config.ckpt else "")
    model: object = body
    if isinstance(body, dict) and isinstance(body.get("items"), list):
        items = body["items"]
        if not items:
            raise WeightsDownloadError(
                f"Datature Vi lists no outputs for {what} yet: it has no exported model "
                "(training may still be running)."
            )
        model = items[-1]  # the latest checkpoint
    if not isinstance(model, dict):
        raise WeightsDownloadError(f"Datature Vi returned an unexpected answer for {what}.")
    status = model.get("status")
    contents = status.get("contents") if isinstance(status, dict) else None
    download = contents.get("downloadUrl") if isinstance(contents, dict) else None
    url = download.get("url") if isinstance(download, dict) else None
    if not isinstance(url, str) or not url:
        raise WeightsDownloadError(
            f"The model of {what} is not ready for download yet (Datature Vi has not "
            "finished exporting it). Try again in a few minutes."
        )
    assert isinstance(download, dict)
    output_id = model.get("runOutputId") or config.ckpt or "latest"
    return _RunOutput(
        run_output_id=str(output_id),
        url=url,
        expires_at=_parse_expiry(download.get("expiresAt")),
    )


def _api_error(config: NIMConfig, status_code: int, body: str) -> WeightsDownloadError:
    org = config.organization_id
    what = f"run {config.run_id!r}" + (f" (checkpoint {config.ckpt!r})" if config.ckpt else "")
    if status_code == 401:
        message = (
            "Datature Vi rejected the secret key (HTTP 401): check NIMConfig.secret_key / "
            "DATATURE_VI_SECRET_KEY."
        )
    elif status_code == 403:
        message = (
            f"Datature Vi refused access to {what} in organization {org!r} (HTTP 403): check "
            "that the secret key (secret_key / DATATURE_VI_SECRET_KEY) belongs to that "
            "organization_id (DATATURE_VI_ORGANIZATION_ID) and may read the run."
        )
    elif status_code == 404:
        message = (
            f"Datature Vi found no {what} in organization {org!r} (HTTP 404): check run_id, "
            "ckpt and organization_id."
        )
    else:
        snippet = _redact(body[:300], config).strip()
        message = f"Datature Vi answered HTTP {status_code} for {what}" + (
            f": {snippet}" if snippet else "."
        )
    return WeightsDownloadError(message, status_code=status_code)


async def _request_run_output(client: httpx.AsyncClient, config: NIMConfig) -> _RunOutput:
    assert config.run_id is not None
    assert config.organization_id is not None
    assert config.secret_key is not None
    path = (
        f"/workspaces/{quote(config.organization_id, safe='')}"
        f"/runs/{quote(config.run_id, safe='')}/outputs"
    )
    if config.ckpt:
        path += f"/{quote(config.ckpt, safe='')}"
    url = config.endpoint.rstrip("/") + path
    headers = {
        "X-Secret-Key": config.secret_key.get_secret_value(),
        "X-Organization-Id": config.organization_id,
        "Accept": "application/json",
    }
    params = {"intent": "sdkLocalDeploy", "contents": "true"}
    for attempt in range(_API_ATTEMPTS):
        try:
            response = await client.get(url, headers=headers, params=params)
        except httpx.HTTPError as exc:
            if attempt + 1 < _API_ATTEMPTS:
                await asyncio.sleep(_backoff(attempt))
                continue
            raise WeightsDownloadError(
                f"Cannot reach the Datature Vi API at {config.endpoint} "
                f"({type(exc).__name__}): check the network or DATATURE_VI_API_ENDPOINT."
            ) from exc
        retryable = response.status_code >= 500 or response.status_code == 429
        if retryable and attempt + 1 < _API_ATTEMPTS:
            await asyncio.sleep(_backoff(attempt))
            continue
        if response.status_code != 200:
            raise _api_error(config, response.status_code, response.text)
        try:
            body = orjson.loads(response.content)
        except orjson.JSONDecodeError as exc:
            raise WeightsDownloadError(
                f"Datature Vi returned a non-JSON answer for run {config.run_id!r}."
            ) from exc
        return _parse_run_output(body, config)
    raise AssertionError("unreachable")  # pragma: no cover


class _ExpiredURL(Exception):
    """The pre-signed URL has expired or was refused by the storage."""


def _progress(quiet: bool) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        disable=quiet,
        transient=False,
    )


async def _download(
    client: httpx.AsyncClient,
    url: str,
    part: Path,
    *,
    label: str,
    quiet: bool,
) -> None:
    """Download ``url`` into ``part``, resuming with ``Range`` after interruptions.

    Raises:
        _ExpiredURL: the storage refused the pre-signed URL (HTTP 400/401/403).
        WeightsDownloadError: the download kept failing or the storage answered an error.
    """
    safe_url = _strip_query(url)
    total: int | None = None
    last_error: str = ""
    with _progress(quiet) as progress:
        task = progress.add_task(f"Downloading {label}", total=None)
        for attempt in range(_DOWNLOAD_ATTEMPTS):
            have = _file_size(part)
            # identity: byte offsets must be those of the stored object for Range to work.
            headers = {"Accept-Encoding": "identity"}
            if have:
                headers["Range"] = f"bytes={have}-"
            try:
                async with client.stream("GET", url, headers=headers) as response:
                    status = response.status_code
                    if status in (400, 401, 403):
                        raise _ExpiredURL(f"HTTP {status}")
                    if status == 416 and have:
                        # Our partial file does not fit the object (changed?): start over.
                        _remove(part)
                        last_error = "HTTP 416 for the resumed range"
                        continue
                    if status == 206 and have:
                        start, total = _content_range(response.headers.get("content-range"))
                        if start != have:
                            _remove(part)
                            last_error = "the storage resumed at the wrong offset"
                            continue
                        mode = "ab"
                    elif status == 200:
                        have = 0
                        length = response.headers.get("content-length")
                        total = int(length) if length and length.isdigit() else None
                        mode = "wb"
                    else:
                        raise WeightsDownloadError(
                            f"Downloading the model from {safe_url} failed: HTTP {status}.",
                            status_code=status,
                        )
                    progress.update(task, total=total, completed=have)
                    with part.open(mode) as sink:
                        # Unbuffered: every byte received is on disk before an interruption.
                        async for chunk in response.aiter_raw():
                            sink.write(chunk)
                            have += len(chunk)
                            progress.update(task, completed=have)
                if total is not None and have != total:
                    last_error = f"got {have} of {total} bytes"
                    await asyncio.sleep(_backoff(attempt))
                    continue
                return
            except httpx.HTTPError as exc:
                last_error = type(exc).__name__
                logger.info(
                    "Model download interrupted at %d bytes (%s); resuming", have, last_error
                )
                await asyncio.sleep(_backoff(attempt))
    raise WeightsDownloadError(
        f"Downloading the model from {safe_url} failed after {_DOWNLOAD_ATTEMPTS} attempts "
        f"({last_error}). Run the deploy again to resume."
    )


def _file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _remove(path: Path) -> None:
    path.unlink(missing_ok=True)


def _content_range(value: str | None) -> tuple[int, int | None]:
    # "bytes 100-199/200" or "bytes 100-199/*"
    if not value or not value.startswith("bytes "):
        return -1, None
    try:
        span, _, size = value[6:].partition("/")
        start = int(span.split("-", 1)[0])
        return start, (int(size) if size.strip().isdigit() else None)
    except ValueError:
        return -1, None


async def _ensure_vi_model(config: NIMConfig, *, quiet: bool) -> Path:
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
        if not quiet:
            Console(stderr=True).print(f"Using the downloaded model in {target}")
        return target
    downloads = models_dir / ".downloads"

    timeout = httpx.Timeout(60.0, connect=30.0)
    async with (
        httpx.AsyncClient(timeout=timeout, follow_redirects=True) as api,
        httpx.AsyncClient(timeout=timeout, follow_redirects=True) as storage,
    ):
        output = await _request_run_output(api, config)
        if config.overwrite:
            _remove_downloads(downloads, run_id, output)
        archive = await _fetch_archive(api, storage, config, output, downloads, quiet=quiet)

    try:
        await asyncio.to_thread(_install_archive, archive, target, models_dir, config, output)
    finally:
        # Unpacked, or unsafe/corrupt: either way the archive is not kept.
        await asyncio.to_thread(_remove, archive)
    return target


def _local_state(config: NIMConfig) -> tuple[Path, bool]:
    """The absolute models dir (a bind-mount source) and whether the run can be reused.

    Creates ``{models_dir}/.downloads`` when the run must be downloaded.
    """
    assert config.run_id is not None
    models_dir = Path(os.path.abspath(config.models_dir))
    target = models_dir / config.run_id
    if not config.overwrite and _is_complete(target) and _marker_matches(target, config.ckpt):
        return models_dir, True
    try:
        (models_dir / ".downloads").mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise WeightsError(f"model_save_path: cannot create {models_dir}: {exc.strerror}") from exc
    return models_dir, False


def _archive_path(downloads: Path, run_id: str, output: _RunOutput) -> Path:
    return downloads / f"{run_id}-{_file_safe(output.run_output_id)}.tar"


def _remove_downloads(downloads: Path, run_id: str, output: _RunOutput) -> None:
    archive = _archive_path(downloads, run_id, output)
    _remove(archive)
    _remove(archive.with_name(archive.name + ".part"))


async def _fetch_archive(
    api: httpx.AsyncClient,
    storage: httpx.AsyncClient,
    config: NIMConfig,
    output: _RunOutput,
    downloads: Path,
    *,
    quiet: bool,
) -> Path:
    """Download the run's archive (resuming a partial one); one fresh URL if it expired."""
    assert config.run_id is not None
    for renewed in (False, True):
        # Named after the run output, so a resumed file always belongs to the same object.
        archive = _archive_path(downloads, config.run_id, output)
        if archive.exists():
            return archive  # downloaded earlier, unpacking did not finish
        if output.expires_at is not None and output.expires_at <= time.time():
            if renewed:
                break
            logger.info("Download URL of run %s has expired; requesting a fresh one", config.run_id)
            output = await _request_run_output(api, config)
            continue
        part = archive.with_name(archive.name + ".part")
        try:
            await _download(storage, output.url, part, label=f"run {config.run_id}", quiet=quiet)
        except _ExpiredURL as exc:
            if renewed:
                break
            logger.info("Download URL refused (%s); requesting a fresh one", exc)
            output = await _request_run_output(api, config)
            continue
        except OSError as exc:
            raise WeightsError(
                f"model_save_path: cannot write the download to {part}: {exc.strerror or exc}"
            ) from exc
        os.replace(part, archive)
        return archive
    raise _expired_error(config)


def _expired_error(config: NIMConfig) -> WeightsDownloadError:
    return WeightsDownloadError(
        f"The download URL Datature Vi issued for run {config.run_id!r} has expired (or was "
        "refused by the storage) even after requesting a fresh one; check the host clock "
        "and try again."
    )


def _file_safe(text: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in text)[:100]


def _marker_matches(target: Path, ckpt: str | None) -> bool:
    if ckpt is None:
        return True
    try:
        marker = orjson.loads((target / MARKER_NAME).read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return False  # cannot tell which checkpoint is there: fetch the one asked for
    return isinstance(marker, dict) and ckpt in (marker.get("ckpt"), marker.get("runOutputId"))


def _install_archive(
    archive: Path, target: Path, models_dir: Path, config: NIMConfig, output: _RunOutput
) -> None:
    """Unpack ``archive`` into a staging dir, check it, and swap it in as ``target``."""
    staging = models_dir / f".{target.name}.partial-{uuid.uuid4().hex[:8]}"
    try:
        staging.mkdir()
        safe_extract(archive, staging)
        if not _is_complete(staging):
            raise WeightsError(
                f"The archive of run {config.run_id!r} holds no Hugging Face model "
                f"({_FULL_DIR}/config.json and *.safetensors)."
            )
        (staging / MARKER_NAME).write_bytes(
            orjson.dumps(
                {"runId": config.run_id, "runOutputId": output.run_output_id, "ckpt": config.ckpt}
            )
        )
        old: Path | None = None
        if target.exists() or target.is_symlink():
            old = models_dir / f".{target.name}.old-{uuid.uuid4().hex[:8]}"
            os.replace(target, old)
        os.replace(staging, target)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


# =========================================================================== safe tar


def _resolve_virtual(parts: list[str], links: dict[str, str], depth: int = 0) -> list[str] | None:
    """Resolve an archive-relative path, following the archive's own symlinks.

    Returns the resolved parts, or ``None`` when the path leaves the archive root.
    """
    if depth > 32:
        return None
    resolved: list[str] = []
    for part in parts:
        if part in ("", "."):
            continue
        if part == "..":
            if not resolved:
                return None
            resolved.pop()
            continue
        resolved.append(part)
        key = "/".join(resolved)
        if key in links:
            target = links[key]
            if target.startswith("/"):
                return None
            base = resolved[:-1]
            followed = _resolve_virtual(base + target.split("/"), links, depth + 1)
            if followed is None:
                return None
            resolved = followed
    return resolved


def _member_name(name: str) -> str:
    return posixpath.normpath(name.replace("\\", "/")) if name else name


def _check_members(members: list[tarfile.TarInfo]) -> None:
    links: dict[str, str] = {}
    for member in members:
        if member.issym():
            links[_member_name(member.name).strip("/")] = member.linkname.replace("\\", "/")
    for member in members:
        raw = member.name.replace("\\", "/")
        if not raw or raw.startswith("/") or (len(raw) > 1 and raw[1] == ":"):
            raise WeightsError(f"unsafe archive: absolute path {member.name!r}")
        parts = raw.split("/")
        if ".." in parts:
            raise WeightsError(f"unsafe archive: path {member.name!r} leaves the target")
        if not (member.isfile() or member.isdir() or member.issym() or member.islnk()):
            raise WeightsError(
                f"unsafe archive: {member.name!r} is a device, fifo or other special file"
            )
        # The member's parent directories must stay inside, even through archive symlinks.
        if _resolve_virtual(parts[:-1], links) is None:
            raise WeightsError(f"unsafe archive: {member.name!r} is written through a link")
        if member.issym():
            target = member.linkname.replace("\\", "/")
            if not target or target.startswith("/"):
                raise WeightsError(
                    f"unsafe archive: symlink {member.name!r} points to an absolute path"
                )
            if _resolve_virtual([*parts[:-1], *target.split("/")], links) is None:
                raise WeightsError(
                    f"unsafe archive: symlink {member.name!r} points outside the target"
                )
        elif member.islnk():
            target = member.linkname.replace("\\", "/")
            if not target or target.startswith("/") or ".." in target.split("/"):
                raise WeightsError(
                    f"unsafe archive: hard link {member.name!r} points outside the target"
                )
            if _resolve_virtual(target.split("/"), links) is None:
                raise WeightsError(
                    f"unsafe archive: hard link {member.name!r} points outside the target"
                )


def safe_extract(archive: Path, destination: Path) -> None:
    """Extract a tar archive into ``destination`` after checking every member.

    The whole member list is checked before anything is written: absolute paths, ``..``
    components, symlinks or hard links resolving outside ``destination`` (following the
    archive's own links), and device files or fifos reject the archive. Extraction then uses
    the standard library's ``data`` filter as a second line of defence.

    Args:
        archive: Path of the tar archive (compressed or not).
        destination: An existing directory to extract into.

    Raises:
        WeightsError: the archive is unreadable or unsafe.
    """
    try:
        with tarfile.open(archive, mode="r:*") as tar:
            members = tar.getmembers()
            _check_members(members)
            tar.extractall(destination, members=members, filter="data")
    except tarfile.FilterError as exc:
        raise WeightsError(f"unsafe archive: {exc}") from exc
    except (tarfile.TarError, EOFError) as exc:
        raise WeightsError(f"cannot read the model archive {archive.name}: {exc}") from exc
    except OSError as exc:
        raise WeightsError(f"cannot unpack the model archive: {exc.strerror or exc}") from exc
