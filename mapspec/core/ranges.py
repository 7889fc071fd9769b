"""Which values each dtype can hold, and the check that a cast's values fit the dtype they
go to.

A cast rounds, and that is its declared loss (`dtypes.exact`, the inverse's `--lossy`). What
it must not do is turn a value into a different kind of value: a finite float past the
target's largest becomes infinity (float16, float8_e5m2), NaN (float8_e4m3fn) or the
largest value (float4, which saturates); a NaN becomes -0 in a float4; an integer past the
target's range wraps around; a float into an integer does too, or becomes garbage if NaN.
numpy, torch and ml_dtypes all do exactly that, without a word: a model written that way
loads and runs and is wrong. So mapspec refuses such a cast (`ConversionError`), saying how
many values and the largest.

The check costs a min and a max per slice of values, and nothing where every value of the
source dtype fits the target (a widening cast: float16 -> float32, int8 -> float16)."""

from __future__ import annotations

import math
from functools import lru_cache

from .lazy import numpy as np

# float dtype -> (largest finite value, significand bits with the implicit one, has infinity,
# has NaN, signed)
_FLOATS: dict[str, tuple[float, int, bool, bool, bool]] = {
    "float64": (1.7976931348623157e308, 53, True, True, True),
    "float32": (3.4028234663852886e38, 24, True, True, True),
    "float16": (65504.0, 11, True, True, True),
    "bfloat16": (3.3895313892515355e38, 8, True, True, True),
    "float8_e4m3fn": (448.0, 4, False, True, True),
    "float8_e4m3fnuz": (240.0, 4, False, True, True),
    "float8_e5m2": (57344.0, 3, True, True, True),
    "float8_e5m2fnuz": (57344.0, 3, False, True, True),
    "float8_e8m0fnu": (2.0 ** 127, 1, False, True, False),  # powers of two only: no sign, no zero
    "float4_e2m1fn": (6.0, 2, False, False, True),
}
_INTS: dict[str, tuple[int, int]] = {
    "int8": (-2 ** 7, 2 ** 7 - 1), "int16": (-2 ** 15, 2 ** 15 - 1), "int32": (-2 ** 31, 2 ** 31 - 1),
    "int64": (-2 ** 63, 2 ** 63 - 1), "uint8": (0, 2 ** 8 - 1), "uint16": (0, 2 ** 16 - 1),
    "uint32": (0, 2 ** 32 - 1), "uint64": (0, 2 ** 64 - 1),
}


def overflow_at(name: str) -> float:
    """The smallest magnitude a float dtype does not hold: its largest finite value plus
    half a step there, or just past that where the tie rounds to the largest (its significand
    even, as float8_e4m3fn's 448). Below it a value rounds to a finite one; from it on, to
    infinity, NaN or, saturating, the largest."""
    largest, digits = _FLOATS[name][:2]
    if name == "float64":
        return math.inf
    step = 2.0 ** (math.floor(math.log2(largest)) - digits + 1)
    limit = largest + step / 2
    return math.nextafter(limit, math.inf) if (largest / step) % 2 == 0 else limit


@lru_cache(maxsize=None)
def bounds(src: str, dst: str) -> tuple[float, float] | None:
    """The open interval of `src` values a cast to `dst` keeps in range, or None where every
    value of `src` fits (nothing to check). NaN and infinities are checked apart: they fit a
    float dtype that has NaN."""
    if dst in _FLOATS:
        limit = overflow_at(dst)
        _, _, _, has_nan, signed = _FLOATS[dst]
        if src in _FLOATS:
            s_largest, _, s_inf, s_nan, s_signed = _FLOATS[src]
            if s_largest < limit and (has_nan or not (s_inf or s_nan)) and (signed or not s_signed):
                return None
        elif src in _INTS:
            lo, hi = _INTS[src]
            if -limit < lo and hi < limit and (signed or lo >= 0):
                return None
        else:
            return None  # bool, complex: not range-checked
        return (-limit if signed else 0.0), limit
    if dst in _INTS:
        lo, hi = _INTS[dst]
        if src in _INTS and _INTS[src][0] >= lo and _INTS[src][1] <= hi:
            return None
        if src not in _INTS and src not in _FLOATS:
            return None
        return lo - 1.0, hi + 1.0  # a float between hi and hi + 1 truncates to hi
    return None


