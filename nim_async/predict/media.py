"""Load, orient, downscale and encode input images (and tell videos from them), off the loop.

:func:`load_image` prepares an image; :func:`load_media` also recognises a video and hands it to
:mod:`nim_async.predict.video`.

A *source* is a path (``str`` or :class:`pathlib.Path`), an ``http(s)://`` URL, a ``data:``
URI, raw ``bytes``, or a :class:`PIL.Image.Image`. Supported image formats: JPEG, PNG, WebP, GIF
(first frame), BMP and TIFF. Videos (MP4 / MOV, WebM / Matroska) are sent as they are: a path or
URL with a video suffix, bytes that start like one, or a ``data:video/`` URI (see
:mod:`nim_async.predict.video`; the IO-free rules are in :mod:`nim_async.protocol.media`).

The pipeline runs in a bounded pool of worker threads (:mod:`nim_async.predict.media_pool`),
except for an image given as bytes of at most :data:`INLINE_MAX_BYTES`, which is prepared on
the event loop (cheaper than the hop):

1. Open the image lazily (Pillow reads only the header first).
2. Apply the EXIF orientation, so the model sees the image upright.
3. Refuse an image whose decoded size would exceed the library's own pixel cap
   (:data:`DEFAULT_MAX_IMAGE_PIXELS`, configurable; far below Pillow's decompression-bomb
   limit), read from the header before anything is decoded. JPEG sources are decoded at
   reduced scale (``draft``, reduce-on-load) when that suffices, so a huge photo is never
   fully decoded and counts against the cap at its reduced size; other formats cannot be
   reduced while loading and are reduced right after (``resize(reducing_gap=...)``).
4. Downscale to the pixel budget (the model's ``max_pixels``), keeping the aspect ratio.
5. Check that the image decodes in full: a corrupt or truncated file is a
   :class:`~nim_async.errors.MediaError` before anything is sent.
6. Encode: a JPEG/PNG/WebP that needs no change is sent byte for byte; anything else is
   re-encoded (PNG for lossless sources, JPEG otherwise), then base64-encoded.

Pillow's warnings (``DecompressionBombWarning``, "Corrupt EXIF data" and the like) never
reach the user's stderr, nor become exceptions under ``-W error``: the Pillow calls that can
warn (opening, which reads the header and the EXIF block; reading the orientation; counting a
caller's frames) run with them ignored, and the EXIF orientation is applied from the value
already read (no second EXIF parse). The global warning filters are left as they are.

URLs are fetched by the caller's HTTP client (the predictor passes its own), so this module
does no network IO itself.
"""

from __future__ import annotations

import asyncio
import base64
import io
import os
import threading
import time
import warnings
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, ClassVar, Literal, TypeVar

from PIL import Image, UnidentifiedImageError

from nim_async.errors import MediaError
from nim_async.predict.media_pool import INLINE_MAX_BYTES, media_executor
from nim_async.predict.sources import describe_source
from nim_async.predict.video import (
    DEFAULT_MAX_VIDEO_BYTES,
    EncodedVideo,
    encode_video,
    encode_video_in_worker,
)
from nim_async.protocol.geometry import fit_within_budget
from nim_async.protocol.media import (
    VIDEO_EXTENSIONS,
    VIDEO_MIME_TYPES,
    data_uri_payload,
    decode_base64,
    is_http_url,
    is_video_data_uri,
    refuse_other_video,
    refuse_video_suffix,
    sniff_video,
    source_suffix,
    video_suffix,
)

__all__ = [
    "DEFAULT_MAX_IMAGE_PIXELS",
    "DEFAULT_MAX_VIDEO_BYTES",
    "INLINE_MAX_BYTES",
    "SUPPORTED_FORMATS",
    "VIDEO_EXTENSIONS",
    "VIDEO_MIME_TYPES",
    "EncodedImage",
    "EncodedVideo",
    "ImageSource",
    "describe_source",
    "encode_image",
    "encode_video",
    "load_image",
    "load_media",
    "sniff_video",
    "validate_source",
    "video_suffix",
]

ImageSource = str | os.PathLike[str] | bytes | bytearray | memoryview | Image.Image
"""Everything :func:`load_image` accepts."""

SUPPORTED_FORMATS: frozenset[str] = frozenset({"JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF", "MPO"})
"""Pillow format names accepted as input (MPO is the multi-picture JPEG some cameras write)."""

