"""Parse tree -> rule graph (`rules.Spec`), with `include` resolved."""

from __future__ import annotations

import ast
from pathlib import Path

from lark import Token, Tree

from . import grammar, keyscan
from ..errors import Span, SpecError
from ..core.nogc import without_gc
from .rules import (
    Action,
    Assertion,
    BinOp,
    Calc,
    Capture,
    DropRule,
    Fanout,
    Header,
    KeepRule,
    Let,
    Lit,
    Lookup,
    Neg,
    Num,
    Param,
    Pattern,
    Ref,
    RenameRule,
    Reverse,
    Spec,
    Subst,
    Table,
    TableEntry,
    Template,
    Text,
    Tuple,
    Word,
    join_literals,
)

LANGUAGE_VERSION = 1
MAX_INT = 10**15  # larger integers in a spec are typos or attacks, never tensor sizes
MAX_INCLUDE_DEPTH = 64
MAX_SPEC_BYTES = 16 << 20


def read_spec(path: str | Path) -> str:
    """A spec's text. Only regular files: a FIFO or /dev/zero would hang or never end."""
    import os
    import stat

    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))  # a FIFO opens without a writer
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise OSError("not a regular file")
        if st.st_size > MAX_SPEC_BYTES:
            raise OSError(f"{st.st_size:,} bytes is larger than a spec can be ({MAX_SPEC_BYTES:,})")
        with os.fdopen(fd, "rb", closefd=False) as f:
            data = f.read(MAX_SPEC_BYTES + 1)
    finally:
        os.close(fd)
    return data.decode("utf-8")
MAX_DEPTH = 100  # operators in one expression, nested: far beyond any real spec


@without_gc
def parse_spec(path: str | Path | None = None, *, text: str | None = None, name: str | None = None) -> Spec:
    """Parse a spec file (or `text`, reported as `name`) into a `Spec`, includes resolved."""
    if text is None:
        if path is None:
            raise TypeError("parse_spec needs a path or text")
        file = str(path)
        try:
            text = read_spec(path)
        except (OSError, UnicodeDecodeError) as exc:
            raise SpecError(f"cannot read spec {file}: {_reason(exc)}") from None
    else:
        file = name or (str(path) if path else "<spec>")
    return _Builder(file, text, stack=()).build(root=True)


def _reason(exc: Exception) -> str:
    if isinstance(exc, UnicodeDecodeError):
        return f"not UTF-8 text (byte {exc.start})"
    return getattr(exc, "strerror", None) or str(exc)


