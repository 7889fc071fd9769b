"""cast(): values to another dtype. Its inverse casts back, where the cast is exact
(`dtypes.exact`: every value of the first dtype is one of the second)."""

from __future__ import annotations

from ..core import dtypes
from ..errors import SpecError
from ..lang.rules import Action, Word
from .args import bind, show
from .base import InverseContext, Params, PlannedAction, Shape, Typed, Unary, make, planned


class Cast(Unary):
    name = "cast"
    needs = "the dtype it casts from"
    dtype_only = True

    def normalize(self, action: Action) -> Params:
        value = bind(action, ["dtype"], 1)["dtype"]
        name = dtypes.canonical(value.name) if isinstance(value, Word) else None
        if name is None:
            raise SpecError(f"cast(): unknown dtype {show(value)} (known: {', '.join(dtypes.NAMES)})", action.span)
        return {"dtype": name}

    def infer(self, p: Params, inputs: list[Typed], action: Action) -> tuple[list[Typed], Params]:
        (t,) = inputs
        return [Typed(tuple(t.shape), p["dtype"])], {"from": t.dtype, "to": p["dtype"]}

    def apply(self, p: Params, array):
        return dtypes.cast(array, p["from"], p["to"])

    def inverse(self, p: Params, inputs: list[Typed]) -> list[PlannedAction] | None:
        if not dtypes.exact(p["from"], p["to"]):
            return None
        return self._back(p, inputs)

    def _back(self, p: Params, inputs: list[Typed]) -> list[PlannedAction]:
        return [planned("cast", [{"from": p["to"], "to": p["from"]}], [Typed(t.shape, p["from"]) for t in inputs])]

    def loss(self, pa: PlannedAction) -> tuple[str, list[PlannedAction]] | None:
        p = pa.params
        return (f"cast({p['to']}) of {p['from']} tensors loses precision; the inverse cannot restore them",
                self._back(p, pa.outputs))

    def spec_inverse(self, p: Params, ctx: InverseContext) -> None:
        return None  # the dtype it came from: the plan says

    def shape_after(self, p: Params, known: Shape | None) -> Shape | None:
        return known

    def written(self, pa: PlannedAction, axis: str | None, span=None) -> Action:
        return make("cast", pa.params["to"], span=span)

    def display(self, pa: PlannedAction, index: bool = True) -> str:
        return f"cast({pa.params['to']})"
