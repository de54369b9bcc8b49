"""What the emulator "sees" in an image: solid regions of named colours. Pillow only, no IO.

The image is downsampled to at most :data:`GRID_SIDE` pixels on its long side, mapped to the
nearest named colour, and split into connected regions (run-length union-find). Each region
keeps its colour name, a shape noun and its bounding box in pixels of the image as sent. This is
the emulator's stand-in for a vision model; it is a test double, not a model.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from itertools import groupby

from PIL import Image, ImageOps, UnidentifiedImageError

__all__ = [
    "COLOR_NAMES",
    "GRID_SIDE",
    "Region",
    "Scene",
    "analyse_bytes",
    "analyse_image",
    "decode_image",
]

GRID_SIDE = 256
"""Long side of the analysis grid; boxes are accurate to about one grid cell."""

_PALETTE: tuple[tuple[str, tuple[int, int, int]], ...] = (
    ("white", (255, 255, 255)),
    ("black", (0, 0, 0)),
    ("red", (255, 0, 0)),
    ("red", (200, 30, 30)),
    ("green", (0, 128, 0)),
    ("green", (0, 255, 0)),
    ("green", (40, 170, 60)),
    ("blue", (0, 0, 255)),
    ("blue", (30, 60, 200)),
    ("yellow", (255, 255, 0)),
    ("orange", (255, 165, 0)),
    ("purple", (128, 0, 128)),
    ("pink", (255, 192, 203)),
    ("cyan", (0, 255, 255)),
    ("magenta", (255, 0, 255)),
    ("brown", (165, 42, 42)),
    ("gray", (128, 128, 128)),
)

COLOR_NAMES: tuple[str, ...] = tuple(dict.fromkeys(name for name, _ in _PALETTE))
"""Colour names the emulator recognises (``white`` is the usual background)."""

_PALETTE_IMAGE = Image.new("P", (1, 1))
_PALETTE_IMAGE.putpalette(
    [c for _, rgb in _PALETTE for c in rgb] + [255, 255, 255] * (256 - len(_PALETTE))
)
_INDEX_NAME = [name for name, _ in _PALETTE] + ["white"] * (256 - len(_PALETTE))


@dataclass(frozen=True, slots=True)
class Region:
    """One solid region.

    Attributes:
        color: Colour name (one of :data:`COLOR_NAMES`).
        shape: ``square``, ``rectangle``, ``circle``, ``ellipse`` or ``shape``.
        box: ``(xmin, ymin, xmax, ymax)`` in pixels of the image as sent.
        area: Fraction of the image it covers.
    """

    color: str
    shape: str
    box: tuple[float, float, float, float]
    area: float


@dataclass(frozen=True, slots=True)
class Scene:
    """The regions of one image.

    Attributes:
        size: ``(width, height)`` of the image as sent.
        background: Colour name of the background.
        regions: Regions ordered top-to-bottom, left-to-right.
    """

    size: tuple[int, int]
    background: str
    regions: tuple[Region, ...]


def decode_image(data: bytes, *, draft: bool = False) -> tuple[Image.Image, tuple[int, int]]:
    """Decode image bytes (JPEG, PNG, WebP, GIF, BMP, TIFF) and apply EXIF orientation.

    Args:
        data: Encoded image bytes.
        draft: Let JPEG decoding skip detail the analysis grid cannot use (faster; the
            returned image may be smaller than the original).

    Returns:
        ``(image, size)``: the decoded image and the ``(width, height)`` of the image as sent
        (after EXIF orientation), which ``image.size`` equals unless ``draft`` shrank it.

    Raises:
        ValueError: if Pillow cannot decode the bytes.
    """
    try:
        img = Image.open(io.BytesIO(data))
        width, height = img.size
        if draft and img.format == "JPEG":
            img.draft("RGB", (GRID_SIDE * 2, GRID_SIDE * 2))
        img.load()
        if img.getexif().get(0x0112, 1) in (5, 6, 7, 8):  # orientations that swap the sides
            width, height = height, width
        return ImageOps.exif_transpose(img), (width, height)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise ValueError(f"cannot identify image file: {exc}") from exc
    except Image.DecompressionBombError as exc:  # pragma: no cover - huge inputs only
        raise ValueError(str(exc)) from exc


def analyse_bytes(data: bytes) -> Scene:
    """Decode ``data`` and return its :class:`Scene` (boxes in pixels of the image as sent).

    Raises:
        ValueError: if Pillow cannot decode the bytes.
    """
    img, size = decode_image(data, draft=True)
    return analyse_image(img, size=size)


def analyse_image(
    img: Image.Image, *, size: tuple[int, int] | None = None, max_regions: int = 12
) -> Scene:
    """Find solid regions of named colours in ``img``.

    Args:
        img: A decoded image.
        size: ``(width, height)`` boxes are reported in (default ``img.size``; differs when
            the image was decoded at reduced scale).
        max_regions: Keep at most this many regions (the largest).

    Returns:
        The scene.
    """
    width, height = size if size is not None else img.size
    iw, ih = img.size
    scale = min(1.0, GRID_SIDE / max(iw, ih))
    gw, gh = max(1, round(iw * scale)), max(1, round(ih * scale))
    rgb = img.convert("RGB")
    if (gw, gh) != (iw, ih):
        rgb = rgb.resize((gw, gh), Image.Resampling.NEAREST)
    idx = rgb.quantize(palette=_PALETTE_IMAGE, dither=Image.Dither.NONE).tobytes()
    names = [_INDEX_NAME[b] for b in range(256)]

    # Background: white, unless another colour covers more than half of the image.
    counts: dict[str, int] = {}
    for value, n in zip(*_histogram(idx), strict=True):
        counts[names[value]] = counts.get(names[value], 0) + n
    total = gw * gh
    background = "white"
    top = max(counts, key=lambda k: counts[k])
    if counts[top] * 2 > total:
        background = top

    comps = _components(idx, gw, gh, names, background)
    min_cells = max(6, total // 2000)
    sx, sy = width / gw, height / gh
    found: list[Region] = []
    for color, cells, x0, y0, x1, y1 in comps:
        bw, bh = x1 - x0 + 1, y1 - y0 + 1
        if cells < min_cells or bw < 3 or bh < 3:  # noise and JPEG fringes
            continue
        solidity = cells / (bw * bh)
        if solidity < 0.4:
            continue
        box = (x0 * sx, y0 * sy, (x1 + 1) * sx, (y1 + 1) * sy)
        aspect = (box[2] - box[0]) / max(box[3] - box[1], 1e-9)
        roundish = 0.9 <= aspect <= 1.11
        if solidity >= 0.9:
            shape = "square" if roundish else "rectangle"
        elif solidity >= 0.7:
            shape = "circle" if roundish else "ellipse"
        else:
            shape = "shape"
        found.append(Region(color, shape, box, cells / total))
    found.sort(key=lambda r: -r.area)
    kept = sorted(found[:max_regions], key=lambda r: (round(r.box[1]), round(r.box[0])))
    return Scene(size=(width, height), background=background, regions=tuple(kept))


def _histogram(idx: bytes) -> tuple[list[int], list[int]]:
    values: list[int] = []
    counts: list[int] = []
    for value in set(idx):
        values.append(value)
        counts.append(idx.count(value))
    return values, counts


def _components(
    idx: bytes, gw: int, gh: int, names: list[str], background: str
) -> list[tuple[str, int, int, int, int, int]]:
    """Connected components of equal colour names via row runs and union-find.

    Returns:
        ``(colour, cells, x0, y0, x1, y1)`` per component, in grid cells (inclusive).
    """
    parent: list[int] = []
    info: list[list[int]] = []  # cells, x0, y0, x1, y1
    colors: list[str] = []

    def find(a: int) -> int:
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    prev: list[tuple[int, int, str, int]] = []  # (start, end_exclusive, colour, component)
    for y in range(gh):
        row = idx[y * gw : (y + 1) * gw]
        cur: list[tuple[int, int, str, int]] = []
        x = 0
        for name, grp in groupby(names[b] for b in row):
            n = sum(1 for _ in grp)
            if name != background:
                comp = len(parent)
                parent.append(comp)
                info.append([n, x, y, x + n - 1, y])
                colors.append(name)
                cur.append((x, x + n, name, comp))
            x += n
        # union with overlapping runs of the same colour in the previous row
        j = 0
        for start, end, name, comp in cur:
            while j < len(prev) and prev[j][1] <= start:
                j += 1
            k = j
            while k < len(prev) and prev[k][0] < end:
                if prev[k][2] == name:
                    ra, rb = find(comp), find(prev[k][3])
                    if ra != rb:
                        parent[ra] = rb
                k += 1
        prev = cur
    merged: dict[int, list[int]] = {}
    for comp in range(len(parent)):
        root = find(comp)
        cells, x0, y0, x1, y1 = info[comp]
        acc = merged.get(root)
        if acc is None:
            merged[root] = [cells, x0, y0, x1, y1]
        else:
            acc[0] += cells
            acc[1] = min(acc[1], x0)
            acc[2] = min(acc[2], y0)
            acc[3] = max(acc[3], x1)
            acc[4] = max(acc[4], y1)
    return [(colors[root], *vals) for root, vals in merged.items()]  # type: ignore[misc]
