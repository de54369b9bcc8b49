"""Guided decoding for the emulator: choices, JSON schemas and simple regular expressions.

No IO. Unsupported constraints raise :class:`GuidedError` (the server answers 400).
"""

from __future__ import annotations

import importlib
import json
import math
import random
import re
import string
from typing import Any

__all__ = [
    "GuidedError",
    "check_regex",
    "choose",
    "grammar_output",
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
    """Return the task key (``phrase_grounding`` / ``vqa``) a JSON schema asks for.

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
    for key in ("phrase_grounding", "vqa"):
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
    if "$ref" in schema:
        return schema_instance(_resolve(str(schema["$ref"]), root), rng, root=root, depth=depth + 1)
    if "const" in schema:
        return schema["const"]
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        return schema["enum"][0]
    for key in ("anyOf", "oneOf"):
        options = schema.get(key)
        if isinstance(options, list) and options:
            non_null = [o for o in options if not (isinstance(o, dict) and o.get("type") == "null")]
            return schema_instance((non_null or options)[0], rng, root=root, depth=depth + 1)
    if isinstance(schema.get("allOf"), list):
        merged: dict[str, Any] = {k: v for k, v in schema.items() if k != "allOf"}
        for part in schema["allOf"]:
            if isinstance(part, dict):
                for k, v in part.items():
                    if k == "properties" and isinstance(v, dict):
                        merged.setdefault("properties", {}).update(v)
                    elif k == "required" and isinstance(v, list):
                        merged["required"] = [*merged.get("required", []), *v]
                    else:
                        merged.setdefault(k, v)
        return schema_instance(merged, rng, root=root, depth=depth + 1)
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), kind[0] if kind else None)
    if kind is None:
        if "properties" in schema:
            kind = "object"
        elif "items" in schema or "prefixItems" in schema:
            kind = "array"
        else:
            kind = "string"
    if kind == "object":
        props = schema.get("properties") or {}
        return {
            str(k): schema_instance(v, rng, root=root, depth=depth + 1) for k, v in props.items()
        }
    if kind == "array":
        prefix = schema.get("prefixItems") or []
        items = schema.get("items", {})
        lo = int(schema.get("minItems", 1))
        hi = schema.get("maxItems")
        n = max(lo, len(prefix), 1)
        if hi is not None:
            n = min(n, int(hi))
        out: list[Any] = []
        for i in range(n):
            sub = prefix[i] if i < len(prefix) else items
            out.append(schema_instance(sub, rng, root=root, depth=depth + 1))
        return out
    if kind == "string":
        if isinstance(schema.get("pattern"), str):
            return regex_output(schema["pattern"], [], rng)
        if schema.get("format") in _FORMATS:
            return _FORMATS[str(schema["format"])]
        text = "emulated" if rng is None else rng.choice(("emulated", "emulator", "sample"))
        lo = int(schema.get("minLength", 0))
        hi = schema.get("maxLength")
        if len(text) < lo:
            text = text + "x" * (lo - len(text))
        if hi is not None:
            text = text[: int(hi)]
        return text
    if kind in ("integer", "number"):
        return _number(schema, integer=kind == "integer")
    if kind == "boolean":
        return True
    if kind == "null":
        return None
    raise GuidedError(f"guided_json type {kind!r} is not supported by the emulator")


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


_GRAMMAR_TOKEN = re.compile(
    r"""\s+|\#[^\n]*|(?P<def>::=)|(?P<name>[A-Za-z_][\w-]*)|(?P<lit>"(?:\\.|[^"\\])*"|'(?:\\.|[^'\\])*')"""
    r"""|(?P<cls>\[(?:\\.|[^\]\\])*\])|(?P<op>[|()?*+])""",
)


def _grammar_tokens(text: str) -> list[tuple[str, str]] | None:
    out: list[tuple[str, str]] = []
    pos = 0
    while pos < len(text):
        m = _GRAMMAR_TOKEN.match(text, pos)
        if m is None:
            return None
        pos = m.end()
        if m.lastgroup is not None:
            out.append((m.lastgroup, m.group(m.lastgroup)))
    return out


