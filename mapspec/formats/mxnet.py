"""MXNet's NDArray container (`.params`), read and written with numpy alone.

mxnet is retired (1.9.1 imports only with numpy<1.24), so this module is the reader. Layout,
all little-endian (checked against mx.nd.save / mx.nd.load in the mxnet test environment):

    file    u64 0x112, u64 0, u64 count, count x record, u64 name count, names (u64 len + utf-8)
    record  V2/V3: u32 magic (0xF993FAC9 / 0xF993FACA), i32 storage type (0 dense,
                   1 row_sparse, 2 csr), [sparse: storage shape], shape, [V2 ndim 0 or V3
                   ndim -1: a "none" array, the record ends], i32 dev_type, i32 dev_id,
                   i32 dtype flag, [sparse: per aux array i32 dtype + shape], data, [aux data]
            V1:    u32 0xF993FAC8, shape (i32 ndim + i64 dims), context, dtype, data
            oldest: no magic; u32 ndim + u32 dims, context, dtype, data
    shape   i32 ndim + ndim x i64 (V1-V3)

Keys keep their `arg:` / `aux:` prefixes as stored. Sparse arrays are read as dense tensors.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from ..core.lazy import numpy as np

from ..core import dtypes
from ..errors import CheckpointError, UsageError
from ..core.tensorinfo import TensorInfo
from .atomic import AtomicPath
from .placement import copy_extent
from .protocol import Extent, SinkBase, SourceBase
from .registry import Format
from .reading import MAX_EXPANDED_BYTES, RegularFile, brief, location, open_bytes, shown

FILE_MAGIC = 0x112
V1, V2, V3 = 0xF993FAC8, 0xF993FAC9, 0xF993FACA
FLAGS = {0: "float32", 1: "float64", 2: "float16", 3: "uint8", 4: "int32", 5: "int8", 6: "int64",
         7: "bool", 8: "int16", 9: "uint16", 10: "uint32", 11: "uint64", 12: "bfloat16"}
CODES = {v: k for k, v in FLAGS.items()}
MAX_NDIM = dtypes.MAX_NDIM


@dataclass(frozen=True)
class _Record:
    info: TensorInfo
    offset: int  # where the data starts
    stype: int = 0
    storage_shape: tuple[int, ...] = ()
    aux: tuple[tuple[str, tuple[int, ...], int], ...] = ()  # (dtype, shape, offset)


class _Cursor:
    """Reads the container's small fields in order; data is skipped, read later by position."""

    def __init__(self, file: RegularFile):
        self.file, self.pos, self.path = file, 0, file.path

    def take(self, n: int, what: str) -> bytes:
        if n < 0 or self.pos + n > self.file.size:
            raise CheckpointError(f"{self.path}: truncated at byte {self.pos}: needed {n} bytes for {what}, "
                                  f"the file has {self.file.size - self.pos} left")
        out = self.file.read_bytes(self.pos, n, what)
        self.pos += n
        return out

    def u64(self, what: str) -> int:
        return struct.unpack("<Q", self.take(8, what))[0]

    def u32(self, what: str) -> int:
        return struct.unpack("<I", self.take(4, what))[0]

    def i32(self, what: str) -> int:
        return struct.unpack("<i", self.take(4, what))[0]

    def shape(self, what: str, wide: bool = True) -> tuple[int, ...] | None:
        at = self.pos
        ndim = self.i32(what) if wide else self.u32(what)
        if ndim == -1:
            return None
        if not 0 <= ndim <= MAX_NDIM:
            raise CheckpointError(f"{self.path}: corrupt {what} at byte {at}: {ndim} dimensions")
        fmt = "<%d%s" % (ndim, "q" if wide else "I")
        dims = struct.unpack(fmt, self.take(ndim * (8 if wide else 4), what))
        if any(d < 0 for d in dims):
            raise CheckpointError(f"{self.path}: corrupt {what} at byte {at}: negative size {dims}")
        return dtypes.check_shape(dims, f"{self.path}: {what} at byte {at}")

    def skip(self, n: int, what: str) -> int:
        at = self.pos
        if n < 0 or self.pos + n > self.file.size:
            raise CheckpointError(f"{self.path}: truncated at byte {self.pos}: {what} needs {n} bytes, "
                                  f"the file has {self.file.size - self.pos} left")
        self.pos += n
        return at


