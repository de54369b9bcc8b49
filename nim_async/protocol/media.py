"""What a media source is, read from its name or its first bytes, without any IO.

The rules :mod:`nim_async.predict.media` and :mod:`nim_async.predict.video` apply before they
read, decode or send anything, kept here so they can be read and tested as plain functions:

* which path / URL suffixes name a video (:data:`VIDEO_EXTENSIONS`) and which name a video
  container that is refused (:data:`REFUSED_VIDEO_EXTENSIONS`);
* which container a file is from its first bytes: MP4 / MOV (an ``ftyp`` box at offset 4 whose
  major brand is not an HEIF / AVIF still image), WebM / Matroska (the EBML magic
  ``1A 45 DF A3``), or a refused one (AVI, FLV, Ogg, ASF, MPEG-PS/TS, RealMedia);
* the video size cap (``max_video_bytes``) and the message that names the fix;
* the base64 payload of a ``data:`` URI (images and videos read it the same way).

Every refusal is a :class:`~nim_async.errors.MediaError` naming the source and what to do.
"""

from __future__ import annotations

import base64
import os

from nim_async.errors import MediaError

__all__ = [
    "CONVERT_HINT",
    "REFUSED_VIDEO_EXTENSIONS",
    "VIDEO_EXTENSIONS",
    "VIDEO_MIME_TYPES",
    "check_video_size",
    "data_uri_payload",
    "decode_base64",
    "is_http_url",
    "is_video_data_uri",
    "refuse_other_video",
    "refuse_video_suffix",
    "refused_video_container",
    "sniff_video",
    "source_suffix",
    "video_container",
    "video_suffix",
]

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

REFUSED_VIDEO_EXTENSIONS: frozenset[str] = frozenset(
    {
        ".avi", ".flv", ".f4v", ".wmv", ".asf", ".mpeg", ".mpg", ".mpe", ".m2v", ".ogv",
        ".ogg", ".vob", ".ts", ".mts", ".m2ts", ".divx", ".xvid", ".rm", ".rmvb",
    }
)  # fmt: skip
"""Suffixes of video containers that are not sent: the server's decoder may not open them, and
a request carrying one should fail here with how to convert it, not as a server 400."""

CONVERT_HINT = (
    "send MP4 or WebM instead (e.g. ffmpeg -i INPUT -c:v libx264 -pix_fmt yuv420p out.mp4)"
)
"""How to convert a refused video (``INPUT`` stands for the file)."""

# ISO BMFF major brands that are still images (HEIF / AVIF), not videos.
_IMAGE_BRANDS = frozenset({b"heic", b"heix", b"heim", b"heis", b"mif1", b"msf1", b"avif", b"avis"})

_Bytes = bytes | bytearray | memoryview


def is_http_url(text: str) -> bool:
    """Whether ``text`` is an ``http://`` or ``https://`` URL (case-insensitive scheme).

    Args:
        text: A source string.

    Returns:
        True for an http(s) URL; False for a path or a ``data:`` URI.
    """
    return text[:8].lower().startswith(("http://", "https://"))


def is_video_data_uri(text: str) -> bool:
    """Whether ``text`` is a ``data:video/...`` URI (case-insensitive).

    Args:
        text: A source string.
    """
    return text[:11].lower() == "data:video/"


def source_suffix(source: object) -> str:
    """The lower-case suffix of a path or of a URL's path.

    Args:
        source: A source value.

    Returns:
        The suffix with its dot (``".mp4"``); ``""`` for a ``data:`` URI, a URL without a path,
        bytes, an image object, or a name without a suffix.
    """
    if isinstance(source, str):
        if source.startswith("data:"):
            return ""
        if is_http_url(source):
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
    return VIDEO_EXTENSIONS.get(source_suffix(source))


def sniff_video(data: _Bytes) -> str | None:
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


def refused_video_container(data: _Bytes) -> str | None:
    """The name of a video container that is not sent, from its first bytes.

    Args:
        data: The file (the MPEG transport stream check reads byte 188).

    Returns:
        ``"AVI"``, ``"FLV"``, ``"Ogg"``, ``"ASF / WMV"``, ``"MPEG program stream"``,
        ``"RealMedia"`` or ``"MPEG transport stream"``; ``None`` for anything else.
    """
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


