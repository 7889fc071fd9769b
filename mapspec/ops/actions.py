"""The actions a rule may apply after renaming, each defined once: how its arguments are
checked, how it changes a shape and dtype (at compile time, before any tensor is read), what
it does to arrays (at execution), and which planned actions undo it.

A rule's data is a list of tensors (one per source key still apart). A unary action maps
over the list; a merge (concat, stack) turns groups of it into one tensor each; a split
(split, chunk, unstack) gives each tensor's pieces, or in a plan step, where the output's
name fixes which piece is wanted, that one piece (`index`)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping

from ..core.lazy import numpy as np

from ..core import dtypes
from ..errors import PlanError as ShapeError, SpecError
from ..lang.rules import Action, Calc, Text, Tuple, Value, Word

Shape = tuple[int, ...]
Params = dict[str, Any]


@dataclass(frozen=True, slots=True)
class PlannedAction:
    """One action of a plan step with its arguments resolved, and the state after it: the
    shape of every tensor and their dtype. `groups` (merges) says which tensors become each
    merged one; `each` holds per-tensor arguments where they differ (a `view(-1, d)` of
    tensors of different sizes)."""

    name: str
    params: Mapping[str, Any]
    shapes: tuple[Shape, ...] = ()
    dtype: str = ""
    groups: tuple[tuple[int, ...], ...] | None = None
    each: tuple[Mapping[str, Any], ...] | None = None

    def to_json(self) -> dict:
        out: dict = {"name": self.name, "params": dict(self.params)}
        if self.each is not None:
            out["each"] = [dict(p) for p in self.each]
        if self.groups is not None:
            out["groups"] = [list(g) for g in self.groups]
        out["shapes"] = [list(s) for s in self.shapes]
        out["dtype"] = self.dtype
        return out

    def __str__(self) -> str:
        args = ", ".join(f"{k}={v}" for k, v in self.params.items())
        return f"{self.name}({args})"


@dataclass(frozen=True)
class ActionDef:
    name: str
    kind: str  # "unary": one tensor in, one out; "merge": many in; "split": many out
    normalize: Callable[[Action], Params]
    # unary and merge: (params, input shapes, input dtype, the action) -> (shape, dtype, resolved)
    infer: Callable[[Params, list[Shape], str, Action], tuple[Shape, str, Params]] | None
    # unary, merge: (resolved, arrays) -> array; split: (resolved, array) -> pieces
    run: Callable[..., Any]
    # (resolved, input shapes, input dtype) -> the actions that undo this one, None if lossy
    inverse: Callable[[Params, list[Shape], str], list[PlannedAction] | None]
    # split only: (params, shape, action) -> (the resolved split into every piece,
    #                                          [(piece shape, resolved params selecting it)])
    fan: Callable[[Params, Shape, Action], tuple[Params, list[tuple[Shape, Params]]]] | None = None


# ------------------------------------------------------------------ argument binding

def _bind(action: Action, names: list[str], required: int) -> dict[str, Value]:
    """Positional and keyword arguments to names; arity errors at the action."""
    if len(action.args) > len(names):
        raise SpecError(
            f"{action.name}() takes {_arity(names, required)}, got {len(action.args)}", action.span)
    bound: dict[str, Value] = dict(zip(names, action.args))
    for key, value in action.kwargs:
        if key not in names:
            raise SpecError(f"{action.name}() has no argument '{key}' (it takes {', '.join(names)})",
                            action.span)
        if key in bound:
            raise SpecError(f"{action.name}() got '{key}' twice", action.span)
        bound[key] = value
    missing = [n for n in names[:required] if n not in bound]
    if missing:
        raise SpecError(f"{action.name}() takes {_arity(names, required)}; missing {', '.join(missing)}",
                        action.span)
    return bound


def _arity(names: list[str], required: int) -> str:
    if required == len(names):
        return f"{required} argument{'s' if required != 1 else ''} ({', '.join(names)})"
    return f"{required} to {len(names)} arguments ({', '.join(names)})"


def _int(action: Action, value: Value, what: str) -> int:
    if isinstance(value, Word):
        raise SpecError(f"{action.name}(): {what} must be an integer; '{value.name}' is not a parameter",
                        value.span or action.span)
    if isinstance(value, bool) or not isinstance(value, int):
        raise SpecError(f"{action.name}(): {what} must be an integer, got {_show(value)}", action.span)
    return value


def _name(action: Action, bound: dict[str, Value], key: str) -> str | None:
    """A capture named by over= / into=."""
    if key not in bound:
        return None
    value = bound[key]
    if not isinstance(value, Word):
        raise SpecError(f"{action.name}(): {key}= names a capture of the rule, got {_show(value)}", action.span)
    return value.name


def _ints(action: Action, value: Value, what: str) -> list[int]:
    if not isinstance(value, Tuple) or value.append:
        raise SpecError(f"{action.name}(): {what} must be a tuple of integers such as (2, 3)", action.span)
    return [_int(action, v, what) for v in value.items]


def _show(value: Value) -> str:
    if isinstance(value, Word):
        return value.name
    if isinstance(value, Text):
        return repr(value.value)
    if isinstance(value, Tuple):
        return ("+" if value.append else "") + "(" + ", ".join(_show(v) for v in value.items) + ")"
    if isinstance(value, Calc):
        return "an expression"
    return str(value)


def _varargs_as_tuple(action: Action) -> Action:
    """`view(2, 3)` and `view((2, 3))` mean the same; so do permute's."""
    if action.args and not any(isinstance(a, Tuple) for a in action.args):
        return action.model_copy(update={"args": (Tuple(items=action.args),)})
    return action


