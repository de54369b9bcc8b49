"""The media pipeline: sources, formats, EXIF orientation, pixel budget, clear errors."""

from __future__ import annotations

import asyncio
import base64
import io
import random
import threading
from pathlib import Path

import pytest
from PIL import Image

from nim_async.errors import MediaError
from nim_async.predict.media import describe_source, encode_image, load_image, validate_source

BUDGET = 1280 * 28 * 28


def make_image(size: tuple[int, int] = (64, 48), fmt: str = "PNG", **save: object) -> bytes:
    img = Image.new("RGB", size, "white")
    img.paste((255, 0, 0), (0, 0, size[0] // 2, size[1] // 2))
    buf = io.BytesIO()
    img.save(buf, format=fmt, **save)
    return buf.getvalue()


def decoded(b64: bytes) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(b64)))


async def test_small_jpeg_png_webp_pass_through_unchanged(tmp_path: Path) -> None:
    for fmt, mime in (("JPEG", "image/jpeg"), ("PNG", "image/png"), ("WEBP", "image/webp")):
        data = make_image(fmt=fmt)
        path = tmp_path / f"x.{fmt.lower()}"
        path.write_bytes(data)
        for source in (data, path, str(path)):
            enc = await load_image(source, max_pixels=BUDGET)
            assert enc.passed_through
            assert enc.mime == mime
            assert base64.b64decode(enc.b64) == data
            assert enc.original_size == enc.sent_size == (64, 48)
            assert enc.data_uri.startswith(f"data:{mime};base64,".encode())


async def test_gif_bmp_tiff_are_reencoded_losslessly() -> None:
    for fmt in ("GIF", "BMP", "TIFF"):
        enc = await load_image(make_image(fmt=fmt), max_pixels=BUDGET)
        assert not enc.passed_through
        assert enc.mime == "image/png"
        img = decoded(enc.b64)
        assert img.size == (64, 48)
        assert img.convert("RGB").getpixel((5, 5)) == (255, 0, 0)


async def test_pil_image_source_rgba_composited_on_white() -> None:
    img = Image.new("RGBA", (40, 30), (0, 0, 0, 0))
    img.paste((0, 0, 255, 255), (0, 0, 20, 30))
    enc = await load_image(img, max_pixels=BUDGET)
    out = decoded(enc.b64).convert("RGB")
    assert out.getpixel((5, 5)) == (0, 0, 255)
    assert out.getpixel((35, 5)) == (255, 255, 255)
    assert enc.original_size == (40, 30)


async def test_data_uri_source() -> None:
    data = make_image(fmt="PNG")
    uri = "data:image/png;base64," + base64.b64encode(data).decode()
    enc = await load_image(uri, max_pixels=BUDGET)
    assert base64.b64decode(enc.b64) == data
    assert "data URI" in describe_source(uri)


async def test_exif_orientation_applied() -> None:
    img = Image.new("RGB", (80, 40), "white")
    img.paste((255, 0, 0), (0, 0, 10, 10))  # red top-left as stored
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    buf = io.BytesIO()
    img.save(buf, format="JPEG", exif=exif, quality=95)
    enc = await load_image(buf.getvalue(), max_pixels=BUDGET)
    assert not enc.passed_through
    assert enc.original_size == (40, 80)
    out = decoded(enc.b64).convert("RGB")
    assert out.size == (40, 80)
    # after a 90° clockwise turn the stored top-left corner is at the top-right
    r, g, b = out.getpixel((35, 4))
    assert r > 200
    assert g < 60
    assert b < 60


async def test_downscaled_to_the_pixel_budget_keeping_original_size() -> None:
    data = make_image((2000, 1000), fmt="JPEG")
    enc = await load_image(data, max_pixels=200_000)
    w, h = enc.sent_size
    assert w * h <= 200_000
    assert abs(w / h - 2.0) < 0.02
    assert enc.original_size == (2000, 1000)
    assert decoded(enc.b64).size == (w, h)
    assert enc.encode_seconds > 0


