"""Canonical formatting of spec text (`mapspec fmt`).

Works on the statement-level parse tree, not on the include-resolved rule graph, so includes
stay includes. Comments are kept: one on its own line stays before the statement after it,
one after a statement stays after it; one written inside a multi-line statement moves above
it. Runs of blank lines become one. Formatting formatted text changes nothing.
"""

from __future__ import annotations

import bisect

from lark import Token, Tree

from . import grammar, text as write
from .parser import _Builder
from .rules import Header
from ..errors import Span, SpecError

WIDTH = write.WIDTH


def format_text(text: str, file: str = "<spec>") -> str:
    builder = _Builder(file, text, stack=())
    tree, comments = grammar.parse_statements(text, file)
    statements = tree.children
    by_line: dict[int, Token] = {c.line: c for c in comments}
    order = sorted(by_line)  # comment lines; those before `cursor` are all emitted
    cursor = 0
    used: set[int] = set()
    out: list[str] = []
    prev_end = 0
    blank = [not line.strip() for line in grammar.lines(text)]

    def blank_between(after: int, before: int) -> bool:
        return any(blank[after:max(after, before - 1)])

    def emit_comments_before(line: int) -> None:
        nonlocal prev_end, cursor
        while cursor < len(order) and order[cursor] < line:
            cl = order[cursor]
            cursor += 1
            if cl in used:
                continue
            if out and cl > prev_end + 1 and blank_between(prev_end, cl):
                out.append("")
            out.append(str(by_line[cl]))
            used.add(cl)
            prev_end = cl

    for st in statements:
        start, end = st.meta.line, st.meta.end_line
        emit_comments_before(start)
        inner = [l for l in order[cursor:bisect.bisect_left(order, end)] if l not in used]
        if out and start > prev_end + 1 and blank_between(prev_end, start):
            out.append("")
        if st.data not in ("table", "write", "ranks"):
            for l in sorted(inner):  # comments inside a multi-line statement move above it
                out.append(str(by_line[l]))
                used.add(l)
        try:
            lines = _statement(st, builder, by_line, used)
        except RecursionError:  # the same bound as parsing: an error at the statement, not a crash
            raise SpecError("this statement nests too deeply to read",
                            Span(file, start, st.meta.column, st.meta.end_line, st.meta.end_column), text) from None
        trailing = by_line.get(end)
        if trailing is not None and end not in used and trailing.column > st.meta.end_column - 1:
            lines[-1] += "  " + str(trailing)
            used.add(end)
        out.extend(lines)
        prev_end = end
    emit_comments_before(10**9)
    return "\n".join(out).rstrip("\n") + "\n" if out else ""


def _statement(st: Tree, b: "_Builder", comments: dict[int, Token], used: set[int]) -> list[str]:
    """One statement in canonical form: read into its node by the parser's own builder, then
    written by `lang.text` (includes and the header as they are; a table with its comments)."""
    kind = st.data
    c = st.children
    if kind == "version":
        return [f"mapspec {c[0]}"]
    if kind == "frameworks":
        return [f"from {c[0]} to {c[1]}"]
    if kind == "select":
        return [f"select {write.pattern(b._pattern(c[0]).parts)}"]
    if kind == "ranks":
        return write.ranks_lines(b._header(st, Header(), b.span_tree(st)))
    if kind == "include":
        return [f"include {c[0]}"]
    if kind != "table":
        return write.statement(b.statement(st))
    table = b._table(st)
    rows = [(write.key(e.key), write.key(e.value)) for e in table.entries]
    width = max((len(k) for k, _ in rows), default=0)
    lines = [f"table {table.name} {{"]
    for (k, v), e in zip(rows, st.children[1:]):
        for l in sorted(x for x in comments if st.meta.line < x < e.meta.line and x not in used):
            lines.append(f"  {comments[l]}")
            used.add(l)
        line = f"  {k.ljust(width)} = {v}"
        tc = comments.get(e.meta.end_line)
        if tc is not None and e.meta.end_line not in used and tc.column > e.meta.end_column - 1:
            if not any(o.meta.line == e.meta.end_line for o in st.children[1:] if o is not e and o.meta.line > e.meta.line):
                line += "  " + str(tc)
                used.add(e.meta.end_line)
        lines.append(line)
    for l in sorted(x for x in comments if st.meta.line < x < st.meta.end_line and x not in used):
        lines.append(f"  {comments[l]}")
        used.add(l)
    lines.append("}")
    return lines
