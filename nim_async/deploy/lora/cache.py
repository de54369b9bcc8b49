"""A merged checkpoint per (base, adapter) pair, cached under a directory and keyed by content.

:func:`merged_checkpoint` hashes both inputs (every file of the base that ends up in the merged
checkpoint, and the adapter's config and weights), merges into ``{cache_root}/{key}/`` when that
entry is missing (or ``overwrite`` is set), and returns it. Hashing a multi-gigabyte base is
not free (about 1 GB/s), so each file's SHA-256 is remembered in ``{cache_root}/.hashes.json``
by (path, size, mtime, inode): a second deploy of the same download re-reads nothing. After a
new merge, older entries in the same cache root (other inputs, e.g. a re-downloaded run) are
removed, so a run keeps one merged copy.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import uuid
from pathlib import Path
from typing import Any

from nim_async.deploy.lora.adapter import ADAPTER_CONFIG, ADAPTER_WEIGHTS
from nim_async.deploy.lora.merge import (
    MERGE_MARKER,
    AdapterMergeError,
    ProgressCallback,
    merge_adapter,
    require_merge_support,
)
from nim_async.errors import WeightsError

__all__ = ["MERGE_FORMAT", "cache_key", "merged_checkpoint"]

MERGE_FORMAT = "lora-merge-1"
"""Part of every cache key: bump it when the merge's output for the same inputs changes."""

_HASHES = ".hashes.json"
_STALE_PARTIAL_S = 6 * 3600  # a merge's staging dir untouched this long was abandoned
_SKIP_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")


def _base_files(base_dir: Path) -> list[Path]:
    """The base's files that shape the merged checkpoint (what the merge reads or copies)."""
    files: list[Path] = []
    for path in sorted(base_dir.rglob("*")):
        rel = path.relative_to(base_dir)
        if any(part.startswith(".") for part in rel.parts) or not path.is_file():
            continue
        if rel.parts[0].startswith("adapter_") or path.name.endswith(_SKIP_SUFFIXES):
            continue
        if len(rel.parts) > 1 and (base_dir / rel.parts[0] / ADAPTER_CONFIG).exists():
            continue
        files.append(path)
    return files


