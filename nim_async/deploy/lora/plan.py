"""Plan a merge: read every header and the adapter, and find everything that makes it impossible.

:func:`plan_merge` reads the base's shard headers (checked against
``model.safetensors.index.json``), decodes the adapter, resolves each LoRA module and
``modules_to_save`` parameter to one base tensor (Qwen-VL's two naming layouts included) and
checks shapes and dtypes. Nothing is written; every problem is an
:class:`~nim_async.deploy.lora.adapter.UnsupportedAdapter` whose message is the reason.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nim_async.deploy.lora.adapter import (
    ADAPTER_CONFIG,
    AdapterConfig,
    LoraModule,
    UnsupportedAdapter,
    find_adapter_weights,
    parse_adapter_tensors,
    read_adapter_config,
)
from nim_async.deploy.lora.numerics import (
    FLOAT_DTYPES,
    compute_dtype,
    decode,
    encode,
    numpy_module,
)
from nim_async.deploy.lora.safetensors_io import (
    SafetensorsError,
    SafetensorsHeader,
    TensorInfo,
    read_header,
)

__all__ = ["INDEX_NAME", "LoraDelta", "MergePlan", "plan_merge"]

INDEX_NAME = "model.safetensors.index.json"
"""The shard index of a multi-file safetensors checkpoint."""

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


@dataclass
class LoraDelta:
    """One module's LoRA, ready to merge into its base tensor.

    Attributes:
        module: The module name as the adapter writes it.
        a: ``lora_A`` as a ``(r, in)`` float array (a conv kernel flattened into ``in``).
        b: ``lora_B`` as an ``(out, r)`` float array.
        scaling: What ``B @ A`` is multiplied by.
        transposed: The stored weight is ``(B @ A).T``-shaped (fan_in_fan_out, an embedding).
    """

    module: str
    a: Any
    b: Any
    scaling: float
    transposed: bool


@dataclass
class MergePlan:
    """Everything a merge writes, decided before anything is written.

    Attributes:
        base_dir: The base checkpoint.
        adapter_dir: The adapter.
        shards: The base's shard headers, in file-name order.
        index: The parsed ``model.safetensors.index.json``, or ``None`` for one file.
        deltas: Base tensor name -> its LoRA.
        replacements: Base tensor name -> the ``modules_to_save`` value, rounded to the
            stored dtype and decoded back to the compute dtype.
        extra_files: The base's non-weight files and folders to copy.
    """

    base_dir: Path
    adapter_dir: Path
    shards: list[SafetensorsHeader]
    index: dict[str, Any] | None
    deltas: dict[str, LoraDelta] = field(default_factory=dict)
    replacements: dict[str, Any] = field(default_factory=dict)
    extra_files: list[Path] = field(default_factory=list)

    @property
    def bytes_total(self) -> int:
        """Bytes of tensor data in the checkpoint (the data sections of every shard)."""
        return sum(h.file_size - h.data_start for h in self.shards)


def _read_index(index_path: Path) -> tuple[dict[str, Any], list[str]]:
    try:
        index = json.loads(index_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UnsupportedAdapter(f"cannot read {INDEX_NAME}: {exc}") from exc
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise UnsupportedAdapter(f"{INDEX_NAME} has no weight_map")
    names = sorted(set(weight_map.values()))
    if not all(isinstance(n, str) and "/" not in n and n.endswith(".safetensors") for n in names):
        raise UnsupportedAdapter(f"{INDEX_NAME} names shards that are not local safetensors")
    return index, names


def _single_file(base_dir: Path) -> list[str]:
    found = sorted(
        p.name
        for p in base_dir.glob("*.safetensors")
        if not p.name.startswith("adapter_") and p.is_file()
    )
    if len(found) == 1:
        return found
    if not found:
        raise UnsupportedAdapter(
            f"the base {base_dir} has no *.safetensors weights (only safetensors can be merged)"
        )
    raise UnsupportedAdapter(f"the base {base_dir} has {len(found)} shards but no {INDEX_NAME}")


def _check_index(index: dict[str, Any], shards: list[SafetensorsHeader]) -> None:
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


def _load_shards(base_dir: Path) -> tuple[list[SafetensorsHeader], dict[str, Any] | None]:
    if not (base_dir / "config.json").is_file():
        raise UnsupportedAdapter(f"the base {base_dir} has no config.json")
    index_path = base_dir / INDEX_NAME
    index: dict[str, Any] | None = None
    if index_path.is_file():
        index, names = _read_index(index_path)
    else:
        names = _single_file(base_dir)
    shards: list[SafetensorsHeader] = []
    for name in names:
        path = base_dir / name
        if not path.is_file():
            raise UnsupportedAdapter(f"{INDEX_NAME} lists {name}, which is missing in {base_dir}")
        shards.append(_read_header(path))
    if index is not None:
        _check_index(index, shards)
    return shards, index


def _read_header(path: Path) -> SafetensorsHeader:
    try:
        return read_header(path)
    except SafetensorsError as exc:
        raise UnsupportedAdapter(str(exc)) from exc
    except OSError as exc:
        raise UnsupportedAdapter(f"cannot read {path}: {exc.strerror or exc}") from exc


def _load_adapter(adapter_dir: Path) -> tuple[AdapterConfig, dict[str, Any]]:
    np = numpy_module()
    config = read_adapter_config(adapter_dir)
    path = find_adapter_weights(adapter_dir)
    header = _read_header(path)
    tensors: dict[str, Any] = {}
    with path.open("rb") as f:
        for t in header.tensors:
            if t.dtype not in FLOAT_DTYPES:
                raise UnsupportedAdapter(
                    f"adapter tensor {t.name} has dtype {t.dtype}, not a float"
                )
            f.seek(header.data_start + t.begin)
            raw = f.read(t.nbytes)
            if len(raw) != t.nbytes:
                raise UnsupportedAdapter(f"{path.name} is truncated at tensor {t.name}")
            tensors[t.name] = decode(np, raw, t.dtype, compute_dtype(t.dtype)).reshape(t.shape)
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


def _plan_lora(
    m: LoraModule,
    tensors: Mapping[str, Any],
    infos: Mapping[str, TensorInfo],
    config: AdapterConfig,
) -> tuple[str, LoraDelta]:
    """The base tensor one LoRA module merges into, and its delta (shapes checked)."""
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
    if info.dtype not in FLOAT_DTYPES:
        raise UnsupportedAdapter(
            f"{target} is stored as {info.dtype} (quantized); only BF16/F16/F32/F64 weights "
            "can be merged"
        )
    return target, LoraDelta(m.module, a, b, config.scaling(m.module, rank), transposed)


def _plan_saved(param: str, value: Any, infos: Mapping[str, TensorInfo]) -> tuple[str, Any]:
    """The base tensor a ``modules_to_save`` parameter replaces, and its value to write."""
    target = _resolve(param, infos, "modules_to_save parameter")
    info = infos[target]
    if tuple(value.shape) != info.shape:
        raise UnsupportedAdapter(
            f"base mismatch: {target} has shape {list(info.shape)}, the adapter's "
            f"modules_to_save copy has {list(value.shape)}"
        )
    if info.dtype not in FLOAT_DTYPES:
        raise UnsupportedAdapter(f"{target} is stored as {info.dtype}; it cannot be replaced")
    # in the stored dtype already: a LoRA delta on top then starts from what PEFT loads
    np = numpy_module()
    stored = encode(np, value, info.dtype)
    return target, decode(np, stored, info.dtype, compute_dtype(info.dtype)).reshape(info.shape)


def plan_merge(base_dir: Path, adapter_dir: Path) -> MergePlan:
    """Read and check both inputs and decide what the merge writes (nothing is written).

    Args:
        base_dir: The base checkpoint directory (resolved).
        adapter_dir: The PEFT adapter directory (resolved).

    Returns:
        The plan.

    Raises:
        UnsupportedAdapter: The merge is impossible; the message says why.
        InvalidConfigError: numpy is not installed.
    """
    shards, index = _load_shards(base_dir)
    infos: dict[str, TensorInfo] = {}
    for header in shards:
        for t in header.tensors:
            if t.name in infos:
                raise UnsupportedAdapter(f"tensor {t.name} appears in two shards")
            infos[t.name] = t
    config, tensors = _load_adapter(adapter_dir)
    modules, saved = parse_adapter_tensors(tensors, config)
    plan = MergePlan(base_dir, adapter_dir, shards, index)
    for m in modules:
        target, delta = _plan_lora(m, tensors, infos, config)
        if target in plan.deltas:
            raise UnsupportedAdapter(f"two LoRA modules resolve to the same base tensor {target}")
        plan.deltas[target] = delta
    for param, key in saved.items():
        target, value = _plan_saved(param, tensors[key], infos)
        plan.replacements[target] = value
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
