"""A strict reader and a streaming writer for the safetensors file format (stdlib only).

The format is an 8-byte little-endian header length ``N``, ``N`` bytes of JSON describing every
tensor (``dtype``, ``shape``, ``data_offsets`` relative to the data section, plus an optional
``__metadata__`` string map), then the raw little-endian tensor bytes. Reading only the header
is enough to plan a merge; tensor bytes are then read one tensor (or one block) at a time, so a
shard never has to sit in memory whole. The checks mirror the ``safetensors`` library's: a
header that is not a JSON object, offsets that overlap, leave gaps, or run past the end of the
file, and byte sizes that disagree with ``dtype`` x ``shape`` are rejected as corrupt.
"""

from __future__ import annotations

import json
import math
import os
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

__all__ = [
    "DTYPE_SIZES",
    "SafetensorsError",
    "SafetensorsHeader",
    "TensorInfo",
    "read_header",
    "write_header",
]

DTYPE_SIZES: dict[str, int] = {
    "BOOL": 1,
    "U8": 1,
    "I8": 1,
    "F8_E5M2": 1,
    "F8_E4M3": 1,
    "F8_E8M0": 1,
    "I16": 2,
    "U16": 2,
    "F16": 2,
    "BF16": 2,
    "I32": 4,
    "U32": 4,
    "F32": 4,
    "F64": 8,
    "I64": 8,
    "U64": 8,
    "C64": 8,
}
"""Bytes per element of the safetensors dtypes whose sizes are checked."""

_MAX_HEADER = 100 * 1024 * 1024  # the safetensors library's own limit


class SafetensorsError(ValueError):
    """A file is not a valid safetensors file (the message names the file and the defect)."""


@dataclass(frozen=True)
class TensorInfo:
    """One tensor's entry in a safetensors header.

    Attributes:
        name: The tensor's name.
        dtype: The safetensors dtype, e.g. ``"BF16"``.
        shape: The tensor's shape.
        begin: Offset of its first byte in the data section.
        end: Offset one past its last byte in the data section.
    """

    name: str
    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int

    @property
    def nbytes(self) -> int:
        """The tensor's size in bytes."""
        return self.end - self.begin

    @property
    def numel(self) -> int:
        """The number of elements."""
        return math.prod(self.shape)


@dataclass(frozen=True)
class SafetensorsHeader:
    """The parsed header of one safetensors file.

    Attributes:
        path: The file.
        tensors: Every tensor, in data-section order.
        metadata: The ``__metadata__`` string map (empty when absent).
        data_start: Absolute file offset of the data section (8 + header length).
        file_size: The file's size in bytes.
    """

    path: Path
    tensors: tuple[TensorInfo, ...]
    metadata: dict[str, str]
    data_start: int
    file_size: int

    def by_name(self) -> dict[str, TensorInfo]:
        """Map each tensor name to its entry."""
        return {t.name: t for t in self.tensors}


def _fail(path: Path, what: str) -> SafetensorsError:
    return SafetensorsError(f"{path.name} is not a valid safetensors file: {what}")


def read_header(path: Path) -> SafetensorsHeader:
    """Read and validate the header of a safetensors file (the tensor bytes are not read).

    Args:
        path: The ``.safetensors`` file.

    Returns:
        The parsed header.

    Raises:
        SafetensorsError: The file is truncated, the header is not valid JSON of the right
            shape, or the offsets and sizes do not describe the data section exactly.
        OSError: The file cannot be opened.
    """
    with path.open("rb") as f:
        file_size = os.fstat(f.fileno()).st_size
        prefix = f.read(8)
        if len(prefix) < 8:
            raise _fail(path, f"{file_size} bytes is shorter than the 8-byte header length")
        (length,) = struct.unpack("<Q", prefix)
        if length > _MAX_HEADER or 8 + length > file_size:
            raise _fail(path, f"header length {length} does not fit in {file_size} bytes")
        raw = f.read(length)
    try:
        doc = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _fail(path, f"the header is not JSON ({exc})") from exc
    if not isinstance(doc, dict):
        raise _fail(path, "the header is not a JSON object")
    metadata_raw = doc.pop("__metadata__", None) or {}
    if not isinstance(metadata_raw, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in metadata_raw.items()
    ):
        raise _fail(path, "__metadata__ is not a map of strings")
    tensors = [_parse_entry(path, name, entry) for name, entry in doc.items()]
    tensors.sort(key=lambda t: (t.begin, t.end))
    position = 0
    for t in tensors:
        if t.begin != position:
            raise _fail(path, f"tensor {t.name!r} starts at {t.begin}, expected {position}")
        position = t.end
    data_start = 8 + length
    if data_start + position != file_size:
        raise _fail(
            path,
            f"the tensors cover {position} bytes but the data section holds "
            f"{file_size - data_start} (truncated or padded file)",
        )
    return SafetensorsHeader(path, tuple(tensors), dict(metadata_raw), data_start, file_size)


def _parse_entry(path: Path, name: str, entry: object) -> TensorInfo:
    if not isinstance(entry, dict):
        raise _fail(path, f"entry {name!r} is not an object")
    dtype = entry.get("dtype")
    shape = entry.get("shape")
    offsets = entry.get("data_offsets")
    if not isinstance(dtype, str):
        raise _fail(path, f"tensor {name!r} has no dtype")
    if not isinstance(shape, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
    ):
        raise _fail(path, f"tensor {name!r} has an invalid shape {shape!r}")
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)
        or not 0 <= offsets[0] <= offsets[1]
    ):
        raise _fail(path, f"tensor {name!r} has invalid data_offsets {offsets!r}")
    info = TensorInfo(name, dtype, tuple(shape), offsets[0], offsets[1])
    size = DTYPE_SIZES.get(dtype)
    if size is not None and info.numel * size != info.nbytes:
        raise _fail(
            path,
            f"tensor {name!r} ({dtype} {list(shape)}) needs {info.numel * size} bytes, "
            f"its offsets span {info.nbytes}",
        )
    return info


def write_header(
    f: BinaryIO, tensors: Iterable[tuple[str, str, tuple[int, ...], int]], metadata: dict[str, str]
) -> None:
    """Write a safetensors header for tensors laid out back to back in the given order.

    Args:
        f: The output file, positioned at its start.
        tensors: ``(name, dtype, shape, nbytes)`` per tensor, in the order their bytes follow.
        metadata: The ``__metadata__`` map (omitted when empty).
    """
    doc: dict[str, object] = {}
    if metadata:
        doc["__metadata__"] = metadata
    position = 0
    for name, dtype, shape, nbytes in tensors:
        doc[name] = {
            "dtype": dtype,
            "shape": list(shape),
            "data_offsets": [position, position + nbytes],
        }
        position += nbytes
    raw = json.dumps(doc, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-(8 + len(raw)) % 8)  # the data section starts 8-byte aligned
    f.write(struct.pack("<Q", len(raw)))
    f.write(raw)
