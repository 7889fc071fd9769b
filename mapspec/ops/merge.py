"""Actions that join tensors (concat, stack: the members of one merge axis into one) and
split them (split, chunk, unstack: one tensor into pieces, one per value of a target capture)."""

from __future__ import annotations

from ..core.lazy import numpy as np
from ..errors import PlanError as ShapeError, SpecError
from ..lang.rules import Action, Tuple
from .args import axis, bind, capture_name, format_shape, integer, integers, optional_int, show
from .base import ActionDef, InverseContext, Params, PlannedAction, Rows, Shape, Typed, make, planned
from .blocks import keep_rows

MAX_PIECES = 65_536  # outputs of one split or chunk; each becomes a named tensor in the plan


class Merge(ActionDef):
    """Many tensors -> one, along `dim`; `over=` names the source capture it consumes."""

    kind = "merge"

    def normalize(self, action: Action) -> Params:
        bound = bind(action, ["dim", "over"], 0)
        return {"dim": optional_int(action, bound, "dim"), "over": capture_name(action, bound, "over")}

    def infer(self, p: Params, inputs: list[Typed], action: Action) -> tuple[list[Typed], Params]:
        kinds = {t.dtype for t in inputs}
        if len(kinds) > 1:
            over = f" over {{{p['over']}}}" if p.get("over") else ""
            raise ShapeError(f"{self.name}(){over} gets tensors of different dtypes ({', '.join(sorted(kinds))}); "
                             "cast() them to one dtype first, in this rule", action.span)
        shape, resolved = self.shape([tuple(t.shape) for t in inputs], p, action)
        outputs = [Typed(shape, inputs[0].dtype)]
        return outputs, keep_rows(self.name, inputs, outputs, resolved, action)

    def shape(self, shapes: list[Shape], p: Params, action: Action) -> tuple[Shape, Params]:
        raise NotImplementedError

    def rows(self, p: Params, inputs: list[Typed]) -> Rows | None:
        # Joined along a later dimension, output row r is made of row r of every input (a
        # merge of column-split ranks); joined along rows, it is not row by row.
        return Rows((1,) * len(inputs), 1) if p.get("dim") else None

    def written(self, pa: PlannedAction, axis: str | None, span=None) -> Action:
        return make(self.name, pa.params["dim"], over=axis, span=span)

    def display(self, pa: PlannedAction, index: bool = True) -> str:
        if "over" in pa.params:
            return f"{pa.name}({pa.params['dim']}, over={pa.params['over']})"
        return super().display(pa, index)


class Concat(Merge):
    name = "concat"
    needs = "where the pieces it joins begin and end"

    def shape(self, shapes: list[Shape], p: Params, action: Action) -> tuple[Shape, Params]:
        first = shapes[0]
        d = axis(p["dim"], len(first), "concat", action.span)
        for s in shapes[1:]:
            if len(s) != len(first) or any(a != b for i, (a, b) in enumerate(zip(s, first)) if i != d):
                raise ShapeError(f"concat({p['dim']}): shapes {format_shape(first)} and {format_shape(s)} differ "
                                 f"outside dim {d}", action.span)
        new = list(first)
        new[d] = sum(s[d] for s in shapes)
        return tuple(new), {"dim": d}

    def run(self, p: Params, arrays: list) -> list:
        return [np.concatenate(arrays, axis=p["dim"])]

    def inverse(self, p: Params, inputs: list[Typed]) -> list[PlannedAction]:
        d = p["dim"]
        return [planned("split", [{"dim": d, "sizes": [t.shape[d] for t in inputs]}], inputs)]

    def spec_inverse(self, p: Params, ctx: InverseContext) -> list[Action] | None:
        # Every piece has the shape the spec fixed before the join, and an alternation or a
        # table says how many pieces there are: the join undoes as that many equal chunks.
        if ctx.known is None or ctx.count is None:
            return None  # where the pieces begin and end: the plan says
        return [make("chunk", ctx.count, p["dim"], into=ctx.axis, span=ctx.span)]


class Stack(Merge):
    name = "stack"

    def shape(self, shapes: list[Shape], p: Params, action: Action) -> tuple[Shape, Params]:
        first = shapes[0]
        for s in shapes[1:]:
            if s != first:
                raise ShapeError(f"stack(): shapes {format_shape(first)} and {format_shape(s)} differ", action.span)
        d = axis(p["dim"], len(first), "stack", action.span, extra=1)
        return first[:d] + (len(shapes),) + first[d:], {"dim": d}

    def run(self, p: Params, arrays: list) -> list:
        return [np.stack(arrays, axis=p["dim"])]

    def inverse(self, p: Params, inputs: list[Typed]) -> list[PlannedAction]:
        return [planned("unstack", [{"dim": p["dim"]}], inputs)]

    def spec_inverse(self, p: Params, ctx: InverseContext) -> list[Action]:
        return [make("unstack", p["dim"], into=ctx.axis, span=ctx.span)]