class _Builder:
    def __init__(self, file: str, text: str, stack: tuple[str, ...]):
        self.file = file
        self.text = text
        self.stack = stack + (str(Path(file).resolve()) if not file.startswith("<") else file,)

    # -------------------------------------------------------------- helpers
    def span_tok(self, tok: Token, length: int | None = None) -> Span:
        n = len(str(tok)) if length is None else length
        return Span(self.file, tok.line, tok.column, tok.line, tok.column + n)

    def span_tree(self, tree: Tree) -> Span:
        m = tree.meta
        return Span(self.file, m.line, m.column, m.end_line, m.end_column)

    def error(self, message: str, span: Span) -> SpecError:
        return SpecError(message, span, self.text)

    # -------------------------------------------------------------- statements
    def build(self, root: bool) -> Spec:
        tree, _comments = grammar.parse_statements(self.text, self.file)
        header = Header()
        seen: dict[str, Span] = {}
        tables: list[Table] = []
        rules: list = []
        includes: list[str] = []
        definitions: list = []
        assertions: list[Assertion] = []
        body_started = False
        for st in tree.children:
            kind = st.data
            span = self.span_tree(st)
            if kind in ("version", "frameworks", "select"):
                if kind in seen:
                    raise self.error(f"'{_HEADER_WORD[kind]}' is given twice (first at line {seen[kind].line})", span)
                if body_started:
                    raise self.error(f"'{_HEADER_WORD[kind]}' belongs in the header, before tables and rules", span)
                if not root and kind != "version":
                    raise self.error(f"an included file cannot set '{_HEADER_WORD[kind]}'; set it in the including spec", span)
                seen[kind] = span
                header = self._header(st, header, span)
                continue
            body_started = True
            if kind == "include":
                sub = self._include(st)
                includes.append(sub.file)
                includes.extend(sub.includes)
                tables.extend(sub.tables)
                rules.extend(sub.rules)
                definitions.extend(sub.definitions)
                assertions.extend(sub.assertions)
            elif kind == "table":
                tables.append(self._table(st))
            else:
                node = self.statement(st)
                (assertions if isinstance(node, Assertion) else definitions if isinstance(node, (Param, Let))
                 else rules).append(node)
        if seen:
            first = min(seen.values(), key=lambda s: (s.line, s.column))
            header = header.model_copy(update={"span": first})
        return Spec(file=self.file, header=header, tables=tuple(tables), rules=tuple(rules),
                    includes=tuple(includes), definitions=tuple(definitions), assertions=tuple(assertions))

    def statement(self, st: Tree):
        """One rule, parameter, let or assertion statement as its node (the header, tables and
        includes are the spec's own business: `build`)."""
        build = getattr(self, "_st_" + st.data, None)
        if build is None:  # pragma: no cover - the grammar has no other statements
            raise self.error(f"unknown statement {st.data}", self.span_tree(st))
        return build(st, self.span_tree(st))

    def _st_rename(self, st: Tree, span: Span) -> RenameRule:
        return self._rename(st)

    def _st_copy(self, st: Tree, span: Span) -> RenameRule:
        return self._copy(st)

    def _st_drop(self, st: Tree, span: Span) -> DropRule:
        return self._drop(st.children, span)

    def _st_keep(self, st: Tree, span: Span) -> KeepRule:
        return self._keep(st.children, span)

    def _st_optional(self, st: Tree, span: Span):
        inner = st.children[0]
        return self.statement(inner).model_copy(update={"optional": True, "span": span})

    def _st_otherwise(self, st: Tree, span: Span) -> RenameRule:
        return self._rename(st.children[0]).model_copy(update={"otherwise": True, "span": span})

    def _st_otherwise_keep(self, st: Tree, span: Span) -> KeepRule:
        return self._keep([self._everything(st)] + st.children, span).model_copy(update={"otherwise": True})

    def _st_otherwise_drop(self, st: Tree, span: Span) -> DropRule:
        return DropRule(patterns=(self._everything(st),), span=span, otherwise=True)

    def _st_param(self, st: Tree, span: Span) -> Param:
        return self._param(st, span)

    def _st_let(self, st: Tree, span: Span) -> Let:
        name_tok, line = st.children
        return Let(name=str(name_tok), expr=self._line(line), span=self.span_tok(name_tok))

    def _st_assertion(self, st: Tree, span: Span) -> Assertion:
        return self._assertion(st.children[0], span)

    def _drop(self, children: list, span: Span) -> DropRule:
        """`drop P | Q`, with `reverse none` under it (the inverse may leave the keys out)."""
        keys = [t for t in children if not isinstance(t, Tree)]
        return DropRule(patterns=tuple(self._pattern(t) for t in keys), span=span,
                        reverse_none=len(keys) < len(children))

    def _header(self, st: Tree, header: Header, span: Span) -> Header:
        if st.data == "version":
            version = self._int(st.children[0])
            if version != LANGUAGE_VERSION:
                raise self.error(
                    f"unsupported language version {version}; this mapspec reads version {LANGUAGE_VERSION}",
                    self.span_tok(st.children[0]))
            return header.model_copy(update={"version": version})
        if st.data == "frameworks":
            return header.model_copy(update={"source": str(st.children[0]), "target": str(st.children[1])})
        tok = st.children[0]
        pat = self._pattern(tok)
        if any(isinstance(p, Capture) for p in pat.parts):
            raise self.error("'select' takes a plain path such as model or state_dict", pat.span)
        return header.model_copy(update={"select": "".join(p.text for p in pat.parts)})

    def _include(self, st: Tree) -> Spec:
        tok = st.children[0]
        rel = ast.literal_eval(str(tok))
        base = Path(self.file).parent if not self.file.startswith("<") else Path.cwd()
        path = (base / rel)
        resolved = str(path.resolve())
        if resolved in self.stack:
            raise self.error(f"include cycle: {rel} includes itself", self.span_tok(tok))
        if len(self.stack) >= MAX_INCLUDE_DEPTH:
            raise self.error(f"includes nest deeper than {MAX_INCLUDE_DEPTH} files", self.span_tok(tok))
        try:
            text = read_spec(path)
        except (OSError, UnicodeDecodeError) as exc:
            raise self.error(f"cannot include {rel}: {_reason(exc)}", self.span_tok(tok)) from None
        return _Builder(str(path), text, self.stack).build(root=False)

    def _table(self, st: Tree) -> Table:
        name_tok, *entries = st.children
        out = []
        for e in entries:
            k_tok, v_tok = e.children
            out.append(TableEntry(key=self._plain(k_tok), value=self._plain(v_tok), span=self.span_tree(e)))
        return Table(name=str(name_tok), entries=tuple(out), span=self.span_tree(st))

    def _plain(self, tok: Token) -> str:
        pat = self._pattern(tok)
        for p in pat.parts:
            if isinstance(p, Capture):
                raise self.error("table entries are plain text; captures and wildcards are not allowed here", p.span)
        return "".join(p.text for p in pat.parts)

    def _rename(self, st: Tree) -> RenameRule:
        sources_tree, target_tok, *actions = st.children
        sources = tuple(self._pattern(t) for t in sources_tree.children)
        target = self._template(target_tok)
        reverse = None
        if actions and actions[-1].data == "reverse_none":
            reverse = Reverse(target=None, span=self.span_tree(actions.pop()))
        elif actions and actions[-1].data == "reverse":
            rev_tok, *rev_actions = actions.pop().children
            reverse = Reverse(target=self._template(rev_tok),
                              actions=tuple(self._action(a) for a in rev_actions) if rev_actions else None,
                              span=self.span_tok(rev_tok))
        return RenameRule(sources=sources, target=target, actions=tuple(self._action(a) for a in actions),
                          reverse=reverse, span=self.span_tree(st))

    def _copy(self, st: Tree) -> RenameRule:
        source_tok, target_tok, *rest = st.children
        if_absent = bool(rest) and isinstance(rest[0], Token) and rest[0].type == "IF_ABSENT"
        actions = rest[1:] if if_absent else rest
        return RenameRule(sources=(self._pattern(source_tok),), target=self._template(target_tok),
                          actions=tuple(self._action(a) for a in actions), span=self.span_tree(st),
                          is_copy=True, if_absent=if_absent)

    def _keep(self, children: list, span: Span) -> KeepRule:
        keys = [c if isinstance(c, Pattern) else self._pattern(c) for c in children if not isinstance(c, Tree)]
        actions = [self._action(c) for c in children if isinstance(c, Tree)]
        return KeepRule(patterns=tuple(keys), actions=tuple(actions), span=span)

    def _everything(self, st: Tree) -> Pattern:
        """The pattern of a bare `otherwise keep` / `otherwise drop`: every key."""
        span = self.span_tree(st)
        return Pattern(parts=(Capture(name=None, type="multi", span=span),), text="**", span=span)

    # -------------------------------------------------------------- parameters
    def _param(self, st: Tree, span: Span) -> Param:
        name_tok, *rest = st.children
        fields: dict = {"name": str(name_tok), "span": self.span_tok(name_tok)}
        for tok in rest:
            if tok.type == "NAME":
                if str(tok) not in ("int", "str"):
                    raise self.error(f"a parameter is int or str, not '{tok}'", self.span_tok(tok))
                fields["type"] = str(tok)
            elif tok.type == "STRING":
                fields["config_key"] = ast.literal_eval(str(tok))
            else:
                fields["default"] = self._line(tok)
        return Param(**fields)

    def _line(self, tok: Token):
        """The expression (or quoted string) of a LINE token."""
        tree = grammar.parse_fragment(tok, "expr_line", self.file, self.text).children[0]
        if isinstance(tree, Token):
            return ast.literal_eval(str(tree))
        return self._expr(tree, tok)

    def _assertion(self, tok: Token, span: Span) -> Assertion:
        tree = grammar.parse_fragment(tok, "assert_line", self.file, self.text)
        left, op, right, *message = tree.children
        start = self._frag_span(tree, tok)
        return Assertion(left=self._expr(left, tok), op=str(op), right=self._expr(right, tok),
                         message=ast.literal_eval(str(message[0])) if message else None,
                         span=Span(self.file, span.line, span.column, start.end_line, start.end_column))

    # -------------------------------------------------------------- patterns
    def _pattern(self, tok: Token) -> Pattern:
        items = keyscan.pattern_parts(str(tok), self.file, tok.line, tok.column)
        if items is None:  # not one of the common shapes: the parser reads (or rejects) it
            tree = grammar.parse_fragment(tok, "pattern", self.file, self.text)
            items = (self._pattern_part(part, tok) for part in tree.children)  # errors in order
        return Pattern(parts=join_literals(self._bound_once(items)), text=str(tok), span=self.span_tok(tok))

    def _bound_once(self, items):
        """The parts of a pattern, as they come; a capture name bound twice is an error there."""
        names: set[str] = set()
        for item in items:
            if isinstance(item, Capture) and item.name:
                if item.name in names:
                    raise self.error(f"capture {{{item.name}}} is bound twice in one pattern", item.span)
                names.add(item.name)
            yield item

    def _frag_span(self, tree_or_tok, base: Token) -> Span:
        if isinstance(tree_or_tok, Token):
            line, col = grammar.shift(tree_or_tok, base)
            return Span(self.file, line, col, line, col + len(str(tree_or_tok)))
        m = tree_or_tok.meta
        return Span(self.file, base.line, base.column + m.column - 1, base.line, base.column + m.end_column - 1)

    def _pattern_part(self, part: Tree, base: Token):
        kind = part.data
        if kind == "lit":
            return Lit(text=str(part.children[0]))
        if kind == "quoted":
            return Lit(text=ast.literal_eval(str(part.children[0])))
        span = self._frag_span(part, base)
        if kind == "single":
            return Capture(name=None, type="segment", span=span)
        if kind == "multi":
            return Capture(name=None, type="multi", span=span)
        if kind == "capture":
            return Capture(name=str(part.children[0]), type="segment", span=span)
        if kind == "table_capture":
            return Capture(name=str(part.children[0]), type="table", table=str(part.children[1]), span=span)
        if kind == "typed_capture":
            return self._typed(part, span)
        raise self.error(f"unexpected {kind} in a pattern", span)  # pragma: no cover

    def _typed(self, part: Tree, span: Span) -> Capture:
        name = str(part.children[0])
        ctype = part.children[1]
        if ctype.data == "multi_type":
            return Capture(name=name, type="multi", span=span)
        if ctype.data == "single_type":
            return Capture(name=name, type="segment", span=span)
        alts = tuple(str(t) for t in ctype.children)
        if alts == ("int",):
            return Capture(name=name, type="int", span=span)
        if len(set(alts)) != len(alts):
            raise self.error(f"capture {{{name}}} lists an alternative twice", span)
        return Capture(name=name, type="alt", alternatives=alts, span=span)

    # -------------------------------------------------------------- templates
    def _template(self, tok: Token) -> Template:
        items = keyscan.template_parts(str(tok), self.file, tok.line, tok.column)
        if items is None:  # not one of the common shapes: the parser reads (or rejects) it
            items = self._template_items(tok)
        return Template(parts=join_literals(items), text=str(tok), span=self.span_tok(tok))

    def _template_items(self, tok: Token) -> list:
        tree = grammar.parse_fragment(tok, "template", self.file, self.text)
        items: list = []
        for part in tree.children:
            kind = part.data
            if kind == "lit":
                item = Lit(text=str(part.children[0]))
            elif kind == "quoted":
                item = Lit(text=ast.literal_eval(str(part.children[0])))
            elif kind in ("single", "multi"):
                raise self.error(
                    "a target cannot hold a wildcard; name it in the source ({name:*} or {name:**}) "
                    "and write {name} here", self._frag_span(part, tok))
            elif kind == "subst":
                item = Subst(expr=self._expr(part.children[0], tok), span=self._frag_span(part, tok))
            elif kind == "fanout":
                item = Fanout(capture=self._typed(part, self._frag_span(part, tok)))
            else:  # pragma: no cover
                raise self.error(f"unexpected {kind} in a template", self._frag_span(part, tok))
            items.append(item)
        return items

    def _int(self, tok: Token, base: Token | None = None) -> int:
        """An integer literal, bounded before Python converts it (over 4,300 digits it raises)."""
        text = str(tok).lstrip("+-")
        if len(text) > 16 or int(text) > MAX_INT:
            span = self._frag_span(tok, base) if base is not None else self.span_tok(tok)
            shown = str(tok) if len(str(tok)) <= 24 else f"{str(tok)[:12]}...({len(str(tok)):,} digits)"
            raise self.error(f"integer {shown} is out of range (at most {MAX_INT:,})", span)
        return int(str(tok))

    def _expr(self, t: Tree, base: Token | None, depth: int = 0):
        """An expression tree; `base` is the token it was parsed from again (None: the tree's
        positions are the file's own)."""
        where = (lambda x: self._frag_span(x, base)) if base is not None else (
            lambda x: self.span_tok(x) if isinstance(x, Token) else self.span_tree(x))
        if depth > MAX_DEPTH:  # every later pass recurses over expressions too
            raise self.error(f"expression nested more than {MAX_DEPTH} levels deep", where(t))
        kind = t.data
        if kind == "ref":
            return Ref(name=str(t.children[0]), span=where(t.children[0]))
        if kind == "number":
            return Num(value=self._int(t.children[0], base))
        if kind == "neg":
            inner = self._expr(t.children[0], base, depth + 1)
            return Num(value=-inner.value) if isinstance(inner, Num) else Neg(operand=inner)
        if kind == "lookup":
            return Lookup(table=str(t.children[0]), key=self._expr(t.children[1], base, depth + 1), span=where(t))
        op = {"add": "+", "sub": "-", "mul": "*", "floordiv": "//", "mod": "%"}[kind]
        return BinOp(op=op, left=self._expr(t.children[0], base, depth + 1),
                     right=self._expr(t.children[1], base, depth + 1))

    # -------------------------------------------------------------- actions
    def _action(self, t: Tree) -> Action:
        name_tok, *args = t.children
        pos, kw = [], []
        for a in args:
            if isinstance(a, Tree) and a.data == "kwarg":
                kw.append((str(a.children[0]), self._value(a.children[1])))
            else:
                if kw:
                    raise self.error("a positional argument cannot follow a keyword argument",
                                     self.span_tree(t))
                pos.append(self._value(a))
        return Action(name=str(name_tok), args=tuple(pos), kwargs=tuple(kw), span=self.span_tree(t))

    def _value(self, v):
        kind = v.data
        if kind in ("ref", "number", "neg", "add", "sub", "mul", "floordiv", "mod", "lookup"):
            expr = self._expr(v, None)
            if isinstance(expr, Num):
                return expr.value
            if isinstance(expr, Ref):
                return Word(name=expr.name, span=expr.span)
            if isinstance(expr, Lookup):
                raise self.error("a table lookup is not an action argument", expr.span)
            return Calc(expr=expr, span=self.span_tree(v))
        if kind == "string":
            return Text(value=ast.literal_eval(str(v.children[0])))
        if kind == "tuple":
            return Tuple(items=tuple(self._value(c) for c in v.children))
        if kind == "append":
            inner = self._value(v.children[0])
            return Tuple(items=inner.items, append=True)
        if kind == "append_one":
            return Tuple(items=(self._value(v.children[0]),), append=True)
        raise TypeError(kind)  # pragma: no cover


_HEADER_WORD = {"version": "mapspec", "frameworks": "from ... to", "select": "select"}


def as_spec(spec: Spec | str | Path) -> Spec:
    """A parsed spec as it is, anything else (a path) parsed."""
    return spec if isinstance(spec, Spec) else parse_spec(spec)
