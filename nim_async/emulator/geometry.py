"""The emulator's own image geometry: the vision processor's resize, image tokens, box encodings.

Written from the model processors' published rules, independently of the client's geometry (a
convention wrong on both sides would otherwise pass every test run against the emulator):

* Qwen2.5-VL (and Qwen2-VL) cut the image into 14-pixel patches and merge 2×2 patches into one
  token, so both sides of the model input are multiples of 28. Each side is first rounded to the
  nearest multiple of 28 (Python's ``round``, half to even); when the area then exceeds
  ``max_pixels`` the image is scaled by ``sqrt(w*h / max_pixels)`` and each side *floored* to a
  multiple of 28 (at least 28); when it falls below ``min_pixels`` the image is scaled by
  ``sqrt(min_pixels / (w*h))`` and each side *ceiled* to a multiple of 28. An aspect ratio over
  200 is refused. One token per 28×28 cell of the result.
* Qwen3-VL (cosmos-reason2) follows the same procedure with 16-pixel patches merged 2×2, so
  the unit is 32, the smallest area 65,536 (256×256, its processor's ``size.shortest_edge``)
  and the default budget 16,777,216 (4096×4096, ``size.longest_edge``). One token per 32×32
  cell: ``tokens = (h / 32) * (w / 32)``.
* Box conventions: ``qwen25-abs`` is absolute pixels of that resized model input; ``norm1000``
  (Qwen3-VL) maps each axis of the image to 0..1000; ``norm1024`` (models trained on Datature Vi)
  to 0..1024. Models write integers.

No IO.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from nim_async.catalog import KNOWN_IMAGES, BoxFormat

__all__ = [
    "MAX_ASPECT",
    "MERGE",
    "MIN_PIXELS",
    "PATCH",
    "QWEN3_MAX_PIXELS",
    "QWEN3_MIN_PIXELS",
    "QWEN3_PATCH",
    "VISION_FAMILIES",
    "VisionFamily",
    "VisionRule",
    "encode_box",
    "image_tokens",
    "model_input_size",
    "vision_family_for",
    "vision_rule",
]

VisionFamily = Literal["qwen2.5-vl", "qwen3-vl"]
"""The vision processor a served model follows (its resize and token count)."""

VISION_FAMILIES: tuple[VisionFamily, ...] = ("qwen2.5-vl", "qwen3-vl")

PATCH = 14
"""Side of one vision patch of Qwen2.5-VL, in pixels."""

MERGE = 2
"""Patches merged per side into one token (2×2)."""

MIN_PIXELS = 4 * (PATCH * MERGE) ** 2
"""Smallest model-input area (3136 = 56×56)."""

MAX_ASPECT = 200
"""Largest aspect ratio the processor accepts."""

QWEN3_PATCH = 16
"""Side of one vision patch of Qwen3-VL, in pixels (merged 2×2: 32-pixel units)."""

QWEN3_MIN_PIXELS = 65536
"""Qwen3-VL's smallest model-input area (256×256)."""

QWEN3_MAX_PIXELS = 16777216
"""Qwen3-VL's default pixel budget (4096×4096)."""


@dataclass(frozen=True, slots=True)
class VisionRule:
    """The numbers of one family's resize.

    Attributes:
        unit: Both sides of the model input are multiples of this (patch × merge).
        min_pixels: Smallest model-input area.
        default_max_pixels: The processor's default pixel budget.
    """

    unit: int
    min_pixels: int
    default_max_pixels: int


_RULES: dict[str, VisionRule] = {
    "qwen2.5-vl": VisionRule(PATCH * MERGE, MIN_PIXELS, 1280 * (PATCH * MERGE) ** 2),
    "qwen3-vl": VisionRule(QWEN3_PATCH * MERGE, QWEN3_MIN_PIXELS, QWEN3_MAX_PIXELS),
}


def vision_rule(family: VisionFamily) -> VisionRule:
    """Return the resize numbers of ``family``.

    Args:
        family: ``qwen2.5-vl`` or ``qwen3-vl``.
    """
    return _RULES[family]