async def test_huge_jpeg_is_draft_decoded_within_budget() -> None:
    data = make_image((6000, 4000), fmt="JPEG", quality=50)
    enc = await load_image(data, max_pixels=BUDGET)
    assert enc.sent_size[0] * enc.sent_size[1] <= BUDGET
    assert enc.original_size == (6000, 4000)


async def test_work_runs_off_the_event_loop_thread() -> None:
    loop_thread = threading.get_ident()
    seen: list[int] = []

    img = Image.new("RGB", (30, 30), "green")
    # The worker thread does the encoding: observe which thread saves the PNG.
    real_save = Image.Image.save

    def save(self: Image.Image, *args: object, **kwargs: object) -> None:
        seen.append(threading.get_ident())
        real_save(self, *args, **kwargs)  # type: ignore[arg-type]

    Image.Image.save = save  # type: ignore[method-assign]
    try:
        await load_image(img, max_pixels=BUDGET)
    finally:
        Image.Image.save = real_save  # type: ignore[method-assign]
    assert seen
    assert all(t != loop_thread for t in seen)


async def test_many_concurrent_loads() -> None:
    sources = [make_image((50 + i, 40), fmt="BMP") for i in range(40)]
    results = await asyncio.gather(*(load_image(s, max_pixels=BUDGET) for s in sources))
    assert [r.original_size[0] for r in results] == [50 + i for i in range(40)]


async def test_missing_file_names_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "nope.jpg"
    with pytest.raises(MediaError, match="not found") as info:
        await load_image(missing, max_pixels=BUDGET)
    assert str(missing) in str(info.value)
    assert info.value.source == str(missing)
    with pytest.raises(MediaError, match="not a file"):
        validate_source(tmp_path)


async def test_unreadable_bytes_and_file(tmp_path: Path) -> None:
    with pytest.raises(MediaError, match="cannot read an image") as info:
        await load_image(b"this is not an image", max_pixels=BUDGET)
    assert info.value.source == "<20 bytes>"
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG garbage")
    with pytest.raises(MediaError) as info2:
        await load_image(bad, max_pixels=BUDGET)
    assert str(bad) in str(info2.value)


