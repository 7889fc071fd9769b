"""Spec text from rule objects: the one writer. `fmt` (through the formatter), `invert`,
`draft` and the plan's rule column all write keys, expressions, actions, rules and tables
here, so whatever one writes, the parser reads back as the same objects (tests/test_text.py
proves it over every shipped spec, every golden inverse and generated specs)."""

from __future__ import annotations

import json
import re
from typing import Iterable

from .exprs import fold
from .rules import (Action, Assertion, Calc, Call, Capture, Dec, DropRule, Fanout, Header, Let, Lit, Lookup, MetaEntry,
                    MetaFrom, Neg, Num, Param, Ref, RenameRule, Table, TableEntry, Text, Tuple, Word, WriteFile)

WIDTH = 100  # a rule longer than this puts each action on a line of its own
INDENT = "    "
PRECEDENCE = {"+": 1, "-": 1, "*": 2, "//": 2, "%": 2}
_BARE = re.compile(r"[A-Za-z0-9_./:()\-]+")
_SEGMENTS = re.compile(r"([./])")  # key text split at its path separators, kept
# Words of the grammar a whole key cannot be bare (`drop -> x` is a drop): quoted then.
KEYWORDS = frozenset({"mapspec", "from", "to", "select", "include", "table", "reverse", "none", "drop", "keep",
                      "param", "let", "assert", "copy", "otherwise", "optional", "then", "if", "in", "where",
                      "meta", "write", "ranks", "under"})


# ------------------------------------------------------------------ keys

def quote(text: str) -> str:
    """Literal key text as a spec writes it: bare where it is all key characters (and holds
    no arrow `->`), else each path segment that is not in double quotes (`"a b".c`)."""
    if _bare(text):
        return text
    return "".join(piece if _bare(piece) or not piece else string(piece) for piece in _SEGMENTS.split(text))


def _bare(text: str) -> bool:
    return _BARE.fullmatch(text) is not None and "->" not in text


def string(text: str) -> str:
    """A double-quoted string the parser reads back as `text`."""
    return json.dumps(text, ensure_ascii=False)


def _whole(key: str) -> str:
    return string(key) if key in KEYWORDS else key


def capture(c: Capture, typed: bool = False) -> str:
    """A capture in a pattern (`typed`: a fan-out in a template, always with its type)."""
    if c.type == "table":
        return f"{{{c.name} in {c.table}}}"
    kind = {"int": "int", "multi": "**", "segment": "*"}.get(c.type) or "|".join(c.alternatives)
    if c.condition is not None:  # `{a:int>0}`
        kind += f"{c.condition[0]}{c.condition[1]}"
    if c.name is None:
        return kind
    return f"{{{c.name}}}" if c.type == "segment" and not typed else f"{{{c.name}:{kind}}}"


def pattern(parts: Iterable) -> str:
    """A key pattern from its parts."""
    return _whole("".join(quote(p.text) if type(p) is Lit else capture(p) for p in parts))


def template(parts: Iterable) -> str:
    """A target template from its parts."""
    out = []
    for p in parts:
        kind = type(p)
        out.append(quote(p.text) if kind is Lit else capture(p.capture, typed=True) if kind is Fanout else
                   "{" + (f"{p.name}=" if p.name else "") + expr(p.expr, compact=True) + "}")
    return _whole("".join(out))


# ------------------------------------------------------------------ expressions, actions

def expr(e, compact: bool = False) -> str:
    """An expression, parenthesised only where precedence needs it: spaced as in a `let`
    (`n_heads * head_dim`), or `compact` as in a template (`{n//2}`)."""
    sep = "" if compact else " "

    def visit(node, kids: list[tuple[str, int]]) -> tuple[str, int]:  # (text, its precedence)
        kind = type(node)
        if kind is Ref:
            return node.name, 9
        if kind is Num:
            return str(node.value), 9 if node.value >= 0 else 3
        if kind is Dec:
            return node.text, 9
        if kind is Call:
            return f"{node.func}({kids[0][0]})", 9
        if kind is Lookup:
            return f"{node.table}[{kids[0][0]}]", 9
        if kind is Neg:
            text, level = kids[0]
            return "-" + (text if level >= 3 else f"({text})"), 3
        level = PRECEDENCE[node.op]
        (left, lp), (right, rp) = kids
        left = left if lp >= level else f"({left})"
        right = right if rp > level else f"({right})"
        return f"{left}{sep}{node.op}{sep}{right}", level

    return fold(e, visit)[0]


