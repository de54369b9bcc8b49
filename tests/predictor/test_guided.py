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
from nim_async.predict.predictor import _server_error, wire_format_for
from nim_async.protocol.guided import check_guided_output, validate_json_schema
from nim_async.protocol.tasks import get_task

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
    assert not wire_format_for({}, {}).extensions_in_nvext
    assert wire_format_for({}, {}).guided == "guided"
    assert wire_format_for({"release": "1.2.3", "api": "1.0.0"}, {}).extensions_in_nvext
    nim2 = wire_format_for({"release": "2.0.1"}, {})
    assert not nim2.extensions_in_nvext
    assert nim2.guided == "guided"
    assert wire_format_for({"version": "0.12.1"}, {}).guided == "structured_outputs"
    assert wire_format_for({"version": "0.10.1"}, {}).guided == "guided"


def test_resolve_ref_follows_local_pointers_only() -> None:
    from nim_async.protocol.guided import resolve_ref

    root = {"$defs": {"box": {"type": "array"}, "a/b": {"const": 1}}}
    assert resolve_ref("#/$defs/box", root) == {"type": "array"}
    assert resolve_ref("#/$defs/a~1b", root) == {"const": 1}
    assert resolve_ref("#/$defs/missing", root) is None
    assert resolve_ref("https://example.com/schema.json", root) is None
