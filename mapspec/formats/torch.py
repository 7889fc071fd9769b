"""PyTorch checkpoints (`.pt`, `.pth`, `.bin`, `.ckpt`).

Reading needs no torch: `torch_pickle` unpickles with known-safe globals only, and each
tensor is read from the file when asked for. Nested dicts (training checkpoints) are flattened
with dots, so `select model` picks `checkpoint["model"]`; a pickled `nn.Module` contributes
what its `state_dict()` would; entries that are not tensors (epoch, config) are skipped.
Writing streams torch's zip format natively (`torch_zip`): no torch needed.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any, Mapping

from ..core.lazy import numpy as np

from ..core import dtypes
from ..errors import CheckpointError, UsageError
from .provenance import RECORD
from ..core.tensorinfo import TensorInfo
from .atomic import AtomicPath
from .placement import copy_extent, worth_placing
from .protocol import Extent, SinkBase, SourceBase
from .reading import ZipMembers, brief, location, open_bytes
from .registry import Format
from .torch_pickle import StandIn, Tensor, load
from .torch_zip import TORCH_WRITES, V3_TYPES, ZipWriter, state_pickle, torch_refuses, torch_shape
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


# Where common training-checkpoint layouts keep the model, in order of preference.
AUTO_SELECT = ("state_dict", "model_state_dict", "model", "ema", "net", "module", "params")


def auto_select(obj: Any) -> str | None:
    """The sub-tree that holds the model in common training-checkpoint layouts."""
    if not isinstance(obj, dict) or all(isinstance(v, Tensor) for v in obj.values()):
        return None
    for name in AUTO_SELECT:
        value = obj.get(name)
        if value is not None and (is_module(value) or _holds_tensors(value)):
            return name
    return None


def _holds_tensors(obj: Any) -> bool:
    found: dict = {}
    flatten(obj, "", found)
    return bool(found)


class TorchSource(SourceBase):
    def __init__(self, path: Path):
        self.path = location(path)
        self._checkpoint = load(self.path)
        self.object = self._checkpoint.object
        self._tensors: dict[str, Tensor] = {}
        flatten(self.object, "", self._tensors)
        self._infos = {k: t.info for k, t in self._tensors.items()}

    def infos(self) -> Mapping[str, TensorInfo]:
        return self._infos

    def read(self, key: str) -> np.ndarray:
        return self._tensors[key].read()

    def auto_select(self) -> str | None:
        return auto_select(self.object)

    def extent(self, key: str) -> Extent | None:
        found = self._tensors[key].extent()
        return Extent(*found) if found else None

    def release(self, key: str) -> None:
        found = self._tensors[key].extent()
        if found:
            file, offset, nbytes, _crc = found
            file.release(offset, nbytes)

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
        if dtype in dtypes.LOW_PRECISION:  # the bytes as stored, viewed as torch's dtype
            info = TensorInfo(tuple(np.shape(array)), dtype)
            stored = np.frombuffer(dtypes.raw(array, dtype), np.uint8).copy()
            return torch.from_numpy(stored).view(getattr(torch, V3_TYPES[dtype])).reshape(torch_shape(info))
        return torch.from_numpy(np.asarray(array, order="C"))


class TorchSink(SinkBase):
    """Writes torch.save's zip format natively (see `torch_zip`), one tensor at a time.

    torch.save needs every tensor in memory at once, and importing torch alone costs a
    second and 220 MiB. The pickle holds only names, shapes, dtypes and storage keys, all
    known from the plan, so it is written first, and each tensor's bytes follow as a
    `data/<key>` record as they arrive. torch.load(weights_only=True) and transformers'
    from_pretrained read the result like any torch.save file (tests check both)."""

    def __init__(self, path: Path, outputs: Mapping[str, TensorInfo], metadata=None,
                 copied_from: Mapping[str, int] | None = None, wrap=None):
        for name, info in outputs.items():
            why = torch_refuses(info)
            if why:
                raise UsageError(f"{brief(name)}: {why}")
        self.atomic = AtomicPath(path)
        self.provenance = metadata
        # Records of large copied tensors start at their source offset modulo GRANULE (when
        # that is 64-byte aligned, as torch's records are): see `placement.GRANULE`.
        self.near = {k: v for k, v in (copied_from or {}).items() if worth_placing(outputs[k].nbytes)}
        self.infos = dict(outputs)
        self.keys = {name: str(i) for i, name in enumerate(outputs)}
        self.pending = list(outputs)  # records follow the pickle's order
        self.file = self.atomic.open("r+b")  # not "wb": truncating makes close() flush everything
        self.zip = ZipWriter(self.file)
        self.zip.add("data.pkl", state_pickle(outputs, self.keys, wrap))  # wrap: (key, extras), see RankedSink
        self.zip.add(".format_version", b"1")
        self.zip.add(".storage_alignment", b"64")
        self.zip.add("byteorder", b"little")

    def _begin(self, name: str) -> int:
        if not self.pending or self.pending[0] != name:
            raise RuntimeError(f"torch sink: '{name}' written out of plan order")
        self.pending.pop(0)
        return self.zip.begin(f"data/{self.keys[name]}", self.infos[name].nbytes, self.near.get(name))

    def write(self, name: str, array: np.ndarray) -> None:
        self._begin(name)
        self.zip.write(dtypes.raw(array, self.infos[name].dtype))
        self.zip.end()

    def write_region(self, name: str, extent: Extent) -> bool:
        start = self._begin(name)
        self.file.flush()
        copy_extent(extent, self.file.fileno(), start)
        self.zip.copied(self.file.fileno(), start, extent.nbytes, extent.crc32)
        self.file.seek(start + extent.nbytes)
        self.zip.end()
        return True

    def commit(self) -> None:
        if self.pending:
            raise RuntimeError(f"torch sink closed with {len(self.pending)} tensors unwritten")
        if self.provenance is not None:  # a record the pickle does not name: torch.load skips it
            self.zip.add(RECORD, self.provenance.json().encode())
        self.zip.add("version", b"3\n")
        self.zip.add(".data/serialization_id", os.urandom(20).hex().encode())
        self.zip.finish()
        self.file.truncate()
        self.file.close()
        self.atomic.commit()

    def abort(self) -> None:
        self.zip.cancel()  # the CRC worker stops reading the file before it is closed
        self.atomic.abort()  # closes the file first, ignoring a failed flush


def is_torch_zip(path: Path) -> bool:
    """A zip holding `<dir>/data.pkl`: torch.save's format (an .npz is a zip without it)."""
    with open_bytes(path) as f:
        members = ZipMembers(f)
        try:
            return any(i.filename.endswith("data.pkl") for i in members.infos)
        finally:
            members.close()


def _is_torch(path: Path, head: bytes) -> bool:
    return is_torch_zip(path) if head[:4] == b"PK\x03\x04" else head[:1] == b"\x80"


FORMAT = Format("torch", "PyTorch torch.save", TorchSource, TorchSink,
                TORCH_WRITES, sniff=_is_torch,
                hf_layout=("pytorch_model.bin", "pytorch_model", "pytorch_model.bin.index.json"), places_copies=True)
