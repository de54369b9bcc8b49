"""A tiny EBNF / GBNF grammar generator for the emulator's ``grammar`` constraint. No IO.

The subset: ``name ::= ...`` rules, quoted literals, ``[...]`` classes (first character taken),
rule references, groups, ``|`` and the ``? * +`` quantifiers; the shortest derivation is taken.
Grammars outside it are accepted but not enforced by the emulator.
"""

from __future__ import annotations

import json
import re

__all__ = ["grammar_output"]

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
