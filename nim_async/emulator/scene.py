"""What the emulator "sees" in an image: solid regions of named colours. Pillow only, no IO.

The image is downsampled to at most :data:`GRID_SIDE` pixels on its long side, mapped to the
nearest named colour, and split into connected regions (run-length union-find). The per-cell
work is Pillow's C code (quantize, point, ImageChops) and a compiled regex over the class
bytes; the Python work is per row run, bounded by :data:`RUN_BUDGET` (busy images are analysed
on a coarser grid). Each region
keeps its colour name, a shape noun and its bounding box in pixels of the image as sent. This is
the emulator's stand-in for a vision model; it is a test double, not a model.
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass

from PIL import Image, ImageChops, ImageOps, UnidentifiedImageError

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
    classes = _classify(rgb)
    while _runs(classes) > RUN_BUDGET and min(classes.size) >= 32:
        # A busy image (noise, photos): halve the grid until its runs fit the budget, so the
        # per-run work below stays bounded (solid scenes never get here).
        rgb = rgb.reduce(2)
        classes = _classify(rgb)
    gw, gh = classes.size
    total = gw * gh
    counts = classes.histogram()[: len(COLOR_NAMES)]
    top = max(range(len(counts)), key=counts.__getitem__)
    # Background: white, unless another colour covers more than half of the image.
    background = top if counts[top] * 2 > total else _CLASS_OF["white"]
    comps = _components(classes.tobytes(), gw, gh, background)
    min_cells = max(6, total // 2000)
    sx, sy = width / gw, height / gh
    found: list[Region] = []
    for cls, cells, x0, y0, x1, y1 in comps:
        bw, bh = x1 - x0 + 1, y1 - y0 + 1
        if cells < min_cells or bw < 3 or bh < 3:  # noise and JPEG fringes
            continue
        solidity = cells / (bw * bh)
        if solidity < 0.4:
            continue
        box = (x0 * sx, y0 * sy, (x1 + 1) * sx, (y1 + 1) * sy)
        found.append(Region(COLOR_NAMES[cls], _shape(box, solidity), box, cells / total))
    found.sort(key=lambda r: -r.area)
    kept = sorted(found[:max_regions], key=lambda r: (round(r.box[1]), round(r.box[0])))
    return Scene(size=(width, height), background=COLOR_NAMES[background], regions=tuple(kept))


RUN_BUDGET = 4096
"""Most same-colour row runs the component search walks; busier grids are halved first."""

_CLASS_OF = {name: i for i, name in enumerate(COLOR_NAMES)}
# palette index -> colour class (several palette entries share a name); unused entries: white
_CLASS_LUT = [_CLASS_OF[name] for name in _INDEX_NAME]


def _shape(box: tuple[float, float, float, float], solidity: float) -> str:
    aspect = (box[2] - box[0]) / max(box[3] - box[1], 1e-9)
    roundish = 0.9 <= aspect <= 1.11
    if solidity >= 0.9:
        return "square" if roundish else "rectangle"
    if solidity >= 0.7:
        return "circle" if roundish else "ellipse"
    return "shape"


def _classify(rgb: Image.Image) -> Image.Image:
    """An ``L`` image of colour-class ids (nearest named colour), by Pillow's C code."""
    indexed = rgb.quantize(palette=_PALETTE_IMAGE, dither=Image.Dither.NONE)
    return indexed.point(_CLASS_LUT, "L")


def _runs(classes: Image.Image) -> int:
    """Number of same-colour row runs (colour changes along rows, plus one per row)."""
    shifted = ImageChops.offset(classes, 1, 0)
    changes = ImageChops.difference(classes, shifted).point([0] + [1] * 255)
    return classes.size[0] * classes.size[1] - changes.histogram()[0] + classes.size[1]


def _components(
    cls: bytes, gw: int, gh: int, background: int
) -> list[tuple[int, int, int, int, int, int]]:
    """Connected components of equal colour classes via row runs and union-find.

    Row runs are found by a compiled regular expression over the class bytes (C code), so
    the Python work is per run, not per cell.

    Returns:
        ``(class, cells, x0, y0, x1, y1)`` per component, in grid cells (inclusive).
    """
    run = re.compile(b"([^" + re.escape(bytes([background])) + b"])\\1*", re.DOTALL)
    parent: list[int] = []
    info: list[list[int]] = []  # cells, x0, y0, x1, y1
    colors: list[int] = []

    def find(a: int) -> int:
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    prev: list[tuple[int, int, int, int]] = []  # (start, end_exclusive, class, component)
    for y in range(gh):
        base = y * gw
        cur: list[tuple[int, int, int, int]] = []
        for m in run.finditer(cls, base, base + gw):
            x, end = m.start() - base, m.end() - base
            comp = len(parent)
            parent.append(comp)
            info.append([end - x, x, y, end - 1, y])
            colors.append(cls[m.start()])
            cur.append((x, end, cls[m.start()], comp))
        # union with overlapping runs of the same colour in the previous row
        j = 0
        for start, end, color, comp in cur:
            while j < len(prev) and prev[j][1] <= start:
                j += 1
            k = j
            while k < len(prev) and prev[k][0] < end:
                if prev[k][2] == color:
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
