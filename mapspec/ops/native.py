"""The compiled FP8 loops of `fp8kernels.c`, called through ctypes.

`pip install` builds `fp8kernels.c` into `_fp8kernels.so` beside this file when a C compiler
is there (hatch_build.py); without one, or with `MAPSPEC_NATIVE=0`, `load()` gives None and
the numpy kernels of `fp8` run, with the same bits. ctypes releases the GIL for the length
of a call, so `fp8.in_parallel` runs two slices on two cores.

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

LIBRARY = Path(__file__).with_name("_fp8kernels" + (".dll" if sys.platform == "win32" else ".so"))
SOURCE = Path(__file__).with_name("fp8kernels.c")

ABI = 2  # fp8kernels_abi() of the library these wrappers call
_I64, _PTR = ctypes.c_int64, ctypes.c_void_p
_library: ctypes.CDLL | None | bool = None


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
        lib.fp8kernels_abi.restype = ctypes.c_int
        if lib.fp8kernels_abi() != ABI:
            return None  # built from another version of fp8kernels.c: its arguments may differ
    except AttributeError:
        return None
    for name, small in (("block_max_u16", ctypes.c_uint16), ("block_max_u32", ctypes.c_uint32)):
        getattr(lib, name).argtypes = [_PTR, _I64, _I64, _I64, _I64, small, _PTR, _PTR]
    for name in ("quantize_e4m3_bf16", "quantize_e4m3_f32"):
        getattr(lib, name).argtypes = [_PTR, _I64, _I64, _I64, _I64, _PTR, _PTR, _PTR, _PTR]
    for name in ("gather_blocks_u16", "gather_blocks_u32"):
        getattr(lib, name).argtypes = [_PTR, _I64, _I64, _I64, _PTR, _PTR]
    for name in ("block_max_u16", "block_max_u32", "quantize_e4m3_bf16", "quantize_e4m3_f32",
                 "gather_blocks_u16", "gather_blocks_u32"):
        getattr(lib, name).restype = None
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
    work = np.empty((2, cols), np.float32)  # a row's float32 values and its columns' scales
    fn(x.ctypes.data, rows, cols, bm, bn, scale.ctypes.data, work[0].ctypes.data, work[1].ctypes.data, q.ctypes.data)


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
