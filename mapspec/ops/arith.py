"""add(): every value plus an integer constant, in the tensor's own float dtype.

Gemma's RMSNorm multiplies by (1 + w) where llama.cpp's multiplies by w, so llama.cpp's
converter stores Gemma's norm weights as w + 1: `cast(float32) then add(1)`. The inverse is
add(-N): exact wherever w + N was (norm weights near 1 in bfloat16 or float32: all of them in
practice); `verify` checks it value by value. bfloat16 (carried as bits) is refused: cast first."""

from __future__ import annotations

from ..errors import PlanError as ShapeError
from ..lang.rules import Action
from .args import bind, integer
from .base import InverseContext, Params, PlannedAction, Shape, Typed, Unary, make, planned

FLOATS = ("float32", "float64", "float16")


class Add(Unary):
    name = "add"

    def normalize(self, action: Action) -> Params:
        return {"value": integer(action, bind(action, ["value"], 1)["value"], "the value added")}

    def infer(self, p: Params, inputs: list[Typed], action: Action) -> tuple[list[Typed], Params]:
        (t,) = inputs
        if t.dtype not in FLOATS:
            raise ShapeError(f"add() works on {', '.join(FLOATS)} tensors, not {t.dtype} (cast first)", action.span)
        return [Typed(tuple(t.shape), t.dtype)], {"value": p["value"]}

    def apply(self, p: Params, array):
        return array + array.dtype.type(p["value"])

    def inverse(self, p: Params, inputs: list[Typed]) -> list[PlannedAction]:
        return [planned("add", [{"value": -p["value"]}], inputs)]

    def spec_inverse(self, p: Params, ctx: InverseContext) -> list[Action]:
        return [make("add", -p["value"], span=ctx.span)]

    def shape_after(self, p: Params, known: Shape | None) -> Shape | None:
        return known

    def written(self, pa: PlannedAction, axis: str | None, span=None) -> Action:
        return make("add", pa.params["value"], span=span)

    def display(self, pa: PlannedAction, index: bool = True) -> str:
        return f"add({pa.params['value']})"
