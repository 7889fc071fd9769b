"""Actions over rank-sharded checkpoints: a tensor every rank holds the same copy of.

`replicated(over=rank)` merges the copies: it takes one and checks the others equal to it bit
for bit (a copy that differs is `ReplicaMismatch`, which the executor reports naming both
files). `replicate(n, into=rank)` is its inverse: n identical outputs, one per rank."""

from __future__ import annotations

from ..core.lazy import numpy as np
from ..errors import PlanError as ShapeError, SpecError
from ..lang.rules import Action
from .args import bind, capture_name, format_shape, integer
from .base import InverseContext, Params, PlannedAction, Typed, make, planned
from .merge import MAX_PIECES, Merge, Split


class ReplicaMismatch(Exception):
    """replicated(): input `index` of the merge differs from input 0."""

    def __init__(self, index: int):
        super().__init__(index)
        self.index = index


class Replicated(Merge):
    name = "replicated"

    def normalize(self, action: Action) -> Params:
        bound = bind(action, ["over"], 0)
        return {"over": capture_name(action, bound, "over")}

    def shape(self, shapes, p: Params, action: Action):
        first = shapes[0]
        for s in shapes[1:]:
            if s != first:
                raise ShapeError(f"replicated(): the copies have shapes {format_shape(first)} and {format_shape(s)}",
                                 action.span)
        return first, {}

    def run(self, p: Params, arrays: list) -> list:
        first = np.ascontiguousarray(arrays[0])
        raw = first.reshape(-1).view(np.uint8)
        for i, a in enumerate(arrays[1:], 1):
            if not np.array_equal(raw, np.ascontiguousarray(a).reshape(-1).view(np.uint8)):
                raise ReplicaMismatch(i)
        return [first]

    def inverse(self, p: Params, inputs: list[Typed]) -> list[PlannedAction]:
        return [planned("replicate", [{"copies": len(inputs)}], inputs)]

    def spec_inverse(self, p: Params, ctx: InverseContext) -> list[Action] | None:
        return None  # how many ranks: the forward checkpoint says

    def written(self, pa: PlannedAction, axis: str | None, span=None) -> Action:
        return make("replicated", over=axis, span=span)

    def display(self, pa: PlannedAction, index: bool = True) -> str:
        return f"replicated(over={pa.params['over']})" if "over" in pa.params else "replicated()"


class Replicate(Split):
    name = "replicate"
    joined_by = "replicated"

    def normalize(self, action: Action) -> Params:
        bound = bind(action, ["copies", "into"], 1)
        copies = integer(action, bound["copies"], "copies")
        if not 0 < copies <= MAX_PIECES:
            raise SpecError(f"replicate(): copies must be 1..{MAX_PIECES:,}, got {copies:,}", action.span)
        return {"copies": copies, "into": capture_name(action, bound, "into")}

    def count(self, p: Params) -> int | None:
        return p["copies"]

    def infer(self, p: Params, inputs: list[Typed], action: Action):
        (t,) = inputs
        return [Typed(tuple(t.shape), t.dtype)] * p["copies"], {"copies": p["copies"]}

    def piece(self, resolved: Params, index: int) -> Params:
        return {"copies": resolved["copies"], "index": index}

    def run(self, p: Params, arrays: list) -> list:
        (array,) = arrays
        return [array] if "index" in p else [array] * p["copies"]

    def inverse(self, p: Params, inputs: list[Typed]) -> list[PlannedAction] | None:
        if "index" in p:
            return None
        return [planned("replicated", [{}], inputs[:1])]

    def spec_inverse(self, p: Params, ctx: InverseContext) -> list[Action]:
        return [make("replicated", over=p.get("into") or ctx.into, span=ctx.span)]

    def written(self, pa: PlannedAction, axis: str | None, span=None) -> Action:
        return make("replicate", pa.params["copies"], into=axis, span=span)

    def display(self, pa: PlannedAction, index: bool = True) -> str:
        if "index" in pa.params and index:
            return f"replicate[{pa.params['index']}]"
        return f"replicate({pa.params['copies']})"
