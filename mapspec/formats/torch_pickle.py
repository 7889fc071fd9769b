"""Reading torch.save files without torch and without running code from them.

A restricted unpickler: known-safe globals map to small local functions (rebuilding tensors
as strided views of the memory-mapped file, bounds-checked), dangerous callables are refused
by name, and every other class becomes an inert stand-in that keeps its state and calls
nothing, so a pickled `nn.Module` (a YOLO `DetectionModel`, say) yields its parameters and
persistent buffers as its `state_dict()` would, without the package that defined it.

Both layouts: the zip format (torch >= 1.6: `<dir>/data.pkl` + `<dir>/data/<key>`) and the
legacy one (consecutive pickles, then each storage as int64 count + raw bytes).
"""

from __future__ import annotations

import _compat_pickle
import io
import pickle
import struct
import zipfile
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .. import dtypes
from ..errors import CheckpointError
from .base import MappedFile

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C

# torch.<X>Storage and torch.<dtype> names -> dtype names
STORAGE_DTYPES = {
    "DoubleStorage": "float64", "FloatStorage": "float32", "HalfStorage": "float16",
    "BFloat16Storage": "bfloat16", "LongStorage": "int64", "IntStorage": "int32",
    "ShortStorage": "int16", "CharStorage": "int8", "ByteStorage": "uint8", "BoolStorage": "bool",
    "UInt16Storage": "uint16", "UInt32Storage": "uint32", "UInt64Storage": "uint64",
    "UntypedStorage": "uint8",
}
TORCH_DTYPES = {
    "float64": "float64", "double": "float64", "float32": "float32", "float": "float32",
    "float16": "float16", "half": "float16", "bfloat16": "bfloat16", "int64": "int64", "long": "int64",
    "int32": "int32", "int": "int32", "int16": "int16", "short": "int16", "int8": "int8",
    "uint8": "uint8", "bool": "bool", "uint16": "uint16", "uint32": "uint32", "uint64": "uint64",
}

# Modules and builtins that can run anything: refused outright, by name.
BLOCKED_MODULES = {
    "os", "posix", "nt", "subprocess", "sys", "shutil", "socket", "importlib", "runpy", "pickle",
    "marshal", "ctypes", "code", "codeop", "pty", "commands", "webbrowser", "multiprocessing",
    "threading", "signal", "io", "pathlib", "tempfile", "glob", "platform", "types", "inspect",
    "operator", "functools", "itertools", "asyncio", "builtins", "__builtin__", "torch.hub",
    "torch.serialization", "torch.jit", "numpy.testing", "pydoc", "timeit", "cProfile", "profile",
    "pdb", "bdb", "trace", "gc", "ast", "dis", "zipimport", "pkgutil", "site", "sysconfig",
}
SAFE_BUILTINS = {"set", "frozenset", "slice", "complex", "range", "tuple", "list", "dict", "int", "float",
                 "str", "bytes", "bool", "object"}
MAX_DEPTH = 200


class UnsafeGlobal(CheckpointError):
    pass


class Tensor:
    """A tensor read from a pickle: a numpy view (bf16 as uint16 bits) and its dtype name."""

    __slots__ = ("array", "dtype", "requires_grad")

    def __init__(self, array: np.ndarray, dtype: str, requires_grad: bool = False):
        self.array, self.dtype, self.requires_grad = array, dtype, requires_grad

    def __repr__(self) -> str:
        return f"Tensor({self.dtype}, {tuple(self.array.shape)})"


class StandIn:
    """An instance of a class the file names but mapspec does not trust: state kept, nothing run."""

    _module = "?"
    _name = "?"

    def __new__(cls, *args, **kwargs):  # REDUCE and NEWOBJ both land here; __init__ adds nothing
        obj = object.__new__(cls)
        obj.__dict__.update(_args=args, _items={}, _list=[], _state=None)
        return obj

    def __setstate__(self, state):
        if isinstance(state, tuple) and len(state) == 2 and (state[0] is None or isinstance(state[0], dict)):
            state, slots = state
            self.__dict__.update(slots or {})
        if isinstance(state, dict):
            self.__dict__.update(state)
        else:
            self.__dict__["_state"] = state

    def __setitem__(self, key, value):
        self.__dict__["_items"][key] = value

    def append(self, value):
        self.__dict__["_list"].append(value)

    def extend(self, values):
        self.__dict__["_list"].extend(values)

    def __reduce__(self):  # never re-pickled with real classes
        raise TypeError("stand-ins cannot be pickled")

    @classmethod
    def qualname(cls) -> str:
        return f"{cls._module}.{cls._name}"

    def __repr__(self) -> str:
        return f"<{self.qualname()}>"


