"""Guided decoding for the emulator: choices, JSON schemas and simple regular expressions.

No IO. Unsupported constraints raise :class:`GuidedError` (the server answers 400).
"""

from __future__ import annotations

import importlib
import math
import random
import re
import string
from typing import Any

__all__ = [
    "GuidedError",
    "check_regex",
    "choose",
    "regex_output",
    "schema_instance",
    "schema_task_key",
]

_sre: Any = importlib.import_module("re._parser")
_MAXREPEAT: int = int(_sre.MAXREPEAT)
_CANDIDATES = "a0A _-.x,:/" + string.ascii_letters + string.digits + string.punctuation + " "
_UNSUPPORTED = {
    "ASSERT": "lookaround assertions",
    "ASSERT_NOT": "negative lookaround assertions",
    "GROUPREF": "back-references",
    "GROUPREF_EXISTS": "conditional groups",
    "ATOMIC_GROUP": "atomic groups",
    "POSSESSIVE_REPEAT": "possessive quantifiers",
}


class GuidedError(ValueError):
    """A guided-decoding constraint the emulator cannot honour (answered with 400)."""


def _parse(pattern: str) -> Any:
    try:
        re.compile(pattern)
        return _sre.parse(pattern)
    except (re.error, RecursionError, OverflowError) as exc:
        raise GuidedError(f"invalid guided_regex {pattern!r}: {exc}") from exc


def _walk_check(parsed: Any) -> None:
    for op, av in parsed:
        name = str(op)
        if name in _UNSUPPORTED:
            raise GuidedError(
                f"guided_regex uses {_UNSUPPORTED[name]}, which the emulator does not support; "
                "use a simple pattern (literals, classes, groups, alternation, quantifiers)"
            )
        if name == "SUBPATTERN":
            _walk_check(av[3])
        elif name == "BRANCH":
            for alt in av[1]:
                _walk_check(alt)
        elif name in ("MAX_REPEAT", "MIN_REPEAT"):
            _walk_check(av[2])


def check_regex(pattern: str) -> None:
    """Raise :class:`GuidedError` unless ``pattern`` is a simple regex the emulator supports.

    Args:
        pattern: The ``guided_regex`` value.
    """
    _walk_check(_parse(pattern))
    regex_output(pattern, [])


def _char_ok(items: Any, ch: str) -> bool:
    negate = False
    hit = False
    o = ord(ch)
    for op, av in items:
        name = str(op)
        if name == "NEGATE":
            negate = True
        elif name == "LITERAL":
            hit = hit or o == av
        elif name == "RANGE":
            hit = hit or av[0] <= o <= av[1]
        elif name == "CATEGORY":
            hit = hit or _category_ok(str(av), ch)
    return hit != negate


def _category_ok(cat: str, ch: str) -> bool:
    if cat == "CATEGORY_DIGIT":
        return ch.isdigit()
    if cat == "CATEGORY_NOT_DIGIT":
        return not ch.isdigit()
    if cat == "CATEGORY_WORD":
        return ch.isalnum() or ch == "_"
    if cat == "CATEGORY_NOT_WORD":
        return not (ch.isalnum() or ch == "_")
    if cat == "CATEGORY_SPACE":
        return ch.isspace()
    if cat == "CATEGORY_NOT_SPACE":
        return not ch.isspace()
    return False


def _first_char(pred: Any) -> str:
    for ch in _CANDIDATES:
        if pred(ch):
            return ch
    raise GuidedError("guided_regex has a character class the emulator cannot satisfy")


