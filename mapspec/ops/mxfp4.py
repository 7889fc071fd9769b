"""MXFP4 experts (gpt-oss): dequantize and quantize, in numpy, an expert slice at a time.

Checkpoint layout: `*_blocks` uint8 `(E, N, G, 16)`, each byte two E2M1 values (the low
nibble first), 32 values per block; `*_scales` uint8 `(E, N, G)`, each an E8M0 exponent with
bias 127. The model's layout (`GptOssExperts`) is the transpose: `(E, K, N)` with K = 32 G.

- `dequantize` computes what transformers' `convert_moe_packed_tensors` computes: each value
  from the E2M1 table times `2 ** (scale - 127)` as `ldexp` does it (exactly, in float32:
  a zero stays zero at scale byte 255, 0.5 becomes 2**127, larger values infinity), rounded
  once to the output dtype, then the last two dimensions swapped: `(E, N, G, 16)` ->
  `(E, 32 G, N)`. Since a block byte and its scale byte fix both values, a table of all
  65,536 pairs, computed that way once, gives them by one lookup per byte.
- `quantize` is its inverse layout with the arithmetic of the MXFP4 reference quantizer
  (`downcast_to_mxfp_torch` in triton_kernels, which transformers' `Mxfp4Quantize` calls):
  per block of 32 along K, `amax / 6` in float32 rounded up to a power of two (its exponent
  byte is the scale), the values divided by it (multiplied by its reciprocal) and rounded to
  E2M1 on their bits, halves away from zero, saturating at 6. A tensor that came out of
  `dequantize` quantizes back to values that dequantize to the same numbers.
"""

from __future__ import annotations

from functools import lru_cache

from .floatbits import bits_of, dtype_name, from_float32, name_of, to_float32
from ..core import ranges
from ..core.background import in_parallel
from .fp8 import CHUNK_ELEMENTS, compiled

BLOCK = 32  # values per scale
BYTES = BLOCK // 2  # bytes per block
FP4_VALUES = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0)


def dequantized_shape(blocks_shape: tuple[int, ...]) -> tuple[int, ...]:
    """(E, N, G, 16) -> (E, 32 G, N)."""
    e, n, g, _ = blocks_shape
    return (e, g * BLOCK, n)


