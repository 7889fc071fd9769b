"""The combined matcher agrees with matching every pattern one by one."""

import re

from hypothesis import given, settings, strategies as st

from mapspec.errors import Span
from mapspec.compile.matcher import Ambiguous, Entry, Matcher
from mapspec.lang.rules import Capture, Lit, Pattern

SPAN = Span("<t>", 1, 1, 1, 2)
words = st.sampled_from(["a", "b", "ab", "conv", "bn", "0", "1", "12", "x-y", "aux:"])


@st.composite
def patterns(draw):
    parts = []
    for i in range(draw(st.integers(1, 4))):
        if i:
            parts.append(Lit(text=draw(st.sampled_from([".", "_", "."]))))
        kind = draw(st.sampled_from(["lit", "lit", "seg", "int", "alt", "multi", "star"]))
        if kind == "lit":
            parts.append(Lit(text=draw(words)))
        elif kind == "seg":
            parts.append(Capture(name=f"c{i}", type="segment", span=SPAN))
        elif kind == "int":
            parts.append(Capture(name=f"c{i}", type="int", span=SPAN))
        elif kind == "alt":
            alts = tuple(draw(st.lists(words, min_size=1, max_size=3, unique=True)))
            parts.append(Capture(name=f"c{i}", type="alt", alternatives=alts, span=SPAN))
        elif kind == "multi":
            parts.append(Capture(name=None, type="multi", span=SPAN))
        else:
            parts.append(Capture(name=None, type="segment", span=SPAN))
    merged = []
    for p in parts:
        if merged and isinstance(p, Lit) and isinstance(merged[-1], Lit):
            merged[-1] = Lit(text=merged[-1].text + p.text)
        else:
            merged.append(p)
    return Pattern(parts=tuple(merged), text="p", span=SPAN)


keys = st.lists(st.sampled_from(["a", "b", "ab", "conv", "bn", "0", "1", "12", "x-y", "aux:", "q"]),
                min_size=1, max_size=6).map(lambda ws: "".join(
                    w + s for w, s in zip(ws, [".", "_", ".", "", ".", "_"])).rstrip("._"))


@settings(max_examples=300, deadline=None)
@given(st.lists(patterns(), min_size=1, max_size=8), st.lists(keys, min_size=1, max_size=10))
def test_matcher_agrees_with_naive(pats, ks):
    entries = [Entry(i, 0, p) for i, p in enumerate(pats)]
    m = Matcher(entries, {})
    for key in ks:
        naive = m.naive_match(key)
        rules = sorted({e.rule for e in naive})
        if len(rules) > 1:
            try:
                m.match(key)
            except Ambiguous as amb:
                assert {amb.first.rule, amb.second.rule} <= set(rules)
                assert amb.first.rule != amb.second.rule
            else:
                raise AssertionError(f"{key!r} matched by rules {rules}, not reported")
        elif rules:
            hit = m.match(key)
            assert hit is not None and hit.entry.rule == rules[0]
            rx = m._regex(m.entries.index(hit.entry))
            assert hit.captures == rx.fullmatch(key).groupdict()
        else:
            assert m.match(key) is None


def test_fixed_shape_patterns_are_looked_up_not_tried_one_by_one():
    pats = [Pattern(parts=(Lit(text=f"model.layers.0.attn_{i}."), Capture(name="p", type="alt", alternatives=("w", "b"),
                                                                         span=SPAN)), text="p", span=SPAN)
            for i in range(2000)]
    m = Matcher([Entry(i, 0, p) for i, p in enumerate(pats)], {})
    assert m._forward is None  # no combined regex: every pattern has a fixed number of segments
    assert m.match("model.layers.0.attn_1717.b") == (m.entries[1717], {"p": "b"})
    assert not m._compiled  # whole-segment captures are read off the key's segments, no regex
    assert m.match("model.layers.0.attn_1717.x") is None


def test_captures_sharing_a_segment_compile_only_the_candidates_regex():
    pats = [Pattern(parts=(Lit(text=f"conv{i}_"), Capture(name="s", type="int", span=SPAN), Lit(text=".w")),
                    text="p", span=SPAN) for i in range(300)]
    m = Matcher([Entry(i, 0, p) for i, p in enumerate(pats)], {})
    assert m.match("conv12_7.w") == (m.entries[12], {"s": "7"})
    assert m.match("conv12_x.w") is None and m.match("conv12_\u0663.w") is None  # an Arabic-Indic 3 is no [0-9]
    assert list(m._compiled) == [12]


def test_double_star_patterns_share_one_regex_with_their_prefixes():
    pats = [Pattern(parts=(Lit(text=f"model.layers.0.attn_{i}."), Capture(name=None, type="multi", span=SPAN)),
                    text="p", span=SPAN) for i in range(50)]
    m = Matcher([Entry(i, 0, p) for i, p in enumerate(pats)], {})
    assert m._forward.pattern.count(re.escape("model.layers.0.attn_")) == 1
    assert m.match("model.layers.0.attn_17.weight.x").entry.rule == 17


def test_two_alternatives_of_one_rule_are_not_ambiguous():
    a = Pattern(parts=(Lit(text="fc"), Capture(name=None, type="segment", span=SPAN)), text="p", span=SPAN)
    b = Pattern(parts=(Lit(text="fc_weight"),), text="p", span=SPAN)
    m = Matcher([Entry(0, 0, a), Entry(0, 1, b)], {})
    assert m.match("fc_weight").entry.rule == 0


def test_leading_double_star_dot_also_matches_no_segments():
    from mapspec import compile_spec, parse_spec, TensorInfo

    spec = parse_spec(text="drop **.anchors\nkeep a.{x:**}.b\n", name="t.map")
    keys = {k: TensorInfo((1,), "float32") for k in ["anchors", "m.24.anchors", "a.q.b"]}
    plan = compile_spec(spec, keys)
    assert [k for k, _ in plan.dropped] == ["anchors", "m.24.anchors"]
    assert compile_spec(parse_spec(text="keep a.**\n", name="t.map"), {"a.x": keys["a.q.b"]}).steps[0].output == "a.x"
