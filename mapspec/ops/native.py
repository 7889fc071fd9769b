"""The compiled loops of `kernels.c` (FP8, MXFP4 and Q8_0 kernels), called through ctypes.

`pip install` builds `kernels.c` into `_kernels.so` beside this file when a C compiler
is there (hatch_build.py); without one, or with `MAPSPEC_NATIVE=0`, `load()` gives None and
the numpy kernels of `fp8` run, with the same bits. ctypes releases the GIL for the length
of a call, so `core.background.in_parallel` runs two slices on two cores.

The C loops trust what they are given; every wrapper here checks dtypes, shapes and
C-contiguity first, so a wrong call is a ValueError, never memory read or written out of
bounds. Importing this module costs ctypes' import and one dlopen (a few ms, no numba, no
LLVM), which is why the FP8 kernels are C and not numba: numba's import and its compiled
code's loading take 0.75 s and 120 MiB on every run, more than the memory goal allows."""

from __future__ import annotations

import ctypes
import os
import sys
from pathlib import Path

LIBRARY = Path(__file__).with_name("_kernels" + (".dll" if sys.platform == "win32" else ".so"))

ABI = 5  # kernels_abi() of the library these wrappers call
_I64, _PTR = ctypes.c_int64, ctypes.c_void_p
_library: ctypes.CDLL | None | bool = None
# Every function of kernels.c, with the arguments it takes (all return nothing).
_SIGNATURES = {
    "block_max_u16": [_PTR, _I64, _I64, _I64, _I64, ctypes.c_uint16, _PTR, _PTR],
    "block_max_u32": [_PTR, _I64, _I64, _I64, _I64, ctypes.c_uint32, _PTR, _PTR],
    "quantize_e4m3_bf16": [_PTR, _I64, _I64, _I64, _I64, _PTR, _PTR, _PTR],
    "quantize_e4m3_f32": [_PTR, _I64, _I64, _I64, _I64, _PTR, _PTR, _PTR],
    "gather_blocks_u16": [_PTR, _I64, _I64, _I64, _PTR, _PTR],
    "gather_blocks_u32": [_PTR, _I64, _I64, _I64, _PTR, _PTR],
    "mxfp4_dequantize_u16": [_PTR, _PTR, _I64, _I64, _PTR, _PTR, _I64],
    "mxfp4_dequantize_u32": [_PTR, _PTR, _I64, _I64, _PTR, _PTR, _I64],
    "quantize_q8_0_bf16": [_PTR, _I64, _PTR],
    "quantize_q8_0_f32": [_PTR, _I64, _PTR],
}


def load():
    """This module when the library is built and loads (and `MAPSPEC_NATIVE` is not 0), else None."""
    global _library
    if os.environ.get("MAPSPEC_NATIVE", "1") == "0":
        return None
    if _library is None:
        _library = _open() or False
    return sys.modules[__name__] if _library else None


def _open() -> ctypes.CDLL | None:
    try:
        lib = ctypes.CDLL(str(LIBRARY))
    except OSError:  # not built (no compiler at install time), or built for another machine
        return None
    try:
        lib.kernels_abi.restype = ctypes.c_int
        if lib.kernels_abi() != ABI:
            return None  # built from another version of kernels.c: its arguments may differ
    except AttributeError:
        return None
    for name, argtypes in _SIGNATURES.items():
        fn = getattr(lib, name)
        fn.argtypes, fn.restype = argtypes, None
    return lib


def _check(array, dtype, shape: tuple[int, ...], what: str):
    """`array` itself when it is C-contiguous with this dtype and shape (outputs must be)."""
    import numpy as np

    if array.dtype != dtype or tuple(array.shape) != tuple(shape) or not array.flags.c_contiguous:
        raise ValueError(f"{what}: expected a C-contiguous {np.dtype(dtype)} array of shape {tuple(shape)}, "
                         f"got {array.dtype} {tuple(array.shape)}")
    return array


def _input(array, dtype, what: str):
    """A 2-D input as a C-contiguous array of `dtype`'s bits (a copy only if it is strided)."""
    import numpy as np

    if array.ndim != 2 or array.dtype.itemsize != np.dtype(dtype).itemsize:
        raise ValueError(f"{what}: expected a 2-D array of {np.dtype(dtype).itemsize}-byte elements, "
                         f"got {array.dtype} {tuple(array.shape)}")
    return np.ascontiguousarray(array).view(dtype)


