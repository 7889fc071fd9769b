"""Actions that change a tensor's shape, not its values or dtype: view/reshape, transpose,
permute, squeeze, unsqueeze; and expect(), which asserts a shape."""

from __future__ import annotations

import math

from ..errors import PlanError as ShapeError, SpecError
from ..lang.rules import Action, Tuple, Word
from .args import axis, bind, format_shape, integer, integers, show, varargs_as_tuple
from .base import InverseContext, Params, PlannedAction, Reshaping, Rows, Shape, Typed, make, planned
from .blocks import in_bytes


class View(Reshaping):
    """`view(2, -1)`, `view(+(1, 1))` (append sizes); `reshape` is the same action."""

    def unchanged(self, p: Params, before: Typed, after: Typed) -> bool:
        return before == after  # a C-order reshape to the shape it has moves nothing

    def normalize(self, action: Action) -> Params:
        action = varargs_as_tuple(action)
        shape = bind(action, ["shape"], 1)["shape"]
        if not isinstance(shape, Tuple):
            raise SpecError(f"{action.name}() takes a shape such as (2, -1) or +(1, 1)", action.span)
        dims = [integer(action, v, "each dimension") for v in shape.items]
        if shape.append:
            if any(d < 0 for d in dims):
                raise SpecError(f"{action.name}(+(...)) appends fixed sizes; -1 is not allowed there", action.span)
            return {"append": dims}
        if sum(1 for d in dims if d == -1) > 1:
            raise SpecError(f"{action.name}(): only one dimension can be -1", action.span)
        if any(d < -1 for d in dims):
            raise SpecError(f"{action.name}(): dimensions must be positive or -1", action.span)
        return {"shape": dims}

    def shape(self, p: Params, shape: Shape, action: Action) -> tuple[Shape, Params]:
        n = math.prod(shape)
        if "append" in p:
            new = tuple(shape) + tuple(p["append"])
        else:
            dims = list(p["shape"])
            if -1 in dims:
                known = math.prod(d for d in dims if d != -1)
                if known == 0 or n % known:
                    raise ShapeError(f"{action.name}{show(Tuple(items=tuple(dims)))} cannot hold {n} elements "
                                     f"of a tensor of shape {format_shape(shape)}", action.span)
                dims[dims.index(-1)] = n // known
            new = tuple(dims)
        if math.prod(new) != n:
            raise ShapeError(f"{action.name} to {format_shape(new)} ({math.prod(new)} elements) does not fit "
                             f"a tensor of shape {format_shape(shape)} ({n} elements)", action.span)
        return new, {"shape": list(new)}

    def apply(self, p: Params, array):
        shape = in_bytes(p)["shape"]
        if shape and array.size != math.prod(shape):
            # a slice of rows (rows() below): its own count of whole output rows
            shape = [-1, *shape[1:]]
        return array.reshape(shape)

    def rows(self, p: Params, inputs: list[Typed]) -> Rows | None:
        # Elements keep their order, so input rows holding as many elements as some whole
        # number of output rows become exactly those rows: the least common multiple of the
        # two row sizes is one block (a (n*hd, C) -> (n, 2, hd/2, C) view: hd rows -> 1).
        before, after = inputs[0].shape, p.get("shape")
        if not before or not after or None in after:
            return None
        e_in, e_out = math.prod(before[1:]), math.prod(after[1:])
        if not e_in or not e_out:
            return None
        block = math.lcm(e_in, e_out)
        return Rows((block // e_in,), block // e_out)

    def inverse(self, p: Params, inputs: list[Typed]) -> list[PlannedAction]:
        return [planned("view", [{"shape": list(t.shape)} for t in inputs], inputs)]

    def spec_inverse(self, p: Params, ctx: InverseContext) -> list[Action] | None:
        if "append" in p and all(s == 1 for s in p["append"]):
            return [make("squeeze", -1, span=ctx.span)] * len(p["append"])
        return [make(self.name, *ctx.known, span=ctx.span)] if ctx.known is not None else None

    def shape_after(self, p: Params, known: Shape | None) -> Shape | None:
        if "shape" in p and -1 not in p["shape"]:
            return tuple(p["shape"])
        if known is None:
            return None
        dims = list(p["shape"]) if "shape" in p else list(known) + list(p["append"])
        if -1 in dims:
            rest = math.prod(x for x in dims if x != -1)
            dims[dims.index(-1)] = math.prod(known) // rest if rest else 0
        return tuple(dims)

    def written(self, pa: PlannedAction, axis: str | None, span=None) -> Action | None:
        if pa.each is None:
            return make("view", *pa.params["shape"], span=span)
        # Tensors viewed back to shapes of their own: one view if they differ in one
        # dimension only, which -1 then recovers from each tensor's size.
        shapes = [tuple(e["shape"]) for e in pa.each]
        if len({len(x) for x in shapes}) != 1:
            return None
        differ = {i for x in shapes for i, d in enumerate(x) if d != shapes[0][i]}
        if len(differ) != 1:
            return None
        (i,) = differ
        return make("view", *(-1 if j == i else d for j, d in enumerate(shapes[0])), span=span)

    def display(self, pa: PlannedAction, index: bool = True) -> str:
        if "shape" in pa.params:
            return f"{pa.name}{format_shape(tuple(pa.params['shape']))}"
        return super().display(pa, index)


class Squeeze(View):
    """`squeeze()` every size-1 dimension, `squeeze(d)` that one; executed as a view."""

    def normalize(self, action: Action) -> Params:
        bound = bind(action, ["dim"], 0)
        return {"dim": integer(action, bound["dim"], "dim")} if "dim" in bound else {}

    def shape(self, p: Params, shape: Shape, action: Action) -> tuple[Shape, Params]:
        if "dim" in p:
            d = axis(p["dim"], len(shape), "squeeze", action.span)
            if shape[d] != 1:
                raise ShapeError(f"squeeze({p['dim']}): dimension {d} of shape {format_shape(shape)} is "
                                 f"{shape[d]}, not 1", action.span)
            new = shape[:d] + shape[d + 1:]
        else:
            new = tuple(s for s in shape if s != 1)
        return tuple(new), {"shape": list(new)}

    def spec_inverse(self, p: Params, ctx: InverseContext) -> list[Action] | None:
        if "dim" in p:
            return [make("unsqueeze", p["dim"], span=ctx.span)]
        return [make("view", *ctx.known, span=ctx.span)] if ctx.known is not None else None

    def shape_after(self, p: Params, known: Shape | None) -> Shape | None:
        if known is None or "dim" not in p:
            return None
        k = p["dim"] % len(known)
        return known[:k] + known[k + 1:]


class Unsqueeze(View):
    def normalize(self, action: Action) -> Params:
        return {"dim": integer(action, bind(action, ["dim"], 1)["dim"], "dim")}

    def shape(self, p: Params, shape: Shape, action: Action) -> tuple[Shape, Params]:
        d = axis(p["dim"], len(shape), "unsqueeze", action.span, extra=1)
        new = shape[:d] + (1,) + shape[d:]
        return tuple(new), {"shape": list(new)}

    def spec_inverse(self, p: Params, ctx: InverseContext) -> list[Action]:
        return [make("squeeze", p["dim"], span=ctx.span)]

    def shape_after(self, p: Params, known: Shape | None) -> Shape | None:
        if known is None:
            return None
        k = p["dim"] % (len(known) + 1)
        return known[:k] + (1,) + known[k:]


class Permute(Reshaping):
    """`permute(2, 0, 1)`: the dimensions in a new order."""

    reorders = True

    def normalize(self, action: Action) -> Params:
        action = varargs_as_tuple(action)
        dims = integers(action, bind(action, ["dims"], 1)["dims"], "dims")
        if sorted(d % len(dims) if dims else d for d in dims) != list(range(len(dims))):
            raise SpecError(f"permute(): {tuple(dims)} is not a permutation of the dimensions", action.span)
        return {"dims": dims}

    def shape(self, p: Params, shape: Shape, action: Action) -> tuple[Shape, Params]:
        if len(p["dims"]) != len(shape):
            raise ShapeError(f"permute{show(Tuple(items=tuple(p['dims'])))} needs a {len(p['dims'])}-d tensor, "
                             f"got shape {format_shape(shape)}", action.span)
        order = [d % len(shape) for d in p["dims"]]
        return tuple(shape[i] for i in order), {"dims": order}

    def apply(self, p: Params, array):
        return array.transpose(p["dims"])

    def rows(self, p: Params, inputs: list[Typed]) -> Rows | None:
        # the first dimension left in place: each row is reordered within itself
        return Rows((1,), 1) if p.get("dims") and p["dims"][0] == 0 else None

    def inverse(self, p: Params, inputs: list[Typed]) -> list[PlannedAction]:
        return [planned("permute", [{"dims": _undo(p["dims"])}], inputs)]

    def spec_inverse(self, p: Params, ctx: InverseContext) -> list[Action]:
        return [make("permute", *_undo([x % len(p["dims"]) for x in p["dims"]]), span=ctx.span)]

    def shape_after(self, p: Params, known: Shape | None) -> Shape | None:
        return None if known is None else tuple(known[j % len(known)] for j in p["dims"])

    def written(self, pa: PlannedAction, axis: str | None, span=None) -> Action:
        return make("permute", *pa.params["dims"], span=span)

    def display(self, pa: PlannedAction, index: bool = True) -> str:
        if "dims" not in pa.params:
            return super().display(pa, index)
        dims = pa.params["dims"]
        moved = [i for i, d in enumerate(dims) if i != d]
        shown = moved if self.name == "transpose" and len(moved) == 2 else dims
        return f"{pa.name}({', '.join(map(str, shown))})"


class Transpose(Permute):
    """`transpose()` of a 2-d tensor, `transpose(a, b)` swaps two dimensions; planned as the
    permutation it makes."""

    name = "transpose"

    def normalize(self, action: Action) -> Params:
        if not action.args and not action.kwargs:
            return {}
        bound = bind(action, ["dim0", "dim1"], 2)
        return {"dims": [integer(action, bound["dim0"], "dim0"), integer(action, bound["dim1"], "dim1")]}

    def shape(self, p: Params, shape: Shape, action: Action) -> tuple[Shape, Params]:
        if "dims" not in p:
            if len(shape) != 2:
                raise ShapeError(f"transpose() with no dims needs a 2-d tensor, got shape {format_shape(shape)}",
                                 action.span)
            a, b = 0, 1
        else:
            a = axis(p["dims"][0], len(shape), "transpose", action.span)
            b = axis(p["dims"][1], len(shape), "transpose", action.span)
        return tuple(shape[i] for i in _swap(len(shape), a, b)), {"dims": _swap(len(shape), a, b)}

    def spec_inverse(self, p: Params, ctx: InverseContext) -> list[Action]:
        return [make("transpose", *p.get("dims", ()), span=ctx.span)]

    def shape_after(self, p: Params, known: Shape | None) -> Shape | None:
        if known is None:
            return None
        a, b = (p["dims"][0] % len(known), p["dims"][1] % len(known)) if p else (0, 1)
        return tuple(known[j] for j in _swap(len(known), a, b))


def _swap(n: int, a: int, b: int) -> list[int]:
    order = list(range(n))
    order[a], order[b] = order[b], order[a]
    return order


def _undo(dims: list[int]) -> list[int]:
    back = [0] * len(dims)
    for i, d in enumerate(dims):
        back[d] = i
    return back


class Expect(Reshaping):
    """`expect(n_heads * head_dim, _)`: asserts the shape; changes nothing."""

    def unchanged(self, p: Params, before: Typed, after: Typed) -> bool:
        return True

    def normalize(self, action: Action) -> Params:
        dims = []
        for v in action.args:
            dims.append(None if isinstance(v, Word) and v.name == "_" else integer(action, v, "each size (or _)"))
        # `dtype=`: the dtype the tensor has here (a model's config.json `dtype`), checked at
        # plan time; a later cast then inverts from the spec alone (back to that dtype).
        kinds = [k for k, _ in action.kwargs]
        if kinds not in ([], ["dtype"]):
            raise SpecError("expect() takes sizes and dtype= only, e.g. expect(n_heads * head_dim, _)", action.span)
        if not dims and not kinds:
            raise SpecError("expect() needs sizes or dtype=", action.span)
        p: Params = {"shape": dims} if dims else {}
        if kinds:
            from .cast import dtype_word

            p["dtype"] = dtype_word(action, action.kwargs[0][1])
        return p

    def infer(self, p: Params, inputs: list[Typed], action: Action) -> tuple[list[Typed], Params]:
        if "dtype" in p and inputs[0].dtype != p["dtype"]:
            # a block-scaled FP8 weight reaching a plain rule: its scale is what is missing
            hint = ("a quantized weight whose scale tensor (weight_scale_inv) is missing?"
                    if str(inputs[0].dtype).startswith("float8") and not str(p["dtype"]).startswith("float8")
                    else "say its dtype with -p")
            raise ShapeError(f"expect(dtype={p['dtype']}): the tensor here is {inputs[0].dtype} ({hint})",
                             action.span)
        return super().infer(p, inputs, action)

    def shape(self, p: Params, shape: Shape, action: Action) -> tuple[Shape, Params]:
        if "shape" not in p:
            return shape, dict(p)
        want = p["shape"]
        if len(want) != len(shape) or any(w is not None and w != s for w, s in zip(want, shape)):
            raise ShapeError(f"expect{_pattern(want)}: the tensor here has shape {format_shape(shape)}", action.span)
        return shape, {"shape": want}

    def apply(self, p: Params, array):
        return array

    def rows(self, p: Params, inputs: list[Typed]) -> Rows | None:
        return Rows((1,), 1) if inputs[0].shape else None  # checked at plan time; a slice passes as is

    def inverse(self, p: Params, inputs: list[Typed]) -> list[PlannedAction]:
        return []

    def spec_inverse(self, p: Params, ctx: InverseContext) -> list[Action]:
        return []  # an assertion: nothing to undo

    def shape_after(self, p: Params, known: Shape | None) -> Shape | None:
        if "shape" not in p:
            return known
        return tuple(p["shape"]) if None not in p["shape"] else None

    def dtype_after(self, p: Params, known: str | None) -> str | None:
        return p.get("dtype", known)

    def display(self, pa: PlannedAction, index: bool = True) -> str:
        if "shape" not in pa.params:
            return f"expect(dtype={pa.params['dtype']})" if "dtype" in pa.params else super().display(pa, index)
        dims = ["_" if d is None else str(d) for d in pa.params["shape"]]
        return "expect(" + ", ".join(dims + ([f"dtype={pa.params['dtype']}"] if "dtype" in pa.params else [])) + ")"


def _pattern(want: list[int | None]) -> str:
    return "(" + ", ".join("_" if w is None else str(w) for w in want) + ("," if len(want) == 1 else "") + ")"
