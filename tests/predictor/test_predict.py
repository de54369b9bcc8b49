"""The async predictor against the emulator over real HTTP on loopback."""

from __future__ import annotations

import asyncio
import io
import json
import socket
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from PIL import Image

from nim_async.config import NIMConfig, NIMSamplingParams
from nim_async.errors import (
    BadRequestError,
    GuidedDecodingError,
    MediaError,
    ModelNotFoundError,
    PredictionParseError,
    PredictionTimeoutError,
    ServerError,
    ServiceUnavailableError,
    StreamError,
)
from nim_async.predict.predictor import AsyncNIMPredictor
from nim_async.protocol.tasks import get_task
from nim_async.results import PhraseGroundingResponse, TextResponse, VQAResponse

from .conftest import MODEL, Recorder, wait_until

COLORS = ["red", "green", "blue", "yellow", "orange", "purple", "cyan", "magenta", "black"]


def close_to(box: tuple[float, ...] | list[float], truth: tuple[float, ...], tol: float) -> bool:
    return all(abs(a - b) <= tol for a, b in zip(box, truth, strict=True))


def single_box(result: PhraseGroundingResponse) -> tuple[float, float, float, float]:
    assert len(result.groundings) == 1, result.groundings
    assert len(result.groundings[0].boxes) == 1
    return result.groundings[0].boxes[0].pixels


async def test_phrase_grounding_boxes_in_original_pixels(emulator: Any, image_factory: Any) -> None:
    truth = (100, 120, 300, 220)
    image = image_factory(size=(640, 480), shapes=[("red", truth)], fmt="PNG")
    async with AsyncNIMPredictor(MODEL, "phrase-grounding", port=emulator.port) as p:
        assert p.box_format == "qwen25-abs"
        result = await p(source=image)
    assert isinstance(result, PhraseGroundingResponse)
    assert "red" in result.sentence
    assert result.groundings[0].phrase in result.sentence
    assert close_to(single_box(result), truth, 4)
    assert result.image_size == (640, 480)
    assert result.usage is not None
    assert result.usage.completion_tokens > 0
    assert result.finish_reason == "stop"
    assert result.model == MODEL
    assert result.timings is not None
    assert result.timings.total > 0


async def test_vqa_answer(emulator: Any, image_factory: Any) -> None:
    image = image_factory(shapes=[("blue", (10, 10, 200, 200))])
    async with AsyncNIMPredictor(MODEL, "vqa", port=emulator.port) as p:
        result = await p(image, "What color is the rectangle?")
    assert isinstance(result, VQAResponse)
    assert result.answer == "blue"
    assert result.prompt == "What color is the rectangle?"


@pytest.mark.parametrize("box_format", ["qwen25-abs", "norm1000", "norm1024"])
async def test_box_conversion_for_each_format(
    start_emulator: Any, image_factory: Any, box_format: str
) -> None:
    # larger than the pixel budget: downscaled before sending, boxes back in original pixels
    truth = (400, 300, 1200, 900)
    image = image_factory(size=(1600, 1200), shapes=[("green", truth)], fmt="PNG")
    async with (
        start_emulator(box_format=box_format) as emu,
        AsyncNIMPredictor(MODEL, "phrase-grounding", port=emu.port, box_format=box_format) as p,
    ):
        result = await p(image)
    assert isinstance(result, PhraseGroundingResponse)
    box = result.groundings[0].boxes[0]
    assert box.box_format == box_format
    assert close_to(box.pixels, truth, 12)
    assert result.image_size == (1600, 1200)


async def test_max_pixels_override_changes_what_is_sent(emulator: Any, image_factory: Any) -> None:
    truth = (40, 30, 120, 90)
    image = image_factory(size=(160, 120), shapes=[("red", truth)], fmt="PNG")
    async with AsyncNIMPredictor(
        MODEL, "phrase-grounding", port=emulator.port, max_pixels=80 * 60
    ) as p:
        result = await p(image)
    assert isinstance(result, PhraseGroundingResponse)
    assert close_to(single_box(result), truth, 6)


