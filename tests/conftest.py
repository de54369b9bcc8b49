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
"""

from __future__ import annotations

import asyncio
import io
import socket
import sys
import urllib.request
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import pytest
from PIL import Image, ImageDraw

from nim_async.emulator import Emulator, EmulatorSettings

Shape = (
    tuple[str, tuple[float, float, float, float]]
    | tuple[str, tuple[float, float, float, float], str]
)
ImageFactory = Callable[..., bytes]
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
