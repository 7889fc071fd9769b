"""PyTorch state dicts (`.pt`, `.pth`, `.bin`, `.ckpt`) through torch itself.

Reading uses `torch.load(weights_only=True, mmap=True)`: no code from the file runs and
tensors stay on disk until read. Nested dicts (training checkpoints) are flattened with dots,
so `select model` picks `checkpoint["model"]`; non-tensor entries (epoch, config) are skipped.
"""

from __future__ import annotations

import io
import pickle
import warnings
from collections import OrderedDict
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from ..errors import CheckpointError, UsageError
from ..plan import TensorInfo
from .base import AtomicPath

TORCH_DTYPES = {
    "float64": "float64", "float32": "float32", "float16": "float16", "bfloat16": "bfloat16",
    "int64": "int64", "int32": "int32", "int16": "int16", "int8": "int8", "uint8": "uint8",
    "bool": "bool", "uint16": "uint16", "uint32": "uint32", "uint64": "uint64",
}


def require_torch(what: str):
    try:
        import torch
    except ImportError:
        raise UsageError(f"{what} needs torch: pip install 'mapspec[torch]'") from None
    return torch


def flatten(obj: Any, prefix: str, out: dict) -> None:
    torch = require_torch("reading .pt files")
    if isinstance(obj, torch.Tensor):
        out[prefix] = obj
    elif isinstance(obj, Mapping):
        for k, v in obj.items():
            flatten(v, f"{prefix}.{k}" if prefix else str(k), out)
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            flatten(v, f"{prefix}.{i}" if prefix else str(i), out)


class TorchSource:
    def __init__(self, path: Path):
        torch = require_torch("reading .pt files")
        self.path = Path(path)
        obj = None
        for mmap in (True, False):  # legacy (pre-1.6) files cannot be memory-mapped
            try:
                obj = torch.load(self.path, map_location="cpu", weights_only=True, mmap=mmap)
                break
            except FileNotFoundError:
                raise CheckpointError(f"{self.path}: no such file") from None
            except Exception as exc:  # torch raises many types for bad files
                text = str(exc)
                if mmap and "mmap" in text.lower():
                    continue
                reason = _reason(text) or type(exc).__name__
                if "GLOBAL" in text or "Unsupported global" in text:
                    raise CheckpointError(f"{self.path}: refusing to unpickle: the file holds more than "
                                          f"tensors and plain containers ({reason})") from None
                raise CheckpointError(f"{self.path}: not a readable PyTorch checkpoint ({reason})") from None
        self._tensors: dict[str, Any] = {}
        flatten(obj, "", self._tensors)
        self._infos = {}
        for k, t in self._tensors.items():
            name = str(t.dtype).removeprefix("torch.")
            if name not in TORCH_DTYPES:
                raise CheckpointError(f"{self.path}: tensor '{k}' has unsupported dtype {name}")
            self._infos[k] = TensorInfo(tuple(t.shape), TORCH_DTYPES[name])

    def infos(self) -> Mapping[str, TensorInfo]:
        return self._infos

    def read(self, key: str) -> np.ndarray:
        import torch

        t = self._tensors[key].detach()
        if t.dtype == torch.bfloat16:
            return t.view(torch.int16).numpy().view(np.uint16)
        return t.numpy()

    def close(self) -> None:
        self._tensors = {}


_BOILERPLATE = ("Weights only load failed", "Please file an issue", "Check the documentation")


def _reason(message: str) -> str:
    """The one informative line of torch's long weights_only messages."""
    for line in message.splitlines():
        line = line.strip()
        if line and not line.startswith(_BOILERPLATE):
            return line
    return ""


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
        self.infos = dict(outputs)
        self.keys = {name: str(i) for i, name in enumerate(outputs)}
        state = OrderedDict(
            (name, _TensorRef(_StorageRef(self.keys[name], info.dtype, _numel(info.shape)), info.shape))
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
        self.writer.write_end_of_file()
        self.writer = None
        self.atomic.commit()

    def abort(self) -> None:
        self.writer = None
        self.atomic.abort()


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n
