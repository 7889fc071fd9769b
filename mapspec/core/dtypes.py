"""Tensor dtypes by name, with the facts mapspec needs about each: how many bits an element
takes on disk and which numpy dtype holds its elements in memory.

numpy itself has no bfloat16, float8 or float4, so those travel as their raw bits (bf16 as
uint16, float8 as uint8, float4 as one uint8 code per element, the high nibble zero) and their
name says what the bits mean; `ml_dtypes` gives them values where values are needed (casts,
dequantizing), imported on first use like numpy (see `lazy`).

Packed dtypes take fewer bits than a byte per element: float4 (two per byte, the first in the
low nibble, as torch's float4_e2m1fn_x2 and safetensors' F4 store them) and float6 (four in
three bytes). A tensor of them must fill whole bytes; `nbytes` counts the bytes it fills. A
float6 tensor is copied byte for byte only: mapspec does not read its elements."""

from __future__ import annotations

import sys
from functools import lru_cache

from . import ranges
from .lazy import numpy as np

# name -> (numpy dtype code that holds an element in memory, bits per element on disk);
# little-endian everywhere on disk. The numpy dtypes themselves (`STORAGE`) are made on first
# use: a rename-only conversion needs only names and sizes, and then never imports numpy.
_CODES: dict[str, tuple[str, int]] = {
    "float64": ("<f8", 64),
    "float32": ("<f4", 32),
    "float16": ("<f2", 16),
    "bfloat16": ("<u2", 16),
    "int64": ("<i8", 64),
    "int32": ("<i4", 32),
    "int16": ("<i2", 16),
    "int8": ("i1", 8),
    "uint64": ("<u8", 64),
    "uint32": ("<u4", 32),
    "uint16": ("<u2", 16),
    "uint8": ("u1", 8),
    "bool": ("?", 8),
    "complex64": ("<c8", 64),
    "float8_e4m3fn": ("u1", 8),
    "float8_e5m2": ("u1", 8),
    "float8_e8m0fnu": ("u1", 8),
    "float8_e4m3fnuz": ("u1", 8),
    "float8_e5m2fnuz": ("u1", 8),
    "float4_e2m1fn": ("u1", 4),
    "float6_e2m3fn": ("u1", 6),
    "float6_e3m2fn": ("u1", 6),
}
NAMES = tuple(_CODES)
# The dtypes numpy arrays hold as themselves (bf16 as its bits, which formats tag): what
# .npz and .wts files can hold.
NUMPY_NAMES = NAMES[:13]
# Held as raw bits, given values by ml_dtypes (the same names there).
LOW_PRECISION = frozenset(n for n in NAMES if n.startswith(("float8_", "float4_", "float6_")))
# Elements mapspec does not read (copied byte for byte only).
BYTES_ONLY = frozenset({"float6_e2m3fn", "float6_e3m2fn"})


@lru_cache(maxsize=None)
def _storage() -> dict[str, "np.dtype"]:
    plain = {k: np.dtype(code) for k, (code, _) in _CODES.items()}
    return {**plain, **{k: np.dtype("u1") for k in BLOCKS}}  # block dtypes travel as their bytes


def __getattr__(name: str):
    if name == "STORAGE":  # name -> the numpy dtype that stores it
        return _storage()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


ALIASES = {
    "float": "float32", "fp32": "float32", "f32": "float32",
    "half": "float16", "fp16": "float16", "f16": "float16",
    "double": "float64", "fp64": "float64", "f64": "float64",
    "bf16": "bfloat16",
    "long": "int64", "int": "int32", "short": "int16",
    "byte": "uint8", "char": "int8",
    "fp8": "float8_e4m3fn", "e4m3": "float8_e4m3fn", "float8_e4m3": "float8_e4m3fn", "e5m2": "float8_e5m2",
    "e8m0": "float8_e8m0fnu", "float8_e8m0": "float8_e8m0fnu", "fp4": "float4_e2m1fn", "complex": "complex64",
}


# Dimensions of a tensor mapspec reads: numpy 1.x arrays have at most 32 (numpy 2.x: 64).
MAX_NDIM = 32
MAX_NUMEL = 2 ** 63 - 1  # torch's and numpy's sizes are int64


def check_shape(shape: tuple, what: str) -> tuple[int, ...]:
    """`shape` if it is one a tensor can have: at most MAX_NDIM non-negative integer sizes
    whose product, ignoring zeros, fits int64. Raises CheckpointError naming `what`."""
    from ..errors import CheckpointError

    if not isinstance(shape, (tuple, list)) or len(shape) > MAX_NDIM:
        n = len(shape) if isinstance(shape, (tuple, list)) else "?"
        raise CheckpointError(f"{what} has {n} dimensions; mapspec reads at most {MAX_NDIM}")
    n = 1
    for d in shape:
        if not _is_size(d):
            raise CheckpointError(f"{what} has an invalid size {str(d)[:40]!r} in its shape")
        n *= max(int(d), 1)
        if n > MAX_NUMEL:
            raise CheckpointError(f"{what} has a shape whose size overflows 64 bits")
    return tuple(int(d) for d in shape)


