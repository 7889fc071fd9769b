"""Canonical formatting of spec text (`mapspec fmt`).

Works on the statement-level parse tree, not on the include-resolved rule graph, so includes
stay includes. Comments are kept: one on its own line stays before the statement after it,
one after a statement stays after it; one written inside a multi-line statement moves above
it. Runs of blank lines become one. Formatting formatted text changes nothing.
"""

from __future__ import annotations

import bisect

from lark import Token, Tree

from . import grammar
from ..errors import Span, SpecError

WIDTH = 100
_PREC = {"add": 1, "sub": 1, "mul": 2, "floordiv": 2, "mod": 2}
_OPS = {"add": "+", "sub": "-", "mul": "*", "floordiv": "//", "mod": "%"}


def format_text(text: str, file: str = "<spec>") -> str:
    tree, comments = grammar.parse_statements(text, file)
    statements = tree.children
    by_line: dict[int, Token] = {c.line: c for c in comments}
    order = sorted(by_line)  # comment lines; those before `cursor` are all emitted
    cursor = 0
    used: set[int] = set()
    out: list[str] = []
    prev_end = 0
    blank = [not line.strip() for line in text.splitlines()]

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
            lines = _statement(st, text, file, by_line, used)
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


def _statement(st: Tree, text: str, file: str, comments: dict[int, Token], used: set[int]) -> list[str]:
    kind = st.data
    c = st.children
    if kind == "version":
        return [f"mapspec {c[0]}"]
    if kind == "frameworks":
        return [f"from {c[0]} to {c[1]}"]
    if kind == "select":
        return [f"select {_pattern(c[0], text, file)}"]
    if kind == "ranks":
        under = c[-1] if isinstance(c[-1], Tree) else None
        line = f"ranks {c[0]} " + " | ".join(str(t) for t in (c[1:-1] if under is not None else c[1:]))
        if under is None:
            return [line]
        name, *entries = under.children
        if not entries:
            return [line + f" under {name}"]
        rows = [(_pattern(e.children[0], text, file), str(e.children[1])) for e in entries]
        width = max(len(k) for k, _ in rows)
        return [line + f" under {name} {{"] + [f"  {k.ljust(width)} = {v}" for k, v in rows] + ["}"]
    if kind == "write_text":
        return [f"write {c[0]} {c[1]}"]
    if kind == "write":
        path, *entries = c
        rows = [(_pattern(e.children[0], text, file), str(e.children[1])) for e in entries]
        width = max((len(k) for k, _ in rows), default=0)
        return [f"write {path} {{"] + [f"  {k.ljust(width)} = {v}" for k, v in rows] + ["}"]
    if kind == "include":
        return [f"include {c[0]}"]
    if kind in ("drop", "keep"):
        keys = [t for t in c if isinstance(t, Token)]
        lines = _with_actions(f"{kind} " + " | ".join(_pattern(t, text, file) for t in keys),
                              [a for a in c if isinstance(a, Tree) and a.data == "action"])
        if any(isinstance(a, Tree) and a.data == "drop_reverse_none" for a in c):
            lines.append("    reverse none")  # as under a rename rule
        return lines
    if kind == "rename":
        sources = " | ".join(_pattern(t, text, file) for t in c[0].children)
        lines = _with_actions(f"{sources} -> {_template(c[1], text, file)}", [a for a in c[2:] if a.data == "action"])
        where = [a for a in c[2:] if a.data == "where"]
        if where:  # on a line of its own, as a reverse clause
            lines.append(f"    where {_template(where[0].children[0], text, file)}")
        rev = [a for a in c[2:] if a.data in ("reverse", "reverse_none")]
        if rev:  # on a line of its own, under the rule it inverts
            r = rev[0].children
            lines.append("    " + ("reverse none" if rev[0].data == "reverse_none" else " ".join(
                [f"reverse -> {_template(r[0], text, file)}"] + [f"then {_action(a)}" for a in r[1:]
                                                                 if a.data == "action"]
                + [f"where {_template(a.children[0], text, file)}" for a in r[1:] if a.data == "where"])))
        return lines
    if kind == "copy":
        absent = [t for t in c[2:] if isinstance(t, Token)]
        head = f"copy {_pattern(c[0], text, file)} -> {_template(c[1], text, file)}" + (" if absent" if absent else "")
        return _with_actions(head, [a for a in c[2:] if isinstance(a, Tree)])
    if kind == "optional":
        lines = _statement(c[0], text, file, comments, used)
        return [f"optional {lines[0]}"] + lines[1:]
    if kind == "otherwise":
        lines = _statement(c[0], text, file, comments, used)
        return [f"otherwise {lines[0]}"] + lines[1:]
    if kind == "otherwise_keep":
        return _with_actions("otherwise keep", c)
    if kind == "otherwise_drop":
        return ["otherwise drop"] + (["    reverse none"] if c else [])
    if kind == "param":
        out = f"param {c[0]}"
        keys = 0
        for tok in c[1:]:
            if tok is None:
                continue
            if isinstance(tok, Tree):  # from len("KEY")
                out += f" from len({tok.children[0]})"
                continue
            if tok.type == "STRING":
                out += f" {'from' if not keys else '|'} {tok}"
                keys += 1
            out += {"NAME": f": {tok}"}.get(tok.type, "")
            if tok.type == "LINE":
                out += " = " + _line(tok, "expr_line", text, file)
        return [out]
    if kind == "let":
        return [f"let {c[0]} = {_line(c[1], 'expr_line', text, file)}"]
    if kind == "meta":
        return [f"meta {_pattern(c[0], text, file)} = {_line(c[1], 'expr_line', text, file)}"]
    if kind == "meta_from":
        return [f"meta from {c[0]}(" + ", ".join(str(a) for a in c[1:]) + ")"]
    if kind == "assertion":
        return [f"assert {_line(c[0], 'assert_line', text, file)}"]
    if kind == "table":
        name, *entries = c
        rows = [(_pattern(e.children[0], text, file), _pattern(e.children[1], text, file), e) for e in entries]
        width = max((len(k) for k, _, _ in rows), default=0)
        lines = [f"table {name} {{"]
        for k, v, e in rows:
            for l in sorted(x for x in comments if x < e.meta.line and x > st.meta.line and x not in used):
                lines.append(f"  {comments[l]}")
                used.add(l)
            line = f"  {k.ljust(width)} = {v}"
            tc = comments.get(e.meta.end_line)
            if tc is not None and e.meta.end_line not in used and tc.column > e.meta.end_column - 1:
                if not any(o.meta.line == e.meta.end_line for o in entries if o is not e and o.meta.line > e.meta.line):
                    line += "  " + str(tc)
                    used.add(e.meta.end_line)
            lines.append(line)
        for l in sorted(x for x in comments if st.meta.line < x < st.meta.end_line and x not in used):
            lines.append(f"  {comments[l]}")
            used.add(l)
        lines.append("}")
        return lines
    raise ValueError(kind)  # pragma: no cover


