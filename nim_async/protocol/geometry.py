"""Image-size arithmetic shared by the media pipeline, the box conversion and the emulator.

No IO. All sizes are ``(width, height)`` tuples; boxes are ``(xmin, ymin, xmax, ymax)``.
"""

from __future__ import annotations

import math

from nim_async.catalog import (
    QWEN3_VL_FACTOR,
    QWEN3_VL_MAX_PIXELS,
    QWEN3_VL_MIN_PIXELS,
    BoxFormat,
)

__all__ = [
    "Box",
    "fit_within_budget",
    "from_pixels",
    "qwen3_vl_resize",
    "qwen_image_tokens",
    "smart_resize",
    "to_pixels",
]

Box = tuple[float, float, float, float]


def smart_resize(
    width: int,
    height: int,
    *,
    factor: int = 28,
    min_pixels: int = 4 * 28 * 28,
    max_pixels: int = 1280 * 28 * 28,
) -> tuple[int, int]:
    """Return the size a Qwen-VL image processor resizes an image to before patching it.

    This is the rule of transformers' ``Qwen2VLImageProcessor`` (``smart_resize``), which
    vLLM runs for Qwen2.5-VL (``factor`` 28) and Qwen3-VL (``factor`` 32, see
    :func:`qwen3_vl_resize`): both sides become multiples of ``factor`` and the area lands
    within ``[min_pixels, max_pixels]`` while keeping the aspect ratio as close as possible.
    A side that rounds to 0 sends the image through the ``min_pixels`` branch, as in the
    processor.

    Args:
        width: Original width in pixels.
        height: Original height in pixels.
        factor: Patch multiple (28 for Qwen2.5-VL, 32 for Qwen3-VL).
        min_pixels: Smallest allowed area.
        max_pixels: Largest allowed area.

    Returns:
        The resized ``(width, height)``.

    Raises:
        ValueError: If a side is not positive, or the aspect ratio is over 200 (the processor
            refuses such an image).
    """
    if width <= 0 or height <= 0:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    if max(width, height) / min(width, height) > 200:
        raise ValueError(
            f"the aspect ratio of a {width}x{height} image is over 200, which Qwen-VL models "
            "refuse; crop or pad it"
        )
    h_bar = round(height / factor) * factor
    w_bar = round(width / factor) * factor
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return w_bar, h_bar


def qwen3_vl_resize(
    width: int,
    height: int,
    *,
    min_pixels: int = QWEN3_VL_MIN_PIXELS,
    max_pixels: int = QWEN3_VL_MAX_PIXELS,
) -> tuple[int, int]:
    """Return the size Qwen3-VL (cosmos-reason2) resizes an image to.

    :func:`smart_resize` with ``factor`` 32 (16-pixel patches merged 2 x 2) and Qwen3-VL's
    processor defaults: at least 65536 pixels, at most 16777216.

    Args:
        width: Width of the image as sent.
        height: Height of the image as sent.
        min_pixels: Smallest allowed area.
        max_pixels: Largest allowed area.

    Returns:
        The resized ``(width, height)``, both multiples of 32.

    Raises:
        ValueError: as :func:`smart_resize`.
    """
    return smart_resize(
        width, height, factor=QWEN3_VL_FACTOR, min_pixels=min_pixels, max_pixels=max_pixels
    )


def fit_within_budget(width: int, height: int, max_pixels: int) -> tuple[int, int]:
    """Return the largest size with the same aspect ratio whose area is at most ``max_pixels``.

    Images already within the budget keep their size: nothing is ever upscaled.

    Args:
        width: Original width in pixels.
        height: Original height in pixels.
        max_pixels: The pixel budget.

    Returns:
        The target ``(width, height)``.
    """
    if width * height <= max_pixels:
        return width, height
    scale = math.sqrt(max_pixels / (width * height))
    return max(1, math.floor(width * scale)), max(1, math.floor(height * scale))


def qwen_image_tokens(
    width: int,
    height: int,
    *,
    factor: int = 28,
    max_pixels: int = 1280 * 28 * 28,
    min_pixels: int = 4 * 28 * 28,
) -> int:
    """Count the prompt tokens a Qwen-VL model spends on an image: one per merged patch.

    A merged patch is ``factor`` x ``factor`` pixels of the resized image (28 for Qwen2.5-VL,
    32 for Qwen3-VL); the wrapper tokens around the image are not counted.

    Args:
        width: Image width in pixels as sent.
        height: Image height in pixels as sent.
        factor: Patch side after merging.
        max_pixels: Pixel budget of the model.
        min_pixels: Smallest vision input of the model.

    Returns:
        The number of image tokens.

    Raises:
        ValueError: as :func:`smart_resize`.
    """
    w, h = smart_resize(width, height, factor=factor, min_pixels=min_pixels, max_pixels=max_pixels)
    return (w // factor) * (h // factor)


def _scale_for(fmt: BoxFormat, model_input_size: tuple[int, int]) -> tuple[float, float]:
    if fmt == "norm1024":
        return 1024.0, 1024.0
    if fmt == "norm1000":
        return 1000.0, 1000.0
    return float(model_input_size[0]), float(model_input_size[1])


def to_pixels(
    box: Box,
    fmt: BoxFormat,
    *,
    original_size: tuple[int, int],
    model_input_size: tuple[int, int],
) -> Box:
    """Convert a box from a model's coordinate convention to pixels of the original image.

    Args:
        box: ``(xmin, ymin, xmax, ymax)`` as the model emitted it.
        fmt: The model's convention.
        original_size: ``(width, height)`` of the image before any resizing.
        model_input_size: ``(width, height)`` the model saw; for ``qwen25-abs`` this is the
            28-multiple size from :func:`smart_resize` of the image as sent.

    Returns:
        The box in original-image pixels, clamped to the image.
    """
    sx, sy = _scale_for(fmt, model_input_size)
    ow, oh = original_size
    x0, y0, x1, y1 = box
    out = (x0 / sx * ow, y0 / sy * oh, x1 / sx * ow, y1 / sy * oh)
    return (
        min(max(out[0], 0.0), ow),
        min(max(out[1], 0.0), oh),
        min(max(out[2], 0.0), ow),
        min(max(out[3], 0.0), oh),
    )


def from_pixels(
    box: Box,
    fmt: BoxFormat,
    *,
    original_size: tuple[int, int],
    model_input_size: tuple[int, int],
) -> Box:
    """Convert a box in original-image pixels to a model's coordinate convention.

    The inverse of :func:`to_pixels` (used by the emulator to answer like a model would).

    Args:
        box: ``(xmin, ymin, xmax, ymax)`` in original-image pixels.
        fmt: The target convention.
        original_size: ``(width, height)`` of the original image.
        model_input_size: ``(width, height)`` the model sees.

    Returns:
        The box in the model's coordinates.
    """
    sx, sy = _scale_for(fmt, model_input_size)
    ow, oh = original_size
    x0, y0, x1, y1 = box
    return (x0 / ow * sx, y0 / oh * sy, x1 / ow * sx, y1 / oh * sy)
