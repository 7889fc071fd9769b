"""The one spec writer (`mapspec.lang.text`): whatever it writes parses back to the same rule
objects, and is already formatted. Proven over every shipped spec, every golden spec and
golden inverse in tests/data, and generated specs with quoted keys, tables, arithmetic,
actions of every argument kind and every statement of the language (meta, write, ranks, where
clauses, named and typed captures, parameters from several keys or a length) (issue 16)."""

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from mapspec import invert_spec, parse_spec
from mapspec.errors import Span
from mapspec.lang import text as write
from mapspec.lang.exprs import fold, names, transform, walk
from mapspec.lang.formatter import format_text
from mapspec.lang.rules import (Action, Assertion, BinOp, Calc, Call, Capture, Dec, DropRule, Fanout, Header, KeepRule,
                                Let, Lit, Lookup, MetaEntry, MetaFrom, Neg, Num, Param, Pattern, Ref, RenameRule,
                                Reverse, Spec, Subst, Table, TableEntry, Template, Text, Tuple, Word, WriteFile)

from conftest import DATA

REPO = Path(__file__).resolve().parent.parent
WRITTEN = (sorted((REPO / "specs").glob("*.map")) + sorted((DATA / "specs" / "ok").glob("*.map"))
           + sorted((DATA / "specs" / "invert").glob("*.map"))
           + sorted((DATA / "specs" / "invert").glob("*/*.inverse.map")))
SPAN = Span("<generated>", 1, 1, 1, 1)


def meaning(node):
    """A node as plain data without where it was written: spans, the as-written text of
    keys, and the file name left out."""
    def strip(x):
        if isinstance(x, dict):
            drop = {"span", "file", "includes"} | ({"text"} if "parts" in x else set())
            return {k: strip(v) for k, v in x.items() if k not in drop}
        if isinstance(x, (list, tuple)):
            return [strip(v) for v in x]
        return x

    return strip(node.model_dump())


def reparsed(spec: Spec) -> Spec:
    written = write.whole(spec)
    assert format_text(written) == written  # the writer's text is already formatted
    return parse_spec(text=written, name="<written>")


@pytest.mark.parametrize("path", WRITTEN, ids=lambda p: str(p.relative_to(REPO)))
def test_every_spec_written_back_parses_to_the_same_rules(path, monkeypatch):
    monkeypatch.chdir(path.parent)  # includes are relative to the spec
    spec = parse_spec(path.name)
    assert meaning(reparsed(spec)) == meaning(spec)


def test_a_table_with_quoted_keys_inverts_to_a_spec_that_parses_and_round_trips():
    """Regression (issue 16): invert wrote table entries and keys as they are, unquoted, so
    the inverse of `table t { "a b" = x }` did not parse."""
    forward = parse_spec(text='mapspec 1\ntable t {\n  "a b" = x\n  c = "y->z"\n  "drop" = d\n}\n'
                              '"in put".{k in t} -> "out put".{t[k]}."*" then transpose()\n', name="f.map")
    inverse = invert_spec(forward)
    assert format_text(inverse.text) == inverse.text
    (rule,) = inverse.spec.rules
    assert inverse.spec.tables[0].mapping() == {"x": "a b", "y->z": "c", "d": "drop"}
    assert [p.text for p in rule.sources[0].parts if isinstance(p, Lit)] == ["out put.", ".*"]
    assert [p.text for p in rule.target.parts if isinstance(p, Lit)] == ["in put."]
    assert inverse.forward_rule(rule.span) == forward.rules[0].span
    # and back again: the inverse of the inverse is the forward spec (its table renamed t_r_r)
    again = invert_spec(inverse.spec)
    (table,) = again.spec.tables
    assert table.name == "t_r_r" and table.mapping() == forward.tables[0].mapping()
    assert write.rule_lines(again.spec.rules[0]) == [
        line.replace(" in t}", " in t_r_r}").replace("{t[", "{t_r_r[") for line in write.rule_lines(forward.rules[0])]


def test_the_inverse_links_each_rule_to_its_forward_rule_whatever_is_left_out():
    """The link is kept by the rule objects invert made, not by counting rules: a rule with
    `reverse none` writes nothing, the rules after it still point at their own lines."""
    forward = parse_spec(text="mapspec 1\na.{i:int} -> b.{i}\nc -> d\n    reverse none\ne -> f\n", name="f.map")
    inverse = invert_spec(forward)
    assert [inverse.forward_rule(r.span).line for r in inverse.spec.rules] == [2, 5]


