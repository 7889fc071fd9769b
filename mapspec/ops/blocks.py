"""Actions on tensors of a ggml block dtype (GGUF's Q8_0, Q4_K ...; `core.dtypes.BLOCKS`).

Such a tensor travels as the bytes of its blocks, each row (the last dimension) whole blocks.
An action that moves whole rows works on those bytes exactly: a row permutation such as
llama.cpp's rotary q/k one, a split, concat, stack or unstack along a leading dimension, a
view that keeps the last dimension. One that would cut or reorder the elements inside a row
is refused at plan time (dequantize first). `cast` to or from a block type quantizes or
dequantizes (`cast.py`, kernels in `ggml.py`)."""

from __future__ import annotations

from typing import Any

from ..core import dtypes
from ..errors import PlanError as ShapeError
from ..lang.rules import Action
from .args import format_shape

Params = dict[str, Any]


def keep_rows(name: str, inputs: list, outputs: list, resolved: Params, action: Action) -> Params:
    """`inputs` and `outputs` are `base.Typed` (shape, dtype); `resolved`, marked with the block facts when the tensors are of a block dtype (a view
    then reshapes bytes), after checking that the action keeps each row whole."""
    blocks = [t for t in inputs if dtypes.block(t.dtype)]
    if not blocks:
        return resolved
    t = blocks[0]
    ndim, last = len(t.shape), t.shape[-1] if t.shape else 0
    dims, dim = resolved.get("dims"), resolved.get("dim")
    grows = any(len(o.shape) > ndim for o in outputs)  # stack: a new axis; at `ndim` it is the last
    cut = (dims is not None and dims[-1] != ndim - 1
           or dim is not None and dim == (ndim if grows else ndim - 1)
           or any(not o.shape or o.shape[-1] != last for o in outputs))
    if cut:
        raise ShapeError(f"{name}() would reorder or cut the elements inside the rows of a {t.dtype} tensor "
                         f"(shape {format_shape(tuple(t.shape))}), whose rows are packed blocks; cast() it to floats "
                         "first, or keep the last dimension whole", action.span)
    return {**resolved, "block": list(dtypes.block(t.dtype))}


def in_bytes(p: Params) -> Params:
    """A view's parameters for a block tensor's bytes: the last size counts bytes."""
    if "block" not in p:
        return p
    (per, size), shape = p["block"], p["shape"]
    return {**p, "shape": [*shape[:-1], shape[-1] // per * size]}
