"""ggml's block quantization, for GGUF tensors: Q8_0, Q4_0, Q4_1, Q5_0, Q5_1 quantized and
dequantized here (numpy, vectorised, a bounded number of blocks at a time, on two threads), every other block
type gguf-py can dequantize (K-quants, IQ types, TQ, MXFP4 ...) dequantized through it (the
optional `gguf` package: `pip install mapspec[gguf]`).

The arithmetic is ggml's reference (ggml-quants.c), step for step in float32, so the bytes
equal gguf-py's `quants.quantize` and the values its `quants.dequantize` (tests compare them
over many shapes and values):

    q8_0  d = max|x| / 127; q = round-half-away(x * (1/d)), int8; stored: f16 d, 32 x int8
    q4_0  d = x[argmax|x|] / -8; q = trunc(x * (1/d) + 8.5) clipped to 0..15
    q4_1  d = (max - min) / 15, m = min; q = trunc((x - m) * (1/d) + 0.5) clipped to 0..15
    q5_0  d = x[argmax|x|] / -16; q = trunc(x * (1/d) + 16.5) clipped to 0..31
    q5_1  d = (max - min) / 31, m = min; q = trunc((x - m) * (1/d) + 0.5) clipped to 0..31

(1/d is 0 where d is 0.) Where ggml would store garbage, mapspec refuses (ConversionError):
a NaN or infinite input, or a block whose scale or minimum passes float16's range. 4-bit values: element j < 16 in the low nibble of byte j, element
j + 16 in its high nibble; 5-bit values add their fifth bits as a little-endian u32 `qh`
(bit j for element j) before the nibbles. Values: q8_0 d * q, q4_0 d * (q - 8), q4_1 d * q + m,
q5_0 d * (q - 16), q5_1 d * q + m, in float32 from the f16 d and m.

Arrays of a block dtype are uint8 with the tensor's shape except the last dimension, which
counts bytes (`dtypes.stored_shape`)."""

from __future__ import annotations

from ..core.lazy import numpy as np

from ..core import dtypes, ranges
from ..errors import ConversionError, UsageError
from ..core.background import in_parallel  # chunks on both cores: numpy releases the GIL
from .fp8 import compiled  # the C loops where they are built

QUANTIZERS = ("q8_0", "q4_0", "q4_1", "q5_0", "q5_1")  # written by mapspec
FLOATS = ("float32", "float16", "bfloat16", "float64")
CHUNK_BLOCKS = 1 << 15  # blocks per numpy pass (one per thread): temporaries stay a few MiB


def _half_bytes(values) -> "np.ndarray":
    """float32 (n, 1) -> the f16 bytes (n, 2)."""
    return values.astype(np.float16).view(np.uint8)


def _inverse(d):
    """1/d in float32, 0 where d is 0 (ggml's `id = d ? 1/d : 0`)."""
    inv = np.zeros_like(d)
    np.divide(np.float32(1), d, out=inv, where=d != 0)
    return inv


def _signed_max(b):
    """Each block's element of largest magnitude, with its sign (the first if tied)."""
    i = np.abs(b).argmax(axis=1)[:, None]
    return np.take_along_axis(b, i, axis=1)


def _nibbles(q):
    """32 codes per block (uint8 < 16 each) -> 16 bytes: element j low, element j + 16 high."""
    return q[:, :16] | (q[:, 16:] << np.uint8(4))


def _fifth_bits(q):
    """Bit 4 of each of 32 codes -> a little-endian u32, bit j for element j (4 bytes)."""
    return np.packbits((q >> np.uint8(4)) & np.uint8(1), axis=1, bitorder="little")


