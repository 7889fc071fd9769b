"""Format adapters, chosen by file suffix (or `--to`), or by sniffing a source's first bytes."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

from ..errors import CheckpointError, UsageError
from ..plan import TensorInfo
from .base import AtomicPath, Selected, Sink, Source
from .reading import RegularFile, ZipMembers, reading

SUFFIXES = {
    ".safetensors": "safetensors",
    ".pt": "torch", ".pth": "torch", ".bin": "torch", ".ckpt": "torch",
    ".npz": "npz",
    ".params": "mxnet",
    ".wts": "wts",
    ".oneflow": "oneflow", ".of": "oneflow",
}
FORMAT_NAMES = {"safetensors": "safetensors", "pt": "torch", "torch": "torch", "pytorch": "torch", "npz": "npz",
                "mxnet": "mxnet", "params": "mxnet", "wts": "wts", "tensorrt": "wts",
                "oneflow": "oneflow"}


# format -> (module, source class, sink class); modules load on first use, so converting
# MXNet to safetensors never imports torch.
ADAPTERS = {
    "safetensors": ("safetensors", "SafetensorsSource", "SafetensorsSink"),
    "torch": ("torch", "TorchSource", "TorchSink"),
    "npz": ("npz", "NpzSource", "NpzSink"),
    "mxnet": ("mxnet", "MXNetSource", "MXNetSink"),
    "wts": ("wts", "WtsSource", "WtsSink"),
    "oneflow": ("oneflow", "OneflowSource", "OneflowSink"),
}


def _classes(fmt: str):
    if fmt not in ADAPTERS:
        raise UsageError(f"unknown format '{fmt}' (known: {', '.join(sorted(set(FORMAT_NAMES)))})")
    import importlib

    module, source, sink = ADAPTERS[fmt]
    mod = importlib.import_module(f".{module}", __name__)
    return getattr(mod, source), getattr(mod, sink)


def sniff(path: Path) -> str:
    fmt = SUFFIXES.get(path.suffix.lower())
    if fmt:
        return fmt
    from .oneflow import is_oneflow_dir

    if is_oneflow_dir(path):
        return "oneflow"
    if path.is_dir():
        raise CheckpointError(f"{path}: a directory, but not a OneFlow checkpoint (no pickled_data)")
    with reading(path), RegularFile(path) as f:
        head = f.read_bytes(0, min(9, f.size), "the file header")
        from .mxnet import is_mxnet

        if is_mxnet(head):
            return "mxnet"
        if head[:4] == b"PK\x03\x04":
            members = ZipMembers(f)
            try:
                names = [i.filename for i in members.infos]
            finally:
                members.close()
            return "torch" if any(n.endswith("data.pkl") for n in names) else "npz"
    if len(head) == 9 and head[8:9] == b"{":
        return "safetensors"
    if head[:1] == b"\x80":
        return "torch"
    raise CheckpointError(f"{path}: unknown checkpoint format (expected .safetensors, .pt, .npz, .params)")


class Guarded:
    """A source whose every failure while reading is one `CheckpointError` naming its file
    (see `reading`): the one error discipline, for every format."""

    def __init__(self, inner: Source):
        self.inner = inner
        self.path = inner.path
        self.object = getattr(inner, "object", None)
        if hasattr(inner, "release"):
            self.release = self._release
        if hasattr(inner, "extent"):
            self.extent = self._extent

    def infos(self) -> Mapping[str, TensorInfo]:
        with reading(self.path):
            return self.inner.infos()

    def read(self, key: str):
        with reading(self.path):
            return self.inner.read(key)

    def _release(self, key: str) -> None:
        with reading(self.path):
            self.inner.release(key)

    def _extent(self, key: str):
        with reading(self.path):
            return self.inner.extent(key)

    def close(self) -> None:
        with reading(self.path):
            self.inner.close()


def open_source(path: str | Path, fmt: str | None = None, select: str | None = None,
                epoch: int | None = None) -> Source:
    """A lazy source. `select` picks a sub-tree; None lets a training checkpoint pick its
    model part automatically (see `inspect.auto_select`); "" keeps the whole file."""
    from .mxnet import resolve_prefix

    path = resolve_prefix(Path(path), epoch)
    if not path.exists():
        raise CheckpointError(f"{path}: no such file{_epoch_hint(path) if epoch is None else ''}")
    fmt = FORMAT_NAMES.get(fmt, fmt) if fmt else sniff(path)
    source_cls, _ = _classes(fmt)
    with reading(path):
        source = Guarded(source_cls(path))
    try:
        auto = False
        if select is None and source.object is not None:
            from ..inspect import auto_select

            # A training checkpoint (model, ema, optimizer, epoch...) converts its model part.
            with reading(path):
                select = auto_select(source.object)
            auto = bool(select)
        if not select:
            return source
        selected = Selected(source, select)
        selected.auto = auto
        return selected
    except BaseException:
        source.close()
        raise


def _epoch_hint(path: Path) -> str:
    """`r50` when `r50-0000.params` exists: the MXNet prefix form, which needs --epoch."""
    import glob
    import re

    found = sorted(p.name for p in path.parent.glob(f"{glob.escape(path.name)}-*.params")
                   if re.fullmatch(r"-[0-9]+\.params", p.name[len(path.name):]))
    if not found:
        return ""
    epoch = int(found[-1][len(path.name) + 1:-len(".params")])
    return (f"; {', '.join(found[-3:])} {'exists' if len(found) == 1 else 'exist'}: "
            f"it is an MXNet checkpoint prefix, add --epoch {epoch}")


def read_infos(path: str | Path, select: str | None = None) -> dict[str, TensorInfo]:
    source = open_source(path, select=select)
    try:
        return dict(source.infos())
    finally:
        source.close()


def sink_format(path: str | Path, to: str | None) -> str:
    if to:
        if to not in FORMAT_NAMES:
            raise UsageError(f"unknown output format '{to}' (known: {', '.join(sorted(FORMAT_NAMES))})")
        return FORMAT_NAMES[to]
    fmt = SUFFIXES.get(Path(path).suffix.lower())
    if fmt is None:
        raise UsageError(f"cannot tell the output format from '{Path(path).name}'; use --to "
                         f"({', '.join(sorted(FORMAT_NAMES))})")
    return fmt


def open_sink(path: str | Path, fmt: str, outputs: Mapping[str, TensorInfo], metadata=None) -> Sink:
    _, sink_cls = _classes(fmt)
    return sink_cls(Path(path), outputs, metadata)


__all__ = ["AtomicPath", "Sink", "Source", "open_sink", "open_source", "read_infos", "sink_format", "sniff"]
