"""Draw phrase-grounding results onto images (Pillow)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from PIL import Image, ImageDraw, ImageFont

if TYPE_CHECKING:
    from nim_async.results import PhraseGroundingResponse

__all__ = ["PALETTE", "draw_groundings"]

PALETTE: tuple[tuple[int, int, int], ...] = (
    (230, 25, 75),
    (60, 180, 75),
    (0, 130, 200),
    (245, 130, 48),
    (145, 30, 180),
    (70, 240, 240),
    (240, 50, 230),
    (210, 245, 60),
    (0, 128, 128),
    (170, 110, 40),
)


def _text_colour(rgb: tuple[int, int, int]) -> tuple[int, int, int]:
    luminance = 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]
    return (0, 0, 0) if luminance > 150 else (255, 255, 255)


def draw_groundings(
    image: Image.Image,
    response: PhraseGroundingResponse,
    *,
    line_width: int | None = None,
) -> Image.Image:
    """Return a copy of ``image`` with each grounded phrase's boxes and label drawn.

    Each phrase gets its own colour; labels sit on a filled tab above the box (inside it when
    the box touches the top edge, shifted left when it would leave the picture) in black or
    white, whichever reads better on that colour. A thin halo in that same contrasting colour
    keeps boxes visible on objects of their own colour.

    Args:
        image: The original image the prediction was made on.
        response: The phrase grounding response (boxes in original-image pixels).
        line_width: Box outline width; defaults to about 0.4 % of the longer side.

    Returns:
        A new RGB image.
    """
    canvas = image.convert("RGB")
    draw = ImageDraw.Draw(canvas)
    width = line_width or max(2, round(max(canvas.size) * 0.004))
    font = ImageFont.load_default(size=max(12, round(max(canvas.size) * 0.022)))
    img_w, img_h = canvas.size
    for index, grounding in enumerate(response.groundings):
        colour = PALETTE[index % len(PALETTE)]
        halo = _text_colour(colour)
        for box in grounding.boxes:
            x0, y0, x1, y1 = box.pixels
            # A one-pixel contrasting halo keeps the box visible on objects of its own colour.
            draw.rectangle((x0 - 1, y0 - 1, x1 + 1, y1 + 1), outline=halo, width=1)
            draw.rectangle((x0, y0, x1, y1), outline=colour, width=width)
            left, top, right, bottom = draw.textbbox((0, 0), grounding.phrase, font=font)
            tw, th = right - left + 6, bottom - top + 6
            ty = y0 - th if y0 - th >= 0 else y0
            # Keep the label on the picture when the box touches the right edge.
            tx = max(0.0, min(x0, img_w - tw))
            ty = max(0.0, min(ty, img_h - th))
            draw.rectangle((tx, ty, tx + tw, ty + th), fill=colour)
            draw.text(
                (tx + 3 - left, ty + 3 - top),
                grounding.phrase,
                fill=halo,
                font=font,
            )
    return canvas