def value(v) -> str:
    """An action argument."""
    if isinstance(v, Word):
        return v.name
    if isinstance(v, Calc):
        return expr(v.expr)
    if isinstance(v, Text):
        return string(v.value)
    if isinstance(v, Tuple):
        if v.append and len(v.items) == 1:
            return f"+({value(v.items[0])})"
        inner = ", ".join(value(x) for x in v.items)
        return ("+" if v.append else "") + f"({inner}{',' if len(v.items) == 1 else ''})"
    return str(v)


def action(a: Action) -> str:
    args = [value(v) for v in a.args] + [f"{k}={value(v)}" for k, v in a.kwargs]
    return f"{a.name}({', '.join(args)})"


# ------------------------------------------------------------------ rules, tables, header

def with_actions(head: str, actions: list[str]) -> list[str]:
    """A statement and its `then` actions: one line, or the actions indented below it when
    the line would be longer than WIDTH."""
    acts = [f"then {a}" for a in actions]
    one = " ".join([head] + acts)
    if len(one) <= WIDTH or not acts:
        return [one]
    return [head] + [INDENT + a for a in acts]


def rule_lines(rule, as_written: bool = False, reverse: bool = True) -> list[str]:
    """A rule as spec text, `reverse` clause and all. Keys from their parts, or
    `as_written` (the text the author wrote, as the plan shows it)."""
    pat = (lambda p: p.text) if as_written else (lambda p: pattern(p.parts))
    tpl = (lambda t: t.text) if as_written else (lambda t: template(t.parts))
    acts = [action(a) for a in getattr(rule, "actions", ())]
    if isinstance(rule, RenameRule):
        head = " | ".join(pat(p) for p in rule.sources) + " -> " + tpl(rule.target)
        if rule.is_copy:
            head = "copy " + head + (" if absent" if rule.if_absent else "")
        lines = with_actions(head, acts)
        if rule.where is not None:  # on a line of its own, as a reverse clause
            lines.append(INDENT + f"where {tpl(rule.where)}")
        rev = rule.reverse if reverse else None
        if rev is not None:
            lines.append(INDENT + ("reverse none" if rev.target is None else " ".join(
                [f"reverse -> {tpl(rev.target)}"] + [f"then {action(a)}" for a in rev.actions or ()]
                + ([f"where {tpl(rev.where)}"] if rev.where is not None else []))))
    else:
        word = "drop" if isinstance(rule, DropRule) else "keep"
        if rule.otherwise:  # `otherwise keep` / `otherwise drop` take every key left
            lines = with_actions(f"otherwise {word}", acts)
        else:
            lines = with_actions(f"{word} " + " | ".join(pat(p) for p in rule.patterns), acts)
        if reverse and getattr(rule, "reverse_none", False):
            lines.append(INDENT + "reverse none")
        if rule.otherwise:
            return lines
    lead = ("optional " if rule.optional else "") + ("otherwise " if rule.otherwise else "")
    return [lead + lines[0]] + lines[1:]


def rule_text(rule) -> str:
    """A rule as one line of spec text as written (its `reverse` clause left out: it does
    not change what the rule does forward)."""
    return " ".join(line.strip() for line in rule_lines(rule, as_written=True, reverse=False))


def key(text: str) -> str:
    """A whole key of plain text (a table entry, a `select`)."""
    return _whole(quote(text))


def _line_value(v) -> str:
    """The value after `=` in a param or a meta entry: an expression or a quoted string."""
    return string(v) if isinstance(v, str) else expr(v)


