"""torch.save's zip format, written natively: no torch import, one record per tensor.

Layout, as torch's PyTorchStreamWriter writes it (formats.md): every entry sits under one
folder (`archive/`), stored uncompressed, its data 64-byte aligned by a padding extra field
(id "FB"): `data.pkl`, `.format_version`, `.storage_alignment`, `byteorder`, one `data/<key>`
per tensor, `version`, `.data/serialization_id`, then the central directory and zip64 end
records. The pickle (protocol 2) refers to torch globals by name only, so it is written
without torch: `torch._utils._rebuild_tensor_v2(persistent storage, 0, size, stride, False,
OrderedDict())`, the storage's persistent id `('storage', torch.<T>Storage, key, 'cpu', numel)`.

CRC-32: every entry carries a valid CRC (torch itself writes them unless told not to, and
other zip tools call files without them corrupt). It is computed while the bytes stream
past (zlib.crc32, about 2-3 GB/s) or, for a record copied file-to-file by the kernel, read
back from the page cache by a worker thread (`crc_worker`) while the next tensor is copied:
zlib and preadv release the GIL, so the read-back runs on the second core instead of
between copies (safetensors -> .pt: see bench/convert_bench.py). Local headers hold the real
sizes (the plan knows them); each CRC is patched into its local header after the data, or,
for a record the worker checksums, in `finish`, once it is known, before the central
directory is written. So no data descriptors are needed."""

from __future__ import annotations

import io
import os
import pickle
import struct
import zlib
from collections import OrderedDict
from typing import BinaryIO, Mapping

from ..core.background import Job, Worker
from ..core.tensorinfo import TensorInfo
from .placement import padding

ALIGN = 64
FOLDER = "archive"
# Bytes per read when a CRC needs bytes that were copied in the kernel: read into one reused
# buffer small enough to stay in cache while zlib walks it (8 MiB fresh bytes per read was
# 2-3x slower: a new mapping and its page faults every time, and cache misses).
CHUNK = 1 << 20
ZIP64_LIMIT = 0xFFFFFFFF  # sizes and offsets from here on go in zip64 extra fields
MARK = 0xFFFFFFFF  # what a 32-bit field holds when its value is in the zip64 extra
VERSION = 45  # "needs" zip64, as torch's writer says

STORAGE_TYPES = {
    "float64": "DoubleStorage", "float32": "FloatStorage", "float16": "HalfStorage",
    "bfloat16": "BFloat16Storage", "int64": "LongStorage", "int32": "IntStorage",
    "int16": "ShortStorage", "int8": "CharStorage", "uint8": "ByteStorage", "bool": "BoolStorage",
    "complex64": "ComplexFloatStorage",
}
# dtypes torch has no typed storage for: pickled as torch does, `_rebuild_tensor_v3` over an
# UntypedStorage (its size in bytes) with the torch dtype; float4 as torch's packed pairs.
V3_TYPES = {
    "float8_e4m3fn": "float8_e4m3fn", "float8_e5m2": "float8_e5m2", "float8_e8m0fnu": "float8_e8m0fnu",
    "float8_e4m3fnuz": "float8_e4m3fnuz", "float8_e5m2fnuz": "float8_e5m2fnuz",
    "float4_e2m1fn": "float4_e2m1fn_x2",
}
TORCH_WRITES = frozenset(STORAGE_TYPES) | frozenset(V3_TYPES)


class Global:
    """`module.name` in a pickle, written by name: pickling it never imports `module`."""

    def __init__(self, module: str, name: str):
        self.module, self.name = module, name
        self.__name__ = name

    def __call__(self, *args):  # pragma: no cover - pickle only checks that reducers are callable
        raise TypeError(f"{self.module}.{self.name} is a name in a pickle, not a function")


REBUILD = Global("torch._utils", "_rebuild_tensor_v2")
REBUILD_V3 = Global("torch._utils", "_rebuild_tensor_v3")
UNTYPED = Global("torch.storage", "UntypedStorage")
ORDERED_DICT = Global("collections", "OrderedDict")


class _Storage:
    def __init__(self, key: str, dtype: str, numel: int):
        self.key, self.dtype, self.numel = key, dtype, numel