def _axis(dim: int, ndim: int, action_name: str, span, extra: int = 0) -> int:
    n = ndim + extra
    if not -n <= dim < n:
        raise ShapeError(f"{action_name}(): dim {dim} is out of range for a {ndim}-d tensor", span)
    return dim % n if n else 0


# ------------------------------------------------------------------ view / reshape

def _norm_view(action: Action) -> Params:
    action = _varargs_as_tuple(action)
    bound = _bind(action, ["shape"], 1)
    shape = bound["shape"]
    if not isinstance(shape, Tuple):
        raise SpecError(f"{action.name}() takes a shape such as (2, -1) or +(1, 1)", action.span)
    dims = [_int(action, v, "each dimension") for v in shape.items]
    if shape.append:
        if any(d < 0 for d in dims):
            raise SpecError(f"{action.name}(+(...)) appends fixed sizes; -1 is not allowed there", action.span)
        return {"append": dims}
    if sum(1 for d in dims if d == -1) > 1:
        raise SpecError(f"{action.name}(): only one dimension can be -1", action.span)
    if any(d < -1 for d in dims):
        raise SpecError(f"{action.name}(): dimensions must be positive or -1", action.span)
    return {"shape": dims}


def _infer_view(p: Params, shapes: list[Shape], dtype: str, action: Action) -> tuple[Shape, str, Params]:
    (shape,) = shapes
    n = math.prod(shape)
    if "append" in p:
        new = tuple(shape) + tuple(p["append"])
    else:
        dims = list(p["shape"])
        if -1 in dims:
            known = math.prod(d for d in dims if d != -1)
            if known == 0 or n % known:
                raise ShapeError(f"{action.name}{_show(Tuple(items=tuple(dims)))} cannot hold {n} elements "
                                 f"of a tensor of shape {_fmt(shape)}", action.span)
            dims[dims.index(-1)] = n // known
        new = tuple(dims)
    if math.prod(new) != n:
        raise ShapeError(f"{action.name} to {_fmt(new)} ({math.prod(new)} elements) does not fit "
                         f"a tensor of shape {_fmt(shape)} ({n} elements)", action.span)
    return new, dtype, {"shape": list(new)}


def _run_view(p: Params, arrays: list[np.ndarray]) -> np.ndarray:
    return arrays[0].reshape(p["shape"])


def _inverse_view(p: Params, shapes: list[Shape], dtype: str) -> list[PlannedAction]:
    return [mapped("view", [{"shape": list(s)} for s in shapes], shapes, dtype)]


def mapped(name: str, params: list[Params], shapes: Iterable[Shape], dtype: str) -> PlannedAction:
    """A unary planned action over several tensors, per-tensor arguments only if they differ."""
    first = params[0]
    same = all(q == first for q in params[1:])
    return PlannedAction(name, first, tuple(tuple(s) for s in shapes), dtype,
                         each=None if same else tuple(params))


# ------------------------------------------------------------------ transpose / permute

