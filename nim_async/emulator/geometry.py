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
* Box conventions: ``qwen25-abs`` is absolute pixels of that resized model input; ``norm1000``
  (Qwen3-VL) maps each axis of the image to 0..1000; ``norm1024`` (models trained on Datature Vi)
  to 0..1024. Models write integers.

No IO.
"""

from __future__ import annotations

import math

from nim_async.catalog import BoxFormat

__all__ = [
    "MAX_ASPECT",
    "MERGE",
    "MIN_PIXELS",
    "PATCH",
    "encode_box",
    "image_tokens",
    "model_input_size",
]

PATCH = 14
"""Side of one vision patch of Qwen2.5-VL, in pixels."""

MERGE = 2
"""Patches merged per side into one token (2×2)."""

MIN_PIXELS = 4 * (PATCH * MERGE) ** 2
"""Smallest model-input area (3136 = 56×56)."""

MAX_ASPECT = 200
"""Largest aspect ratio the processor accepts."""

_NORM_SCALE = {"norm1000": 1000, "norm1024": 1024}


def _nearest_multiple(value: float, unit: int) -> int:
    return round(value / unit) * unit


def model_input_size(width: int, height: int, max_pixels: int) -> tuple[int, int]:
    """Return ``(width, height)`` of the Qwen2.5-VL model input for an image of that size.

    Args:
        width: Width of the image as sent, in pixels.
        height: Height of the image as sent, in pixels.
        max_pixels: The pixel budget (the processor's ``max_pixels``).

    Returns:
        The resized size; both sides multiples of 28.

    Raises:
        ValueError: for a side below 1 or an aspect ratio over :data:`MAX_ASPECT`.
    """
    if width < 1 or height < 1:
        raise ValueError(f"an image needs positive sides, got {width}x{height}")
    ratio = max(width, height) / min(width, height)
    if ratio > MAX_ASPECT:
        raise ValueError(f"absolute aspect ratio must be smaller than {MAX_ASPECT}, got {ratio}")
    unit = PATCH * MERGE
    out_w, out_h = _nearest_multiple(width, unit), _nearest_multiple(height, unit)
    area = width * height
    if out_w * out_h > max_pixels:
        shrink = math.sqrt(area / max_pixels)
        out_w = max(unit, math.floor(width / shrink / unit) * unit)
        out_h = max(unit, math.floor(height / shrink / unit) * unit)
    elif out_w * out_h < MIN_PIXELS:
        grow = math.sqrt(MIN_PIXELS / area)
        out_w = math.ceil(width * grow / unit) * unit
        out_h = math.ceil(height * grow / unit) * unit
    return out_w, out_h


def image_tokens(width: int, height: int, max_pixels: int) -> int:
    """Count the tokens Qwen2.5-VL spends on the image's patches (one per 28×28 input cell).

    Args:
        width: Width of the image as sent.
        height: Height of the image as sent.
        max_pixels: The pixel budget.

    Returns:
        The number of image-pad tokens (without the vision start/end markers).
    """
    unit = PATCH * MERGE
    out_w, out_h = model_input_size(width, height, max_pixels)
    return (out_w // unit) * (out_h // unit)


def encode_box(
    box: tuple[float, float, float, float],
    size: tuple[int, int],
    box_format: BoxFormat,
    max_pixels: int,
) -> list[int]:
    """Write a box given in pixels of the image as sent the way a model of ``box_format`` does.

    Args:
        box: ``(xmin, ymin, xmax, ymax)`` in pixels of the image as sent.
        size: ``(width, height)`` of the image as sent.
        box_format: The convention to write.
        max_pixels: Pixel budget of the resize (``qwen25-abs`` only).

    Returns:
        Four integers, each clamped to the coordinate range of the convention.
    """
    width, height = size
    if box_format in _NORM_SCALE:
        span_x = span_y = _NORM_SCALE[box_format]
    else:
        span_x, span_y = model_input_size(width, height, max_pixels)
    spans = (span_x, span_y, span_x, span_y)
    sides = (width, height, width, height)
    return [
        min(max(round(v * span / side), 0), span)
        for v, span, side in zip(box, spans, sides, strict=True)
    ]
