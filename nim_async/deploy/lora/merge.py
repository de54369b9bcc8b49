"""Merge a PEFT LoRA adapter into a safetensors checkpoint, shard by shard, atomically.

For every module the adapter targets, ``W' = W + s * (B @ A)`` with ``s = alpha / r``
(``alpha / sqrt(r)`` with rsLoRA, per-module ``rank_pattern`` / ``alpha_pattern`` applied);
``fan_in_fan_out`` layers (weights stored ``(in, out)``) and embedding LoRA get the transposed
delta; ``modules_to_save`` replace the module's parameters with the adapter's copy. Every
other tensor is copied byte for byte.

Memory stays bounded by the adapter plus one block of rows (about 1 M elements, ~20 MiB) of one
tensor: shard headers are read first, each output shard is written while its input is read
tensor by tensor, and a merged tensor is processed in row blocks. Arithmetic is float32 (float64
for float64 weights) with one round-to-nearest-even back to the stored dtype; bfloat16 is
converted by bit manipulation on ``uint16`` (exact, and the same rounding as torch's), so the
only dependency is numpy (the ``nim-async[merge]`` extra).

The output is written into a hidden temporary directory beside ``out_dir`` and renamed into
place when complete; any failure removes it, so there is never a half-written checkpoint.
Everything that makes the merge impossible (DoRA, unknown modules, a base whose shapes do not
match, missing or corrupt files) is found while planning, before anything is written, and
raised as :class:`AdapterMergeError`, a :class:`~nim_async.errors.ModelIncompatibilityError`.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import shutil
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from nim_async.deploy.lora.adapter import (
    ADAPTER_CONFIG,
    AdapterConfig,
    UnsupportedAdapter,
    find_adapter_weights,
    parse_adapter_tensors,
    read_adapter_config,
)
from nim_async.deploy.lora.safetensors_io import (
    DTYPE_SIZES,
    SafetensorsError,
    SafetensorsHeader,
    TensorInfo,
    read_header,
    write_header,
)
from nim_async.errors import InvalidConfigError, ModelIncompatibilityError, WeightsError

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

    FloatArray = npt.NDArray[np.floating[Any]]

__all__ = [
    "INSTALL_HINT",
    "MERGE_MARKER",
    "AdapterMergeError",
    "MergeProgress",
    "ProgressCallback",
    "merge_adapter",
    "merge_support_available",
    "require_merge_support",
]

INSTALL_HINT = "pip install 'nim-async[merge]'"
"""The command that installs what the merge needs (numpy)."""

MERGE_MARKER = ".nim_async_merge.json"
"""Written last into a merged checkpoint: what was merged (base, adapter, modules)."""

INDEX_NAME = "model.safetensors.index.json"
# Rows of a merged tensor are processed ~1 M elements at a time: about 19 bytes per element are
# live in a block (bytes read, float32 weights and delta, the rounding temporaries, the output).
_BLOCK_ELEMENTS = 1 << 20
_COPY_CHUNK = 8 << 20
_FLOAT_DTYPES = ("BF16", "F16", "F32", "F64")
_SKIP_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".safetensors")
# Checkpoint layouts disagree on where Qwen-VL's language model and vision tower live:
# transformers >= 4.52 names modules model.language_model.* / model.visual.*, while Qwen2.5-VL
# checkpoints store model.* / visual.* (Qwen3-VL checkpoints store the new names).
_ALIASES = (
    ("model.language_model.", "model."),
    ("model.visual.", "visual."),
    ("model.", "model.language_model."),
    ("visual.", "model.visual."),
)


class AdapterMergeError(ModelIncompatibilityError):
    """The adapter cannot be merged into the base checkpoint (raised before anything is written).

    Attributes:
        reason: Why, in words (names the module, file or setting at fault).
        base_dir: The base checkpoint directory.
        adapter_dir: The adapter directory.
    """

    def __init__(
        self, reason: str, *, base_dir: Path, adapter_dir: Path, image_name: str | None = None
    ) -> None:
        details = f"cannot merge the LoRA adapter {adapter_dir} into {base_dir}: {reason}"
        super().__init__(image_name or "(any)", details)
        if image_name is None:
            self.args = (details,)
        self.reason = reason
        self.base_dir = base_dir
        self.adapter_dir = adapter_dir


@dataclass(frozen=True)
class MergeProgress:
    """Progress of a merge, reported once before the first shard and after each shard.

    Attributes:
        shard: The shard just written (empty in the first report).
        shards_done: Shards written so far.
        shards_total: Shards in the checkpoint.
        bytes_done: Bytes of tensor data written so far.
        bytes_total: Bytes of tensor data in the checkpoint.
    """

    shard: str
    shards_done: int
    shards_total: int
    bytes_done: int
    bytes_total: int


ProgressCallback = Callable[[MergeProgress], None]
"""Receives :class:`MergeProgress` reports (drawn by the UI layer; the library prints nothing)."""


def merge_support_available() -> bool:
    """Whether the merge's dependency (numpy) is installed."""
    return importlib.util.find_spec("numpy") is not None


