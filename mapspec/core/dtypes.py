"""Tensor dtypes by name. numpy has no bfloat16, so bf16 travels as its raw uint16 bits and
its name says what the bits mean."""

from __future__ import annotations

import sys
from functools import lru_cache

from .lazy import numpy as np

# name -> (numpy dtype code that stores it, bytes per element); little-endian everywhere on
# disk. The numpy dtypes themselves (`STORAGE`) are made on first use: a rename-only
# conversion needs only names and sizes, and then never imports numpy (see `lazy`).
_CODES: dict[str, tuple[str, int]] = {
    "float64": ("<f8", 8),
    "float32": ("<f4", 4),
    "float16": ("<f2", 2),
    "bfloat16": ("<u2", 2),
    "int64": ("<i8", 8),
    "int32": ("<i4", 4),
    "int16": ("<i2", 2),
    "int8": ("i1", 1),
    "uint64": ("<u8", 8),
    "uint32": ("<u4", 4),
    "uint16": ("<u2", 2),
    "uint8": ("u1", 1),
    "bool": ("?", 1),
}
NAMES = tuple(_CODES)


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
    """The dtype name of a plain numpy array (never bfloat16: that needs a tag)."""
    for name, dt in _storage().items():
        if name != "bfloat16" and arr.dtype == dt:
            return name
    if arr.dtype.kind in "fiub" and arr.dtype.byteorder == ">":
        return of_array(arr.astype(arr.dtype.newbyteorder("<")))
    raise TypeError(f"unsupported array dtype {arr.dtype}")


def itemsize(name: str) -> int:
    return _CODES[name][1]


def nbytes(shape: tuple[int, ...], name: str) -> int:
    """Bytes a tensor of this shape and dtype takes when stored."""
    facts = BLOCKS.get(name)
    if facts is not None:  # whole blocks along the last dimension
        n = facts[1]
        for s in stored_shape(shape, name)[:-1]:
            n *= s
        return n * (shape[-1] // facts[0]) if shape else 0
    n = itemsize(name)
    for s in shape:
        n *= s
    return n


def stored(array: np.ndarray, name: str) -> np.ndarray:
    """The array as it is stored: the dtype's storage type, C order (0-d stays 0-d)."""
    return np.asarray(array, dtype=_storage()[name], order="C")


def raw(array: np.ndarray, name: str) -> memoryview:
    """The stored bytes of an array, without a copy when it is already stored that way."""
    return memoryview(stored(array, name).reshape(-1)).cast("B")


def _bf16_to_f32(bits: np.ndarray) -> np.ndarray:
    return (bits.astype(np.uint32) << 16).view(np.float32)


def _f32_to_bf16(values: np.ndarray) -> np.ndarray:
    # Round to nearest even, as torch does; NaN stays a quiet NaN.
    bits = np.asarray(values, dtype=np.float32, order="C").view(np.uint32)
    rounded = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)
    nan = np.isnan(values)
    if nan.any():
        rounded = np.where(nan, (bits >> 16).astype(np.uint16) | 0x0040, rounded)
    return rounded


def cast(arr: np.ndarray, src: str, dst: str) -> np.ndarray:
    """Convert values (not bits) from dtype `src` to `dst`; bf16 on either side as bits."""
    if src == dst:
        return arr
    if src == "bfloat16":
        arr = _bf16_to_f32(arr)
        src = "float32"
        if dst == "float32":
            return arr
    if dst == "bfloat16":
        return _f32_to_bf16(arr.astype(np.float32, copy=False))
    return arr.astype(_storage()[dst])


# Exact casts. Integers: how many value bits they hold and whether they are signed; floats:
# significand bits (with the implicit one) and largest exponent. A cast is exact when every
# value of the first dtype is a value of the second, so casting back gives the same bits.
_INT_BITS = {"bool": (1, False), "uint8": (8, False), "uint16": (16, False), "uint32": (32, False),
             "uint64": (64, False), "int8": (7, True), "int16": (15, True), "int32": (31, True), "int64": (63, True)}
_FLOAT_BITS = {"float16": (11, 15), "bfloat16": (8, 127), "float32": (24, 127), "float64": (53, 1023)}


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
}


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