def statement(node) -> list[str]:
    """Any statement node below the header: a rule, a param, a let, an assertion, a meta
    entry or provider, or a written file."""
    if isinstance(node, Param):
        line = f"param {node.name}" + (f": {node.type}" if node.type != "int" else "")
        if node.config_len:
            line += f" from len({string(node.config_key)})"
        elif node.config_keys:
            line += " from " + " | ".join(string(k) for k in node.config_keys)
        if node.default is not None:
            line += " = " + _line_value(node.default)
        return [line]
    if isinstance(node, Let):
        return [f"let {node.name} = {expr(node.expr)}"]
    if isinstance(node, Assertion):
        message = f", {string(node.message)}" if node.message is not None else ""
        return [f"assert {expr(node.left)} {node.op} {expr(node.right)}{message}"]
    if isinstance(node, MetaEntry):
        return [f"meta {key(node.key)} = {_line_value(node.value)}"]
    if isinstance(node, MetaFrom):
        return [f"meta from {node.provider}(" + ", ".join(string(a) for a in node.args) + ")"]
    if isinstance(node, WriteFile):
        if node.text is not None:
            return [f"write {string(node.path)} {string(node.text)}"]
        return block(f"write {string(node.path)}", entries(node.entries))
    return rule_lines(node)


def entries(items: Iterable[TableEntry]) -> list[tuple[str, str]]:
    """The rows of a `write` or `ranks ... under` block: a plain key, and a template (the
    value is rendered with the parameters, so it is kept as written)."""
    return [(key(e.key), e.value) for e in items]


def block(head: str, rows: list[tuple[str, str]]) -> list[str]:
    """A statement with a block of entries (`table`, `write`, `ranks ... under`), its keys
    aligned (`rows`: key and value as written)."""
    width = max((len(k) for k, _ in rows), default=0)
    return [f"{head} {{"] + [f"  {k.ljust(width)} = {v}" for k, v in rows] + ["}"]


def table_lines(name: str, rows: list[tuple[str, str]]) -> list[str]:
    """A table, its keys aligned (`rows`: key and value as written)."""
    return block(f"table {name}", rows)


def table(t: Table) -> list[str]:
    return table_lines(t.name, [(key(e.key), key(e.value)) for e in t.entries])


def header_lines(h: Header) -> list[str]:
    lines = [f"mapspec {h.version}"]
    if h.source or h.target:
        lines.append(f"from {h.source or 'unknown'} to {h.target or 'unknown'}")
    if h.select:
        lines.append(f"select {key(h.select)}")
    return lines + ranks_lines(h)


def ranks_lines(h: Header) -> list[str]:
    """The `ranks` statement of a header (none if its checkpoints are not rank files)."""
    if h.ranks_side is None:
        return []
    line = f"ranks {h.ranks_side} " + " | ".join(string(t) for t in h.ranks)
    if h.ranks_under is None:
        return [line]
    if not h.ranks_entries:
        return [f"{line} under {h.ranks_under}"]
    return block(f"{line} under {h.ranks_under}", entries(h.ranks_entries))


def spec(header: Header, tables: Iterable[Table], blocks: Iterable[tuple[list[str], object]],
         comments: Iterable[str] = ()) -> tuple[str, dict[int, object]]:
    """A whole spec: leading comment lines, the header, tables, then the rules, each after
    its own comment lines (`blocks`: (comment lines, rule)). Returns the text and, for each
    rule object, the line it starts on (so what parses there is known to come from it)."""
    out = [f"# {c}" for c in comments] + header_lines(header)
    for t in tables:
        out += [""] + table(t)
    out.append("")
    where: dict[int, object] = {}
    for notes, rule in blocks:
        out += [f"# {c}" for c in notes]
        where[len(out) + 1] = rule
        out += rule_lines(rule)
    return "\n".join(out) + "\n", where


def whole(s) -> str:
    """A parsed spec (includes already resolved) as one file: header, parameters, lets and
    assertions, tables, rules."""
    out = header_lines(s.header)
    for node in (*s.definitions, *s.assertions, *s.meta, *s.writes):
        out += statement(node)
    for t in s.tables:
        out += [""] + table(t)
    if s.rules:
        out.append("")
    for rule in s.rules:
        out += rule_lines(rule)
    return "\n".join(out) + "\n"
