"""Sampling fields (and where they are read), token accounting, guided decoding, request shapes."""

from __future__ import annotations

import logging
import re

import jsonschema
import orjson
import pytest

from nim_async.emulator.tokens import split_tokens
from nim_async.protocol.tasks import get_task
from nim_async.protocol.tasks.base import ParseContext

Q = "Is there a red square?"


def _content(r) -> str:
    assert r.status_code == 200, r.text
    return r.json()["choices"][0]["message"]["content"]


@pytest.fixture
def red_image(image_factory):
    return image_factory(shapes=[("red", (20, 20, 120, 120))])


async def test_max_tokens_truncates_with_length(emulator, api, red_image):
    full = _content(await api.post(emulator.url, api.body(red_image, Q)))
    r = await api.post(emulator.url, api.body(red_image, Q, max_tokens=4))
    data = r.json()
    assert data["choices"][0]["finish_reason"] == "length"
    assert data["usage"]["completion_tokens"] == 4
    assert data["choices"][0]["message"]["content"] == "".join(split_tokens(full)[:4])
    r2 = await api.post(emulator.url, api.body(red_image, Q, max_completion_tokens=5))
    assert r2.json()["usage"]["completion_tokens"] == 5


async def test_stream_usage_matches_chunks(emulator, api, red_image):
    chunks = await api.stream_chunks(
        emulator.url, api.body(red_image, Q, stream_options={"include_usage": True})
    )
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    content_chunks = [c for c in chunks[1:] if c["choices"]]
    assert content_chunks[-1]["choices"][0]["finish_reason"] == "stop"
    assert all(c["choices"][0]["finish_reason"] is None for c in content_chunks[:-1])
    usage = chunks[-1]["usage"]
    assert chunks[-1]["choices"] == []
    assert usage["completion_tokens"] == len(content_chunks)
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert len({c["id"] for c in chunks}) == 1


async def test_stream_without_usage_has_no_usage_chunk(emulator, api, red_image):
    chunks = await api.stream_chunks(emulator.url, api.body(red_image, Q))
    assert all(c["choices"] for c in chunks)
    assert all("usage" not in c for c in chunks)


async def test_continuous_usage_stats(emulator, api, red_image):
    body = api.body(
        red_image,
        Q,
        stream_options={"include_usage": True, "continuous_usage_stats": True},
    )
    chunks = await api.stream_chunks(emulator.url, body)
    counts = [c["usage"]["completion_tokens"] for c in chunks]
    assert counts == sorted(counts)
    assert counts[0] == 0
    assert counts[-1] == len(chunks) - 2


async def test_stream_equals_non_stream(emulator, api, red_image):
    text = _content(await api.post(emulator.url, api.body(red_image, "Describe the image.")))
    chunks = await api.stream_chunks(emulator.url, api.body(red_image, "Describe the image."))
    assert api.stream_text(chunks) == text


async def test_stop_sequence(emulator, api, red_image):
    full = _content(await api.post(emulator.url, api.body(red_image, Q)))
    r = await api.post(emulator.url, api.body(red_image, Q, stop=["answer", "zzz"]))
    choice = r.json()["choices"][0]
    assert choice["finish_reason"] == "stop"
    assert choice["stop_reason"] == "answer"
    assert choice["message"]["content"] == full[: full.index("answer")]
    r = await api.post(
        emulator.url, api.body(red_image, Q, stop="answer", include_stop_str_in_output=True)
    )
    assert _content(r) == full[: full.index("answer") + len("answer")]


async def test_seed_repeats_and_varies_wording(emulator, api, red_image):
    def body(seed):
        return api.body(red_image, "Describe the image.", temperature=1.0, seed=seed)

    first = _content(await api.post(emulator.url, body(7)))
    assert _content(await api.post(emulator.url, body(7))) == first
    outputs = {_content(await api.post(emulator.url, body(s))) for s in range(12)}
    assert len(outputs) > 1
    # greedy / unseeded output is deterministic
    plain = {
        _content(await api.post(emulator.url, api.body(red_image, "Describe it."))) for _ in "ab"
    }
    assert len(plain) == 1


