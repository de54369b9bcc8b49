"""Checking model output against a guided-decoding constraint (no IO).

Some server versions drop ``guided_*`` fields silently, so the predictor checks every answer
against the constraint the caller asked for: a choice, a regular expression, or a JSON schema.
The JSON-schema check covers the keywords structured output uses in practice (types, enums,
const, properties/required/additionalProperties, items/prefixItems, min/max bounds and lengths,
patterns, anyOf/oneOf/allOf/not, local ``$ref``), so ``jsonschema`` need not be a dependency.
"""

from __future__ import annotations

import re
from typing import Any

import orjson

from nim_async.config import NIMSamplingParams
from nim_async.errors import GuidedDecodingError, PredictionParseError
from nim_async.protocol.tasks.parsing import split_thinking

__all__ = ["check_guided_output", "resolve_ref", "validate_json_schema"]


def check_guided_output(
    text: str, params: NIMSamplingParams, *, finish_reason: str | None = None
) -> None:
    """Check that ``text`` satisfies the ``guided_*`` constraint in ``params``.

    The reasoning block (``<think>…</think>``) is ignored; surrounding whitespace is allowed.
    ``guided_grammar`` cannot be checked here and always passes.

    Args:
        text: The model output.
        params: The sampling parameters with the constraint.
        finish_reason: Why generation ended; a violation caused by ``"length"`` is reported
            as truncation, not as an ignored constraint.

    Raises:
        GuidedDecodingError: the output violates the constraint.
        PredictionParseError: the output was cut off at ``max_tokens`` before it could satisfy
            the constraint.
    """
    _, answer = split_thinking(text)
    problem: str | None = None
    kind = ""
    if params.guided_choice is not None:
        kind = "choice"
        if answer not in params.guided_choice:
            problem = f"{answer[:100]!r} is not one of {params.guided_choice!r}"
    elif params.guided_regex is not None:
        kind = "regex"
        if re.fullmatch(params.guided_regex, answer) is None and (
            re.fullmatch(params.guided_regex, text) is None
        ):
            problem = f"{answer[:100]!r} does not match {params.guided_regex!r}"
    elif params.guided_json is not None:
        kind = "json"
        schema = params.guided_json_schema() or {}
        try:
            value = orjson.loads(answer)
        except orjson.JSONDecodeError:
            problem = f"the output is not a JSON document: {answer[:100]!r}"
        else:
            problem = validate_json_schema(value, schema)
    if problem is None:
        return
    if finish_reason == "length":
        raise PredictionParseError(
            f"the output was cut off at max_tokens before satisfying guided {kind}: {problem}",
            raw_output=text,
        )
    raise GuidedDecodingError(
        f"the server ignored the guided-decoding constraint ({kind}): {problem}.",
        raw_output=text,
        constraint=kind,
    )


_JSON_TYPES: dict[str, tuple[type, ...]] = {
    "object": (dict,),
    "array": (list,),
    "string": (str,),
    "boolean": (bool,),
    "null": (type(None),),
}


def _type_ok(value: object, name: str) -> bool:
    if name == "integer":
        return (isinstance(value, int) and not isinstance(value, bool)) or (
            isinstance(value, float) and value.is_integer()
        )
    if name == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    types = _JSON_TYPES.get(name)
    return True if types is None else isinstance(value, types)


def validate_json_schema(value: object, schema: object) -> str | None:
    """Validate ``value`` against a JSON schema (the keywords structured output uses).

    Supported: ``type``, ``enum``, ``const``, ``properties``, ``required``,
    ``additionalProperties``, ``items``, ``prefixItems``, ``minItems``, ``maxItems``,
    ``minLength``, ``maxLength``, ``pattern``, ``minimum``, ``maximum``, ``exclusiveMinimum``,
    ``exclusiveMaximum``, ``anyOf``, ``oneOf``, ``allOf``, ``not`` and local ``$ref``
    (``#/$defs/...``, ``#/definitions/...``). Unknown keywords are ignored (never a false
    alarm).

    Args:
        value: The decoded JSON value.
        schema: The schema.

    Returns:
        ``None`` when the value is valid, else a message naming the first violation.
    """
    return _validate(value, schema, schema, "$", 0)


