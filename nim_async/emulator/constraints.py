"""Which structured-output constraint a request asks for, by vLLM 0.32's rules. No IO.

* ``structured_outputs``: at most one of ``json`` / ``regex`` / ``choice`` (vLLM's check), then
  ``response_format`` (``json_schema`` -> ``json``, ``json_object``) is applied over it; more
  than one kind in the result is vLLM's "You can only use one kind of structured outputs
  constraint" 400, none at all its "You must use one kind" 400.
* ``guided_*`` fields reach this module only when they are honoured (legacy mode, or inside
  ``nvext`` with sampling_fields set to read it); then the NIM 1.x rule applies: one kind in all.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from nim_async.emulator import guided
from nim_async.emulator.grammar import grammar_output
from nim_async.emulator.rejection import bad

__all__ = ["GUIDED_FIELDS", "Constraint", "find_constraint"]

log = logging.getLogger("nim_async.emulator")

GUIDED_FIELDS = ("guided_json", "guided_regex", "guided_choice", "guided_grammar")
"""The legacy top-level guided-decoding fields (vLLM < 0.12, NIM 1.x)."""

Constraint = tuple[str, Any]
"""``(kind, value)``: kind is ``json``, ``json_object``, ``regex``, ``choice`` or ``grammar``."""

_KINDS = ("json", "regex", "choice", "grammar", "json_object", "structural_tag")
_SO_DEFAULTS: dict[str, Any] = {
    "json": None,
    "regex": None,
    "choice": None,
    "grammar": None,
    "json_object": None,
    "disable_any_whitespace": False,
    "disable_additional_properties": False,
    "whitespace_pattern": None,
    "structural_tag": None,
}


def find_constraint(params: dict[str, Any]) -> Constraint | None:
    """Return the request's one constraint, checked, or None.

    Args:
        params: The request fields the emulator reads (after the sampling_fields setting).

    Raises:
        RequestError: 400 for conflicting or malformed constraints.
    """
    so = params.get("structured_outputs")
    rf = _response_format(params.get("response_format"))
    legacy = [(n[len("guided_") :], params[n]) for n in GUIDED_FIELDS if params.get(n) is not None]
    if legacy:
        found = legacy + _kinds_of(_structured(so)) + ([rf] if rf else [])
        if len(found) > 1:
            raise bad(
                "You can only use one kind of guided decoding "
                "('guided_json', 'guided_regex', 'guided_choice' or 'response_format')."
            )
        return _checked(*found[0], param=f"guided_{found[0][0]}")
    if so is None and rf is None:
        return None
    merged = dict(_structured(so) or {})
    if rf is not None:
        merged[rf[0]] = rf[1]
    kinds = _kinds_of(merged)
    shown = {**_SO_DEFAULTS, **merged}
    if len(kinds) > 1:
        raise bad(
            "You can only use one kind of structured outputs constraint but multiple are "
            f"specified: {shown}"
        )
    if not kinds:
        raise bad(
            "You must use one kind of structured outputs constraint but none are specified: "
            f"{shown}"
        )
    return _checked(*kinds[0], param="structured_outputs" if so is not None else "response_format")


def _structured(so: object) -> dict[str, Any] | None:
    if so is None:
        return None
    if not isinstance(so, dict):
        raise bad("structured_outputs must be an object", "structured_outputs")
    if sum(so.get(k) is not None for k in ("json", "regex", "choice")) > 1:
        raise bad(
            "You can only use one kind of constraints for structured outputs "
            "('json', 'regex' or 'choice')."
        )
    return so


def _kinds_of(so: dict[str, Any] | None) -> list[Constraint]:
    if not so:
        return []
    return [(k, so[k]) for k in _KINDS if so.get(k) is not None]


def _response_format(rf: object) -> Constraint | None:
    if rf is None:
        return None
    if not isinstance(rf, dict) or rf.get("type") not in ("text", "json_object", "json_schema"):
        raise bad(
            "response_format must be {'type': 'text' | 'json_object' | 'json_schema'}",
            "response_format",
        )
    if rf["type"] == "text":
        return None
    if rf["type"] == "json_object":
        return ("json_object", True)
    js = rf.get("json_schema")
    schema = js.get("schema") if isinstance(js, dict) else None
    if not isinstance(schema, dict):
        raise bad(
            "response_format json_schema needs json_schema.schema (an object)", "response_format"
        )
    return ("json", schema)


def _checked(kind: str, value: Any, *, param: str) -> Constraint | None:
    """Check one constraint's value; return it, or None when the emulator cannot enforce it."""
    if kind == "json":
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except ValueError as exc:
                raise bad(f"guided_json is not valid JSON: {exc}", param) from None
        if not isinstance(value, (dict, bool)):
            raise bad("guided_json must be a JSON schema object", param)
    elif kind == "choice":
        if not isinstance(value, list) or not value or not all(isinstance(c, str) for c in value):
            raise bad("guided_choice must be a non-empty list of strings", param)
    elif kind == "regex":
        if not isinstance(value, str):
            raise bad("guided_regex must be a string", param)
        try:
            guided.check_regex(value)
        except guided.GuidedError as exc:
            raise bad(str(exc), param) from None
    elif kind == "grammar":
        if not isinstance(value, str):
            raise bad("guided_grammar must be a string", param)
        if grammar_output(value) is None:
            log.info("emulator: guided_grammar is accepted but not enforced by the emulator")
            return None
    elif kind == "structural_tag":
        log.info("emulator: structural_tag is accepted but not enforced by the emulator")
        return None
    return kind, value
