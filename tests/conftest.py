"""Shared fixtures for every test directory: a running NIM emulator and test images.

* ``emulator``: a running :class:`nim_async.emulator.Emulator` with default settings on an
  ephemeral loopback port (``emulator.url``).
* ``start_emulator``: a factory; ``async with start_emulator(ttft_ms=2, fail_rate=0.5) as emu:``
  (keyword arguments are :class:`nim_async.emulator.EmulatorSettings` fields, plus an optional
  ``settings=`` base).
* ``failing_emulator``: a separate ``python -m nim_async.emulator --fail-rate 1 --fail-status
  503`` process (every inference answered 503); yields its port.
* ``image_factory``: ``image_factory(size=(640, 480), shapes=[("red", (x0, y0, x1, y1))],
  fmt="JPEG") -> bytes``: solid shapes drawn with Pillow on a white background. A shape may
  carry a third element ``"ellipse"`` (default ``"rectangle"``); ``background=`` changes the
  background colour.
* ``video_factory``: ``video_factory("mp4" | "webm", size=(64, 48), frames=10, fps=10) ->
  bytes``: a small real video built by hand (no encoder needed): Motion-JPEG frames (Pillow)
  in an MP4 (``ftyp``, ``mdat``, ``moov`` with a full sample table) or a WebM / Matroska file
  (EBML header, ``Info``, ``Tracks``, one ``Cluster`` of ``SimpleBlock`` s). FFmpeg / OpenCV
  decode both (checked with vLLM 0.32's own OpenCV video loader in the vLLM tier's venv).
* ``docker_test_exports`` (session): the exports of ``scripts/test-env.sh``'s env file
  (``NIM_TEST_REGISTRY``, ``NIM_TEST_IMAGE``, ...) once a Docker daemon answers, or a skip
  with the reason; the docker fixtures of tests/deployer, tests/sync, tests/hostile and
  tests/cli build their facts from it.
"""

from __future__ import annotations

import asyncio
import io
import os
import shlex
import socket
import struct
import sys
import urllib.request
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
from PIL import Image, ImageDraw

from nim_async.emulator import Emulator, EmulatorSettings

Shape = (
    tuple[str, tuple[float, float, float, float]]
    | tuple[str, tuple[float, float, float, float], str]
)
ImageFactory = Callable[..., bytes]
VideoFactory = Callable[..., bytes]
StartEmulator = Callable[..., Emulator]


@pytest.fixture
async def emulator() -> AsyncIterator[Emulator]:
    """A running emulator with default settings on 127.0.0.1 and an ephemeral port."""
    async with Emulator(EmulatorSettings(), host="127.0.0.1", port=0) as emu:
        yield emu


@pytest.fixture
async def start_emulator() -> AsyncIterator[StartEmulator]:
    """Factory of emulators: ``async with start_emulator(**settings_fields) as emu:``.

    Emulators a test started and did not stop are stopped at teardown.
    """
    made: list[Emulator] = []

    def factory(settings: EmulatorSettings | None = None, **overrides: Any) -> Emulator:
        emu = Emulator(settings, host="127.0.0.1", port=0, **overrides)
        made.append(emu)
        return emu

    yield factory
    for emu in made:
        await emu.stop()


