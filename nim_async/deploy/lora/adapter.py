"""Read and validate a PEFT LoRA adapter directory (``adapter_config.json`` + safetensors).

:func:`read_adapter_config` checks the configuration against what a plain weight merge can
reproduce exactly: ``peft_type`` LORA, no DoRA (``use_dora``), no LoRA bias, no layer
replication, no trainable-token or parameter targets, no activated LoRA. Anything else is
reported as an :class:`UnsupportedAdapter` reason naming the field, which the merge turns into
a :class:`~nim_async.errors.ModelIncompatibilityError` before any output is written.

:func:`parse_adapter_tensors` sorts the adapter's tensors into LoRA pairs per module
(``lora_A``/``lora_B``, or ``lora_embedding_A``/``lora_embedding_B`` for embeddings) and
``modules_to_save`` replacements, with the scaling PEFT applies per module:
``lora_alpha / r``, or ``lora_alpha / sqrt(r)`` with rsLoRA, ``rank_pattern`` and
``alpha_pattern`` included.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "ADAPTER_CONFIG",
    "ADAPTER_WEIGHTS",
    "EMBEDDING_LAYER_NAMES",
    "AdapterConfig",
    "LoraModule",
    "UnsupportedAdapter",
    "find_adapter_weights",
    "parse_adapter_tensors",
    "read_adapter_config",
]

ADAPTER_CONFIG = "adapter_config.json"
"""The PEFT adapter configuration file."""

ADAPTER_WEIGHTS = "adapter_model.safetensors"
"""The PEFT adapter weights file (safetensors; the pickled ``adapter_model.bin`` is refused)."""

_PREFIX = "base_model.model."


class UnsupportedAdapter(Exception):
    """An adapter that cannot be merged; the message is the reason (raised internally)."""


@dataclass(frozen=True)
class AdapterConfig:
    """The fields of ``adapter_config.json`` that decide the merge.

    Attributes:
        r: The default LoRA rank.
        lora_alpha: The default LoRA alpha.
        use_rslora: Scale by ``alpha / sqrt(r)`` instead of ``alpha / r``.
        fan_in_fan_out: The base layers store weights as ``(in, out)`` (GPT-2 style Conv1D).
        target_modules: Module names (a list) or one regular expression (a string).
        modules_to_save: Modules whose whole weights the adapter replaces.
        rank_pattern: Per-module rank overrides (regex or name -> rank).
        alpha_pattern: Per-module alpha overrides (regex or name -> alpha).
        base_model_name_or_path: What the adapter says it was trained on (informational).
    """

    r: int
    lora_alpha: float
    use_rslora: bool = False
    fan_in_fan_out: bool = False
    target_modules: tuple[str, ...] | str = ()
    modules_to_save: tuple[str, ...] = ()
    rank_pattern: Mapping[str, int] = field(default_factory=dict)
    alpha_pattern: Mapping[str, float] = field(default_factory=dict)
    base_model_name_or_path: str | None = None

    def scaling(self, module: str, rank: int) -> float:
        """The factor PEFT multiplies ``B @ A`` by for one module.

        Args:
            module: The module's name in the model (without ``base_model.model.``).
            rank: The module's rank, read from its ``lora_A`` shape.

        Returns:
            ``alpha / r`` (``alpha / sqrt(r)`` with rsLoRA), with the patterns applied.

        Raises:
            UnsupportedAdapter: The rank in the weights disagrees with the configuration.
        """
        r_key = _pattern_key(self.rank_pattern, module)
        want_r = self.rank_pattern[r_key] if r_key is not None else self.r
        if want_r != rank:
            raise UnsupportedAdapter(
                f"module {module}: adapter_config.json says rank {want_r}, its lora_A has rank "
                f"{rank} (the weights do not belong to this configuration)"
            )
        a_key = _pattern_key(self.alpha_pattern, module)
        alpha = self.alpha_pattern[a_key] if a_key is not None else self.lora_alpha
        return float(alpha / math.sqrt(rank) if self.use_rslora else alpha / rank)

    def targets(self, module: str) -> bool:
        """Whether ``target_modules`` selects ``module`` (PEFT's matching rule).

        An empty list and PEFT's ``"all-linear"`` shorthand select every module.
        """
        if not self.target_modules or self.target_modules == "all-linear":
            return True
        if isinstance(self.target_modules, str):
            return re.fullmatch(self.target_modules, module) is not None
        return any(module == t or module.endswith("." + t) for t in self.target_modules)


def _pattern_key(patterns: Mapping[str, Any], module: str) -> str | None:
    """PEFT's ``get_pattern_key``: an exact name, else a regex matching a dotted suffix."""
    if module in patterns:
        return module
    for key in patterns:
        try:
            if re.match(rf"(?:^|.*\.){key}$", module):
                return key
        except re.error:
            continue
    return None


# Fields whose non-default values change what the adapter computes beyond W + s * B @ A.
def _unsupported_reasons(doc: Mapping[str, Any]) -> Iterable[str]:
    if doc.get("use_dora"):
        yield (
            "DoRA adapters (use_dora=true) rescale each merged weight by a learned magnitude "
            "vector; merging them is not supported"
        )
    if doc.get("lora_bias"):
        yield "adapters with a LoRA bias (lora_bias=true) are not supported"
    if doc.get("bias", "none") not in ("none", None):
        yield f"adapters that train biases (bias={doc['bias']!r}) are not supported"
    if doc.get("layer_replication"):
        yield "adapters with layer_replication are not supported"
    if doc.get("target_parameters"):
        yield "adapters with target_parameters (LoRA on raw parameters) are not supported"
    if doc.get("trainable_token_indices"):
        yield "adapters with trainable_token_indices are not supported"
    if doc.get("alora_invocation_tokens"):
        yield (
            "activated LoRA (alora_invocation_tokens) applies only after its tokens; "
            "it cannot be merged"
        )
    if doc.get("use_qalora"):
        yield "QA-LoRA adapters (use_qalora=true) are not supported"
    if doc.get("megatron_config"):
        yield "Megatron-parallel adapters (megatron_config) are not supported"


def read_adapter_config(adapter_dir: Path) -> AdapterConfig:
    """Read ``adapter_config.json`` and check that its adapter can be merged.

    Args:
        adapter_dir: The PEFT adapter directory.

    Returns:
        The configuration.

    Raises:
        UnsupportedAdapter: The file is missing or unreadable, or the adapter is not a plain
            LoRA adapter (the message names the field).
    """
    path = adapter_dir / ADAPTER_CONFIG
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise UnsupportedAdapter(f"{ADAPTER_CONFIG} is missing in {adapter_dir}") from exc
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UnsupportedAdapter(f"cannot read {path}: {exc}") from exc
    if not isinstance(doc, dict):
        raise UnsupportedAdapter(f"{path} is not a JSON object")
    peft_type = doc.get("peft_type", "LORA")
    if peft_type != "LORA":
        raise UnsupportedAdapter(f"peft_type {peft_type!r} is not supported (only LORA)")
    for reason in _unsupported_reasons(doc):
        raise UnsupportedAdapter(reason)
    r = doc.get("r")
    alpha = doc.get("lora_alpha", r)
    if not isinstance(r, int) or isinstance(r, bool) or r < 1:
        raise UnsupportedAdapter(f"{ADAPTER_CONFIG}: r must be a positive integer, got {r!r}")
    if not isinstance(alpha, int | float) or isinstance(alpha, bool):
        raise UnsupportedAdapter(f"{ADAPTER_CONFIG}: lora_alpha must be a number, got {alpha!r}")
    targets_raw = doc.get("target_modules") or ()
    targets: tuple[str, ...] | str
    if isinstance(targets_raw, str):
        targets = targets_raw
    elif isinstance(targets_raw, list) and all(isinstance(t, str) for t in targets_raw):
        targets = tuple(targets_raw)
    else:
        raise UnsupportedAdapter(f"{ADAPTER_CONFIG}: target_modules {targets_raw!r} is invalid")
    to_save = doc.get("modules_to_save") or ()
    if not isinstance(to_save, list | tuple) or not all(isinstance(m, str) for m in to_save):
        raise UnsupportedAdapter(f"{ADAPTER_CONFIG}: modules_to_save {to_save!r} is invalid")
    rank_pattern = doc.get("rank_pattern") or {}
    alpha_pattern = doc.get("alpha_pattern") or {}
    if not isinstance(rank_pattern, dict) or not isinstance(alpha_pattern, dict):
        raise UnsupportedAdapter(f"{ADAPTER_CONFIG}: rank_pattern/alpha_pattern must be maps")
    base_name = doc.get("base_model_name_or_path")
    return AdapterConfig(
        r=r,
        lora_alpha=float(alpha),
        use_rslora=bool(doc.get("use_rslora", False)),
        fan_in_fan_out=bool(doc.get("fan_in_fan_out", False)),
        target_modules=targets,
        modules_to_save=tuple(to_save),
        rank_pattern=dict(rank_pattern),
        alpha_pattern=dict(alpha_pattern),
        base_model_name_or_path=base_name if isinstance(base_name, str) else None,
    )


def find_adapter_weights(adapter_dir: Path) -> Path:
    """The adapter's safetensors weights file.

    Args:
        adapter_dir: The PEFT adapter directory.

    Returns:
        The path of ``adapter_model.safetensors``.

    Raises:
        UnsupportedAdapter: The file is missing (a pickled ``adapter_model.bin`` is named as
            the reason: it is not loaded, since unpickling runs code).
    """
    path = adapter_dir / ADAPTER_WEIGHTS
    if path.is_file():
        return path
    if (adapter_dir / "adapter_model.bin").is_file():
        raise UnsupportedAdapter(
            f"{adapter_dir} holds adapter_model.bin (a pickle, not loaded); save the adapter "
            "with safe_serialization=True to get adapter_model.safetensors"
        )
    raise UnsupportedAdapter(f"{ADAPTER_WEIGHTS} is missing in {adapter_dir}")


@dataclass(frozen=True)
class LoraModule:
    """One module's LoRA pair, by tensor name in the adapter file.

    Attributes:
        module: The module's name in the model (``base_model.model.`` removed).
        a_key: The adapter tensor holding ``lora_A`` (``(r, in)``; embeddings ``(r, vocab)``).
        b_key: The adapter tensor holding ``lora_B`` (``(out, r)``; embeddings ``(dim, r)``).
        embedding: An embedding LoRA: the delta is ``(B @ A).T``.
    """

    module: str
    a_key: str
    b_key: str
    embedding: bool = False


_LORA_RE = re.compile(
    r"^(?P<module>.+)\.(?P<kind>lora_A|lora_B|lora_embedding_A|lora_embedding_B)"
    r"(?:\.[A-Za-z0-9_-]+)?(?:\.weight)?$"
)
_SAVED_RE = re.compile(r"\.modules_to_save(?:\.[A-Za-z0-9_-]+)?(?=\.)")
_BASE_LAYER = ".base_layer."
# PEFT saves whole embedding layers beside their LoRA (save_embedding_layers) under these names.
EMBEDDING_LAYER_NAMES = ("embed_tokens", "lm_head", "wte", "word_embeddings")


def parse_adapter_tensors(
    names: Iterable[str], config: AdapterConfig
) -> tuple[list[LoraModule], dict[str, str]]:
    """Sort an adapter's tensor names into LoRA pairs and ``modules_to_save`` replacements.

    Args:
        names: Tensor names in ``adapter_model.safetensors``.
        config: The adapter's configuration.

    Returns:
        The LoRA modules (sorted by name), and a map from each replaced parameter's name in
        the model (e.g. ``lm_head.weight``) to its tensor name in the adapter file: the
        ``modules_to_save`` copies, and the whole embedding layers PEFT saves beside an
        embedding LoRA (``save_embedding_layers``; a LoRA delta then applies on top).

    Raises:
        UnsupportedAdapter: A tensor is neither (DoRA magnitudes, LoRA biases, unknown
            names), a LoRA pair is incomplete, or the adapter holds no weights at all.
    """
    pairs: dict[str, dict[str, str]] = {}
    saved: dict[str, str] = {}
    for key in sorted(names):
        name = key[len(_PREFIX) :] if key.startswith(_PREFIX) else key
        if "lora_magnitude_vector" in name:
            raise UnsupportedAdapter(f"{key} is a DoRA magnitude vector; DoRA is not supported")
        match = _LORA_RE.match(name)
        if match:
            kind = match["kind"].replace("embedding_", "")
            slot = pairs.setdefault(match["module"], {})
            if kind in slot:
                raise UnsupportedAdapter(f"{key}: module {match['module']} has two {kind} tensors")
            slot[kind] = key
            if "embedding" in match["kind"]:
                slot["embedding"] = "1"
            continue
        param = _SAVED_RE.sub("", name).replace(_BASE_LAYER, ".")
        module = param.rsplit(".", 1)[0]
        saved_module = any(module == m or module.endswith("." + m) for m in config.modules_to_save)
        embedding = _BASE_LAYER in name or module.rsplit(".", 1)[-1] in EMBEDDING_LAYER_NAMES
        if saved_module or embedding:
            if param in saved:
                raise UnsupportedAdapter(f"{key}: {param} is saved twice in the adapter")
            saved[param] = key
            continue
        raise UnsupportedAdapter(
            f"{key} is neither a LoRA weight nor part of modules_to_save "
            f"{list(config.modules_to_save)}"
        )
    modules: list[LoraModule] = []
    for module, slot in sorted(pairs.items()):
        if "lora_A" not in slot or "lora_B" not in slot:
            missing = "lora_B" if "lora_A" in slot else "lora_A"
            raise UnsupportedAdapter(f"module {module} has no {missing} tensor")
        if not config.targets(module):
            raise UnsupportedAdapter(
                f"module {module} has LoRA weights but target_modules {config.target_modules!r} "
                "does not select it (the weights do not belong to this configuration)"
            )
        modules.append(LoraModule(module, slot["lora_A"], slot["lora_B"], "embedding" in slot))
    if not modules and not saved:
        raise UnsupportedAdapter(f"{ADAPTER_WEIGHTS} holds no LoRA weights")
    return modules, saved
