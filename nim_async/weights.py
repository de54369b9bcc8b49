"""Custom weights: Datature Vi run downloads and local checkpoints (work in progress).

The public names here are the contract the deployer and predictor rely on.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from nim_async.config import NIMConfig

__all__ = [
    "CONTAINER_MODEL_DIR",
    "PreparedModel",
    "RunMetadata",
    "load_run_metadata",
    "prepare_weights",
]

CONTAINER_MODEL_DIR = "/opt/nim/custom-model"
"""Where the custom model directory is bind-mounted (read-only) inside the container."""


@dataclass(frozen=True)
class RunMetadata:
    """What a Vi run's ``run.json`` says about how to prompt the model.

    Attributes:
        task_type: ``"phrase-grounding"`` or ``"vqa"``, when the run says.
        system_prompt: The run's system prompt, when it has one.
    """

    task_type: str | None
    system_prompt: str | None


@dataclass(frozen=True)
class PreparedModel:
    """A custom model ready to be mounted into a NIM container.

    Attributes:
        host_dir: Hugging Face-format directory holding ``config.json`` (mounted read-only).
        container_dir: The ``NIM_MODEL_NAME`` value: the directory's path inside the container.
        run_metadata: Task type and system prompt from ``run.json``, when present.
        has_adapter: Whether the checkpoint also holds a LoRA/PEFT adapter (not served by NIM).
    """

    host_dir: Path
    container_dir: str
    run_metadata: RunMetadata | None
    has_adapter: bool


async def prepare_weights(config: NIMConfig, *, quiet: bool = False) -> PreparedModel | None:
    """Make the configured custom weights available locally and check them against the image.

    Args:
        config: The deployment configuration (``run_id`` or ``model_path``).
        quiet: Suppress console output.

    Returns:
        The prepared model, or ``None`` when neither ``run_id`` nor ``model_path`` is set.
    """
    if config.run_id is None and config.model_path is None:
        return None
    raise NotImplementedError("custom weights are being implemented (issue 5)")


def load_run_metadata(config: NIMConfig) -> RunMetadata | None:
    """Read the task type and system prompt from a downloaded Vi run's ``run.json``.

    Args:
        config: The configuration naming the run (``run_id``) or a local ``model_path``.

    Returns:
        The metadata, or ``None`` when there is no ``run.json``.
    """
    return None
