"""Serve a LoRA fine-tune on NIM: merge the PEFT adapter into the base weights first.

NIM serves full weights only; a Vi run trained with LoRA ships ``model_full/`` (the base) and
``model_adapter/`` (the PEFT adapter). :func:`merged_checkpoint` turns the pair into one
Hugging Face checkpoint whose weights are ``W + s * (B @ A)`` for every targeted module, cached
by the inputs' hashes, so the served model really is the fine-tune::

    from nim_async.deploy.lora import merged_checkpoint

    merged = merged_checkpoint(run / "model_full", run / "model_adapter", run / ".nim_async_merged")

:func:`merge_adapter` is the uncached merge into a given directory; :func:`merge_for_deploy`
is the deploy step (cache in ``{run}/.nim_async_merged``, progress as deploy events). The merge
works shard by shard (peak memory: the adapter plus a block of one tensor, not a shard), keeps
every tensor's dtype, copies the non-weight files, rewrites ``model.safetensors.index.json``
and publishes the result with one rename. Adapters it cannot merge exactly fail with
:class:`AdapterMergeError` (a :class:`~nim_async.errors.ModelIncompatibilityError`) before
anything is written.

Dependency: numpy only (``pip install 'nim-async[merge]'``). The safetensors files are read and
written by :mod:`nim_async.deploy.lora.safetensors_io` (the format is a JSON header and raw
bytes), and bfloat16 is converted by bit manipulation over ``uint16`` with torch's rounding, so
neither torch (716 MiB installed, 3-4 s to import, measured by benchmarks/lora_merge.py; numpy:
41 MiB, 0.2-0.3 s) nor the ``safetensors`` and ``ml_dtypes`` wheels are needed.
Without numpy, :func:`require_merge_support` raises :class:`~nim_async.errors.InvalidConfigError`
naming the install command. This package imports numpy only when a merge runs.
"""

from __future__ import annotations

from nim_async.deploy.lora.adapter import AdapterConfig, read_adapter_config
from nim_async.deploy.lora.cache import cache_key, merged_checkpoint
from nim_async.deploy.lora.deploy import MERGED_DIR, merge_for_deploy
from nim_async.deploy.lora.merge import (
    INSTALL_HINT,
    MERGE_MARKER,
    AdapterMergeError,
    MergeProgress,
    ProgressCallback,
    merge_adapter,
    merge_support_available,
    require_merge_support,
)

__all__ = [
    "INSTALL_HINT",
    "MERGED_DIR",
    "MERGE_MARKER",
    "AdapterConfig",
    "AdapterMergeError",
    "MergeProgress",
    "ProgressCallback",
    "cache_key",
    "merge_adapter",
    "merge_for_deploy",
    "merge_support_available",
    "merged_checkpoint",
    "read_adapter_config",
    "require_merge_support",
]
