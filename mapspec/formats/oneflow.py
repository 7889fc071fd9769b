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

from ..core.lazy import numpy as np

from ..core import dtypes
from ..errors import CheckpointError, UsageError
from .provenance import RECORD
from ..core.tensorinfo import TensorInfo
from .atomic import AtomicPath
from .protocol import SinkBase, SourceBase
from .registry import Format
from .reading import RegularFile, clip, read_small, shown
from .unpickle import MAX_DEPTH, MAX_NODES, MAX_PICKLE, Budget, StandIn, unpickle

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


MAX_META = 1 << 16  # bytes of a meta record; real ones are under a hundred


def parse_meta(text: str, where: Path) -> TensorInfo:
    m = re.search(r"shape\s*\{([^}]*)\}", text)
    t = re.search(r"data_type:\s*(\w+)", text)
    if not m or not t or t[1] not in DATA_TYPES:
        raise CheckpointError(f"{where}: not a OneFlow tensor meta (shape and data_type expected)")
    digits = re.findall(r"dim:\s*(-?\d+)", m[1])
    if any(len(d) > 19 or d.startswith("-") for d in digits):
        raise CheckpointError(f"{where}: a dimension that is negative or too large ({clip(max(digits, key=len), 40)})")
    dims = dtypes.check_shape(tuple(int(d) for d in digits), f"{where}: the tensor")
    return TensorInfo(dims, DATA_TYPES[t[1]])


def read_meta(path: Path) -> TensorInfo:
    try:
        text = read_small(path, MAX_META, "OneFlow meta record").decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CheckpointError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    return parse_meta(text, path)


def is_oneflow_dir(path: Path) -> bool:
    return path.is_dir() and ((path / "pickled_data").is_file() or (path / "snapshot_done").exists())


class OneflowSource(SourceBase):
    def __init__(self, path: Path):
        self.path = Path(path)
        if not self.path.is_dir():
            raise CheckpointError(f"{self.path}: a OneFlow checkpoint is a directory")
        self._root = self.path.resolve()
        self._dirs: dict[str, Path] = {}
        pickled = self.path / "pickled_data"
        if pickled.is_file():
            obj = unpickle(read_small(self._inside(pickled), MAX_PICKLE, "pickle"), pickled)
            data = obj.get("data") if isinstance(obj, dict) else None
            if data is None:
                raise CheckpointError(f"{pickled}: no 'data' entry (not saved by flow.save)")
            self._walk(data, "", Budget(MAX_NODES, f"{pickled}: the pickle's object graph has"))
        else:  # the older layout: one folder per tensor, named by its key
            for meta in sorted(self.path.rglob("meta")):
                if (meta.parent / "out").is_file():
                    self._dirs[meta.parent.relative_to(self.path).as_posix().replace("/", ".")] = meta.parent
        # Every file read must be inside the checkpoint, symlinks resolved.
        self._files = {k: (self._inside(d / "meta"), self._inside(d / "out")) for k, d in self._dirs.items()}
        self._infos = {k: read_meta(meta) for k, (meta, _out) in self._files.items()}

    def _inside(self, path: Path) -> Path:
        real = path.resolve()
        if self._root not in real.parents:
            raise CheckpointError(f"{path}: leads outside the checkpoint directory (to {clip(str(real), 120)}); "
                                  "refusing to follow it")
        return real

    def _walk(self, obj: Any, prefix: str, budget: Budget, depth: int = 0) -> None:
        if depth > MAX_DEPTH:
            raise CheckpointError(f"{self.path}: the pickle nests too deeply")
        budget.spend()
        if isinstance(obj, StandIn) and obj.qualname() in TENSOR_CLASSES:
            rel = obj.__dict__.get("path")
            if not isinstance(rel, str) or not rel:
                raise CheckpointError(f"{self.path}: tensor {shown(prefix)} has no path")
            target = self.path / rel
            if self._root not in target.resolve().parents:
                raise CheckpointError(f"{self.path}: tensor {shown(prefix)} points outside the checkpoint ({shown(rel)})")
            self._dirs[prefix] = target
        elif isinstance(obj, dict):
            for k, v in obj.items():
                self._walk(v, f"{prefix}.{k}" if prefix else str(k), budget, depth + 1)
        elif isinstance(obj, (list, tuple)):
            for i, v in enumerate(obj):
                self._walk(v, f"{prefix}.{i}" if prefix else str(i), budget, depth + 1)

    def infos(self) -> Mapping[str, TensorInfo]:
        return self._infos

    def read(self, key: str) -> np.ndarray:
        info = self._infos[key]
        out = self._files[key][1]
        with RegularFile(out) as f:
            if f.size != info.nbytes:
                raise CheckpointError(f"{out}: {f.size} bytes, its meta says {info.nbytes}")
            raw = f.read_range(0, info.nbytes, "tensor data")
        return raw.view(dtypes.STORAGE[info.dtype]).reshape(info.shape)

    def close(self) -> None:
        """Nothing stays open: each read opens its tensor's file and closes it."""


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


class OneflowSink(SinkBase):
    def __init__(self, path: Path, outputs: Mapping[str, TensorInfo], metadata=None):
        bad = sorted({i.dtype for i in outputs.values()} - set(CODES))
        if bad:
            raise UsageError(f"OneFlow checkpoints cannot hold {', '.join(bad)} tensors")
        self.final = Path(path)
        self.atomic = AtomicPath(self.final, directory=True)
        self.provenance = metadata
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
        if self.provenance is not None:  # flow.load reads only what the pickle names
            (self.atomic.tmp / RECORD).write_text(self.provenance.json(), encoding="utf-8")
        self.atomic.commit()  # replacing an earlier output only with --force

    def abort(self) -> None:
        self.atomic.abort()


FORMAT = Format("oneflow", "OneFlow flow.save directory", OneflowSource, OneflowSink,
                frozenset(CODES), sniff=lambda path, head: is_oneflow_dir(path), directory=True)