def refuse_other_video(data: _Bytes, desc: str) -> None:
    """Refuse bytes in a video container that is not sent (see :func:`refused_video_container`).

    Args:
        data: The file.
        desc: The source's description, for the message.

    Raises:
        MediaError: naming the container and how to convert it.
    """
    name = refused_video_container(data)
    if name is not None:
        raise MediaError(
            f"{desc} is a video in the {name} container; only MP4 / MOV and WebM / Matroska "
            f"videos are sent: {CONVERT_HINT}",
            source=desc,
        )


def refuse_video_suffix(suffix: str, desc: str) -> None:
    """Refuse a path / URL whose suffix names a video container that is not sent.

    Args:
        suffix: The source's suffix (:func:`source_suffix`).
        desc: The source's description, for the message.

    Raises:
        MediaError: for a suffix in :data:`REFUSED_VIDEO_EXTENSIONS` (``.avi``, ``.flv``, ...),
            saying how to convert the file.
    """
    if suffix in REFUSED_VIDEO_EXTENSIONS:
        raise MediaError(
            f"unsupported video container {suffix!r} in {desc}: only MP4 / MOV and WebM / "
            f"Matroska videos are sent; {CONVERT_HINT.replace('INPUT', desc)}",
            source=desc,
        )


def video_container(data: _Bytes, desc: str) -> str:
    """The container family of a video that is sent, or why it is not.

    Args:
        data: The file (at least its first 189 bytes for every check to apply).
        desc: The source's description, for the message.

    Returns:
        ``"mp4"`` or ``"webm"`` (:func:`sniff_video`).

    Raises:
        MediaError: for a refused container (:func:`refuse_other_video`) or bytes that are no
            video container at all, showing the first bytes and how to convert the file.
    """
    container = sniff_video(data)
    if container is None:
        refuse_other_video(data, desc)
        raise MediaError(
            f"{desc} is not a video this client sends: an MP4 / MOV file has an ftyp box at "
            f"byte 4 and a WebM / Matroska file starts with the EBML magic 1A 45 DF A3; its "
            f"first bytes are {bytes(data[:12]).hex(' ')}. {CONVERT_HINT}",
            source=desc,
        )
    return container


def check_video_size(size: int, limit: int, desc: str) -> None:
    """Refuse a video over the size cap.

    Args:
        size: Bytes of the video file.
        limit: The cap (``max_video_bytes``).
        desc: The source's description, for the message.

    Raises:
        MediaError: when ``size > limit``, saying how to cut the video or raise the cap.
    """
    if size > limit:
        raise MediaError(
            f"the video {desc} is {size} bytes, over the cap of {limit} bytes "
            f"(max_video_bytes); cut or downscale it first (e.g. ffmpeg -i INPUT -t 60 "
            f"-vf scale=-2:720 out.mp4) or raise max_video_bytes",
            source=desc,
        )


def data_uri_payload(uri: str, desc: str, example: str) -> str:
    """The base64 text of a ``data:`` URI (not yet decoded).

    Args:
        uri: The ``data:...;base64,...`` URI.
        desc: The source's description, for the message.
        example: A URI prefix the message shows (``"data:video/mp4;base64,..."``).

    Returns:
        Everything after the first comma.

    Raises:
        MediaError: for a URI without a comma or without ``;base64`` (any case) before it.
    """
    header, sep, payload = uri.partition(",")
    if not sep or ";base64" not in header.lower():
        raise MediaError(f"only base64 data URIs are supported ({example})", source=desc)
    return payload


def decode_base64(text: str, desc: str, *, validate: bool) -> bytes:
    """Decode the base64 payload of a ``data:`` URI.

    Args:
        text: The payload (:func:`data_uri_payload`).
        desc: The source's description, for the message.
        validate: Refuse characters outside the base64 alphabet (``False`` skips them, so a
            payload wrapped over lines still decodes).

    Returns:
        The decoded bytes.

    Raises:
        MediaError: for invalid base64 (bad padding; with ``validate``, any stray character).
    """
    try:
        return base64.b64decode(text, validate=validate)
    except ValueError as exc:
        raise MediaError(f"invalid base64 in {desc}: {exc}", source=desc) from exc