DEFAULT_MAX_IMAGE_PIXELS = 40_000_000
"""The largest image decoded by default, in pixels (after JPEG reduce-on-load): about 120 MB
of RGB. Pillow warns at 89 million pixels and refuses at 179 million."""

# In-memory images (bytes, data URIs) already seen to decode in full and pass through
# unchanged, with their (format, width, height): the same bytes asked another question skip
# the decode check, and bytes skip opening with Pillow and reading EXIF too (bytes cache their
# hash; a hit costs one compare). Bounded: at most _DECODED_ENTRIES images of at most
# _DECODED_MAX_BYTES each, _DECODED_BUDGET bytes in all, are held. A remembered image is
# prepared on the event loop whatever its size (no decode left to do; the bytes' hash, cached
# by the bytes object, is at most _DECODED_MAX_BYTES of hashing).
_DECODED: dict[bytes, tuple[str, int, int]] = {}
_DECODED_ENTRIES = 128
_DECODED_MAX_BYTES = 256 * 1024
_DECODED_BUDGET = 16 * 1024 * 1024
_decoded_bytes = 0  # held by _DECODED (approximate under threads: only a bound)

_PASS_THROUGH = {"JPEG": "image/jpeg", "PNG": "image/png", "WEBP": "image/webp"}
_LOSSLESS = {"PNG", "GIF", "BMP", "TIFF"}
_ORIENTATION_TAG = 0x0112
# EXIF orientation -> the transpose that makes the image upright (ImageOps.exif_transpose's).
_UPRIGHT = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_T = TypeVar("_T")

FetchFn = Callable[[str], Awaitable[bytes]]
"""An async function returning the body of an ``http(s)`` URL (the predictor provides one)."""


@dataclass(frozen=True, slots=True)
class EncodedImage:
    """An image ready to send.

    Attributes:
        b64: The base64 text of the encoded image, as ASCII bytes.
        mime: Its MIME type (``image/jpeg``, ``image/png``, ``image/webp``).
        original_size: ``(width, height)`` of the source after EXIF orientation; boxes are
            reported in pixels of this size.
        sent_size: ``(width, height)`` of the image as sent (after downscaling).
        source: A short description of the source, for messages.
        encode_seconds: Time spent loading, resizing and encoding (in the worker thread).
        passed_through: Whether the source bytes were sent unchanged.
    """

    kind: ClassVar[Literal["image"]] = "image"

    b64: bytes
    mime: str
    original_size: tuple[int, int]
    sent_size: tuple[int, int]
    source: str
    encode_seconds: float = 0.0
    passed_through: bool = False

    @property
    def data_uri(self) -> bytes:
        """The ``data:`` URI (ASCII bytes) for an OpenAI ``image_url`` part."""
        return b"data:" + self.mime.encode() + b";base64," + self.b64


# --------------------------------------------------------------------------- locks

_PIL_COPY_LOCK = threading.Lock()
# catch_warnings() saves and restores the process-wide filter list: two threads doing so at
# once could leave it changed for good, so the calls that use it take turns (header and EXIF
# reads only, never a decode).
_WARNINGS_LOCK = threading.Lock()


def _quietly(call: Callable[[], _T]) -> _T:
    """Run a Pillow call with every warning Pillow's own modules raise ignored."""
    with _WARNINGS_LOCK, warnings.catch_warnings():
        warnings.filterwarnings("ignore", module=r"PIL(\.|$)")
        return call()


# --------------------------------------------------------------------------- entry points


def validate_source(source: object) -> None:
    """Check a source cheaply, without reading the image or video.

    Used to fail fast (for example when a blocking stream is created) before any IO runs.

    Args:
        source: The value passed as ``source``.

    Raises:
        MediaError: for an unsupported type, an empty value, a path that does not exist or is
            not a file, or a path / URL naming a video container that is not sent (``.avi``,
            ``.flv``, ...: convert it to MP4 or WebM).
    """
    desc = describe_source(source)
    if isinstance(source, Image.Image):
        return
    if isinstance(source, (bytes, bytearray, memoryview)):
        if len(source) == 0:
            raise MediaError("the image source is empty (0 bytes)", source=desc)
        return
    suffix = source_suffix(source)
    refuse_video_suffix(suffix, desc)
    if isinstance(source, str) and (is_http_url(source) or source.startswith("data:")):
        return
    if isinstance(source, (str, os.PathLike)):
        noun = "video" if suffix in VIDEO_EXTENSIONS else "image"
        path = Path(os.fspath(source)).expanduser()
        if not os.fspath(source):
            raise MediaError("the image source is an empty path", source=desc)
        if not path.exists():
            raise MediaError(f"{noun} file not found: {desc}", source=desc)
        if not path.is_file():
            raise MediaError(f"{noun} path is not a file: {desc}", source=desc)
        return
    raise MediaError(
        f"unsupported image source type {type(source).__name__}: pass a path, an http(s) URL, "
        "bytes, or a PIL.Image.Image",
        source=desc,
    )


