"""The compatibility pre-flight: is this directory a model the NIM image can serve?

A custom model is a Hugging Face-format directory (``config.json`` and ``*.safetensors`` /
``*.bin``), possibly as ``model_full/`` inside a Vi run folder, possibly beside a LoRA/PEFT
adapter (``model_adapter/``) that NIM does not serve. :func:`inspect_model` checks the
architecture in ``config.json`` against :data:`nim_async.catalog.KNOWN_IMAGES` before anything is
handed to Docker. The run's ``run.json`` (task type and system prompt) is read here too. No
network.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from nim_async.catalog import KNOWN_IMAGES
from nim_async.deploy.events import EventSink, Level, Notice
from nim_async.deploy.lora import merge_for_deploy
from nim_async.errors import InvalidConfigError, ModelIncompatibilityError

__all__ = [
    "CONTAINER_MODEL_DIR",
    "LORA_WARNING",
    "PreparedModel",
    "RunMetadata",
    "find_full_dir",
    "inspect_model",
    "is_complete",
    "local_model_dir",
    "parse_run_json",
    "read_run_metadata",
]

logger = logging.getLogger("nim_async.deploy.weights")

CONTAINER_MODEL_DIR = "/opt/nim/custom-model"
"""Where the custom model directory is bind-mounted (read-only) inside the container."""

FULL_DIR = "model_full"
"""The folder of a Vi run holding the full (merged) Hugging Face model."""
_ADAPTER_DIR = "model_adapter"
_NOT_WEIGHTS = ("training_args", "optimizer", "scheduler", "rng_state", "adapter_")

LORA_WARNING = (
    "This checkpoint holds a LoRA/PEFT adapter as well as full weights. NVIDIA NIM does not "
    "support PEFT adapters: it serves the full base model weights only, and the adapter "
    "weights are not used. Set NIMConfig(merge_adapter=True) (nim-async deploy "
    "--merge-adapter) to merge the adapter into the weights and serve the fine-tune."
)


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


def local_model_dir(model_path: str | Path) -> Path:
    """The absolute path of a local checkpoint directory.

    Args:
        model_path: ``NIMConfig.model_path``.

    Raises:
        InvalidConfigError: if it is not a directory.
    """
    root = Path(model_path).expanduser()
    if not root.is_dir():
        raise InvalidConfigError(
            f"model_path: {root} is not a directory holding a Hugging Face checkpoint",
            field="model_path",
        )
    return root.resolve()


# =========================================================================== run.json


def _run_json_candidates(root: Path) -> Iterator[Path]:
    yield root / "run.json"
    yield root / FULL_DIR / "run.json"
    full = find_full_dir(root)
    if full is not None:
        yield full / "run.json"


def read_run_metadata(root: Path) -> RunMetadata | None:
    """The metadata of the first readable ``run.json`` in or under ``root``, if any.

    Args:
        root: A run folder or a model directory.
    """
    for candidate in _run_json_candidates(root):
        try:
            data = orjson.loads(candidate.read_bytes())
        except (OSError, orjson.JSONDecodeError):
            continue
        meta = parse_run_json(data)
        if meta is not None:
            return meta
    return None


def _task_from_project_kind(kind: object) -> str | None:
    if not isinstance(kind, str):
        return None
    norm = "".join(ch for ch in kind.lower() if ch.isalnum())
    if "grounding" in norm:
        return "phrase-grounding"
    if "vqa" in norm or "questionanswer" in norm:
        return "vqa"
    return None


def _walk_settings(node: object, depth: int = 0) -> Iterator[dict[str, Any]]:
    """Yield every ``settings`` mapping in a JSON tree, shallowest first per branch."""
    if depth > 12:
        return
    if isinstance(node, dict):
        settings = node.get("settings")
        if isinstance(settings, dict):
            yield settings
        for value in node.values():
            yield from _walk_settings(value, depth + 1)
    elif isinstance(node, list):
        for value in node:
            yield from _walk_settings(value, depth + 1)


def parse_run_json(data: object) -> RunMetadata | None:
    """Extract :class:`RunMetadata` from a parsed ``run.json``.

    Args:
        data: The parsed JSON document, in any shape.

    Returns:
        The metadata, or ``None`` when neither the task type nor a system prompt is found.
    """
    task_type: str | None = None
    system_prompt: str | None = None
    for settings in _walk_settings(data):
        if task_type is None:
            task_type = _task_from_project_kind(settings.get("projectKind"))
        if system_prompt is None:
            prompt = settings.get("systemPrompt")
            if isinstance(prompt, str) and prompt.strip():
                system_prompt = prompt
    if task_type is None and system_prompt is None:
        return None
    return RunMetadata(task_type=task_type, system_prompt=system_prompt)


# =========================================================================== model directory


def _is_full_weight(path: Path) -> bool:
    name = path.name
    if not path.is_file() or name.startswith(_NOT_WEIGHTS):
        return False
    return name.endswith(".safetensors") or name.endswith(".bin")


def _has_full_weights(directory: Path) -> bool:
    try:
        return any(_is_full_weight(p) for p in directory.iterdir())
    except OSError:
        return False


def find_full_dir(root: Path) -> Path | None:
    """Locate the Hugging Face model directory (the one holding ``config.json``).

    Args:
        root: A run folder or a model directory.
    """
    for candidate in (root, root / FULL_DIR):
        if (candidate / "config.json").is_file():
            return candidate
    # An archive wrapped in one top-level folder: <root>/<something>/model_full/config.json.
    try:
        subdirs = [p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")]
    except OSError:
        return None
    if len(subdirs) == 1:
        for candidate in (subdirs[0], subdirs[0] / FULL_DIR):
            if (candidate / "config.json").is_file():
                return candidate
    return None


def _find_adapter(root: Path, full: Path | None) -> Path | None:
    for candidate in (root / _ADAPTER_DIR, *(p / _ADAPTER_DIR for p in _subdirs(root))):
        if candidate.is_dir() and any(candidate.iterdir()):
            return candidate
    for hf_dir in (root, full):
        if hf_dir is not None and (hf_dir / "adapter_config.json").is_file():
            return hf_dir
    return None


def _subdirs(root: Path) -> list[Path]:
    try:
        return [p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")]
    except OSError:
        return []


def is_complete(root: Path) -> bool:
    """Whether ``root`` holds a model directory with full weights.

    Args:
        root: A run folder or a model directory.
    """
    full = find_full_dir(root)
    return full is not None and _has_full_weights(full)


def _require_full_weights(
    root: Path, full: Path | None, adapter: Path | None, image_name: str
) -> Path:
    """``full`` when it holds model weights; else the error saying what is missing."""
    if full is not None and _has_full_weights(full):
        return full
    if adapter is not None:
        raise ModelIncompatibilityError(
            image_name,
            f"{root} holds only a LoRA/PEFT adapter ({adapter.name}) and no full model "
            "weights. NVIDIA NIM cannot serve adapters; export the run with merged/full "
            "weights (model_full/ with config.json and *.safetensors).",
        )
    if full is None:
        raise ModelIncompatibilityError(
            image_name,
            f"no config.json found in {root} (expected a Hugging Face model directory, "
            f"or {FULL_DIR}/ inside it)",
        )
    raise ModelIncompatibilityError(
        image_name,
        f"{full} has config.json but no model weights (*.safetensors or *.bin)",
    )


def inspect_model(
    root: Path,
    image_name: str,
    on_event: EventSink | None = None,
    *,
    merge_adapter: bool = False,
    overwrite: bool = False,
) -> PreparedModel:
    """Run the compatibility pre-flight on a model directory and describe it for mounting.

    Args:
        root: A run folder or a model directory.
        image_name: The NIM image that is to serve it (a key of ``KNOWN_IMAGES``).
        on_event: Receives the warning about an adapter NIM will not use (or the merge's
            progress).
        merge_adapter: Merge an adapter into the weights and mount the merged checkpoint
            (:func:`nim_async.deploy.lora.merge_for_deploy`, cached in the run folder).
        overwrite: Rebuild a cached merged checkpoint.

    Raises:
        ModelIncompatibilityError: if the image cannot serve the model.
    """
    full = find_full_dir(root)
    adapter = _find_adapter(root, full)
    full = _require_full_weights(root, full, adapter, image_name)
    try:
        model_config = orjson.loads((full / "config.json").read_bytes())
    except (OSError, orjson.JSONDecodeError) as exc:
        raise ModelIncompatibilityError(
            image_name, f"cannot read {full / 'config.json'}: {exc}"
        ) from exc
    if not isinstance(model_config, dict):
        raise ModelIncompatibilityError(image_name, f"{full / 'config.json'} is not an object")
    _check_architecture(model_config, image_name)

    has_adapter = adapter is not None
    host_dir = full
    if adapter is not None and merge_adapter:
        host_dir = merge_for_deploy(
            root, full, adapter, image_name=image_name, overwrite=overwrite, on_event=on_event
        )
    elif has_adapter:
        logger.warning("%s (%s)", LORA_WARNING, adapter)
        if on_event is not None:
            on_event(Notice(LORA_WARNING, Level.WARNING))
    return PreparedModel(
        host_dir=host_dir,
        container_dir=CONTAINER_MODEL_DIR,
        run_metadata=read_run_metadata(root),
        has_adapter=has_adapter,
    )


def _check_architecture(model_config: dict[str, Any], image_name: str) -> None:
    spec = KNOWN_IMAGES[image_name]
    raw_archs = model_config.get("architectures")
    archs = [a for a in raw_archs if isinstance(a, str)] if isinstance(raw_archs, list) else []
    model_type = model_config.get("model_type")
    if not archs and not isinstance(model_type, str):
        raise ModelIncompatibilityError(
            image_name,
            "config.json names neither 'architectures' nor 'model_type', so the model cannot "
            "be checked against the image",
        )
    wanted = (
        f"{image_name} serves architectures {list(spec.architectures)} "
        f"(model_type {list(spec.model_types)})"
    )
    if archs and not set(archs) & set(spec.architectures):
        raise ModelIncompatibilityError(
            image_name, f"config.json architectures {archs} do not match: {wanted}"
        )
    if isinstance(model_type, str) and model_type not in spec.model_types:
        raise ModelIncompatibilityError(
            image_name, f"config.json model_type {model_type!r} does not match: {wanted}"
        )
