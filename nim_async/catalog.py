"""What ``nim_async`` knows about each supported NIM image (no IO).

The catalog answers three questions for an image or a served model name: which weights the
image can serve (architectures / ``model_type`` for the custom-weights pre-flight), which box
coordinate convention the model emits, and its vision pixel budget.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = [
    "BOX_FORMATS",
    "KNOWN_IMAGES",
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


KNOWN_IMAGES: dict[str, ImageSpec] = {
    "cosmos-reason1-7b": ImageSpec(
        image_name="cosmos-reason1-7b",
        architectures=("Qwen2_5_VLForConditionalGeneration",),
        model_types=("qwen2_5_vl",),
        box_format="qwen25-abs",
    ),
}


def box_format_for_model(model_name: str) -> BoxFormat:
    """Choose the default box convention for a model name.

    Args:
        model_name: A served model name, image name or Hugging Face id.

    Returns:
        ``qwen25-abs`` for cosmos-reason1 / Qwen2.5-VL names, ``norm1000`` for Qwen3-VL names,
        and ``norm1024`` (the Datature Vi convention) otherwise.
    """
    name = model_name.lower().replace("_", "-").replace(".", "")
    spec = KNOWN_IMAGES.get(model_name)
    if spec is not None:
        return spec.box_format
    if "qwen3-vl" in name or "qwen3vl" in name:
        return "norm1000"
    if "cosmos-reason1" in name or "qwen25-vl" in name or "qwen2-5-vl" in name:
        return "qwen25-abs"
    return "norm1024"