def _gen(parsed: Any, rng: random.Random | None, out: list[str]) -> None:
    for op, av in parsed:
        name = str(op)
        if name == "LITERAL":
            out.append(chr(av))
        elif name == "NOT_LITERAL":
            out.append(_first_char(lambda c, av=av: ord(c) != av))
        elif name == "ANY":
            out.append("a")
        elif name == "IN":
            first = av[0] if av else None
            if first is not None and str(first[0]) == "LITERAL" and len(av) == 1:
                out.append(chr(first[1]))
            elif first is not None and str(first[0]) == "RANGE":
                out.append(chr(first[1][0]))
            else:
                out.append(_first_char(lambda c, av=av: _char_ok(av, c)))
        elif name == "CATEGORY":
            out.append(_first_char(lambda c, av=av: _category_ok(str(av), c)))
        elif name == "SUBPATTERN":
            _gen(av[3], rng, out)
        elif name == "BRANCH":
            alts = av[1]
            _gen(alts[rng.randrange(len(alts))] if rng is not None else alts[0], rng, out)
        elif name in ("MAX_REPEAT", "MIN_REPEAT"):
            lo, hi, sub = av
            top = hi if hi != _MAXREPEAT else lo + 3
            n = max(lo, 1) if top >= 1 else 0
            if rng is not None and top > n:
                n = rng.randint(n, min(top, n + 3))
            for _ in range(n):
                _gen(sub, rng, out)
        elif name == "AT":
            continue
        else:
            raise GuidedError(f"guided_regex uses {name}, which the emulator does not support")


def regex_output(pattern: str, preferred: list[str], rng: random.Random | None = None) -> str:
    """Return a string that fully matches ``pattern``.

    Args:
        pattern: A simple regular expression.
        preferred: Candidate answers; the first that matches is returned as is.
        rng: Varies alternation and repetition choices (``None``: the shortest, first ones).

    Raises:
        GuidedError: for patterns outside the supported subset.
    """
    compiled = re.compile(pattern)
    for cand in preferred:
        if compiled.fullmatch(cand):
            return cand
    parsed = _parse(pattern)
    _walk_check(parsed)
    for attempt_rng in (rng, None):
        out: list[str] = []
        _gen(parsed, attempt_rng, out)
        text = "".join(out)
        if compiled.fullmatch(text):
            return text
    raise GuidedError(f"the emulator cannot produce a string matching guided_regex {pattern!r}")


def choose(choices: list[str], preferred: list[str], rng: random.Random | None = None) -> str:
    """Pick the choice closest to the emulator's natural answer.

    Args:
        choices: The ``guided_choice`` list (non-empty).
        preferred: Natural answers, best first.
        rng: Picks among choices when none matches (``None``: the first).
    """
    lowered = [c.lower() for c in choices]
    for cand in preferred:
        low = cand.lower().strip()
        if low in lowered:
            return choices[lowered.index(low)]
    for cand in preferred:
        low = cand.lower()
        for i, c in enumerate(lowered):
            if c and re.search(rf"\b{re.escape(c)}\b", low):
                return choices[i]
    return choices[rng.randrange(len(choices))] if rng is not None else choices[0]


def schema_task_key(schema: Any) -> str:
    """Return the task key (``phrase_grounding`` / ``vqa`` / ``freeform``) a JSON schema asks for.

    Args:
        schema: A JSON schema.

    Returns:
        The key when the schema is an object schema with that property, else ``""``.
    """
    if not isinstance(schema, dict):
        return ""
    props = schema.get("properties")
    if not isinstance(props, dict):
        return ""
    for key in ("phrase_grounding", "vqa", "freeform"):
        if key in props:
            return key
    return ""


def _resolve(ref: str, root: Any) -> Any:
    """Follow a local JSON pointer (RFC 6901: ``#/a/b``, ``~1`` = ``/``, ``~0`` = ``~``)."""
    if ref == "#":
        return root
    if not ref.startswith("#/"):
        raise GuidedError(f"guided_json $ref {ref!r} is not a local reference that resolves")
    node = root
    for token in ref[2:].split("/"):
        key = token.replace("~1", "/").replace("~0", "~")
        if isinstance(node, dict) and key in node:
            node = node[key]
        elif isinstance(node, list) and key.isdigit() and int(key) < len(node):
            node = node[int(key)]
        else:
            raise GuidedError(f"guided_json $ref {ref!r} is not a local reference that resolves")
    return node


_FORMATS = {
    "date": "2026-01-01",
    "date-time": "2026-01-01T00:00:00Z",
    "time": "00:00:00",
    "email": "emulator@example.com",
    "uuid": "00000000-0000-4000-8000-000000000000",
    "uri": "https://example.com/",
    "hostname": "example.com",
    "ipv4": "127.0.0.1",
}