async def test_truncated_image_that_must_be_decoded(tmp_path: Path) -> None:
    data = make_image((3000, 2000), fmt="PNG")
    with pytest.raises(MediaError, match="cannot decode") as info:
        await load_image(data[: len(data) // 2], max_pixels=100_000)
    assert isinstance(info.value, ValueError)


async def test_unsupported_format_and_type() -> None:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, format="PPM")
    with pytest.raises(MediaError, match="unsupported image format PPM"):
        await load_image(buf.getvalue(), max_pixels=BUDGET)
    with pytest.raises(MediaError, match="unsupported image source type int"):
        await load_image(42, max_pixels=BUDGET)
    with pytest.raises(MediaError, match="empty"):
        await load_image(b"", max_pixels=BUDGET)


async def test_url_without_fetcher_is_an_error() -> None:
    with pytest.raises(MediaError, match="no HTTP client"):
        await load_image("http://127.0.0.1:1/x.png", max_pixels=BUDGET)


def test_encode_image_is_usable_synchronously() -> None:
    enc = encode_image(make_image(fmt="GIF"), BUDGET)
    assert enc.sent_size == (64, 48)
    assert enc.source == "<" + str(len(make_image(fmt="GIF"))) + " bytes>"


async def test_one_lazily_opened_pil_image_shared_by_concurrent_calls(tmp_path: Path) -> None:
    path = tmp_path / "shared.jpg"
    path.write_bytes(make_image((300, 200), fmt="JPEG"))
    shared = Image.open(path)  # lazy: pixels not loaded yet
    results = await asyncio.gather(*(load_image(shared, max_pixels=BUDGET) for _ in range(20)))
    assert {r.sent_size for r in results} == {(300, 200)}
    assert {r.mime for r in results} == {"image/jpeg"}
    # a caller's image of any Pillow format is accepted (it is re-encoded)
    buf = io.BytesIO()
    Image.new("L", (8, 8), 128).save(buf, format="PPM")
    enc = await load_image(Image.open(io.BytesIO(buf.getvalue())), max_pixels=BUDGET)
    assert enc.sent_size == (8, 8)


async def test_remembered_bytes_give_the_same_encoding_and_still_obey_both_caps(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Bytes seen to pass through are not opened again, yet a repeat is the same encoding,
    a lower pixel budget still resizes them and a lower decode cap still refuses them."""
    from nim_async.predict import media

    data = make_image((90, 70), fmt="JPEG", quality=80) + b""  # a bytes object of its own
    first = await load_image(data, max_pixels=BUDGET)
    opened: list[object] = []
    real_open = media._open_quietly
    monkeypatch.setattr(media, "_open_quietly", lambda fp: opened.append(fp) or real_open(fp))
    again = await load_image(bytes(bytearray(data)), max_pixels=BUDGET)  # equal, not identical
    assert first.passed_through
    assert _same(again, first)
    assert opened == []  # neither Pillow nor the EXIF read ran for the repeat
    smaller = await load_image(data, max_pixels=40 * 28)
    assert not smaller.passed_through
    assert smaller.original_size == (90, 70)
    assert smaller.sent_size[0] * smaller.sent_size[1] <= 40 * 28
    with pytest.raises(MediaError, match="max_image_pixels"):
        await load_image(data, max_pixels=BUDGET, max_image_pixels=90 * 70 - 1)
    assert _same(await load_image(data, max_pixels=BUDGET), first)


def _noisy_jpeg(size: tuple[int, int], seed: int) -> bytes:
    noise = random.Random(seed).randbytes(size[0] * size[1] * 3)
    buf = io.BytesIO()
    Image.frombytes("RGB", size, noise).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


async def test_a_remembered_image_above_the_inline_size_skips_the_worker_thread(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A repeated image of some 100 KB (a VQA run asking several questions of one picture)
    is checked once in the worker; the repeats are prepared on the loop, with no hop."""
    from nim_async.predict import media

    data = _noisy_jpeg((200, 200), seed=1)
    assert media.INLINE_MAX_BYTES < len(data) <= media._DECODED_MAX_BYTES
    first = await load_image(data, max_pixels=BUDGET)
    assert first.passed_through

    def no_worker() -> object:
        raise AssertionError("a remembered image went to the worker thread")

    monkeypatch.setattr(media, "media_executor", no_worker)
    assert _same(await load_image(data, max_pixels=BUDGET), first)
    with pytest.raises(AssertionError, match="worker thread"):  # an unseen one still goes there
        await load_image(_noisy_jpeg((200, 200), seed=2), max_pixels=BUDGET)


def test_remembered_images_are_bounded_in_bytes(monkeypatch: pytest.MonkeyPatch) -> None:
    from nim_async.predict import media

    monkeypatch.setattr(media, "_DECODED", {})
    monkeypatch.setattr(media, "_decoded_bytes", 0)
    images = [_noisy_jpeg((120, 120), seed=i) for i in range(6)]
    monkeypatch.setattr(media, "_DECODED_BUDGET", 2 * max(len(d) for d in images))
    for data in images:
        assert media.encode_image(data, BUDGET).passed_through
        assert sum(len(k) for k in media._DECODED) <= media._DECODED_BUDGET
    assert images[-1] in media._DECODED


def _same(a: object, b: object) -> bool:
    """Equal in everything but how long the encoding took."""
    fields = ("b64", "mime", "original_size", "sent_size", "source", "passed_through")
    return all(getattr(a, f) == getattr(b, f) for f in fields)
