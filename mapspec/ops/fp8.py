"""FP8 block-scaled weights: dequantize and quantize, in numpy, a bounded slice at a time.

The layout DeepSeek-V3/R1, Qwen3-FP8 and transformers' `FineGrainedFP8Config` use: a weight
`(..., R, C)` in `float8_e4m3fn`, and a `weight_scale_inv` `(..., ceil(R/bm), ceil(C/bn))`,
one scale per `bm x bn` block; edge blocks that do not fill a whole block have a scale of
their own. The value of an element is `float32(w) * scale_inv` of its block.

- `dequantize`: that product in float32, rounded once to the output dtype (as DeepSeek's
  `weight_dequant` kernel and transformers' `_dequantize_fp8_weight(..., torch.float32)`
  followed by `.to(dtype)` compute it; multiplying in bf16 gives other numbers).
- `quantize`: transformers' `Fp8Quantize` arithmetic, step for step in float32: per block
  `amax = max|x|`, `scale = 448 / amax` (1 where the block is all zeros; torch computes a
  number over a tensor as `reciprocal(amax) * 448`, two float32 roundings, and so does this),
  `scale_inv = 1 / scale`, `q = clamp(x * scale, -448, 448)` rounded to e4m3. Unlike
  `Fp8Quantize`, a tensor whose sizes are not multiples of the block is quantized too, each
  edge block by the absmax of the elements it holds. With `scale_fmt="e8m0"` the scale
  inverse is rounded up to a power of two first (`2 ** ceil(log2(scale_inv))`, stored as
  `float8_e8m0fnu`) and the forward scale is its exact reciprocal, as `Fp8Quantize` does for
  `scale_fmt="ue8m0"`.

Both walk the tensor in slices of whole block rows, so the float32 work arrays stay near
`CHUNK_ELEMENTS` elements whatever the tensor's size, two slices at once; numpy is imported
on first use (a rename-only run never gets here), ml_dtypes not at all (see `floatbits`).
Where `pip install` could build `kernels.c`, the kernels run its loops (`native`) instead
of numpy's whole-array passes: the same float32 operations, the same bits, a tenth of the
CPU time.
"""

from __future__ import annotations

import math

from ..core import ranges
from ..core.background import in_parallel
from .floatbits import bits_of, byte_values, dtype_name, from_float32, name_of, power_of_two_codes, to_e4m3, to_float32

FP8_MAX = 448.0  # the largest finite float8_e4m3fn
CHUNK_ELEMENTS = 1 << 20  # float32 elements worked on at once (4 MiB) by each thread
SCALE_FORMATS = ("float32", "e8m0")
USE_NATIVE = True  # the compiled loops of `native` where they are built (tests turn them off)


def compiled():
    """The `native` module when its library is built and `USE_NATIVE`, else None (numpy runs)."""
    if not USE_NATIVE:
        return None
    from . import native

    return native.load()