async def test_200_concurrent_calls_one_predictor_not_mixed(
    emulator: Any, image_factory: Any
) -> None:
    cases = []
    for i in range(200):
        color = COLORS[i % len(COLORS)]
        x0 = 20 + (i * 7) % 300
        y0 = 20 + (i * 13) % 200
        truth = (x0, y0, x0 + 100 + i % 50, y0 + 80)
        cases.append((color, truth, image_factory(size=(480, 360), shapes=[(color, truth)])))
    async with AsyncNIMPredictor(
        MODEL, "phrase-grounding", port=emulator.port, max_connections=64
    ) as p:
        results = await asyncio.gather(*(p(source=img) for _, _, img in cases))
    for (color, truth, _), result in zip(cases, results, strict=True):
        assert isinstance(result, PhraseGroundingResponse)
        assert color in result.sentence, (color, result.sentence)
        assert close_to(single_box(result), truth, 5), (truth, result.groundings)


async def test_stream_tokens_timing_and_final(emulator: Any, image_factory: Any) -> None:
    truth = (50, 60, 250, 160)
    image = image_factory(shapes=[("purple", truth)])
    async with AsyncNIMPredictor(MODEL, "phrase-grounding", port=emulator.port) as p:
        async with p.stream(image) as stream:
            tokens = [t async for t in stream]
            final = await stream.get_final_response()
        assert await stream.get_final_response() is final
    assert len(tokens) > 5
    assert "".join(tokens) == final.raw_output
    assert isinstance(final, PhraseGroundingResponse)
    assert close_to(single_box(final), truth, 4)
    assert stream.request_start_time is not None
    assert stream.first_token_time is not None
    assert stream.first_token_time >= stream.request_start_time
    assert len(stream.token_times) == len(tokens)
    assert stream.token_times == sorted(stream.token_times)
    assert stream.usage is not None
    assert stream.usage.completion_tokens == len(tokens)
    assert final.timings is not None
    assert final.timings.time_to_first_token is not None


async def test_stream_get_final_without_iterating_and_batches(
    emulator: Any, image_factory: Any
) -> None:
    image = image_factory(shapes=[("red", (10, 10, 90, 90))])
    async with AsyncNIMPredictor(MODEL, "vqa", port=emulator.port) as p:
        async with p.stream(image, "What color is the square?") as s:
            final = await s.get_final_response()
        assert final.result.answer == "red"
        async with p.stream(image, "What color is the square?") as s2:
            batches = [b async for b in s2.batches()]
        assert all(batches)
        assert "".join(t for b in batches for t in b) == s2.text


async def test_stream_break_closes_the_response(start_emulator: Any, image_factory: Any) -> None:
    image = image_factory(shapes=[("red", (10, 10, 90, 90))])
    async with (
        start_emulator(itl_ms=20) as emu,
        AsyncNIMPredictor(MODEL, "phrase-grounding", port=emu.port) as p,
    ):
        async with p.stream(image) as s:
            async for _ in s:
                await wait_until(lambda: emu.metrics.running == 1)
                break
        # the server sees the client go away and stops generating
        await wait_until(lambda: emu.metrics.running == 0)
        assert emu.metrics.success == {"abort": 1}


async def test_reasoning_goes_to_thinking(start_emulator: Any, image_factory: Any) -> None:
    image = image_factory(shapes=[("yellow", (10, 10, 90, 90))])
    async with (
        start_emulator(reasoning=True) as emu,
        AsyncNIMPredictor(MODEL, "vqa", port=emu.port) as p,
    ):
        result = await p(image, "What color is the square?")
        async with p.stream(image, "What color is the square?") as s:
            streamed = await s.get_final_response()
    assert result.thinking
    assert result.result.answer == "yellow"
    assert streamed.thinking == result.thinking


# ---------------------------------------------------------------- media sources


async def test_sources_path_bytes_pil_url(
    emulator: Any, image_factory: Any, tmp_path: Path
) -> None:
    truth = (100, 100, 300, 200)
    data = image_factory(size=(400, 300), shapes=[("blue", truth)], fmt="JPEG")
    path = tmp_path / "image.jpg"
    path.write_bytes(data)

    async def serve(request: web.Request) -> web.Response:
        return web.Response(body=data, content_type="image/jpeg")

    async def missing(request: web.Request) -> web.Response:
        return web.Response(status=404)

    app = web.Application()
    app.router.add_get("/image.jpg", serve)
    app.router.add_get("/missing.jpg", missing)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    try:
        async with AsyncNIMPredictor(MODEL, "phrase-grounding", port=emulator.port) as p:
            sources = [
                path,
                str(path),
                data,
                Image.open(io.BytesIO(data)),
                f"{url}/image.jpg",
            ]
            for source in sources:
                result = await p(source)
                assert isinstance(result, PhraseGroundingResponse)
                assert close_to(single_box(result), truth, 5), source
            with pytest.raises(MediaError, match="HTTP 404") as info:
                await p(f"{url}/missing.jpg")
            assert info.value.source == f"{url}/missing.jpg"
    finally:
        await runner.cleanup()