def require_merge_support() -> None:
    """Fail early when the merge cannot run in this environment.

    Raises:
        InvalidConfigError: numpy is not installed (names :data:`INSTALL_HINT`); ``field`` is
            ``"merge_adapter"``.
    """
    if not merge_support_available():
        raise InvalidConfigError(
            f"merge_adapter=True needs numpy to merge the LoRA adapter into the weights: "
            f"{INSTALL_HINT}",
            field="merge_adapter",
        )


# =========================================================================== planning


@dataclass
class _Delta:
    module: str
    a: Any  # (r, in) float array
    b: Any  # (out, r) float array
    scaling: float
    transposed: bool  # the stored weight is (B @ A).T-shaped: fan_in_fan_out or an embedding


@dataclass
class _Plan:
    base_dir: Path
    adapter_dir: Path
    shards: list[SafetensorsHeader]
    index: dict[str, Any] | None
    deltas: dict[str, _Delta] = field(default_factory=dict)
    replacements: dict[str, Any] = field(default_factory=dict)
    extra_files: list[Path] = field(default_factory=list)

    @property
    def bytes_total(self) -> int:
        return sum(h.file_size - h.data_start for h in self.shards)


def _load_shards(base_dir: Path) -> tuple[list[SafetensorsHeader], dict[str, Any] | None]:
    if not (base_dir / "config.json").is_file():
        raise UnsupportedAdapter(f"the base {base_dir} has no config.json")
    index_path = base_dir / INDEX_NAME
    if index_path.is_file():
        try:
            index = json.loads(index_path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise UnsupportedAdapter(f"cannot read {INDEX_NAME}: {exc}") from exc
        weight_map = index.get("weight_map") if isinstance(index, dict) else None
        if not isinstance(weight_map, dict) or not weight_map:
            raise UnsupportedAdapter(f"{INDEX_NAME} has no weight_map")
        names = sorted(set(weight_map.values()))
        if not all(
            isinstance(n, str) and "/" not in n and n.endswith(".safetensors") for n in names
        ):
            raise UnsupportedAdapter(f"{INDEX_NAME} names shards that are not local safetensors")
    else:
        index = None
        found = sorted(
            p.name
            for p in base_dir.glob("*.safetensors")
            if not p.name.startswith("adapter_") and p.is_file()
        )
        if len(found) == 1:
            names = found
        elif not found:
            raise UnsupportedAdapter(
                f"the base {base_dir} has no *.safetensors weights (only safetensors can be merged)"
            )
        else:
            raise UnsupportedAdapter(
                f"the base {base_dir} has {len(found)} shards but no {INDEX_NAME}"
            )
    shards: list[SafetensorsHeader] = []
    for name in names:
        path = base_dir / name
        if not path.is_file():
            raise UnsupportedAdapter(f"{INDEX_NAME} lists {name}, which is missing in {base_dir}")
        shards.append(_read_header(path))
    if index is not None:
        weight_map = index["weight_map"]
        for header in shards:
            for t in header.tensors:
                if weight_map.get(t.name) != header.path.name:
                    raise UnsupportedAdapter(
                        f"{INDEX_NAME} does not match {header.path.name}: tensor {t.name} "
                        f"is mapped to {weight_map.get(t.name)!r}"
                    )
        total = sum(len(h.tensors) for h in shards)
        if total != len(weight_map):
            raise UnsupportedAdapter(
                f"{INDEX_NAME} maps {len(weight_map)} tensors, the shards hold {total}"
            )
    return shards, index


def _read_header(path: Path) -> SafetensorsHeader:
    try:
        return read_header(path)
    except SafetensorsError as exc:
        raise UnsupportedAdapter(str(exc)) from exc
    except OSError as exc:
        raise UnsupportedAdapter(f"cannot read {path}: {exc.strerror or exc}") from exc


def _load_adapter(adapter_dir: Path) -> tuple[AdapterConfig, dict[str, Any]]:
    np = _numpy()
    config = read_adapter_config(adapter_dir)
    path = find_adapter_weights(adapter_dir)
    header = _read_header(path)
    tensors: dict[str, Any] = {}
    with path.open("rb") as f:
        for t in header.tensors:
            if t.dtype not in _FLOAT_DTYPES:
                raise UnsupportedAdapter(
                    f"adapter tensor {t.name} has dtype {t.dtype}, not a float"
                )
            f.seek(header.data_start + t.begin)
            raw = f.read(t.nbytes)
            if len(raw) != t.nbytes:
                raise UnsupportedAdapter(f"{path.name} is truncated at tensor {t.name}")
            tensors[t.name] = _decode(np, raw, t.dtype, "F64" if t.dtype == "F64" else "F32")
            tensors[t.name] = tensors[t.name].reshape(t.shape)
    return config, tensors


def _resolve(param: str, names: Mapping[str, Any], what: str) -> str:
    if param in names:
        return param
    candidates = [to + param[len(frm) :] for frm, to in _ALIASES if param.startswith(frm)]
    found = [c for c in dict.fromkeys(candidates) if c in names]
    if len(found) == 1:
        return found[0]
    if found:
        raise UnsupportedAdapter(f"{what} {param} matches several base tensors: {found}")
    tried = ", ".join(dict.fromkeys([param, *candidates]))
    raise UnsupportedAdapter(
        f"{what} {param} has no counterpart in the base checkpoint (looked for {tried}); the "
        "adapter targets a module this base does not have (another model, or tied weights)"
    )


def _plan(base_dir: Path, adapter_dir: Path) -> _Plan:
    shards, index = _load_shards(base_dir)
    infos: dict[str, TensorInfo] = {}
    for header in shards:
        for t in header.tensors:
            if t.name in infos:
                raise UnsupportedAdapter(f"tensor {t.name} appears in two shards")
            infos[t.name] = t
    config, tensors = _load_adapter(adapter_dir)
    modules, saved = parse_adapter_tensors(tensors, config)
    plan = _Plan(base_dir, adapter_dir, shards, index)
    for m in modules:
        a, b = tensors[m.a_key], tensors[m.b_key]
        conv = a.ndim > 2
        if a.ndim < 2 or b.ndim != a.ndim or (conv and any(k != 1 for k in b.shape[2:])):
            raise UnsupportedAdapter(
                f"module {m.module}: lora_A {list(a.shape)} / lora_B {list(b.shape)} is not a "
                "LoRA of a linear, embedding or convolution layer"
            )
        rank = a.shape[0]
        if b.shape[1] != rank:
            raise UnsupportedAdapter(
                f"module {m.module}: lora_A {list(a.shape)} and lora_B {list(b.shape)} "
                "disagree on the rank"
            )
        target = _resolve(m.module + ".weight", infos, "LoRA module")
        info = infos[target]
        transposed = (m.embedding or config.fan_in_fan_out) and not conv
        if conv:
            # PEFT's conv LoRA: A is a conv (r, in, *kernel), B a 1x1 conv (out, r, 1...):
            # delta[o, i, *k] = sum_r B[o, r] * A[r, i, *k], a matmul over the flattened kernel
            want: tuple[int, ...] = (b.shape[0], *a.shape[1:])
            a = a.reshape(rank, -1)
            b = b.reshape(b.shape[0], rank)
        else:
            plain, flipped = (b.shape[0], a.shape[1]), (a.shape[1], b.shape[0])
            if config.fan_in_fan_out and not m.embedding and info.shape == plain != flipped:
                # PEFT switches fan_in_fan_out off for nn.Linear layers (it is meant for GPT-2's
                # Conv1D) and may save the flag as True for a model with both: such a layer is
                # stored (out, in). The reverse is not guessed: with the flag off, an (in, out)
                # weight is a base mismatch.
                transposed = False
            want = flipped if transposed else plain
        if info.shape != want:
            raise UnsupportedAdapter(
                f"base mismatch: {target} has shape {list(info.shape)}, the adapter's LoRA for "
                f"{m.module} needs {list(want)} (the adapter was trained on another base model)"
            )
        if info.dtype not in _FLOAT_DTYPES:
            raise UnsupportedAdapter(
                f"{target} is stored as {info.dtype} (quantized); only BF16/F16/F32/F64 weights "
                "can be merged"
            )
        if target in plan.deltas:
            raise UnsupportedAdapter(f"two LoRA modules resolve to the same base tensor {target}")
        plan.deltas[target] = _Delta(m.module, a, b, config.scaling(m.module, rank), transposed)
    for param, key in saved.items():
        target = _resolve(param, infos, "modules_to_save parameter")
        info = infos[target]
        value = tensors[key]
        if tuple(value.shape) != info.shape:
            raise UnsupportedAdapter(
                f"base mismatch: {target} has shape {list(info.shape)}, the adapter's "
                f"modules_to_save copy has {list(value.shape)}"
            )
        if info.dtype not in _FLOAT_DTYPES:
            raise UnsupportedAdapter(f"{target} is stored as {info.dtype}; it cannot be replaced")
        # in the stored dtype already: a LoRA delta on top then starts from what PEFT loads
        np = _numpy()
        compute = "F64" if info.dtype == "F64" else "F32"
        plan.replacements[target] = _decode(
            np, _encode(np, value, info.dtype), info.dtype, compute
        ).reshape(info.shape)
    plan.extra_files = _extra_files(base_dir, adapter_dir, {h.path.name for h in shards})
    return plan


def _extra_files(base_dir: Path, adapter_dir: Path, shard_names: set[str]) -> list[Path]:
    """The non-weight files and folders of the base to copy (config, tokenizer, processor...)."""
    extra: list[Path] = []
    adapter = adapter_dir.resolve()
    for path in sorted(base_dir.iterdir()):
        name = path.name
        if name.startswith(".") or name.startswith("adapter_") or name == INDEX_NAME:
            continue
        if name in shard_names or name.endswith(_SKIP_SUFFIXES):
            continue  # rewritten, or unmerged weights in another format that loaders might pick
        if path.is_dir() and (path.resolve() == adapter or (path / ADAPTER_CONFIG).exists()):
            continue
        extra.append(path)
    return extra


# =========================================================================== numerics


def _numpy() -> Any:
    require_merge_support()
    import numpy

    return numpy


def bf16_bits_to_f32(np: Any, bits: Any) -> Any:
    """bfloat16 bit patterns (``uint16``) to float32: exact (the upper half of a float32)."""
    return (bits.astype(np.uint32) << np.uint32(16)).view(np.float32)


def f32_to_bf16_bits(np: Any, values: Any) -> Any:
    """float32 to bfloat16 bit patterns, round to nearest even; NaN becomes ``0x7FC0`` (torch's)."""
    bits = np.ascontiguousarray(values, dtype=np.float32).view(np.uint32)
    # rounded = (bits + 0x7FFF + lsb) >> 16 with lsb the lowest kept bit; uint32 wraps only for
    # NaN payloads, which are replaced below. In place on one temporary: this is the hot loop.
    rounded = bits >> np.uint32(16)
    rounded &= np.uint32(1)
    rounded += np.uint32(0x7FFF)
    rounded += bits
    rounded >>= np.uint32(16)
    out = rounded.astype(np.uint16)
    nan = np.isnan(values)
    if nan.any():
        out[nan] = np.uint16(0x7FC0)
    return out


def _decode(np: Any, raw: bytes, dtype: str, compute: str) -> Any:
    if dtype == "BF16":
        values = bf16_bits_to_f32(np, np.frombuffer(raw, dtype="<u2"))  # a fresh array already
        return values if compute == "F32" else values.astype(np.float64)
    values = np.frombuffer(raw, dtype={"F16": "<f2", "F32": "<f4", "F64": "<f8"}[dtype])
    return values.astype(np.float64 if compute == "F64" else np.float32, copy=True)


def _encode(np: Any, values: Any, dtype: str) -> bytes:
    if dtype == "BF16":
        data: bytes = f32_to_bf16_bits(np, values.astype(np.float32, copy=False)).tobytes()
        return data
    target = {"F16": "<f2", "F32": "<f4", "F64": "<f8"}[dtype]
    data = np.ascontiguousarray(values, dtype=target).tobytes()
    return data


# =========================================================================== writing


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
    delta: _Delta,
    dst: BinaryIO,
    replacement: Any | None,
) -> None:
    rows = info.shape[0]
    cols = info.numel // rows if rows else 0
    item = DTYPE_SIZES[info.dtype]
    compute = "F64" if info.dtype == "F64" else "F32"
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
            w = _decode(np, raw, info.dtype, compute).reshape(stop - start, cols)
        # PEFT: delta = transpose(B @ A, fan_in_fan_out) * scaling; these are its rows start:stop
        d = (b @ a[:, start:stop]).T if delta.transposed else b[start:stop] @ a
        d *= delta.scaling  # PEFT's order: (B @ A) * scaling, then W + delta
        w += d
        del d
        dst.write(_encode(np, w, info.dtype))