def _with_actions(head: str, actions) -> list[str]:
    acts = [f"then {_action(a)}" for a in actions]
    one = " ".join([head] + acts)
    if len(one) <= WIDTH or not acts:
        return [one]
    return [head] + [f"    {a}" for a in acts]


def _line(tok: Token, start: str, text: str, file: str) -> str:
    """A LINE token (an expression, a quoted string or an assertion) in canonical form."""
    tree = grammar.parse_fragment(tok, start, file, text)
    if start == "assert_line":
        left, op, right, *message = tree.children
        return f"{_expr(left, sep=' ')} {op} {_expr(right, sep=' ')}" + (f", {message[0]}" if message else "")
    (inner,) = tree.children
    return str(inner) if isinstance(inner, Token) else _expr(inner, sep=" ")


def _pattern(tok: Token, text: str, file: str) -> str:
    tree = grammar.parse_fragment(tok, "pattern", file, text)
    return "".join(_part(p) for p in tree.children)


def _template(tok: Token, text: str, file: str) -> str:
    tree = grammar.parse_fragment(tok, "template", file, text)
    return "".join(_part(p) for p in tree.children)


def _part(p: Tree) -> str:
    kind = p.data
    c = p.children
    if kind in ("lit", "quoted"):
        return str(c[0])
    if kind == "single":
        return "*"
    if kind == "multi":
        return "**"
    if kind == "capture":
        return f"{{{c[0]}}}"
    if kind == "table_capture":
        return f"{{{c[0]} in {c[1]}}}"
    if kind == "cond_capture":
        return f"{{{c[0]}:{c[1]}{c[2]}{c[3]}}}"
    if kind in ("typed_capture", "fanout"):
        return f"{{{c[0]}:{_ctype(c[1])}}}"
    if kind == "subst":
        return "{" + _expr(c[0]) + "}"
    if kind == "named_subst":
        return "{" + f"{c[0]}={_expr(c[1])}" + "}"
    raise ValueError(kind)  # pragma: no cover


def _ctype(t: Tree) -> str:
    if t.data == "multi_type":
        return "**"
    if t.data == "single_type":
        return "*"
    return "|".join(str(a) for a in t.children)


def _expr(t: Tree, parent: int = 0, right: bool = False, sep: str = "") -> str:
    """An expression, compact in templates (`{s-1}`), spaced elsewhere (`head_dim // 2`)."""
    kind = t.data
    if kind == "ref":
        return str(t.children[0])
    if kind == "number":
        return str(t.children[0])
    if kind == "lookup":
        return f"{t.children[0]}[{_expr(t.children[1], sep=sep)}]"
    if kind == "decimal":
        return str(t.children[0])
    if kind == "call":
        return f"{t.children[0]}({_expr(t.children[1], sep=sep)})"
    if kind == "neg":
        return "-" + _expr(t.children[0], 3, sep=sep)
    prec = _PREC[kind]
    s = (_expr(t.children[0], prec, sep=sep) + sep + _OPS[kind] + sep
         + _expr(t.children[1], prec, right=True, sep=sep))
    if prec < parent or (right and prec == parent):
        return f"({s})"
    return s


def _action(a: Tree) -> str:
    name, *args = a.children
    return f"{name}(" + ", ".join(_arg(x) for x in args) + ")"


def _arg(v) -> str:
    kind = v.data
    if kind == "kwarg":
        return f"{v.children[0]}={_arg(v.children[1])}"
    if kind == "string":
        return str(v.children[0])
    if kind in _PREC or kind in ("ref", "number", "neg", "lookup", "decimal", "call"):
        return _expr(v, sep=" ")
    if kind == "tuple":
        items = [_arg(x) for x in v.children]
        return "(" + ", ".join(items) + ("," if len(items) == 1 else "") + ")"
    if kind == "append":
        return "+" + _arg(v.children[0])
    if kind == "append_one":
        return "+(" + _arg(v.children[0]) + ")"
    raise ValueError(kind)  # pragma: no cover

