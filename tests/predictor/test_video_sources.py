"""Video sources through the predictor (issue 13): what is sent, and what is refused.

A video (a path or URL ending .mp4 / .webm, MP4 or WebM bytes, a ``data:video/`` URI) goes in a
``video_url`` part as a ``data:video/mp4`` / ``data:video/webm`` URI, with ``media_io_kwargs``
keyed by modality (vLLM 0.32's ``dict[str, dict]``; a flat ``{"fps": 2}`` is a 400 there and in
the emulator). The requests go over real HTTP to the emulator, through a recording proxy, so
each test sees the exact body the emulator received and the emulator's answer to it. The videos
are real (``video_factory``: Motion-JPEG frames in MP4 / WebM, decodable by FFmpeg / OpenCV).

The emulator is a test double: its captions describe a video's container header, not a model's
view of its frames.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import ClientSession, web

from nim_async import AsyncNIMPredictor, MediaError, NIMPredictor, NIMSamplingParams
from nim_async.predict.media import (
    DEFAULT_MAX_VIDEO_BYTES,
    EncodedVideo,
    load_media,
    sniff_video,
    validate_source,
    video_suffix,
)
from nim_async.protocol import wire
from nim_async.results import FreeformCaption, FreeformResponse, VQAResponse

MODEL = "cosmos-reason2-2b"
BUDGET = 1_000_000


class Proxy:
    """Forwards every request to the emulator and records the chat bodies it received."""

    def __init__(self, target: str) -> None:
        self.target = target
        self.bodies: list[dict[str, Any]] = []
        self.session: ClientSession | None = None
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        data = await request.read()
        if request.method == "POST" and request.path == "/v1/chat/completions":
            self.bodies.append(orjson.loads(data))
        assert self.session is not None
        headers = {"content-type": request.headers.get("content-type", "application/json")}
        async with self.session.request(
            request.method, self.target + request.path_qs, data=data or None, headers=headers
        ) as r:
            body = await r.read()
            kind = r.headers.get("content-type", "application/json")
            return web.Response(status=r.status, body=body, headers={"content-type": kind})

    def user_parts(self, index: int = -1) -> list[dict[str, Any]]:
        """The content parts of the last user message of a recorded body."""
        messages = self.bodies[index]["messages"]
        parts: list[dict[str, Any]] = messages[-1]["content"]
        return parts


@pytest.fixture
async def proxied(start_emulator: Any) -> AsyncIterator[Proxy]:
    """The emulator serving cosmos-reason2-2b behind a recording :class:`Proxy`."""
    async with start_emulator(served_model_name=MODEL) as emu:
        proxy = Proxy(emu.url)
        app = web.Application(client_max_size=256 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", proxy.handle)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        proxy.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
        async with ClientSession() as session:
            proxy.session = session
            try:
                yield proxy
            finally:
                await runner.cleanup()


@pytest.fixture
async def file_server(tmp_path: Path) -> AsyncIterator[tuple[str, list[str]]]:
    """A loopback HTTP server for ``tmp_path/www``: yields its URL and the paths it served."""
    root = tmp_path / "www"
    root.mkdir()
    served: list[str] = []

    async def get(request: web.Request) -> web.StreamResponse:
        served.append(request.path)
        path = root / request.match_info["name"]
        if not path.is_file():
            return web.Response(status=404)
        return web.Response(body=path.read_bytes(), content_type="application/octet-stream")

    app = web.Application()
    app.router.add_get("/{name}", get)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}", served
    finally:
        await runner.cleanup()


def _uri(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


VIDEO_PARAMS = NIMSamplingParams(
    max_tokens=512,
    media_io_kwargs={"fps": 2.0},  # vi-sdk's flat form
    mm_processor_kwargs={"shortest_edge": 336, "longest_edge": 672},
)


# ------------------------------------------------------------------ what is sent


@pytest.mark.parametrize("container", ["mp4", "webm"])
@pytest.mark.parametrize("form", ["path", "pathlib", "bytes", "data-uri"])
async def test_video_goes_as_video_url_with_keyed_media_io_kwargs(
    proxied: Proxy, video_factory: Any, tmp_path: Path, container: str, form: str
) -> None:
    video = video_factory(container, size=(64, 48), frames=10, fps=10)
    mime = f"video/{container}"
    path = tmp_path / f"clip.{container}"
    path.write_bytes(video)
    source: object = {
        "path": str(path),
        "pathlib": path,
        "bytes": video,
        "data-uri": _uri(video, mime),
    }[form]
    async with AsyncNIMPredictor(MODEL, "freeform", base_url=proxied.url) as p:
        response = await p(source, "What happens?", VIDEO_PARAMS)

    body = proxied.bodies[-1]
    video_part, text_part = proxied.user_parts()
    assert video_part == {"type": "video_url", "video_url": {"url": _uri(video, mime)}}
    assert text_part == {"type": "text", "text": "What happens?"}
    assert not any(part["type"] == "image_url" for part in proxied.user_parts())
    assert body["media_io_kwargs"] == {"video": {"fps": 2.0}}  # keyed by modality
    assert body["mm_processor_kwargs"] == {"shortest_edge": 336, "longest_edge": 672}
    # freeform given a video is asked as video-freeform (vi-sdk's rule): its system prompt
    assert "video" in body["messages"][0]["content"]
    assert isinstance(response, FreeformResponse)
    assert response.task_type == "video-freeform"
    assert isinstance(response.result, FreeformCaption)
    # the emulator's caption names what the container header it received says
    assert f"1-second {container.upper()} video of 64x48" in response.result.caption
    assert response.image_size is None


async def test_video_url_is_downloaded_and_sent_as_data_uri(
    proxied: Proxy, video_factory: Any, tmp_path: Path, file_server: tuple[str, list[str]]
) -> None:
    base, served = file_server
    mp4 = video_factory("mp4")
    webm = video_factory("webm", size=(96, 64), frames=20)
    (tmp_path / "www" / "clip.mp4").write_bytes(mp4)
    (tmp_path / "www" / "clip.webm").write_bytes(webm)
    (tmp_path / "www" / "no-suffix").write_bytes(webm)  # found a video by its first bytes
    async with AsyncNIMPredictor(MODEL, "vqa", base_url=proxied.url) as p:
        first = await p(f"{base}/clip.mp4?x=1", "What moves?", VIDEO_PARAMS)
        second = await p(f"{base}/clip.webm", "What moves?", VIDEO_PARAMS)
        third = await p(f"{base}/no-suffix", "What moves?")
    assert served == ["/clip.mp4", "/clip.webm", "/no-suffix"]  # the client fetched each once
    for index, (data, mime) in enumerate(
        [(mp4, "video/mp4"), (webm, "video/webm"), (webm, "video/webm")]
    ):
        assert proxied.user_parts(index)[0] == {
            "type": "video_url",
            "video_url": {"url": _uri(data, mime)},
        }
    assert "media_io_kwargs" not in proxied.bodies[2]
    for response in (first, second, third):
        assert isinstance(response, VQAResponse)  # vqa keeps its task with a video
        assert response.task_type == "vqa"
        assert response.result.answer


async def test_video_fps_reaches_the_emulator_keyed(proxied: Proxy, video_factory: Any) -> None:
    # The emulator reads media_io_kwargs.video.fps (and 400s a flat media_io_kwargs), so the
    # prompt tokens show the keyed fps arrived. 64x48, 1 s, cosmos-reason2 (Qwen3-VL, 32 px):
    # 70 cells a frame; fps 2 -> ceil(2) = 2 -> at least 4 frames: 4 / 2 * 70 + 2 = 142;
    # fps 8 -> 8 frames: 8 / 2 * 70 + 2 = 282. The difference: 140.
    video = video_factory("mp4", size=(64, 48), frames=10, fps=10)
    usage = {}
    async with AsyncNIMPredictor(MODEL, "video-freeform", base_url=proxied.url) as p:
        for fps, params in [
            (2, NIMSamplingParams(media_io_kwargs={"fps": 2})),
            (8, NIMSamplingParams(media_io_kwargs={"fps": 8})),
            (8, NIMSamplingParams(media_io_kwargs={"video": {"fps": 8}})),  # keyed: as given
        ]:
            response = await p(video, "Describe it.", params)
            assert response.usage is not None
            usage.setdefault(fps, set()).add(response.usage.prompt_tokens)
    assert [b["media_io_kwargs"] for b in proxied.bodies] == [
        {"video": {"fps": 2}},
        {"video": {"fps": 8}},
        {"video": {"fps": 8}},
    ]
    assert len(usage[8]) == 1
    assert next(iter(usage[8])) - next(iter(usage[2])) == 140


async def test_a_flat_media_io_kwargs_is_what_the_emulator_refuses(proxied: Proxy) -> None:
    # The form the predictor no longer sends is the one vLLM 0.32 (and the emulator) refuse.
    assert proxied.session is not None
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "hi"}],
        "media_io_kwargs": {"fps": 2},
    }
    async with proxied.session.post(f"{proxied.url}/v1/chat/completions", json=body) as r:
        assert r.status == 400
        assert "media_io_kwargs.fps" in (await r.json())["error"]["message"]


async def test_images_are_sent_as_before_and_media_kwargs_follow_the_modality(
    proxied: Proxy, image_factory: Any, video_factory: Any
) -> None:
    image = image_factory(size=(64, 64), shapes=[("red", (0, 0, 32, 32))], fmt="PNG")
    video = video_factory("mp4")
    params = NIMSamplingParams(media_io_kwargs={"fps": 2})
    async with AsyncNIMPredictor(MODEL, "vqa", base_url=proxied.url) as p:
        await p(image, "What color?")  # no media kwargs: none in the body
        await p(image, "What color?", params)  # the body template is reused per media kind
        await p(video, "What color?", params)
        await p(image, "What color?", params)
    kinds = [proxied.user_parts(i)[0]["type"] for i in range(4)]
    assert kinds == ["image_url", "image_url", "video_url", "image_url"]
    assert proxied.user_parts(0)[0]["image_url"]["url"] == _uri(image, "image/png")
    assert "media_io_kwargs" not in proxied.bodies[0]
    assert [b.get("media_io_kwargs") for b in proxied.bodies[1:]] == [
        {"image": {"fps": 2}},
        {"video": {"fps": 2}},
        {"image": {"fps": 2}},
    ]


async def test_stream_of_a_video(proxied: Proxy, video_factory: Any) -> None:
    async with (
        AsyncNIMPredictor(MODEL, base_url=proxied.url) as p,  # no task type: freeform
        p.stream(video_factory("webm"), "What happens?") as stream,
    ):
        tokens = [token async for token in stream]
        final = await stream.get_final_response()
    assert p.task_type == "freeform"
    assert proxied.user_parts()[0]["type"] == "video_url"
    assert "".join(tokens) == final.raw_output
    assert isinstance(final, FreeformResponse)
    assert final.task_type == "video-freeform"
    assert "WEBM video" in final.result.caption


async def test_generic_video_follows_visdk_and_a_given_system_prompt_is_kept(
    proxied: Proxy, video_factory: Any
) -> None:
    video = video_factory("mp4")
    async with AsyncNIMPredictor(MODEL, "generic", base_url=proxied.url) as p:
        response = await p(video, "Describe it.")
    assert response.task_type == "video-freeform"  # vi-sdk: generic + video -> video-freeform
    assert isinstance(response.result, FreeformCaption)
    mine = 'Answer as {"freeform": {"caption": "..."}} about the clip.'
    async with AsyncNIMPredictor(MODEL, "freeform", base_url=proxied.url, system_prompt=mine) as p:
        await p(video, "Describe it.")
    assert proxied.bodies[-1]["messages"][0] == {"role": "system", "content": mine}


async def test_blocking_predictor_with_a_video_path(
    proxied: Proxy, video_factory: Any, tmp_path: Path
) -> None:
    path = tmp_path / "clip.mp4"
    path.write_bytes(video_factory("mp4"))

    def run() -> tuple[object, list[str]]:  # vi-sdk's blocking calls, off this test's loop
        with NIMPredictor(MODEL, "vqa", base_url=proxied.url) as p:
            result = p(source=str(path), user_prompt="What is it?", sampling_params=VIDEO_PARAMS)
            return result, list(p(source=str(path), stream=True))

    result, tokens = await asyncio.to_thread(run)
    assert isinstance(result, VQAResponse)
    assert result.result.answer
    assert tokens
    assert [proxied.user_parts(i)[0]["type"] for i in range(2)] == ["video_url", "video_url"]


# ------------------------------------------------------------------ what is refused


async def test_phrase_grounding_refuses_a_video_before_sending(
    proxied: Proxy, video_factory: Any
) -> None:
    async with AsyncNIMPredictor(MODEL, "phrase-grounding", base_url=proxied.url) as p:
        with pytest.raises(MediaError, match="phrase-grounding task does not take a video") as e:
            await p(video_factory("mp4"))
    assert "-frames:v 1" in str(e.value)  # how to send one frame instead
    assert "video-freeform" in str(e.value)
    assert str(e.value.source).endswith(" bytes>")
    assert proxied.bodies == []


async def test_video_freeform_refuses_an_image(proxied: Proxy, image_factory: Any) -> None:
    async with AsyncNIMPredictor(MODEL, "video-freeform", base_url=proxied.url) as p:
        with pytest.raises(MediaError, match=r"does not take an image.*task_type='freeform'"):
            await p(image_factory(fmt="PNG"))
    assert proxied.bodies == []


@pytest.mark.parametrize(
    ("name", "content", "match"),
    [
        ("clip.avi", b"RIFF\x00\x00\x00\x00AVI LIST", r"unsupported video container '\.avi'"),
        ("clip.mp4", b"this is text, not a video at all", r"not a video.*ftyp box at byte 4"),
        ("clip.webm", b"GIF89a\x01\x00\x01\x00", r"EBML magic 1A 45 DF A3"),
        ("clip.mov", b"", r"is empty \(0 bytes\)"),
    ],
)
async def test_bad_video_files_are_refused_with_the_fix(
    proxied: Proxy, tmp_path: Path, name: str, content: bytes, match: str
) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    async with AsyncNIMPredictor(MODEL, "vqa", base_url=proxied.url) as p:
        with pytest.raises(MediaError, match=match) as e:
            await p(path)
    assert name in str(e.value)
    if content:
        assert "MP4 or WebM" in str(e.value)
    assert proxied.bodies == []


async def test_other_video_containers_as_bytes_or_urls_are_refused(
    proxied: Proxy, tmp_path: Path, file_server: tuple[str, list[str]]
) -> None:
    base, served = file_server
    avi = b"RIFF\x10\x00\x00\x00AVI LIST" + b"\x00" * 32
    (tmp_path / "www" / "clip").write_bytes(avi)
    async with AsyncNIMPredictor(MODEL, "vqa", base_url=proxied.url) as p:
        with pytest.raises(MediaError, match=r"AVI container.*ffmpeg -i"):
            await p(avi)
        with pytest.raises(MediaError, match="AVI container"):
            await p(f"{base}/clip")  # downloaded, then recognised by its first bytes
        with pytest.raises(MediaError, match=r"unsupported video container '\.flv'"):
            await p(f"{base}/movie.flv?x=1")  # refused before any download
        with pytest.raises(MediaError, match=r"'\.avi'"):
            p.stream("missing.avi")  # a stream refuses at once, before it is entered
    assert served == ["/clip"]
    assert proxied.bodies == []


async def test_oversize_videos_are_refused_before_sending(
    proxied: Proxy, video_factory: Any, tmp_path: Path
) -> None:
    video = video_factory("mp4")
    path = tmp_path / "clip.mp4"
    path.write_bytes(video)
    async with AsyncNIMPredictor(
        MODEL, "vqa", base_url=proxied.url, max_video_bytes=len(video) - 1
    ) as p:
        for source in (path, video, _uri(video, "video/mp4")):
            with pytest.raises(MediaError, match=r"over the cap.*max_video_bytes") as e:
                await p(source)
            assert f"{len(video) - 1} bytes" in str(e.value)
    async with AsyncNIMPredictor(
        MODEL, "vqa", base_url=proxied.url, max_video_bytes=len(video)
    ) as p:
        await p(path)  # exactly at the cap: sent
    assert len(proxied.bodies) == 1
    with pytest.raises(ValueError, match="max_video_bytes"):
        AsyncNIMPredictor(MODEL, "vqa", base_url=proxied.url, max_video_bytes=0)


async def test_missing_video_and_bad_data_uri(proxied: Proxy, tmp_path: Path) -> None:
    with pytest.raises(MediaError, match="video file not found"):
        validate_source(tmp_path / "nope.webm")
    async with AsyncNIMPredictor(MODEL, "vqa", base_url=proxied.url) as p:
        with pytest.raises(MediaError, match="invalid base64"):
            await p("data:video/mp4;base64,@@@@")
        with pytest.raises(MediaError, match="only base64 data URIs"):
            await p("data:video/mp4,raw")
    assert proxied.bodies == []


# ------------------------------------------------------------------ units (no server)


def test_sniffing_and_suffixes(video_factory: Any) -> None:
    assert sniff_video(video_factory("mp4")) == "mp4"
    assert sniff_video(video_factory("webm")) == "webm"
    assert sniff_video(b"\x00\x00\x00\x18ftypqt  \x00\x00\x00\x00") == "mp4"  # MOV
    assert sniff_video(b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00") is None  # HEIF image
    assert sniff_video(b"\x00\x00\x00\x18ftypavif\x00\x00\x00\x00") is None  # AVIF image
    assert sniff_video(b"\x89PNG\r\n\x1a\n\x00\x00\x00\x0d") is None
    assert sniff_video(memoryview(b"\x1a\x45\xdf\xa3\x01")) == "webm"
    assert sniff_video(b"ftyp") is None
    assert video_suffix("a/b/clip.MP4") == "mp4"
    assert video_suffix(Path("clip.mkv")) == "webm"
    assert video_suffix("https://host/v/clip.webm?sig=a.png#t=1") == "webm"
    assert video_suffix("https://host.mp4") is None  # a host, no path
    assert video_suffix("photo.jpg") is None
    assert video_suffix(b"bytes.mp4") is None
    assert DEFAULT_MAX_VIDEO_BYTES == 64 * 1024 * 1024


async def test_load_media_returns_videos_and_images(video_factory: Any, image_factory: Any) -> None:
    webm = video_factory("webm")
    video = await load_media(webm, max_pixels=BUDGET)
    assert isinstance(video, EncodedVideo)
    assert (video.kind, video.container, video.mime, video.size_bytes) == (
        "video",
        "webm",
        "video/webm",
        len(webm),
    )
    assert video.data_uri == _uri(webm, "video/webm").encode()
    assert video.original_size is None
    image = await load_media(image_factory(fmt="PNG"), max_pixels=BUDGET)
    assert image.kind == "image"
    assert image.original_size == (640, 480)


def test_wire_builds_video_parts_and_keys_media_kwargs() -> None:
    messages = wire.media_messages("sys", "hi", "data:video/mp4;base64,AAAA", "video")
    assert messages == [
        {"role": "system", "content": "sys"},
        {
            "role": "user",
            "content": [
                {"type": "video_url", "video_url": {"url": "data:video/mp4;base64,AAAA"}},
                {"type": "text", "text": "hi"},
            ],
        },
    ]
    assert wire.image_messages(None, "hi", "u") == wire.media_messages(None, "hi", "u", "image")
    flat = NIMSamplingParams(media_io_kwargs={"fps": 2}, mm_processor_kwargs={"fps": 1})
    fields, _ = wire.sampling_fields(flat, "video")
    assert fields["media_io_kwargs"] == {"video": {"fps": 2}}
    assert fields["mm_processor_kwargs"] == {"fps": 1}
    assert wire.sampling_fields(flat)[0]["media_io_kwargs"] == {"image": {"fps": 2}}
    keyed = NIMSamplingParams(media_io_kwargs={"video": {"num_frames": 8}})
    assert wire.sampling_fields(keyed, "video")[0]["media_io_kwargs"] == {
        "video": {"num_frames": 8}
    }
    # vLLM 0.32 (no --trust-request-mm-kwargs) accepts {} but refuses {"video": {}}: kept empty
    empty = NIMSamplingParams(media_io_kwargs={})
    assert wire.sampling_fields(empty, "video")[0]["media_io_kwargs"] == {}
    assert "media_io_kwargs" not in wire.sampling_fields(NIMSamplingParams(), "video")[0]
