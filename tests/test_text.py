"""The one spec writer (`mapspec.lang.text`): whatever it writes parses back to the same rule
objects, and is already formatted. Proven over every shipped spec, every golden spec and
golden inverse in tests/data, and generated specs with quoted keys, tables, arithmetic and
actions of every argument kind (issue 16)."""

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from mapspec import invert_spec, parse_spec
from mapspec.errors import Span
from mapspec.lang import text as write
from mapspec.lang.exprs import fold, names, transform, walk
from mapspec.lang.formatter import format_text
from mapspec.lang.rules import (Action, Assertion, BinOp, Calc, Capture, DropRule, Fanout, Header, KeepRule, Let, Lit,
                                Lookup, Neg, Num, Param, Pattern, Ref, RenameRule, Reverse, Spec, Subst, Table,
                                TableEntry, Template, Text, Tuple, Word)

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


def exprs(table_names=names_):
    leaves = st.one_of(names_.map(lambda n: Ref(name=n, span=SPAN)),
                       st.integers(0, 10**6).map(lambda v: Num(value=v)))

    def grow(inner):
        return st.one_of(
            st.builds(lambda op, a, b: BinOp(op=op, left=a, right=b), st.sampled_from(["+", "-", "*", "//", "%"]),
                      inner, inner),
            inner.filter(lambda e: not isinstance(e, Num)).map(lambda e: Neg(operand=e)),
            st.builds(lambda t, k: Lookup(table=t, key=k, span=SPAN), table_names, inner))

    return st.recursive(leaves, grow, max_leaves=6)


@st.composite
def captures(draw, name):
    kind = draw(st.sampled_from(["segment", "int", "alt", "table", "multi", "any", "anymulti"]))
    if kind == "any":
        return Capture(name=None, type="segment", span=SPAN)
    if kind == "anymulti":
        return Capture(name=None, type="multi", span=SPAN)
    return Capture(name=name, type=kind, span=SPAN, alternatives=tuple(draw(alternatives)) if kind == "alt" else (),
                   table=draw(names_) if kind == "table" else None)


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
        sub = draw(st.one_of(exprs().map(lambda e: Subst(expr=e, span=SPAN)),
                             captures(draw(names_)).filter(lambda c: c.name is not None and c.type != "table")
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
        return DropRule(patterns=(EVERYTHING,), span=SPAN, otherwise=True)
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
                                 st.builds(lambda t, a: Reverse(target=t, actions=a, span=SPAN), templates(),
                                           st.one_of(st.none(), st.lists(actions, min_size=1, max_size=2)
                                                     .map(tuple)))))
    return RenameRule(sources=sources, target=draw(templates()), actions=acts, reverse=reverse, span=SPAN,
                      is_copy=copy, if_absent=copy and draw(st.booleans()), otherwise=kind == "otherwise",
                      optional=optional)


tables = st.builds(lambda n, e: Table(name=n, entries=tuple(TableEntry(key=k, value=v, span=SPAN) for k, v in e),
                                      span=SPAN), names_, st.lists(st.tuples(key_text, key_text), max_size=4))
definitions = st.one_of(
    st.builds(lambda n, t, c, d: Param(name=n, type=t, config_key=c, default=d, span=SPAN), names_,
              st.sampled_from(["int", "str"]), st.one_of(st.none(), text_), st.one_of(st.none(), text_, exprs())),
    st.builds(lambda n, e: Let(name=n, expr=e, span=SPAN), names_, exprs()))
assertions = st.builds(lambda a, op, b, m: Assertion(left=a, op=op, right=b, message=m, span=SPAN), exprs(),
                       st.sampled_from(["==", "!=", "<", "<=", ">", ">="]), exprs(), st.one_of(st.none(), text_))
headers = st.builds(lambda fw, sel: Header(source=fw[0] if fw else None, target=fw[1] if fw else None, select=sel),
                    st.one_of(st.none(), st.tuples(names_, names_)),
                    st.one_of(st.none(), st.from_regex(r"[a-z][a-z0-9_.]{0,8}", fullmatch=True)))
specs = st.builds(lambda h, d, a, t, r: Spec(file="<generated>", header=h, definitions=tuple(d), assertions=tuple(a),
                                              tables=tuple(t), rules=tuple(r)),
                  headers, st.lists(definitions, max_size=2), st.lists(assertions, max_size=2),
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
