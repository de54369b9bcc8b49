"""Guided-output checks, the small JSON-schema validator, error shapes and dialect choice."""

from __future__ import annotations

from typing import Any

import jsonschema
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nim_async.config import NIMSamplingParams
from nim_async.errors import (
    BadRequestError,
    GuidedDecodingError,
    ModelNotFoundError,
    PredictionParseError,
    RateLimitError,
    ServerError,
)
from nim_async.protocol.guided import check_guided_output, validate_json_schema
from nim_async.protocol.status import error_for_status as _server_error
from nim_async.protocol.tasks import get_task
from nim_async.protocol.wire import wire_format_for

SCHEMAS: list[dict[str, Any]] = [
    get_task("phrase-grounding").output_schema(),
    get_task("vqa").output_schema(),
    {"type": "object", "properties": {"n": {"type": "integer", "minimum": 0, "maximum": 5}}},
    {"type": "object", "additionalProperties": False, "properties": {"a": {"type": "string"}}},
    {"type": "array", "items": {"type": "number"}, "minItems": 1, "maxItems": 3},
    {"type": "string", "pattern": "^[a-z]+$", "minLength": 2, "maxLength": 4},
    {"enum": ["yes", "no", 3]},
    {"anyOf": [{"type": "string"}, {"type": "null"}]},
    {"oneOf": [{"type": "integer"}, {"type": "number", "exclusiveMinimum": 10}]},
    {
        "$defs": {"p": {"type": "boolean"}},
        "type": "object",
        "properties": {"f": {"$ref": "#/$defs/p"}},
    },
    {"type": ["integer", "null"]},
    {"type": "array", "prefixItems": [{"type": "string"}, {"type": "integer"}]},
    {"allOf": [{"type": "object", "required": ["a"]}, {"type": "object", "required": ["b"]}]},
    {"not": {"type": "string"}},
    {"const": {"k": [1, 2]}},
]

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-20, 20)
    | st.floats(-20, 20, allow_nan=False)
    | st.sampled_from(["yes", "no", "ab", "abc", "ABC", "a", "", "sentence"]),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(
            st.sampled_from(["a", "b", "n", "f", "k", "vqa", "answer", "phrase_grounding"]),
            inner,
            max_size=4,
        )
    ),
    max_leaves=12,
)


@settings(max_examples=400, deadline=None)
@given(st.sampled_from(SCHEMAS), json_values)
def test_validator_agrees_with_jsonschema(schema: dict[str, Any], value: Any) -> None:
    expected = jsonschema.Draft202012Validator(schema).is_valid(value)
    assert (validate_json_schema(value, schema) is None) == expected


def test_validator_examples() -> None:
    schema = get_task("vqa").output_schema()
    assert validate_json_schema({"vqa": {"answer": "red"}}, schema) is None
    assert "answer" in (validate_json_schema({"vqa": {}}, schema) or "")
    assert "expected string" in (validate_json_schema({"vqa": {"answer": 3}}, schema) or "")


def test_guided_choice_regex_json() -> None:
    choice = NIMSamplingParams(guided_choice=["yes", "no", "maybe"])
    check_guided_output("yes", choice)
    check_guided_output("<think>hmm</think>\nmaybe\n", choice)
    with pytest.raises(GuidedDecodingError) as info:
        check_guided_output("I think yes", choice)
    assert info.value.constraint == "choice"
    assert info.value.raw_output == "I think yes"

    regex = NIMSamplingParams(guided_regex=r"\d{3}")
    check_guided_output("123", regex)
    with pytest.raises(GuidedDecodingError, match="regex"):
        check_guided_output("1234", regex)

    schema = {"type": "object", "required": ["a"], "properties": {"a": {"type": "integer"}}}
    js = NIMSamplingParams(guided_json=schema)
    check_guided_output('{"a": 1}', js)
    with pytest.raises(GuidedDecodingError, match="json"):
        check_guided_output('{"a": "x"}', js)
    with pytest.raises(GuidedDecodingError, match="not a JSON document"):
        check_guided_output("Sure! {}", js)
    # grammar cannot be checked client-side: never a false alarm
    check_guided_output("anything", NIMSamplingParams(guided_grammar="root ::= 'x'"))


def test_truncation_is_a_parse_error_not_an_ignored_constraint() -> None:
    js = NIMSamplingParams(guided_json={"type": "object"}, max_tokens=3)
    with pytest.raises(PredictionParseError, match="cut off"):
        check_guided_output('{"a', js, finish_reason="length")


