"""PyTorch checkpoints (`.pt`, `.pth`, `.bin`, `.ckpt`).

Reading needs no torch: `torch_pickle` unpickles with known-safe globals only and maps every
tensor to a view of the memory-mapped file. Nested dicts (training checkpoints) are flattened
with dots, so `select model` picks `checkpoint["model"]`; a pickled `nn.Module` contributes
what its `state_dict()` would; entries that are not tensors (epoch, config) are skipped.
Writing streams torch's own zip format through torch.
"""

from __future__ import annotations

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
from .torch_pickle import MAX_DEPTH, StandIn, Tensor, load


def require_torch(what: str):
    try:
        import torch
    except ImportError:
        raise UsageError(f"{what} needs torch: pip install 'mapspec[torch]'") from None
    return torch


def is_module(obj: Any) -> bool:
    return isinstance(obj, StandIn) and "_parameters" in obj.__dict__ and "_modules" in obj.__dict__


def module_state(module: StandIn, prefix: str, out: dict, depth: int = 0) -> None:
    """What `module.state_dict()` returns, from a pickled module's stored attributes."""
    if depth > MAX_DEPTH:
        raise CheckpointError("the module tree nests deeper than mapspec reads")
    d = module.__dict__
    for name, value in (d.get("_parameters") or {}).items():
        if isinstance(value, Tensor):
            out[prefix + name] = value
    skip = d.get("_non_persistent_buffers_set") or set()
    for name, value in (d.get("_buffers") or {}).items():
        if isinstance(value, Tensor) and name not in skip:
            out[prefix + name] = value
    for name, child in (d.get("_modules") or {}).items():
        if is_module(child):
            module_state(child, f"{prefix}{name}.", out, depth + 1)


def flatten(obj: Any, prefix: str, out: dict, depth: int = 0) -> None:
    if depth > MAX_DEPTH:
        raise CheckpointError("the checkpoint nests deeper than mapspec reads")
    if isinstance(obj, Tensor):
        out[prefix] = obj
    elif is_module(obj):
        module_state(obj, f"{prefix}." if prefix else "", out, depth + 1)
    elif isinstance(obj, Mapping):
        for k, v in obj.items():
            flatten(v, f"{prefix}.{k}" if prefix else str(k), out, depth + 1)
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            flatten(v, f"{prefix}.{i}" if prefix else str(i), out, depth + 1)


class TorchSource:
    def __init__(self, path: Path):
        self.path = Path(path)
        if not self.path.exists():
            raise CheckpointError(f"{self.path}: no such file")
        self.object = load(self.path)
        self._tensors: dict[str, Tensor] = {}
        flatten(self.object, "", self._tensors)
        self._infos = {k: TensorInfo(tuple(t.array.shape), t.dtype) for k, t in self._tensors.items()}

    def infos(self) -> Mapping[str, TensorInfo]:
        return self._infos

    def read(self, key: str) -> np.ndarray:
        return self._tensors[key].array

    def close(self) -> None:
        self._tensors = {}
        self.object = None


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
        self.writer.write_record("data.pkl", data, len(data))
        self.writer.write_record(".format_version", "1", 1)
        self.writer.write_record(".storage_alignment", "64", 2)
        self.writer.write_record("byteorder", "little", len("little"))
        self.written: set[str] = set()

    def write(self, name: str, array: np.ndarray) -> None:
        tensor = to_torch(array, self.infos[name].dtype)
        storage = tensor.untyped_storage()
        self.writer.write_record(f"data/{self.keys[name]}", storage, storage.nbytes())
        self.written.add(name)

    def commit(self) -> None:
        if set(self.infos) - self.written:
            raise RuntimeError("torch sink closed with tensors unwritten")
        if self.provenance is not None:  # a record the pickle does not name: torch.load skips it
            record = self.provenance.json().encode()
            self.writer.write_record(RECORD, record, len(record))
        self.writer.write_end_of_file()
        self.writer = None
        self.atomic.commit()

    def abort(self) -> None:
        self.writer = None
        self.atomic.abort()