def _norm_transpose(action: Action) -> Params:
    if not action.args and not action.kwargs:
        return {}
    bound = _bind(action, ["dim0", "dim1"], 2)
    return {"dims": [_int(action, bound["dim0"], "dim0"), _int(action, bound["dim1"], "dim1")]}


def _infer_transpose(p: Params, shapes: list[Shape], dtype: str, action: Action):
    (shape,) = shapes
    if "dims" not in p:
        if len(shape) != 2:
            raise ShapeError(f"transpose() with no dims needs a 2-d tensor, got shape {_fmt(shape)}",
                             action.span)
        a, b = 0, 1
    else:
        a = _axis(p["dims"][0], len(shape), "transpose", action.span)
        b = _axis(p["dims"][1], len(shape), "transpose", action.span)
    order = list(range(len(shape)))
    order[a], order[b] = order[b], order[a]
    return tuple(shape[i] for i in order), dtype, {"dims": order}


def _norm_permute(action: Action) -> Params:
    action = _varargs_as_tuple(action)
    bound = _bind(action, ["dims"], 1)
    dims = _ints(action, bound["dims"], "dims")
    if sorted(d % len(dims) if dims else d for d in dims) != list(range(len(dims))):
        raise SpecError(f"permute(): {tuple(dims)} is not a permutation of the dimensions", action.span)
    return {"dims": dims}


def _infer_permute(p: Params, shapes: list[Shape], dtype: str, action: Action):
    (shape,) = shapes
    if len(p["dims"]) != len(shape):
        raise ShapeError(f"permute{_show(Tuple(items=tuple(p['dims'])))} needs a {len(p['dims'])}-d tensor, "
                         f"got shape {_fmt(shape)}", action.span)
    order = [d % len(shape) for d in p["dims"]]
    return tuple(shape[i] for i in order), dtype, {"dims": order}


def _run_permute(p: Params, arrays: list[np.ndarray]) -> np.ndarray:
    return arrays[0].transpose(p["dims"])


def _inverse_permute(p: Params, shapes: list[Shape], dtype: str) -> list[PlannedAction]:
    back = [0] * len(p["dims"])
    for i, d in enumerate(p["dims"]):
        back[d] = i
    return [PlannedAction("permute", {"dims": back}, tuple(tuple(s) for s in shapes), dtype)]


# ------------------------------------------------------------------ squeeze / unsqueeze

def _norm_squeeze(action: Action) -> Params:
    bound = _bind(action, ["dim"], 0)
    return {"dim": _int(action, bound["dim"], "dim")} if "dim" in bound else {}


def _infer_squeeze(p: Params, shapes: list[Shape], dtype: str, action: Action):
    (shape,) = shapes
    if "dim" in p:
        d = _axis(p["dim"], len(shape), "squeeze", action.span)
        if shape[d] != 1:
            raise ShapeError(f"squeeze({p['dim']}): dimension {d} of shape {_fmt(shape)} is {shape[d]}, not 1",
                             action.span)
        new = shape[:d] + shape[d + 1:]
    else:
        new = tuple(s for s in shape if s != 1)
    return tuple(new), dtype, {"shape": list(new)}


def _norm_unsqueeze(action: Action) -> Params:
    bound = _bind(action, ["dim"], 1)
    return {"dim": _int(action, bound["dim"], "dim")}


def _infer_unsqueeze(p: Params, shapes: list[Shape], dtype: str, action: Action):
    (shape,) = shapes
    d = _axis(p["dim"], len(shape), "unsqueeze", action.span, extra=1)
    new = shape[:d] + (1,) + shape[d:]
    return tuple(new), dtype, {"shape": list(new)}


# ------------------------------------------------------------------ cast

def _norm_cast(action: Action) -> Params:
    bound = _bind(action, ["dtype"], 1)
    value = bound["dtype"]
    name = dtypes.canonical(value.name) if isinstance(value, Word) else None
    if name is None:
        raise SpecError(f"cast(): unknown dtype {_show(value)} (known: {', '.join(dtypes.NAMES)})",
                        action.span)
    return {"dtype": name}


def _infer_cast(p: Params, shapes: list[Shape], dtype: str, action: Action):
    return shapes[0], p["dtype"], {"from": dtype, "to": p["dtype"]}


def _run_cast(p: Params, arrays: list[np.ndarray]) -> np.ndarray:
    return dtypes.cast(arrays[0], p["from"], p["to"])


