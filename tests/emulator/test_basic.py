from __future__ import annotations

import httpx
import orjson

from nim_async.protocol.tasks import get_task
from nim_async.protocol.tasks.base import ParseContext


async def test_health_and_models(emulator):
    async with httpx.AsyncClient(base_url=emulator.url) as c:
        assert (await c.get("/v1/health/live")).status_code == 200
        r = await c.get("/v1/health/ready")
        assert r.status_code == 200
        assert r.json() == {"object": "health.response", "message": "Service is ready."}
        models = (await c.get("/v1/models")).json()
    assert models["object"] == "list"
    card = models["data"][0]
    assert card["id"] == "cosmos-reason1-7b"
    assert card["max_model_len"] == 8192
    assert "emulator" in card["owned_by"]


async def test_grounding_non_stream_parses_with_task(emulator, image_factory, make_body):
    img = image_factory(shapes=[("red", (40, 60, 200, 220)), ("blue", (300, 100, 500, 400))])
    task = get_task("phrase-grounding")
    body = make_body(
        img,
        task.default_prompt,
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "pg", "schema": task.output_schema()},
        },
    )
    async with httpx.AsyncClient(base_url=emulator.url) as c:
        r = await c.post("/v1/chat/completions", json=body)
    assert r.status_code == 200, r.text
    data = r.json()
    assert data["object"] == "chat.completion"
    text = data["choices"][0]["message"]["content"]
    res = task.parse(
        text,
        ParseContext(
            prompt="p",
            box_format="qwen25-abs",
            original_size=(640, 480),
            model_input_size=(644, 476),
        ),
    )
    assert len(res.groundings) == 2
    assert data["usage"]["completion_tokens"] > 0


async def test_vqa_stream(emulator, image_factory, make_body):
    img = image_factory(shapes=[("green", (40, 60, 200, 220))])
    body = make_body(
        img, "What color is the square?", stream=True, stream_options={"include_usage": True}
    )
    chunks = []
    async with (
        httpx.AsyncClient(base_url=emulator.url) as c,
        c.stream("POST", "/v1/chat/completions", json=body) as r,
    ):
        assert r.status_code == 200
        async for line in r.aiter_lines():
            if line.startswith("data: "):
                chunks.append(line[6:])
    assert chunks[-1] == "[DONE]"
    objs = [orjson.loads(c) for c in chunks[:-1]]
    text = "".join(o["choices"][0]["delta"].get("content", "") for o in objs if o["choices"])
    assert orjson.loads(text) == {"vqa": {"answer": "green"}}
    assert objs[-1]["choices"] == []
    assert objs[-1]["usage"]["completion_tokens"] == len(objs) - 2
