"""What ``nim_async`` knows about each supported NIM image (no IO).

The catalog answers three questions for an image or a served model name: which weights the
image can serve (architectures / ``model_type`` for the custom-weights pre-flight), which box
coordinate convention the model emits, and its vision pixel budget.

Sources of the numbers:

* cosmos-reason1-7b is post-trained from Qwen2.5-VL-7B: 14-pixel patches merged 2x2, so the
  input is resized to multiples of 28; boxes are absolute pixels of that resized input.
* cosmos-reason2-2b / -8b are post-trained from Qwen3-VL-2B / -8B-Instruct (``model_type``
  ``qwen3_vl``). Their ``preprocessor_config.json`` (``Qwen3VLProcessor`` with
  ``Qwen2VLImageProcessorFast``) sets ``patch_size`` 16, ``merge_size`` 2 (so multiples of
  32), ``size.shortest_edge`` 65536 (min pixels) and ``size.longest_edge`` 16777216 (max
  pixels, 4096 x 4096). Qwen3-VL emits boxes as 0-1000 normalised coordinates. NVIDIA
  publishes the NIMs as ``nvcr.io/nim/nvidia/cosmos-reason2-2b`` and ``-8b``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = [
    "BOX_FORMATS",
    "KNOWN_IMAGES",
    "QWEN3_VL_FACTOR",
    "QWEN3_VL_MAX_PIXELS",
    "QWEN3_VL_MIN_PIXELS",
    "BoxFormat",
    "ImageSpec",
    "box_format_for_model",
]

BoxFormat = Literal["norm1024", "qwen25-abs", "norm1000"]
"""Box coordinate conventions.

* ``norm1024``: 0-1024 normalised coordinates (models trained on Datature Vi).
* ``qwen25-abs``: absolute pixels of the model input after Qwen2.5-VL's resize to multiples
  of 28 within the pixel budget (cosmos-reason1, Qwen2.5-VL).
* ``norm1000``: 0-1000 normalised coordinates (Qwen3-VL based models).
"""

BOX_FORMATS: tuple[BoxFormat, ...] = ("norm1024", "qwen25-abs", "norm1000")


@dataclass(frozen=True, slots=True)
class ImageSpec:
    """Facts about one NIM image.

    Attributes:
        image_name: The NIM image name (``cosmos-reason1-7b``).
        architectures: ``config.json`` architectures the image can serve.
        model_types: ``config.json`` ``model_type`` values the image can serve.
        box_format: Box convention the base model emits.
        min_pixels: Smallest vision input, in pixels.
        max_pixels: Largest vision input, in pixels (the pixel budget).
        patch_size: Side of the square the vision input is resized to multiples of.
    """

    image_name: str
    architectures: tuple[str, ...]
    model_types: tuple[str, ...]
    box_format: BoxFormat
    min_pixels: int = 4 * 28 * 28
    max_pixels: int = 1280 * 28 * 28
    patch_size: int = 28


QWEN3_VL_FACTOR = 32
"""Qwen3-VL resizes to multiples of 32 pixels: 16-pixel patches, merged 2 x 2."""
QWEN3_VL_MIN_PIXELS = 65536
"""Qwen3-VL's smallest vision input (``size.shortest_edge`` of its processor), 256 x 256."""
QWEN3_VL_MAX_PIXELS = 16777216
"""Qwen3-VL's pixel budget (``size.longest_edge`` of its processor), 4096 x 4096."""


def _qwen3_vl(image_name: str) -> ImageSpec:
    return ImageSpec(
        image_name=image_name,
        architectures=("Qwen3VLForConditionalGeneration",),
        model_types=("qwen3_vl",),
        box_format="norm1000",
        min_pixels=QWEN3_VL_MIN_PIXELS,
        max_pixels=QWEN3_VL_MAX_PIXELS,
        patch_size=QWEN3_VL_FACTOR,
    )


KNOWN_IMAGES: dict[str, ImageSpec] = {
    "cosmos-reason1-7b": ImageSpec(
        image_name="cosmos-reason1-7b",
        architectures=("Qwen2_5_VLForConditionalGeneration",),
        model_types=("qwen2_5_vl",),
        box_format="qwen25-abs",
    ),
    "cosmos-reason2-2b": _qwen3_vl("cosmos-reason2-2b"),
    "cosmos-reason2-8b": _qwen3_vl("cosmos-reason2-8b"),
}


def box_format_for_model(model_name: str) -> BoxFormat:
    """Choose the default box convention for a model name.

    Args:
        model_name: A served model name, image name or Hugging Face id.

    Returns:
        ``qwen25-abs`` for cosmos-reason1 / Qwen2.5-VL names, ``norm1000`` for cosmos-reason2
        and Qwen3-VL names, and ``norm1024`` (the Datature Vi convention) otherwise.
    """
    name = model_name.lower().replace("_", "-").replace(".", "")
    spec = KNOWN_IMAGES.get(model_name)
    if spec is not None:
        return spec.box_format
    if "qwen3-vl" in name or "qwen3vl" in name or "cosmos-reason2" in name:
        return "norm1000"
    if "cosmos-reason1" in name or "qwen25-vl" in name or "qwen2-5-vl" in name:
        return "qwen25-abs"
    return "norm1024"