def test_server_error_shapes() -> None:
    nested = _server_error(404, b'{"error": {"message": "no model x", "type": "NotFound"}}')
    assert isinstance(nested, ModelNotFoundError)
    assert nested.message == "no model x"
    assert nested.error_type == "NotFound"
    assert nested.status_code == 404
    flat = _server_error(
        400, b'{"object": "error", "message": "bad max_tokens", "type": "BadRequestError"}'
    )
    assert isinstance(flat, BadRequestError)
    assert flat.message == "bad max_tokens"
    assert isinstance(_server_error(422, b'{"detail": [{"loc": ["x"]}]}'), BadRequestError)
    assert isinstance(_server_error(429, b""), RateLimitError)
    plain = _server_error(500, b"Internal Server Error", "Internal Server Error")
    assert type(plain) is ServerError
    assert "HTTP 500" in str(plain)
    assert "Internal Server Error" in str(plain)


def test_wire_format_choice() -> None:
    # issue 12: a server that says nothing gets the current vLLM form (structured_outputs)
    unknown = wire_format_for({}, {})
    assert not unknown.extensions_in_nvext
    assert unknown.guided == "structured_outputs"
    assert wire_format_for({"release": "1.2.3", "api": "1.0.0"}, {}).extensions_in_nvext
    nim2 = wire_format_for({"release": "2.0.1"}, {})
    assert not nim2.extensions_in_nvext
    assert nim2.guided == "structured_outputs"
    assert wire_format_for({"version": "0.12.1"}, {}).guided == "structured_outputs"
    assert wire_format_for({"version": "0.10.1"}, {}).guided == "guided"
    # vLLM's own /version: structured_outputs from 0.10.2 on (guided_* deprecated there,
    # removed in 0.12.0), guided_* before
    assert wire_format_for({}, {}, vllm={"version": "0.32.0"}).guided == "structured_outputs"
    assert wire_format_for({}, {}, vllm={"version": "0.10.2"}).guided == "structured_outputs"
    assert wire_format_for({}, {}, vllm={"version": "0.10.1.1"}).guided == "guided"
    assert wire_format_for({}, {}, vllm={"version": "0.9.2"}).guided == "guided"
    # a NIM 2.x that names its vLLM follows the vLLM version
    old = wire_format_for({"release": "2.0.1", "vllm": "0.8.5"}, {})
    assert (old.guided, old.extensions_in_nvext) == ("guided", False)
    assert wire_format_for({}, {"vllm_version": "0.11.0"}).guided == "structured_outputs"
    assert "vLLM" in wire_format_for({}, {}, owned_by="vllm").server


def test_body_places_each_field_per_wire_format() -> None:
    from nim_async.config import NIMSamplingParams
    from nim_async.protocol import wire

    def body(dialect: wire.Dialect, params: NIMSamplingParams) -> dict[str, Any]:
        fmt = wire.wire_format_for_dialect(dialect)
        assert fmt is not None
        fields, extensions = wire.sampling_fields(params)
        return wire.chat_body(
            model="m",
            messages=[],
            stream=False,
            wire=fmt,
            fields=fields,
            extensions=extensions,
            constraint=wire.constraint_of(params),
        )

    choice = NIMSamplingParams(guided_choice=["a", "b"], top_k=7, prompt_logprobs=2)
    openai = body("openai", choice)
    assert openai["structured_outputs"] == {"choice": ["a", "b"]}
    assert openai["top_k"] == 7
    assert openai["prompt_logprobs"] == 2
    assert not {"guided_choice", "nvext", "response_format"} & openai.keys()
    legacy = body("guided", choice)
    assert legacy["guided_choice"] == ["a", "b"]
    assert "structured_outputs" not in legacy
    nv = body("nvext", choice)
    assert nv["nvext"]["guided_choice"] == ["a", "b"]
    assert nv["nvext"]["top_k"] == 7
    assert "top_k" not in nv
    assert "guided_choice" not in nv
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    for dialect in ("openai", "guided"):
        js = body(dialect, NIMSamplingParams(guided_json=schema))  # type: ignore[arg-type]
        assert js["response_format"] == {
            "type": "json_schema",
            "json_schema": {"name": "output", "schema": schema},
        }
        assert not {"guided_json", "structured_outputs"} & js.keys()
    grammar = body("openai", NIMSamplingParams(guided_grammar="root ::= 'x'"))
    assert grammar["structured_outputs"] == {"grammar": "root ::= 'x'"}
    regex = body("openai", NIMSamplingParams(guided_regex="[0-9]+"))
    assert regex["structured_outputs"] == {"regex": "[0-9]+"}


def test_resolve_ref_follows_local_pointers_only() -> None:
    from nim_async.protocol.guided import resolve_ref

    root = {"$defs": {"box": {"type": "array"}, "a/b": {"const": 1}}}
    assert resolve_ref("#/$defs/box", root) == {"type": "array"}
    assert resolve_ref("#/$defs/a~1b", root) == {"const": 1}
    assert resolve_ref("#/$defs/missing", root) is None
    assert resolve_ref("https://example.com/schema.json", root) is None