def _grid(rows: int, cols: int, bm: int, bn: int) -> tuple[int, int]:
    if bm < 1 or bn < 1:
        raise ValueError(f"block {bm}x{bn}: both sizes must be at least 1")
    return -(-rows // bm), -(-cols // bn)


def block_max(bits, bm: int, bn: int, out) -> None:
    """`out[i // bm, j // bn] = max |bits[i, j]|` on the bits: the block maxima of the
    magnitudes of a slice of whole block rows of bf16/fp16 (uint16) or fp32 (uint32) bits,
    whose integer order is that of |x| (NaN above infinity)."""
    import numpy as np

    wide = bits.dtype.itemsize == 4
    unsigned = np.uint32 if wide else np.uint16
    bits = _input(bits, unsigned, "block_max")
    rows, cols = bits.shape
    _check(out, unsigned, _grid(rows, cols, bm, bn), "block_max output")
    column = np.empty(cols, unsigned)
    fn = _library.block_max_u32 if wide else _library.block_max_u16
    fn(bits.ctypes.data, rows, cols, bm, bn, 0x7FFFFFFF if wide else 0x7FFF, column.ctypes.data, out.ctypes.data)


def quantize_e4m3(x, dtype: str, bm: int, bn: int, scale, q) -> None:
    """`q = e4m3 code of clamp(float32(x) * scale of its block, -448, 448)` for a slice of
    whole block rows of bf16 bits (`dtype` "bfloat16") or float32 values; `scale` holds the
    slice's block rows of float32 scales."""
    import numpy as np

    if dtype not in ("bfloat16", "float32"):
        raise ValueError(f"quantize_e4m3 takes bfloat16 bits or float32, not {dtype}")
    wide = dtype == "float32"
    x = _input(x, np.uint32 if wide else np.uint16, "quantize_e4m3")
    rows, cols = x.shape
    scale = _check(scale, np.float32, _grid(rows, cols, bm, bn), "quantize_e4m3 scales")
    _check(q, np.uint8, (rows, cols), "quantize_e4m3 output")
    fn = _library.quantize_e4m3_f32 if wide else _library.quantize_e4m3_bf16
    per_column = np.empty(cols, np.float32)  # scratch: each column's scale
    fn(x.ctypes.data, rows, cols, bm, bn, scale.ctypes.data, per_column.ctypes.data, q.ctypes.data)


def gather_blocks(codes, table, bn: int, out) -> None:
    """`out[i, j] = table[j // bn, codes[i, j]]`: rows of one-byte codes looked up in the
    table of 256 results of their column block (2- or 4-byte results, any dtype)."""
    import numpy as np

    codes = _input(codes, np.uint8, "gather_blocks")
    rows, cols = codes.shape
    if out.dtype.itemsize not in (2, 4):
        raise ValueError(f"gather_blocks: 2- or 4-byte results only, not {out.dtype}")
    unsigned = np.uint32 if out.dtype.itemsize == 4 else np.uint16
    table = _check(table, out.dtype, (_grid(rows, cols, 1, bn)[1], 256), "gather_blocks table").view(unsigned)
    _check(out, out.dtype, (rows, cols), "gather_blocks output")
    fn = _library.gather_blocks_u32 if unsigned is np.uint32 else _library.gather_blocks_u16
    fn(codes.ctypes.data, rows, cols, bn, table.ctypes.data, out.ctypes.data)


def mxfp4_dequantize(blocks, scales, table, out) -> None:
    """MXFP4 blocks (rows, G, 16) and scales (rows, G), uint8, looked up in `table` (65,536
    pairs of output values, as unsigned integers of twice the output's width, indexed by
    scale byte * 256 + block byte) into `out`, a (32 G, rows) view whose rows may be apart
    (a slice of columns of the transposed layout) but whose elements are adjacent."""
    import numpy as np

    rows, groups = scales.shape
    if scales.dtype != np.uint8 or blocks.dtype != np.uint8 or tuple(blocks.shape) != (rows, groups, 16):
        raise ValueError(f"mxfp4_dequantize: uint8 blocks (rows, G, 16) and scales (rows, G), got "
                         f"{blocks.dtype} {tuple(blocks.shape)} and {scales.dtype} {tuple(scales.shape)}")
    blocks, scales = np.ascontiguousarray(blocks), np.ascontiguousarray(scales)
    size = out.dtype.itemsize
    if size not in (2, 4) or table.dtype.itemsize != 2 * size:
        raise ValueError(f"mxfp4_dequantize: 2- or 4-byte results and a table of twice their width, "
                         f"not {out.dtype} and {table.dtype}")
    table = _check(table, table.dtype, (1 << 16,), "mxfp4_dequantize table")
    if tuple(out.shape) != (32 * groups, rows) or out.strides[1] != size or out.strides[0] % size \
            or out.strides[0] < rows * size:
        raise ValueError(f"mxfp4_dequantize output: expected a ({32 * groups}, {rows}) view with adjacent "
                         f"elements, got {tuple(out.shape)} strides {out.strides}")
    fn = _library.mxfp4_dequantize_u32 if size == 4 else _library.mxfp4_dequantize_u16
    fn(blocks.ctypes.data, scales.ctypes.data, rows, groups, table.ctypes.data, out.ctypes.data,
       out.strides[0] // size)


def quantize_q8_0(values, dtype: str, out) -> None:
    """ggml Q8_0 blocks (n, 34) of `values` (n, 32): bf16 bits (`dtype` "bfloat16") or
    float32, as gguf-py's quantize_q8_0 computes them (its float16 scale, then 32 int8)."""
    import numpy as np

    if dtype not in ("bfloat16", "float32"):
        raise ValueError(f"quantize_q8_0 takes bfloat16 bits or float32, not {dtype}")
    wide = dtype == "float32"
    values = _input(values, np.uint32 if wide else np.uint16, "quantize_q8_0")
    if values.shape[1] != 32:
        raise ValueError(f"quantize_q8_0: blocks of 32 values, got rows of {values.shape[1]}")
    _check(out, np.uint8, (values.shape[0], 34), "quantize_q8_0 output")
    fn = _library.quantize_q8_0_f32 if wide else _library.quantize_q8_0_bf16
    fn(values.ctypes.data, values.shape[0], out.ctypes.data)
