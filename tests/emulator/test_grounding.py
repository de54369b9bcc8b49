"""The emulator's image reading: true boxes in every box format, VQA from the image."""

from __future__ import annotations

import random

import orjson
import pytest

from nim_async.catalog import BOX_FORMATS
from nim_async.protocol.geometry import qwen_image_tokens, smart_resize, to_pixels
from nim_async.protocol.tasks import get_task

COLORS = ["red", "blue", "green", "yellow", "purple", "orange", "cyan", "black"]
GROUNDING = get_task("phrase-grounding")


def _random_boxes(rng: random.Random, size: tuple[int, int], n: int):
    w, h = size
    boxes: list[tuple[int, int, int, int]] = []
    while len(boxes) < n:
        bw = rng.randint(int(w * 0.08), int(w * 0.3))
        bh = rng.randint(int(h * 0.08), int(h * 0.3))
        x0 = rng.randint(0, w - bw)
        y0 = rng.randint(0, h - bh)
        box = (x0, y0, x0 + bw, y0 + bh)
        # keep a gap so shapes never touch
        if all(
            box[2] + 4 < b[0] or b[2] + 4 < box[0] or box[3] + 4 < b[1] or b[3] + 4 < box[1]
            for b in boxes
        ):
            boxes.append(box)
    return boxes


def _schema_body(api, img: bytes, fmt: str = "image/jpeg", prompt: str | None = None):
    body = api.body(None, prompt or GROUNDING.default_prompt)
    body["messages"][0]["content"].insert(
        0, {"type": "image_url", "image_url": {"url": api.data_uri(img, fmt)}}
    )
    body["response_format"] = {
        "type": "json_schema",
        "json_schema": {"name": "phrase_grounding", "schema": GROUNDING.output_schema()},
    }
    body["temperature"] = 0
    return body


@pytest.mark.parametrize("box_format", BOX_FORMATS)
@pytest.mark.parametrize(
    ("size", "fmt"),
    [((640, 480), "JPEG"), ((1920, 1080), "PNG"), ((333, 517), "WEBP"), ((2000, 1500), "JPEG")],
)
async def test_random_rectangles_round_trip_within_2_percent(
    start_emulator, image_factory, api, box_format, size, fmt
):
    rng = random.Random(f"{box_format}{size}{fmt}")
    for _ in range(3):
        n = rng.randint(1, 4)
        colors = rng.sample(COLORS, n)
        boxes = _random_boxes(rng, size, n)
        img = image_factory(size=size, shapes=list(zip(colors, boxes, strict=True)), fmt=fmt)
        async with start_emulator(box_format=box_format) as emu:
            mime = "image/jpeg" if fmt == "JPEG" else f"image/{fmt.lower()}"
            r = await api.post(emu.url, _schema_body(api, img, mime))
        assert r.status_code == 200, r.text
        text = r.json()["choices"][0]["message"]["content"]
        out = orjson.loads(text)["phrase_grounding"]
        assert len(out["groundings"]) == n
        model_input = smart_resize(*size)
        found: dict[str, tuple[float, ...]] = {}
        for g in out["groundings"]:
            assert g["phrase"] in out["sentence"]
            assert len(g["grounding"]) == 1
            color = next(c for c in COLORS if c in g["phrase"])
            found[color] = to_pixels(
                tuple(g["grounding"][0]),
                box_format,
                original_size=size,
                model_input_size=model_input,
            )
        for color, truth in zip(colors, boxes, strict=True):
            got = found[color]
            for i, (a, b) in enumerate(zip(got, truth, strict=True)):
                side = size[i % 2]
                assert abs(a - b) <= 0.02 * side, (box_format, size, color, got, truth)


async def test_same_colour_shapes_share_one_phrase(emulator, image_factory, api):
    img = image_factory(
        shapes=[
            ("red", (20, 20, 120, 120)),
            ("red", (300, 300, 400, 400)),
            ("blue", (450, 40, 620, 120)),
            ("green", (100, 300, 250, 450), "ellipse"),
        ]
    )
    r = await api.post(emulator.url, _schema_body(api, img))
    out = orjson.loads(r.json()["choices"][0]["message"]["content"])["phrase_grounding"]
    phrases = {g["phrase"]: g["grounding"] for g in out["groundings"]}
    assert set(phrases) == {"two red squares", "a blue rectangle", "a green circle"}
    assert len(phrases["two red squares"]) == 2
    for phrase in phrases:
        assert out["sentence"].count(phrase) == 1


async def test_prompt_colour_restricts_groundings(emulator, image_factory, api):
    img = image_factory(shapes=[("red", (20, 20, 120, 120)), ("blue", (300, 300, 400, 400))])
    r = await api.post(
        emulator.url, _schema_body(api, img, prompt="Locate the blue object with a bounding box.")
    )
    out = orjson.loads(r.json()["choices"][0]["message"]["content"])["phrase_grounding"]
    assert [g["phrase"] for g in out["groundings"]] == ["a blue square"]


