"""PyTorch checkpoints (`.pt`, `.pth`, `.bin`, `.ckpt`).

Reading needs no torch: `torch_pickle` unpickles with known-safe globals only, and each
tensor is read from the file when asked for. Nested dicts (training checkpoints) are flattened
with dots, so `select model` picks `checkpoint["model"]`; a pickled `nn.Module` contributes
what its `state_dict()` would; entries that are not tensors (epoch, config) are skipped.
Writing streams torch's own zip format through torch.
"""

from __future__ import annotations

import errno
import io
import math
import pickle
import warnings
from collections import OrderedDict
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from ..errors import CheckpointError, UsageError
from ..plan import TensorInfo
from ..provenance import RECORD
from .base import AtomicPath
from .reading import brief
from .torch_pickle import StandIn, Tensor, load
from .unpickle import MAX_DEPTH, MAX_NODES, Budget


def require_torch(what: str):
    try:
        import torch
    except ImportError:
        raise UsageError(f"{what} needs torch: pip install 'mapspec[torch]'") from None
    return torch


def is_module(obj: Any) -> bool:
    return isinstance(obj, StandIn) and "_parameters" in obj.__dict__ and "_modules" in obj.__dict__


def _items(value: Any) -> list:
    return list(value.items()) if isinstance(value, Mapping) else []


def module_state(module: StandIn, prefix: str, out: dict, budget: Budget, depth: int = 0) -> None:
    """What `module.state_dict()` returns, from a pickled module's stored attributes."""
    if depth > MAX_DEPTH:
        raise CheckpointError("the module tree nests deeper than mapspec reads")
    budget.spend()
    d = module.__dict__
    for name, value in _items(d.get("_parameters")):
        budget.spend()
        if isinstance(value, Tensor):
            out[prefix + str(name)] = value
    skip = d.get("_non_persistent_buffers_set")
    skip = skip if isinstance(skip, (set, frozenset, list, tuple, dict)) else ()
    for name, value in _items(d.get("_buffers")):
        budget.spend()
        if isinstance(value, Tensor) and not _member(name, skip):
            out[prefix + str(name)] = value
    for name, child in _items(d.get("_modules")):
        if is_module(child):
            module_state(child, f"{prefix}{name}.", out, budget, depth + 1)


def _member(name: Any, collection) -> bool:
    try:
        return name in collection
    except TypeError:  # an unhashable name from the file
        return False


def flatten(obj: Any, prefix: str, out: dict, depth: int = 0, budget: Budget | None = None) -> None:
    """Every tensor under `obj`, keyed by dotted path. Shared references are walked each
    time they are met (as torch's state_dict does), within `budget` visits in all."""
    if budget is None:
        budget = Budget(MAX_NODES, "the checkpoint's object graph has")
    if depth > MAX_DEPTH:
        raise CheckpointError("the checkpoint nests deeper than mapspec reads")
    budget.spend()
    if isinstance(obj, Tensor):
        out[prefix] = obj
    elif is_module(obj):
        module_state(obj, f"{prefix}." if prefix else "", out, budget, depth + 1)
    elif isinstance(obj, Mapping):
        for k, v in obj.items():
            k = k if isinstance(k, str) else str(k) if isinstance(k, int) else brief(k)
            flatten(v, f"{prefix}.{k}" if prefix else k, out, depth + 1, budget)
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            flatten(v, f"{prefix}.{i}" if prefix else str(i), out, depth + 1, budget)


class TorchSource:
    def __init__(self, path: Path):
        self.path = Path(path)
        self._checkpoint = load(self.path)
        self.object = self._checkpoint.object
        self._tensors: dict[str, Tensor] = {}
        flatten(self.object, "", self._tensors)
        self._infos = {k: TensorInfo(t.shape, t.dtype) for k, t in self._tensors.items()}

    def infos(self) -> Mapping[str, TensorInfo]:
        return self._infos

    def read(self, key: str) -> np.ndarray:
        return self._tensors[key].read()

    def extent(self, key: str):
        return self._tensors[key].extent()

    def release(self, key: str) -> None:
        found = self._tensors[key].extent()
        if found:
            found[0].release(found[1], found[2])

    def close(self) -> None:
        self._tensors = {}
        self.object = None
        self._checkpoint.close()