# ------------------------------------------------------------------ generated specs

KEYWORDS = sorted(write.KEYWORDS)
names_ = st.from_regex(r"[a-z_][a-z0-9_]{0,6}", fullmatch=True).filter(lambda n: n not in write.KEYWORDS)
text_ = st.text(st.characters(blacklist_categories=("Cs", "Cc", "Zl", "Zp")), min_size=1, max_size=8)
key_text = st.one_of(text_, st.sampled_from(KEYWORDS + ["a->b", "x-", "->", '"', "\\", "{x}", "*", "a b"]))
alternatives = st.lists(st.from_regex(r"[A-Za-z0-9_./()\-]{1,5}", fullmatch=True), min_size=1, max_size=3,
                        unique=True).filter(lambda a: a != ["int"])


decimals = st.from_regex(r"[0-9]{1,4}\.[0-9]{0,3}([eE][-+]?[0-9]{1,2})?|[0-9]{1,3}[eE][-+]?[0-9]{1,2}",
                         fullmatch=True).map(lambda t: Dec(value=float(t), text=t))


def exprs(table_names=names_, values: bool = False):
    """Expressions; `values`: as a param's default, a let or a meta entry has them, with
    decimals and typed calls (`float32(x)`) too."""
    leaves = st.one_of(names_.map(lambda n: Ref(name=n, span=SPAN)),
                       st.integers(0, 10**6).map(lambda v: Num(value=v)), *([decimals] if values else []))

    def grow(inner):
        return st.one_of(
            st.builds(lambda op, a, b: BinOp(op=op, left=a, right=b), st.sampled_from(["+", "-", "*", "//", "%"]),
                      inner, inner),
            inner.filter(lambda e: not isinstance(e, Num)).map(lambda e: Neg(operand=e)),
            st.builds(lambda t, k: Lookup(table=t, key=k, span=SPAN), table_names, inner),
            *([st.builds(lambda f, a: Call(func=f, arg=a, span=SPAN), names_, inner)] if values else []))

    return st.recursive(leaves, grow, max_leaves=6)


@st.composite
def captures(draw, name):
    kind = draw(st.sampled_from(["segment", "int", "alt", "table", "multi", "any", "anymulti"]))
    if kind == "any":
        return Capture(name=None, type="segment", span=SPAN)
    if kind == "anymulti":
        return Capture(name=None, type="multi", span=SPAN)
    condition = None
    if kind == "int" and draw(st.booleans()):  # `{a:int>0}`
        condition = (draw(st.sampled_from(["==", "!=", "<", "<=", ">", ">="])), draw(st.integers(0, 99)))
    return Capture(name=name, type=kind, span=SPAN, alternatives=tuple(draw(alternatives)) if kind == "alt" else (),
                   table=draw(names_) if kind == "table" else None, condition=condition)


@st.composite
def patterns(draw):
    n = draw(st.integers(0, 3))
    caps = draw(st.lists(names_, min_size=n, max_size=n, unique=True))
    parts = [Lit(text=draw(key_text))]
    for name in caps:
        parts += [draw(captures(name)), Lit(text=draw(key_text))]
    if draw(st.booleans()) and len(parts) > 1:
        parts = parts[1:]  # starting with a capture
    return Pattern(parts=tuple(parts), text="", span=SPAN)


@st.composite
def templates(draw):
    parts = [Lit(text=draw(key_text))]
    for _ in range(draw(st.integers(0, 3))):
        sub = draw(st.one_of(st.builds(lambda e, n: Subst(expr=e, name=n, span=SPAN), exprs(), st.one_of(st.none(), names_)),
                             captures(draw(names_)).filter(lambda c: c.name is not None and c.type != "table"
                                                           and c.condition is None)
                             .map(lambda c: Fanout(capture=c))))
        parts += [sub, Lit(text=draw(key_text))]
    return Template(parts=tuple(parts), text="", span=SPAN)


