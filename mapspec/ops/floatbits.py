"""Low-precision floats to and from float32 in plain numpy, on the bits mapspec holds them as
(bf16 as uint16, float8 as uint8), for the quantization kernels.

ml_dtypes defines these dtypes and the tests check every conversion here against it, bit
for bit; the kernels do not call it, because importing it costs 1-2 s of CPU (it registers
every cast between its dozen dtypes), more than dequantizing a whole shard. Conversions to a
narrower float round to nearest even, as torch and ml_dtypes do."""

from __future__ import annotations

from functools import lru_cache

WIDE = ("bfloat16", "float16", "float32")


@lru_cache(maxsize=None)
def byte_values(name: str):
    """float32 value of each of the 256 codes of a one-byte float (exact: each is a float32)."""
    import numpy as np

    c = np.arange(256)
    sign = np.where(c & 0x80, -1.0, 1.0)
    if name == "float8_e4m3fn":  # bias 7, no infinities, NaN at S.1111.111
        e, m = (c >> 3) & 0xF, c & 7
        values = sign * np.where(e == 0, m * 2.0 ** -9, (8 + m) * np.exp2(e - 10.0))
        values[(c & 0x7F) == 0x7F] = np.nan
    elif name == "float8_e5m2":  # bias 15, IEEE-like: infinities and NaNs at exponent 31
        e, m = (c >> 2) & 0x1F, c & 3
        values = sign * np.where(e == 0, m * 2.0 ** -16, (4 + m) * np.exp2(e - 17.0))
        values[(e == 31) & (m == 0)] = sign[(e == 31) & (m == 0)] * np.inf
        values[(e == 31) & (m != 0)] = np.nan
    elif name == "float8_e8m0fnu":  # exponent only, bias 127; 0xFF is NaN
        values = np.exp2(c - 127.0)
        values[255] = np.nan
    else:
        from ..core.dtypes import ml_dtype

        return np.arange(256, dtype=np.uint8).view(ml_dtype(name)).astype(np.float32)
    return values.astype(np.float32)


def to_float32(bits, name: str, out, index=None) -> None:
    """`out[...] = float32(bits as `name`)`: a table lookup for one-byte floats (`index`: an
    intp scratch buffer of the same shape, or None), bf16 bits shifted, others cast."""
    import numpy as np

    if name in WIDE[1:]:
        np.copyto(out, bits, casting="unsafe")
    elif name == "bfloat16":
        wide = out.view(np.uint32)
        np.copyto(wide, bits.view(np.uint16), casting="unsafe")
        wide <<= 16
    else:
        index = np.empty(bits.shape, np.intp) if index is None else index
        np.copyto(index, bits.view(np.uint8), casting="unsafe")
        np.take(byte_values(name), index, out=out)


def to_bfloat16(x, out) -> None:
    """`out` (uint16) = float32 `x` rounded to bf16 bits, nearest even; NaN stays a quiet NaN."""
    import numpy as np

    bits = x.view(np.uint32)
    rounded = (bits >> 16) & 1
    rounded += 0x7FFF
    rounded += bits
    rounded >>= 16
    np.copyto(out, rounded, casting="unsafe")
    nan = np.isnan(x)
    if nan.any():
        out[nan] = (bits[nan] >> 16) | 0x0040


def to_e4m3(x):
    """float32 values within [-448, 448] (or NaN) -> float8_e4m3fn codes: the mantissa
    rounded to 3 bits, nearest even, on the float32 bits; for the few elements with
    |x| < 2**-6 (zero and e4m3's subnormals) `rint(|x| * 512)`, and NaN -> 0x7F, both with
    the sign. Written as in-place passes over narrow arrays (no boolean masks over the
    whole tensor, no table gathers): quantizing is bound by this function."""
    import numpy as np

    bits = x.reshape(-1).view(np.uint32)
    n = bits.size
    rounded = bits >> 20
    rounded &= 1
    rounded += bits
    # + 0x7FFFF rounds to nearest even (with the bit above); - 960 << 20 rebases the
    # exponent from 127 to 7. Wrapping below zero only happens for the exceptional elements.
    rounded += np.uint32((0x7FFFF - (960 << 20)) & 0xFFFFFFFF)
    rounded >>= 20
    code = np.empty(n, np.uint8)
    np.copyto(code, rounded, casting="unsafe")  # low 8 bits: the magnitude's code for normals
    del rounded
    top = np.empty(n, np.uint16)
    np.right_shift(bits, 16, out=top, casting="unsafe")
    sign = np.empty(n, np.uint8)
    np.right_shift(top, 8, out=sign, casting="unsafe")
    sign &= 0x80
    code |= sign
    top &= 0x7FFF  # |x| < 2**-6 or NaN, as one unsigned comparison on the top 16 bits
    top -= 0x3C80
    odd = np.flatnonzero(top >= 0x7F80 - 0x3C80)
    if odd.size:
        xs = x.reshape(-1)[odd]
        with np.errstate(invalid="ignore"):
            small = np.rint(np.abs(xs) * np.float32(512))
        fixed = np.where(np.isnan(xs), np.float32(0x7F), small).astype(np.uint8)
        fixed |= sign[odd]
        code[odd] = fixed
    return code.reshape(x.shape)


def from_float32(x, name: str, out) -> None:
    """`out` (the storage of `name`) = float32 `x` rounded once to `name`."""
    import numpy as np

    if name == "bfloat16":
        to_bfloat16(x, out)
    elif name == "float8_e4m3fn":
        out[...] = to_e4m3(np.clip(x, -448, 448))
    elif name in WIDE[1:]:
        # past float16's range: infinity. A dequantize's table holds every code, used or not,
        # so it checks the values it wrote (ranges.check_half_finite), not the table
        with np.errstate(over="ignore"):
            np.copyto(out, x, casting="unsafe")
    else:
        from ..core.dtypes import ml_dtype

        out[...] = x.astype(ml_dtype(name)).view(np.uint8)


def power_of_two_codes(x):
    """E8M0 codes of float32 powers of two from 2**-126 up (their exponent bits)."""
    import numpy as np

    return (x.view(np.uint32) >> 23).astype(np.uint8)


def name_of(array, name: str | None) -> str:
    """The dtype name of an array: `name` when given (bits arrays), else its own dtype's
    (numpy float32/float16, or an ml_dtypes array)."""
    if name is not None:
        return name
    dtype = array.dtype
    if dtype.kind == "V" or dtype.name in WIDE:
        return dtype.name
    raise ValueError(f"an array of {dtype} bits needs its dtype's name")


def dtype_name(dtype) -> str:
    """A dtype given as a name (never importing ml_dtypes for it) or as a dtype."""
    import numpy as np

    return dtype if isinstance(dtype, str) else np.dtype(dtype).name


def bits_of(array, name: str):
    """The array as mapspec holds `name` (an ml_dtypes array viewed as its bits)."""
    from ..core.dtypes import STORAGE

    return array.view(STORAGE[name]) if array.dtype.kind == "V" else array