def to_torch(array: np.ndarray, dtype: str):
    torch = require_torch("writing .pt files")
    with warnings.catch_warnings():
        # Read-only memory maps are fine here: torch.save only reads them.
        warnings.simplefilter("ignore", UserWarning)
        if dtype == "bfloat16":
            return torch.from_numpy(np.asarray(array, order="C").view(np.int16)).view(torch.bfloat16)
        return torch.from_numpy(np.asarray(array, order="C"))


STORAGE_TYPES = {
    "float64": "DoubleStorage", "float32": "FloatStorage", "float16": "HalfStorage",
    "bfloat16": "BFloat16Storage", "int64": "LongStorage", "int32": "IntStorage",
    "int16": "ShortStorage", "int8": "CharStorage", "uint8": "ByteStorage", "bool": "BoolStorage",
}


class _StorageRef:
    def __init__(self, key: str, dtype: str, numel: int):
        self.key, self.dtype, self.numel = key, dtype, numel


class _TensorRef:
    """Pickles as torch.save pickles a contiguous tensor whose storage is `data/<key>`."""

    def __init__(self, storage: _StorageRef, shape: tuple[int, ...]):
        self.storage, self.shape = storage, shape

    def __reduce_ex__(self, protocol):
        import torch

        stride, n = [], 1
        for size in reversed(self.shape):
            stride.insert(0, n)
            n *= size
        return (torch._utils._rebuild_tensor_v2,
                (self.storage, 0, tuple(self.shape), tuple(stride), False, OrderedDict()))


class TorchSink:
    """Writes torch.save's zip format one tensor at a time.

    torch.save needs every tensor in memory at once. Its pickle, though, holds only names,
    shapes, dtypes and storage keys, all known from the plan, so it is written first with
    torch's own record writer, and each tensor's bytes follow as a `data/<key>` record as it
    arrives. torch.load reads the result like any torch.save file (tests check both ways)."""

    def __init__(self, path: Path, outputs: Mapping[str, TensorInfo], metadata=None):
        torch = require_torch("writing .pt files")
        unsupported = sorted({i.dtype for i in outputs.values()} - set(STORAGE_TYPES))
        if unsupported:
            raise UsageError(f"torch files cannot hold {', '.join(unsupported)} tensors")
        self.atomic = AtomicPath(path)
        self.provenance = metadata
        self.infos = dict(outputs)
        self.keys = {name: str(i) for i, name in enumerate(outputs)}
        state = OrderedDict(
            (name, _TensorRef(_StorageRef(self.keys[name], info.dtype, math.prod(info.shape)), info.shape))
            for name, info in outputs.items())
        buf = io.BytesIO()
        pickler = pickle.Pickler(buf, protocol=2)
        pickler.persistent_id = lambda obj: (
            ("storage", getattr(torch, STORAGE_TYPES[obj.dtype]), obj.key, "cpu", obj.numel)
            if isinstance(obj, _StorageRef) else None)
        pickler.dump(state)
        self.writer = torch._C.PyTorchFileWriter(str(self.atomic.tmp))
        data = buf.getvalue()
        with _write_errors():
            self.writer.write_record("data.pkl", data, len(data))
            self.writer.write_record(".format_version", "1", 1)
            self.writer.write_record(".storage_alignment", "64", 2)
            self.writer.write_record("byteorder", "little", len("little"))
        self.written: set[str] = set()

    def write(self, name: str, array: np.ndarray) -> None:
        tensor = to_torch(array, self.infos[name].dtype)
        storage = tensor.untyped_storage()
        with _write_errors():
            self.writer.write_record(f"data/{self.keys[name]}", storage, storage.nbytes())
        self.written.add(name)

    def commit(self) -> None:
        if set(self.infos) - self.written:
            raise RuntimeError("torch sink closed with tensors unwritten")
        with _write_errors():
            if self.provenance is not None:  # a record the pickle does not name: torch.load skips it
                record = self.provenance.json().encode()
                self.writer.write_record(RECORD, record, len(record))
            self.writer.write_end_of_file()
        self.writer = None
        self.atomic.commit()

    def abort(self) -> None:
        # After a failed write, the writer's destructor would finish the archive, fail again
        # and abort the process from C++; finishing it here (its error ignored) marks it done.
        writer, self.writer = self.writer, None
        if writer is not None:
            try:
                writer.write_end_of_file()
            except Exception:
                pass
        self.atomic.abort()


class _write_errors:
    """torch's writer reports a full disk as RuntimeError: make it the OSError it is."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind, exc, tb) -> None:
        if isinstance(exc, RuntimeError):
            raise OSError(errno.EIO, f"torch's writer failed ({str(exc).splitlines()[0][:200]})") from None