def vision_family_for(model_name: str) -> VisionFamily:
    """Choose the vision family from a served model name or image name.

    Catalog images say it by their resize unit (32: Qwen3-VL); other names containing
    ``cosmos-reason2`` or ``qwen3-vl`` are Qwen3-VL; everything else is Qwen2.5-VL.

    Args:
        model_name: The served model name (or NIM image name).
    """
    spec = KNOWN_IMAGES.get(model_name)
    if spec is not None:
        return "qwen3-vl" if spec.patch_size == QWEN3_PATCH * MERGE else "qwen2.5-vl"
    name = model_name.lower().replace("_", "-").replace(".", "")
    if "cosmos-reason2" in name or "qwen3-vl" in name or "qwen3vl" in name:
        return "qwen3-vl"
    return "qwen2.5-vl"


_NORM_SCALE = {"norm1000": 1000, "norm1024": 1024}


def _nearest_multiple(value: float, unit: int) -> int:
    return round(value / unit) * unit


def model_input_size(
    width: int, height: int, max_pixels: int, family: VisionFamily = "qwen2.5-vl"
) -> tuple[int, int]:
    """Return ``(width, height)`` of the model input for an image of that size.

    Args:
        width: Width of the image as sent, in pixels.
        height: Height of the image as sent, in pixels.
        max_pixels: The pixel budget (the processor's ``max_pixels``).
        family: The vision processor (``qwen2.5-vl``: 28-pixel units, ``qwen3-vl``: 32).

    Returns:
        The resized size; both sides multiples of the family's unit (28 or 32).

    Raises:
        ValueError: for a side below 1 or an aspect ratio over :data:`MAX_ASPECT`.
    """
    if width < 1 or height < 1:
        raise ValueError(f"an image needs positive sides, got {width}x{height}")
    ratio = max(width, height) / min(width, height)
    if ratio > MAX_ASPECT:
        raise ValueError(f"absolute aspect ratio must be smaller than {MAX_ASPECT}, got {ratio}")
    rule = _RULES[family]
    unit = rule.unit
    out_w, out_h = _nearest_multiple(width, unit), _nearest_multiple(height, unit)
    area = width * height
    if out_w * out_h > max_pixels:
        shrink = math.sqrt(area / max_pixels)
        out_w = max(unit, math.floor(width / shrink / unit) * unit)
        out_h = max(unit, math.floor(height / shrink / unit) * unit)
    elif out_w * out_h < rule.min_pixels:
        grow = math.sqrt(rule.min_pixels / area)
        out_w = math.ceil(width * grow / unit) * unit
        out_h = math.ceil(height * grow / unit) * unit
    return out_w, out_h


def image_tokens(
    width: int, height: int, max_pixels: int, family: VisionFamily = "qwen2.5-vl"
) -> int:
    """Count the tokens the vision encoder spends on an image (one per input cell).

    A cell is 28×28 pixels for Qwen2.5-VL and 32×32 for Qwen3-VL.

    Args:
        width: Width of the image as sent.
        height: Height of the image as sent.
        max_pixels: The pixel budget.
        family: The vision processor.

    Returns:
        The number of image-pad tokens (without the vision start/end markers).
    """
    unit = _RULES[family].unit
    out_w, out_h = model_input_size(width, height, max_pixels, family)
    return (out_w // unit) * (out_h // unit)


def encode_box(
    box: tuple[float, float, float, float],
    size: tuple[int, int],
    box_format: BoxFormat,
    max_pixels: int,
    family: VisionFamily = "qwen2.5-vl",
) -> list[int]:
    """Write a box given in pixels of the image as sent the way a model of ``box_format`` does.

    Args:
        box: ``(xmin, ymin, xmax, ymax)`` in pixels of the image as sent.
        size: ``(width, height)`` of the image as sent.
        box_format: The convention to write.
        max_pixels: Pixel budget of the resize (``qwen25-abs`` only).
        family: The vision processor whose resize ``qwen25-abs`` refers to.

    Returns:
        Four integers, each clamped to the coordinate range of the convention.
    """
    width, height = size
    if box_format in _NORM_SCALE:
        span_x = span_y = _NORM_SCALE[box_format]
    else:
        span_x, span_y = model_input_size(width, height, max_pixels, family)
    spans = (span_x, span_y, span_x, span_y)
    sides = (width, height, width, height)
    return [
        min(max(round(v * span / side), 0), span)
        for v, span, side in zip(box, spans, sides, strict=True)
    ]