def _is_size(d) -> bool:
    """A non-negative integer, Python's or numpy's (never a bool)."""
    if isinstance(d, int):
        return not isinstance(d, bool) and d >= 0
    numpy = sys.modules.get("numpy")  # a numpy scalar means numpy is loaded; else no import for it
    return numpy is not None and isinstance(d, numpy.integer) and d >= 0


def canonical(name: str) -> str | None:
    """The canonical dtype name for `name` (or an alias), or None."""
    name = ALIASES.get(name, name)
    return name if name in _CODES else None


def of_array(arr: np.ndarray) -> str:
    """The dtype name of a numpy array (never bfloat16 as bits: that needs a tag; an
    ml_dtypes array by its dtype's name)."""
    for name, dt in _storage().items():
        if name != "bfloat16" and name not in LOW_PRECISION and arr.dtype == dt:
            return name
    if arr.dtype.kind == "V" and arr.dtype.name in _CODES:  # ml_dtypes: bfloat16, float8_e4m3fn...
        return arr.dtype.name
    if arr.dtype.kind in "fiubc" and arr.dtype.byteorder == ">":
        return of_array(arr.astype(arr.dtype.newbyteorder("<")))
    raise TypeError(f"unsupported array dtype {arr.dtype}")


def bits(name: str) -> int:
    """Bits an element takes on disk."""
    return _CODES[name][1]


def itemsize(name: str) -> int:
    """Bytes an element takes on disk; a packed dtype has none of its own (see `bits`)."""
    b = _CODES[name][1]
    if b % 8:
        raise ValueError(f"{name} packs several elements into a byte")
    return b // 8


def packed(name: str) -> bool:
    return _CODES[name][1] < 8