def resolve_ref(ref: str, root: object) -> object | None:
    """Follow a local JSON-schema ``$ref`` (``#/$defs/box``) from ``root``.

    Args:
        ref: The reference; only local ``#...`` pointers are followed.
        root: The schema document the pointer is relative to.

    Returns:
        The referenced sub-schema, or ``None`` when the reference is not local or does not
        resolve (each caller decides whether that is an error).
    """
    if not ref.startswith("#"):
        return None
    node: object = root
    for part in ref.lstrip("#").strip("/").split("/"):
        if not part:
            continue
        part = part.replace("~1", "/").replace("~0", "~")
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def _validate(value: object, schema: object, root: object, path: str, depth: int) -> str | None:
    if depth > 64 or schema is True or not isinstance(schema, dict):
        return f"{path}: rejected by schema false" if schema is False else None
    if "$ref" in schema and isinstance(schema["$ref"], str):
        problem = _validate(value, resolve_ref(schema["$ref"], root) or {}, root, path, depth + 1)
        if problem:
            return problem
    expected = schema.get("type")
    if expected is not None:
        names = expected if isinstance(expected, list) else [expected]
        if not any(_type_ok(value, str(n)) for n in names):
            return f"{path}: expected {'/'.join(map(str, names))}, got {type(value).__name__}"
    if "enum" in schema and isinstance(schema["enum"], list) and value not in schema["enum"]:
        return f"{path}: {value!r:.60} is not one of {schema['enum']!r:.100}"
    if "const" in schema and value != schema["const"]:
        return f"{path}: {value!r:.60} is not {schema['const']!r:.60}"
    if isinstance(value, dict):
        problem = _validate_object(value, schema, root, path, depth)
        if problem:
            return problem
    elif isinstance(value, list):
        problem = _validate_array(value, schema, root, path, depth)
        if problem:
            return problem
    elif isinstance(value, str):
        if isinstance(schema.get("minLength"), int) and len(value) < schema["minLength"]:
            return f"{path}: shorter than {schema['minLength']}"
        if isinstance(schema.get("maxLength"), int) and len(value) > schema["maxLength"]:
            return f"{path}: longer than {schema['maxLength']}"
        pattern = schema.get("pattern")
        if isinstance(pattern, str):
            try:
                if re.search(pattern, value) is None:
                    return f"{path}: {value!r:.60} does not match {pattern!r}"
            except re.error:
                pass
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        for key, bound in (
            ("minimum", schema.get("minimum")),
            ("maximum", schema.get("maximum")),
            ("exclusiveMinimum", schema.get("exclusiveMinimum")),
            ("exclusiveMaximum", schema.get("exclusiveMaximum")),
        ):
            if _violates(key, value, bound):
                return f"{path}: {value} violates {key} {bound}"
    for sub in schema.get("allOf") or []:
        problem = _validate(value, sub, root, path, depth + 1)
        if problem:
            return problem
    any_of = schema.get("anyOf")
    if (
        isinstance(any_of, list)
        and any_of
        and all(_validate(value, sub, root, path, depth + 1) for sub in any_of)
    ):
        return f"{path}: matches none of anyOf"
    one_of = schema.get("oneOf")
    if isinstance(one_of, list) and one_of:
        matches = sum(1 for sub in one_of if _validate(value, sub, root, path, depth + 1) is None)
        if matches != 1:
            return f"{path}: matches {matches} of oneOf (exactly one required)"
    if "not" in schema and _validate(value, schema["not"], root, path, depth + 1) is None:
        return f"{path}: matches a schema under 'not'"
    return None


def _violates(key: str, value: float, bound: object) -> bool:
    if not isinstance(bound, (int, float)) or isinstance(bound, bool):
        return False
    if key == "minimum":
        return value < bound
    if key == "maximum":
        return value > bound
    if key == "exclusiveMinimum":
        return value <= bound
    return value >= bound


def _validate_object(
    value: dict[str, Any], schema: dict[str, Any], root: object, path: str, depth: int
) -> str | None:
    required = schema.get("required")
    if isinstance(required, list):
        for name in required:
            if name not in value:
                return f"{path}: missing required property {name!r}"
    properties = schema.get("properties")
    properties = properties if isinstance(properties, dict) else {}
    for name, sub in properties.items():
        if name in value:
            problem = _validate(value[name], sub, root, f"{path}.{name}", depth + 1)
            if problem:
                return problem
    additional = schema.get("additionalProperties", True)
    if additional is not True:
        for name in value:
            if name in properties:
                continue
            if additional is False:
                return f"{path}: unexpected property {name!r}"
            problem = _validate(value[name], additional, root, f"{path}.{name}", depth + 1)
            if problem:
                return problem
    return None


def _validate_array(
    value: list[Any], schema: dict[str, Any], root: object, path: str, depth: int
) -> str | None:
    if isinstance(schema.get("minItems"), int) and len(value) < schema["minItems"]:
        return f"{path}: fewer than {schema['minItems']} items"
    if isinstance(schema.get("maxItems"), int) and len(value) > schema["maxItems"]:
        return f"{path}: more than {schema['maxItems']} items"
    prefix = schema.get("prefixItems")
    start = 0
    if isinstance(prefix, list):
        for i, (item, sub) in enumerate(zip(value, prefix, strict=False)):
            problem = _validate(item, sub, root, f"{path}[{i}]", depth + 1)
            if problem:
                return problem
        start = len(prefix)
    items = schema.get("items")
    if isinstance(items, list):  # draft-07 tuple form
        for i, (item, sub) in enumerate(zip(value, items, strict=False)):
            problem = _validate(item, sub, root, f"{path}[{i}]", depth + 1)
            if problem:
                return problem
    elif items is not None:
        for i in range(start, len(value)):
            problem = _validate(value[i], items, root, f"{path}[{i}]", depth + 1)
            if problem:
                return problem
    return None