class _HashMemo:
    """File SHA-256s remembered by (path, size, mtime_ns, inode) in one JSON file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.entries: dict[str, Any] = {}
        self.dirty = False
        try:
            loaded = json.loads(path.read_text(encoding="utf-8"))
            if isinstance(loaded, dict):
                self.entries = loaded
        except (OSError, ValueError):
            pass

    def digest(self, path: Path) -> str:
        st = path.stat()
        stamp = [st.st_size, st.st_mtime_ns, st.st_ino]
        key = str(path.resolve())
        entry = self.entries.get(key)
        if (
            isinstance(entry, dict)
            and entry.get("stamp") == stamp
            and isinstance(entry.get("sha256"), str)
        ):
            return str(entry["sha256"])
        with path.open("rb") as f:
            value = hashlib.file_digest(f, "sha256").hexdigest()
        self.entries[key] = {"stamp": stamp, "sha256": value}
        self.dirty = True
        return value

    def save(self) -> None:
        if not self.dirty:
            return
        tmp = self.path.with_name(f"{self.path.name}.{uuid.uuid4().hex[:8]}.tmp")
        try:
            tmp.write_text(json.dumps(self.entries, sort_keys=True))
            os.replace(tmp, self.path)
        except OSError:
            tmp.unlink(missing_ok=True)  # only a speed-up: a failure to remember is harmless


def _dir_digest(root: Path, files: list[Path], memo: _HashMemo) -> str:
    h = hashlib.sha256()
    for path in files:
        h.update(path.relative_to(root).as_posix().encode() + b"\0")
        h.update(memo.digest(path).encode() + b"\n")
    return h.hexdigest()


def cache_key(base_dir: str | Path, adapter_dir: str | Path, cache_root: str | Path) -> str:
    """The cache entry name for a (base, adapter) pair: a hash of both inputs' contents.

    Args:
        base_dir: The base checkpoint directory.
        adapter_dir: The PEFT adapter directory.
        cache_root: The cache directory (holds the hash memo).

    Returns:
        A 24-hex-digit key; it changes when any merged-over file of either input changes.

    Raises:
        OSError: An input file cannot be read.
    """
    base = Path(base_dir).expanduser().resolve()
    adapter = Path(adapter_dir).expanduser().resolve()
    root = Path(cache_root).expanduser()
    root.mkdir(parents=True, exist_ok=True)
    memo = _HashMemo(root / _HASHES)
    adapter_files = [
        p for p in (adapter / ADAPTER_CONFIG, adapter / ADAPTER_WEIGHTS) if p.is_file()
    ]
    h = hashlib.sha256(MERGE_FORMAT.encode() + b"\0")
    h.update(_dir_digest(base, _base_files(base), memo).encode() + b"\0")
    h.update(_dir_digest(adapter, adapter_files, memo).encode())
    memo.save()
    return h.hexdigest()[:24]


def _is_entry(path: Path) -> bool:
    return path.is_dir() and (path / MERGE_MARKER).is_file() and not path.name.startswith(".")


def merged_checkpoint(
    base_dir: str | Path,
    adapter_dir: str | Path,
    cache_root: str | Path,
    overwrite: bool = False,
    *,
    on_progress: ProgressCallback | None = None,
    image_name: str | None = None,
) -> Path:
    """The merged checkpoint of ``base_dir`` + ``adapter_dir``, built once and cached.

    Args:
        base_dir: The base Hugging Face checkpoint (safetensors).
        adapter_dir: The PEFT LoRA adapter.
        cache_root: The cache directory; the result is ``{cache_root}/{key}/`` with the key
            from :func:`cache_key` (e.g. ``{model_save_path}/{run_id}/model_merged``).
        overwrite: Rebuild the entry even when it exists.
        on_progress: Per-shard progress of a merge (not called on a cache hit).
        image_name: The NIM image, for error messages.

    Returns:
        The merged checkpoint directory (``config.json``, safetensors, tokenizer files...).

    Raises:
        InvalidConfigError: numpy is not installed (names ``pip install 'nim-async[merge]'``).
        AdapterMergeError: The adapter cannot be merged into this base (nothing is written).
        WeightsError: The inputs cannot be read or the cache cannot be written.
    """
    require_merge_support()
    root = Path(cache_root).expanduser().absolute()
    base = Path(base_dir).expanduser().resolve()
    adapter = Path(adapter_dir).expanduser().resolve()
    try:
        key = cache_key(base, adapter, root)
    except OSError as exc:
        if not base.is_dir() or not adapter.is_dir():
            which = "base" if not base.is_dir() else "adapter"
            raise AdapterMergeError(
                f"the {which} directory is missing",
                base_dir=base,
                adapter_dir=adapter,
                image_name=image_name,
            ) from exc
        raise WeightsError(f"cannot hash the merge inputs under {root}: {exc}") from exc
    entry = root / key
    if _is_entry(entry) and not overwrite:
        return entry
    if entry.exists() and not _is_entry(entry):
        overwrite = True  # an entry without its marker is not ours to trust: rebuild it
    try:
        out = merge_adapter(
            base,
            adapter,
            entry,
            on_progress=on_progress,
            overwrite=overwrite,
            image_name=image_name,
            provenance={"cache_key": key, "merge_format": MERGE_FORMAT},
        )
    except WeightsError:
        if _is_entry(entry) and not overwrite:
            return entry  # another process finished the same merge first
        raise
    _prune(root, keep=entry)
    return out


def _prune(root: Path, keep: Path) -> None:
    """Remove the other merged entries (and leftovers of interrupted merges) under ``root``.

    A staging directory is removed only when untouched for hours: a fresh one may belong to a
    merge still running in another process.
    """
    now = time.time()
    for path in root.iterdir():
        if path == keep or not path.is_dir():
            continue
        name = path.name
        old = name.startswith(".") and ".old-" in name
        abandoned = name.startswith(".") and ".partial-" in name
        if abandoned:
            try:
                abandoned = now - path.stat().st_mtime > _STALE_PARTIAL_S
            except OSError:
                abandoned = False
        if _is_entry(path) or old or abandoned:
            shutil.rmtree(path, ignore_errors=True)