def _write_shard(np: Any, plan: _Plan, header: SafetensorsHeader, out_path: Path) -> None:
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
                dst.write(_encode(np, value, t.dtype))
            else:
                _copy_range(src, offset, t.nbytes, dst, header)
        dst.flush()
        os.fsync(dst.fileno())


def _write_index(plan: _Plan, out_dir: Path) -> None:
    if plan.index is None:
        return
    index = dict(plan.index)
    metadata = dict(index.get("metadata") or {})
    metadata["total_size"] = plan.bytes_total
    index["metadata"] = metadata
    (out_dir / INDEX_NAME).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")


def _write_marker(plan: _Plan, out_dir: Path, provenance: Mapping[str, Any] | None) -> None:
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
def _staging(out_dir: Path) -> Iterator[Path]:
    tmp = out_dir.parent / f".{out_dir.name}.partial-{uuid.uuid4().hex[:12]}"
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _publish(tmp: Path, out_dir: Path, overwrite: bool) -> None:
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


def merge_adapter(
    base_dir: str | Path,
    adapter_dir: str | Path,
    out_dir: str | Path,
    *,
    on_progress: ProgressCallback | None = None,
    overwrite: bool = False,
    image_name: str | None = None,
    provenance: Mapping[str, Any] | None = None,
) -> Path:
    """Merge a PEFT LoRA adapter into a safetensors checkpoint and write the result atomically.

    Args:
        base_dir: The base Hugging Face checkpoint (``config.json`` + ``*.safetensors``,
            one file or shards with ``model.safetensors.index.json``).
        adapter_dir: The PEFT adapter (``adapter_config.json`` + ``adapter_model.safetensors``).
        out_dir: Where the merged checkpoint goes; it appears only when complete.
        on_progress: Called with a :class:`MergeProgress` before the first shard and after
            each one (an exception it raises aborts the merge, leaving no output).
        overwrite: Replace an existing ``out_dir`` (swapped in only once the new one is done).
        image_name: The NIM image, for the error message of :class:`AdapterMergeError`.
        provenance: Extra entries for the :data:`MERGE_MARKER` file (e.g. input hashes).

    Returns:
        ``out_dir`` as an absolute path.

    Raises:
        InvalidConfigError: numpy is not installed (see :data:`INSTALL_HINT`).
        AdapterMergeError: The adapter cannot be merged into this base (DoRA or other
            unsupported settings, a module the base lacks, a shape mismatch, missing or
            corrupt files); raised before anything is written.
        WeightsError: ``out_dir`` exists and ``overwrite`` is false, or writing failed (for
            example a full disk); no partial output is left behind.
    """
    np = _numpy()
    base = Path(base_dir).expanduser().resolve()
    adapter = Path(adapter_dir).expanduser().resolve()
    out = Path(out_dir).expanduser().absolute()
    if out.exists() and not overwrite:
        raise WeightsError(f"{out} already exists (pass overwrite=True to rebuild it)")
    try:
        if not base.is_dir():
            raise UnsupportedAdapter(f"the base {base} is not a directory")
        if not adapter.is_dir():
            raise UnsupportedAdapter(f"the adapter {adapter} is not a directory")
        plan = _plan(base, adapter)
    except UnsupportedAdapter as exc:
        raise AdapterMergeError(
            str(exc), base_dir=base, adapter_dir=adapter, image_name=image_name
        ) from exc
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        with _staging(out) as tmp:
            total = len(plan.shards)
            done_bytes = 0
            if on_progress is not None:
                on_progress(MergeProgress("", 0, total, 0, plan.bytes_total))
            for i, header in enumerate(plan.shards, 1):
                _write_shard(np, plan, header, tmp / header.path.name)
                done_bytes += header.file_size - header.data_start
                if on_progress is not None:
                    on_progress(
                        MergeProgress(header.path.name, i, total, done_bytes, plan.bytes_total)
                    )
            for path in plan.extra_files:
                if path.is_dir():
                    shutil.copytree(path, tmp / path.name, symlinks=False)
                else:
                    shutil.copy2(path, tmp / path.name)
            _write_index(plan, tmp)
            _write_marker(plan, tmp, provenance)
            _publish(tmp, out, overwrite)
    except OSError as exc:
        raise WeightsError(f"cannot write the merged checkpoint {out}: {exc}") from exc
    return out