def values(depth=2):
    calc = exprs().filter(lambda e: isinstance(e, (BinOp, Neg))).map(lambda e: Calc(expr=e, span=SPAN))
    leaf = st.one_of(st.integers(-10**6, 10**6), names_.map(lambda n: Word(name=n)), text_.map(lambda t: Text(value=t)),
                     calc)
    if depth == 0:
        return leaf
    return st.one_of(leaf, st.builds(lambda items, app: Tuple(items=tuple(items), append=app),
                                     st.lists(values(depth - 1), max_size=3), st.booleans()))


actions = st.builds(lambda n, a, k: Action(name=n, args=tuple(a), kwargs=tuple(k), span=SPAN), names_,
                    st.lists(values(), max_size=3), st.lists(st.tuples(names_, values()), max_size=2))
EVERYTHING = Pattern(parts=(Capture(name=None, type="multi", span=SPAN),), text="**", span=SPAN)


@st.composite
def rules(draw):
    kind = draw(st.sampled_from(["rename", "copy", "drop", "keep", "otherwise", "otherwise keep", "otherwise drop"]))
    optional = draw(st.booleans()) if kind in ("rename", "drop", "keep") else False
    acts = tuple(draw(st.lists(actions, max_size=3)))
    if kind == "otherwise keep":
        return KeepRule(patterns=(EVERYTHING,), actions=acts, span=SPAN, otherwise=True)
    if kind == "otherwise drop":
        return DropRule(patterns=(EVERYTHING,), span=SPAN, otherwise=True, reverse_none=draw(st.booleans()))
    if kind in ("drop", "keep"):
        pats = tuple(draw(st.lists(patterns(), min_size=1, max_size=2)))
        if kind == "drop":
            return DropRule(patterns=pats, span=SPAN, optional=optional, reverse_none=draw(st.booleans()))
        return KeepRule(patterns=pats, actions=acts, span=SPAN, optional=optional)
    copy = kind == "copy"
    sources = tuple(draw(st.lists(patterns(), min_size=1, max_size=1 if copy else 2)))
    reverse = None
    if not copy and draw(st.booleans()):
        reverse = draw(st.one_of(st.just(Reverse(target=None, span=SPAN)),
                                 st.builds(lambda t, a, w: Reverse(target=t, actions=a, where=w, span=SPAN), templates(),
                                           st.one_of(st.none(), st.lists(actions, min_size=1, max_size=2)
                                                     .map(tuple)), st.one_of(st.none(), templates()))))
    where = None if copy else draw(st.one_of(st.none(), templates()))
    return RenameRule(sources=sources, target=draw(templates()), actions=acts, reverse=reverse, where=where, span=SPAN,
                      is_copy=copy, if_absent=copy and draw(st.booleans()), otherwise=kind == "otherwise",
                      optional=optional)


tables = st.builds(lambda n, e: Table(name=n, entries=tuple(TableEntry(key=k, value=v, span=SPAN) for k, v in e),
                                      span=SPAN), names_, st.lists(st.tuples(key_text, key_text), max_size=4))
NONE = Ref(name="none", span=SPAN)  # `= none`: an optional parameter
definitions = st.one_of(
    st.builds(lambda n, t, keys, length, d: Param(name=n, type=t, config_key=keys[0] if keys else None,
                                                  more_keys=() if length else tuple(keys[1:]),
                                                  config_len=bool(keys) and length, default=d, span=SPAN),
              names_, st.sampled_from(["int", "str", "float", "bool"]), st.lists(text_, max_size=3), st.booleans(),
              st.one_of(st.none(), text_, exprs(values=True), st.just(NONE))),
    st.builds(lambda n, e: Let(name=n, expr=e, span=SPAN), names_, exprs(values=True)))
assertions = st.builds(lambda a, op, b, m: Assertion(left=a, op=op, right=b, message=m, span=SPAN), exprs(),
                       st.sampled_from(["==", "!=", "<", "<=", ">", ">="]), exprs(), st.one_of(st.none(), text_))
# `write`/`ranks ... under` entries: a plain key, and a template kept as written
entry_values = st.from_regex(r"[a-z0-9_]{1,6}|\{[a-z]{1,4}\}", fullmatch=True)
entries = st.lists(st.builds(lambda k, v: TableEntry(key=k, value=v, span=SPAN), key_text, entry_values), max_size=3)
file_names = st.from_regex(r"[a-z][a-z0-9_]{0,6}(\.\{rank:0[1-4]\}|\.\{rank:02 of [a-z]{1,4}\}|\.\{r\})?\.[a-z]{2,4}",
                           fullmatch=True)