# Casts that keep every value exactly, so casting back gives the same bits.
_WIDER = {
    "float16": {"float32", "float64"}, "bfloat16": {"float32", "float64"}, "float32": {"float64"},
    "int8": {"int16", "int32", "int64"}, "int16": {"int32", "int64"}, "int32": {"int64"},
    "uint8": {"uint16", "uint32", "uint64", "int16", "int32", "int64"}, "uint16": {"uint32", "uint64", "int32", "int64"},
    "uint32": {"uint64", "int64"},
}


def _inverse_cast(p: Params, shapes: list[Shape], dtype: str) -> list[PlannedAction] | None:
    if p["from"] != p["to"] and p["to"] not in _WIDER.get(p["from"], ()):
        return None
    return [PlannedAction("cast", {"from": p["to"], "to": p["from"]}, tuple(tuple(s) for s in shapes), p["from"])]


# ------------------------------------------------------------------ expect (a shape assertion)

def _norm_expect(action: Action) -> Params:
    dims = []
    for v in action.args:
        if isinstance(v, Word) and v.name == "_":
            dims.append(None)
        else:
            dims.append(_int(action, v, "each size (or _)"))
    if action.kwargs:
        raise SpecError("expect() takes sizes only, e.g. expect(n_heads * head_dim, _)", action.span)
    return {"shape": dims}


def _infer_expect(p: Params, shapes: list[Shape], dtype: str, action: Action):
    (shape,) = shapes
    want = p["shape"]
    if len(want) != len(shape) or any(w is not None and w != s for w, s in zip(want, shape)):
        shown = "(" + ", ".join("_" if w is None else str(w) for w in want) + ("," if len(want) == 1 else "") + ")"
        raise ShapeError(f"expect{shown}: the tensor here has shape {_fmt(shape)}", action.span)
    return shape, dtype, {"shape": want}


def _run_same(p: Params, arrays: list[np.ndarray]) -> np.ndarray:
    return arrays[0]


# ------------------------------------------------------------------ concat / stack (many -> one)

def _norm_merge(action: Action) -> Params:
    bound = _bind(action, ["dim", "over"], 0)
    return {"dim": _int(action, bound["dim"], "dim") if "dim" in bound else 0, "over": _name(action, bound, "over")}


def _infer_concat(p: Params, shapes: list[Shape], dtype: str, action: Action):
    first = shapes[0]
    d = _axis(p["dim"], len(first), "concat", action.span)
    for s in shapes[1:]:
        if len(s) != len(first) or any(a != b for i, (a, b) in enumerate(zip(s, first)) if i != d):
            raise ShapeError(f"concat({p['dim']}): shapes {_fmt(first)} and {_fmt(s)} differ outside dim {d}",
                             action.span)
    new = list(first)
    new[d] = sum(s[d] for s in shapes)
    return tuple(new), dtype, {"dim": d}


def _inverse_concat(p: Params, shapes: list[Shape], dtype: str) -> list[PlannedAction]:
    d = p["dim"]
    return [PlannedAction("split", {"dim": d, "sizes": [s[d] for s in shapes]},
                          tuple(tuple(s) for s in shapes), dtype)]


def _infer_stack(p: Params, shapes: list[Shape], dtype: str, action: Action):
    first = shapes[0]
    for s in shapes[1:]:
        if s != first:
            raise ShapeError(f"stack(): shapes {_fmt(first)} and {_fmt(s)} differ", action.span)
    d = _axis(p["dim"], len(first), "stack", action.span, extra=1)
    return first[:d] + (len(shapes),) + first[d:], dtype, {"dim": d}


def _inverse_stack(p: Params, shapes: list[Shape], dtype: str) -> list[PlannedAction]:
    return [PlannedAction("unstack", {"dim": p["dim"]}, tuple(tuple(s) for s in shapes), dtype)]


# ------------------------------------------------------------------ split / chunk (one -> many)

MAX_PIECES = 65_536  # outputs of one split or chunk; each becomes a named tensor in the plan

def _norm_split(action: Action) -> Params:
    bound = _bind(action, ["sizes", "dim", "into"], 1)
    sizes = _ints(action, bound["sizes"], "sizes")
    if not sizes or any(s <= 0 for s in sizes):
        raise SpecError("split(): sizes must be positive", action.span)
    if len(sizes) > MAX_PIECES:
        raise SpecError(f"split(): at most {MAX_PIECES:,} pieces, got {len(sizes):,}", action.span)
    return {"sizes": sizes, "dim": _int(action, bound["dim"], "dim") if "dim" in bound else 0,
            "into": _name(action, bound, "into")}