async def load_image(
    source: object,
    *,
    max_pixels: int,
    fetch: FetchFn | None = None,
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
) -> EncodedImage:
    """Load, orient, downscale and encode an image in a worker thread (small bytes: inline).

    Args:
        source: A path, ``http(s)`` URL, ``data:`` URI, bytes, or PIL image.
        max_pixels: The pixel budget; larger images are downscaled to fit.
        fetch: Async function that downloads a URL (required for URL sources); it enforces
            its own size cap and deadline.
        max_image_pixels: The largest image decoded (see :func:`encode_image`).

    Returns:
        The encoded image.

    Raises:
        MediaError: naming the source, for a missing file, unreadable or unsupported image,
            an unsupported source type, or a failed download.
    """
    validate_source(source)
    desc = describe_source(source)
    payload: object = source
    if isinstance(source, str) and is_http_url(source):
        payload = await _fetch(source, fetch, desc)
    return await _image(payload, max_pixels, desc, max_image_pixels)


async def load_media(
    source: object,
    *,
    max_pixels: int,
    fetch: FetchFn | None = None,
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
    max_video_bytes: int = DEFAULT_MAX_VIDEO_BYTES,
) -> EncodedImage | EncodedVideo:
    """Load an image (as :func:`load_image`) or read a video (:mod:`nim_async.predict.video`).

    A path or URL with a video suffix, bytes (or a downloaded body) that start like MP4 / WebM,
    and a ``data:video/...`` URI are videos; everything else is an image.

    Args:
        source: A path, ``http(s)`` URL, ``data:`` URI, bytes, or PIL image.
        max_pixels: The pixel budget for images.
        fetch: Async function that downloads a URL (required for URL sources).
        max_image_pixels: The largest image decoded.
        max_video_bytes: The largest video file sent.

    Returns:
        The encoded image, or the video ready to send.

    Raises:
        MediaError: naming the source, as :func:`load_image`, and for a video that is empty,
            over ``max_video_bytes``, or not the MP4 / WebM container it should be.
    """
    validate_source(source)
    desc = describe_source(source)
    family = video_suffix(source)
    payload: object = source
    if isinstance(source, str) and is_http_url(source):
        payload = await _fetch(source, fetch, desc)
        if family is None and sniff_video(payload) is None:
            refuse_other_video(payload, desc)
            return await _image(payload, max_pixels, desc, max_image_pixels)
        return await encode_video_in_worker(payload, max_video_bytes, desc)
    if isinstance(source, bytes | bytearray | memoryview):
        if sniff_video(source) is not None:
            return await encode_video_in_worker(source, max_video_bytes, desc)
        refuse_other_video(source, desc)
    elif family is not None or (isinstance(source, str) and is_video_data_uri(source)):
        return await encode_video_in_worker(source, max_video_bytes, desc)
    return await _image(payload, max_pixels, desc, max_image_pixels)


async def _fetch(url: str, fetch: FetchFn | None, desc: str) -> bytes:
    if fetch is None:
        raise MediaError("no HTTP client to fetch URLs with", source=desc)
    return await fetch(url)


async def _image(
    payload: object, max_pixels: int, desc: str, max_image_pixels: int
) -> EncodedImage:
    if isinstance(payload, bytes | bytearray | memoryview) and (
        len(payload) <= INLINE_MAX_BYTES
        or (type(payload) is bytes and len(payload) <= _DECODED_MAX_BYTES and payload in _DECODED)
    ):
        return encode_image(payload, max_pixels, desc, max_image_pixels)
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(
        media_executor(), encode_image, payload, max_pixels, desc, max_image_pixels
    )


# --------------------------------------------------------------------------- worker side


