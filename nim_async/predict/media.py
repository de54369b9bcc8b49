"""Load, orient, downscale and encode input images (and read videos), off the event loop.

A *source* is a path (``str`` or :class:`pathlib.Path`), an ``http(s)://`` URL, a ``data:``
URI, raw ``bytes``, or a :class:`PIL.Image.Image`. Supported image formats: JPEG, PNG, WebP, GIF
(first frame), BMP and TIFF. Videos (MP4 / MOV, WebM / Matroska) are sent as they are; see
:func:`load_media` and "Videos" below.

The pipeline runs in a bounded pool of worker threads, except for an image given as bytes of at
most :data:`INLINE_MAX_BYTES`, which is prepared on the event loop (cheaper than the hop):

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

Pillow's ``DecompressionBombWarning`` is caught where the image is opened (the global warning
filters are left as they are), so it never reaches the user's stderr.

URLs are fetched by the caller's HTTP client (the predictor passes its own), so this module
does no network IO itself.

Videos (:func:`load_media`): a source is a video when it is

* a path whose suffix is a video one (``.mp4``, ``.m4v``, ``.mov``, ``.qt``, ``.3gp``,
  ``.3g2``: ISO BMFF; ``.webm``, ``.mkv``: WebM / Matroska);
* bytes (also a downloaded URL's body) that start like a video container: an MP4 / MOV
  ``ftyp`` box at offset 4 (not an HEIF / AVIF image brand), or the EBML magic ``1A 45 DF A3``
  of WebM / Matroska;
* a ``data:video/...;base64,`` URI.

A video is not decoded or re-encoded here: the file's first bytes are checked to be the
container its name says, its size is checked against ``max_video_bytes``
(:data:`DEFAULT_MAX_VIDEO_BYTES`), and it is sent as a ``data:video/mp4`` or
``data:video/webm`` URI in a ``video_url`` part; the server decodes and samples the frames. An
``http(s)`` URL is downloaded by the client as images are (the server need not reach it) and
sent the same way. Other video containers (AVI, FLV, MPEG-TS, Ogg, ...) are refused with a
:class:`~nim_async.errors.MediaError` that says how to convert them.
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
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, ClassVar, Literal

from PIL import Image, ImageOps, UnidentifiedImageError

from nim_async.errors import MediaError
from nim_async.predict.sources import describe_source
from nim_async.protocol.geometry import fit_within_budget

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

INLINE_MAX_BYTES = 32 * 1024
"""Images given as bytes up to this size are prepared on the event loop, not in a worker thread:
the thread hop (~50-80 us of CPU) costs more than the work it moves (a 180x180 JPEG: ~80 us,
its validity check included; the worst 32 KiB JPEG ~0.4 ms). See ``benchmarks/README.md``."""

# In-memory images (bytes, data URIs) already seen to decode in full: the same bytes asked
# another question skip the decode check (bytes cache their hash; a hit costs one compare).
# Bounded: at most _DECODED_ENTRIES images of at most _DECODED_MAX_BYTES each are held.
_DECODED: dict[bytes, None] = {}
_DECODED_ENTRIES = 128
_DECODED_MAX_BYTES = 64 * 1024

DEFAULT_MAX_VIDEO_BYTES = 64 * 1024 * 1024
"""The largest video sent by default (bytes of the file; base64 makes the request a third
larger)."""

VIDEO_MIME_TYPES: dict[str, str] = {"mp4": "video/mp4", "webm": "video/webm"}
"""The MIME type a video is sent as, by container family."""

VIDEO_EXTENSIONS: dict[str, str] = {
    ".mp4": "mp4",
    ".m4v": "mp4",
    ".mov": "mp4",
    ".qt": "mp4",
    ".3gp": "mp4",
    ".3g2": "mp4",
    ".webm": "webm",
    ".mkv": "webm",
}
"""Path / URL suffixes read as videos, and the container family each must be."""

# Video suffixes of containers that are not sent (the server's decoder may not open them, and
# a request carrying one should fail here with how to convert it, not as a server 400).
_OTHER_VIDEO_EXTENSIONS = frozenset(
    {
        ".avi", ".flv", ".f4v", ".wmv", ".asf", ".mpeg", ".mpg", ".mpe", ".m2v", ".ogv",
        ".ogg", ".vob", ".ts", ".mts", ".m2ts", ".divx", ".xvid", ".rm", ".rmvb",
    }
)  # fmt: skip
# ISO BMFF major brands that are still images (HEIF / AVIF), not videos.
_IMAGE_BRANDS = frozenset({b"heic", b"heix", b"heim", b"heis", b"mif1", b"msf1", b"avif", b"avis"})
_FAMILY_NAME = {"mp4": "MP4 / MOV (an ftyp box at byte 4)", "webm": "WebM / Matroska (EBML)"}
_CONVERT_HINT = (
    "send MP4 or WebM instead (e.g. ffmpeg -i INPUT -c:v libx264 -pix_fmt yuv420p out.mp4)"
)

_PASS_THROUGH = {"JPEG": "image/jpeg", "PNG": "image/png", "WEBP": "image/webp"}
_LOSSLESS = {"PNG", "GIF", "BMP", "TIFF"}
_ORIENTATION_TAG = 0x0112

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


@dataclass(frozen=True, slots=True)
class EncodedVideo:
    """A video ready to send (the file as it is, base64-encoded; never decoded here).

    Attributes:
        data_uri: The ``data:video/...;base64,...`` URI (ASCII bytes) for a ``video_url`` part.
        mime: ``video/mp4`` (MP4 / MOV) or ``video/webm`` (WebM / Matroska).
        container: ``"mp4"`` or ``"webm"``, as sniffed from the first bytes.
        size_bytes: Size of the video file.
        source: A short description of the source, for messages.
        encode_seconds: Time spent reading, checking and base64-encoding it.
        original_size: Always ``None``: the frame size is the server's to read.
    """

    kind: ClassVar[Literal["video"]] = "video"
    original_size: ClassVar[None] = None

    data_uri: bytes
    mime: str
    container: str
    size_bytes: int
    source: str
    encode_seconds: float = 0.0


# --------------------------------------------------------------------------- worker pool

_EXECUTOR: ThreadPoolExecutor | None = None
_EXECUTOR_LOCK = threading.Lock()
_PIL_COPY_LOCK = threading.Lock()
# catch_warnings() saves and restores the process-wide filter list: two threads doing so at
# once could leave it changed for good, so the opens that use it take turns (headers only).
_WARNINGS_LOCK = threading.Lock()


def _executor() -> ThreadPoolExecutor:
    global _EXECUTOR
    if _EXECUTOR is None:
        with _EXECUTOR_LOCK:
            if _EXECUTOR is None:
                workers = max(2, min(8, os.cpu_count() or 2))
                _EXECUTOR = ThreadPoolExecutor(workers, thread_name_prefix="nim-async-media")
    return _EXECUTOR


# --------------------------------------------------------------------------- sources


def _is_url(source: str) -> bool:
    head = source[:8].lower()
    return head.startswith(("http://", "https://"))


def _suffix(source: object) -> str:
    """The lower-case suffix of a path or of a URL's path (``""`` for anything else)."""
    if isinstance(source, str):
        if source.startswith("data:"):
            return ""
        if _is_url(source):
            source = source.split("#", 1)[0].split("?", 1)[0]
            if source.count("/") < 3:  # http://host: no path
                return ""
        return os.path.splitext(source)[1].lower()
    if isinstance(source, os.PathLike):
        return os.path.splitext(str(os.fspath(source)))[1].lower()
    return ""


