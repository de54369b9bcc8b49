"""Images for the load: synthetic ones with a size distribution, or the files of a folder."""

from __future__ import annotations

import io
import random
from dataclasses import dataclass
from pathlib import Path

__all__ = ["BenchImage", "load_folder", "parse_sizes", "synthetic_images"]

_MIME = {".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".png": "image/png", ".webp": "image/webp"}


@dataclass(frozen=True, slots=True)
class BenchImage:
    """One encoded image.

    Attributes:
        data: The encoded bytes.
        mime: Their MIME type.
        size: ``(width, height)``.
        name: Where it came from.
    """

    data: bytes
    mime: str
    size: tuple[int, int]
    name: str


def parse_sizes(text: str) -> list[tuple[int, int]]:
    """Parse ``"640x480,1280x720"`` into ``[(640, 480), (1280, 720)]``.

    Raises:
        ValueError: on a malformed size.
    """
    sizes: list[tuple[int, int]] = []
    for part in text.split(","):
        part = part.strip().lower()
        if not part:
            continue
        w, sep, h = part.partition("x")
        if not sep or not w.isdigit() or not h.isdigit() or int(w) < 8 or int(h) < 8:
            raise ValueError(f"bad image size {part!r}; use WIDTHxHEIGHT, e.g. 640x480")
        sizes.append((int(w), int(h)))
    if not sizes:
        raise ValueError("no image sizes given")
    return sizes


def synthetic_images(
    count: int,
    sizes: list[tuple[int, int]],
    *,
    seed: int = 0,
    noise: float = 0.35,
    quality: int = 85,
) -> list[BenchImage]:
    """Make ``count`` JPEG images: coloured rectangles on white plus noise.

    Sizes are drawn uniformly from ``sizes``; the noise level sets how large the JPEG is
    (0 gives a few KB, 0.35 about 100 KB at 640x480, 1 is incompressible).

    Args:
        count: How many images.
        sizes: The ``(width, height)`` choices.
        seed: Random seed (the same seed gives the same images).
        noise: Blend weight of uniform noise, 0–1.
        quality: JPEG quality.
    """
    from PIL import Image, ImageDraw

    rng = random.Random(seed)
    colours = ["red", "green", "blue", "yellow", "purple", "orange", "black"]
    images: list[BenchImage] = []
    for i in range(count):
        w, h = rng.choice(sizes)
        img = Image.new("RGB", (w, h), "white")
        draw = ImageDraw.Draw(img)
        for _ in range(rng.randint(1, 4)):
            x0, y0 = rng.randrange(0, w // 2), rng.randrange(0, h // 2)
            x1, y1 = rng.randrange(x0 + 4, w), rng.randrange(y0 + 4, h)
            draw.rectangle((x0, y0, x1, y1), fill=rng.choice(colours))
        if noise > 0:
            grain = Image.frombytes("RGB", (w, h), rng.randbytes(w * h * 3))
            img = Image.blend(img, grain, noise)
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=quality)
        images.append(BenchImage(buf.getvalue(), "image/jpeg", (w, h), f"synthetic-{i}"))
    return images


def load_folder(folder: str | Path, *, limit: int | None = None) -> list[BenchImage]:
    """Read the JPEG/PNG/WebP files of ``folder`` (sorted by name), sent as they are.

    Raises:
        ValueError: when the folder holds no such image.
    """
    from PIL import Image

    paths = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in _MIME)
    if limit is not None:
        paths = paths[:limit]
    images = []
    for path in paths:
        data = path.read_bytes()
        with Image.open(io.BytesIO(data)) as img:
            size = img.size
        images.append(BenchImage(data, _MIME[path.suffix.lower()], size, path.name))
    if not images:
        raise ValueError(f"no .jpg/.png/.webp images in {folder}")
    return images