class Split(ActionDef):
    """One tensor -> pieces along `dim`; `into=` names the target capture the pieces fill."""

    kind = "split"
    joined_by = "concat"  # the merge that undoes it

    def normalize(self, action: Action) -> Params:
        bound = bind(action, ["sizes", "dim", "into"], 1)
        sizes = integers(action, bound["sizes"], "sizes")
        if not sizes or any(s <= 0 for s in sizes):
            raise SpecError("split(): sizes must be positive", action.span)
        if len(sizes) > MAX_PIECES:
            raise SpecError(f"split(): at most {MAX_PIECES:,} pieces, got {len(sizes):,}", action.span)
        return {"sizes": sizes, "dim": optional_int(action, bound, "dim"), "into": capture_name(action, bound, "into")}

    def count(self, p: Params) -> int | None:
        return len(p["sizes"])

    def sizes(self, p: Params, shape: Shape, d: int, action: Action) -> list[int]:
        if sum(p["sizes"]) != shape[d]:
            raise ShapeError(f"split{show(Tuple(items=tuple(p['sizes'])))}: sizes add up to {sum(p['sizes'])}, "
                             f"but dim {d} of shape {format_shape(shape)} is {shape[d]}", action.span)
        return p["sizes"]

    def infer(self, p: Params, inputs: list[Typed], action: Action) -> tuple[list[Typed], Params]:
        (t,) = inputs
        shape = tuple(t.shape)
        d = axis(p["dim"], len(shape), action.name, action.span)
        sizes = self.sizes(p, shape, d, action)
        outputs = [Typed(shape[:d] + (s,) + shape[d + 1:], t.dtype) for s in sizes]
        return outputs, keep_rows(self.name, inputs, outputs, {"dim": d, "sizes": list(sizes)}, action)

    def piece(self, resolved: Params, index: int) -> Params:
        start = sum(resolved["sizes"][:index])
        return {"index": index, "dim": resolved["dim"], "start": start, "stop": start + resolved["sizes"][index]}

    def run(self, p: Params, arrays: list) -> list:
        (array,) = arrays
        index = [slice(None)] * array.ndim
        if "index" in p:
            index[p["dim"]] = slice(p["start"], p["stop"])
            return [array[tuple(index)]]
        out, start = [], 0
        for size in p["sizes"]:
            index[p["dim"]] = slice(start, start + size)
            out.append(array[tuple(index)])
            start += size
        return out

    def inverse(self, p: Params, inputs: list[Typed]) -> list[PlannedAction] | None:
        if "index" in p:  # one piece alone does not give the whole back
            return None
        (t,) = inputs
        return [planned(self.joined_by, [{"dim": p["dim"]}], [t])]

    def spec_inverse(self, p: Params, ctx: InverseContext) -> list[Action]:
        return [make(self.joined_by, p["dim"], over=p.get("into") or ctx.into, span=ctx.span)]

    def written(self, pa: PlannedAction, axis: str | None, span=None) -> Action:
        return make("split", pa.params["sizes"], pa.params["dim"], into=axis, span=span)

    def display(self, pa: PlannedAction, index: bool = True) -> str:
        if "index" not in pa.params:
            return super().display(pa, index)
        if index:
            return f"{pa.name}[{pa.params['index']}]"
        return f"{pa.name}(dim={pa.params['dim']})"


class Chunk(Split):
    """`chunk(n, dim)`: n pieces of equal size (the last may be smaller), as torch.chunk."""

    name = "chunk"

    def normalize(self, action: Action) -> Params:
        bound = bind(action, ["chunks", "dim", "into"], 1)
        chunks = integer(action, bound["chunks"], "chunks")
        if chunks <= 0:
            raise SpecError("chunk(): chunks must be positive", action.span)
        if chunks > MAX_PIECES:
            raise SpecError(f"chunk(): at most {MAX_PIECES:,} chunks, got {chunks:,}", action.span)
        return {"chunks": chunks, "dim": optional_int(action, bound, "dim"), "into": capture_name(action, bound, "into")}

    def count(self, p: Params) -> int | None:
        return p["chunks"]

    def sizes(self, p: Params, shape: Shape, d: int, action: Action) -> list[int]:
        n = shape[d]
        step = -(-n // p["chunks"])
        sizes = [min(step, n - i) for i in range(0, n, step)] if step else []
        if len(sizes) != p["chunks"]:
            raise ShapeError(f"chunk({p['chunks']}): dim {d} of shape {format_shape(shape)} gives {len(sizes)} "
                             "chunks", action.span)
        return sizes


class Unstack(Split):
    """`unstack(dim)`: one piece per index of `dim`, which the pieces lose."""

    name = "unstack"
    joined_by = "stack"

    def normalize(self, action: Action) -> Params:
        bound = bind(action, ["dim", "into"], 0)
        return {"dim": optional_int(action, bound, "dim"), "into": capture_name(action, bound, "into")}

    def count(self, p: Params) -> int | None:
        return None

    def infer(self, p: Params, inputs: list[Typed], action: Action) -> tuple[list[Typed], Params]:
        (t,) = inputs
        shape = tuple(t.shape)
        d = axis(p["dim"], len(shape), "unstack", action.span)
        outputs = [Typed(shape[:d] + shape[d + 1:], t.dtype)] * shape[d]
        return outputs, keep_rows("unstack", inputs, outputs or [Typed(shape[:d] + shape[d + 1:], t.dtype)],
                                  {"dim": d}, action)

    def piece(self, resolved: Params, index: int) -> Params:
        return {"dim": resolved["dim"], "index": index}

    def run(self, p: Params, arrays: list) -> list:
        (array,) = arrays
        if "index" in p:
            return [np.take(array, p["index"], axis=p["dim"])]
        return [np.take(array, i, axis=p["dim"]) for i in range(array.shape[p["dim"]])]

    def written(self, pa: PlannedAction, axis: str | None, span=None) -> Action:
        return make("unstack", pa.params["dim"], into=axis, span=span)

    def display(self, pa: PlannedAction, index: bool = True) -> str:
        if "index" in pa.params and not index:
            return f"unstack({pa.params['dim']})"
        return super().display(pa, index)