def schema_instance(
    schema: Any, rng: random.Random | None = None, *, root: Any = None, depth: int = 0
) -> Any:
    """Return a value that validates against the JSON schema ``schema``.

    Args:
        schema: A JSON schema (dict or boolean).
        rng: Varies filler text (``None``: fixed filler).
        root: The document ``$ref`` resolves against (defaults to ``schema``).
        depth: Recursion depth (internal).

    Raises:
        GuidedError: for schemas too deep or with unresolvable references.
    """
    if root is None:
        root = schema
    if depth > 32:
        raise GuidedError("guided_json schema nests too deeply for the emulator")
    if schema is True or schema == {}:
        return "emulated"
    if not isinstance(schema, dict):
        raise GuidedError("guided_json schema must be an object")

    def sub(part: Any) -> Any:
        return schema_instance(part, rng, root=root, depth=depth + 1)

    if "$ref" in schema:
        return sub(_resolve(str(schema["$ref"]), root))
    if "const" in schema:
        return schema["const"]
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        return schema["enum"][0]
    for key in ("anyOf", "oneOf"):
        options = schema.get(key)
        if isinstance(options, list) and options:
            non_null = [o for o in options if not (isinstance(o, dict) and o.get("type") == "null")]
            return sub((non_null or options)[0])
    if isinstance(schema.get("allOf"), list):
        return sub(_merge_all_of(schema))
    kind = _kind(schema)
    if kind == "object":
        return {str(k): sub(v) for k, v in (schema.get("properties") or {}).items()}
    if kind == "array":
        return _array(schema, sub)
    if kind == "string":
        return _string(schema, rng)
    if kind in ("integer", "number"):
        return _number(schema, integer=kind == "integer")
    if kind == "boolean":
        return True
    if kind == "null":
        return None
    raise GuidedError(f"guided_json type {kind!r} is not supported by the emulator")


def _merge_all_of(schema: dict[str, Any]) -> dict[str, Any]:
    merged: dict[str, Any] = {k: v for k, v in schema.items() if k != "allOf"}
    for part in schema["allOf"]:
        if not isinstance(part, dict):
            continue
        for k, v in part.items():
            if k == "properties" and isinstance(v, dict):
                merged.setdefault("properties", {}).update(v)
            elif k == "required" and isinstance(v, list):
                merged["required"] = [*merged.get("required", []), *v]
            else:
                merged.setdefault(k, v)
    return merged


def _kind(schema: dict[str, Any]) -> Any:
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), kind[0] if kind else None)
    if kind is not None:
        return kind
    if "properties" in schema:
        return "object"
    if "items" in schema or "prefixItems" in schema:
        return "array"
    return "string"


def _array(schema: dict[str, Any], sub: Any) -> list[Any]:
    prefix = schema.get("prefixItems") or []
    items = schema.get("items", {})
    n = max(int(schema.get("minItems", 1)), len(prefix), 1)
    if schema.get("maxItems") is not None:
        n = min(n, int(schema["maxItems"]))
    return [sub(prefix[i] if i < len(prefix) else items) for i in range(n)]


def _string(schema: dict[str, Any], rng: random.Random | None) -> str:
    if isinstance(schema.get("pattern"), str):
        return regex_output(schema["pattern"], [], rng)
    if schema.get("format") in _FORMATS:
        return _FORMATS[str(schema["format"])]
    text = "emulated" if rng is None else rng.choice(("emulated", "emulator", "sample"))
    lo = int(schema.get("minLength", 0))
    if len(text) < lo:
        text = text + "x" * (lo - len(text))
    if schema.get("maxLength") is not None:
        text = text[: int(schema["maxLength"])]
    return text


def _number(schema: dict[str, Any], *, integer: bool) -> int | float:
    lo = schema.get("minimum")
    xlo = schema.get("exclusiveMinimum")
    hi = schema.get("maximum")
    xhi = schema.get("exclusiveMaximum")
    value: float = 0
    if lo is not None:
        value = float(lo)
    if xlo is not None and not isinstance(xlo, bool):
        value = max(value, float(xlo) + (1 if integer else 0.5))
    if hi is not None and value > float(hi):
        value = float(hi)
    if xhi is not None and not isinstance(xhi, bool) and value >= float(xhi):
        value = float(xhi) - (1 if integer else 0.5)
    mult = schema.get("multipleOf")
    if mult:
        value = math.ceil(value / float(mult)) * float(mult)
    if integer:
        return round(value)
    return value