async def test_plain_image_has_no_groundings(emulator, image_factory, api):
    r = await api.post(emulator.url, _schema_body(api, image_factory(shapes=[])))
    out = orjson.loads(r.json()["choices"][0]["message"]["content"])["phrase_grounding"]
    assert out["groundings"] == []
    assert "white background" in out["sentence"]


async def test_task_from_prompt_without_schema(emulator, image_factory, api):
    img = image_factory(shapes=[("red", (20, 20, 120, 120))])
    body = api.body(img, "Find the objects and give a bounding box for each.")
    out = orjson.loads(
        (await api.post(emulator.url, body)).json()["choices"][0]["message"]["content"]
    )
    assert "phrase_grounding" in out
    body = api.body(img, "What colour is the square?")
    out = orjson.loads(
        (await api.post(emulator.url, body)).json()["choices"][0]["message"]["content"]
    )
    assert out == {"vqa": {"answer": "red"}}


@pytest.mark.parametrize(
    ("question", "answer"),
    [
        ("How many shapes are there?", "3"),
        ("How many red objects are in the image?", "2"),
        ("How many circles?", "1"),
        ("Is there a blue square?", "no"),
        ("Is there a green circle?", "yes"),
        ("Are there any red rectangles?", "yes"),
        ("Does the image contain purple?", "no"),
        ("What color is the circle?", "green"),
        ("What colours are the squares?", "red"),
        ("What is the background colour?", "white"),
    ],
)
async def test_vqa_answers_from_the_image(emulator, image_factory, api, question, answer):
    img = image_factory(
        shapes=[
            ("red", (20, 20, 120, 120)),
            ("red", (300, 300, 400, 400)),
            ("green", (100, 300, 250, 450), "ellipse"),
        ]
    )
    vqa = get_task("vqa")
    body = api.body(img, question)
    body["messages"].insert(0, {"role": "system", "content": vqa.system_prompt})
    r = await api.post(emulator.url, body)
    assert orjson.loads(r.json()["choices"][0]["message"]["content"]) == {"vqa": {"answer": answer}}


@pytest.mark.parametrize("fmt", ["PNG", "GIF", "BMP", "TIFF", "WEBP", "JPEG"])
async def test_image_formats(emulator, image_factory, api, fmt):
    img = image_factory(shapes=[("blue", (20, 20, 220, 220))], fmt=fmt)
    body = api.body(None, "What color is the square?")
    mime = "image/jpeg" if fmt == "JPEG" else f"image/{fmt.lower()}"
    body["messages"][0]["content"].insert(
        0, {"type": "image_url", "image_url": {"url": api.data_uri(img, mime)}}
    )
    r = await api.post(emulator.url, body)
    assert orjson.loads(r.json()["choices"][0]["message"]["content"]) == {"vqa": {"answer": "blue"}}


async def test_image_tokens_count_in_usage(emulator, image_factory, api):
    small = api.body(image_factory(size=(56, 56)), "hi")
    large = api.body(image_factory(size=(1120, 1120)), "hi")
    ps = (await api.post(emulator.url, small)).json()["usage"]["prompt_tokens"]
    pl = (await api.post(emulator.url, large)).json()["usage"]["prompt_tokens"]
    # one token per 28x28 patch after the Qwen2.5-VL resize (1120x1120 exceeds the budget)
    assert qwen_image_tokens(1120, 1120) < (1120 // 28) ** 2
    assert pl - ps == qwen_image_tokens(1120, 1120) - qwen_image_tokens(56, 56)


async def test_http_image_url_is_fetched(emulator, image_factory, api):
    from aiohttp import web

    png = image_factory(shapes=[("purple", (20, 20, 220, 220))], fmt="PNG")

    async def serve(request: web.Request) -> web.Response:
        return web.Response(body=png, content_type="image/png")

    app = web.Application()
    app.router.add_get("/img.png", serve)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        body = api.body(None, "What color is the square?")
        url = f"http://127.0.0.1:{port}/img.png"
        body["messages"][0]["content"].insert(0, {"type": "image_url", "image_url": {"url": url}})
        r = await api.post(emulator.url, body)
        assert orjson.loads(r.json()["choices"][0]["message"]["content"]) == {
            "vqa": {"answer": "purple"}
        }
        body["messages"][0]["content"][0]["image_url"]["url"] = url + ".missing"
        r = await api.post(emulator.url, body)
        assert r.status_code == 400
        assert "404" in r.json()["error"]["message"]
    finally:
        await runner.cleanup()