@pytest.fixture
async def failing_emulator() -> AsyncIterator[int]:
    """An emulator process answering every inference with 503; yields its port."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "nim_async.emulator",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--fail-rate",
        "1",
        "--fail-status",
        "503",
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        for _ in range(300):
            try:
                await asyncio.to_thread(
                    urllib.request.urlopen, f"http://127.0.0.1:{port}/v1/health/live", None, 1
                )
                break
            except OSError:
                await asyncio.sleep(0.1)
        else:
            pytest.fail("the emulator did not start")
        yield port
    finally:
        proc.terminate()
        await proc.wait()


def _draw_image(
    size: tuple[int, int] = (640, 480),
    shapes: Sequence[Shape] = (),
    fmt: str = "JPEG",
    *,
    background: str = "white",
    quality: int = 95,
) -> bytes:
    img = Image.new("RGB", size, background)
    draw = ImageDraw.Draw(img)
    for shape in shapes:
        color, box = shape[0], shape[1]
        kind = shape[2] if len(shape) > 2 else "rectangle"  # type: ignore[misc]
        x0, y0, x1, y1 = box
        # Pillow's boxes are inclusive; draw [x0, x1) x [y0, y1) so the truth is ``box``.
        coords = (x0, y0, x1 - 1, y1 - 1)
        if kind == "ellipse":
            draw.ellipse(coords, fill=color)
        elif kind == "rectangle":
            draw.rectangle(coords, fill=color)
        else:
            raise ValueError(f"unknown shape kind {kind!r}")
    buf = io.BytesIO()
    if fmt.upper() in ("JPEG", "JPG"):
        img.save(buf, "JPEG", quality=quality)
    else:
        img.save(buf, fmt.upper())
    return buf.getvalue()


@pytest.fixture
def image_factory() -> ImageFactory:
    """Make test images: ``image_factory(size=(640, 480), shapes=[("red", box)], fmt="JPEG")``."""
    return _draw_image


def _jpeg_frames(size: tuple[int, int], count: int) -> list[bytes]:
    frames = []
    for i in range(count):
        buf = io.BytesIO()
        Image.new("RGB", size, (i * 23 % 256, 90, 170)).save(buf, "JPEG", quality=80)
        frames.append(buf.getvalue())
    return frames


def _box(kind: bytes, payload: bytes, full: tuple[int, int] | None = None) -> bytes:
    if full is not None:  # a "full box": version and flags first
        payload = struct.pack(">I", (full[0] << 24) | full[1]) + payload
    return struct.pack(">I", 8 + len(payload)) + kind + payload


def _mjpeg_mp4(size: tuple[int, int], frames: list[bytes], fps: int) -> bytes:
    (w, h), n, v0 = size, len(frames), (0, 0)
    ms = round(n * 1000 / fps)
    matrix = struct.pack(">9I", 0x10000, 0, 0, 0, 0x10000, 0, 0, 0, 0x40000000)
    ftyp = _box(b"ftyp", b"isom" + struct.pack(">I", 512) + b"isomiso2mp41")
    mdat = _box(b"mdat", b"".join(frames))
    mvhd = struct.pack(">4I", 0, 0, 1000, ms) + struct.pack(">IH", 0x10000, 0x100) + b"\0" * 10
    mvhd += matrix + b"\0" * 24 + struct.pack(">I", 2)
    tkhd = (
        struct.pack(">5I", 0, 0, 1, 0, ms)
        + b"\0" * 16
        + matrix
        + struct.pack(">2I", w << 16, h << 16)
    )
    entry = b"\0" * 6 + struct.pack(">H", 1) + b"\0" * 16
    entry += struct.pack(">2H3I", w, h, 0x480000, 0x480000, 0) + struct.pack(">H", 1) + b"\0" * 32
    entry += struct.pack(">Hh", 0x18, -1)
    sizes = b"".join(struct.pack(">I", len(f)) for f in frames)
    stbl = (
        _box(b"stsd", struct.pack(">I", 1) + _box(b"jpeg", entry), v0)
        + _box(b"stts", struct.pack(">3I", 1, n, 1), v0)
        + _box(b"stsc", struct.pack(">4I", 1, 1, n, 1), v0)
        + _box(b"stsz", struct.pack(">2I", 0, n) + sizes, v0)
        + _box(b"stco", struct.pack(">2I", 1, len(ftyp) + 8), v0)  # the frames start there
    )
    minf = _box(b"vmhd", b"\0" * 8, (0, 1)) + _box(
        b"dinf", _box(b"dref", struct.pack(">I", 1) + _box(b"url ", b"", (0, 1)), v0)
    )
    mdia = (
        _box(b"mdhd", struct.pack(">4I2H", 0, 0, fps, n, 0x55C4, 0), v0)
        + _box(b"hdlr", b"\0" * 4 + b"vide" + b"\0" * 12 + b"VideoHandler\0", v0)
        + _box(b"minf", minf + _box(b"stbl", stbl))
    )
    trak = _box(b"trak", _box(b"tkhd", tkhd, (0, 3)) + _box(b"mdia", mdia))
    return ftyp + mdat + _box(b"moov", _box(b"mvhd", mvhd, v0) + trak)


def _el(eid: bytes, payload: bytes) -> bytes:
    return eid + b"\x01" + len(payload).to_bytes(7, "big") + payload  # 8-byte sizes


def _uint(eid: bytes, value: int) -> bytes:
    return _el(eid, value.to_bytes(max(1, (value.bit_length() + 7) // 8), "big"))


def _mjpeg_webm(size: tuple[int, int], frames: list[bytes], fps: int) -> bytes:
    header = _uint(b"\x42\x86", 1) + _uint(b"\x42\xf7", 1) + _uint(b"\x42\xf2", 4)
    header += _uint(b"\x42\xf3", 8) + _el(b"\x42\x82", b"webm") + _uint(b"\x42\x87", 2)
    header += _uint(b"\x42\x85", 2)
    info = _uint(b"\x2a\xd7\xb1", 1_000_000) + _el(
        b"\x44\x89", struct.pack(">d", len(frames) * 1000 / fps)
    )
    info += _el(b"\x4d\x80", b"nim-async tests") + _el(b"\x57\x41", b"nim-async tests")
    video = _el(b"\xe0", _uint(b"\xb0", size[0]) + _uint(b"\xba", size[1]))
    track = _uint(b"\xd7", 1) + _uint(b"\x73\xc5", 1) + _uint(b"\x83", 1) + _el(b"\x86", b"V_MJPEG")
    blocks = b"".join(
        _el(b"\xa3", b"\x81" + struct.pack(">hB", round(i * 1000 / fps), 0x80) + frame)
        for i, frame in enumerate(frames)
    )
    segment = _el(b"\x15\x49\xa9\x66", info) + _el(b"\x16\x54\xae\x6b", _el(b"\xae", track + video))
    segment += _el(b"\x1f\x43\xb6\x75", _uint(b"\xe7", 0) + blocks)
    return _el(b"\x1a\x45\xdf\xa3", header) + _el(b"\x18\x53\x80\x67", segment)


def _make_video(
    container: str = "mp4", size: tuple[int, int] = (64, 48), frames: int = 10, fps: int = 10
) -> bytes:
    jpegs = _jpeg_frames(size, frames)
    if container == "mp4":
        return _mjpeg_mp4(size, jpegs, fps)
    if container == "webm":
        return _mjpeg_webm(size, jpegs, fps)
    raise ValueError(f"unknown container {container!r}")


@pytest.fixture
def video_factory() -> VideoFactory:
    """Make test videos: ``video_factory("mp4" | "webm", size=(64, 48), frames=10, fps=10)``."""
    return _make_video


TEST_ENV_FILE = Path(os.environ.get("NIM_TEST_STATE", "/tmp/nim-async-test-env")) / "env"
"""What ``scripts/test-env.sh up`` writes: ``export NAME=value`` lines."""


def read_env_file(path: Path) -> dict[str, str]:
    """The ``export NAME=value`` lines of a shell env file (``${...}`` references skipped)."""
    values: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line.startswith("export ") or "=" not in line:
            continue
        key, _, raw = line[len("export ") :].partition("=")
        if raw.startswith("${"):
            continue
        parts = shlex.split(raw)
        values[key] = parts[0] if parts else ""
    return values


async def _docker_answers() -> bool:
    from nim_async.deploy.docker import DockerClient
    from nim_async.errors import DockerUnavailableError

    try:
        async with DockerClient():
            return True
    except DockerUnavailableError:
        return False


@pytest.fixture(scope="session")
def env_file_reader() -> Callable[[Path], dict[str, str]]:
    """:func:`read_env_file`, for conftests in other folders (they cannot import this one)."""
    return read_env_file


@pytest.fixture(scope="session")
def docker_test_exports() -> dict[str, str]:
    """The local registry's and emulator image's facts (scripts/test-env.sh), or skip."""
    if not TEST_ENV_FILE.exists():
        pytest.skip(f"no test registry: {TEST_ENV_FILE} is missing (run `scripts/test-env.sh up`)")
    values = read_env_file(TEST_ENV_FILE)
    if not asyncio.run(_docker_answers()):
        pytest.skip("no Docker daemon answers (run `scripts/test-env.sh up`)")
    return values