def _q8_0(b):
    # On |b| as bits: their order is the values' (a NaN above infinity, so it still makes the
    # scale NaN and is refused), and a max over integers skips float max's NaN handling
    # (half the time). |b| * (1/d) is |b * (1/d)| exactly, so rounding the magnitude half
    # up and giving the sign back is C's roundf: adding the float below 0.5 and truncating
    # (the cast) rounds 0.49999997 down and every x.5 away from zero, exactly in float32.
    mag = b.view(np.uint32) & np.uint32(0x7FFFFFFF)
    d = mag.max(axis=1, keepdims=True).view(np.float32) / np.float32(127)
    v = mag.view(np.float32)
    v *= _inverse(d)
    v += np.float32(0.49999997)  # nextafter(0.5, 0)
    q = v.astype(np.int8)
    sign = (b.view(np.int32) >> 31).astype(np.int8)  # -1 where negative, else 0
    q ^= sign
    q -= sign  # two's complement negation where negative
    return np.concatenate([_half_bytes(d), q.view(np.uint8)], axis=1)


def _q4_0(b):
    d = _signed_max(b) / np.float32(-8)
    q = np.trunc(b * _inverse(d) + np.float32(8.5)).astype(np.uint8).clip(0, 15)
    return np.concatenate([_half_bytes(d), _nibbles(q)], axis=1)


def _q4_1(b):
    lo = b.min(axis=1, keepdims=True)
    d = (b.max(axis=1, keepdims=True) - lo) / np.float32(15)
    q = np.trunc((b - lo) * _inverse(d) + np.float32(0.5)).astype(np.uint8).clip(0, 15)
    return np.concatenate([_half_bytes(d), _half_bytes(lo), _nibbles(q)], axis=1)


def _q5_0(b):
    d = _signed_max(b) / np.float32(-16)
    q = np.trunc(b * _inverse(d) + np.float32(16.5)).astype(np.uint8).clip(0, 31)
    return np.concatenate([_half_bytes(d), _fifth_bits(q), _nibbles(q & np.uint8(15))], axis=1)


def _q5_1(b):
    lo = b.min(axis=1, keepdims=True)
    d = (b.max(axis=1, keepdims=True) - lo) / np.float32(31)
    q = np.trunc((b - lo) * _inverse(d) + np.float32(0.5)).astype(np.uint8).clip(0, 31)
    return np.concatenate([_half_bytes(d), _half_bytes(lo), _fifth_bits(q), _nibbles(q & np.uint8(15))], axis=1)


def _half(raw, at: int):
    """The f16 at byte `at` of each block, as float32 (n, 1)."""
    return raw[:, at:at + 2].copy().view(np.float16).astype(np.float32)


def _codes4(raw, at: int):
    """The 32 4-bit codes from 16 bytes at `at`: low nibbles are elements 0-15, high 16-31."""
    qs = raw[:, at:at + 16]
    return np.concatenate([qs & np.uint8(15), qs >> np.uint8(4)], axis=1)


def _codes5(raw, at: int):
    """The 32 5-bit codes: the u32 of fifth bits at `at`, then the nibbles."""
    high = np.unpackbits(raw[:, at:at + 4], axis=1, bitorder="little") << np.uint8(4)
    return _codes4(raw, at + 4) | high


def _d_q8_0(raw):
    return raw[:, 2:].view(np.int8).astype(np.float32) * _half(raw, 0)


def _d_q4_0(raw):
    return _half(raw, 0) * (_codes4(raw, 2).astype(np.int8) - np.int8(8)).astype(np.float32)


def _d_q4_1(raw):
    return _half(raw, 0) * _codes4(raw, 4).astype(np.float32) + _half(raw, 2)


def _d_q5_0(raw):
    return _half(raw, 0) * (_codes5(raw, 2).astype(np.int8) - np.int8(16)).astype(np.float32)


def _d_q5_1(raw):
    return _half(raw, 0) * _codes5(raw, 4).astype(np.float32) + _half(raw, 2)


_QUANTIZE = {"q8_0": _q8_0, "q4_0": _q4_0, "q4_1": _q4_1, "q5_0": _q5_0, "q5_1": _q5_1}
_DEQUANTIZE = {"q8_0": _d_q8_0, "q4_0": _d_q4_0, "q4_1": _d_q4_1, "q5_0": _d_q5_0, "q5_1": _d_q5_1}