_STANDINS: dict[tuple[str, str], type] = {}


def standin(module: str, name: str) -> type:
    key = (module, name)
    if key not in _STANDINS:
        _STANDINS[key] = type(name.rsplit(".", 1)[-1], (StandIn,), {"_module": module, "_name": name})
    return _STANDINS[key]


class _StorageType:
    def __init__(self, dtype: str):
        self.dtype = dtype


class _Device:
    def __init__(self, *args):
        self.args = args

    def __repr__(self) -> str:
        return f"device({', '.join(map(str, self.args))})"


def _numpy_scalar(dtype, data=None):
    dt = np.dtype(dtype)
    if dt.hasobject:
        raise UnsafeGlobal("numpy scalar of object dtype")
    if data is None:
        return dt.type(0)
    if isinstance(data, str):
        data = data.encode("latin1")
    if len(data) != dt.itemsize:
        raise CheckpointError("corrupt numpy scalar in pickle")
    return np.frombuffer(data, dt)[0]


def _numpy_dtype(name, align=False, copy=False):
    dt = np.dtype(name)
    if dt.hasobject:
        raise UnsafeGlobal("numpy object dtype")
    return dt


def _codecs_encode(text, encoding="utf-8"):
    if encoding not in ("latin1", "latin-1", "utf-8", "utf8"):
        raise UnsafeGlobal(f"_codecs.encode with encoding {encoding!r}")
    return text.encode(encoding)


class _Reader(pickle.Unpickler):
    """`storage(key, dtype, numel)` gives a storage's memory as a flat numpy array."""

    def __init__(self, file, storage: Callable[[str, str, int], np.ndarray], path: Path,
                 legacy_views: bool = False):
        super().__init__(file, encoding="latin1")
        self._storage = storage
        self._path = path
        self._legacy = legacy_views

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _compat_pickle.NAME_MAPPING:
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        elif module in _compat_pickle.IMPORT_MAPPING:
            module = _compat_pickle.IMPORT_MAPPING[module]
        safe = _safe_global(module, name)
        if safe is not None:
            return safe
        root = module.split(".")[0]
        if module in BLOCKED_MODULES or root in BLOCKED_MODULES or name in ("eval", "exec", "system", "__import__"):
            raise UnsafeGlobal(f"{self._path}: refusing to unpickle: the file calls {module}.{name}, "
                               "which could run arbitrary code")
        return standin(module, name)

    def persistent_load(self, pid):
        if not isinstance(pid, tuple) or not pid or pid[0] != "storage":
            raise CheckpointError(f"{self._path}: unsupported persistent id {pid!r:.80}")
        stype, key, numel = pid[1], str(pid[2]), pid[4]
        dtype = stype.dtype if isinstance(stype, _StorageType) else None
        if dtype is None or not isinstance(numel, int) or numel < 0:
            raise CheckpointError(f"{self._path}: corrupt storage reference {pid!r:.80}")
        data = self._storage(key, dtype, numel)
        if len(pid) > 5 and pid[5] is not None:  # legacy view: (view_key, offset, size)
            _view_key, offset, size = pid[5]
            if not (0 <= offset and offset + size <= numel):
                raise CheckpointError(f"{self._path}: storage view outside storage {key}")
            data = data[offset:offset + size]
        return (dtype, data)