async def test_exif_rotated_image(emulator: Any) -> None:
    stored = Image.new("RGB", (400, 200), "white")
    stored.paste((255, 0, 0), (0, 0, 100, 100))  # top-left as stored
    exif = Image.Exif()
    exif[0x0112] = 6  # displayed rotated 90° clockwise: 200 x 400, red at top-right
    buf = io.BytesIO()
    stored.save(buf, "JPEG", exif=exif, quality=95)
    async with AsyncNIMPredictor(MODEL, "phrase-grounding", port=emulator.port) as p:
        result = await p(buf.getvalue())
    assert isinstance(result, PhraseGroundingResponse)
    assert result.image_size == (200, 400)
    assert close_to(single_box(result), (100, 0, 200, 100), 5)


async def test_media_errors_name_the_source(emulator: Any, tmp_path: Path) -> None:
    async with AsyncNIMPredictor(MODEL, "vqa", port=emulator.port) as p:
        with pytest.raises(MediaError, match=r"nope\.jpg"):
            await p(tmp_path / "nope.jpg")
        with pytest.raises(MediaError, match=r"nope\.jpg"):
            p.stream(str(tmp_path / "nope.jpg"))
        with pytest.raises(MediaError, match="cannot read"):
            await p(b"not an image at all")
        with pytest.raises(MediaError, match="unsupported image source type"):
            await p(12345)


# ---------------------------------------------------------------- guided decoding


async def test_guided_choice_returns_the_constrained_text(
    emulator: Any, image_factory: Any
) -> None:
    image = image_factory(shapes=[("red", (10, 10, 90, 90))])
    params = NIMSamplingParams(guided_choice=["yes", "no", "maybe"])
    async with AsyncNIMPredictor(MODEL, "phrase-grounding", port=emulator.port) as p:
        result = await p(image, "Is there a red square?", params)
        async with p.stream(image, "Is there a red square?", params) as s:
            streamed = await s.get_final_response()
    assert isinstance(result, TextResponse)
    assert result.result in ("yes", "no", "maybe")
    assert isinstance(streamed, TextResponse)


async def test_guided_json_with_task_schema_is_still_parsed(
    emulator: Any, image_factory: Any
) -> None:
    truth = (20, 20, 120, 100)
    image = image_factory(shapes=[("cyan", truth)])
    schema = get_task("phrase-grounding").output_schema()
    async with AsyncNIMPredictor(MODEL, "phrase-grounding", port=emulator.port) as p:
        result = await p(image, sampling_params=NIMSamplingParams(guided_json=schema))
        other = await p(
            image,
            "Answer in JSON",
            NIMSamplingParams(
                guided_json={
                    "type": "object",
                    "properties": {"color": {"type": "string"}},
                    "required": ["color"],
                }
            ),
        )
        regex = await p(image, "How many squares?", NIMSamplingParams(guided_regex=r"[0-9]+"))
    assert isinstance(result, PhraseGroundingResponse)
    assert close_to(single_box(result), truth, 4)
    assert isinstance(other, TextResponse)
    assert "color" in json.loads(other.text)
    assert isinstance(regex, TextResponse)
    assert regex.text.isdigit()


async def test_ignored_guided_decoding_is_detected(start_emulator: Any, image_factory: Any) -> None:
    image = image_factory(shapes=[("red", (10, 10, 90, 90))])
    params = NIMSamplingParams(guided_choice=["alpha", "beta"])
    async with (
        start_emulator(ignore_guided=True) as emu,
        # the legacy form (top-level guided_*), which this emulator mode ignores like vLLM 0.12+
        AsyncNIMPredictor(MODEL, "vqa", port=emu.port, dialect="guided") as p,
    ):
        with pytest.raises(GuidedDecodingError) as info:
            await p(image, "Pick one", params)
    assert info.value.constraint == "choice"
    assert info.value.raw_output
    # the advice names where it went and the dialects that would send it elsewhere
    message = str(info.value)
    assert "sent as guided_choice" in message
    assert "dialect='openai'" in message
    assert "dialect='nvext'" in message
    assert "dialect='guided'" not in message