async def test_min_tokens_and_ignore_eos_extend(emulator, api, red_image):
    natural = _content(await api.post(emulator.url, api.body(red_image, Q)))
    r = await api.post(emulator.url, api.body(red_image, Q, min_tokens=120, max_tokens=200))
    data = r.json()
    assert data["usage"]["completion_tokens"] == 120
    assert data["choices"][0]["finish_reason"] == "stop"
    assert data["choices"][0]["message"]["content"].startswith(natural)
    r = await api.post(emulator.url, api.body(red_image, Q, ignore_eos=True, max_tokens=300))
    data = r.json()
    assert data["usage"]["completion_tokens"] == 300
    assert data["choices"][0]["finish_reason"] == "length"
    chunks = await api.stream_chunks(
        emulator.url,
        api.body(
            red_image, Q, ignore_eos=True, max_tokens=50, stream_options={"include_usage": True}
        ),
    )
    assert chunks[-1]["usage"]["completion_tokens"] == 50


async def test_structured_outputs_choice(emulator, api, red_image):
    r = await api.post(
        emulator.url, api.body(red_image, Q, structured_outputs={"choice": ["no", "yes"]})
    )
    assert _content(r) == "yes"
    r = await api.post(
        emulator.url, api.body(red_image, Q, structured_outputs={"choice": ["maybe", "no"]})
    )
    assert _content(r) in ("maybe", "no")


async def test_top_level_guided_choice_is_ignored_by_default_like_vllm_032(
    emulator, api, red_image, caplog
):
    # vLLM 0.32 removed the guided_* fields: HTTP 200, output unconstrained, one warning.
    caplog.set_level(logging.WARNING, logger="nim_async.emulator")
    r = await api.post(emulator.url, api.body(red_image, Q, guided_choice=["cat", "dog"]))
    assert orjson.loads(_content(r)) == {"vqa": {"answer": "yes"}}
    assert "removed guided-decoding field(s) ['guided_choice']" in caplog.text


async def test_guided_choice_in_legacy_mode(start_emulator, api, red_image):
    # --legacy-guided: vLLM < 0.12 / NIM 1.x enforced the top-level guided_* fields.
    async with start_emulator(legacy_guided=True) as emu:
        r = await api.post(emu.url, api.body(red_image, Q, guided_choice=["no", "yes"]))
        assert _content(r) == "yes"
        r = await api.post(emu.url, api.body(red_image, Q, guided_choice=["cat", "dog"]))
        assert _content(r) in ("cat", "dog")


SCHEMAS = [
    {
        "type": "object",
        "properties": {
            "label": {"type": "string", "minLength": 12},
            "n": {"type": "integer", "minimum": 3},
        },
        "required": ["label", "n"],
        "additionalProperties": False,
    },
    {
        "type": "object",
        "properties": {
            "items": {"type": "array", "items": {"$ref": "#/$defs/item"}, "minItems": 2},
            "kind": {"enum": ["a", "b"]},
            "score": {"type": "number", "exclusiveMinimum": 0, "maximum": 1},
            "ok": {"type": "boolean"},
            "when": {"type": "string", "format": "date"},
            "code": {"type": "string", "pattern": "^[A-Z]{3}-\\d{2}$"},
            "maybe": {"anyOf": [{"type": "null"}, {"type": "integer"}]},
        },
        "required": ["items", "kind", "score", "ok", "code"],
        "$defs": {"item": {"type": "object", "properties": {"x": {"const": 1}}, "required": ["x"]}},
    },
    {"type": "array", "items": {"type": "string"}, "maxItems": 2},
]


@pytest.mark.parametrize("schema", SCHEMAS)
@pytest.mark.parametrize(
    "how", ["guided_json", "guided_json_str", "response_format", "structured_outputs", "nvext"]
)
async def test_guided_json_validates(start_emulator, api, red_image, schema, how):
    # guided_json and nvext are legacy forms (vLLM 0.32 ignores them): legacy mode for those.
    emulator = start_emulator(legacy_guided=how in ("guided_json", "guided_json_str", "nvext"))
    await emulator.start()
    if how == "structured_outputs":
        extra = {"structured_outputs": {"json": schema}}
    elif how == "guided_json":
        extra = {"guided_json": schema}
    elif how == "guided_json_str":
        extra = {"guided_json": orjson.dumps(schema).decode()}
    elif how == "nvext":
        extra = {"nvext": {"guided_json": schema}}
    else:
        extra = {
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "x", "schema": schema},
            }
        }
    text = _content(await api.post(emulator.url, api.body(red_image, "Fill it in.", **extra)))
    jsonschema.validate(orjson.loads(text), schema)


