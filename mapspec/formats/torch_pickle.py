"""Reading torch.save files without torch and without running code from them.

The pickle goes through `unpickle` (checked, then built inertly); torch's globals map to the
small functions here. A tensor is a `Tensor`: a storage and a geometry, checked against the
storage when it is rebuilt and read only when asked (`Tensor.read`), by position, into a
fresh buffer. Storages behave as torch's do: one storage object per key, whose dtype is
that of its first reference (a later reference with another dtype sees the first one's);
a zip file whose `byteorder` record says `big` has its storages byte-swapped by that dtype.

Both layouts: the zip format (torch >= 1.6: `<dir>/data.pkl` + `<dir>/data/<key>`) and the
legacy one (consecutive pickles, then each storage as int64 count + raw bytes).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from ..core.lazy import numpy as np

from ..core import dtypes
from ..core.dtypes import TORCH_DTYPES, TORCH_PACKED
from ..core.tensorinfo import TensorInfo
from ..errors import CheckpointError
from .reading import MAX_EXPANDED_BYTES, RegularFile, ZipMembers, location, open_bytes, reading, shown
from .unpickle import MAX_DEPTH, MAX_PICKLE, Device, Inert, StandIn, PickleTruncated, check_pickle, unpickle

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
MAX_NDIM = dtypes.MAX_NDIM

# torch.<X>Storage -> dtype names
STORAGE_DTYPES = {
    "DoubleStorage": "float64", "FloatStorage": "float32", "HalfStorage": "float16",
    "BFloat16Storage": "bfloat16", "LongStorage": "int64", "IntStorage": "int32",
    "ShortStorage": "int16", "CharStorage": "int8", "ByteStorage": "uint8", "BoolStorage": "bool",
    "UInt16Storage": "uint16", "UInt32Storage": "uint32", "UInt64Storage": "uint64",
    "UntypedStorage": "uint8", "ComplexFloatStorage": "complex64",
}
# Valid torch storages that mapspec cannot represent, and what they hold.
UNSUPPORTED_STORAGES = {
    "ComplexDoubleStorage": "complex128", "ComplexHalfStorage": "complex32",
    "QInt8Storage": "quantized qint8", "QUInt8Storage": "quantized quint8", "QInt32Storage": "quantized qint32",
    "QUInt4x2Storage": "quantized quint4x2", "QUInt2x4Storage": "quantized quint2x4",
}
UNSUPPORTED_DTYPES = {
    "complex32", "complex128", "chalf", "cdouble", "qint8", "quint8", "qint32",
    "quint4x2", "quint2x4", "bits1x8", "bits2x4", "bits4x2", "bits8", "bits16", "uint1", "uint2", "uint3",
    "uint4", "uint5", "uint6", "uint7", "int1", "int2", "int3", "int4", "int5", "int6", "int7",
}
# torch functions that rebuild valid tensors mapspec does not read.
UNSUPPORTED_REBUILDS = {
    "_rebuild_sparse_tensor": "sparse tensors", "_rebuild_sparse_csr_tensor": "sparse CSR tensors",
    "_rebuild_qtensor": "quantized tensors", "_rebuild_nested_tensor": "nested tensors",
    "_rebuild_wrapper_subclass": "tensor subclasses", "_rebuild_from_type": "tensor subclasses",
    "_rebuild_from_type_v2": "tensor subclasses", "_rebuild_meta_tensor_no_storage": "meta tensors",
    "_rebuild_device_tensor_from_numpy": "device tensors", "_rebuild_xla_tensor": "XLA tensors",
    "_rebuild_mtia_tensor": "MTIA tensors", "_rebuild_device_tensor_from_cpu_tensor": "device tensors",
}


class _StorageType(Inert):
    __slots__ = ("name", "dtype")

    def __init__(self, name: str, dtype: str | None):
        self.name, self.dtype = name, dtype


class _TorchDtype(Inert):
    __slots__ = ("name", "dtype")

    def __init__(self, name: str, dtype: str | None):
        self.name, self.dtype = name, dtype

    def __repr__(self) -> str:
        return f"torch.{self.name}"


class Storage(Inert):
    """One storage: `numel` elements of `dtype` at byte `offset` of `file` (the offset of a
    legacy file's storage is learnt after the pickle that references it). A zip record's
    `record` is (its byte count, the CRC-32 its directory states), so a tensor that is the
    whole record can be copied with that CRC instead of reading the copy back for it."""

    __slots__ = ("key", "dtype", "numel", "file", "offset", "swap", "record")
    tensor_data = True

    def __init__(self, key: str, dtype: str, numel: int, file: RegularFile, offset: int | None, swap: bool,
                 record: tuple[int, int] | None = None):
        self.key, self.dtype, self.numel, self.file, self.offset, self.swap = key, dtype, numel, file, offset, swap
        self.record = record

    def read(self, start: int, count: int, dtype: str) -> np.ndarray:
        """`count` elements of `dtype` from element `start` (in units of `dtype`)."""
        dt = dtypes.STORAGE[dtype]
        if self.offset is None:
            raise CheckpointError(f"{self.file.path}: storage {shown(self.key)} has no data in the file")
        buf = self.file.read_range(self.offset + start * dt.itemsize, count * dt.itemsize,
                                   f"storage {shown(self.key)}")
        out = buf.view(dt)
        if self.swap and dtypes.STORAGE[self.dtype].itemsize == dt.itemsize > 1:
            out.byteswap(inplace=True)  # torch swaps by the storage's dtype
        return out

    @property
    def nbytes(self) -> int:
        return self.numel * dtypes.itemsize(self.dtype)


class Tensor(Inert):
    """A tensor read from a pickle: where its elements are, not yet the elements. A packed
    one (torch's float4_e2m1fn_x2) is a uint8 tensor of its bytes here, `packed` naming
    the dtype of the values they hold, two per byte."""

    __slots__ = ("storage", "offset", "shape", "stride", "dtype", "requires_grad", "packed")

    def __init__(self, storage: Storage, offset: int, shape: tuple[int, ...], stride: tuple[int, ...], dtype: str):
        self.storage, self.offset, self.shape, self.stride, self.dtype = storage, offset, shape, stride, dtype
        self.requires_grad = False
        self.packed: str | None = None

    @property
    def info(self) -> TensorInfo:
        """Its shape and dtype as mapspec (and safetensors) count them: a packed tensor's
        last dimension counts values."""
        if self.packed:
            return TensorInfo((*self.shape[:-1], self.shape[-1] * 2), self.packed)
        return TensorInfo(self.shape, self.dtype)

    @property
    def span(self) -> int:
        """Elements from the first to the last one the view touches (0 if empty)."""
        if 0 in self.shape:
            return 0
        return 1 + sum((s - 1) * st for s, st in zip(self.shape, self.stride))

    def read(self) -> np.ndarray:
        """The tensor's values (bf16 as uint16 bits), read now into a fresh buffer."""
        if self.packed:
            packed = np.ascontiguousarray(self._read()).reshape(-1)
            return dtypes.from_raw(packed, self.info.shape, self.packed)
        return self._read()

    def _read(self) -> np.ndarray:
        dt = dtypes.STORAGE[self.dtype]
        if 0 in self.shape:
            return np.zeros(self.shape, dt)
        flat = self.storage.read(self.offset, self.span, self.dtype)
        if self.stride == _contiguous(self.shape):
            return flat.reshape(self.shape)
        return np.lib.stride_tricks.as_strided(flat, shape=self.shape, strides=tuple(s * dt.itemsize for s in self.stride),
                                               writeable=False)

    def extent(self) -> tuple[RegularFile, int, int, int | None] | None:
        """(file, byte offset, byte count, CRC-32 or None) if the tensor is its bytes as stored:
        contiguous, not byte-swapped, in a storage whose place in the file is known. The CRC is
        the archive's own for its record, given when the tensor is that whole record."""
        storage = self.storage
        if storage.offset is None or (storage.swap and dtypes.itemsize(self.dtype) > 1):
            return None
        if 0 not in self.shape and self.stride != _contiguous(self.shape):
            return None
        size = dtypes.itemsize(self.dtype)
        nbytes = math.prod(self.shape) * size
        whole = storage.record is not None and self.offset == 0 and storage.record[0] == nbytes
        return storage.file, storage.offset + self.offset * size, nbytes, storage.record[1] if whole else None

    def __repr__(self) -> str:
        return f"Tensor({self.dtype}, {self.shape})"


def _contiguous(shape: tuple[int, ...]) -> tuple[int, ...]:
    stride, n = [], 1
    for size in reversed(shape):
        stride.insert(0, n)
        n *= size
    return tuple(stride)


class _TorchGlobals:
    """torch's side of the unpickler: storages by key, tensor rebuilds with bounds checks."""

    def __init__(self, path: Path, file: RegularFile, locate, legacy: bool = False):
        self.path, self.file, self._locate, self.legacy = path, file, locate, legacy
        self.storages: dict[str, Storage] = {}
        self.expanded = 0

    def unsupported(self, what: str, name: str) -> CheckpointError:
        return CheckpointError(f"{self.path}: holds {what} ({name}), which mapspec does not support "
                               "(valid PyTorch content, not a safety issue)")

    def extra(self, module: str, name: str) -> Any:
        if module == "torch._utils":
            if name in ("_rebuild_tensor_v2", "_rebuild_tensor"):
                return self.rebuild_v2
            if name == "_rebuild_tensor_v3":
                return self.rebuild_v3
            if name in ("_rebuild_parameter", "_rebuild_parameter_with_state"):
                return self.rebuild_parameter
            if name in UNSUPPORTED_REBUILDS:
                raise self.unsupported(UNSUPPORTED_REBUILDS[name], f"torch._utils.{name}")
        if module == "torch.serialization" and name == "_get_layout":
            raise self.unsupported("tensors of a sparse layout", "torch.serialization._get_layout")
        if module in ("torch", "torch.storage"):
            if name in STORAGE_DTYPES:
                return _StorageType(name, STORAGE_DTYPES[name])
            if name in UNSUPPORTED_STORAGES:
                return _StorageType(name, None)
            if name in TORCH_DTYPES:
                return _TorchDtype(name, TORCH_DTYPES[name])
            if name in TORCH_PACKED:  # its bytes, two values in each
                return _TorchDtype(name, "uint8")
            if name in UNSUPPORTED_DTYPES:
                return _TorchDtype(name, None)
            if name == "Size":
                return self._size
            if name == "device":
                return Device
        return None

    def _size(self, dims=()):
        if not isinstance(dims, (list, tuple)) or len(dims) > MAX_NDIM:
            raise CheckpointError(f"{self.path}: torch.Size of unexpected arguments")
        return tuple(dims)

    def persistent(self, pid) -> Storage:
        if not isinstance(pid, tuple) or len(pid) not in (5, 6) or pid[0] != "storage":
            raise CheckpointError(f"{self.path}: unsupported persistent id {shown(pid)}")
        stype, key, numel = pid[1], pid[2], pid[4]
        if not isinstance(stype, _StorageType):
            raise CheckpointError(f"{self.path}: corrupt storage reference (type {shown(type(stype).__name__)})")
        if stype.dtype is None:
            raise self.unsupported(f"{UNSUPPORTED_STORAGES[stype.name]} tensors", f"torch.{stype.name}")
        if not isinstance(key, (str, int)) or isinstance(key, bool) or not isinstance(numel, int) or numel < 0:
            raise CheckpointError(f"{self.path}: corrupt storage reference {shown(pid)}")
        key = str(key)
        storage = self.storages.get(key)
        if storage is None:  # as torch: the first reference decides the dtype and size
            storage = self._locate(key, stype.dtype, numel)
            if numel or self.legacy:  # torch does not keep empty zip storages
                self.storages[key] = storage
        view = pid[5] if len(pid) == 6 else None
        if view is not None:  # legacy storage view: (view_key, offset, size) in elements
            if not (isinstance(view, tuple) and len(view) == 3 and all(isinstance(v, int) for v in view[1:])):
                raise CheckpointError(f"{self.path}: corrupt storage view {shown(view)}")
            _key, offset, size = view
            if not (0 <= offset and 0 <= size and offset + size <= storage.numel):
                raise CheckpointError(f"{self.path}: storage view of {size} elements at {offset} outside "
                                      f"storage {shown(key)} of {storage.numel}")
            return _StorageView(storage, offset, size)
        return storage

    def rebuild_v2(self, storage, offset, size, stride, requires_grad=False, *_rest) -> Tensor:
        if isinstance(storage, _StorageView):
            return self._rebuild(storage.base, storage.start + _int(offset, self.path), size, stride,
                                 storage.base.dtype, limit=storage.start + storage.size)
        if not isinstance(storage, Storage):
            raise CheckpointError(f"{self.path}: a tensor without a storage")
        return self._rebuild(storage, offset, size, stride, storage.dtype)

    def rebuild_parameter(self, data, requires_grad=False, *_rest):
        # A bound method, like every callable handed to the unpickler: BUILD cannot set
        # attributes on it (on a plain function it could, for the whole process).
        if isinstance(data, Tensor):
            data.requires_grad = bool(requires_grad)
        return data

    def rebuild_v3(self, storage, offset, size, stride, requires_grad, hooks, dtype, *_rest) -> Tensor:
        if not isinstance(dtype, _TorchDtype):
            raise CheckpointError(f"{self.path}: a tensor whose dtype is not a torch dtype")
        if dtype.dtype is None:
            raise self.unsupported(f"{dtype.name} tensors", f"torch.{dtype.name}")
        if not isinstance(storage, Storage):
            raise CheckpointError(f"{self.path}: a tensor without a storage")
        tensor = self._rebuild(storage, offset, size, stride, dtype.dtype)
        if dtype.name in TORCH_PACKED:
            if not tensor.shape:
                raise self.unsupported(f"0-d {dtype.name} tensors", f"torch.{dtype.name}")
            tensor.packed = TORCH_PACKED[dtype.name]
        return tensor

    def _rebuild(self, storage: Storage, offset, size, stride, dtype: str, limit: int | None = None) -> Tensor:
        if not isinstance(size, (tuple, list)) or not isinstance(stride, (tuple, list)):
            raise CheckpointError(f"{self.path}: corrupt tensor geometry (size and stride must be sequences)")
        size, stride = tuple(size), tuple(stride)
        offset = _int(offset, self.path)
        if len(size) > MAX_NDIM:
            dtypes.check_shape(size, f"{self.path}: a tensor")  # says how many dimensions
        if len(size) != len(stride) or not all(
                isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 2 ** 63 for v in size + stride):
            raise CheckpointError(f"{self.path}: corrupt tensor geometry size={shown(size)} stride={shown(stride)}")
        dtypes.check_shape(size, f"{self.path}: a tensor")
        itemsize = dtypes.itemsize(dtype)
        # The storage in units of this tensor's dtype (v3 tensors view untyped bytes).
        available = (storage.nbytes if limit is None else limit * dtypes.itemsize(storage.dtype)) // itemsize
        tensor = Tensor(storage, offset, size, stride, dtype)
        if tensor.span and offset + tensor.span > available:
            raise CheckpointError(f"{self.path}: tensor of size {shown(size)} at offset {offset} reaches element "
                                  f"{offset + tensor.span - 1}, outside its storage {shown(storage.key)} of {available}")
        numel = math.prod(size)
        if numel > tensor.span:  # a view that repeats elements: its bytes are not in the file
            self.expanded += numel * itemsize
            if self.expanded > MAX_EXPANDED_BYTES:
                raise CheckpointError(f"{self.path}: broadcast views (stride 0 or overlapping) expand {tensor.span} "
                                      f"stored elements to {numel}; mapspec expands at most "
                                      f"{MAX_EXPANDED_BYTES >> 20} MiB of such views per file")
        return tensor


class _StorageView(Inert):
    __slots__ = ("base", "start", "size")
    tensor_data = True

    def __init__(self, base: Storage, start: int, size: int):
        self.base, self.start, self.size = base, start, size


def _int(value, path: Path) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 2 ** 63:
        raise CheckpointError(f"{path}: corrupt tensor offset {shown(value)}")
    return value


# ------------------------------------------------------------------ files

class Checkpoint:
    """What a torch.save file holds (`object`), its tensors read from `file` on demand."""

    def __init__(self, obj: Any, file: RegularFile):
        self.object, self.file = obj, file

    def close(self) -> None:
        self.file.close()


def load(path: Path) -> Checkpoint:
    """Open a torch.save file: its object, with tensors as `Tensor`s not yet read."""
    path = location(path)
    file = open_bytes(path)
    try:
        with reading(path):
            head = file.read_bytes(0, min(4, file.size), "the file header")
            obj = _load_zip(path, file) if head == b"PK\x03\x04" else _load_legacy(path, file)
        return Checkpoint(obj, file)
    except BaseException:
        file.close()
        raise


def _load_zip(path: Path, file: RegularFile) -> Any:
    members = ZipMembers(file)
    try:
        pkl = [i for i in members.infos if i.filename.endswith("/data.pkl") and i.filename.count("/") == 1]
        if not pkl:
            raise CheckpointError(f"{path}: a zip file, but not a torch.save file (no <dir>/data.pkl)")
        prefix = pkl[0].filename[: -len("data.pkl")]
        # One folder for every record, as torch requires: a second data.pkl or storage in
        # another folder would make which records are the checkpoint a guess.
        stray = next((i.filename for i in members.infos if not i.filename.startswith(prefix)), None)
        if stray is not None:
            raise CheckpointError(f"{path}: record {shown(stray)} is outside the archive's folder "
                                  f"{shown(prefix)} (torch refuses such files)")
        data_pkl = members.read(pkl[0], MAX_PICKLE)
        swap = False
        order = members.by_name.get(prefix + "byteorder")
        if order is not None:
            text = members.read(order, 16)
            if text not in (b"little", b"big"):
                raise CheckpointError(f"{path}: unknown byte order {shown(text)} in {prefix}byteorder")
            swap = text == b"big"

        def locate(key: str, dtype: str, numel: int) -> Storage:
            info = members.by_name.get(f"{prefix}data/{key}")
            if info is None:
                raise CheckpointError(f"{path}: storage {shown(key)} is missing from the archive")
            nbytes = numel * dtypes.itemsize(dtype)
            # Exactly, as torch checks: a record longer than its storage has bytes that belong
            # to no element, so which of them are the tensor is not what the file says.
            if nbytes != info.file_size:
                raise CheckpointError(f"{path}: storage {shown(key)} claims {nbytes} bytes, its entry holds "
                                      f"{info.file_size}")
            if info.compress_type != 0:
                raise CheckpointError(f"{path}: storage record {shown(key)} is compressed; torch writes them "
                                      "uncompressed and mapspec reads only those")
            return Storage(key, dtype, numel, file, members.data_offset(info), swap, (info.file_size, info.CRC))

        torch = _TorchGlobals(path, file, locate)
        return unpickle(data_pkl, path, torch.extra, torch.persistent)
    finally:
        members.close()


def _load_legacy(path: Path, file: RegularFile) -> Any:
    """Consecutive pickles: magic, protocol, sys_info, the object, the storage keys; then per
    storage key an int64 element count and the raw bytes."""
    pos = 0

    def next_pickle(**kw) -> Any:
        """The pickle at `pos`: read in growing windows until its STOP is inside one."""
        nonlocal pos
        window = 1 << 16
        while True:
            data = file.read_bytes(pos, min(window, file.size - pos), "a pickle")
            try:
                end = check_pickle(data, path, base=pos)
                break
            except PickleTruncated:
                if pos + len(data) >= file.size or window >= MAX_PICKLE:
                    raise CheckpointError(f"{path}: the pickle at byte {pos} ends without STOP (truncated, "
                                          "or larger than mapspec reads)") from None
                window *= 4
        obj = unpickle(data[:end], path, checked=True, **kw)
        pos += end
        return obj

    try:
        magic = next_pickle()
    except CheckpointError:
        magic = None
    if magic != LEGACY_MAGIC:
        raise CheckpointError(f"{path}: not a PyTorch checkpoint (neither a zip nor the legacy magic number)")
    if next_pickle() != 1001:
        raise CheckpointError(f"{path}: unsupported legacy protocol")
    next_pickle()  # sys_info
    torch = _TorchGlobals(path, file, lambda key, dtype, numel: Storage(key, dtype, numel, file, None, False),
                          legacy=True)
    obj = next_pickle(extra=torch.extra, persistent=torch.persistent)
    keys = next_pickle()
    if not isinstance(keys, (list, tuple)):
        raise CheckpointError(f"{path}: corrupt legacy storage list")
    for key in keys:
        storage = torch.storages.get(str(key))
        if storage is None:
            raise CheckpointError(f"{path}: storage {shown(key)} at byte {pos} is not referenced by the pickle")
        count = int.from_bytes(file.read_bytes(pos, 8, f"the size of storage {shown(key)}"), "little", signed=True)
        if count != storage.numel:
            raise CheckpointError(f"{path}: storage {shown(key)} at byte {pos} holds {count} elements, "
                                  f"the pickle says {storage.numel}")
        storage.offset = pos + 8
        pos += 8 + storage.nbytes
        if pos > file.size:
            raise CheckpointError(f"{path}: storage {shown(key)} at byte {storage.offset} runs past the end of the file")
    missing = [k for k, s in torch.storages.items() if s.offset is None]
    if missing:
        raise CheckpointError(f"{path}: storage {shown(missing[0])} has no data in the file")
    return obj


__all__ = ["Checkpoint", "MAX_DEPTH", "StandIn", "Tensor", "load"]
