"""Videos of a request: container headers read without a decoder, and the tokens they count.

The emulator never decodes frames. From an MP4 / MOV (ISO BMFF) file it reads the movie
header (``moov/mvhd``: timescale and duration) and the first track header with a picture
(``moov/trak/tkhd``: width and height); from a WebM / Matroska file the segment info
(``TimecodeScale``, ``Duration``) and the first video track's ``PixelWidth`` /
``PixelHeight``. What a file does not say falls back to :data:`FALLBACK_SECONDS` and
:data:`FALLBACK_SIZE`; bytes that are neither container are refused with 400, as a server
whose decoder cannot open them would.

The token rule (the emulator's, written after the outline of the Qwen-VL video processors,
not their exact frame sampler):

* ``fps`` is ``media_io_kwargs["video"]["fps"]``, else ``mm_processor_kwargs["fps"]``, else
  :data:`DEFAULT_FPS` (2);
* ``frames = ceil(duration * fps)``, clamped to ``[MIN_FRAMES, MAX_FRAMES]`` (4..768), then
  rounded up to an even number (frames are merged in pairs: temporal patch 2);
* each frame is resized by the model's image rule (Qwen2.5-VL: 28-pixel units, Qwen3-VL: 32)
  with the pixel budget ``min(budget, FRAME_MAX_CELLS * unit²)`` (at most 256 cells a frame);
* ``tokens = frames / 2 * cells_per_frame + 2`` (the vision start / end markers).

No IO.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from typing import Any

from nim_async.emulator.geometry import VisionFamily, image_tokens, vision_rule

__all__ = [
    "DEFAULT_FPS",
    "FALLBACK_SECONDS",
    "FALLBACK_SIZE",
    "FRAME_MAX_CELLS",
    "MAX_FRAMES",
    "MIN_FRAMES",
    "VideoInfo",
    "read_video_info",
    "requested_fps",
    "video_frames",
    "video_prompt_tokens",
]

DEFAULT_FPS = 2.0
"""Frames sampled per second of video when the request does not say."""

MIN_FRAMES = 4
"""Fewest frames sampled from a video."""

MAX_FRAMES = 768
"""Most frames sampled from a video."""

FRAME_MAX_CELLS = 256
"""Most vision cells (28×28 or 32×32) one frame is resized to."""

FALLBACK_SECONDS = 2.0
"""Duration assumed when the container does not give one."""

FALLBACK_SIZE = (640, 480)
"""Frame size assumed when the container does not give one."""

_MP4_CONTAINERS = frozenset({b"moov", b"trak", b"mdia", b"minf", b"edts"})
_EBML_MASTERS = frozenset({0x18538067, 0x1549A966, 0x1654AE6B, 0xAE, 0xE0})
_EBML_HEADER = 0x1A45DFA3
_EBML_CLUSTER = 0x1F43B675


@dataclass(frozen=True, slots=True)
class VideoInfo:
    """What the emulator knows of one video.

    Attributes:
        container: ``"mp4"`` or ``"webm"``.
        width: Frame width in pixels (``FALLBACK_SIZE`` when the header has none).
        height: Frame height in pixels.
        seconds: Duration in seconds (``FALLBACK_SECONDS`` when the header has none).
        measured: Whether size and duration both came from the file.
    """

    container: str
    width: int
    height: int
    seconds: float
    measured: bool


def read_video_info(data: bytes) -> VideoInfo:
    """Read a video's container header.

    Args:
        data: The whole file (or at least its header boxes / elements).

    Raises:
        ValueError: when ``data`` is neither an ISO BMFF (``ftyp`` first) nor an EBML file.
    """
    if len(data) >= 8 and data[4:8] == b"ftyp":
        return _finish("mp4", *_mp4_fields(data))
    if data[:4] == b"\x1a\x45\xdf\xa3":
        return _finish("webm", *_webm_fields(data))
    raise ValueError("the video is neither MP4/MOV (ftyp box) nor WebM/Matroska (EBML header)")


def _finish(container: str, size: tuple[int, int] | None, seconds: float | None) -> VideoInfo:
    ok_size = size is not None and size[0] > 0 and size[1] > 0
    ok_secs = seconds is not None and math.isfinite(seconds) and seconds > 0
    width, height = size if ok_size and size is not None else FALLBACK_SIZE
    secs = seconds if ok_secs and seconds is not None else FALLBACK_SECONDS
    return VideoInfo(container, width, height, secs, ok_size and ok_secs)


def _mp4_boxes(data: bytes, start: int, end: int) -> list[tuple[bytes, int, int]]:
    """``(type, payload_start, payload_end)`` of the boxes in ``data[start:end]``."""
    out: list[tuple[bytes, int, int]] = []
    pos = start
    while pos + 8 <= end:
        size, kind = struct.unpack_from(">I4s", data, pos)
        head = 8
        if size == 1:
            if pos + 16 > end:
                break
            (size,) = struct.unpack_from(">Q", data, pos + 8)
            head = 16
        elif size == 0:
            size = end - pos
        if size < head:
            break
        stop = min(pos + size, end)
        out.append((kind, pos + head, stop))
        pos += size
    return out


def _mp4_fields(data: bytes) -> tuple[tuple[int, int] | None, float | None]:
    size: tuple[int, int] | None = None
    seconds: float | None = None
    todo = [(0, len(data))]
    while todo:
        start, end = todo.pop(0)
        for kind, lo, hi in _mp4_boxes(data, start, end):
            if kind in _MP4_CONTAINERS:
                todo.append((lo, hi))
            elif kind == b"mvhd" and seconds is None and hi - lo >= 20:
                v1 = data[lo] == 1
                if v1 and hi - lo < 32:
                    continue
                if v1:
                    scale, duration = struct.unpack_from(">IQ", data, lo + 20)
                else:
                    scale, duration = struct.unpack_from(">II", data, lo + 12)
                seconds = duration / scale if scale else None
            elif kind == b"tkhd" and size is None and hi > lo:
                at = lo + (88 if data[lo] == 1 else 76)
                if at + 8 <= hi:
                    w, h = struct.unpack_from(">II", data, at)
                    if w >> 16 and h >> 16:
                        size = (w >> 16, h >> 16)
    return size, seconds


def _vint(data: bytes, pos: int, *, keep_marker: bool) -> tuple[int, int]:
    """Read an EBML variable-length integer; return ``(value, next_pos)`` (-1: unknown size)."""
    if pos >= len(data):
        raise IndexError(pos)
    first = data[pos]
    length = 1
    while length <= 8 and not first & (0x80 >> (length - 1)):
        length += 1
    if length > 8 or pos + length > len(data):
        raise IndexError(pos)
    value = first if keep_marker else first & ((0x80 >> (length - 1)) - 1)
    for b in data[pos + 1 : pos + length]:
        value = (value << 8) | b
    if not keep_marker and value == (1 << (7 * length)) - 1:
        value = -1
    return value, pos + length


def _webm_fields(data: bytes) -> tuple[tuple[int, int] | None, float | None]:
    scale = 1_000_000  # TimecodeScale default: nanoseconds per tick
    duration: float | None = None
    width = height = 0
    pos, end = 0, len(data)
    try:
        while pos < end:
            eid, pos = _vint(data, pos, keep_marker=True)
            size, pos = _vint(data, pos, keep_marker=False)
            if eid == _EBML_CLUSTER:
                break
            if eid in _EBML_MASTERS:
                continue  # descend: its children follow
            if size < 0:
                break
            body = data[pos : pos + size]
            if eid == 0x2AD7B1:
                scale = int.from_bytes(body, "big") or scale
            elif eid == 0x4489 and size in (4, 8):
                (duration,) = struct.unpack(">f" if size == 4 else ">d", body)
            elif eid == 0xB0 and not width:
                width = int.from_bytes(body, "big")
            elif eid == 0xBA and not height:
                height = int.from_bytes(body, "big")
            elif eid == _EBML_HEADER:
                pass
            pos += size
    except (IndexError, struct.error):
        pass  # a truncated header: keep what was read
    seconds = duration * scale / 1e9 if duration is not None else None
    return ((width, height) if width and height else None), seconds


def video_frames(seconds: float, fps: float) -> int:
    """Frames the emulator samples from ``seconds`` of video at ``fps`` (even, 4..768)."""
    frames = min(max(math.ceil(seconds * fps - 1e-9), MIN_FRAMES), MAX_FRAMES)
    return frames + frames % 2


def video_prompt_tokens(info: VideoInfo, fps: float, max_pixels: int, family: VisionFamily) -> int:
    """Prompt tokens of one video by the module's rule (frame pairs × cells per frame + 2).

    Args:
        info: The video's header facts.
        fps: Frames sampled per second.
        max_pixels: The model's pixel budget (a frame gets at most 256 cells of it).
        family: The vision processor (its resize unit).

    Raises:
        ValueError: for a frame aspect ratio the processor refuses (over 200).
    """
    unit = vision_rule(family).unit
    budget = min(max_pixels, FRAME_MAX_CELLS * unit * unit)
    cells = image_tokens(info.width, info.height, budget, family)
    return video_frames(info.seconds, fps) // 2 * cells + 2


def requested_fps(
    media_io_kwargs: dict[str, Any] | None, mm_kwargs: dict[str, Any] | None
) -> float:
    """The ``fps`` a request asks for (see the module rule), or :data:`DEFAULT_FPS`."""
    video = (media_io_kwargs or {}).get("video") or {}
    for source in (video, mm_kwargs or {}):
        fps = source.get("fps")
        if isinstance(fps, (int, float)) and not isinstance(fps, bool) and fps > 0:
            return float(fps)
    return DEFAULT_FPS
