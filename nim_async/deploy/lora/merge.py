"""Merge a PEFT LoRA adapter into a safetensors checkpoint, shard by shard, atomically.

For every module the adapter targets, ``W' = W + s * (B @ A)`` with ``s = alpha / r``
(``alpha / sqrt(r)`` with rsLoRA, per-module ``rank_pattern`` / ``alpha_pattern`` applied);
``fan_in_fan_out`` layers (weights stored ``(in, out)``) and embedding LoRA get the transposed
delta; ``modules_to_save`` replace the module's parameters with the adapter's copy. Every
other tensor is copied byte for byte.

:func:`merge_adapter` runs the three steps, each in its own module:
:mod:`~nim_async.deploy.lora.plan` reads every shard header and the adapter and finds
everything that makes the merge impossible (DoRA, unknown modules, a base whose shapes do not
match, missing or corrupt files) before anything is written, raised here as
:class:`AdapterMergeError`, a :class:`~nim_async.errors.ModelIncompatibilityError`;
:mod:`~nim_async.deploy.lora.writer` writes each output shard while its input is read tensor by
tensor, a merged tensor in row blocks (memory: the adapter plus ~20 MiB, not a shard), into a
hidden staging directory beside ``out_dir`` that is renamed into place when complete (any
failure removes it, so there is never a half-written checkpoint);
:mod:`~nim_async.deploy.lora.numerics` holds the dtype conversions (float32 arithmetic, one
round-to-nearest-even back to the stored dtype, bfloat16 by bit manipulation with torch's
rounding) and the one dependency, numpy (the ``nim-async[merge]`` extra).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nim_async.deploy.lora.adapter import UnsupportedAdapter
from nim_async.deploy.lora.numerics import (
    INSTALL_HINT,
    bf16_bits_to_f32,
    f32_to_bf16_bits,
    merge_support_available,
    numpy_module,
    require_merge_support,
)
from nim_async.deploy.lora.plan import MergePlan, plan_merge
from nim_async.deploy.lora.writer import (
    MERGE_MARKER,
    copy_extra_files,
    publish,
    staging,
    write_index,
    write_marker,
    write_shard,
)
from nim_async.errors import ModelIncompatibilityError, WeightsError

__all__ = [
    "INSTALL_HINT",
    "MERGE_MARKER",
    "AdapterMergeError",
    "MergeProgress",
    "ProgressCallback",
    "bf16_bits_to_f32",
    "f32_to_bf16_bits",
    "merge_adapter",
    "merge_support_available",
    "require_merge_support",
]


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


def _write_all(
    np: Any,
    plan: MergePlan,
    tmp: Path,
    on_progress: ProgressCallback | None,
    provenance: Mapping[str, Any] | None,
) -> None:
    """Write every shard (reporting progress), the copied files, the index and the marker."""
    total = len(plan.shards)
    done_bytes = 0
    if on_progress is not None:
        on_progress(MergeProgress("", 0, total, 0, plan.bytes_total))
    for i, header in enumerate(plan.shards, 1):
        write_shard(np, plan, header, tmp / header.path.name)
        done_bytes += header.file_size - header.data_start
        if on_progress is not None:
            on_progress(MergeProgress(header.path.name, i, total, done_bytes, plan.bytes_total))
    copy_extra_files(plan, tmp)
    write_index(plan, tmp)
    write_marker(plan, tmp, provenance)


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
    np = numpy_module()
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
        plan = plan_merge(base, adapter)
    except UnsupportedAdapter as exc:
        raise AdapterMergeError(
            str(exc), base_dir=base, adapter_dir=adapter, image_name=image_name
        ) from exc
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        with staging(out) as tmp:
            _write_all(np, plan, tmp, on_progress, provenance)
            publish(tmp, out, overwrite)
    except OSError as exc:
        raise WeightsError(f"cannot write the merged checkpoint {out}: {exc}") from exc
    return out