def _rebuild_tensor(storage, offset, size, stride, requires_grad=False, *_rest) -> Tensor:
    if not (isinstance(storage, tuple) and len(storage) == 2):
        raise CheckpointError("tensor without a storage")
    dtype, data = storage
    size, stride = tuple(size), tuple(stride)
    if len(size) != len(stride) or any(not isinstance(v, int) or v < 0 for v in size + stride + (offset,)):
        raise CheckpointError(f"corrupt tensor geometry size={size} stride={stride} offset={offset}")
    numel = len(data)
    if 0 not in size:
        last = offset + sum((s - 1) * st for s, st in zip(size, stride))
        if last >= numel:
            raise CheckpointError(f"tensor of size {size} at offset {offset} reaches element {last}, "
                                  f"outside its storage of {numel}")
    itemsize = data.itemsize
    base = data[offset:] if offset < numel else data[:0]
    array = np.lib.stride_tricks.as_strided(base, shape=size, strides=tuple(s * itemsize for s in stride),
                                            writeable=False) if 0 not in size else np.zeros(size, data.dtype)
    return Tensor(array, dtype, bool(requires_grad))


def _rebuild_parameter(data, requires_grad=False, *_rest):
    if isinstance(data, Tensor):
        data.requires_grad = bool(requires_grad)
    return data


def _safe_global(module: str, name: str) -> Any:
    if module == "collections" and name == "OrderedDict":
        return OrderedDict
    if module == "torch._utils" and name in ("_rebuild_tensor_v2", "_rebuild_tensor"):
        return _rebuild_tensor
    if module == "torch._utils" and name in ("_rebuild_parameter", "_rebuild_parameter_with_state"):
        return _rebuild_parameter
    if module == "torch" and name in STORAGE_DTYPES:
        return _StorageType(STORAGE_DTYPES[name])
    if module == "torch" and name in TORCH_DTYPES:
        return f"torch.{TORCH_DTYPES[name]}"
    if module == "torch" and name == "Size":
        return tuple
    if module == "torch" and name == "device":
        return _Device
    if module in ("builtins", "__builtin__") and name in SAFE_BUILTINS:
        import builtins

        return getattr(builtins, name)
    if module == "_codecs" and name == "encode":
        return _codecs_encode
    if module in ("numpy.core.multiarray", "numpy._core.multiarray") and name == "scalar":
        return _numpy_scalar
    if module == "numpy" and name == "dtype":
        return _numpy_dtype
    if module == "copyreg" and name == "_reconstructor":
        return _reconstructor
    return None


def _reconstructor(cls, base, state=None):
    if isinstance(cls, type) and issubclass(cls, StandIn):
        return cls.__new__(cls)
    if base is object and cls in (OrderedDict, dict, list, set):
        return cls()
    raise UnsafeGlobal(f"copyreg._reconstructor of {cls!r}")


# ------------------------------------------------------------------ files

def load(path: Path, mapped: MappedFile | None = None) -> Any:
    """The object a torch.save file holds, tensors as `Tensor` views of the mapped file
    (`mapped`, if the caller wants to release or locate their pages)."""
    path = Path(path)
    try:
        mapped = mapped or MappedFile(path)
    except OSError as exc:
        raise CheckpointError(f"{path}: {exc.strerror}") from None
    try:
        if zipfile.is_zipfile(path):
            return _load_zip(path, mapped)
        return _load_legacy(path, mapped)
    except (CheckpointError, MemoryError):
        raise
    except RecursionError:
        raise CheckpointError(f"{path}: the pickle nests deeper than mapspec reads") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, KeyError, IndexError, AttributeError,
            struct.error, zipfile.BadZipFile, UnicodeDecodeError, OverflowError) as exc:
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({type(exc).__name__}: "
                              f"{str(exc)[:120]})") from None


def _load_zip(path: Path, mapped: MappedFile) -> Any:
    with zipfile.ZipFile(path) as z:
        infos = z.infolist()
        pkl = [i for i in infos if i.filename.endswith("/data.pkl") and i.filename.count("/") == 1]
        if not pkl:
            raise CheckpointError(f"{path}: a zip file, but not a torch.save file (no <dir>/data.pkl)")
        prefix = pkl[0].filename[: -len("data.pkl")]
        by_name = {i.filename: i for i in infos}
        data_pkl = z.read(pkl[0])

        def storage(key: str, dtype: str, numel: int) -> np.ndarray:
            info = by_name.get(f"{prefix}data/{key}")
            if info is None:
                raise CheckpointError(f"{path}: storage {key} is missing from the archive")
            nbytes = numel * dtypes.itemsize(dtype)
            if nbytes > info.file_size:
                raise CheckpointError(f"{path}: storage {key} claims {nbytes} bytes, its entry holds {info.file_size}")
            if info.compress_type != zipfile.ZIP_STORED:
                raw = np.frombuffer(z.read(info), np.uint8)
            else:
                start = _data_offset(mapped, info, path)
                raw = mapped.array[start:start + info.file_size]
            return raw[:nbytes].view(dtypes.STORAGE[dtype])

        return _Reader(io.BytesIO(data_pkl), storage, path).load()