def _dtype(flag: int, cur: _Cursor, at: int) -> str:
    if flag not in FLAGS:
        raise CheckpointError(f"{cur.path}: unknown dtype flag {flag} at byte {at}")
    return FLAGS[flag]


def _record(cur: _Cursor, index: int) -> _Record | None:
    at = cur.pos
    first = cur.u32(f"array {index}")
    what = f"array {index} (byte {at})"
    if first in (V2, V3):
        stype = cur.i32(what)
        if stype not in (0, 1, 2):
            raise CheckpointError(f"{cur.path}: unknown storage type {stype} in {what}")
        storage = cur.shape(what) if stype else None
        if stype and storage is None:
            raise CheckpointError(f"{cur.path}: sparse {what} has no storage shape")
        shape = cur.shape(what)
        if shape is None or (first == V2 and shape == ()):
            return None
    elif first == V1:
        stype, storage = 0, None
        shape = cur.shape(what)
        if not shape:
            return None
    else:  # the oldest layout: the first u32 was the number of dimensions
        cur.pos = at
        stype, storage = 0, None
        shape = cur.shape(what, wide=False)
        if not shape:
            return None
    cur.i32(what)  # dev_type: data is always saved from the CPU copy
    cur.i32(what)  # dev_id
    flag_at = cur.pos
    dtype = _dtype(cur.i32(what), cur, flag_at)
    aux_meta = []
    if stype:
        for _ in range(1 if stype == 1 else 2):
            a_at = cur.pos
            aux_dtype = _dtype(cur.i32(what), cur, a_at)
            aux_shape = cur.shape(what)
            if aux_shape is None:
                raise CheckpointError(f"{cur.path}: sparse {what} has an aux array without a shape")
            aux_meta.append((aux_dtype, aux_shape))
        _check_sparse(cur.path, what, stype, shape, storage, aux_meta)
    data_shape = storage if stype else shape
    offset = cur.skip(dtypes.nbytes(data_shape, dtype), f"the data of {what}")
    aux = tuple((d, s, cur.skip(dtypes.nbytes(s, d), f"the sparse indices of {what}")) for d, s in aux_meta)
    return _Record(TensorInfo(shape, dtype), offset, stype, storage or (), aux)


def _check_sparse(path: Path, what: str, stype: int, shape: tuple, storage: tuple, aux: list) -> None:
    """The shapes a sparse array's parts must have, as MXNet builds them."""
    def bad(why: str) -> CheckpointError:
        return CheckpointError(f"{path}: sparse {what}: {why}")

    if any(d not in ("int32", "int64", "uint8", "int8", "uint32", "uint64", "int16", "uint16") for d, _ in aux):
        raise bad("its indices are not integers")
    if stype == 1:  # row_sparse: storage (nnz_rows, *shape[1:]); indices (nnz_rows,)
        (_, idx), = aux
        if not shape or len(storage) != len(shape) or storage[1:] != shape[1:] or storage[0] > shape[0]:
            raise bad(f"stored rows {storage} do not fit shape {shape}")
        if idx != storage[:1]:
            raise bad(f"{idx} row indices for {storage[0]} stored rows")
    else:  # csr: values (nnz,); indptr (rows + 1,); indices (nnz,)
        (_, indptr), (_, cols) = aux
        if len(shape) != 2 or len(storage) != 1:
            raise bad(f"a CSR array must be 2-d with 1-d values (shape {shape}, values {storage})")
        if indptr != (shape[0] + 1,) or cols != storage:
            raise bad(f"index arrays {indptr} and {cols} do not fit shape {shape} with {storage[0]} values")


