"""The common shapes of key patterns and templates, read without the LALR parser.

A spec's keys are parsed twice: once as KEY tokens of a statement, then each again as a
`pattern` or a `template` (so an error inside a key points at its column). Lark spends
about 0.1 ms on that second parse of a typical key; this scanner reads the shapes nearly
every key has (literal text, `*`, `**`, `{name}`, `{name:int}`, `{name:a|b}`, `{name:*}`,
`{name:**}`, `{name in table}`, and in templates `{name}`, `{name OP integer}` and
`{name:a|b}` / `{name:int}`) with one regex, and gives up (None) on anything else: quotes,
white space inside braces, nested expressions, and every malformed key, which the parser
then reads (and reports) as before. Where it answers, it builds exactly the parts the parser
would build from lark's tree, spans included (tests/test_keyscan.py compares the two).
"""

from __future__ import annotations

import re

from ..errors import Span
from .rules import BinOp, Capture, Fanout, Lit, Num, Ref, Subst

_NAME = r"[A-Za-z_][A-Za-z0-9_]*"
_ALTS = r"[A-Za-z0-9_./()\-]+(?:\|[A-Za-z0-9_./()\-]+)*"
_LIT = r"(?P<lit>[A-Za-z0-9_./:()\-]+)"

_PATTERN = re.compile("|".join((
    _LIT,
    r"(?P<multi>\*\*)",
    r"(?P<single>\*)",
    rf"\{{(?P<name>{_NAME})(?::(?:(?P<alts>{_ALTS})|(?P<ctype>\*\*|\*))| in (?P<table>{_NAME}))?\}}",
)))

_TEMPLATE = re.compile("|".join((
    _LIT,
    rf"\{{(?P<ref>{_NAME})(?:(?P<op>//|[-+*%])(?P<num>[0-9]{{1,15}}))?\}}",
    rf"\{{(?P<fan>{_NAME}):(?P<falts>{_ALTS})\}}",
)))


def _captures_ok(name: str, *others: str | None) -> bool:
    # `in` is the table keyword: leave its corner cases to the parser
    return name != "in" and "in" not in others


def pattern_parts(text: str, file: str, line: int, column: int) -> list | None:
    """The parts of a pattern written at `file:line:column`, as the parser makes them
    (adjacent literals not yet joined), or None where the parser must read it."""
    return _scan(_PATTERN, _pattern_item, text, file, line, column)


def template_parts(text: str, file: str, line: int, column: int) -> list | None:
    """The parts of a template written at `file:line:column`, as the parser makes them, or
    None where the parser must read it."""
    return _scan(_TEMPLATE, _template_item, text, file, line, column)


def _scan(regex: re.Pattern, item, text: str, file: str, line: int, column: int) -> list | None:
    items: list = []
    pos, end = 0, len(text)
    match = regex.match
    while pos < end:
        m = match(text, pos)
        if m is None:
            return None
        start, pos = m.span()
        if m.lastgroup == "lit":
            items.append(Lit(text=m.group("lit")))
            continue
        made = item(m, Span(file, line, column + start, line, column + pos))
        if made is None:
            return None
        items.append(made)
    return items


def _pattern_item(m: re.Match, span: Span) -> Capture | None:
    kind = m.lastgroup
    if kind == "multi":
        return Capture(name=None, type="multi", span=span)
    if kind == "single":
        return Capture(name=None, type="segment", span=span)
    name, alts, ctype, table = m.group("name", "alts", "ctype", "table")
    if not _captures_ok(name, table):
        return None
    if table is not None:
        return Capture(name=name, type="table", table=table, span=span)
    if ctype is not None:
        return Capture(name=name, type="multi" if ctype == "**" else "segment", span=span)
    if alts is not None:
        return _alternatives(name, alts, span)
    return Capture(name=name, type="segment", span=span)


def _template_item(m: re.Match, span: Span) -> Subst | Fanout | None:
    if m.lastgroup == "falts":
        name = m.group("fan")
        capture = _alternatives(name, m.group("falts"), span) if _captures_ok(name) else None
        return None if capture is None else Fanout(capture=capture)
    name, op, num = m.group("ref", "op", "num")
    if not _captures_ok(name):
        return None
    at = span.column + 1  # the name, after the brace
    ref = Ref(name=name, span=Span(span.file, span.line, at, span.line, at + len(name)))
    return Subst(expr=ref if op is None else BinOp(op=op, left=ref, right=Num(value=int(num))), span=span)


def _alternatives(name: str, alts: str, span: Span) -> Capture | None:
    values = tuple(alts.split("|"))
    if values == ("int",):
        return Capture(name=name, type="int", span=span)
    if len(set(values)) != len(values):  # an error the parser reports
        return None
    return Capture(name=name, type="alt", alternatives=values, span=span)
