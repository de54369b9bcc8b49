"""Synthetic checkpoints and adapters written with numpy, for the tests that need no torch.

Tensors are written in the safetensors layout by hand (8-byte length, JSON header, raw bytes)
so that the files do not come from the code under test; bfloat16 values are produced by
truncating float32 values that are exactly representable (their low 16 bits are zero).
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import numpy as np

NP_DTYPES = {"F32": "<f4", "F16": "<f2", "F64": "<f8", "I8": "i1", "I32": "<i4"}


def bf16_exact(rng: np.random.Generator, shape: tuple[int, ...], scale: float = 0.05) -> np.ndarray:
    """Random float32 values that are exactly representable in bfloat16."""
    values = (rng.standard_normal(shape) * scale).astype(np.float32)
    return (values.view(np.uint32) & np.uint32(0xFFFF0000)).view(np.float32)


def encode(values: np.ndarray, dtype: str) -> bytes:
    """Raw little-endian bytes of ``values`` stored as ``dtype`` (BF16 must be exact)."""
    if dtype == "BF16":
        bits = np.ascontiguousarray(values, dtype=np.float32).view(np.uint32)
        assert not (bits & np.uint32(0xFFFF)).any(), "not exactly representable in bfloat16"
        return (bits >> np.uint32(16)).astype("<u2").tobytes()
    return np.ascontiguousarray(values, dtype=NP_DTYPES[dtype]).tobytes()


def decode(raw: bytes, dtype: str, shape: tuple[int, ...]) -> np.ndarray:
    """float64 values of raw bytes stored as ``dtype``."""
    if dtype == "BF16":
        bits = np.frombuffer(raw, dtype="<u2").astype(np.uint32) << np.uint32(16)
        return bits.view(np.float32).astype(np.float64).reshape(shape)
    return np.frombuffer(raw, dtype=NP_DTYPES[dtype]).astype(np.float64).reshape(shape)


def write_st(
    path: Path,
    tensors: dict[str, tuple[str, np.ndarray]],
    metadata: dict[str, str] | None = None,
) -> None:
    """Write ``{name: (dtype, values)}`` as a safetensors file (sorted by name)."""
    header: dict[str, Any] = {}
    if metadata:
        header["__metadata__"] = metadata
    blobs: list[bytes] = []
    pos = 0
    for name in sorted(tensors):
        dtype, values = tensors[name]
        raw = encode(values, dtype)
        header[name] = {
            "dtype": dtype,
            "shape": list(values.shape),
            "data_offsets": [pos, pos + len(raw)],
        }
        blobs.append(raw)
        pos += len(raw)
    doc = json.dumps(header).encode()
    doc += b" " * (-len(doc) % 8)
    path.write_bytes(struct.pack("<Q", len(doc)) + doc + b"".join(blobs))


def read_st(path: Path) -> dict[str, tuple[str, np.ndarray]]:
    """Read a safetensors file into ``{name: (dtype, float64 values)}`` (independent reader)."""
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    header.pop("__metadata__", None)
    out: dict[str, tuple[str, np.ndarray]] = {}
    for name, entry in header.items():
        begin, end = entry["data_offsets"]
        out[name] = (
            entry["dtype"],
            decode(raw[8 + n + begin : 8 + n + end], entry["dtype"], tuple(entry["shape"])),
        )
    return out


def read_dir(path: Path) -> dict[str, tuple[str, np.ndarray]]:
    """Every tensor of every ``*.safetensors`` in ``path``."""
    out: dict[str, tuple[str, np.ndarray]] = {}
    for shard in sorted(path.glob("*.safetensors")):
        out.update(read_st(shard))
    return out


def write_base(
    root: Path,
    shards: list[dict[str, tuple[str, np.ndarray]]],
    extra: dict[str, str] | None = None,
) -> Path:
    """A Hugging Face-style base: config.json, the shards (+ index when several), extra files."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "config.json").write_text(
        json.dumps({"architectures": ["Qwen2_5_VLForConditionalGeneration"]})
    )
    for name, text in (extra or {}).items():
        (root / name).write_text(text)
    if len(shards) == 1:
        write_st(root / "model.safetensors", shards[0], {"format": "pt"})
        return root
    weight_map: dict[str, str] = {}
    for i, tensors in enumerate(shards, 1):
        name = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        write_st(root / name, tensors, {"format": "pt"})
        weight_map.update(dict.fromkeys(tensors, name))
    (root / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": 0}, "weight_map": weight_map})
    )
    return root


def write_adapter(
    root: Path,
    tensors: dict[str, tuple[str, np.ndarray]],
    **config: Any,
) -> Path:
    """A PEFT-style adapter dir: adapter_config.json (peft_type LORA + ``config``) and weights."""
    root.mkdir(parents=True, exist_ok=True)
    doc = {
        "peft_type": "LORA",
        "r": 4,
        "lora_alpha": 8,
        "use_dora": False,
        "bias": "none",
        **config,
    }
    (root / "adapter_config.json").write_text(json.dumps(doc))
    write_st(root / "adapter_model.safetensors", tensors)
    return root