def _data_offset(mapped: MappedFile, info: zipfile.ZipInfo, path: Path) -> int:
    at = info.header_offset
    head = mapped.array[at:at + 30].tobytes()
    if len(head) < 30 or head[:4] != b"PK\x03\x04":
        raise CheckpointError(f"{path}: corrupt local header for {info.filename} at byte {at}")
    name_len, extra_len = struct.unpack("<HH", head[26:30])
    start = at + 30 + name_len + extra_len
    if start + info.file_size > mapped.size:
        raise CheckpointError(f"{path}: entry {info.filename} at byte {start} runs past the end of the file")
    return start


def _load_legacy(path: Path, mapped: MappedFile) -> Any:
    f = _MapFile(mapped)
    if _Reader(f, _no_storage, path).load() != LEGACY_MAGIC:
        raise CheckpointError(f"{path}: not a PyTorch checkpoint (neither a zip nor the legacy magic number)")
    if _Reader(f, _no_storage, path).load() != 1001:
        raise CheckpointError(f"{path}: unsupported legacy protocol")
    _Reader(f, _no_storage, path).load()  # sys_info
    object_at = f.tell()
    # The storages' bytes come after the pickle that uses them. A first pass with zero-cost
    # stand-in storages learns which storages exist; a second one builds the real views.
    wanted: dict[str, tuple[str, int]] = {}

    def fake(key: str, dtype: str, numel: int) -> np.ndarray:
        wanted.setdefault(key, (dtype, numel))
        one = np.zeros(1, dtypes.STORAGE[dtype])
        return np.lib.stride_tricks.as_strided(one, shape=(numel,), strides=(0,), writeable=False)

    _Reader(f, fake, path).load()
    keys = _Reader(f, _no_storage, path).load()
    found: dict[str, np.ndarray] = {}
    for key in keys:
        at = f.tell()
        (count,) = struct.unpack("<q", f.read(8) or b"\0" * 8)
        dtype, _numel = wanted.get(str(key), ("uint8", count))
        nbytes = count * dtypes.itemsize(dtype)
        start = f.tell()
        if count < 0 or start + nbytes > mapped.size:
            raise CheckpointError(f"{path}: storage {key} at byte {at} runs past the end of the file")
        found[str(key)] = mapped.array[start:start + nbytes].view(dtypes.STORAGE[dtype])
        f.seek(start + nbytes)

    def real(key: str, dtype: str, numel: int) -> np.ndarray:
        data = found.get(key)
        if data is None or len(data) < numel:
            raise CheckpointError(f"{path}: storage {key} is missing or shorter than {numel} elements")
        return data

    f.seek(object_at)
    return _Reader(f, real, path).load()


class _MapFile(io.RawIOBase):
    """A read-only file object over the mapped bytes, for consecutive pickles."""

    def __init__(self, mapped: MappedFile):
        self._a = mapped.array
        self._pos = 0

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        end = len(self._a) if n is None or n < 0 else min(len(self._a), self._pos + n)
        out = self._a[self._pos:end].tobytes()
        self._pos = end
        return out

    def readline(self, limit: int = -1) -> bytes:
        rest = self._a[self._pos:self._pos + (limit if limit and limit > 0 else 1 << 20)].tobytes()
        i = rest.find(b"\n")
        out = rest if i < 0 else rest[: i + 1]
        self._pos += len(out)
        return out

    def seek(self, pos: int, whence: int = 0) -> int:
        self._pos = pos if whence == 0 else self._pos + pos if whence == 1 else len(self._a) + pos
        return self._pos

    def tell(self) -> int:
        return self._pos


def _no_storage(key, dtype, numel):
    raise CheckpointError("a storage reference where none belongs")
