"""Write a planned merge: shard by shard, in row blocks, into a staging folder renamed at the end.

Memory stays bounded by the adapter plus one block of rows (about 1 M elements, ~20 MiB) of one
tensor: each output shard is written while its input is read tensor by tensor, untouched
tensors are copied in 8 MiB chunks, and a merged tensor is processed in row blocks.
:func:`staging` gives a hidden folder beside the output that any failure removes, and
:func:`publish` renames it into place, so there is never a half-written checkpoint.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, BinaryIO

from nim_async.deploy.lora.numerics import compute_dtype, decode, encode
from nim_async.deploy.lora.plan import INDEX_NAME, LoraDelta, MergePlan
from nim_async.deploy.lora.safetensors_io import (
    DTYPE_SIZES,
    SafetensorsHeader,
    TensorInfo,
    write_header,
)
from nim_async.errors import WeightsError

__all__ = [
    "MERGE_MARKER",
    "copy_extra_files",
    "publish",
    "staging",
    "write_index",
    "write_marker",
    "write_shard",
]

MERGE_MARKER = ".nim_async_merge.json"
"""Written last into a merged checkpoint: what was merged (base, adapter, modules)."""

# Rows of a merged tensor are processed ~1 M elements at a time: about 19 bytes per element are
# live in a block (bytes read, float32 weights and delta, the rounding temporaries, the output).
_BLOCK_ELEMENTS = 1 << 20
_COPY_CHUNK = 8 << 20


def _read_exact(f: BinaryIO, offset: int, size: int, header: SafetensorsHeader) -> bytes:
    f.seek(offset)
    raw = f.read(size)
    if len(raw) != size:
        raise WeightsError(f"{header.path} changed while merging (short read)")
    return raw


def _copy_range(
    src: BinaryIO, offset: int, size: int, dst: BinaryIO, header: SafetensorsHeader
) -> None:
    src.seek(offset)
    left = size
    while left:
        chunk = src.read(min(_COPY_CHUNK, left))
        if not chunk:
            raise WeightsError(f"{header.path} changed while merging (short read)")
        dst.write(chunk)
        left -= len(chunk)


def _write_merged(
    np: Any,
    src: BinaryIO,
    header: SafetensorsHeader,
    info: TensorInfo,
    delta: LoraDelta,
    dst: BinaryIO,
    replacement: Any | None,
) -> None:
    rows = info.shape[0]
    cols = info.numel // rows if rows else 0
    item = DTYPE_SIZES[info.dtype]
    compute = compute_dtype(info.dtype)
    a = delta.a.astype(np.float64) if compute == "F64" else delta.a
    b = delta.b.astype(np.float64) if compute == "F64" else delta.b
    step = max(1, _BLOCK_ELEMENTS // max(cols, 1))
    for start in range(0, rows, step):
        stop = min(rows, start + step)
        if replacement is not None:  # PEFT saved this layer's weights (embedding layers)
            w = replacement[start:stop].reshape(stop - start, cols).copy()
        else:
            raw = _read_exact(
                src,
                header.data_start + info.begin + start * cols * item,
                (stop - start) * cols * item,
                header,
            )
            w = decode(np, raw, info.dtype, compute).reshape(stop - start, cols)
        # PEFT: delta = transpose(B @ A, fan_in_fan_out) * scaling; these are its rows start:stop
        d = (b @ a[:, start:stop]).T if delta.transposed else b[start:stop] @ a
        d *= delta.scaling  # PEFT's order: (B @ A) * scaling, then W + delta
        w += d
        del d
        dst.write(encode(np, w, info.dtype))


def write_shard(np: Any, plan: MergePlan, header: SafetensorsHeader, out_path: Path) -> None:
    """Write one merged shard (same header layout as its input) and fsync it.

    Args:
        np: The numpy module.
        plan: The merge plan.
        header: The input shard.
        out_path: The output file (in the staging folder).

    Raises:
        WeightsError: The input shard changed while it was read.
        OSError: Writing failed.
    """
    with header.path.open("rb") as src, out_path.open("wb") as dst:
        write_header(
            dst, [(t.name, t.dtype, t.shape, t.nbytes) for t in header.tensors], header.metadata
        )
        for t in header.tensors:
            offset = header.data_start + t.begin
            if t.name in plan.deltas:
                delta = plan.deltas[t.name]
                _write_merged(np, src, header, t, delta, dst, plan.replacements.get(t.name))
            elif t.name in plan.replacements:
                value = plan.replacements[t.name]
                dst.write(encode(np, value, t.dtype))
            else:
                _copy_range(src, offset, t.nbytes, dst, header)
        dst.flush()
        os.fsync(dst.fileno())


def copy_extra_files(plan: MergePlan, out_dir: Path) -> None:
    """Copy the base's non-weight files and folders (config, tokenizer...) into ``out_dir``."""
    for path in plan.extra_files:
        if path.is_dir():
            shutil.copytree(path, out_dir / path.name, symlinks=False)
        else:
            shutil.copy2(path, out_dir / path.name)


def write_index(plan: MergePlan, out_dir: Path) -> None:
    """Write the shard index (when the base has one) with the merged ``total_size``."""
    if plan.index is None:
        return
    index = dict(plan.index)
    metadata = dict(index.get("metadata") or {})
    metadata["total_size"] = plan.bytes_total
    index["metadata"] = metadata
    (out_dir / INDEX_NAME).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")


def write_marker(plan: MergePlan, out_dir: Path, provenance: Mapping[str, Any] | None) -> None:
    """Write :data:`MERGE_MARKER`: the inputs, the merged modules and ``provenance``."""
    doc = {
        "format": 1,
        "base_dir": str(plan.base_dir),
        "adapter_dir": str(plan.adapter_dir),
        "lora_modules": sorted(d.module for d in plan.deltas.values()),
        "replaced": sorted(plan.replacements),
        "shards": [h.path.name for h in plan.shards],
        **(provenance or {}),
    }
    (out_dir / MERGE_MARKER).write_text(json.dumps(doc, indent=2) + "\n")


@contextlib.contextmanager
def staging(out_dir: Path) -> Iterator[Path]:
    """A hidden temporary folder beside ``out_dir``, removed if the block raises anything."""
    tmp = out_dir.parent / f".{out_dir.name}.partial-{uuid.uuid4().hex[:12]}"
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def publish(tmp: Path, out_dir: Path, overwrite: bool) -> None:
    """Rename the finished ``tmp`` to ``out_dir`` (swapping out an old one when overwriting)."""
    trash: Path | None = None
    if out_dir.exists() and overwrite:
        trash = out_dir.parent / f".{out_dir.name}.old-{uuid.uuid4().hex[:12]}"
        out_dir.rename(trash)
    try:
        tmp.rename(out_dir)
    except OSError:
        if trash is not None:
            trash.rename(out_dir)
        raise
    with contextlib.suppress(OSError):  # make the rename itself durable
        fd = os.open(out_dir.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    if trash is not None:
        shutil.rmtree(trash, ignore_errors=True)