def quantized_shapes(shape: tuple[int, ...]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(E, K, N) -> the blocks' (E, N, K/32, 16) and the scales' (E, N, K/32)."""
    e, k, n = shape
    return (e, n, k // BLOCK, BYTES), (e, n, k // BLOCK)


def _pairs():
    """byte -> its two values, low nibble first, float32."""
    import numpy as np

    values = np.array(FP4_VALUES, np.float32)
    byte = np.arange(256)
    return np.stack([values[byte & 0xF], values[byte >> 4]], axis=-1)


@lru_cache(maxsize=None)
def _table(out_name: str):
    """(scale byte * 256 + block byte) -> the byte's two output values, as one unsigned
    integer of twice the output's width. Each is `ldexp(value, scale - 127)` in float32
    rounded to the output dtype, exactly what the element-wise computation gives, since a
    value depends on those two bytes alone."""
    import numpy as np

    from ..core.dtypes import STORAGE

    exponents = (np.arange(256, dtype=np.int32) - 127)[:, None, None]
    with np.errstate(over="ignore"):  # past the largest float: infinity, as ldexp gives
        values = np.ldexp(_pairs()[None], exponents)  # (256 scales, 256 bytes, 2), float32
        pairs = np.empty(values.shape, STORAGE[out_name])
        from_float32(values, out_name, pairs)
    return pairs.view(np.dtype(f"<u{2 * pairs.itemsize}")).reshape(256 * 256)


def _rows(n: int, per_row: int) -> int:
    return max(1, min(n, CHUNK_ELEMENTS // max(1, per_row)))


def dequantize(blocks, scales, out_dtype):
    """`blocks` (E, N, G, 16) and `scales` (E, N, G), both uint8 -> (E, 32 G, N) in `out_dtype`
    (bfloat16, float16, float32: a name or dtype), as mapspec holds it (bf16 as uint16 bits)."""
    import numpy as np

    from ..core.dtypes import STORAGE

    out_name = dtype_name(out_dtype)
    if blocks.ndim != 4 or blocks.shape[-1] != BYTES or tuple(scales.shape) != tuple(blocks.shape[:-1]):
        raise ValueError(f"MXFP4 blocks {tuple(blocks.shape)} and scales {tuple(scales.shape)} do not fit "
                         f"(expected (E, N, G, {BYTES}) and (E, N, G))")
    table = _table(out_name)
    e_count, n, g, _ = blocks.shape
    k = g * BLOCK
    out = np.empty((e_count, k, n), STORAGE[out_name])
    step = _rows(n, k)

    fast = compiled()

    def one(job) -> None:
        e, n0, n1 = job
        if fast:  # one pass, straight into the swapped layout
            fast.mxfp4_dequantize(blocks[e, n0:n1], scales[e, n0:n1], table, out[e, :, n0:n1])
            return
        index = np.empty((n1 - n0, g, BYTES), np.intp)
        np.copyto(index, scales[e, n0:n1, :, None], casting="unsafe")
        index <<= 8
        index |= blocks[e, n0:n1]
        pairs = np.take(table, index)  # (rows, G, 16) pairs of output values
        out[e, :, n0:n1] = pairs.view(out.dtype).reshape(n1 - n0, k).T  # into the swapped layout

    in_parallel(((e, n0, min(n, n0 + step)) for e in range(e_count) for n0 in range(0, n, step)), one)
    if out_name == "float16":  # a value times its scale past float16's range: refused, not infinity
        ranges.check_half_finite(out, "dequantize(mxfp4)")
    return out


def _e2m1_codes(q):
    """float32 values (already divided by their block's scale) -> 4-bit E2M1 codes, from
    their bits: sign, then exponent and the top mantissa bits rounded half up, at most 7."""
    import numpy as np

    bits = q.view(np.uint32)
    signs = (bits >> 28) & 0x8
    exponents = (bits >> 23) & 0xFF
    mantissas = bits & 0x7FFFFF
    below = exponents < 127  # below 1.0: E2M1's subnormal range
    shift = np.minimum(np.where(below, 126 - exponents, 0), 31)
    mantissas = np.where(below, (0x400000 | (mantissas >> 1)) >> shift, mantissas)
    exponents = np.maximum(exponents, 126) - 126
    codes = np.minimum((((exponents << 2) | (mantissas >> 21)) + 1) >> 1, 7)
    return (signs | codes).astype(np.uint8)


def quantize(x, dtype: str | None = None, scales_only: bool = False):
    """`x` (E, K, N), bf16/fp16/fp32 (bits need `dtype`) with K a multiple of 32 ->
    (blocks (E, N, K/32, 16), scales (E, N, K/32)), both uint8; `scales_only`: (None, scales)."""
    import numpy as np

    dtype = name_of(x, dtype)
    x = bits_of(x, dtype)
    if x.ndim != 3 or x.shape[1] % BLOCK:
        raise ValueError(f"MXFP4 quantizes (E, K, N) tensors with K a multiple of {BLOCK}, not {tuple(x.shape)}")
    e_count, k, n = x.shape
    g = k // BLOCK
    blocks_shape, scales_shape = quantized_shapes(x.shape)
    blocks = np.empty(blocks_shape if not scales_only else (0,) * 4, np.uint8)
    scales = np.empty(scales_shape, np.uint8)
    step = _rows(n, k)
    for e in range(e_count):
        for n0 in range(0, n, step):
            n1 = min(n, n0 + step)
            work = np.empty((n1 - n0, k), np.float32)
            to_float32(x[e, :, n0:n1].T, dtype, work)
            work = work.reshape(n1 - n0, g, BLOCK)
            amax = np.abs(work).max(axis=-1)
            if not np.isfinite(amax).all():
                raise ranges.not_finite("mxfp4")
            rounded = ((amax / np.float32(6.0)).view(np.uint32) + 0x7FFFFF) & 0x7F800000
            scales[e, n0:n1] = (rounded >> 23).astype(np.uint8)
            if scales_only:
                continue
            power = rounded.view(np.float32)
            with np.errstate(divide="ignore"):
                factor = np.where(power == 0, np.float32(0.0), np.float32(1.0) / power)
            work *= factor[..., None]
            codes = _e2m1_codes(work).reshape(n1 - n0, g, BYTES, 2)
            blocks[e, n0:n1] = codes[..., 0] | (codes[..., 1] << 4)
    return (None if scales_only else blocks), scales