def holds(dst: str) -> str:
    """What `dst` holds, in words."""
    if dst in _INTS:
        lo, hi = _INTS[dst]
        return f"integers from {lo} to {hi}"
    largest, _, _, has_nan, signed = _FLOATS[dst]
    words = f"magnitudes up to {_number(largest)}" if signed else f"positive values up to {_number(largest)}"
    return words + ("" if has_nan else ", and no NaN or infinity")


def check(values: "np.ndarray", src: str, dst: str) -> None:
    """Raise ConversionError if casting `values` (numbers of dtype `src`: bfloat16 as its
    float32 values) to `dst` would turn some into other kinds of values (see the module)."""
    span = bounds(src, dst)
    if span is None or values.size == 0:
        return
    low, high = np.float64(span[0]), np.float64(span[1])  # compared as float64, not rounded to values' dtype
    lo, hi = values.min(), values.max()  # NaN wins both: it takes the careful path below
    if low < lo and hi < high:
        return
    floating = values.dtype.kind == "f"
    finite = np.isfinite(values) if floating else np.ones(values.shape, bool)
    outside = finite & ((values <= low) | (values >= high))
    if outside.any():
        far = values[outside]
        worst = far[np.argmax(np.abs(far.astype(np.float64)))].item()
        raise _error(f"cast({dst}): {_count(int(outside.sum()), src)} past what {dst} holds ({holds(dst)}), "
                     f"the farthest {_number(worst)}; cast to a wider dtype, or scale the values first")
    if floating and not finite.all() and (dst in _INTS or not _FLOATS[dst][3]):
        n = int((~finite).sum())
        raise _error(f"cast({dst}): {_count(n, src)} {'is' if n == 1 else 'are'} NaN or infinite, which {dst} "
                     f"cannot hold ({holds(dst)})")


def check_bf16_bits(bits: "np.ndarray", dst: str) -> None:
    """`check` for bfloat16 values given as their bits, in one pass over them where none is
    past the range (bf16's magnitudes are ordered as its bits without the sign)."""
    span = bounds("bfloat16", dst)
    if span is None or bits.size == 0:
        return
    # every magnitude below the nearer bound fits (an unsigned target's is -1 or 0: so few pass)
    if span[0] < 0 and int(np.bitwise_and(bits, 0x7FFF).max()) < _bf16_from(min(-span[0], span[1])):
        return
    wide = bits.astype(np.uint32)
    wide <<= 16
    check(wide.view(np.float32), "bfloat16", dst)


def check_half_finite(out: "np.ndarray", what: str) -> None:
    """Raise ConversionError where values computed into float16 (a dequantize: weight times
    scale, rounded once) overflowed: an infinity in `out`, whose sources hold none (float8
    e4m3, float4 and E8M0 scales have no infinity; NaN stays NaN)."""
    over = np.bitwise_and(out.view(np.uint16), 0x7FFF) == 0x7C00
    if over.any():
        raise _error(f"{what} to float16: {_count(int(over.sum()), 'float16')} would be past what float16 holds "
                     f"({holds('float16')}); dequantize to bfloat16 or float32")


@lru_cache(maxsize=None)
def _bf16_from(x: float) -> int:
    """The bits (without sign) of the smallest bfloat16 at or past magnitude x."""
    b = int(np.array([min(x, 3.4e38)], np.float32).view(np.uint32)[0])
    return min((b >> 16) + ((b & 0xFFFF) != 0), 0x7F80)


def not_finite(target: str):
    """The refusal to quantize NaN or infinity to a block format (`target`: fp8, mxfp4, a
    ggml type): the block's scale would be NaN or infinite, or, as torch computes FP8,
    448 / inf = 0 would zero every other value of the block."""
    return _error(f"cannot quantize to {target}: the tensor holds NaN or infinite values")


def _error(message: str):
    from ..errors import ConversionError
    return ConversionError(message)


def _count(n: int, dtype: str) -> str:
    return f"1 {dtype} value" if n == 1 else f"{n} {dtype} values"


def _number(x: float) -> str:
    """x as a person reads it: whole numbers in full up to 2**64, others to 6 digits."""
    if isinstance(x, int) or (math.isfinite(x) and x == int(x) and abs(x) <= 2 ** 64):
        return str(int(x))
    return f"{x:.6g}"
