"""Pillow's warnings never reach the user's stderr (the ``nim-async`` command in a subprocess).

A JPEG whose EXIF block names a tag beyond its end (Pillow warns "Tag data larger than file",
once when the header is read and once per EXIF parse) and a PNG header declaring 10000x10000
pixels (Pillow's ``DecompressionBombWarning``), against the emulator; once with the default
warning filters and once with ``PYTHONWARNINGS=error``, where an escaped warning would raise.
"""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path
from typing import Any

import orjson
import pytest
from PIL import Image

from .conftest import cli_env, run_cli


def _broken_exif_jpeg(orientation: int = 6) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (64, 48), (200, 30, 30)).save(buf, "JPEG")
    jpeg = buf.getvalue()
    entries = struct.pack("<HHII", 0x0112, 3, 1, orientation)  # Orientation, SHORT
    entries += struct.pack("<HHII", 0x010E, 2, 5000, 0x100)  # ImageDescription past the end
    tiff = b"II*\x00" + struct.pack("<I", 8) + struct.pack("<H", 2) + entries + b"\0" * 4
    app1 = b"Exif\x00\x00" + tiff
    return jpeg[:2] + b"\xff\xe1" + struct.pack(">H", len(app1) + 2) + app1 + jpeg[2:]


def _huge_png_header(side: int) -> bytes:
    """A PNG that declares side x side pixels (no pixel data: it is refused from the header)."""
    chunks = [(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)), (b"IDAT", b"")]
    out = b"\x89PNG\r\n\x1a\n"
    for kind, data in chunks:
        out += (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )
    return out


def test_the_jpeg_really_makes_pillow_warn() -> None:
    with pytest.warns(UserWarning, match="Tag data larger than file"):
        Image.open(io.BytesIO(_broken_exif_jpeg())).getexif()


@pytest.mark.parametrize("warnings_env", ["", "error"])
async def test_a_broken_exif_block_is_read_quietly(
    tmp_path: Path, emulator: Any, warnings_env: str
) -> None:
    (tmp_path / "bad.jpg").write_bytes(_broken_exif_jpeg())
    env = cli_env(PYTHONWARNINGS=warnings_env)
    args = ("--url", emulator.url, "--task", "vqa")
    done = await run_cli("predict", "bad.jpg", *args, "--json", cwd=tmp_path, env=env)
    assert done.rc == 0, done.err
    assert done.err == ""  # HEAD: two "UserWarning: Tag data larger than file" lines
    assert orjson.loads(done.out)["image_size"] == [48, 64]  # orientation 6 still applied
    (tmp_path / "list.txt").write_text("bad.jpg\n")
    batch = await run_cli(
        "batch", "list.txt", *args, "--no-progress", "--out", "r.jsonl", cwd=tmp_path, env=env
    )
    assert batch.rc == 0, batch.err
    (summary,) = batch.err.splitlines()  # the summary alone (HEAD: also two warnings)
    assert summary.startswith("batch: 1 ok, 0 failed in ")


@pytest.mark.parametrize("warnings_env", ["", "error"])
async def test_a_pixel_bomb_is_one_line(tmp_path: Path, emulator: Any, warnings_env: str) -> None:
    (tmp_path / "bomb.png").write_bytes(_huge_png_header(10000))
    done = await run_cli(
        "predict",
        "bomb.png",
        "--url",
        emulator.url,
        "--task",
        "vqa",
        cwd=tmp_path,
        env=cli_env(PYTHONWARNINGS=warnings_env),
    )
    line = done.one_line_error()
    assert "bomb.png is 10000x10000 = 100000000 pixels" in line
    assert "max_image_pixels" in line