@pytest.mark.parametrize("task_name", ["phrase-grounding", "vqa"])
async def test_guided_json_task_schema_gives_task_output(emulator, api, red_image, task_name):
    task = get_task(task_name)
    text = _content(
        await api.post(
            emulator.url,
            api.body(
                red_image, "Anything at all", structured_outputs={"json": task.output_schema()}
            ),
        )
    )
    obj = orjson.loads(text)
    jsonschema.validate(obj, task.output_schema())
    assert task.key in obj


async def test_json_object_response_format(emulator, api, red_image):
    r = await api.post(
        emulator.url, api.body(red_image, Q, response_format={"type": "json_object"})
    )
    assert orjson.loads(_content(r)) == {"vqa": {"answer": "yes"}}


@pytest.mark.parametrize(
    "pattern",
    [r"\d{3}-[a-z]+", r"(yes|no)", r"[A-Z][a-z]{2,5} \w+\.", r"^(?:cat|dog)s?$", r"[^abc]x*"],
)
async def test_guided_regex(start_emulator, api, red_image, pattern):
    async with start_emulator(legacy_guided=True) as emu:
        for extra in ({"structured_outputs": {"regex": pattern}}, {"guided_regex": pattern}):
            text = _content(await api.post(emu.url, api.body(red_image, Q, **extra)))
            assert re.fullmatch(pattern, text)
            if pattern == "(yes|no)":
                assert text == "yes"


async def test_ignore_guided_overrides_legacy_mode(start_emulator, api, red_image):
    async with start_emulator(ignore_guided=True, legacy_guided=True) as emu:
        text = _content(
            await api.post(emu.url, api.body(red_image, Q, guided_choice=["cat", "dog"]))
        )
        assert text not in ("cat", "dog")
        assert orjson.loads(text) == {"vqa": {"answer": "yes"}}
        # structured_outputs stays honoured, as in vLLM >= 0.12
        r = await api.post(emu.url, api.body(red_image, Q, structured_outputs={"choice": ["cat"]}))
        assert _content(r) == "cat"
        # unsupported regex is not even checked when guided_* is ignored
        r = await api.post(emu.url, api.body(red_image, Q, guided_regex="(?=x)x"))
        assert r.status_code == 200


@pytest.mark.parametrize(
    ("sampling_fields", "legacy", "top_level", "nvext"),
    [
        (None, False, False, False),  # the default: vLLM 0.32 ignores guided_* and nvext
        (None, True, True, True),  # legacy mode: NIM 1.x read both
        ("both", True, True, True),
        ("openai", True, True, False),
        ("nvext", True, False, True),
        ("nvext", False, False, True),  # sampling_fields="nvext" reads nvext (NIM 1.x)
    ],
)
async def test_sampling_field_sources(
    start_emulator, api, red_image, caplog, sampling_fields, legacy, top_level, nvext
):
    caplog.set_level(logging.WARNING, logger="nim_async.emulator")
    async with start_emulator(sampling_fields=sampling_fields, legacy_guided=legacy) as emu:
        r_top = await api.post(emu.url, api.body(red_image, Q, guided_choice=["cat"], top_k=5))
        r_nv = await api.post(
            emu.url, api.body(red_image, Q, nvext={"guided_choice": ["cat"], "top_k": 5})
        )
    assert (_content(r_top) == "cat") is top_level
    assert (_content(r_nv) == "cat") is nvext
    if not (top_level and nvext):
        assert "ignored" in caplog.text


async def test_unknown_fields_are_logged_and_ignored(emulator, api, red_image, caplog):
    caplog.set_level(logging.WARNING, logger="nim_async.emulator")
    r = await api.post(emulator.url, api.body(red_image, Q, frobnicate=1, extra_thing="x"))
    assert r.status_code == 200
    assert "frobnicate" in caplog.text
    assert "extra_thing" in caplog.text


