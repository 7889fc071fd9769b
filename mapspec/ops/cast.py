"""cast(): values to another dtype. Its inverse casts back, where the cast is exact
(`dtypes.exact`: every value of the first dtype is one of the second).

A cast to a ggml block type (q8_0, q4_0, q4_1, q5_0, q5_1) quantizes, one from a block type
(GGUF's Q8_0, Q4_K, IQ2_XS ...) to a float dtype dequantizes (every type gguf-py dequantizes);
kernels in `ggml.py`. Both lose precision: their inverse is a cast back, under --lossy."""

from __future__ import annotations

from ..core import dtypes
from ..errors import PlanError as ShapeError, SpecError, UsageError
from ..lang.rules import Action, Text, Word
from .args import bind, format_shape, show
from ..core.background import in_parallel
from .fp8 import CHUNK_ELEMENTS
from .ggml import FLOATS, QUANTIZERS  # the block types mapspec writes; what dequantizing gives
from .base import InverseContext, Params, PlannedAction, Rows, Shape, Typed, Unary, make, planned


class Cast(Unary):
    name = "cast"
    needs = "the dtype it casts from"
    dtype_only = True

    def unchanged(self, p: Params, before: Typed, after: Typed) -> bool:
        return before == after  # to the dtype it has: the same bytes

    def normalize(self, action: Action) -> Params:
        # `unfit=DTYPE`: where a block type's blocks do not divide a tensor's rows (its last
        # dimension), cast to DTYPE instead: llama.cpp's --outtype q8_0 keeps such tensors F16.
        # Decided per tensor at plan time, from its shape.
        bound = bind(action, ["dtype", "unfit"], 1)
        p = {"dtype": dtype_word(action, bound["dtype"])}
        if "unfit" in bound:
            p["unfit"] = dtype_word(action, bound["unfit"])
        return p

    def infer(self, p: Params, inputs: list[Typed], action: Action) -> tuple[list[Typed], Params]:
        (t,) = inputs
        block = dtypes.block(p["dtype"])
        if "unfit" in p and block and (not t.shape or t.shape[-1] % block[0]):
            p = {"dtype": p["unfit"]}
        if t.dtype != p["dtype"] and (dtypes.block(t.dtype) or dtypes.block(p["dtype"])):
            _check_blocks(t.dtype, p["dtype"], tuple(t.shape), action)
        return [Typed(tuple(t.shape), p["dtype"])], {"from": t.dtype, "to": p["dtype"]}

    def rows(self, p: Params, inputs: list[Typed]) -> Rows | None:
        # Elementwise, and a block type's blocks lie along the last dimension: a row of a
        # tensor of two or more dimensions is cast (quantized) on its own.
        (t,) = inputs
        return Rows((1,), 1) if len(t.shape) >= 2 else None

    def apply(self, p: Params, array):
        src, dst = p["from"], p["to"]
        if src == dst:
            return array
        if not (dtypes.block(src) or dtypes.block(dst)):
            return cast_in_slices(array, src, dst)
        from . import ggml

        if not dtypes.block(src):
            return ggml.quantize(array, src, dst)
        per, size = dtypes.block(src)
        shape = (*array.shape[:-1], array.shape[-1] // size * per)
        values = ggml.dequantize(array, src, shape, "float32" if dtypes.block(dst) else dst)
        return ggml.quantize(values, "float32", dst) if dtypes.block(dst) else values

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

    def spec_inverse(self, p: Params, ctx: InverseContext) -> list[Action] | None:
        """Back to the dtype an expect(dtype=) stated, where every dtype this cast may give
        holds it exactly; else the plan says (or, lossy, invert reports it)."""
        if ctx.dtype is None or any(not dtypes.exact(ctx.dtype, t) for t in self.targets(p)):
            return None
        return [] if self.targets(p) == {ctx.dtype} else [make("cast", ctx.dtype, span=ctx.span)]

    @staticmethod
    def targets(p: Params) -> set[str]:
        """The dtypes this cast may give (with unfit=, either)."""
        return {p["dtype"], p["unfit"]} if "unfit" in p and dtypes.block(p["dtype"]) else {p["dtype"]}

    def dtype_after(self, p: Params, known: str | None) -> str | None:
        targets = self.targets(p)
        return next(iter(targets)) if len(targets) == 1 else None

    def shape_after(self, p: Params, known: Shape | None) -> Shape | None:
        return known

    def written(self, pa: PlannedAction, axis: str | None, span=None) -> Action:
        return make("cast", pa.params["to"], span=span)

    def display(self, pa: PlannedAction, index: bool = True) -> str:
        return f"cast({pa.params['to']})"


def cast_in_slices(array, src: str, dst: str):
    """`dtypes.cast`, slice by slice into one output array, on both cores (numpy releases the GIL
    in its loops): the same values, as every cast is elementwise, without the whole-tensor
    temporaries of a cast in one go (bf16 -> f16 goes through a uint32 copy of the bits and a
    float32 copy of the values, 4x the output's size)."""
    from ..core.lazy import numpy as np

    if array.ndim == 0 or array.size <= 2 * CHUNK_ELEMENTS:
        return dtypes.cast(array, src, dst)
    rows = array.reshape(-1, array.shape[-1]) if array.flags.c_contiguous and array.ndim > 1 else array
    out = np.empty(rows.shape, dtypes.cast(rows[:0], src, dst).dtype)
    step = max(1, CHUNK_ELEMENTS // max(1, rows[0].size))

    def one(r0: int) -> None:
        out[r0:r0 + step] = dtypes.cast(rows[r0:r0 + step], src, dst)
    in_parallel(range(0, rows.shape[0], step), one)
    return out.reshape(array.shape)


def dtype_word(action: Action, value) -> str:
    """A dtype argument: a dtype name, a ggml block type, or a text parameter's value
    (`cast(wtype)` with `let wtype = weight_types[outtype]`)."""
    if isinstance(value, Text):
        value = Word(name=value.value, span=action.span)
    name = dtypes.canonical(value.name) if isinstance(value, Word) else None
    if name is None and isinstance(value, Word) and value.name.lower() in dtypes.BLOCKS:
        name = value.name.lower()
    if name is None:
        raise SpecError(f"{action.name}(): unknown dtype {show(value)} (known: {', '.join(dtypes.NAMES)}, and "
                        f"ggml's {', '.join(QUANTIZERS)} ...)", action.span)
    return name


def _check_blocks(src: str, dst: str, shape: Shape, action: Action) -> None:
    """A cast between a block type and another dtype: quantize floats to the types mapspec
    writes, in rows of whole blocks; dequantize to floats, where a dequantizer exists."""
    if dtypes.block(dst):
        if dst not in QUANTIZERS:
            raise ShapeError(f"{action.name}(): mapspec quantizes to {', '.join(QUANTIZERS)}, not {dst}", action.span)
        if src not in FLOATS and not dtypes.block(src):
            raise ShapeError(f"{action.name}({dst}) quantizes float tensors, not {src}", action.span)
        per = dtypes.block(dst)[0]
        if not shape or shape[-1] % per:
            raise ShapeError(f"{action.name}({dst}): rows of {per}-element blocks need a last dimension that is a "
                             f"multiple of {per}; shape {format_shape(shape)} has not (llama.cpp keeps such tensors "
                             "F16)", action.span)
    elif dst not in FLOATS:
        raise ShapeError(f"{action.name}(): {src} tensors dequantize to {', '.join(FLOATS)}, not {dst}", action.span)
    if dtypes.block(src):
        from .ggml import require

        try:
            require(src)
        except UsageError as exc:
            raise ShapeError(str(exc), action.span) from None