class MXNetSource(SourceBase):
    def __init__(self, path: Path):
        self.path = location(path)
        self._file = open_bytes(self.path)
        try:
            self._open()
        except BaseException:
            self._file.close()
            raise

    def _open(self) -> None:
        cur = _Cursor(self._file)
        magic = cur.u64("the file header")
        if magic != FILE_MAGIC:
            raise CheckpointError(f"{self.path}: not an MXNet NDArray file (magic {magic:#x} at byte 0, "
                                  f"expected {FILE_MAGIC:#x})")
        cur.u64("the file header")
        count_at = cur.pos
        count = cur.u64("the array count")
        if count > self._file.size // 4:
            raise CheckpointError(f"{self.path}: array count {count} at byte {count_at} cannot fit the file")
        records = [_record(cur, i) for i in range(count)]
        names_at = cur.pos
        n_names = cur.u64("the name count")
        if n_names not in (0, count):
            raise CheckpointError(f"{self.path}: {n_names} names for {count} arrays at byte {names_at}")
        names = []
        for i in range(n_names):
            length_at = cur.pos
            length = cur.u64(f"name {i}")
            if length > self._file.size - cur.pos:
                raise CheckpointError(f"{self.path}: name length {length} at byte {length_at} cannot fit the file")
            try:
                names.append(cur.take(length, f"name {i}").decode("utf-8"))
            except UnicodeDecodeError:
                raise CheckpointError(f"{self.path}: name {i} at byte {length_at + 8} is not UTF-8") from None
            if "\0" in names[-1]:  # mxnet's own loader cuts a name there: neither reading would be sure
                raise CheckpointError(f"{self.path}: name {i} at byte {length_at + 8} holds a NUL character")
        if not names:  # mx.nd.save of a list: positions are the names
            names = [str(i) for i in range(count)]
        if len(set(names)) != len(names):
            dup = next(n for n in names if names.count(n) > 1)
            raise CheckpointError(f"{self.path}: array name {shown(dup)} appears twice")
        self._records = {n: r for n, r in zip(names, records) if r is not None}
        expanded = sum(r.info.nbytes for r in self._records.values() if r.stype)
        if expanded > MAX_EXPANDED_BYTES:
            raise CheckpointError(f"{self.path}: its sparse arrays expand to {expanded} bytes when read as dense "
                                  f"tensors; mapspec expands at most {MAX_EXPANDED_BYTES >> 20} MiB per file")

    def infos(self) -> Mapping[str, TensorInfo]:
        return {k: r.info for k, r in self._records.items()}

    def _view(self, offset: int, shape: tuple[int, ...], dtype: str, what: str) -> np.ndarray:
        raw = self._file.read_range(offset, dtypes.nbytes(shape, dtype), what)
        return raw.view(dtypes.STORAGE[dtype]).reshape(shape)

    def read(self, key: str) -> np.ndarray:
        r = self._records[key]
        what = f"array {shown(key)}"
        data = self._view(r.offset, r.storage_shape if r.stype else r.info.shape, r.info.dtype, what)
        if r.stype == 0:
            return data
        dense = np.zeros(r.info.shape, dtypes.STORAGE[r.info.dtype])
        if r.stype == 1:  # row_sparse: data rows and their row indices, strictly increasing
            (d, s, off), = r.aux
            rows = self._view(off, s, d, what).astype(np.int64)
            if rows.size and (rows[0] < 0 or rows[-1] >= r.info.shape[0] or np.any(np.diff(rows) <= 0)):
                raise CheckpointError(f"{self.path}: row_sparse {what} has row indices out of range or out of order")
            dense[rows] = data
        else:  # csr: values, indptr, column indices
            (d0, s0, o0), (d1, s1, o1) = r.aux
            indptr = self._view(o0, s0, d0, what).astype(np.int64)
            cols = self._view(o1, s1, d1, what).astype(np.int64)
            if (indptr[0] != 0 or indptr[-1] != len(cols) or np.any(np.diff(indptr) < 0)
                    or (cols.size and (cols.min() < 0 or cols.max() >= r.info.shape[1]))):
                raise CheckpointError(f"{self.path}: csr {what} has inconsistent indices")
            rows = np.repeat(np.arange(r.info.shape[0]), np.diff(indptr))
            dense[rows, cols] = data
        return dense

    def extent(self, key: str) -> Extent | None:
        r = self._records[key]
        return None if r.stype else Extent(self._file, r.offset, r.info.nbytes)

    def release(self, key: str) -> None:
        r = self._records[key]
        self._file.release(r.offset, dtypes.nbytes(r.storage_shape if r.stype else r.info.shape, r.info.dtype))

    def close(self) -> None:
        self._file.close()