def encode_image(
    source: object,
    max_pixels: int,
    desc: str | None = None,
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
) -> EncodedImage:
    """Load, orient, downscale and encode an image (blocking; run it in a thread).

    Args:
        source: A path, ``data:`` URI, bytes, or PIL image (URLs must be fetched first).
        max_pixels: The pixel budget.
        desc: Description of the source for messages (derived from ``source`` if omitted).
        max_image_pixels: The largest image decoded, in pixels (a JPEG counts at the size it
            is reduced to on load); checked from the header, before decoding. A PIL image
            passed in is already decoded and not checked.

    Returns:
        The encoded image.

    Raises:
        MediaError: naming the source when it cannot be read or is not a supported image.
    """
    desc = desc or describe_source(source)
    started = time.perf_counter()
    try:
        result = _encode(source, max_pixels, desc, max_image_pixels)
    except MediaError:
        raise
    except (UnidentifiedImageError, Image.DecompressionBombError) as exc:
        raise MediaError(f"cannot read an image from {desc}: {exc}", source=desc) from exc
    except FileNotFoundError as exc:
        raise MediaError(f"image file not found: {desc}", source=desc) from exc
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        raise MediaError(f"cannot decode the image {desc}: {exc}", source=desc) from exc
    return EncodedImage(
        b64=result.b64,
        mime=result.mime,
        original_size=result.original_size,
        sent_size=result.sent_size,
        source=desc,
        encode_seconds=time.perf_counter() - started,
        passed_through=result.passed_through,
    )


def _open(
    source: object, desc: str
) -> tuple[Image.Image, str | None, IO[bytes] | None, bytes | None]:
    """Open lazily; return (image, format, file to close, raw bytes if already in memory)."""
    if isinstance(source, Image.Image):
        # The caller's image may be shared by concurrent calls: take a private copy (which
        # loads it) under a lock, in this worker thread, never on the event loop.
        with _PIL_COPY_LOCK:
            fmt = source.format
            if _quietly(lambda: getattr(source, "n_frames", 1)) > 1:
                _quietly(lambda: source.seek(0))
            private = source.copy()
        return private, fmt, None, None
    if isinstance(source, str) and source.startswith("data:"):
        payload = data_uri_payload(source, desc, "data:image/png;base64,...")
        raw = decode_base64(payload, desc, validate=False)  # wrapped base64 decodes too
        img = _open_quietly(io.BytesIO(raw))
        return img, img.format, None, raw
    if isinstance(source, (bytes, bytearray, memoryview)):
        raw = bytes(source)
        img = _open_quietly(io.BytesIO(raw))
        return img, img.format, None, raw
    if not isinstance(source, (str, os.PathLike)):
        raise MediaError(f"unsupported image source {desc}", source=desc)
    path = Path(source).expanduser()
    fh = path.open("rb")
    try:
        img = _open_quietly(fh)
        return img, img.format, fh, None
    except BaseException:
        fh.close()
        raise


def _open_quietly(fp: IO[bytes]) -> Image.Image:
    """``Image.open`` (header only; a JPEG's EXIF too) with Pillow's warnings ignored."""
    return _quietly(lambda: Image.open(fp))


def _check_pixels(img: Image.Image, limit: int, desc: str, reduced: bool) -> None:
    width, height = img.size
    if width * height > limit:
        how = " even at the reduced scale it is decoded at" if reduced else ""
        raise MediaError(
            f"the image {desc} is {width}x{height} = {width * height} pixels{how}, over the cap "
            f"of {limit} pixels (max_image_pixels); downscale it first or raise the cap",
            source=desc,
        )


def _encode(source: object, max_pixels: int, desc: str, max_image_pixels: int) -> EncodedImage:
    if isinstance(source, bytes):
        remembered = _remembered(source, max_pixels, desc, max_image_pixels)
        if remembered is not None:
            return remembered
    img, fmt, fh, raw = _open(source, desc)
    try:
        from_caller = raw is None and fh is None  # a PIL image: always re-encoded
        if not from_caller and fmt not in SUPPORTED_FORMATS:
            raise MediaError(
                f"unsupported image format {fmt} in {desc}; use JPEG, PNG, WebP, GIF, BMP or TIFF",
                source=desc,
            )
        if not from_caller and fmt not in ("JPEG", "MPO"):
            # Before the EXIF read: for a PNG, getexif() decodes the whole image.
            _check_pixels(img, max_image_pixels, desc, reduced=False)
        orientation = _orientation(img)
        width, height = img.size
        if orientation in (5, 6, 7, 8):
            width, height = height, width
        original = (width, height)
        target = fit_within_budget(width, height, max_pixels)
        if not from_caller and fmt in _PASS_THROUGH and orientation == 1 and target == original:
            return _pass_through(img, fmt, fh, raw, desc, max_image_pixels)
        if not from_caller:
            # An image just opened is at its first frame (animations: the first frame is sent).
            if fmt in ("JPEG", "MPO") and target != original:
                # Decode at a reduced DCT scale (at least the target size): fast, low memory.
                draft_size = (target[1], target[0]) if orientation in (5, 6, 7, 8) else target
                img.draft("RGB", draft_size)
            _check_pixels(img, max_image_pixels, desc, reduced=fmt in ("JPEG", "MPO"))
        return _reencode(img, fmt, orientation, (original, target), desc)
    finally:
        if fh is not None:
            fh.close()