def video_suffix(source: object) -> str | None:
    """The video container family a path's or URL's suffix names, without any IO.

    Args:
        source: A source value.

    Returns:
        ``"mp4"`` (``.mp4``, ``.m4v``, ``.mov``, ...), ``"webm"`` (``.webm``, ``.mkv``) or
        ``None`` (not a video suffix, or not a path / URL).
    """
    return VIDEO_EXTENSIONS.get(_suffix(source))


def sniff_video(data: bytes | bytearray | memoryview) -> str | None:
    """The video container family of a file from its first bytes.

    Args:
        data: The file, or at least its first 12 bytes.

    Returns:
        ``"mp4"`` for an ISO BMFF file (``ftyp`` box at offset 4) whose major brand is not an
        HEIF / AVIF still image, ``"webm"`` for an EBML file (``1A 45 DF A3``: WebM /
        Matroska), else ``None``.
    """
    head = bytes(data[:12])
    if len(head) >= 12 and head[4:8] == b"ftyp":
        return None if head[8:12] in _IMAGE_BRANDS else "mp4"
    if head[:4] == b"\x1a\x45\xdf\xa3":
        return "webm"
    return None


def _other_video(data: bytes | bytearray | memoryview) -> str | None:
    """The name of a video container that is not sent (AVI, FLV, ...), from its first bytes."""
    head = bytes(data[:16])
    if head[:4] == b"RIFF" and head[8:12] == b"AVI ":
        return "AVI"
    if head[:3] == b"FLV":
        return "FLV"
    if head[:4] == b"OggS":
        return "Ogg"
    if head[:4] == b"\x30\x26\xb2\x75":
        return "ASF / WMV"
    if head[:4] in (b"\x00\x00\x01\xba", b"\x00\x00\x01\xb3"):
        return "MPEG program stream"
    if head[:4] == b".RMF":
        return "RealMedia"
    if len(data) > 188 and data[0] == 0x47 and data[188] == 0x47 and head[:3] != b"GIF":
        return "MPEG transport stream"
    return None


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
    suffix = _suffix(source)
    if suffix in _OTHER_VIDEO_EXTENSIONS:
        raise MediaError(
            f"unsupported video container {suffix!r} in {desc}: only MP4 / MOV and WebM / "
            f"Matroska videos are sent; {_CONVERT_HINT.replace('INPUT', desc)}",
            source=desc,
        )
    if isinstance(source, str) and (_is_url(source) or source.startswith("data:")):
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
    if isinstance(source, str) and _is_url(source):
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
    """Load an image (as :func:`load_image`) or read a video (see "Videos" above).

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
    if isinstance(source, str) and _is_url(source):
        payload = await _fetch(source, fetch, desc)
        if family is None and sniff_video(payload) is None:
            _refuse_other_video(payload, desc)
            return await _image(payload, max_pixels, desc, max_image_pixels)
        return await _video(payload, max_video_bytes, desc)
    if isinstance(source, bytes | bytearray | memoryview):
        if sniff_video(source) is not None:
            return await _video(source, max_video_bytes, desc)
        _refuse_other_video(source, desc)
    elif family is not None or (isinstance(source, str) and source[:11].lower() == "data:video/"):
        return await _video(source, max_video_bytes, desc)
    return await _image(payload, max_pixels, desc, max_image_pixels)


async def _fetch(url: str, fetch: FetchFn | None, desc: str) -> bytes:
    if fetch is None:
        raise MediaError("no HTTP client to fetch URLs with", source=desc)
    return await fetch(url)


async def _image(
    payload: object, max_pixels: int, desc: str, max_image_pixels: int
) -> EncodedImage:
    if isinstance(payload, bytes | bytearray | memoryview) and len(payload) <= INLINE_MAX_BYTES:
        return encode_image(payload, max_pixels, desc, max_image_pixels)
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(
        _executor(), encode_image, payload, max_pixels, desc, max_image_pixels
    )


async def _video(payload: object, max_video_bytes: int, desc: str) -> EncodedVideo:
    if isinstance(payload, bytes | bytearray | memoryview) and len(payload) <= INLINE_MAX_BYTES:
        return encode_video(payload, max_video_bytes, desc)
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(_executor(), encode_video, payload, max_video_bytes, desc)


def _refuse_other_video(data: bytes | bytearray | memoryview, desc: str) -> None:
    name = _other_video(data)
    if name is not None:
        raise MediaError(
            f"{desc} is a video in the {name} container; only MP4 / MOV and WebM / Matroska "
            f"videos are sent: "
            f"{_CONVERT_HINT}",
            source=desc,
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


def encode_video(
    source: object, max_video_bytes: int = DEFAULT_MAX_VIDEO_BYTES, desc: str | None = None
) -> EncodedVideo:
    """Read a video, check its container and size, and base64-encode it (blocking).

    The video is not decoded: its first bytes must be an MP4 / MOV ``ftyp`` box or the WebM /
    Matroska EBML header (:func:`sniff_video`); the server decodes the frames.

    Args:
        source: A path, bytes, or a ``data:video/...;base64,`` URI (URLs must be fetched first).
        max_video_bytes: The largest video file accepted.
        desc: Description of the source for messages (derived from ``source`` if omitted).

    Returns:
        The video as a ``data:video/mp4`` or ``data:video/webm`` URI.

    Raises:
        MediaError: naming the source and the fix, for a missing or empty file, a file over
            ``max_video_bytes``, bad base64, or bytes that are not MP4 / WebM.
    """
    desc = desc or describe_source(source)
    started = time.perf_counter()
    data = _video_bytes(source, max_video_bytes, desc)
    if not data:
        raise MediaError(f"the video {desc} is empty (0 bytes)", source=desc)
    _check_video_size(len(data), max_video_bytes, desc)
    container = sniff_video(data)
    if container is None:
        _refuse_other_video(data, desc)
        raise MediaError(
            f"{desc} is not a video this client sends: an MP4 / MOV file has an ftyp box at "
            f"byte 4 and a WebM / Matroska file starts with the EBML magic 1A 45 DF A3; its "
            f"first bytes are {bytes(data[:12]).hex(' ')}. {_CONVERT_HINT}",
            source=desc,
        )
    mime = VIDEO_MIME_TYPES[container]
    return EncodedVideo(
        data_uri=b"data:" + mime.encode() + b";base64," + base64.b64encode(data),
        mime=mime,
        container=container,
        size_bytes=len(data),
        source=desc,
        encode_seconds=time.perf_counter() - started,
    )


def _check_video_size(size: int, limit: int, desc: str) -> None:
    if size > limit:
        raise MediaError(
            f"the video {desc} is {size} bytes, over the cap of {limit} bytes "
            f"(max_video_bytes); cut or downscale it first (e.g. ffmpeg -i INPUT -t 60 "
            f"-vf scale=-2:720 out.mp4) or raise max_video_bytes",
            source=desc,
        )


def _video_bytes(source: object, limit: int, desc: str) -> bytes | bytearray | memoryview:
    if isinstance(source, bytes | bytearray | memoryview):
        return source
    if isinstance(source, str) and source.startswith("data:"):
        header, sep, payload = source.partition(",")
        if not sep or ";base64" not in header.lower():
            raise MediaError(
                "only base64 data URIs are supported (data:video/mp4;base64,...)", source=desc
            )
        _check_video_size(len(payload) * 3 // 4 - 2, limit, desc)  # before decoding it
        try:
            return base64.b64decode(payload, validate=True)
        except ValueError as exc:
            raise MediaError(f"invalid base64 in {desc}: {exc}", source=desc) from exc
    if not isinstance(source, str | os.PathLike):
        raise MediaError(f"unsupported video source {desc}", source=desc)
    path = Path(os.fspath(source)).expanduser()
    try:
        with path.open("rb") as fh:
            _check_video_size(os.fstat(fh.fileno()).st_size, limit, desc)  # before reading it
            return fh.read(limit + 1)
    except FileNotFoundError as exc:
        raise MediaError(f"video file not found: {desc}", source=desc) from exc
    except OSError as exc:
        raise MediaError(f"cannot read the video {desc}: {exc}", source=desc) from exc


def _open(
    source: object, desc: str
) -> tuple[Image.Image, str | None, IO[bytes] | None, bytes | None]:
    """Open lazily; return (image, format, file to close, raw bytes if already in memory)."""
    if isinstance(source, Image.Image):
        # The caller's image may be shared by concurrent calls: take a private copy (which
        # loads it) under a lock, in this worker thread, never on the event loop.
        with _PIL_COPY_LOCK:
            fmt = source.format
            if getattr(source, "n_frames", 1) > 1:
                source.seek(0)
            private = source.copy()
        return private, fmt, None, None
    if isinstance(source, str) and source.startswith("data:"):
        header, sep, payload = source.partition(",")
        if not sep or ";base64" not in header:
            raise MediaError("only base64 data URIs are supported", source=desc)
        try:
            raw = base64.b64decode(payload, validate=False)
        except ValueError as exc:
            raise MediaError(f"invalid base64 in {desc}", source=desc) from exc
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
    """``Image.open`` (header only) with Pillow's bomb warning kept from the user's stderr."""
    with _WARNINGS_LOCK, warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        return Image.open(fp)


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
            _check_pixels(img, max_image_pixels, desc, reduced=False)
            if raw is None or raw not in _DECODED:
                if fmt in ("JPEG", "MPO"):
                    # Every byte is still entropy-decoded (truncation is found) but the
                    # inverse DCT runs at 1/8 scale: half the cost of a full decode.
                    img.draft("RGB", (1, 1))
                img.load()  # the whole file decodes (a truncated or corrupt one raises here)
                if raw is not None and len(raw) <= _DECODED_MAX_BYTES:
                    if len(_DECODED) >= _DECODED_ENTRIES:
                        _DECODED.clear()
                    _DECODED[raw] = None
            if raw is None and fh is not None:
                fh.seek(0)
                raw = fh.read()
            return EncodedImage(
                b64=base64.b64encode(raw or b""),
                mime=_PASS_THROUGH[fmt],
                original_size=original,
                sent_size=original,
                source=desc,
                passed_through=True,
            )
        if not from_caller:
            if getattr(img, "n_frames", 1) > 1:
                img.seek(0)  # animations: the first frame
            if fmt in ("JPEG", "MPO") and target != original:
                # Decode at a reduced DCT scale (at least the target size): fast, low memory.
                draft_size = (target[1], target[0]) if orientation in (5, 6, 7, 8) else target
                img.draft("RGB", draft_size)
            _check_pixels(img, max_image_pixels, desc, reduced=fmt in ("JPEG", "MPO"))
        img.load()
        work = ImageOps.exif_transpose(img) if orientation != 1 else img
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
    finally:
        if fh is not None:
            fh.close()


def _orientation(img: Image.Image) -> int:
    try:
        value: Any = img.getexif().get(_ORIENTATION_TAG, 1)
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