def _header(info: TensorInfo) -> bytes:
    # mx.nd.save writes V2 records; V2 cannot hold a 0-d array (ndim 0 means "none"), so
    # those are written as V3, which mxnet reads in numpy-shape mode.
    magic = V3 if info.shape == () else V2
    shape = struct.pack("<i", len(info.shape)) + struct.pack("<%dq" % len(info.shape), *info.shape)
    return struct.pack("<Ii", magic, 0) + shape + struct.pack("<iii", 1, 0, CODES[info.dtype])


class MXNetSink(SinkBase):
    """Record sizes are known from the plan, so every record has its place before data comes."""

    def __init__(self, path: Path, outputs: Mapping[str, TensorInfo], metadata=None):
        self.atomic = AtomicPath(path)
        self.provenance = metadata
        self.infos = dict(outputs)
        self.file = self.atomic.open("r+b")  # not "wb": truncating makes close() flush everything
        self.file.write(struct.pack("<QQQ", FILE_MAGIC, 0, len(outputs)))
        self.offsets: dict[str, int] = {}
        pos = 24
        for name, info in outputs.items():
            head = _header(info)
            self.file.seek(pos)
            self.file.write(head)
            self.offsets[name] = pos + len(head)
            pos += len(head) + info.nbytes
        self.file.seek(pos)
        self.file.write(struct.pack("<Q", len(outputs)))
        for name in outputs:
            raw = name.encode("utf-8")
            self.file.write(struct.pack("<Q", len(raw)) + raw)
        self.written: set[str] = set()

    def write(self, name: str, array: np.ndarray) -> None:
        self.file.seek(self.offsets[name])
        self.file.write(dtypes.raw(array, self.infos[name].dtype))
        self.written.add(name)

    def write_region(self, name: str, extent: Extent) -> bool:
        self.file.flush()
        copy_extent(extent, self.file.fileno(), self.offsets[name])
        self.written.add(name)
        return True

    def commit(self) -> None:
        if set(self.offsets) - self.written:
            raise RuntimeError("MXNet sink closed with tensors unwritten")
        self.file.close()
        if self.provenance is not None:  # the container has no free field: a sidecar
            self.provenance.write_sidecar(self.atomic.final)
        self.atomic.commit()

    def abort(self) -> None:
        self.atomic.abort()


MAX_EPOCH = 10**9 - 1


def resolve_prefix(path: Path, epoch: int | None) -> Path:
    """`dpn68` with epoch 0 -> `dpn68-0000.params`, as save_checkpoint names it."""
    if epoch is None:
        return path
    if not 0 <= epoch <= MAX_EPOCH:
        raise UsageError(f"--epoch {brief(epoch)}: an epoch is a number from 0 to {MAX_EPOCH:,}")
    if path.suffix == ".params" and path.exists():
        raise UsageError(f"--epoch goes with a checkpoint prefix, not a file ({path})")
    return path.with_name(f"{path.name}-{epoch:04d}.params")


def is_mxnet(head: bytes) -> bool:
    return len(head) >= 8 and struct.unpack("<Q", head[:8])[0] == FILE_MAGIC


FORMAT = Format("mxnet", "MXNet .params (mx.nd.save)", MXNetSource, MXNetSink,
                frozenset(FLAGS.values()), sniff=lambda path, head: is_mxnet(head))