async def test_an_ignored_constraint_cut_off_at_max_tokens_gets_the_advice_too(
    start_emulator: Any, image_factory: Any
) -> None:
    # vLLM 0.32 with the old forms: the ignored choice runs on until max_tokens
    image = image_factory(shapes=[("red", (10, 10, 90, 90))])
    params = NIMSamplingParams(guided_choice=["alpha", "beta"], max_tokens=2)
    async with (
        start_emulator(ignore_guided=True) as emu,
        AsyncNIMPredictor(MODEL, "vqa", port=emu.port, dialect="guided") as p,
    ):
        with pytest.raises(PredictionParseError) as info:
            await p(image, "Pick one", params)
    message = str(info.value)
    assert "cut off at max_tokens" in message
    assert "Raise max_tokens" in message
    assert "sent as guided_choice" in message
    assert "dialect='openai'" in message
    assert info.value.raw_output


async def test_nvext_dialect_places_extensions(start_emulator: Any, image_factory: Any) -> None:
    image = image_factory(shapes=[("red", (10, 10, 90, 90))])
    params = NIMSamplingParams(guided_choice=["alpha", "beta"])
    async with start_emulator(sampling_fields="nvext") as emu:
        async with AsyncNIMPredictor(MODEL, "vqa", port=emu.port, dialect="nvext") as p:
            result = await p(image, "Pick one", params)
            assert result.result in ("alpha", "beta")
        # top-level guided_* on an nvext-only server is ignored: the check catches it
        async with AsyncNIMPredictor(MODEL, "vqa", port=emu.port, dialect="openai") as p:
            with pytest.raises(GuidedDecodingError):
                await p(image, "Pick one", params)


async def test_request_body_fields_per_dialect(recorder: Recorder, image_factory: Any) -> None:
    image = image_factory(size=(64, 64), fmt="PNG")
    params = NIMSamplingParams(
        temperature=0.2, top_k=5, max_tokens=64, stop=["\n\n"], seed=3, logprobs=2
    )
    async with AsyncNIMPredictor(MODEL, "vqa", base_url=recorder.url, system_prompt="SYS") as p:
        await p(image, "Q?", params)
    async with AsyncNIMPredictor(MODEL, "vqa", base_url=recorder.url, dialect="nvext") as p:
        await p(image, "Q?", NIMSamplingParams(guided_regex=r"\{.*\}"))
    top, nv = recorder.bodies
    assert top["model"] == MODEL
    assert top["messages"][0] == {"role": "system", "content": "SYS"}
    user = top["messages"][1]["content"]
    assert user[0]["type"] == "image_url"
    assert user[0]["image_url"]["url"].startswith("data:image/png;base64,")
    assert user[1] == {"type": "text", "text": "Q?"}
    assert top["temperature"] == 0.2
    assert top["top_k"] == 5
    assert top["max_tokens"] == 64
    assert top["stop"] == ["\n\n"]
    assert top["seed"] == 3
    assert top["logprobs"] is True
    assert top["top_logprobs"] == 2
    assert top["repetition_penalty"] == 1.05
    assert "nvext" not in top
    assert nv["messages"][0]["content"] == get_task("vqa").system_prompt
    assert nv["nvext"]["guided_regex"] == r"\{.*\}"
    assert nv["nvext"]["top_k"] == 50
    assert "top_k" not in nv
    assert "guided_regex" not in nv
    assert nv["temperature"] == 1.0


async def test_auto_dialect_asks_the_server_once(emulator: Any, image_factory: Any) -> None:
    image = image_factory(shapes=[("red", (10, 10, 90, 90))])
    async with AsyncNIMPredictor(MODEL, "vqa", port=emulator.port, dialect="auto") as p:
        wire = await p.wire_format()
        assert await p.wire_format() is wire
        assert not wire.extensions_in_nvext
        result = await p(image, "What color is the square?")
    assert result.result.answer == "red"


# ---------------------------------------------------------------- errors


async def test_unknown_model_is_404(emulator: Any, image_factory: Any) -> None:
    async with AsyncNIMPredictor("no-such-model", "vqa", port=emulator.port) as p:
        with pytest.raises(ModelNotFoundError) as info:
            await p(image_factory())
    assert info.value.status_code == 404
    assert "no-such-model" in info.value.message


