"""The rule graph's nodes are built without pydantic's validation (`rules.Node`: it cost 30 ms
of every run); these tests hold the builders to the declared types instead: every node the
parser and the inverter make for the shipped specs is exactly what validating it would give,
with no coercion (a list where a tuple is declared would break hashing and equality)."""

from pathlib import Path

import pytest

from mapspec import MapspecError, parse_spec
from mapspec.lang import rules
from mapspec.tools.invert import invert_spec

SPECS = sorted(p for p in (Path(__file__).resolve().parent.parent / "specs").rglob("*.map"))


def nodes(value):
    """Every node reachable from `value`, depth first."""
    if isinstance(value, rules.Node):
        yield value
        for field in type(value).model_fields:
            yield from nodes(getattr(value, field))
    elif isinstance(value, (tuple, list)):
        for item in value:
            yield from nodes(item)


def assert_typed(spec: rules.Spec) -> int:
    seen = 0
    for node in nodes(spec):
        validated = type(node).model_validate(dict(node.__dict__))
        assert validated == node, f"{type(node).__name__} needs coercion: {node!r}"
        for field in type(node).model_fields:
            assert type(getattr(validated, field)) is type(getattr(node, field)), (type(node).__name__, field)
        seen += 1
    return seen


@pytest.mark.parametrize("path", SPECS, ids=lambda p: p.name)
def test_the_parser_builds_nodes_of_the_declared_types(path):
    assert assert_typed(parse_spec(path)) > 3


@pytest.mark.parametrize("path", SPECS, ids=lambda p: p.name)
def test_the_inverter_builds_nodes_of_the_declared_types(path):
    try:
        inversion = invert_spec(path)
    except MapspecError:
        pytest.skip("inverts only against a forward checkpoint")
    assert assert_typed(inversion.spec) >= 2  # at least the spec and its header


def test_a_node_names_its_missing_and_unknown_fields():
    with pytest.raises(TypeError, match="Lit: missing field 'text'"):
        rules.Lit()
    with pytest.raises(TypeError, match="Lit: unknown field.*colour"):
        rules.Lit(text="a", colour="red")
    lit = rules.Lit(text="a")
    assert lit == rules.Lit(text="a") and hash(lit) == hash(rules.Lit(text="a")) and lit.kind == "lit"
    with pytest.raises(Exception):
        lit.text = "b"  # frozen
    assert lit.model_copy(update={"text": "b"}) == rules.Lit(text="b")