def _norm_chunk(action: Action) -> Params:
    bound = _bind(action, ["chunks", "dim", "into"], 1)
    chunks = _int(action, bound["chunks"], "chunks")
    if chunks <= 0:
        raise SpecError("chunk(): chunks must be positive", action.span)
    if chunks > MAX_PIECES:
        raise SpecError(f"chunk(): at most {MAX_PIECES:,} chunks, got {chunks:,}", action.span)
    return {"chunks": chunks, "dim": _int(action, bound["dim"], "dim") if "dim" in bound else 0,
            "into": _name(action, bound, "into")}


def _norm_unstack(action: Action) -> Params:
    bound = _bind(action, ["dim", "into"], 0)
    return {"dim": _int(action, bound["dim"], "dim") if "dim" in bound else 0, "into": _name(action, bound, "into")}


def count(p: Params) -> int | None:
    """How many pieces a split makes, when its arguments alone tell."""
    return len(p["sizes"]) if "sizes" in p else p.get("chunks")


def pieces(p: Params, shape: Shape, action: Action) -> tuple[int, list[tuple[int, int]]]:
    """The dim and [start, stop) bounds of every output of a split or chunk."""
    d = _axis(p["dim"], len(shape), action.name, action.span)
    n = shape[d]
    if "sizes" in p:
        if sum(p["sizes"]) != n:
            raise ShapeError(f"split{_show(Tuple(items=tuple(p['sizes'])))}: sizes add up to {sum(p['sizes'])}, "
                             f"but dim {d} of shape {_fmt(shape)} is {n}", action.span)
        sizes = p["sizes"]
    else:
        step = -(-n // p["chunks"])
        sizes = [min(step, n - i) for i in range(0, n, step)] if step else []
        if len(sizes) != p["chunks"]:
            raise ShapeError(f"chunk({p['chunks']}): dim {d} of shape {_fmt(shape)} gives {len(sizes)} chunks",
                             action.span)
    bounds, start = [], 0
    for s in sizes:
        bounds.append((start, start + s))
        start += s
    return d, bounds


def _fan_piece(p: Params, shape: Shape, action: Action):
    d, bounds = pieces(p, shape, action)
    out = []
    for i, (start, stop) in enumerate(bounds):
        new = list(shape)
        new[d] = stop - start
        out.append((tuple(new), {"index": i, "dim": d, "start": start, "stop": stop}))
    return {"dim": d, "sizes": [b - a for a, b in bounds]}, out


def _run_piece(p: Params, array: np.ndarray) -> list[np.ndarray]:
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


def _inverse_piece(p: Params, shapes: list[Shape], dtype: str) -> list[PlannedAction] | None:
    if "index" in p:  # one piece alone does not give the whole back
        return None
    (shape,) = shapes
    return [PlannedAction("concat", {"dim": p["dim"]}, (tuple(shape),), dtype)]


def _fan_unstack(p: Params, shape: Shape, action: Action):
    d = _axis(p["dim"], len(shape), "unstack", action.span)
    piece = shape[:d] + shape[d + 1:]
    return {"dim": d}, [(piece, {"dim": d, "index": i}) for i in range(shape[d])]


def _run_unstack(p: Params, array: np.ndarray) -> list[np.ndarray]:
    if "index" in p:
        return [np.take(array, p["index"], axis=p["dim"])]
    return [np.take(array, i, axis=p["dim"]) for i in range(array.shape[p["dim"]])]


def _inverse_unstack(p: Params, shapes: list[Shape], dtype: str) -> list[PlannedAction] | None:
    if "index" in p:
        return None
    return [PlannedAction("stack", {"dim": p["dim"]}, tuple(tuple(s) for s in shapes), dtype)]


def _fmt(shape: Shape) -> str:
    return "(" + ", ".join(str(s) for s in shape) + ("," if len(shape) == 1 else "") + ")"


format_shape = _fmt


REGISTRY: dict[str, ActionDef] = {}


def _register(d: ActionDef) -> None:
    REGISTRY[d.name] = d


for _name_ in ("view", "reshape"):
    _register(ActionDef(_name_, "unary", _norm_view, _infer_view, _run_view, _inverse_view))
_register(ActionDef("transpose", "unary", _norm_transpose, _infer_transpose, _run_permute, _inverse_permute))
_register(ActionDef("permute", "unary", _norm_permute, _infer_permute, _run_permute, _inverse_permute))
_register(ActionDef("squeeze", "unary", _norm_squeeze, _infer_squeeze, _run_view, _inverse_view))
_register(ActionDef("unsqueeze", "unary", _norm_unsqueeze, _infer_unsqueeze, _run_view, _inverse_view))
_register(ActionDef("cast", "unary", _norm_cast, _infer_cast, _run_cast, _inverse_cast))
_register(ActionDef("expect", "unary", _norm_expect, _infer_expect, _run_same, lambda p, shapes, dtype: []))
_register(ActionDef("concat", "merge", _norm_merge, _infer_concat,
                    lambda p, arrays: np.concatenate(arrays, axis=p["dim"]), _inverse_concat))
_register(ActionDef("stack", "merge", _norm_merge, _infer_stack,
                    lambda p, arrays: np.stack(arrays, axis=p["dim"]), _inverse_stack))
_register(ActionDef("split", "split", _norm_split, None, _run_piece, _inverse_piece, _fan_piece))
_register(ActionDef("chunk", "split", _norm_chunk, None, _run_piece, _inverse_piece, _fan_piece))
_register(ActionDef("unstack", "split", _norm_unstack, None, _run_unstack, _inverse_unstack, _fan_unstack))


def lookup(action: Action) -> ActionDef:
    try:
        return REGISTRY[action.name]
    except KeyError:
        raise SpecError(f"unknown action '{action.name}' (known: {', '.join(sorted(REGISTRY))})",
                        action.span) from None


def normalize(action: Action) -> Params:
    """Static check of one action's arguments; returns its parameters as plain data."""
    return lookup(action).normalize(action)


def run(pa: PlannedAction, arrays: list[np.ndarray]) -> list[np.ndarray]:
    """Execute one planned action on a step's tensors."""
    d = REGISTRY[pa.name]
    if d.kind == "unary":
        if pa.each is None:
            return [d.run(pa.params, [a]) for a in arrays]
        return [d.run(p, [a]) for p, a in zip(pa.each, arrays)]
    if d.kind == "merge":
        groups = pa.groups if pa.groups is not None else (tuple(range(len(arrays))),)
        return [d.run(pa.params, [arrays[i] for i in g]) for g in groups]
    return [piece for a in arrays for piece in d.run(pa.params, a)]


def run_all(actions: Iterable[PlannedAction], arrays: list[np.ndarray]) -> list[np.ndarray]:
    for pa in actions:
        arrays = run(pa, arrays)
    return arrays


def inverse(pa: PlannedAction, in_shapes: list[Shape], in_dtype: str) -> list[PlannedAction] | None:
    """The planned actions that undo `pa` given what went into it; None if it loses
    information (a narrowing cast, one piece of a split)."""
    d = REGISTRY[pa.name]
    if pa.each is not None:
        parts = [d.inverse(p, [s], in_dtype) for p, s in zip(pa.each, in_shapes)]
        if any(p is None for p in parts):
            return None
        return [mapped(parts[0][0].name, [p[0].params for p in parts], in_shapes, in_dtype)] if parts[0] else []
    return d.inverse(dict(pa.params), [tuple(s) for s in in_shapes], in_dtype)


def resolve(action: Action, in_shapes: list[Shape], in_dtype: str) -> PlannedAction:
    """Plan one action on its own over given tensors (splits into all their pieces)."""
    d = lookup(action)
    p = normalize(action)
    if d.kind == "split":
        full, fan = [], []
        for s in in_shapes:
            resolved, pieces_ = d.fan(p, tuple(s), action)
            full.append(resolved)
            fan.extend(shape for shape, _ in pieces_)
        return PlannedAction(action.name, full[0], tuple(fan), in_dtype)
    if d.kind == "merge":
        shape, dtype, resolved = d.infer(p, [tuple(s) for s in in_shapes], in_dtype, action)
        return PlannedAction(action.name, resolved, (shape,), dtype)
    outs = [d.infer(p, [tuple(s)], in_dtype, action) for s in in_shapes]
    pa = mapped(action.name, [o[2] for o in outs], [o[0] for o in outs], outs[0][1] if outs else in_dtype)
    return pa