async def test_bad_request_is_400(emulator: Any, image_factory: Any) -> None:
    params = NIMSamplingParams(max_tokens=100_000)
    async with AsyncNIMPredictor(MODEL, "vqa", port=emulator.port) as p:
        with pytest.raises(BadRequestError) as info:
            await p(image_factory(), sampling_params=params)
        with pytest.raises(BadRequestError):
            async with p.stream(image_factory(), sampling_params=params):
                pass
    assert info.value.status_code == 400
    assert info.value.message


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


async def test_connection_refused_names_host_and_port(image_factory: Any) -> None:
    port = _free_port()
    async with AsyncNIMPredictor(MODEL, "vqa", port=port, retries=1) as p:
        with pytest.raises(ServiceUnavailableError) as info:
            await p(image_factory())
        assert f"127.0.0.1:{port}" in str(info.value)
        assert not await p.health_ready()
        with pytest.raises(ServiceUnavailableError):
            await p.list_models()


async def test_503_is_retried_then_succeeds(start_emulator: Any, image_factory: Any) -> None:
    image = image_factory(shapes=[("red", (10, 10, 90, 90))])
    async with (
        start_emulator(fail_rate=0.5, fail_status=503, seed=7) as emu,
        AsyncNIMPredictor(MODEL, "vqa", port=emu.port, retries=8) as p,
    ):
        results = await asyncio.gather(*(p(image, "What color?") for _ in range(12)))
    assert all(r.result.answer == "red" for r in results)
    assert emu.metrics.errors.get(503, 0) > 0  # failures happened and were absorbed


async def test_503_without_retries_raises(start_emulator: Any, image_factory: Any) -> None:
    async with (
        start_emulator(fail_rate=1.0, fail_status=503) as emu,
        AsyncNIMPredictor(MODEL, "vqa", port=emu.port, retries=2) as p,
    ):
        with pytest.raises(ServerError) as info:
            await p(image_factory())
    assert info.value.status_code == 503
    assert emu.metrics.errors.get(503) == 3  # one try and two retries


async def test_429_and_retry_after_from_recorder(recorder: Recorder, image_factory: Any) -> None:
    recorder.script = [
        (429, b'{"object": "error", "message": "slow down", "type": "RateLimit"}', {}),
        (503, b'{"error": {"message": "busy"}}', {"Retry-After": "0"}),
    ]
    async with AsyncNIMPredictor(MODEL, "vqa", base_url=recorder.url) as p:
        result = await p(image_factory())
    assert result.result.answer == "red"
    assert len(recorder.bodies) == 3
    # the body is built once and re-sent unchanged
    assert recorder.bodies[0] == recorder.bodies[1] == recorder.bodies[2]


async def test_mid_stream_disconnect_keeps_partial_text(
    start_emulator: Any, image_factory: Any
) -> None:
    image = image_factory(shapes=[("red", (10, 10, 90, 90))])
    async with (
        start_emulator(disconnect_after=5) as emu,
        AsyncNIMPredictor(MODEL, "phrase-grounding", port=emu.port) as p,
    ):
        tokens: list[str] = []

        async def consume() -> None:
            async with p.stream(image) as s:
                async for token in s:
                    tokens.append(token)

        with pytest.raises(StreamError) as info:
            await consume()
        assert info.value.partial_text == "".join(tokens)
        assert tokens
        with pytest.raises((StreamError, ServiceUnavailableError)):
            await p(image)


async def test_mid_stream_error_event(recorder: Recorder, image_factory: Any) -> None:
    chunk = {"choices": [{"index": 0, "delta": {"content": "par"}, "finish_reason": None}]}
    body = (
        b"data: " + json.dumps(chunk).encode() + b"\n\n"
        b'data: {"object": "error", "message": "engine died", "code": 500}\n\n'
        b"data: [DONE]\n\n"
    )
    recorder.script = [(200, body, {"Content-Type": "text/event-stream"})]
    async with AsyncNIMPredictor(MODEL, "vqa", base_url=recorder.url) as p:

        async def consume() -> None:
            async with p.stream(image_factory()) as s:
                async for _ in s:
                    pass

        with pytest.raises(StreamError, match="engine died") as info:
            await consume()
    assert info.value.partial_text == "par"


async def test_timeout(start_emulator: Any, image_factory: Any) -> None:
    async with (
        start_emulator(ttft_ms=3000) as emu,
        AsyncNIMPredictor(MODEL, "vqa", port=emu.port, timeout=0.3) as p,
    ):
        with pytest.raises(PredictionTimeoutError):
            await p(image_factory())


