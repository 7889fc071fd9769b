"""The defined actions by name, and what the planner and executor do with any of them: look
one up, plan it on its own, run a planned one, invert it. Nothing here knows an action by
name; a new action is one `ActionDef` subclass passed to `register`."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterable, Iterator, Sequence

from ..lang.rules import Action
from .base import ActionDef, Params, PlannedAction, Rows, Shape, Typed, planned, unknown
from .arith import Add
from .cast import Cast
from .merge import Chunk, Concat, Split, Stack, Unstack
from .quant import Dequantize, Quantize
from .ranks import Replicate, Replicated
from .shape import Expect, Permute, Squeeze, Transpose, Unsqueeze, View

REGISTRY: dict[str, ActionDef] = {}


def register(definition: ActionDef) -> ActionDef:
    """Make an action known to specs by its name (refused if the name is taken)."""
    if definition.name in REGISTRY:
        raise ValueError(f"an action named '{definition.name}' is already defined")
    REGISTRY[definition.name] = definition
    return definition


@contextmanager
def registered(definition: ActionDef) -> Iterator[ActionDef]:
    """An action known for the duration of a `with` block (tests, extensions tried out)."""
    register(definition)
    try:
        yield definition
    finally:
        del REGISTRY[definition.name]


for _d in (View("view"), View("reshape"), Transpose(), Permute("permute"), Squeeze("squeeze"),
           Unsqueeze("unsqueeze"), Cast(), Add(), Expect("expect"), Concat(), Stack(), Split("split"), Chunk(), Unstack(),
           Dequantize(), Quantize(), Replicated(), Replicate()):
    register(_d)


def lookup(action: Action) -> ActionDef:
    try:
        return REGISTRY[action.name]
    except KeyError:
        raise unknown(action, REGISTRY) from None


def normalize(action: Action) -> Params:
    """Static check of one action's arguments; returns its parameters as plain data."""
    return lookup(action).normalize(action)


def typed(shapes: Sequence[Shape], dtypes: str | Sequence[str]) -> list[Typed]:
    """Tensors from their shapes and one dtype for all, or one each."""
    kinds = [dtypes] * len(shapes) if isinstance(dtypes, str) else list(dtypes)
    return [Typed(tuple(s), d) for s, d in zip(shapes, kinds)]


def run(pa: PlannedAction, arrays: list) -> list:
    """Execute one planned action on a step's tensors."""
    d = REGISTRY[pa.name]
    if d.merges:
        groups = pa.groups if pa.groups is not None else (tuple(range(len(arrays))),)
    else:
        groups = tuple((i,) for i in range(len(arrays)))
    params = pa.each if pa.each is not None else (pa.params,) * len(groups)
    out = []
    for g, p in zip(groups, params):
        got = d.run(p, [arrays[i] for i in g])
        out.extend([got[p["index"]]] if "index" in p and len(got) > 1 else got)
    return out


def config_effect(pa: PlannedAction) -> tuple[dict, frozenset] | None:
    """(config keys set, keys removed) by one planned action, or None."""
    return REGISTRY[pa.name].config(dict(pa.params))


def rows(pa: PlannedAction, inputs: list[Typed]) -> Rows | None:
    """How `pa` works row by row on the tensors of a step (`ActionDef.rows`): only an action
    on one group of all of them, with the same arguments for each."""
    d = REGISTRY[pa.name]
    if pa.each is not None or (pa.groups is not None and tuple(pa.groups) != (tuple(range(len(inputs))),)):
        return None
    if not d.merges and len(inputs) != 1:
        return None
    return d.rows(dict(pa.params), inputs)


def passes_through(inputs: Sequence[Typed], actions: Iterable[PlannedAction]) -> bool:
    """Do `actions` leave the bytes of a step's one input as they are (`ActionDef.unchanged`,
    action by action)? Then the step is a copy of its input."""
    if len(inputs) != 1:
        return False
    before = Typed(tuple(inputs[0].shape), inputs[0].dtype)
    for pa in actions:
        after = pa.outputs
        if len(after) != 1 or not REGISTRY[pa.name].unchanged(dict(pa.params), before, after[0]):
            return False
        before = after[0]
    return True


def run_all(actions: Iterable[PlannedAction], arrays: list) -> list:
    for pa in actions:
        arrays = run(pa, arrays)
    return arrays


def inverse(pa: PlannedAction, in_shapes: Sequence[Shape], in_dtypes: str | Sequence[str]) -> list[PlannedAction] | None:
    """The planned actions that undo `pa` given what went into it (a dtype for all inputs, or
    one each); None if it loses information (a narrowing cast, one piece of a split)."""
    d = REGISTRY[pa.name]
    inputs = typed(in_shapes, in_dtypes)
    if pa.each is None:
        return d.inverse(dict(pa.params), inputs)
    parts = [d.inverse(dict(p), [t]) for p, t in zip(pa.each, inputs)]
    if any(p is None for p in parts):
        return None
    if not parts[0]:
        return []
    return [planned(parts[0][0].name, [p[0].params for p in parts], [o for p in parts for o in p[0].outputs])]


def resolve(action: Action, in_shapes: Sequence[Shape], in_dtypes: str | Sequence[str]) -> PlannedAction:
    """Plan one action on its own over given tensors (merges join them all, splits give
    all their pieces)."""
    d = lookup(action)
    p = normalize(action)
    inputs = typed(in_shapes, in_dtypes)
    groups = [inputs] if d.merges else [[t] for t in inputs]
    results = [d.outputs(p, g, action) for g in groups]
    if d.splits:
        return planned(action.name, [results[0][1]], [o for outs, _ in results for o in outs])
    return planned(action.name, [res for _, res in results], [outs[0] for outs, _ in results])
