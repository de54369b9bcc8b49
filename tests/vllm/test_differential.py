"""The emulator against the real vLLM 0.32: the same requests, compared on what the client uses.

Three servers answer each request: the real vLLM (``vllm_server``), the emulator with its
defaults (which follow vLLM 0.32) and the emulator in legacy mode (``legacy_guided=True``:
top-level ``guided_*`` enforced and ``nvext`` read, as NIM 1.x did). Compared: status codes,
error body keys, SSE chunk / usage / ``/v1/models`` keys, metric names, endpoints, and for each
structured-output request form whether the constraint was honoured, ignored or rejected.

vLLM serves a random-weight model: no text is compared. A constraint counts as honoured when all
of :data:`TRIES` answers (temperature 1) satisfy it, as ignored when none does.

The measured table is written to ``$NIM_DIFFERENTIAL_OUT`` (default
``/tmp/nim-async-differential.json``): ``{form: {server: outcome}}``.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from nim_async.emulator import Emulator, EmulatorSettings

pytestmark = pytest.mark.timeout(900)

OUT = Path(os.environ.get("NIM_DIFFERENTIAL_OUT", "/tmp/nim-async-differential.json"))
TRIES = 5
CHOICES = ["alpha7", "beta9"]
REGEX = r"[0-9]{3}-[a-z]{2}"
ENUM_SCHEMA = {"type": "string", "enum": CHOICES}
GRAMMAR = 'root ::= "alpha7" | "beta9"'
RESPONSE_FORMAT = {"type": "json_schema", "json_schema": {"name": "pick", "schema": ENUM_SCHEMA}}

# The tier's model: max_model_len 4096, Qwen2.5-VL processor with max_pixels 50176.
EMULATOR = EmulatorSettings(max_model_len=4096, max_pixels=50176)
SERVERS = ("vllm 0.32 (real)", "emulator default", "emulator legacy")


def _choice(text: str, finish: str) -> bool:
    return text in CHOICES


def _regex(text: str, finish: str) -> bool:
    return re.fullmatch(REGEX, text) is not None


def _json_enum(text: str, finish: str) -> bool:
    try:
        return json.loads(text) in CHOICES
    except ValueError:
        return False


def _json_object(text: str, finish: str) -> bool:
    # A random model constrained to "any JSON object" may write long whitespace runs inside
    # it (README of the reference): cut at max_tokens, an opened object is still the
    # constraint at work (unconstrained random text starts with "{" about once a vocabulary).
    try:
        return isinstance(json.loads(text), dict)
    except ValueError:
        return finish == "length" and text.lstrip().startswith("{")


FORMS: dict[str, tuple[dict[str, Any], Callable[[str, str], bool]]] = {
    "guided_choice (top level)": ({"guided_choice": CHOICES}, _choice),
    "guided_regex (top level)": ({"guided_regex": REGEX}, _regex),
    "guided_json (top level)": ({"guided_json": ENUM_SCHEMA}, _json_enum),
    "structured_outputs.choice": ({"structured_outputs": {"choice": CHOICES}}, _choice),
    "structured_outputs.regex": ({"structured_outputs": {"regex": REGEX}}, _regex),
    "structured_outputs.json": ({"structured_outputs": {"json": ENUM_SCHEMA}}, _json_enum),
    "structured_outputs.grammar": ({"structured_outputs": {"grammar": GRAMMAR}}, _choice),
    "response_format json_schema": ({"response_format": RESPONSE_FORMAT}, _json_enum),
    "response_format json_object": ({"response_format": {"type": "json_object"}}, _json_object),
    "nvext.guided_choice": ({"nvext": {"guided_choice": CHOICES}}, _choice),
    "structured_outputs + response_format": (
        {"structured_outputs": {"choice": CHOICES}, "response_format": RESPONSE_FORMAT},
        _choice,
    ),
    "two kinds in structured_outputs": (
        {"structured_outputs": {"choice": CHOICES, "regex": REGEX}},
        _choice,
    ),
}

# What legacy mode must do (NIM 1.x / vLLM < 0.12): every form honoured, conflicts rejected.
LEGACY_EXPECTED = {
    name: "rejected (400)" if name.startswith(("structured_outputs +", "two kinds")) else "honoured"
    for name in FORMS
}


def _body(model: str, **extra: Any) -> dict[str, Any]:
    return {
        "model": model,
        "messages": [{"role": "user", "content": "Pick one of alpha7 or beta9."}],
        **extra,
    }


async def _outcome(
    client: httpx.AsyncClient, body: dict[str, Any], ok: Callable[[str, str], bool]
) -> str:
    """``honoured`` / ``ignored`` / ``rejected (status)`` / ``partial k/N`` over TRIES answers."""
    answers = await asyncio.gather(
        *(client.post("/v1/chat/completions", json=body) for _ in range(TRIES))
    )
    statuses = {r.status_code for r in answers}
    if statuses != {200}:
        assert len(statuses) == 1, f"mixed statuses {statuses}"
        return f"rejected ({statuses.pop()})"
    choices = [r.json()["choices"][0] for r in answers]
    good = sum(ok(c["message"]["content"] or "", c["finish_reason"]) for c in choices)
    if good == TRIES:
        return "honoured"
    return "ignored" if good == 0 else f"partial {good}/{TRIES}"


@pytest.fixture
async def three(vllm_server: Any) -> AsyncIterator[dict[str, httpx.AsyncClient]]:
    """Clients of the three servers, keyed by :data:`SERVERS`."""
    async with (
        Emulator(EMULATOR) as default,
        Emulator(EMULATOR, legacy_guided=True) as legacy,
        httpx.AsyncClient(base_url=vllm_server.url, timeout=300) as real,
        httpx.AsyncClient(base_url=default.url, timeout=60) as emu,
        httpx.AsyncClient(base_url=legacy.url, timeout=60) as emu_legacy,
    ):
        yield dict(zip(SERVERS, (real, emu, emu_legacy), strict=True))


async def test_guided_field_handling_per_request_form(three, vllm_server):
    table: dict[str, dict[str, str]] = {}
    for name, (extra, ok) in FORMS.items():
        body = _body(vllm_server.model, temperature=1.0, max_tokens=48, **extra)
        table[name] = {server: await _outcome(c, body, ok) for server, c in three.items()}
    await asyncio.to_thread(OUT.write_text, json.dumps(table, indent=2) + "\n")
    real, default, legacy = SERVERS
    for name, row in table.items():
        assert row[default] == row[real], f"{name}: emulator {row[default]} vs vLLM {row[real]}"
        assert row[legacy] == LEGACY_EXPECTED[name], f"{name} in legacy mode: {row[legacy]}"
    # the facts, measured here: vLLM 0.32 ignores guided_* and nvext, rejects both kinds
    assert table["guided_choice (top level)"][real] == "ignored"
    assert table["nvext.guided_choice"][real] == "ignored"
    assert table["structured_outputs.choice"][real] == "honoured"
    assert table["structured_outputs + response_format"][real] == "rejected (400)"


BAD_REQUESTS: dict[str, dict[str, Any] | bytes] = {
    "unknown model": _body("nope"),
    "body not JSON": b"{not json",
    "messages missing": {"model": "cosmos-reason1-7b"},
    "temperature negative": _body("cosmos-reason1-7b", temperature=-1),
    "max_tokens over the context": _body("cosmos-reason1-7b", max_tokens=5000),
    "prompt over the context": {
        "model": "cosmos-reason1-7b",
        "messages": [{"role": "user", "content": "word " * 5000}],
    },
    "stream_options without stream": _body(
        "cosmos-reason1-7b", stream_options={"include_usage": True}
    ),
    "n zero": _body("cosmos-reason1-7b", n=0),
    "structured_outputs empty": _body("cosmos-reason1-7b", structured_outputs={}),
    "structured_outputs + response_format": _body(
        "cosmos-reason1-7b",
        structured_outputs={"choice": CHOICES},
        response_format=RESPONSE_FORMAT,
    ),
    "two kinds in structured_outputs": _body(
        "cosmos-reason1-7b", structured_outputs={"choice": CHOICES, "regex": REGEX}
    ),
}


async def _post(client: httpx.AsyncClient, body: dict[str, Any] | bytes) -> httpx.Response:
    if isinstance(body, bytes):
        headers = {"content-type": "application/json"}
        return await client.post("/v1/chat/completions", content=body, headers=headers)
    return await client.post("/v1/chat/completions", json=body)


@pytest.mark.parametrize("name", list(BAD_REQUESTS))
async def test_errors_have_vllms_status_and_body_shape(three, name):
    real, default, _ = SERVERS
    got = {s: await _post(three[s], BAD_REQUESTS[name]) for s in (real, default)}
    assert got[default].status_code == got[real].status_code, {
        s: (r.status_code, r.text[:200]) for s, r in got.items()
    }
    assert got[real].status_code >= 400
    shapes = {s: set(r.json()["error"]) for s, r in got.items()}
    assert shapes[default] == shapes[real] == {"message", "type", "param", "code"}
    assert got[default].json()["error"]["code"] == got[real].json()["error"]["code"]
    if name.startswith(("structured_outputs", "two kinds", "unknown model")):
        # the messages the client may show are vLLM's own words
        real_msg = got[real].json()["error"]["message"]
        emu_msg = got[default].json()["error"]["message"]
        assert emu_msg.split(":")[0] == real_msg.split(":")[0]


# Keys vLLM 0.32 sends that the emulator leaves out: none is read by the client (token ids,
# prompt echo, transfer and debugging fields, OpenAI fields vLLM always sends as null).
VLLM_ONLY_KEYS = {
    "token_ids",
    "routed_experts",
    "prompt_token_ids",
    "prompt_text",
    "system_fingerprint",
    "service_tier",
    "kv_transfer_params",
    "ec_transfer_params",
    "metrics",
    "refusal",
    "annotations",
    "audio",
    "function_call",
}


def _keys(obj: Any, path: str = "") -> set[str]:
    """Every key path of a JSON object (lists: their first element as ``[]``)."""
    out: set[str] = set()
    if isinstance(obj, dict):
        for k, v in obj.items():
            out.add(f"{path}{k}")
            out |= _keys(v, f"{path}{k}.")
    elif isinstance(obj, list) and obj:
        out |= _keys(obj[0], f"{path}[].")
    return out


def _missing(real: set[str], emu: set[str]) -> set[str]:
    return {k for k in real - emu if not set(k.replace("[].", ".").split(".")) & VLLM_ONLY_KEYS}


async def _stream(client: httpx.AsyncClient, body: dict[str, Any]) -> list[Any]:
    chunks: list[Any] = []
    async with client.stream("POST", "/v1/chat/completions", json=body) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        async for line in r.aiter_lines():
            if line.startswith("data: "):
                chunks.append(line[6:] if line == "data: [DONE]" else orjson.loads(line[6:]))
    return chunks


async def test_response_chunk_usage_and_models_keys(three, vllm_server):
    real, default, _ = SERVERS
    body = _body(vllm_server.model, max_tokens=4, ignore_eos=True)
    stream_body = {**body, "stream": True, "stream_options": {"include_usage": True}}
    plain = {
        s: (await three[s].post("/v1/chat/completions", json=body)).json() for s in (real, default)
    }
    assert _missing(_keys(plain[real]), _keys(plain[default])) == set()
    assert set(plain[default]["usage"]) == set(plain[real]["usage"])
    streams = {s: await _stream(three[s], stream_body) for s in (real, default)}
    for s in (real, default):
        assert streams[s][-1] == "[DONE]"
    r_chunks, e_chunks = streams[real][:-1], streams[default][:-1]
    # role chunk, content chunks, the last content chunk (finish_reason), the usage chunk
    for r_chunk, e_chunk in ((r_chunks[0], e_chunks[0]), (r_chunks[1], e_chunks[1])):
        assert _missing(_keys(r_chunk), _keys(e_chunk)) == set()
    assert (
        r_chunks[-2]["choices"][0]["finish_reason"] == e_chunks[-2]["choices"][0]["finish_reason"]
    )
    assert _missing(_keys(r_chunks[-2]), _keys(e_chunks[-2])) == set()
    assert r_chunks[-1]["choices"] == e_chunks[-1]["choices"] == []
    assert set(r_chunks[-1]["usage"]) == set(e_chunks[-1]["usage"])
    assert len(r_chunks) == len(e_chunks)  # role + 4 tokens + usage on both
    models = {s: (await three[s].get("/v1/models")).json() for s in (real, default)}
    assert set(models[default]) == set(models[real])
    assert set(models[default]["data"][0]) == set(models[real]["data"][0])


def _metric_names(text: str) -> set[str]:
    names = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            names.add(line.split()[2])
    return names


async def test_endpoints_and_metric_names(three):
    real, default, _ = SERVERS
    for s in (real, default):
        c = three[s]
        assert (await c.get("/health")).status_code == 200
        assert set((await c.get("/version")).json()) == {"version"}
        assert (await c.get("/metrics")).status_code == 200
    assert (await three[real].get("/version")).json() == (
        await three[default].get("/version")
    ).json()
    real_names = _metric_names((await three[real].get("/metrics")).text)
    emu_names = _metric_names((await three[default].get("/metrics")).text)
    emulated = {n for n in emu_names if n.startswith("vllm:")}
    # every vllm: metric the emulator serves is one vLLM 0.32 serves, by the same name
    assert emulated <= real_names, sorted(emulated - real_names)
    # and the ones the client and its benchmark read are all there
    for name in (
        "vllm:num_requests_running",
        "vllm:num_requests_waiting",
        "vllm:kv_cache_usage_perc",
        "vllm:time_to_first_token_seconds",
        "vllm:inter_token_latency_seconds",
        "vllm:request_time_per_output_token_seconds",
        "vllm:e2e_request_latency_seconds",
        "vllm:request_queue_time_seconds",
        "vllm:generation_tokens_total",
        "vllm:prompt_tokens_total",
        "vllm:request_success_total",
    ):
        assert name in real_names, name
        assert name in emu_names, name


def _png(size: tuple[int, int]) -> str:
    import base64
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", size, "white").save(buf, "PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


@pytest.mark.parametrize(
    "size",
    [(320, 240), (20, 15), (10, 900), (1000, 700), (5000, 30), (56, 56)],
    ids=lambda s: f"{s[0]}x{s[1]}",
)
async def test_image_tokens_match_vllms_processor(three, vllm_server, size):
    # The emulator's own resize rule against the real Qwen2.5-VL processor: prompt tokens with
    # the image minus without it (the image's pad tokens plus its two vision markers).
    real, default, _ = SERVERS
    text = {"type": "text", "text": "hi"}
    image = {"type": "image_url", "image_url": {"url": _png(size)}}
    deltas = {}
    for s in (real, default):
        counts = []
        for content in ([image, text], [text]):
            body = {
                "model": vllm_server.model,
                "messages": [{"role": "user", "content": content}],
                "max_tokens": 1,
            }
            r = await three[s].post("/v1/chat/completions", json=body)
            assert r.status_code == 200, r.text
            counts.append(r.json()["usage"]["prompt_tokens"])
        deltas[s] = counts[0] - counts[1]
    assert deltas[default] == deltas[real], deltas


async def test_aspect_ratio_over_200_is_refused_by_both(three, vllm_server):
    real, default, _ = SERVERS
    body = {
        "model": vllm_server.model,
        "messages": [
            {
                "role": "user",
                "content": [{"type": "image_url", "image_url": {"url": _png((3000, 10))}}],
            }
        ],
        "max_tokens": 1,
    }
    got = {s: await three[s].post("/v1/chat/completions", json=body) for s in (real, default)}
    assert got[default].status_code == got[real].status_code == 400, {
        s: r.text[:300] for s, r in got.items()
    }
