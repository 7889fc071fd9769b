"""OneFlow's `flow.save` directory (OneFlow 0.8 / 0.9). The oneflow package does not install
here, so the layout is written down and tested byte for byte:

    <dir>/pickled_data        pickle (protocol 4) of {"protocol_version": 1, "data": obj}; each
                              tensor is NEWOBJ(oneflow.Tensor, ()) + BUILD({"path": "tensor_<N>"})
    <dir>/tensor_<N>/meta     protobuf text: "shape {\\n  dim: 2\\n  dim: 3\\n}\\ndata_type: kFloat\\n"
    <dir>/tensor_<N>/out      the raw C-order bytes

N comes from a global counter in OneFlow, so readers follow the path in the pickle. The older
layout, `<dir>/<param name>/{meta,out}` beside a `snapshot_done` file, is read too.
"""

from __future__ import annotations

import copyreg
import io
import pickle
import re
from collections import OrderedDict
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from .. import dtypes
from ..errors import CheckpointError, UsageError
from ..plan import TensorInfo
from .base import AtomicPath, MappedFile
from .torch_pickle import StandIn, _Reader, _no_storage

DATA_TYPES = {
    "kChar": "int8", "kFloat": "float32", "kDouble": "float64", "kInt8": "int8", "kInt32": "int32",
    "kInt64": "int64", "kUInt8": "uint8", "kFloat16": "float16", "kBFloat16": "bfloat16", "kBool": "bool",
}
CODES = {"float32": "kFloat", "float64": "kDouble", "int8": "kInt8", "int32": "kInt32", "int64": "kInt64",
         "uint8": "kUInt8", "float16": "kFloat16", "bfloat16": "kBFloat16", "bool": "kBool"}
TENSOR_CLASSES = {"oneflow.Tensor", "oneflow.nn.Parameter", "oneflow.framework.tensor.Tensor"}


def meta_text(info: TensorInfo) -> str:
    dims = "".join(f"  dim: {d}\n" for d in info.shape)
    return f"shape {{\n{dims}}}\ndata_type: {CODES[info.dtype]}\n"


def parse_meta(text: str, where: Path) -> TensorInfo:
    m = re.search(r"shape\s*\{([^}]*)\}", text)
    t = re.search(r"data_type:\s*(\w+)", text)
    if not m or not t or t[1] not in DATA_TYPES:
        raise CheckpointError(f"{where}: not a OneFlow tensor meta (shape and data_type expected)")
    dims = tuple(int(d) for d in re.findall(r"dim:\s*(\d+)", m[1]))
    return TensorInfo(dims, DATA_TYPES[t[1]])


def is_oneflow_dir(path: Path) -> bool:
    return path.is_dir() and ((path / "pickled_data").is_file() or (path / "snapshot_done").exists())


class OneflowSource:
    def __init__(self, path: Path):
        self.path = Path(path)
        if not self.path.is_dir():
            raise CheckpointError(f"{self.path}: a OneFlow checkpoint is a directory")
        self._dirs: dict[str, Path] = {}
        pickled = self.path / "pickled_data"
        if pickled.is_file():
            try:
                obj = _Reader(io.BytesIO(pickled.read_bytes()), _no_storage, pickled).load()
            except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as exc:
                raise CheckpointError(f"{pickled}: unreadable pickle ({exc})") from None
            data = obj.get("data") if isinstance(obj, dict) else None
            if data is None:
                raise CheckpointError(f"{pickled}: no 'data' entry (not saved by flow.save)")
            self._walk(data, "")
        else:  # the older layout: one folder per tensor, named by its key
            for meta in sorted(self.path.rglob("meta")):
                if (meta.parent / "out").is_file():
                    self._dirs[meta.parent.relative_to(self.path).as_posix().replace("/", ".")] = meta.parent
        self._infos = {k: parse_meta((d / "meta").read_text("utf-8"), d / "meta") for k, d in self._dirs.items()}
        self._files: dict[str, MappedFile] = {}

    def _walk(self, obj: Any, prefix: str, depth: int = 0) -> None:
        if depth > 100:
            raise CheckpointError(f"{self.path}: the pickle nests too deeply")
        if isinstance(obj, StandIn) and obj.qualname() in TENSOR_CLASSES:
            rel = obj.__dict__.get("path")
            target = (self.path / str(rel)).resolve() if rel else None
            if target is None or self.path.resolve() not in target.parents:
                raise CheckpointError(f"{self.path}: tensor '{prefix}' points outside the checkpoint ({rel!r})")
            self._dirs[prefix] = target
        elif isinstance(obj, dict):
            for k, v in obj.items():
                self._walk(v, f"{prefix}.{k}" if prefix else str(k), depth + 1)
        elif isinstance(obj, (list, tuple)):
            for i, v in enumerate(obj):
                self._walk(v, f"{prefix}.{i}" if prefix else str(i), depth + 1)

    def infos(self) -> Mapping[str, TensorInfo]:
        return self._infos

    def read(self, key: str) -> np.ndarray:
        info = self._infos[key]
        f = self._files.get(key)
        if f is None:
            f = self._files[key] = MappedFile(self._dirs[key] / "out")
        if f.size != info.nbytes:
            raise CheckpointError(f"{self._dirs[key] / 'out'}: {f.size} bytes, its meta says {info.nbytes}")
        return f.array.view(dtypes.STORAGE[info.dtype]).reshape(info.shape)

    def release(self, key: str) -> None:
        f = self._files.pop(key, None)
        if f is not None:
            f.close()

    def close(self) -> None:
        self._files = {}


class _Tensor:
    """Pickles as flow.save pickles a tensor: NEWOBJ(oneflow.Tensor, ()) + BUILD({"path": ...})."""

    def __init__(self, path: str):
        self.path = path

    def __reduce_ex__(self, protocol):
        return copyreg.__newobj__, (_Tensor,), {"path": self.path}


class _Pickler(pickle._Pickler):
    """The pure-Python pickler, told to name `_Tensor` as oneflow.Tensor."""

    def save_global(self, obj, name=None):
        if obj is _Tensor:
            self.write(pickle.GLOBAL + b"oneflow\nTensor\n")
            self.memoize(obj)
            return
        super().save_global(obj, name)

    dispatch = dict(pickle._Pickler.dispatch)
    dispatch[type] = save_global


class OneflowSink:
    def __init__(self, path: Path, outputs: Mapping[str, TensorInfo], metadata=None):
        bad = sorted({i.dtype for i in outputs.values()} - set(CODES))
        if bad:
            raise UsageError(f"OneFlow checkpoints cannot hold {', '.join(bad)} tensors")
        self.final = Path(path)
        self.atomic = AtomicPath(self.final, directory=True)
        self.infos = dict(outputs)
        self.paths = {name: f"tensor_{i}" for i, name in enumerate(outputs)}
        data = OrderedDict((name, _Tensor(p)) for name, p in self.paths.items())
        buf = io.BytesIO()
        _Pickler(buf, protocol=4).dump({"protocol_version": 1, "data": data})
        (self.atomic.tmp / "pickled_data").write_bytes(buf.getvalue())

    def write(self, name: str, array: np.ndarray) -> None:
        folder = self.atomic.tmp / self.paths[name]
        folder.mkdir()
        (folder / "meta").write_text(meta_text(self.infos[name]), encoding="utf-8")
        (folder / "out").write_bytes(dtypes.raw(array, self.infos[name].dtype))

    def commit(self) -> None:
        self.atomic.commit()

    def abort(self) -> None:
        self.atomic.abort()
