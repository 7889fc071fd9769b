"""The actions a rule may apply after renaming, each defined once: how its arguments are
checked, how it changes a shape and dtype (at compile time, before any tensor is read), and
what it does to an array (at execution)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from . import dtypes
from .errors import PlanError as ShapeError, SpecError
from .rules import Action, Text, Tuple, Value, Word

Shape = tuple[int, ...]
Params = dict[str, Any]


@dataclass(frozen=True)
class ActionDef:
    name: str
    kind: str  # "unary": one tensor in, one out; "merge": many in; "split": many out
    normalize: Callable[[Action], Params]
    # (params, input shapes, input dtype, the action) -> (shape, dtype, resolved params)
    infer: Callable[[Params, list[Shape], str, Action], tuple[Shape, str, Params]]
    run: Callable[[Params, list[np.ndarray], str], np.ndarray]


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
    if isinstance(value, bool) or not isinstance(value, int):
        raise SpecError(f"{action.name}(): {what} must be an integer, got {_show(value)}", action.span)
    return value


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
    return str(value)


def _varargs_as_tuple(action: Action) -> Action:
    """`view(2, 3)` and `view((2, 3))` mean the same; so do permute's."""
    if action.args and all(isinstance(a, int) and not isinstance(a, bool) for a in action.args):
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


def _run_view(p: Params, arrays: list[np.ndarray], dtype: str) -> np.ndarray:
    return arrays[0].reshape(p["shape"])


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


def _run_permute(p: Params, arrays: list[np.ndarray], dtype: str) -> np.ndarray:
    return arrays[0].transpose(p["dims"])


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
        raise SpecError(f"cast(): unknown dtype {_show(value)} (known: {', '.join(dtypes.STORAGE)})",
                        action.span)
    return {"dtype": name}


def _infer_cast(p: Params, shapes: list[Shape], dtype: str, action: Action):
    return shapes[0], p["dtype"], {"from": dtype, "to": p["dtype"]}


def _run_cast(p: Params, arrays: list[np.ndarray], dtype: str) -> np.ndarray:
    return dtypes.cast(arrays[0], p["from"], p["to"])


# ------------------------------------------------------------------ concat / stack (many -> one)

def _norm_dim0(action: Action) -> Params:
    bound = _bind(action, ["dim"], 0)
    return {"dim": _int(action, bound["dim"], "dim") if "dim" in bound else 0}


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


def _infer_stack(p: Params, shapes: list[Shape], dtype: str, action: Action):
    first = shapes[0]
    for s in shapes[1:]:
        if s != first:
            raise ShapeError(f"stack(): shapes {_fmt(first)} and {_fmt(s)} differ", action.span)
    d = _axis(p["dim"], len(first), "stack", action.span, extra=1)
    return first[:d] + (len(shapes),) + first[d:], dtype, {"dim": d}


# ------------------------------------------------------------------ split / chunk (one -> many)

MAX_PIECES = 65_536  # outputs of one split or chunk; each becomes a named tensor in the plan

def _norm_split(action: Action) -> Params:
    bound = _bind(action, ["sizes", "dim"], 1)
    sizes = _ints(action, bound["sizes"], "sizes")
    if not sizes or any(s <= 0 for s in sizes):
        raise SpecError("split(): sizes must be positive", action.span)
    if len(sizes) > MAX_PIECES:
        raise SpecError(f"split(): at most {MAX_PIECES:,} pieces, got {len(sizes):,}", action.span)
    return {"sizes": sizes, "dim": _int(action, bound["dim"], "dim") if "dim" in bound else 0}


def _norm_chunk(action: Action) -> Params:
    bound = _bind(action, ["chunks", "dim"], 1)
    chunks = _int(action, bound["chunks"], "chunks")
    if chunks <= 0:
        raise SpecError("chunk(): chunks must be positive", action.span)
    if chunks > MAX_PIECES:
        raise SpecError(f"chunk(): at most {MAX_PIECES:,} chunks, got {chunks:,}", action.span)
    return {"chunks": chunks, "dim": _int(action, bound["dim"], "dim") if "dim" in bound else 0}


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


def _infer_piece(p: Params, shapes: list[Shape], dtype: str, action: Action):
    (shape,) = shapes
    d, bounds = pieces(p, shape, action)
    start, stop = bounds[p["index"]]
    new = list(shape)
    new[d] = stop - start
    return tuple(new), dtype, {"index": p["index"], "dim": d, "start": start, "stop": stop}


def _run_piece(p: Params, arrays: list[np.ndarray], dtype: str) -> np.ndarray:
    index = [slice(None)] * arrays[0].ndim
    index[p["dim"]] = slice(p["start"], p["stop"])
    return arrays[0][tuple(index)]


def _fmt(shape: Shape) -> str:
    return "(" + ", ".join(str(s) for s in shape) + ("," if len(shape) == 1 else "") + ")"


format_shape = _fmt


REGISTRY: dict[str, ActionDef] = {}


def _register(name: str, kind: str, normalize, infer, run) -> None:
    REGISTRY[name] = ActionDef(name, kind, normalize, infer, run)


_register("view", "unary", _norm_view, _infer_view, _run_view)
_register("reshape", "unary", _norm_view, _infer_view, _run_view)
_register("transpose", "unary", _norm_transpose, _infer_transpose, _run_permute)
_register("permute", "unary", _norm_permute, _infer_permute, _run_permute)
_register("squeeze", "unary", _norm_squeeze, _infer_squeeze, _run_view)
_register("unsqueeze", "unary", _norm_unsqueeze, _infer_unsqueeze, _run_view)
_register("cast", "unary", _norm_cast, _infer_cast, _run_cast)
_register("concat", "merge", _norm_dim0, _infer_concat,
          lambda p, arrays, dtype: np.concatenate(arrays, axis=p["dim"]))
_register("stack", "merge", _norm_dim0, _infer_stack,
          lambda p, arrays, dtype: np.stack(arrays, axis=p["dim"]))
_register("split", "split", _norm_split, _infer_piece, _run_piece)
_register("chunk", "split", _norm_chunk, _infer_piece, _run_piece)


def lookup(action: Action) -> ActionDef:
    try:
        return REGISTRY[action.name]
    except KeyError:
        raise SpecError(f"unknown action '{action.name}' (known: {', '.join(sorted(REGISTRY))})",
                        action.span) from None


def normalize(action: Action) -> Params:
    """Static check of one action's arguments; returns its parameters as plain data."""
    return lookup(action).normalize(action)
