"""The key scanner (`mapspec.lang.keyscan`) builds exactly what the parser builds from lark's tree,
or leaves the key to the parser: a spec parses to the same `Spec` (every span included) and
fails with the same error either way."""

from pathlib import Path

import pytest
from hypothesis import given, settings, strategies as st

from mapspec import parse_spec

from mapspec.lang import keyscan
from mapspec.errors import SpecError

ROOT = Path(__file__).resolve().parent.parent
TABLE = "table tab {\n  a = b\n  c = d\n}\n"


def parse_both(text: str, name: str = "t.map", monkeypatch=None):
    """(result with the scanner, result with lark alone): a Spec or the error's rendering."""
    def run():
        try:
            return parse_spec(text=text, name=name)
        except SpecError as exc:
            return f"{type(exc).__name__}: {exc.render()}"
    fast = run()
    with monkeypatch.context() as m:
        m.setattr(keyscan, "pattern_parts", lambda *a: None)
        m.setattr(keyscan, "template_parts", lambda *a: None)
        slow = run()
    return fast, slow


def test_the_scanner_reads_the_common_shapes():
    """Not a fallback in disguise: the shapes it claims are answered without lark."""
    for text in ["model.layers.{i:int}.{p:weight|bias}", "a.*.b.**", "{x:*}.{y:**}", "w.{t in tab}", "a-b:(c)"]:
        assert keyscan.pattern_parts(text, "f", 1, 1) is not None, text
    for text in ["net.{i+1}.{p}", "x.{k:q|k|v}.{n:int}", "y.{i//2}.{i%3}.{i*4}.{i-1}"]:
        assert keyscan.template_parts(text, "f", 1, 1) is not None, text
    for text in ['"quoted".a', "{ i }", "{x:a|a}", "{in}", "a b"]:
        assert keyscan.pattern_parts(text, "f", 1, 1) is None, text
    for text in ["{i+1+2}", "{(i)}", "{-i}", "{t[i]}", "{x:*}", "a*"]:
        assert keyscan.template_parts(text, "f", 1, 1) is None, text


@pytest.mark.parametrize("path", sorted(p for p in ROOT.rglob("*.map") if ".git" not in p.parts),
                         ids=lambda p: str(p.relative_to(ROOT)))
def test_every_spec_in_the_repository_parses_the_same(path, monkeypatch):
    fast, slow = parse_both(path.read_text("utf-8"), str(path), monkeypatch)
    assert fast == slow


PIECES = ["a", "b.", ".", "0", "x_1", "-", ":", "(", ")", "*", "**", "{i}", "{i:int}", "{p:weight|bias}",
          "{p:a|a}", "{x:*}", "{x:**}", "{t in tab}", "{t in nope}", "{in}", "{ i }", '"q.r"', "{i+1}",
          "{i-2}", "{i//2}", "{i%3}", "{i*4}", "{in+1}", "{i+1+2}", "{k:int}", "{-i}", "{x:int|int}",
          "{i+9999999999999999}", "{i+999999999999999}", "{k:q|k|v}", "{", "}", "|", "{i:}", "{1}", "{t[i]}",
          "{p}", "{x}", "{i+01}", "{x:a|b.c}"]
COMMON = ["layers.", ".", "{i:int}", "{i}", "{p:weight|bias}", "{i+1}", "{p}", "{k:q|k|v}", "*", "weight"]
keys = st.lists(st.sampled_from(PIECES) | st.sampled_from(COMMON) | st.text("ab.{}:|*+-/%0 _in\"", max_size=4),
                min_size=1, max_size=6).map("".join)


@settings(max_examples=400, deadline=None)
@given(keys, keys, st.sampled_from(["->", "drop", "keep", "copy", "entry"]))
def test_any_key_parses_the_same_with_or_without_the_scanner(source, target, how):
    # (`monkeypatch` cannot be a fixture of a hypothesis test: one context per example)
    statement = {"->": f"{source} -> {target}", "drop": f"drop {source} | {target}",
                 "keep": f"keep {source}", "copy": f"copy {source} -> {target}",
                 "entry": f"table e {{\n  {source} = {target}\n}}"}[how]
    with pytest.MonkeyPatch.context() as mp:
        fast, slow = parse_both(f"mapspec 1\n{TABLE}{statement}\n", monkeypatch=mp)
    assert fast == slow
