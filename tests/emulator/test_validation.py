"""Every rejected request gets a vLLM-shaped JSON error, and the next request is served."""

from __future__ import annotations

import base64

import orjson
import pytest

GOOD = {"model": "cosmos-reason1-7b", "messages": [{"role": "user", "content": "What colour?"}]}


def _msg(content):
    return {**GOOD, "messages": [{"role": "user", "content": content}]}


def _img(url: str):
    return _msg([{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": "hi"}])


BAD_400 = {
    "body-not-json": b"{not json",
    "body-is-list": b"[1, 2]",
    "messages-missing": {"model": "cosmos-reason1-7b"},
    "messages-empty": {**GOOD, "messages": []},
    "messages-not-list": {**GOOD, "messages": "hi"},
    "message-not-object": {**GOOD, "messages": ["hi"]},
    "bad-role": {**GOOD, "messages": [{"role": "robot", "content": "hi"}]},
    "content-number": _msg(5),
    "user-content-null": _msg(None),
    "part-not-object": _msg(["hi"]),
    "part-unknown-type": _msg([{"type": "audio", "audio": "x"}]),
    "text-not-string": _msg([{"type": "text", "text": 3}]),
    "image-url-missing": _msg([{"type": "image_url", "image_url": {}}]),
    "temperature-negative": {**GOOD, "temperature": -1},
    "temperature-string": {**GOOD, "temperature": "hot"},
    "top-p-zero": {**GOOD, "top_p": 0},
    "top-p-above-one": {**GOOD, "top_p": 1.5},
    "top-k-below-minus-one": {**GOOD, "top_k": -2},
    "top-k-float": {**GOOD, "top_k": 1.5},
    "min-p-above-one": {**GOOD, "min_p": 1.5},
    "presence-penalty": {**GOOD, "presence_penalty": 3},
    "frequency-penalty": {**GOOD, "frequency_penalty": -2.5},
    "repetition-penalty-zero": {**GOOD, "repetition_penalty": 0},
    "max-tokens-zero": {**GOOD, "max_tokens": 0},
    "max-tokens-string": {**GOOD, "max_tokens": "10"},
    "max-completion-tokens-negative": {**GOOD, "max_completion_tokens": -1},
    "min-tokens-above-max": {**GOOD, "max_tokens": 5, "min_tokens": 10},
    "min-tokens-negative": {**GOOD, "min_tokens": -1},
    "n-zero": {**GOOD, "n": 0},
    "n-two": {**GOOD, "n": 2},
    "seed-string": {**GOOD, "seed": "x"},
    "stop-number": {**GOOD, "stop": 5},
    "stream-string": {**GOOD, "stream": "yes"},
    "stream-options-without-stream": {**GOOD, "stream_options": {"include_usage": True}},
    "logprobs-string": {**GOOD, "logprobs": "x"},
    "top-logprobs-too-many": {**GOOD, "top_logprobs": 50},
    "ignore-eos-string": {**GOOD, "ignore_eos": "x"},
    "data-uri-not-base64": _img("data:image/png,abc"),
    "data-uri-bad-base64": _img("data:image/png;base64,@@@@"),
    "data-uri-not-image": _img("data:text/plain;base64,aGk="),
    "data-uri-garbage": _img("data:;;;"),
    "image-url-file-scheme": _img("file:///etc/passwd"),
    "image-undecodable": _img(
        "data:image/png;base64," + base64.b64encode(b"not an image").decode()
    ),
    "prompt-too-long": _msg("word " * 9000),
    "max-tokens-beyond-context": {**GOOD, "max_tokens": 8192},
    "response-format-bad-type": {**GOOD, "response_format": {"type": "xml"}},
    "response-format-no-schema": {**GOOD, "response_format": {"type": "json_schema"}},
    "structured-outputs-not-object": {**GOOD, "structured_outputs": "x"},
    "so-choice-empty": {**GOOD, "structured_outputs": {"choice": []}},
    "so-choice-not-strings": {**GOOD, "structured_outputs": {"choice": [1, 2]}},
    "so-json-invalid": {**GOOD, "structured_outputs": {"json": "{not json"}},
    "so-regex-lookahead": {**GOOD, "structured_outputs": {"regex": "(?=a)a"}},
    "so-regex-invalid": {**GOOD, "structured_outputs": {"regex": "(unclosed"}},
    "so-two-kinds": {**GOOD, "structured_outputs": {"choice": ["a"], "regex": "a"}},
    "so-and-response-format": {
        **GOOD,
        "structured_outputs": {"regex": "a"},
        "response_format": {"type": "json_object"},
    },
}

# Rejected only in legacy mode (--legacy-guided: NIM 1.x read nvext and enforced guided_*);
# vLLM 0.32 ignores these fields, and so does the emulator by default (see IGNORED_BY_DEFAULT).
LEGACY_400 = {
    "nvext-not-object": {**GOOD, "nvext": 5},
    "nvext-bad-value": {**GOOD, "nvext": {"top_k": -5}},
    "guided-choice-empty": {**GOOD, "guided_choice": []},
    "guided-choice-not-strings": {**GOOD, "guided_choice": [1, 2]},
    "guided-json-invalid": {**GOOD, "guided_json": "{not json"},
    "guided-json-not-object": {**GOOD, "guided_json": 5},
    "guided-regex-lookahead": {**GOOD, "guided_regex": "(?=a)a"},
    "guided-regex-backref": {**GOOD, "guided_regex": "(a)\\1"},
    "guided-regex-invalid": {**GOOD, "guided_regex": "(unclosed"},
    "two-guided-kinds": {**GOOD, "guided_choice": ["a"], "guided_regex": "a"},
}


async def _check_error(api, url, body, status):
    r = await api.post(url, orjson.dumps(body) if not isinstance(body, bytes) else body)
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["code"] == status
    assert isinstance(err["message"], str)
    assert err["message"]
    ok = await api.post(url, GOOD)
    assert ok.status_code == 200, ok.text
    assert ok.json()["choices"][0]["message"]["content"]
    return err


@pytest.mark.parametrize("name", sorted(BAD_400))
async def test_bad_request_then_good_request(emulator, api, name):
    err = await _check_error(api, emulator.url, BAD_400[name], 400)
    assert err["type"] == "BadRequestError"


@pytest.mark.parametrize("name", sorted(LEGACY_400))
async def test_legacy_fields_rejected_in_legacy_mode(start_emulator, api, name):
    async with start_emulator(legacy_guided=True) as emu:
        err = await _check_error(api, emu.url, LEGACY_400[name], 400)
    assert err["type"] == "BadRequestError"


@pytest.mark.parametrize("name", sorted(LEGACY_400))
async def test_legacy_fields_ignored_by_default_like_vllm_032(emulator, api, name):
    r = await api.post(emulator.url, LEGACY_400[name])
    assert r.status_code == 200, r.text


async def test_unknown_model_is_404_then_good(emulator, api):
    err = await _check_error(api, emulator.url, {**GOOD, "model": "gpt-4"}, 404)
    assert err["type"] == "NotFoundError"
    assert "gpt-4" in err["message"]


async def test_image_tokens_count_against_max_model_len(start_emulator, image_factory, api):
    async with start_emulator(max_model_len=300) as emu:
        img = image_factory(size=(640, 480))  # 23 x 17 patches = 391 tokens
        err = await _check_error(api, emu.url, api.body(img, "hi"), 400)
        assert "maximum context length is 300" in err["message"]
        small = image_factory(size=(112, 112))
        assert (await api.post(emu.url, api.body(small, "hi"))).status_code == 200


async def test_missing_model_field_uses_served_model(emulator, api):
    body = {"messages": GOOD["messages"]}
    r = await api.post(emulator.url, body)
    assert r.status_code == 200
    assert r.json()["model"] == "cosmos-reason1-7b"