# ---------------------------------------------------------------- construction


async def test_config_supplies_model_host_port(
    emulator: Any, image_factory: Any, tmp_path: Path
) -> None:
    config = NIMConfig(nvidia_api_key="nvapi-test", port=emulator.port)
    async with AsyncNIMPredictor(config=config, task_type="vqa") as p:
        assert p.model_name == MODEL
        assert p.base_url == emulator.url
        result = await p(image_factory(shapes=[("red", (0, 0, 50, 50))]), "What color?")
    assert result.result.answer == "red"
    # no task type and no run metadata: vi-sdk's default task, freeform
    async with AsyncNIMPredictor(config=config) as p:
        assert p.task_type == "freeform"


async def test_config_with_run_metadata(emulator: Any, tmp_path: Path) -> None:
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    run = {
        "flow": {
            "blocks": [
                {"type": "dataset", "settings": {"projectKind": "Vqa"}},
                {"type": "system-prompt", "settings": {"systemPrompt": "Answer briefly."}},
            ]
        }
    }
    (model_dir / "run.json").write_text(json.dumps(run))
    config = NIMConfig(
        nvidia_api_key="nvapi-test",
        port=emulator.port,
        model_path=model_dir,
        served_model_name=MODEL,
    )
    async with AsyncNIMPredictor(config=config) as p:
        assert p.task_type == "vqa"
        assert p.box_format == "norm1024"  # trained on Vi
        assert p.system_prompt == "Answer briefly."


def test_constructor_validation() -> None:
    with pytest.raises(ValueError, match="task_type"):
        AsyncNIMPredictor(MODEL, "segmentation")
    with pytest.raises(ValueError, match="model_name"):
        AsyncNIMPredictor(None, "vqa")
    with pytest.raises(ValueError, match="port"):
        AsyncNIMPredictor(MODEL, "vqa", port=0)
    p = AsyncNIMPredictor(MODEL, "vqa", host="::1", port=9000)
    assert p.base_url == "http://[::1]:9000"
    assert "cosmos" in repr(p)
    with pytest.raises(TypeError, match="NIMSamplingParams"):
        p.stream(b"x", sampling_params={"temperature": 0})  # type: ignore[arg-type]


async def test_health_and_models(emulator: Any) -> None:
    async with AsyncNIMPredictor(MODEL, "vqa", port=emulator.port) as p:
        assert await p.health_ready()
        assert await p.list_models() == [MODEL]
    assert p.closed


async def test_predict_many_delegates_to_batch(emulator: Any, image_factory: Any) -> None:
    images = [image_factory(shapes=[(c, (10, 10, 90, 90))]) for c in COLORS[:5]]
    async with AsyncNIMPredictor(MODEL, "vqa", port=emulator.port) as p:
        got = {
            r.index: r
            async for r in p.predict_many(images, concurrency=3, user_prompt="What color?")
        }
    assert sorted(got) == list(range(5))
    for i, color in enumerate(COLORS[:5]):
        response = got[i].response
        assert response is not None
        assert response.result.answer == color


@pytest.mark.parametrize(
    ("version", "where"),
    [
        ({"release": "1.0.3", "api": "1.0.0"}, "nvext"),
        ({"version": "0.12.0"}, "structured_outputs"),
        ({"version": "0.10.1"}, "top"),
        ({"release": "2.1.0"}, "structured_outputs"),
        (None, "structured_outputs"),
    ],
)
async def test_auto_dialect_follows_the_server_version(
    recorder: Recorder, image_factory: Any, version: dict[str, Any] | None, where: str
) -> None:
    recorder.version = version
    params = NIMSamplingParams(guided_regex=r"\{.*\}")
    async with AsyncNIMPredictor(MODEL, "vqa", base_url=recorder.url, dialect="auto") as p:
        await asyncio.gather(*(p(image_factory(size=(16, 16)), "Q?", params) for _ in range(3)))
    assert recorder.version_calls == 1  # asked once, remembered
    body = recorder.bodies[0]
    if where == "nvext":
        assert body["nvext"]["guided_regex"] == r"\{.*\}"
        assert "top_k" in body["nvext"]
    elif where == "structured_outputs":
        assert body["structured_outputs"] == {"regex": r"\{.*\}"}
        assert "guided_regex" not in body
        assert body["top_k"] == 50
    else:
        assert body["guided_regex"] == r"\{.*\}"
        assert "nvext" not in body
