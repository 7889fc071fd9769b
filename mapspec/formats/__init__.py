"""Format adapters, looked up in the registry (`registry.Format`): by `--to` name, by file
suffix, or by sniffing a source's first bytes. Sharded checkpoints (an HF index, a model
directory, a list or glob of shards) open as one source over the union of their keys."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Iterable, Mapping, Sequence

from ..errors import CheckpointError, UsageError
from ..tensorinfo import TensorInfo
from .base import AtomicPath, Extent, Selected, Sink, Source, SourceBase
from .reading import RegularFile, reading
from .registry import HEAD_BYTES, Format

# One module per format, each ending with `FORMAT = Format(...)`; sniffing tries them in this
# order. The modules import numpy only, so converting MXNet to safetensors never imports torch.
MODULES = ("safetensors", "mxnet", "torch", "npz", "oneflow", "wts")


def formats() -> tuple[Format, ...]:
    return tuple(importlib.import_module(f".{m}", __name__).FORMAT for m in MODULES)


def by_name(name: str) -> Format:
    for f in formats():
        if name.lower() in f.names:
            return f
    raise UsageError(f"unknown format '{name}' (known: {known_names()})")


def known_names() -> str:
    """Every format with its aliases, for help texts and errors: 'safetensors, torch (pt, pytorch), ...'."""
    return ", ".join(f.name + (f" ({', '.join(f.aliases)})" if f.aliases else "") for f in formats())


def by_suffix(path: Path) -> Format | None:
    suffix = path.suffix.lower()
    return next((f for f in formats() if suffix in f.suffixes), None)


def sniff(path: Path) -> str:
    """The format of a single checkpoint (file or format directory), by suffix, else by content."""
    fmt = by_suffix(path)
    if fmt:
        return fmt.name
    head = b""
    if not path.is_dir():
        with reading(path), RegularFile(path) as f:
            head = f.read_bytes(0, min(HEAD_BYTES, f.size), "the file header")
    with reading(path):
        for f in formats():
            if f.sniff is not None and f.directory == path.is_dir() and f.sniff(path, head):
                return f.name
    if path.is_dir():
        raise CheckpointError(f"{path}: a directory, but no checkpoint in it (no *.index.json, no single "
                              f"checkpoint file, not a OneFlow directory)")
    suffixes = ", ".join(s for f in formats() for s in f.suffixes)
    raise CheckpointError(f"{path}: unknown checkpoint format (expected one of {suffixes}, a shard index "
                          f"*.index.json, or a model directory)")


def open_source(path: str | Path | Sequence[str | Path], fmt: str | None = None, select: str | None = None,
                epoch: int | None = None) -> Source:
    """A lazy source. `path` is a checkpoint file, a format directory (OneFlow), a shard index
    (`*.index.json`), a model directory holding one or a single checkpoint file, a glob of
    shards, or a list of shard files. `select` picks a sub-tree; None lets a training
    checkpoint pick its model part automatically; "" keeps the whole file."""
    from . import sharded
    from .mxnet import resolve_prefix

    if isinstance(path, (list, tuple)):
        source: Source = sharded.ShardedSource.from_files([Path(p) for p in path])
    else:
        path = resolve_prefix(Path(path), epoch)
        if not path.exists() and not any(c in str(path) for c in "*?["):
            raise CheckpointError(f"{path}: no such file{_epoch_hint(path) if epoch is None else ''}")
        source = sharded.open_path(path, fmt)
    try:
        auto = False
        if select is None:
            # A training checkpoint (model, ema, optimizer, epoch...) converts its model part.
            select = source.auto_select()
            auto = bool(select)
        if not select:
            return source
        chosen = Selected(source, select)
        chosen.auto = auto
        return chosen
    except BaseException:
        source.close()
        raise


def open_file(path: Path, fmt: str | None = None) -> Source:
    """One checkpoint file (or format directory) through its format's source."""
    if not path.exists():
        raise CheckpointError(f"{path}: no such file")
    cls = (by_name(fmt) if fmt else by_name(sniff(path))).source
    with reading(path):
        return Guarded(cls(path))


class Guarded(SourceBase):
    """A source whose every failure while reading is one `CheckpointError` naming its file
    (see `reading`): the one error discipline, for every format."""

    def __init__(self, inner: Source):
        self.inner = inner
        self.path = inner.path
        self.metadata = inner.metadata
        self.object = inner.object

    def infos(self) -> Mapping[str, TensorInfo]:
        with reading(self.path):
            return self.inner.infos()

    def read(self, key: str):
        with reading(self.path):
            return self.inner.read(key)

    def extent(self, key: str) -> Extent | None:
        with reading(self.path):
            return self.inner.extent(key)

    def release(self, key: str) -> None:
        with reading(self.path):
            self.inner.release(key)

    def auto_select(self) -> str | None:
        with reading(self.path):
            return self.inner.auto_select()

    def close(self) -> None:
        with reading(self.path):
            self.inner.close()


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
        return by_name(to).name
    fmt = by_suffix(Path(path))
    if fmt is None:
        raise UsageError(f"cannot tell the output format from '{Path(path).name}'; use --to "
                         f"({known_names()})")
    return fmt.name


def check_dtypes(fmt: Format, dtypes: Iterable[str]) -> None:
    unsupported = sorted(set(dtypes) - fmt.dtypes)
    if unsupported:
        raise UsageError(f"{fmt.name} files cannot hold {', '.join(unsupported)} tensors; cast them in the spec")


def open_sink(path: str | Path, fmt: str, outputs: Mapping[str, TensorInfo], metadata=None,
              max_shard_size: int | str | None = None, copied_from: Mapping[str, int] | None = None) -> Sink:
    """A sink for `outputs`; with `max_shard_size`, `path` is a directory of HF-style shards.
    `copied_from` (output -> source byte offset) names the outputs that will be copied
    file-to-file, for sinks that can place them where the kernel copies fastest."""
    f = by_name(fmt)
    check_dtypes(f, (i.dtype for i in outputs.values()))
    if max_shard_size is not None:
        from .sharded import ShardedSink

        return ShardedSink(Path(path), f, outputs, max_shard_size, metadata, copied_from)
    return f.open_sink(Path(path), outputs, metadata, copied_from)


__all__ = ["AtomicPath", "Extent", "Format", "Guarded", "Selected", "Sink", "Source", "SourceBase", "by_name", "formats", "known_names",
           "open_file", "open_sink", "open_source", "read_infos", "sink_format", "sniff"]