def torch_shape(info: TensorInfo) -> tuple[int, ...]:
    """The shape torch gives a tensor: float4's last dimension counts pairs."""
    if info.dtype == "float4_e2m1fn":
        return (*info.shape[:-1], info.shape[-1] // 2)
    return tuple(info.shape)


def torch_refuses(info: TensorInfo) -> str | None:
    """Why torch cannot hold a tensor mapspec can, or None."""
    if info.dtype == "float4_e2m1fn" and (not info.shape or info.shape[-1] % 2):
        return (f"torch holds float4 as pairs (float4_e2m1fn_x2): the last dimension must be even, "
                f"not shape {tuple(info.shape)}")
    return None


class _Tensor:
    """Pickles as torch.save pickles a contiguous tensor over a whole storage."""

    def __init__(self, storage: _Storage, info: TensorInfo):
        self.storage, self.shape, self.dtype = storage, torch_shape(info), info.dtype

    def __reduce_ex__(self, protocol):
        stride, n = [], 1
        for size in reversed(self.shape):
            stride.insert(0, n)
            n *= size
        if self.dtype in V3_TYPES:
            return REBUILD_V3, (self.storage, 0, tuple(self.shape), tuple(stride), False, _EmptyOrderedDict(),
                                Global("torch", V3_TYPES[self.dtype]))
        return REBUILD, (self.storage, 0, tuple(self.shape), tuple(stride), False, _EmptyOrderedDict())


class _EmptyOrderedDict:
    def __reduce_ex__(self, protocol):
        return ORDERED_DICT, ()


class _Pickler(pickle._Pickler):
    """The pure-Python pickler (the C one insists on importing every global it names)."""

    def save_named(self, obj: Global) -> None:
        self.write(pickle.GLOBAL + f"{obj.module}\n{obj.name}\n".encode())
        self.memoize(obj)

    def persistent_id(self, obj):
        if isinstance(obj, _Storage):
            if obj.dtype in V3_TYPES:  # untyped: its size in bytes
                return ("storage", UNTYPED, obj.key, "cpu", obj.numel)
            return ("storage", Global("torch", STORAGE_TYPES[obj.dtype]), obj.key, "cpu", obj.numel)
        return None

    dispatch = dict(pickle._Pickler.dispatch)
    dispatch[Global] = save_named


def state_pickle(outputs: Mapping[str, TensorInfo], keys: Mapping[str, str], wrap=None) -> bytes:
    """data.pkl for an OrderedDict of `outputs`, tensor `name` stored as `data/<keys[name]>`;
    with `wrap = (key, extras)`, the dict {key: that OrderedDict, **extras} (plain values)."""
    import math

    def numel(info: TensorInfo) -> int:
        return info.nbytes if info.dtype in V3_TYPES else math.prod(info.shape)

    state = _StateDict((name, _Tensor(_Storage(keys[name], info.dtype, numel(info)), info))
                       for name, info in outputs.items())
    if wrap is not None:
        key, extras = wrap
        state = {key: state, **extras}
    buf = io.BytesIO()
    _Pickler(buf, protocol=2).dump(state)
    return buf.getvalue()


class _StateDict(OrderedDict):
    def __reduce_ex__(self, protocol):
        return ORDERED_DICT, (), None, None, iter(self.items())


def crc_of_range(fd: int, start: int, nbytes: int, crc: int = 0, job: Job | None = None) -> int:
    """`crc` continued over bytes [start, start + nbytes) of a file, read into one reused
    buffer (stopping early, with a meaningless result, once `job` is cancelled)."""
    pos, end = start, start + nbytes
    buf = bytearray(min(CHUNK, nbytes))
    view = memoryview(buf)
    while pos < end:
        if job is not None and job.cancelled:
            return 0
        n = os.preadv(fd, [view[:min(CHUNK, end - pos)]], pos)
        if not n:
            raise OSError(f"short read at byte {pos} of the output")
        crc = zlib.crc32(view[:n], crc)
        pos += n
    return crc


# Takes the CRC-32s of copied records, for every zip being written (the shards of a sharded
# output too, one after another), so it never takes more than the one spare core.
crc_worker = Worker("mapspec-crc32")


class ZipWriter:
    """A streaming writer of stored (uncompressed), 64-byte aligned zip entries."""

    def __init__(self, file: BinaryIO):
        self.file = file
        # name, header offset, size, crc (a Job until the worker has taken it)
        self.entries: list[tuple[bytes, int, int, int | Job[int]]] = []
        self._open: tuple[bytes, int, int, int] | None = None  # name, header offset, size, data start
        self._crc: int | Job[int] = 0
        self._written = 0
        self._jobs: list[Job[int]] = []

    def begin(self, name: str, size: int, near: int | None = None) -> int:
        """Start entry `name` of `size` bytes; returns the file offset where its data goes:
        64-byte aligned, and equal to `near` modulo GRANULE when `near` (where the bytes will
        be copied from) is itself 64-byte aligned (see `placement.GRANULE`; the padding field
        takes it)."""
        assert self._open is None
        raw = f"{FOLDER}/{name}".encode()
        at = self.file.tell()
        zip64 = size >= ZIP64_LIMIT
        z64 = struct.pack("<HHQQ", 1, 16, size, size) if zip64 else b""
        pad = padding(at + 30 + len(raw) + 4 + len(z64), ALIGN, near)
        extra = z64 + struct.pack("<HH", 0x4246, pad) + b"Z" * pad
        small = MARK if zip64 else size
        self.file.write(struct.pack("<IHHHHHIIIHH", 0x04034B50, VERSION, 0x800, 0, 0, 0x21, 0, small, small,
                                    len(raw), len(extra)) + raw + extra)
        start = at + 30 + len(raw) + len(extra)
        self._open = (raw, at, size, start)
        self._crc = 0
        self._written = 0
        return start

    def write(self, data) -> None:
        self._crc = zlib.crc32(data, self._crc)
        self._written += self.file.write(data)

    def copied(self, fd: int, start: int, nbytes: int, crc32: int | None = None) -> None:
        """`nbytes` landed at `start` without passing through `write` (copy_file_range).
        `crc32` is their CRC when the source states it (the entry must be exactly these
        bytes); otherwise they are read back to take it: by the worker thread when they
        are the whole entry, here when they are only part of it."""
        whole = self._written == 0 and nbytes == self._open[2]
        if whole and crc32 is not None:
            self._crc = crc32
        elif whole and nbytes:
            job = crc_worker.submit(Job(lambda job: crc_of_range(fd, start, nbytes, job=job)))
            self._jobs.append(job)
            self._crc = job
        else:
            self._crc = crc_of_range(fd, start, nbytes, self._crc)
        self._written += nbytes

    def end(self) -> None:
        raw, at, size, start = self._open
        if self._written != size:
            raise RuntimeError(f"zip entry {raw.decode()}: {self._written} bytes written, {size} announced")
        if not isinstance(self._crc, Job):  # a deferred CRC is patched in by finish()
            here = start + size
            self.file.seek(at + 14)
            self.file.write(struct.pack("<I", self._crc))
            self.file.seek(here)
        self.entries.append((raw, at, size, self._crc))
        self._open = None

    def add(self, name: str, data: bytes) -> None:
        self.begin(name, len(data))
        self.write(data)
        self.end()

    def finish(self) -> None:
        """Patch in the CRCs the worker took (raising its error, if it met one), then write
        the central directory and the end records."""
        cd_start = self.file.tell()
        for i, (raw, at, size, crc) in enumerate(self.entries):
            if isinstance(crc, Job):
                crc = crc.result()
                self.file.seek(at + 14)
                self.file.write(struct.pack("<I", crc))
                self.entries[i] = (raw, at, size, crc)
        self._jobs = []
        self.file.seek(cd_start)
        out = io.BytesIO()
        for raw, at, size, crc in self.entries:
            z64 = b""
            if size >= ZIP64_LIMIT:
                z64 += struct.pack("<QQ", size, size)
            if at >= ZIP64_LIMIT:
                z64 += struct.pack("<Q", at)
            extra = struct.pack("<HH", 1, len(z64)) + z64 if z64 else b""
            small = MARK if size >= ZIP64_LIMIT else size
            out.write(struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 0x031E, VERSION, 0x800, 0, 0, 0x21, crc,
                                  small, small, len(raw), len(extra), 0, 0, 0, 0o100644 << 16,
                                  MARK if at >= ZIP64_LIMIT else at) + raw + extra)
        cd = out.getvalue()
        self.file.write(cd)
        eocd64_at = cd_start + len(cd)
        n = len(self.entries)
        self.file.write(struct.pack("<IQHHIIQQQQ", 0x06064B50, 44, 0x031E, VERSION, 0, 0, n, n, len(cd), cd_start))
        self.file.write(struct.pack("<IIQI", 0x07064B50, 0, eocd64_at, 1))
        self.file.write(struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, min(n, 0xFFFF), min(n, 0xFFFF),
                                    min(len(cd), MARK), MARK if cd_start >= ZIP64_LIMIT else cd_start, 0))

    def cancel(self) -> None:
        """Stop the CRCs still being taken of this file (before it is closed and removed)."""
        crc_worker.cancel(self._jobs)
        self._jobs = []

