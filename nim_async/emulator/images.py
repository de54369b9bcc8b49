"""Media of a request: data URIs and http(s) URLs turned into cached scenes and video headers.

Images become :class:`Scene` objects, videos :class:`~nim_async.emulator.video.VideoInfo`.

Fetching and analysing an image is the emulator's preprocessing: like a real server's, it runs
before the first token is scheduled and so adds to the time to first token.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import re
from collections import OrderedDict
from typing import TypeVar

from aiohttp import ClientError, ClientSession, ClientTimeout

from nim_async.emulator.rejection import bad
from nim_async.emulator.scene import Scene, analyse_bytes
from nim_async.emulator.video import VideoInfo, read_video_info

__all__ = ["ImageLoader", "decode_data_uri"]

_DATA_URI = re.compile(r"data:([\w.+-]+/[\w.+-]+)?((?:;[\w.+-]+=[^;,]*)*)(;base64)?,", re.ASCII)
_CACHE_SIZE = 64
_T = TypeVar("_T")
_THREAD_ABOVE = 32 * 1024  # bytes: smaller images are analysed on the loop (cheaper than a hop)


def decode_data_uri(url: str, kind: str = "image") -> bytes:
    """Decode a ``data:image/...;base64,...`` (or ``data:video/...``) URI.

    Args:
        url: The data URI.
        kind: The media type it must have (``image`` or ``video``).

    Raises:
        RequestError: 400 for a malformed URI, a type of another kind or bad base64.
    """
    m = _DATA_URI.match(url)
    if m is None:
        raise bad("Invalid data URI: expected data:<mime>;base64,<data>", "messages")
    if not m.group(3):
        raise bad(f"Invalid data URI: only base64-encoded {kind}s are supported", "messages")
    mime = m.group(1) or ""
    if mime and not mime.startswith(f"{kind}/"):
        article = "an" if kind[0] in "aeiou" else "a"
        raise bad(f"Invalid data URI: {mime!r} is not {article} {kind} type", "messages")
    try:
        return base64.b64decode(url[m.end() :], validate=True)
    except (binascii.Error, ValueError) as exc:
        raise bad(
            f"Invalid data URI: the base64 payload cannot be decoded ({exc})", "messages"
        ) from None


_Key = tuple[int, int, str]


def _key(url: str) -> _Key:
    """The cache key of a URL (a data URI may be megabytes): length, hash, last 48 characters."""
    return (len(url), hash(url), url[-48:])


def _recall(cache: OrderedDict[_Key, _T], key: _Key) -> _T | None:
    found = cache.get(key)
    if found is not None:
        cache.move_to_end(key)
    return found


def _remember(cache: OrderedDict[_Key, _T], key: _Key, value: _T) -> None:
    cache[key] = value
    if len(cache) > _CACHE_SIZE:
        cache.popitem(last=False)


class ImageLoader:
    """Loads and analyses request images, keeping the last 64 scenes."""

    def __init__(self) -> None:
        self._scenes: OrderedDict[_Key, Scene] = OrderedDict()
        self._videos: OrderedDict[_Key, VideoInfo] = OrderedDict()
        self._http: ClientSession | None = None

    async def scene(self, url: str) -> Scene:
        """Return the scene of the image at ``url`` (a data URI or an http(s) URL).

        Raises:
            RequestError: 400 when the image cannot be fetched or decoded.
        """
        key = _key(url)
        cached = _recall(self._scenes, key)
        if cached is not None:
            return cached
        data = await self._bytes(url, "image")
        try:
            if len(data) > _THREAD_ABOVE:
                scene = await asyncio.to_thread(analyse_bytes, data)
            else:
                scene = analyse_bytes(data)
        except ValueError as exc:
            raise bad(f"Failed to load image: {exc}", "messages") from None
        _remember(self._scenes, key, scene)
        return scene

    async def video(self, url: str) -> VideoInfo:
        """Return the header facts of the video at ``url`` (a data URI or an http(s) URL).

        Raises:
            RequestError: 400 when the video cannot be fetched or is not MP4/MOV/WebM.
        """
        key = _key(url)
        cached = _recall(self._videos, key)
        if cached is not None:
            return cached
        data = await self._bytes(url, "video")
        try:
            info = read_video_info(data)
        except ValueError as exc:
            raise bad(f"Failed to load video: {exc}", "messages") from None
        _remember(self._videos, key, info)
        return info

    async def _bytes(self, url: str, kind: str) -> bytes:
        if url.startswith("data:"):
            return decode_data_uri(url, kind)
        if url.startswith(("http://", "https://")):
            return await self._fetch(url, kind)
        raise bad(
            f"{kind}_url must be a data: URI (data:{kind}/...;base64,...) or an http(s) URL",
            "messages",
        )

    async def _fetch(self, url: str, kind: str = "image") -> bytes:
        if self._http is None:
            self._http = ClientSession(timeout=ClientTimeout(total=30))
        try:
            async with self._http.get(url) as resp:
                if resp.status != 200:
                    raise bad(f"fetching the {kind} at {url} returned HTTP {resp.status}")
                return await resp.read()
        except ClientError as exc:
            raise bad(f"cannot fetch the {kind} at {url}: {exc}") from None

    async def close(self) -> None:
        """Close the HTTP session used to fetch images (idempotent)."""
        if self._http is not None:
            await self._http.close()
            self._http = None
