"""Golden specs: each good spec's compiled plan, each bad spec's exact error.

A spec with parameters takes them from NAME.params.json beside it: {"params": {...}} as -p
gives them, and/or {"config": {...}} as a --config file holds them."""

import json
from pathlib import Path

import pytest

from mapspec import MapspecError, compile_spec, parse_spec

from mapspec.tools import present as render
from mapspec.compile.checks import check_spec
from mapspec.formats.selection import select

from conftest import DATA, golden, load_keys, without

SPECS = DATA / "specs"
OK = sorted(p.name for p in (SPECS / "ok").glob("*.map"))
BAD = sorted(p.name for p in (SPECS / "bad").glob("*.map"))


def ok_spec(name: str):
    """A good spec and the keys it is compiled against (run from SPECS)."""
    spec = parse_spec(Path("ok") / name)
    stored = load_keys(Path("ok") / name.replace(".map", ".keys.json"))
    return spec, {k: stored[v] for k, v in select(stored, spec.header.select, Path(name)).items()}


def given(path: Path) -> dict:
    """The parameters a golden spec is compiled with."""
    file = path.with_suffix("").with_suffix(".params.json")
    return json.loads(file.read_text()) if file.exists() else {}


@pytest.mark.parametrize("name", OK)
def test_ok_spec_compiles_to_golden_plan(name, monkeypatch):
    monkeypatch.chdir(SPECS)
    spec, keys = ok_spec(name)
    plan = compile_spec(spec, keys, **given(Path("ok") / name))
    golden(SPECS / "ok" / name.replace(".map", ".plan.json"), json.dumps(plan.to_json(), indent=2) + "\n")


@pytest.mark.parametrize("name", OK)
def test_ok_spec_reviews_as_golden_markdown(name, monkeypatch):
    """`mapspec explain --format markdown`: one row per rule, for a pull request."""
    monkeypatch.chdir(SPECS)
    spec, keys = ok_spec(name)
    review = render.explain(compile_spec(spec, keys, **given(Path("ok") / name)), spec, "markdown")
    golden(SPECS / "ok" / name.replace(".map", ".review.md"), review)


@pytest.mark.parametrize("name", BAD)
def test_bad_spec_gives_golden_error(name, monkeypatch):
    monkeypatch.chdir(SPECS)
    path = Path("bad") / name
    keys_file = path.with_suffix("").with_suffix(".keys.json")
    with pytest.raises(MapspecError) as info:
        spec = parse_spec(path)
        check_spec(spec, **given(path))
        if keys_file.exists():
            compile_spec(spec, load_keys(keys_file), **given(path))
    rendered = f"exit {info.value.exit_code}\n{info.value.render()}\n"
    golden(SPECS / "bad" / name.replace(".map", ".err"), rendered)


def test_every_bad_spec_has_a_reason_in_its_golden_error():
    for name in BAD:
        text = (SPECS / "bad" / name.replace(".map", ".err")).read_text()
        assert "error:" in text and len(text.splitlines()) >= 2, name


SHIPPED = sorted((DATA.parent.parent / "specs").glob("*.map"))


@pytest.mark.parametrize("path", [SPECS / "ok" / n for n in OK] + SHIPPED, ids=lambda p: p.name)
def test_the_rule_column_is_spec_text_that_parses_back_to_the_rule(path):
    """`explain` shows each rule as one line of spec text (parameters as written, `head_dim // 2`
    included; copies, catch-alls and keep with actions in their own syntax)."""
    spec = parse_spec(path)
    for rule in spec.rules:
        text = render.rule_text(rule)
        again = parse_spec(text="mapspec 1\n" + text + "\n", name="again.map").rules
        # (the `reverse` clause, `reverse none` under a drop too, is not shown: it does not change
        # what the rule does forward)
        hidden = ("span", "reverse", "reverse_none")
        same = without(again[0].model_dump(), hidden) == without(rule.model_dump(), hidden)
        assert len(again) == 1 and same, text