def nbytes(shape: tuple[int, ...], name: str) -> int:
    """Bytes a tensor of this shape and dtype takes when stored (a packed tensor's last
    partial byte counted whole; `fills_bytes` says whether it has one; a ggml block dtype
    counts whole blocks along the last dimension)."""
    facts = BLOCKS.get(name)
    if facts is not None:
        n = facts[1]
        for s in stored_shape(shape, name)[:-1]:
            n *= s
        return n * (shape[-1] // facts[0]) if shape else 0
    n = _CODES[name][1]
    for s in shape:
        n *= s
    return -(-n // 8)


def fills_bytes(shape: tuple[int, ...], name: str) -> bool:
    """Whether the elements of a packed tensor end on a byte boundary (always true for the
    others), as safetensors requires."""
    n = _CODES[name][1]
    for s in shape:
        n *= s
    return n % 8 == 0


def check_elements(name: str) -> None:
    """Refuses (UsageError) to hold the elements of a dtype mapspec only copies."""
    if name in BYTES_ONLY:
        from ..errors import UsageError

        raise UsageError(f"{name} tensors are copied byte for byte only; mapspec does not read their elements "
                         "(no action can apply to them, and the output format must take byte copies)")


def stored(array: np.ndarray, name: str) -> np.ndarray:
    """The array as it is held in memory: the dtype's storage type, C order (0-d stays 0-d);
    an ml_dtypes array of the dtype becomes its bits."""
    check_elements(name)
    array = np.asarray(array)
    if array.dtype.kind == "V" and array.dtype.name == name:
        array = array.view(_storage()[name] if not packed(name) else np.uint8)
    return np.asarray(array, dtype=_storage()[name], order="C")


def raw(array: np.ndarray, name: str) -> memoryview:
    """The bytes of an array as they are stored on disk, without a copy when it is held
    that way already (packed dtypes: two float4 codes per byte, the first in the low nibble)."""
    held = stored(array, name).reshape(-1)
    if name == "float4_e2m1fn":
        if held.size % 2:
            raise ValueError(f"a float4 tensor of {held.size} elements does not fill whole bytes")
        held = (held[0::2] & 0x0F) | (held[1::2] << 4)
    return memoryview(held).cast("B")


def from_raw(buf: np.ndarray, shape: tuple[int, ...], name: str) -> np.ndarray:
    """The array held in memory for bytes `buf` (uint8) as stored on disk."""
    check_elements(name)
    if name == "float4_e2m1fn":
        codes = np.empty(buf.size * 2, np.uint8)
        codes[0::2] = buf & 0x0F
        codes[1::2] = buf >> 4
        return codes.reshape(shape)
    return buf.view(_storage()[name]).reshape(shape)


def ml_dtype(name: str):
    """The ml_dtypes numpy dtype of a bfloat16/float8/float4/float6 name."""
    from ..errors import UsageError

    try:
        import ml_dtypes
    except ImportError:
        raise UsageError(f"{name} values need ml_dtypes: pip install 'mapspec[lowp]'") from None
    dt = getattr(ml_dtypes, name, None)
    if dt is None:
        raise UsageError(f"{name} values need ml_dtypes 0.5 or later: pip install -U ml_dtypes")
    return np.dtype(dt)


def values(array: np.ndarray, name: str) -> np.ndarray:
    """An array held as bits (bfloat16, float8, float4) viewed as ml_dtypes values; other
    arrays as they are."""
    if name == "bfloat16" or name in LOW_PRECISION:
        check_elements(name)
        array = np.asarray(array)
        if array.dtype.kind == "V":
            return array
        return array.view(ml_dtype(name))
    return array


@lru_cache(maxsize=None)
def _bf16_to_f16_table() -> np.ndarray:
    with np.errstate(over="ignore"):  # bf16 beyond float16's range becomes infinity, as it should
        return _bf16_to_f32(np.arange(1 << 16, dtype=np.uint16)).astype(np.float16)


def _bf16_to_f32(bits: np.ndarray) -> np.ndarray:
    wide = bits.astype(np.uint32)
    wide <<= 16  # in place: one temporary, not two
    return wide.view(np.float32)


def _f32_to_bf16(values: np.ndarray) -> np.ndarray:
    # Round to nearest even, as torch does; NaN stays a quiet NaN.
    bits = np.asarray(values, dtype=np.float32, order="C").view(np.uint32)
    rounded = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)
    nan = np.isnan(values)
    if nan.any():
        rounded = np.where(nan, (bits >> 16).astype(np.uint16) | 0x0040, rounded)
    return rounded


def cast(arr: np.ndarray, src: str, dst: str) -> np.ndarray:
    """Convert values (not bits) from dtype `src` to `dst`; bf16, float8 and float4 on
    either side as their bits (those through ml_dtypes, rounding to nearest even). A value
    the cast would not keep in range (past float16's largest, NaN into float4, an integer
    that would wrap) is refused, not written as infinity, NaN or garbage (`ranges`)."""
    if src == dst:
        return arr
    if src in LOW_PRECISION or dst in LOW_PRECISION:
        wide = values(arr, src).astype(np.float32) if src != "bfloat16" else _bf16_to_f32(arr)
        ranges.check(wide, src, dst)
        if dst in LOW_PRECISION:
            check_elements(dst)
            return wide.astype(ml_dtype(dst)).view(np.uint8)
        return _checked_to(wide, dst)
    if src == "bfloat16" and dst == "float16":
        # A 64 Ki-entry table of every bf16's float16 (made by the path below, so the same
        # bits): one gather instead of numpy's float32 -> float16 loop, 3x slower. The cast
        # GGUF's f16 output is mostly made of.
        ranges.check_bf16_bits(arr, dst)
        return np.take(_bf16_to_f16_table(), arr.view(np.uint16))
    if src == "bfloat16":
        arr = _bf16_to_f32(arr)
        if dst == "float32":
            return arr
    ranges.check(arr, src, dst)
    return _checked_to(arr, dst)


def _checked_to(arr: np.ndarray, dst: str) -> np.ndarray:
    """Values already held to `dst`'s range (`ranges.check`) in `dst`."""
    if dst == "bfloat16":
        return _f32_to_bf16(arr.astype(np.float32, copy=False))
    return arr.astype(_storage()[dst], copy=False)


# Exact casts. Integers: how many value bits they hold and whether they are signed; floats:
# significand bits (with the implicit one) and largest exponent. A cast is exact when every
# value of the first dtype is a value of the second, so casting back gives the same bits.
_INT_BITS = {"bool": (1, False), "uint8": (8, False), "uint16": (16, False), "uint32": (32, False),
             "uint64": (64, False), "int8": (7, True), "int16": (15, True), "int32": (31, True), "int64": (63, True)}
_FLOAT_BITS = {"float16": (11, 15), "bfloat16": (8, 127), "float32": (24, 127), "float64": (53, 1023),
               # (their smallest values are values of every wider float here too)
               "float8_e4m3fn": (4, 8), "float8_e4m3fnuz": (4, 7), "float8_e5m2": (3, 15),
               "float8_e5m2fnuz": (3, 15), "float8_e8m0fnu": (1, 127), "float4_e2m1fn": (2, 2)}


def exact(src: str, dst: str) -> bool:
    """Whether cast(dst) keeps every value of `src` (int8 -> float32 does, float32 -> float16
    does not), so that casting back restores the bits."""
    if src == dst:
        return True
    if dst == "bool":
        return False
    if src in _INT_BITS:
        bits, signed = _INT_BITS[src]
        if dst in _FLOAT_BITS:
            return bits <= _FLOAT_BITS[dst][0]
        dbits, dsigned = _INT_BITS[dst]
        return dbits >= bits and (dsigned or not signed)
    if src in _FLOAT_BITS and dst in _FLOAT_BITS:
        return all(d >= s for s, d in zip(_FLOAT_BITS[src], _FLOAT_BITS[dst]))
    return False


# torch's dtype names (as `str(tensor.dtype)` without `torch.`, and the pickled aliases) -> mapspec's
TORCH_DTYPES = {
    "float64": "float64", "double": "float64", "float32": "float32", "float": "float32",
    "float16": "float16", "half": "float16", "bfloat16": "bfloat16", "int64": "int64", "long": "int64",
    "int32": "int32", "int": "int32", "int16": "int16", "short": "int16", "int8": "int8",
    "uint8": "uint8", "bool": "bool", "uint16": "uint16", "uint32": "uint32", "uint64": "uint64",
    "complex64": "complex64", "cfloat": "complex64",
    "float8_e4m3fn": "float8_e4m3fn", "float8_e5m2": "float8_e5m2", "float8_e8m0fnu": "float8_e8m0fnu",
    "float8_e4m3fnuz": "float8_e4m3fnuz", "float8_e5m2fnuz": "float8_e5m2fnuz",
}
# torch's packed dtype: one element of it is two float4 values in a byte; its shape's last
# dimension counts bytes, mapspec's (as safetensors') counts values.
TORCH_PACKED = {"float4_e2m1fn_x2": "float4_e2m1fn"}


def of_torch(name: str, shape: tuple[int, ...]) -> tuple[tuple[int, ...], str] | None:
    """mapspec's (shape, dtype) of a torch tensor of dtype `name` (`str(t.dtype)` without
    `torch.`), or None if mapspec cannot hold it; a packed one counts values."""
    if name in TORCH_PACKED:
        return ((*shape[:-1], shape[-1] * 2), TORCH_PACKED[name]) if shape else None
    if name in TORCH_DTYPES:
        return tuple(shape), TORCH_DTYPES[name]
    return None


# ------------------------------------------------------------------ ggml block types
# GGUF (llama.cpp) stores most weights in blocks: a fixed number of elements packed into a
# fixed number of bytes (a scale, maybe a minimum, the quantized values). A tensor of such a
# dtype keeps its element shape everywhere mapspec speaks of shapes; its last dimension (a
# ggml row) holds whole blocks, and its array travels as uint8 of shape
# (..., last // elements * bytes): `stored_shape`. Facts from ggml's type traits (gguf-py
# GGML_QUANT_SIZES); name -> (elements per block, bytes per block).
BLOCKS: dict[str, tuple[int, int]] = {
    "q4_0": (32, 18), "q4_1": (32, 20), "q5_0": (32, 22), "q5_1": (32, 24),
    "q8_0": (32, 34), "q8_1": (32, 40),
    "q2_k": (256, 84), "q3_k": (256, 110), "q4_k": (256, 144), "q5_k": (256, 176),
    "q6_k": (256, 210), "q8_k": (256, 292),
    "iq2_xxs": (256, 66), "iq2_xs": (256, 74), "iq3_xxs": (256, 98), "iq1_s": (256, 50),
    "iq4_nl": (32, 18), "iq3_s": (256, 110), "iq2_s": (256, 82), "iq4_xs": (256, 136),
    "iq1_m": (256, 56), "tq1_0": (256, 54), "tq2_0": (256, 66),
    "mxfp4": (32, 17), "nvfp4": (64, 36), "q1_0": (128, 18),
}


def block(name: str) -> tuple[int, int] | None:
    """(elements per block, bytes per block) of a ggml block dtype; None for element dtypes."""
    return BLOCKS.get(name)


def stored_shape(shape: tuple[int, ...], name: str) -> tuple[int, ...]:
    """The shape of the array that carries a tensor: its own shape, except for a block dtype,
    whose last dimension counts bytes (whole blocks of it)."""
    facts = BLOCKS.get(name)
    if facts is None:
        return tuple(shape)
    per, size = facts
    return (*shape[:-1], shape[-1] // per * size)


def check_blocks(shape: tuple[int, ...], name: str, what: str) -> None:
    """A block dtype needs a last dimension of whole blocks; raises CheckpointError naming `what`."""
    facts = BLOCKS.get(name)
    if facts is not None and (not shape or shape[-1] % facts[0]):
        from ..errors import CheckpointError

        raise CheckpointError(f"{what}: a {name} tensor's rows hold whole blocks of {facts[0]} elements; "
                              f"shape {tuple(shape)} does not")