def _grammar_rules(tokens: list[tuple[str, str]]) -> dict[str, list[tuple[str, str]]] | None:
    rules: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] | None = None
    for i, tok in enumerate(tokens):
        if tok[0] == "name" and i + 1 < len(tokens) and tokens[i + 1][0] == "def":
            current = rules.setdefault(tok[1], [])
        elif tok[0] == "def":
            continue
        elif current is None:
            return None
        else:
            current.append(tok)
    return rules


def _literal(tok: str) -> str:
    body = tok[1:-1]
    if tok[0] == "'":
        body = body.replace('"', '\\"').replace("\\'", "'")
    return str(json.loads(f'"{body}"'))


def _class_char(tok: str) -> str | None:
    body = tok[1:-1]
    if not body or body[0] == "^":
        return None
    if body[0] == "\\" and len(body) > 1:
        return {"n": "\n", "t": "\t"}.get(body[1], body[1])
    return body[0]


class _GrammarGen:
    """Shortest-derivation generator over a small EBNF/GBNF subset (for the emulator)."""

    def __init__(self, rules: dict[str, list[tuple[str, str]]]) -> None:
        self.rules = rules

    def alternatives(self, toks: list[tuple[str, str]]) -> list[list[tuple[str, str]]]:
        alts: list[list[tuple[str, str]]] = [[]]
        depth = 0
        for tok in toks:
            if tok == ("op", "(") or tok == ("op", ")"):
                depth += 1 if tok[1] == "(" else -1
            if tok == ("op", "|") and depth == 0:
                alts.append([])
            else:
                alts[-1].append(tok)
        return alts

    def expr(self, toks: list[tuple[str, str]], depth: int) -> str | None:
        for alt in self.alternatives(toks):
            out = self.sequence(alt, depth)
            if out is not None:
                return out
        return None

    def sequence(self, toks: list[tuple[str, str]], depth: int) -> str | None:
        if depth > 24:
            return None
        out: list[str] = []
        i = 0
        while i < len(toks):
            kind, val = toks[i]
            group: list[tuple[str, str]] | None = None
            if (kind, val) == ("op", "("):
                level, j = 1, i + 1
                while j < len(toks) and level:
                    if toks[j][0] == "op":
                        level += {"(": 1, ")": -1}.get(toks[j][1], 0)
                    j += 1
                group, i = toks[i + 1 : j - 1], j
            elif kind in ("lit", "cls", "name"):
                i += 1
            else:
                return None
            rep = toks[i][1] if i < len(toks) and toks[i][0] == "op" and toks[i][1] in "?*+" else ""
            i += 1 if rep else 0
            if rep in ("?", "*"):
                continue
            text = self.expr(group, depth + 1) if group is not None else self.atom(kind, val, depth)
            if text is None:
                return None
            out.append(text)
        return "".join(out)

    def atom(self, kind: str, val: str, depth: int) -> str | None:
        if kind == "lit":
            return _literal(val)
        if kind == "cls":
            return _class_char(val)
        rule = self.rules.get(val)
        return None if rule is None else self.expr(rule, depth + 1)


def grammar_output(grammar: str) -> str | None:
    """Return a string the EBNF / GBNF ``grammar`` (start rule ``root``) derives, if simple.

    The subset: ``name ::= ...`` rules, quoted literals, ``[...]`` classes, rule references,
    groups, ``|`` and the ``? * +`` quantifiers (the shortest derivation is taken).

    Args:
        grammar: The grammar text.

    Returns:
        A derived string, or None when the grammar is outside the subset.
    """
    tokens = _grammar_tokens(grammar)
    rules = _grammar_rules(tokens) if tokens else None
    if not rules or "root" not in rules:
        return None
    try:
        return _GrammarGen(rules).expr(rules["root"], 0)
    except (ValueError, RecursionError):
        return None
