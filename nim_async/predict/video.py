"""Read a video source and make it ready to send, without decoding it.

A source is a video (:func:`nim_async.predict.media.load_media` decides) when it is

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
:class:`~nim_async.errors.MediaError` that says how to convert them. The container rules are
IO-free and live in :mod:`nim_async.protocol.media`.
"""

from __future__ import annotations

import asyncio
import base64
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Literal

from nim_async.errors import MediaError
from nim_async.predict.media_pool import INLINE_MAX_BYTES, media_executor
from nim_async.predict.sources import describe_source
from nim_async.protocol.media import (
    VIDEO_MIME_TYPES,
    check_video_size,
    data_uri_payload,
    decode_base64,
    video_container,
)

__all__ = [
    "DEFAULT_MAX_VIDEO_BYTES",
    "EncodedVideo",
    "encode_video",
    "encode_video_in_worker",
]

DEFAULT_MAX_VIDEO_BYTES = 64 * 1024 * 1024
"""The largest video sent by default (bytes of the file; base64 makes the request a third
larger)."""


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


def encode_video(
    source: object, max_video_bytes: int = DEFAULT_MAX_VIDEO_BYTES, desc: str | None = None
) -> EncodedVideo:
    """Read a video, check its container and size, and base64-encode it (blocking).

    The video is not decoded: its first bytes must be an MP4 / MOV ``ftyp`` box or the WebM /
    Matroska EBML header (:func:`~nim_async.protocol.media.sniff_video`); the server decodes
    the frames.

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
    check_video_size(len(data), max_video_bytes, desc)
    container = video_container(data, desc)
    mime = VIDEO_MIME_TYPES[container]
    return EncodedVideo(
        data_uri=b"data:" + mime.encode() + b";base64," + base64.b64encode(data),
        mime=mime,
        container=container,
        size_bytes=len(data),
        source=desc,
        encode_seconds=time.perf_counter() - started,
    )


async def encode_video_in_worker(payload: object, max_video_bytes: int, desc: str) -> EncodedVideo:
    """:func:`encode_video` in the media worker pool (bytes up to ``INLINE_MAX_BYTES``: inline).

    Args:
        payload: A path, bytes (a URL's downloaded body included) or a ``data:video/`` URI.
        max_video_bytes: The largest video file accepted.
        desc: Description of the source for messages.

    Returns:
        The video ready to send.

    Raises:
        MediaError: as :func:`encode_video`.
    """
    if isinstance(payload, bytes | bytearray | memoryview) and len(payload) <= INLINE_MAX_BYTES:
        return encode_video(payload, max_video_bytes, desc)
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(
        media_executor(), encode_video, payload, max_video_bytes, desc
    )


def _video_bytes(source: object, limit: int, desc: str) -> bytes | bytearray | memoryview:
    """The video's bytes, each kind of source checked against ``limit`` before it is read."""
    if isinstance(source, bytes | bytearray | memoryview):
        return source
    if isinstance(source, str) and source.startswith("data:"):
        payload = data_uri_payload(source, desc, "data:video/mp4;base64,...")
        check_video_size(len(payload) * 3 // 4 - 2, limit, desc)  # before decoding it
        return decode_base64(payload, desc, validate=True)
    if not isinstance(source, str | os.PathLike):
        raise MediaError(f"unsupported video source {desc}", source=desc)
    path = Path(os.fspath(source)).expanduser()
    try:
        with path.open("rb") as fh:
            check_video_size(os.fstat(fh.fileno()).st_size, limit, desc)  # before reading it
            return fh.read(limit + 1)
    except FileNotFoundError as exc:
        raise MediaError(f"video file not found: {desc}", source=desc) from exc
    except OSError as exc:
        raise MediaError(f"cannot read the video {desc}: {exc}", source=desc) from exc