ranks = st.one_of(st.just({}), st.builds(
    lambda side, names, under, rows: {"ranks_side": side, "ranks": tuple(names), "ranks_under": under,
                                      "ranks_entries": tuple(rows) if under else ()},
    st.sampled_from(["source", "target"]), st.lists(file_names, min_size=1, max_size=2),
    st.one_of(st.none(), names_), entries))
headers = st.builds(lambda fw, sel, r: Header(source=fw[0] if fw else None, target=fw[1] if fw else None, select=sel,
                                              **r),
                    st.one_of(st.none(), st.tuples(names_, names_)),
                    st.one_of(st.none(), st.from_regex(r"[a-z][a-z0-9_.]{0,8}", fullmatch=True)), ranks)
meta = st.one_of(
    st.builds(lambda k, v: MetaEntry(key=k, value=v, span=SPAN), key_text, st.one_of(text_, exprs(values=True))),
    st.builds(lambda p, a: MetaFrom(provider=p, args=tuple(a), span=SPAN), names_, st.lists(text_, max_size=2)))
writes = st.one_of(
    st.builds(lambda p, e: WriteFile(path=p, entries=tuple(e), span=SPAN), file_names, entries),
    st.builds(lambda p, t: WriteFile(path=p, text=t, span=SPAN), file_names, st.text(max_size=12)))
specs = st.builds(lambda h, d, a, m, w, t, r: Spec(file="<generated>", header=h, definitions=tuple(d),
                                                    assertions=tuple(a), meta=tuple(m), writes=tuple(w),
                                                    tables=tuple(t), rules=tuple(r)),
                  headers, st.lists(definitions, max_size=2), st.lists(assertions, max_size=2),
                  st.lists(meta, max_size=2), st.lists(writes, max_size=2),
                  st.lists(tables, max_size=2), st.lists(rules(), min_size=1, max_size=4))


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(specs)
def test_generated_specs_written_and_parsed_back_are_the_same(spec):
    assert meaning(reparsed(spec)) == meaning(spec)


@settings(max_examples=200, deadline=None)
@given(exprs())
def test_walk_fold_and_transform_agree_on_every_expression(e):
    nodes = [n for n, _ in walk(e)]
    assert fold(e, lambda n, kids: 1 + sum(kids)) == len(nodes)
    assert names(e) == {n.name for n in nodes if isinstance(n, Ref)}
    assert transform(e, lambda n: n) is e  # nothing changed: nothing copied
    renamed = transform(e, lambda n: Ref(name=n.name + "_x", span=SPAN) if isinstance(n, Ref) else n)
    assert names(renamed) == {n + "_x" for n in names(e)}
    text = write.expr(e, compact=True)
    again = parse_spec(text=f"mapspec 1\na -> b.{{{text}}}\n").rules[0].target.parts[1].expr
    assert meaning(again) == meaning(e)


def test_fmt_writes_keys_through_the_writer_quoting_only_what_needs_it():
    messy = 'mapspec 1\n"abc".{i:int} -> "a b".{i}\n"drop" -> "x->y"\ntable t {\n  "k" = "v w"\n}\n'
    tidy = format_text(messy)
    assert tidy == 'mapspec 1\nabc.{i:int} -> "a b".{i}\n"drop" -> "x->y"\ntable t {\n  k = "v w"\n}\n'
    assert meaning(parse_spec(text=tidy)) == meaning(parse_spec(text=messy))


def test_fmt_counts_lines_as_the_parser_does_whatever_a_quoted_key_holds():
    """Regression: fmt split the text with str.splitlines, which also ends a line at U+0085
    or U+2028; a quoted key holding one moved the comments and blank lines after it."""
    messy = 'mapspec 1\n"a\x85b" -> "c\u2028d"\n\n\n# about e\ne -> f  # f\n'
    tidy = format_text(messy)
    assert tidy == 'mapspec 1\n"a\x85b" -> "c\u2028d"\n\n# about e\ne -> f  # f\n'
    assert format_text(tidy) == tidy
