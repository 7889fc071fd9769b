"""Parse tree -> rule graph (`rules.Spec`), with `include` resolved."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from lark import Token, Tree

from . import grammar, keyscan
from .exprs import walk
from ..core import paths
from ..core.quoting import shown_path
from ..errors import Span, SpecError
from ..core.nogc import without_gc
from .rules import (
    Action,
    Assertion,
    BinOp,
    Call,
    Dec,
    Calc,
    Capture,
    DropRule,
    Fanout,
    Header,
    KeepRule,
    Let,
    Lit,
    Lookup,
    MetaEntry,
    MetaFrom,
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
    WriteFile,
    join_literals,
)

LANGUAGE_VERSION = 1
MAX_INT = 10**15  # larger integers in a spec are typos or attacks, never tensor sizes
MAX_INCLUDE_DEPTH = 64
MAX_SPEC_BYTES = 16 << 20


def read_spec(path: str | Path) -> str:
    """A spec's text. Only regular files: a FIFO or /dev/zero would hang or never end. A path
    that cannot be opened is an OSError (a NUL byte in it too: EINVAL), whose reason
    `paths.reason` words."""
    import errno
    import os
    import stat

    if "\0" in os.fspath(path):
        raise OSError(errno.EINVAL, "the path holds a NUL byte, which no file name can")
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))  # a FIFO opens without a writer
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise OSError(errno.EISDIR, "a folder, not a spec file")
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
            raise SpecError(f"cannot read spec {shown_path(file)}: {unreadable(exc)}") from None
    else:
        file = name or (str(path) if path else "<spec>")
    return _Builder(file, text, stack=()).build(root=True)


def unreadable(exc: Exception) -> str:
    """Why a spec file could not be read, in words."""
    if isinstance(exc, UnicodeDecodeError):
        return f"not UTF-8 text (byte {exc.start})"
    return paths.reason(exc) if isinstance(exc, OSError) else str(exc)


def _string(token: object) -> str:
    """The value of a quoted string the grammar accepted. Python's parser refuses a raw NUL
    in source text, so one inside the quotes is read as the escape `\\x00` would be."""
    return ast.literal_eval(str(token).replace("\0", "\\x00"))


def _identity(file: str) -> str:
    """What tells two spec files apart for include cycles: the resolved path, or the name of
    a spec given as text (`<spec>`, or a file name that need not exist: `draft -o` names
    its text after the output; a name that cannot be resolved stays as it is)."""
    if file.startswith("<"):
        return file
    try:
        return str(Path(file).resolve())
    except (OSError, RuntimeError, ValueError):  # a symlink loop, a NUL byte
        return file


class _Builder:
    def __init__(self, file: str, text: str, stack: tuple[str, ...], includer: Header | None = None):
        self.file = file
        self.text = text
        self.includer = includer  # the including spec's header (for an included file)
        self.stack = stack + (_identity(file),)

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
        meta: list = []
        writes: list[WriteFile] = []
        body_started = False
        for st in tree.children:
            try:
                kind = st.data
                span = self.span_tree(st)
                if kind in ("version", "frameworks", "select", "ranks"):
                    if kind in seen:
                        raise self.error(f"'{_HEADER_WORD[kind]}' is given twice (first at line {seen[kind].line})", span)
                    if body_started:
                        raise self.error(f"'{_HEADER_WORD[kind]}' belongs in the header, before tables and rules", span)
                    seen[kind] = span
                    header = self._header(st, header, span)
                    if not root:
                        self._included_header(kind, header, span)
                    continue
                body_started = True
                if kind == "include":
                    sub = self._include(st, header)
                    includes.append(sub.file)
                    includes.extend(sub.includes)
                    tables.extend(sub.tables)
                    rules.extend(sub.rules)
                    definitions.extend(sub.definitions)
                    assertions.extend(sub.assertions)
                    meta.extend(sub.meta)
                    writes.extend(sub.writes)
                elif kind == "table":
                    tables.append(self._table(st))
                else:
                    node = self.statement(st)
                    (assertions if isinstance(node, Assertion) else definitions if isinstance(node, (Param, Let))
                     else meta if isinstance(node, (MetaEntry, MetaFrom)) else writes if isinstance(node, WriteFile)
                     else rules).append(node)
            except RecursionError:  # whatever nests past Python's stack: an error at its statement
                raise self.error("this statement nests too deeply to read", self.span_tree(st)) from None
        if seen:
            first = min(seen.values(), key=lambda s: (s.line, s.column))
            header = header.model_copy(update={"span": first})
        return Spec(file=self.file, header=header, tables=tuple(tables), rules=tuple(rules),
                    includes=tuple(includes), definitions=tuple(definitions), assertions=tuple(assertions),
                    meta=tuple(meta), writes=tuple(writes))

    def statement(self, st: Tree):
        """One rule, parameter, let, assertion, meta or write statement as its node (the header,
        tables and includes are the spec's own business: `build`)."""
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
        return DropRule(patterns=(self._everything(st),), span=span, otherwise=True, reverse_none=bool(st.children))

    def _st_param(self, st: Tree, span: Span) -> Param:
        return self._param(st, span)

    def _st_let(self, st: Tree, span: Span) -> Let:
        name_tok, line = st.children
        return Let(name=str(name_tok), expr=self._line(line), span=self.span_tok(name_tok))

    def _st_assertion(self, st: Tree, span: Span) -> Assertion:
        return self._assertion(st.children[0], span)

    def _st_meta(self, st: Tree, span: Span) -> MetaEntry:
        key_tok, line = st.children
        return MetaEntry(key=self._plain(key_tok), value=self._line(line), span=self.span_tok(key_tok))

    def _st_meta_from(self, st: Tree, span: Span) -> MetaFrom:
        name_tok, *args = st.children
        return MetaFrom(provider=str(name_tok), args=tuple(ast.literal_eval(str(a)) for a in args), span=span)

    def _st_write(self, st: Tree, span: Span) -> WriteFile:
        return self._write(st, span)

    _st_write_text = _st_write

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
        if st.data == "ranks":
            side, *names = st.children
            under = names.pop() if names and isinstance(names[-1], Tree) else None
            if str(side) not in ("source", "target"):
                raise self.error(f"'ranks' is followed by source or target (the side that is rank files), not '{side}'",
                                 self.span_tok(side))
            templates = []
            for tok in names:
                text = ast.literal_eval(str(tok))
                bad = re.sub(r"\{[A-Za-z_][A-Za-z0-9_]*(?::[0-9]{1,2})?(?:[ \t]+of[ \t]+(?:[A-Za-z_][A-Za-z0-9_]*|[0-9]+))?\}",
                             "", text)
                if "{" in bad or "}" in bad or not text or text.startswith("/") or ".." in text.split("/"):
                    raise self.error("a rank file name is a relative path whose fields are {name}, {name:WIDTH} or {name:WIDTH of COUNT} "
                                     "(e.g. \"consolidated.{rank:02}.pth\")", self.span_tok(tok))
                templates.append(text)
            update = {"ranks_side": str(side), "ranks": tuple(templates)}
            if under is not None:
                name, *entries = under.children
                update["ranks_under"] = str(name)
                update["ranks_entries"] = tuple(
                    TableEntry(key=self._plain(e.children[0]), value=str(e.children[1]), span=self.span_tree(e))
                    for e in entries)
            return header.model_copy(update=update)
        tok = st.children[0]
        pat = self._pattern(tok)
        if any(isinstance(p, Capture) for p in pat.parts):
            raise self.error("'select' takes a plain path such as model or state_dict", pat.span)
        return header.model_copy(update={"select": "".join(p.text for p in pat.parts)})

    def _write(self, st: Tree, span: Span) -> WriteFile:
        path_tok, *rest = st.children
        path = ast.literal_eval(str(path_tok))
        if not path or path.startswith("/") or ".." in path.split("/"):
            raise self.error("write names a relative file inside the output", self.span_tok(path_tok))
        if st.data == "write_text":
            return WriteFile(path=path, text=ast.literal_eval(str(rest[0])), span=span)
        entries = tuple(TableEntry(key=self._plain(e.children[0]), value=str(e.children[1]), span=self.span_tree(e))
                        for e in rest)
        return WriteFile(path=path, entries=entries, span=span)

    def _included_header(self, kind: str, header: Header, span: Span) -> None:
        """An included file's header yields to the including spec's: `from ... to` is
        informative (the includer's stands), and `select` must be the includer's or be
        overridden by one the includer states; rules written for a selected sub-tree would
        not match the whole checkpoint."""
        if kind == "ranks" and self.includer is not None and \
                (self.includer.ranks_side, self.includer.ranks) != (header.ranks_side, header.ranks):
            raise self.error("this included file reads or writes rank files; state the same 'ranks' line in the "
                             "including spec (the rank files are the including spec's source or target)", span)
        if kind == "select" and self.includer is not None and self.includer.select is None:
            raise self.error(f"this included file selects '{header.select}' but the including spec selects "
                             f"nothing; state 'select {header.select}' (or another) in the including spec", span)

    def _include(self, st: Tree, header: Header) -> Spec:
        tok = st.children[0]
        rel = _string(str(tok))
        base = Path(self.file).parent if not self.file.startswith("<") else Path.cwd()
        path = (base / rel)
        span = self.span_tok(tok)
        resolved = str(paths.resolve(path, "include", lambda m: self.error(m, span)))
        if resolved in self.stack:
            raise self.error(f"include cycle: {rel} includes itself", self.span_tok(tok))
        if len(self.stack) >= MAX_INCLUDE_DEPTH:
            raise self.error(f"includes nest deeper than {MAX_INCLUDE_DEPTH} files", self.span_tok(tok))
        try:
            text = read_spec(path)
        except (OSError, UnicodeDecodeError) as exc:
            raise self.error(f"cannot include {shown_path(rel)}: {unreadable(exc)}", span) from None
        return _Builder(str(path), text, self.stack, header if self.includer is None else self.includer).build(root=False)

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
            rev_where = None
            if rev_actions and rev_actions[-1].data == "where":
                rev_where = self._template(rev_actions.pop().children[0])
            reverse = Reverse(target=self._template(rev_tok),
                              actions=tuple(self._action(a) for a in rev_actions) if rev_actions else None,
                              where=rev_where, span=self.span_tok(rev_tok))
        where = None
        if actions and actions[-1].data == "where":
            where = self._template(actions.pop().children[0])
        return RenameRule(sources=sources, target=target, actions=tuple(self._action(a) for a in actions),
                          reverse=reverse, where=where, span=self.span_tree(st))

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
        keys = []
        for tok in rest:
            if tok is None:
                continue
            if isinstance(tok, Tree):  # from len("KEY")
                fields["config_key"] = _string(str(tok.children[0]))
                fields["config_len"] = True
            elif tok.type == "NAME":
                if str(tok) not in ("int", "str", "float", "bool"):
                    raise self.error(f"a parameter is int, str, float or bool, not '{tok}'", self.span_tok(tok))
                fields["type"] = str(tok)
            elif tok.type == "STRING":
                keys.append(_string(str(tok)))
                fields["config_key"], fields["more_keys"] = keys[0], tuple(keys[1:])
            else:
                fields["default"] = self._line(tok)
        return Param(**fields)

    def _line(self, tok: Token):
        """The expression (or quoted string) of a LINE token."""
        tree = grammar.parse_fragment(tok, "expr_line", self.file, self.text).children[0]
        if isinstance(tree, Token):
            return _string(str(tree))
        return self._expr(tree, tok)

    def _assertion(self, tok: Token, span: Span) -> Assertion:
        tree = grammar.parse_fragment(tok, "assert_line", self.file, self.text)
        left, op, right, *message = tree.children
        start = self._frag_span(tree, tok)
        return Assertion(left=self._integer(self._expr(left, tok), start, "an assertion"), op=str(op),
                         right=self._integer(self._expr(right, tok), start, "an assertion"),
                         message=_string(str(message[0])) if message else None,
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
            return Lit(text=_string(str(part.children[0])))
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
        if kind == "cond_capture":
            name, ctype, op, bound = (str(c) for c in part.children)
            if ctype != "int":
                raise self.error(f"a condition goes with an integer capture: {{{name}:int{op}{bound}}}", span)
            return Capture(name=name, type="int", condition=(op, self._int(part.children[3], None)), span=span)
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
                item = Lit(text=_string(str(part.children[0])))
            elif kind in ("single", "multi"):
                raise self.error(
                    "a target cannot hold a wildcard; name it in the source ({name:*} or {name:**}) "
                    "and write {name} here", self._frag_span(part, tok))
            elif kind == "subst":
                at = self._frag_span(part, tok)
                item = Subst(expr=self._integer(self._expr(part.children[0], tok), at, "a template"), span=at)
            elif kind == "named_subst":
                at = self._frag_span(part, tok)
                item = Subst(name=str(part.children[0]),
                             expr=self._integer(self._expr(part.children[1], tok), at, "a template"), span=at)
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

    def _integer(self, expr, at: Span, where: str):
        """`expr`, if it is integer arithmetic: typed values (`uint32(n)`) and decimals are for
        metadata values and parameters only; anywhere else they are an error here, not later."""
        for node, _ in walk(expr):
            if isinstance(node, (Call, Dec)):
                what = f"a typed value ({node.func}(...))" if isinstance(node, Call) else f"a decimal ({node.text})"
                raise self.error(f"{what} is not allowed in {where}: it takes integer arithmetic "
                                 "(typed and decimal values belong in `meta` entries and parameters)",
                                 node.span if isinstance(node, Call) else at)
        return expr

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
        if kind == "decimal":
            text = str(t.children[0])
            return Dec(value=float(text), text=text)
        if kind == "call":
            return Call(func=str(t.children[0]), arg=self._expr(t.children[1], base, depth + 1), span=where(t))
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

    def _value(self, v, depth: int = 0):
        kind = v.data
        if depth > MAX_DEPTH:  # tuples in tuples: every later pass recurses over them too
            raise self.error(f"an argument nested more than {MAX_DEPTH} levels deep", self.span_tree(v))
        if kind in ("ref", "number", "decimal", "neg", "add", "sub", "mul", "floordiv", "mod", "lookup", "call"):
            expr = self._integer(self._expr(v, None), self.span_tree(v), "an action argument")
            if isinstance(expr, Num):
                return expr.value
            if isinstance(expr, Ref):
                return Word(name=expr.name, span=expr.span)
            if isinstance(expr, Lookup):
                raise self.error("a table lookup is not an action argument", expr.span)
            return Calc(expr=expr, span=self.span_tree(v))
        if kind == "string":
            return Text(value=_string(str(v.children[0])))
        if kind == "tuple":
            return Tuple(items=tuple(self._value(c, depth + 1) for c in v.children))
        if kind == "append":
            inner = self._value(v.children[0], depth + 1)
            return Tuple(items=inner.items, append=True)
        if kind == "append_one":
            return Tuple(items=(self._value(v.children[0], depth + 1),), append=True)
        raise TypeError(kind)  # pragma: no cover


_HEADER_WORD = {"version": "mapspec", "frameworks": "from ... to", "select": "select", "ranks": "ranks"}


def as_spec(spec: Spec | str | Path) -> Spec:
    """A parsed spec as it is, anything else (a path) parsed."""
    return spec if isinstance(spec, Spec) else parse_spec(spec)