def _remembered(
    source: bytes, max_pixels: int, desc: str, max_image_pixels: int
) -> EncodedImage | None:
    """Bytes that passed through unchanged before, if they still may: no Pillow at all."""
    known = _DECODED.get(source)
    if known is None:
        return None
    known_fmt, width, height = known
    size = (width, height)
    if width * height > max_image_pixels or fit_within_budget(width, height, max_pixels) != size:
        return None
    return _as_sent(source, known_fmt, size, desc)


def _pass_through(
    img: Image.Image,
    fmt: str,
    fh: IO[bytes] | None,
    raw: bytes | None,
    desc: str,
    max_image_pixels: int,
) -> EncodedImage:
    """An upright image within budget in a format the server reads: its own bytes are sent."""
    _check_pixels(img, max_image_pixels, desc, reduced=False)
    size = img.size
    if raw is None or raw not in _DECODED:
        if fmt in ("JPEG", "MPO"):
            # Every byte is still entropy-decoded (truncation is found) but the
            # inverse DCT runs at 1/8 scale: half the cost of a full decode.
            img.draft("RGB", (1, 1))
        img.load()  # the whole file decodes (a truncated or corrupt one raises here)
        if raw is not None and len(raw) <= _DECODED_MAX_BYTES:
            _remember(raw, fmt, size)
    if raw is None and fh is not None:
        fh.seek(0)
        raw = fh.read()
    return _as_sent(raw or b"", fmt, size, desc)


def _remember(raw: bytes, fmt: str, size: tuple[int, int]) -> None:
    global _decoded_bytes
    if len(_DECODED) >= _DECODED_ENTRIES or _decoded_bytes + len(raw) > _DECODED_BUDGET:
        _DECODED.clear()
        _decoded_bytes = 0
    _DECODED[raw] = (fmt, size[0], size[1])
    _decoded_bytes += len(raw)


def _as_sent(data: bytes, fmt: str, size: tuple[int, int], desc: str) -> EncodedImage:
    """The image's own bytes, sent unchanged."""
    return EncodedImage(
        b64=base64.b64encode(data),
        mime=_PASS_THROUGH[fmt],
        original_size=size,
        sent_size=size,
        source=desc,
        passed_through=True,
    )


def _reencode(
    img: Image.Image,
    fmt: str | None,
    orientation: int,
    sizes: tuple[tuple[int, int], tuple[int, int]],
    desc: str,
) -> EncodedImage:
    """Decode, turn upright, convert to RGB, resize and encode (PNG or JPEG).

    ``sizes`` is (upright size as opened, target): a JPEG draft may already have shrunk ``img``.
    """
    original, target = sizes
    img.load()
    method = _UPRIGHT.get(orientation)
    work = img.transpose(method) if method is not None else img
    work = _to_rgb(work)
    if work.size != target:
        work = work.resize(target, Image.Resampling.LANCZOS, reducing_gap=3.0)
    buf = io.BytesIO()
    if fmt is None or fmt in _LOSSLESS:
        work.save(buf, format="PNG", compress_level=1)
        mime = "image/png"
    else:
        work.save(buf, format="JPEG", quality=92)
        mime = "image/jpeg"
    return EncodedImage(
        b64=base64.b64encode(buf.getbuffer()),
        mime=mime,
        original_size=original,
        sent_size=work.size,
        source=desc,
    )


def _orientation(img: Image.Image) -> int:
    try:
        if img.format == "PNG" and "exif" not in img.info:
            img.load()  # its eXIf chunk may follow the pixels: decode here, not under the lock
        value: Any = _quietly(img.getexif).get(_ORIENTATION_TAG, 1)
    except Exception:  # a broken EXIF block must not make the image unreadable
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode == "RGB":
        return img
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    return img.convert("RGB")