def grid(shape: tuple[int, ...], block: tuple[int, int]) -> tuple[int, ...]:
    """The scale grid of a weight of `shape`: its leading dims, then ceil(R/bm), ceil(C/bn)."""
    *lead, rows, cols = shape
    return (*lead, -(-rows // block[0]), -(-cols // block[1]))


def _rows_per_chunk(cols: int, bm: int) -> int:
    """Whole block rows whose float32 copy holds about CHUNK_ELEMENTS elements (at least one)."""
    return max(1, CHUNK_ELEMENTS // max(1, cols * bm)) * bm


def _slices(shape: tuple[int, ...], bm: int):
    """(leading index, first row, end row) of every slice of whole block rows."""
    *lead, rows, cols = shape
    step = _rows_per_chunk(cols, bm)
    for e in range(math.prod(lead)):
        for r0 in range(0, rows, step):
            yield e, r0, min(rows, r0 + step)


def _scale_in_place(work, scales, bm: int, bn: int) -> None:
    """`work` (rows x C, float32, a slice starting at a block row) times the scale of each
    element's block; `scales` holds the slice's block rows (ceil(rows/bm) x ceil(C/bn)).
    Scales are repeated over rows only and broadcast over the columns of a view, so no
    second weight-sized array is made."""
    import numpy as np

    rows, cols = work.shape
    per_row = np.repeat(scales, bm, axis=0)[:rows]
    full, rest = divmod(cols, bn)
    if full:
        blocks = work[:, :full * bn].view()
        blocks.shape = (rows, full, bn)  # a view, never a copy (assigning .shape refuses to copy)
        blocks *= per_row[:, :full, None]
    if rest:
        work[:, full * bn:] *= per_row[:, full:full + 1]


def dequantize(weight, scale_inv, block: tuple[int, int], out_dtype, weight_dtype: str | None = None,
               scale_dtype: str | None = None):
    """`weight` (float8) times its block scales (float32, bf16 or E8M0), rounded once to
    `out_dtype` (bfloat16, float16, float32: a name or dtype); the result as mapspec holds
    it (bf16 as uint16 bits). Arrays of bits need their dtype's name (`weight_dtype`,
    `scale_dtype`); ml_dtypes and numpy arrays say it themselves."""
    import numpy as np

    from ..core.dtypes import STORAGE

    weight_dtype, scale_dtype = name_of(weight, weight_dtype), name_of(scale_inv, scale_dtype)
    out_name = dtype_name(out_dtype)
    bm, bn = block
    expected = grid(weight.shape, block)
    if tuple(scale_inv.shape) != expected:
        raise ValueError(f"scale grid {tuple(scale_inv.shape)} does not fit a weight of shape "
                         f"{tuple(weight.shape)} in {bm}x{bn} blocks (expected {expected})")
    *lead, rows, cols = weight.shape
    out = np.empty(weight.shape, STORAGE[out_name])
    w = bits_of(weight, weight_dtype).reshape(-1, rows, cols)
    s = np.empty(expected, np.float32)
    to_float32(bits_of(scale_inv, scale_dtype), scale_dtype, s)
    s = s.reshape(-1, *expected[-2:])
    o = out.reshape(-1, rows, cols)
    # A weight is one byte, so a block has 256 possible values: each block row gets a table,
    # (its column blocks) x (256 codes), of `float32(code) * scale` rounded once to the output
    # dtype (the very product and rounding of the element-wise computation, so the same bits),
    # and the output is a gather from it: one pass over the weight instead of five.
    codes = byte_values(weight_dtype)
    # a column's block's table row; intp indices, which np.take would otherwise convert to
    table_row = ((np.arange(cols) // bn) * 256).astype(np.intp)

    fast = compiled()

    def one(job) -> None:
        e, r0, r1 = job
        index = None if fast else np.empty((min(bm, r1 - r0), cols), np.intp)
        for b0 in range(r0, r1, bm):
            b1 = min(r1, b0 + bm)
            table = np.empty((s.shape[-1], 256), out.dtype)
            from_float32(s[e, b0 // bm][:, None] * codes[None, :], out_name, table)
            if fast:
                fast.gather_blocks(w[e, b0:b1], table, bn, o[e, b0:b1])
                continue
            part = index[:b1 - b0]
            np.add(w[e, b0:b1], table_row, out=part, dtype=np.intp, casting="unsafe")
            np.take(table.reshape(-1), part, out=o[e, b0:b1])

    in_parallel(_slices(weight.shape, bm), one)
    if out_name == "float16":  # w * s past float16's range: refused, not written as infinity
        ranges.check_half_finite(out, "dequantize(fp8)")
    return out


def _block_absmax(a, bm: int, bn: int):
    """max over each bm x bn block of a (rows x C) slice that starts at a block row."""
    import numpy as np

    rows, cols = a.shape
    if rows % bm == 0:
        per_rows = a.reshape(rows // bm, bm, cols).max(axis=1)
    else:
        per_rows = np.maximum.reduceat(a, np.arange(0, rows, bm), axis=0)
    full, rest = divmod(cols, bn)
    out = np.empty((per_rows.shape[0], full + (1 if rest else 0)), a.dtype)
    if full:
        out[:, :full] = per_rows[:, :full * bn].reshape(-1, full, bn).max(axis=2)
    if rest:
        out[:, full] = per_rows[:, full * bn:].max(axis=1)
    return out


def _magnitudes(bits, dtype: str):
    """The bits of |x| as unsigned integers, whose order is that of |x| (NaNs above infinity):
    block maxima are taken on them, in the tensor's own width, without a float32 copy."""
    import numpy as np

    if dtype == "float32":
        return bits.view(np.uint32) & np.uint32(0x7FFFFFFF)
    return bits.view(np.uint16) & np.uint16(0x7FFF)


def _magnitude_values(m, dtype: str):
    """float32 values of `_magnitudes` (exact: every bf16, f16 and f32 is a float32)."""
    import numpy as np

    if dtype == "float32":
        return m.view(np.float32)
    if dtype == "bfloat16":
        return (m.astype(np.uint32) << 16).view(np.float32)
    return m.view(np.float16).astype(np.float32)


def _power_of_two_up(inv):
    """2 ** ceil(log2(inv)) in float32, inv first raised to float32's smallest normal, as
    `Fp8Quantize` rounds ue8m0 scales (log2 in float32 too)."""
    import numpy as np

    tiny = np.finfo(np.float32).tiny
    exponent = np.ceil(np.log2(np.maximum(inv, tiny)))
    return np.ldexp(np.float32(1.0), exponent.astype(np.int32)).astype(np.float32)


def quantize(x, block: tuple[int, int] = (128, 128), scale_fmt: str = "float32", dtype: str | None = None,
             scales_only: bool = False):
    """(`float8_e4m3fn` weight, `weight_scale_inv`) of `x` (bf16, fp16 or fp32; bits need
    `dtype`), as mapspec holds them: the weight's codes (uint8), the scale inverse in float32,
    or E8M0 codes (uint8) with `scale_fmt="e8m0"`. `scales_only`: (None, the scales), for
    the plan step that writes the scales (the block maxima alone)."""
    import numpy as np

    dtype = name_of(x, dtype)
    x = bits_of(x, dtype)
    if scale_fmt not in SCALE_FORMATS:
        raise ValueError(f"scale_fmt must be one of {', '.join(SCALE_FORMATS)}, not {scale_fmt!r}")
    bm, bn = block
    *lead, rows, cols = x.shape
    g = grid(x.shape, block)
    q = np.empty(x.shape if not scales_only else (0,) * x.ndim, np.uint8)
    inv_all = np.empty(g, np.float32)
    xs = x.reshape(-1, rows, cols)
    qs = q.reshape(-1, rows, cols) if not scales_only else None
    invs = inv_all.reshape(-1, *g[-2:])
    one, fp8_max = np.float32(1.0), np.float32(FP8_MAX)
    fast = compiled()

    def block_magnitudes(part):
        if not fast:
            return _block_absmax(_magnitudes(part, dtype), bm, bn)
        m = np.empty((-(-part.shape[0] // bm), -(-cols // bn)), np.uint32 if dtype == "float32" else np.uint16)
        fast.block_max(part, bm, bn, m)
        return m

    def one_slice(job) -> None:
        e, r0, r1 = job
        # max|x| of each block, as torch's x.abs().amax() (a NaN makes it NaN), on the bits
        amax = _magnitude_values(block_magnitudes(xs[e, r0:r1]), dtype)
        if not np.isfinite(amax).all():  # torch would zero the block's other values (448 / inf)
            raise ranges.not_finite("fp8")
        nonzero = amax > 0
        # torch evaluates `448 / amax` (a number over a tensor) as `reciprocal(amax) * 448`:
        # two float32 roundings, not one division. The same here, bit for bit.
        scale = np.where(nonzero, (one / np.where(nonzero, amax, one)) * fp8_max, one)
        inv = one / scale
        if scale_fmt == "e8m0":
            inv = _power_of_two_up(inv)
            scale = one / inv
        invs[e, r0 // bm: -(-r1 // bm)] = inv
        if scales_only:
            return
        if fast:  # fp16 slices are widened to float32 by numpy first (exact)
            part = xs[e, r0:r1] if dtype != "float16" else xs[e, r0:r1].astype(np.float32)
            fast.quantize_e4m3(part, "bfloat16" if dtype == "bfloat16" else "float32", bm, bn,
                               np.ascontiguousarray(scale, np.float32), qs[e, r0:r1])
            return
        work = np.empty((r1 - r0, cols), np.float32)
        to_float32(xs[e, r0:r1], dtype, work)
        _scale_in_place(work, scale, bm, bn)
        np.clip(work, -fp8_max, fp8_max, out=work)
        qs[e, r0:r1] = to_e4m3(work)  # rounded to nearest even, as torch rounds

    in_parallel(_slices(x.shape, bm), one_slice)
    q = None if scales_only else q
    if scale_fmt == "e8m0":
        return q, power_of_two_codes(inv_all)
    return q, inv_all
