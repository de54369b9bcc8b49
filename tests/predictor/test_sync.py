"""The blocking facade NIMPredictor: seed examples, streaming generator, asyncio.run, Ctrl-C.

The emulator runs on the test's event loop, so blocking code runs in a worker thread
(``asyncio.to_thread``) exactly as a user's script or notebook cell would run beside it.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from nim_async.config import NIMSamplingParams
from nim_async.errors import MediaError, ModelNotFoundError, StreamError
from nim_async.results import PhraseGroundingResponse, PredictionResponse, TextResponse
from nim_async.sync.predictor import NIMPredictor

from .conftest import MODEL, wait_until


async def test_seed_run_inference_and_guided_decoding_examples(
    emulator: Any, image_factory: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "image.jpg").write_bytes(
        image_factory(shapes=[("red", (100, 100, 300, 200)), ("blue", (350, 250, 500, 400))])
    )
    monkeypatch.chdir(tmp_path)
    port = emulator.port
    printed: list[str] = []

    def seed() -> dict[str, Any]:
        # --- "Run Inference" (import path nim_async) -------------------------------------
        from nim_async.config import NIMSamplingParams
        from nim_async.sync.predictor import NIMPredictor

        predictor = NIMPredictor(
            model_name="cosmos-reason1-7b", task_type="phrase-grounding", port=port
        )

        # Simple inference
        result = predictor(source="image.jpg", stream=False)
        simple = result

        # With sampling params
        params = NIMSamplingParams(temperature=0.7, max_tokens=512)
        result = predictor(source="image.jpg", stream=False, sampling_params=params)
        sampled = result

        # --- "Guided Decoding" -----------------------------------------------------------
        # Constrain output to choices
        params = NIMSamplingParams(guided_choice=["yes", "no", "maybe"])
        result = predictor(
            source="image.jpg",
            user_prompt="Is there a person?",
            stream=False,
            sampling_params=params,
        )
        guided = result

        # --- "__call__()" ----------------------------------------------------------------
        # Non-streaming
        result = predictor(
            source="image.jpg",
            user_prompt="Describe this image",
            stream=False,
            sampling_params=None,
        )
        described = result

        # Streaming
        gen = predictor(source="image.jpg", stream=True)
        for token in gen:
            printed.append(token)  # print(token, end="", flush=True)
        predictor.close()
        return {"simple": simple, "sampled": sampled, "guided": guided, "described": described}

    out = await asyncio.to_thread(seed)
    simple = out["simple"]
    assert isinstance(simple, PhraseGroundingResponse)
    assert "red" in simple.sentence
    assert "blue" in simple.sentence
    assert len(simple.groundings) == 2
    assert isinstance(out["sampled"], PhraseGroundingResponse)
    assert isinstance(out["guided"], TextResponse)
    assert out["guided"].result in ("yes", "no", "maybe")
    assert isinstance(out["described"], PhraseGroundingResponse)
    assert "".join(printed) == simple.raw_output


async def test_stream_generator_returns_final_response(emulator: Any, image_factory: Any) -> None:
    image = image_factory(shapes=[("green", (20, 20, 120, 120))])

    def run() -> tuple[list[str], PredictionResponse]:
        with NIMPredictor(MODEL, "vqa", port=emulator.port) as p:
            gen = p(image, "What color is the square?", stream=True)
            tokens: list[str] = []
            while True:
                try:
                    tokens.append(next(gen))
                except StopIteration as stop:
                    return tokens, stop.value

    tokens, final = await asyncio.to_thread(run)
    assert final.result.answer == "green"
    assert "".join(tokens) == final.raw_output


async def test_stream_is_validated_at_call_and_opened_at_first_next(
    emulator: Any, image_factory: Any, tmp_path: Path
) -> None:
    image = image_factory(shapes=[("green", (20, 20, 120, 120))])

    def run() -> None:
        with NIMPredictor(MODEL, "vqa", port=emulator.port) as p:
            with pytest.raises(MediaError, match=r"missing\.jpg"):
                p(tmp_path / "missing.jpg", stream=True)
            with pytest.raises(TypeError):
                p(image, stream=True, sampling_params={"max_tokens": 3})  # type: ignore[call-overload]
            gen = p(image, stream=True)
            assert emulator.metrics.prompt_tokens == 0  # nothing sent yet
            next(gen)
            assert emulator.metrics.prompt_tokens > 0
            gen.close()

    await asyncio.to_thread(run)


async def test_breaking_out_closes_the_http_response(
    start_emulator: Any, image_factory: Any
) -> None:
    image = image_factory(shapes=[("red", (10, 10, 90, 90))])
    async with start_emulator(itl_ms=20) as emu:

        def run() -> None:
            with NIMPredictor(MODEL, "phrase-grounding", port=emu.port) as p:
                for _token in p(image, stream=True):
                    break

        await asyncio.to_thread(run)
        await wait_until(lambda: emu.metrics.running == 0)
        assert emu.metrics.success == {"abort": 1}


async def test_facade_inside_asyncio_run(emulator: Any, image_factory: Any) -> None:
    image = image_factory(shapes=[("orange", (10, 10, 200, 100))])

    def notebook() -> tuple[str, str]:
        async def cell() -> tuple[str, str]:
            # a running event loop in this thread: the facade must still work
            asyncio.get_running_loop()
            predictor = NIMPredictor(MODEL, "vqa", port=emulator.port)
            try:
                plain = predictor(image, "What color is the rectangle?")
                streamed = "".join(predictor(image, "What color is the rectangle?", stream=True))
            finally:
                predictor.close()
            return plain.result.answer, streamed

        return asyncio.run(cell())

    answer, streamed = await asyncio.to_thread(notebook)
    assert answer == "orange"
    assert "orange" in streamed


async def test_errors_cross_unchanged_and_close(
    start_emulator: Any, emulator: Any, image_factory: Any
) -> None:
    image = image_factory()

    def run() -> None:
        p = NIMPredictor("nope", "vqa", port=emulator.port)
        with pytest.raises(ModelNotFoundError):
            p(image)
        with pytest.raises(ModelNotFoundError):
            list(p(image, stream=True))
        assert p.health_ready()
        assert p.list_models() == [MODEL]
        p.close()
        p.close()  # idempotent
        with pytest.raises(RuntimeError, match="closed"):
            p(image)

    await asyncio.to_thread(run)
    async with start_emulator(disconnect_after=3) as emu:

        def broken() -> None:
            with NIMPredictor(MODEL, "phrase-grounding", port=emu.port) as p:
                tokens: list[str] = []

                def consume() -> None:
                    tokens.extend(p(image, stream=True))

                with pytest.raises(StreamError) as info:
                    consume()
                assert info.value.partial_text == "".join(tokens)

        await asyncio.to_thread(broken)


async def test_predict_many_generator(emulator: Any, image_factory: Any) -> None:
    colors = ["red", "green", "blue", "yellow"]
    images = [image_factory(shapes=[(c, (10, 10, 90, 90))]) for c in colors]

    def run() -> dict[int, Any]:
        with NIMPredictor(MODEL, "vqa", port=emulator.port) as p:
            return {
                r.index: r.response.result.answer if r.response else r.error
                for r in p.predict_many(images, concurrency=2, user_prompt="What color?")
            }

    assert await asyncio.to_thread(run) == dict(enumerate(colors))


async def test_sampling_params_sync(emulator: Any, image_factory: Any) -> None:
    image = image_factory(shapes=[("red", (10, 10, 90, 90))])

    def run() -> PredictionResponse:
        with NIMPredictor(MODEL, "phrase-grounding", port=emulator.port) as p:
            return p(image, sampling_params=NIMSamplingParams(max_tokens=5))

    with pytest.raises(Exception, match="max_tokens") as info:
        await asyncio.to_thread(run)
    assert type(info.value).__name__ == "PredictionParseError"


_CTRL_C_CHILD = textwrap.dedent(
    """
    import asyncio, io, threading
    from aiohttp import web
    from PIL import Image
    from nim_async.sync.predictor import NIMPredictor

    ready = threading.Event()
    arrived = threading.Event()
    disconnected = threading.Event()
    stop = threading.Event()
    box = {}

    async def chat(request):
        await request.read()
        arrived.set()
        # a slow server: answer only after the client has gone away (or a minute)
        for _ in range(6000):
            if request.transport is None or request.transport.is_closing():
                disconnected.set()
                break
            await asyncio.sleep(0.01)
        return web.json_response({})

    async def serve():
        app = web.Application(client_max_size=2**26)
        app.router.add_post("/v1/chat/completions", chat)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        box["port"] = runner.addresses[0][1]
        ready.set()
        while not stop.is_set():
            await asyncio.sleep(0.01)
        await runner.cleanup()

    threading.Thread(target=lambda: asyncio.run(serve()), daemon=True).start()
    ready.wait()

    def watch():
        arrived.wait()
        print("RUNNING", flush=True)

    threading.Thread(target=watch, daemon=True).start()
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), "red").save(buf, "PNG")
    p = NIMPredictor("cosmos-reason1-7b", "vqa", port=box["port"])
    try:
        p(buf.getvalue())
        print("NOT INTERRUPTED", flush=True)
    except KeyboardInterrupt:
        print("CANCELLED disconnected=%s" % disconnected.wait(10), flush=True)
    p.close()
    stop.set()
    """
)


@pytest.mark.skipif(sys.platform == "win32", reason="SIGINT delivery is POSIX-specific")
async def test_ctrl_c_cancels_the_request() -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _CTRL_C_CHILD,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert proc.stdout is not None
    line = await asyncio.wait_for(proc.stdout.readline(), 60)
    assert line.strip() == b"RUNNING"
    proc.send_signal(signal.SIGINT)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert out.strip() == b"CANCELLED disconnected=True", err.decode()
    assert proc.returncode == 0


async def test_predict_many_generator_closed_early(start_emulator: Any, image_factory: Any) -> None:
    image = image_factory(shapes=[("red", (10, 10, 90, 90))])
    async with start_emulator(itl_ms=5) as emu:

        def run() -> int:
            with NIMPredictor(MODEL, "vqa", port=emu.port) as p:
                gen = p.predict_many([image] * 20, concurrency=4, user_prompt="What color?")
                first = next(gen)
                gen.close()  # cancels what is still running
                assert first.response is not None
                return first.index

        assert await asyncio.to_thread(run) in range(20)
        await wait_until(lambda: emu.metrics.running == 0)
        assert sum(emu.metrics.success.values()) < 20


async def test_one_predictor_from_sixteen_threads(emulator: Any, image_factory: Any) -> None:
    # Thread i asks about its own image (colour i % 4, i // 4 + 1 shapes): every answer must
    # be its own, for plain calls and streams interleaved on the one loop thread.
    colours = ["red", "blue", "green", "orange"]
    images = [
        image_factory(
            size=(320, 80),
            shapes=[
                (colours[i % 4], (10 + 70 * k, 10, 60 + 70 * k, 60)) for k in range(i // 4 + 1)
            ],
            fmt="PNG",
        )
        for i in range(16)
    ]

    def run() -> dict[int, list[tuple[str, str]]]:
        answers: dict[int, list[tuple[str, str]]] = {}
        errors: list[BaseException] = []
        barrier = threading.Barrier(16)
        with NIMPredictor(MODEL, "vqa", port=emulator.port, max_connections=16) as p:

            def work(i: int) -> None:
                try:
                    barrier.wait()
                    got = []
                    for _ in range(4):
                        count = p(images[i], "How many shapes are there?").result.answer
                        gen = p(images[i], "What color are the shapes?", stream=True)
                        text = "".join(gen)
                        got.append((str(count), text))
                    answers[i] = got
                except BaseException as exc:
                    errors.append(exc)

            threads = [threading.Thread(target=work, args=(i,)) for i in range(16)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        assert not errors, errors
        return answers

    answers = await asyncio.to_thread(run)
    assert sorted(answers) == list(range(16))
    for i, got in answers.items():
        for count, text in got:
            assert count == str(i // 4 + 1)
            assert colours[i % 4] in text
            assert not any(c in text for c in colours if c != colours[i % 4])


@pytest.mark.parametrize("ordered", [False, True])
async def test_blocking_batch_holds_an_endless_generator(
    emulator: Any, image_factory: Any, ordered: bool
) -> None:
    # Backpressure: while the caller holds a result, the batch pulls no more than
    # concurrency + 2 inputs beyond those whose results were taken (reorder_window + 2 ordered).
    image = image_factory(size=(120, 80), shapes=[("red", (10, 10, 50, 60))], fmt="PNG")
    concurrency = 4
    pulled = 0

    def endless() -> Iterator[bytes]:
        nonlocal pulled
        while True:
            pulled += 1
            yield image

    def run() -> list[tuple[int, int]]:
        seen: list[tuple[int, int]] = []
        with NIMPredictor(MODEL, "vqa", port=emulator.port) as p:
            results = p.predict_many(
                endless(), concurrency=concurrency, ordered=ordered, reorder_window=8
            )
            for taken, result in enumerate(results, start=1):
                assert result.ok, result.error
                if taken in (1, 10, 30):
                    time.sleep(1.0)  # a slow caller: the producer must wait, not run ahead
                    seen.append((taken, pulled))
                if taken == 30:
                    break
            results.close()
        return seen

    seen = await asyncio.to_thread(run)
    allowance = (8 if ordered else concurrency) + 2
    assert [taken for taken, _ in seen] == [1, 10, 30]
    for taken, at in seen:
        assert at <= taken + allowance, (taken, at)
