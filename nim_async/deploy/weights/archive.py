"""The model archive: checked member by member, unpacked beside the target, swapped in.

:func:`safe_extract` refuses an archive with absolute paths, ``..``, links leading outside or
special files before writing anything; :func:`install_archive` unpacks into a staging folder,
checks it holds a model, writes the completion marker and renames it into place.
"""

from __future__ import annotations

import os
import posixpath
import shutil
import tarfile
import uuid
from collections.abc import Mapping
from pathlib import Path

import orjson

from nim_async.deploy.weights.preflight import FULL_DIR, is_complete
from nim_async.errors import WeightsError

__all__ = ["MARKER_NAME", "install_archive", "marker_matches", "safe_extract"]

MARKER_NAME = ".nim_async_model.json"
"""File written last into ``{model_save_path}/{run_id}/``: the download is complete."""


def marker_matches(target: Path, ckpt: str | None) -> bool:
    """Whether the model in ``target`` is the checkpoint ``ckpt`` (any, when ``None``).

    Args:
        target: ``{model_save_path}/{run_id}``.
        ckpt: The checkpoint asked for.
    """
    if ckpt is None:
        return True
    try:
        marker = orjson.loads((target / MARKER_NAME).read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return False  # cannot tell which checkpoint is there: fetch the one asked for
    return isinstance(marker, dict) and ckpt in (marker.get("ckpt"), marker.get("runOutputId"))


def install_archive(
    archive: Path, target: Path, *, run_id: str, marker: Mapping[str, object]
) -> None:
    """Unpack ``archive`` into a staging dir beside ``target``, check it, and swap it in.

    Args:
        archive: The downloaded tar archive.
        target: ``{model_save_path}/{run_id}`` (replaced if it exists).
        run_id: The run, for messages.
        marker: What to record in :data:`MARKER_NAME` (run, run output and checkpoint).

    Raises:
        WeightsError: if the archive is unsafe, unreadable or holds no model.
    """
    models_dir = target.parent
    staging = models_dir / f".{target.name}.partial-{uuid.uuid4().hex[:8]}"
    try:
        staging.mkdir()
        safe_extract(archive, staging)
        if not is_complete(staging):
            raise WeightsError(
                f"The archive of run {run_id!r} holds no Hugging Face model "
                f"({FULL_DIR}/config.json and *.safetensors)."
            )
        (staging / MARKER_NAME).write_bytes(orjson.dumps(dict(marker)))
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