async def test_reasoning_prefix(start_emulator, api, red_image):
    async with start_emulator(reasoning=True) as emu:
        text = _content(await api.post(emu.url, api.body(red_image, Q)))
    assert text.startswith("<think>")
    res = get_task("vqa").parse(text, ParseContext(prompt=Q))
    assert res.thinking
    assert res.answer == "yes"


async def test_aiperf_and_guidellm_shaped_requests(emulator, api):
    # aiperf: plain-string content, max_completion_tokens, ignore_eos, min_tokens, continuous usage
    aiperf = {
        "model": "cosmos-reason1-7b",
        "messages": [{"role": "user", "content": "lorem ipsum dolor sit amet " * 20}],
        "max_completion_tokens": 64,
        "min_tokens": 64,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True, "continuous_usage_stats": True},
    }
    chunks = await api.stream_chunks(emulator.url, aiperf)
    assert chunks[-1]["usage"]["completion_tokens"] == 64
    # guidellm: list content with text parts, both max_tokens fields, stop None
    guidellm = {
        "model": "cosmos-reason1-7b",
        "messages": [{"role": "user", "content": [{"type": "text", "text": "hello there"}]}],
        "max_tokens": 32,
        "max_completion_tokens": 32,
        "stop": None,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    chunks = await api.stream_chunks(emulator.url, guidellm)
    assert chunks[-1]["usage"]["completion_tokens"] == 32
    # multi-turn with an assistant message without content
    multi = {
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": None},
            {"role": "user", "content": "What colour?"},
        ]
    }
    r = await api.post(emulator.url, multi)
    assert r.status_code == 200


async def test_simple_grammar_is_enforced_others_accepted_unenforced(
    emulator, api, red_image, caplog
):
    caplog.set_level(logging.INFO, logger="nim_async.emulator")
    grammar = 'root ::= answer "!"\nanswer ::= "si" | "no"'
    r = await api.post(
        emulator.url, api.body(red_image, Q, structured_outputs={"grammar": grammar})
    )
    assert _content(r) == "si!"
    # outside the emulator's EBNF subset (a negated class): accepted, not enforced, logged
    r = await api.post(
        emulator.url, api.body(red_image, Q, structured_outputs={"grammar": "root ::= [^a]"})
    )
    assert orjson.loads(_content(r)) == {"vqa": {"answer": "yes"}}
    assert "guided_grammar" in caplog.text


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (
            {
                "structured_outputs": {"choice": ["a"]},
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": "x", "schema": {"type": "object"}},
                },
            },
            "You can only use one kind of structured outputs constraint but multiple are specified",
        ),
        (
            {"structured_outputs": {"choice": ["a"], "regex": "a"}},
            "You can only use one kind of constraints for structured outputs ('json', 'regex' or "
            "'choice').",
        ),
        (
            {"structured_outputs": {"choice": ["a"], "grammar": 'root ::= "a"'}},
            "You can only use one kind of structured outputs constraint but multiple are specified",
        ),
        (
            {"structured_outputs": {}},
            "You must use one kind of structured outputs constraint but none are specified",
        ),
    ],
)
async def test_conflicting_structured_outputs_get_vllms_400(
    emulator, api, red_image, extra, message
):
    r = await api.post(emulator.url, api.body(red_image, Q, **extra))
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["message"].startswith(message)
    assert (err["type"], err["code"]) == ("BadRequestError", 400)


async def test_ignored_guided_field_beside_structured_outputs_is_no_conflict(
    emulator, api, red_image
):
    body = api.body(red_image, Q, guided_regex="x", structured_outputs={"choice": ["cat"]})
    assert _content(await api.post(emulator.url, body)) == "cat"


async def test_constructor_overrides_settings():
    from nim_async.emulator import Emulator, EmulatorSettings

    base = EmulatorSettings(served_model_name="a", ttft_ms=1)
    async with Emulator(base, host="127.0.0.1", port=0, ttft_ms=5, max_model_len=100) as emu:
        assert emu.settings.served_model_name == "a"
        assert emu.settings.ttft_ms == 5
        assert emu.settings.max_model_len == 100
        assert emu.url == f"http://127.0.0.1:{emu.port}"
    with pytest.raises(TypeError):
        Emulator(nope=1)
