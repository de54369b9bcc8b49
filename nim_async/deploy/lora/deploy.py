"""The merge as a deploy step: cached beside the weights, progress as deploy events.

:func:`merge_for_deploy` is what the weights preparation calls when ``NIMConfig.merge_adapter``
is set and the checkpoint holds an adapter: it returns the merged directory to mount instead of
``model_full/``, reporting per-shard progress as :mod:`nim_async.deploy.events` transfer events
(the UI layer draws them; ``quiet`` means no sink, so nothing is shown).
"""

from __future__ import annotations

import logging
from pathlib import Path

from nim_async.deploy.events import (
    EventSink,
    Level,
    Notice,
    TransferFinished,
    TransferProgress,
    TransferStarted,
)
from nim_async.deploy.lora.cache import merged_checkpoint
from nim_async.deploy.lora.merge import MergeProgress

__all__ = ["MERGED_DIR", "merge_for_deploy"]

logger = logging.getLogger("nim_async.deploy.lora")

MERGED_DIR = ".nim_async_merged"
"""The cache folder inside a run folder (or ``model_path``) holding its merged checkpoint."""


def merge_for_deploy(
    root: Path,
    full: Path,
    adapter: Path,
    *,
    image_name: str,
    overwrite: bool = False,
    on_event: EventSink | None = None,
) -> Path:
    """Merge ``adapter`` into ``full`` (cached under ``{root}/.nim_async_merged``) for a deploy.

    Args:
        root: The run folder or ``model_path`` (the cache goes inside it, hidden from the
            weights pre-flight, which ignores dot folders).
        full: The base Hugging Face directory (``model_full/``).
        adapter: The PEFT adapter directory (``model_adapter/``).
        image_name: The NIM image, for error messages.
        overwrite: Rebuild the merged checkpoint even when it is cached.
        on_event: Receives the progress (a transfer group, one update per shard) and a notice.

    Returns:
        The merged checkpoint directory, to be mounted instead of ``full``.

    Raises:
        InvalidConfigError: numpy is not installed (names ``pip install 'nim-async[merge]'``).
        AdapterMergeError: The adapter cannot be merged (DoRA, unknown modules, a base
            mismatch, missing or corrupt files); a ``ModelIncompatibilityError``.
        WeightsError: The merged checkpoint cannot be written.
    """
    progress = None
    if on_event is not None:
        sink = on_event

        def progress(event: MergeProgress) -> None:
            sink(
                TransferProgress(
                    "lora-merge",
                    "Merging the LoRA adapter",
                    event.bytes_done,
                    event.bytes_total,
                    phase=f"shard {event.shards_done}/{event.shards_total}",
                )
            )

        sink(TransferStarted("Merging the LoRA adapter into the model weights"))
    try:
        merged = merged_checkpoint(
            full, adapter, root / MERGED_DIR, overwrite, on_progress=progress, image_name=image_name
        )
    except BaseException:
        if on_event is not None:
            on_event(TransferFinished(None))
        raise
    text = f"Serving the LoRA fine-tune: adapter {adapter} merged into {merged}"
    logger.info("%s", text)
    if on_event is not None:
        on_event(TransferFinished(f"merged checkpoint {merged.name}"))
        on_event(Notice(text, Level.INFO))
    return merged