def quantize(array, src: str, qtype: str):
    """Values of dtype `src` (bf16 as bits) -> `qtype` blocks, uint8 (..., row bytes)."""
    per, size = dtypes.BLOCKS[qtype]
    shape = tuple(array.shape)
    kernel = _QUANTIZE[qtype]
    blocks = array.reshape(-1, per)
    out = np.empty((blocks.shape[0], size), np.uint8)
    halves = 4 if qtype in ("q4_1", "q5_1") else 2  # the f16 scale (and minimum) of each block

    fast = compiled() if qtype == "q8_0" else None

    def widened(part) -> "np.ndarray":
        return np.asarray(dtypes.cast(part, src, "float32") if src != "float32" else part, np.float32)

    def one(at: int) -> None:
        part = blocks[at:at + CHUNK_BLOCKS]
        done = out[at:at + CHUNK_BLOCKS]
        if fast is not None and src == "bfloat16":  # the C loop reads bf16 bits itself (`kernels.c`)
            fast.quantize_q8_0(part, src, done)
            values = None
        elif fast is not None:
            values = widened(part)
            fast.quantize_q8_0(values, "float32", done)
        else:
            values = widened(part)
            with np.errstate(all="ignore"):  # checked below: ggml would store an infinite scale
                done[...] = kernel(values)
        # A NaN or infinite value makes its block's scale (or minimum) NaN or infinite too, so
        # the scales are checked, not every value: one pass over the values less.
        if np.isfinite(done[:, :halves].copy().view(np.float16)).all():
            return
        values = widened(part) if values is None else values
        if not np.isfinite(values).all():
            raise ranges.not_finite(qtype)
        raise ConversionError(f"cannot quantize to {qtype}: values up to {np.abs(values).max():.4g} need a "
                                  "block scale past float16's range (ggml would store an infinite scale)")
    in_parallel(range(0, blocks.shape[0], CHUNK_BLOCKS), one)
    return out.reshape(dtypes.stored_shape(shape, qtype))


def dequantize(raw, qtype: str, shape: tuple[int, ...], dst: str = "float32"):
    """`qtype` blocks, uint8 (..., row bytes) -> values of shape `shape` as dtype `dst`."""
    per, size = dtypes.BLOCKS[qtype]
    if qtype not in _DEQUANTIZE:
        require(qtype)
    kernel = _DEQUANTIZE.get(qtype) or _gguf_kernel(qtype)
    blocks = np.ascontiguousarray(raw).reshape(-1, size)
    out = np.empty((blocks.shape[0], per), dtypes.STORAGE[dst])

    def one(at: int) -> None:
        values = kernel(blocks[at:at + CHUNK_BLOCKS])
        out[at:at + CHUNK_BLOCKS] = dtypes.cast(values, "float32", dst) if dst != "float32" else values
    in_parallel(range(0, blocks.shape[0], CHUNK_BLOCKS), one)
    return out.reshape(shape)


def gguf_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("gguf") is not None


def require(qtype: str) -> None:
    """Refuse, before anything runs, a block type mapspec can dequantize only through gguf-py
    when that is not installed, or when gguf-py has no dequantizer for it either."""
    if qtype in _DEQUANTIZE:
        return
    if not gguf_available():
        raise UsageError(f"dequantizing {qtype} tensors needs the gguf package (pip install 'mapspec[gguf]'); "
                         f"mapspec itself dequantizes {', '.join(QUANTIZERS)}")
    try:
        _gguf_kernel(qtype)(np.zeros((1, dtypes.BLOCKS[qtype][1]), np.uint8))
    except NotImplementedError:
        raise UsageError(f"no dequantizer for {qtype} tensors (gguf-py has none either); they can be "
                         "copied GGUF to GGUF as they are") from None


def _gguf_kernel(qtype: str):
    from gguf.constants import GGMLQuantizationType
    from gguf.quants import dequantize as gguf_dequantize

    kind = GGMLQuantizationType[qtype.upper()]

    def kernel(blocks):
        with np.errstate(all="ignore"):  # NaN scales in the file dequantize to NaN, as in gguf-py
            return gguf_dequantize(blocks, kind)
    return kernel
