"""The format registry: what mapspec knows about each checkpoint format, in one record.

Every format module ends with one `FORMAT = Format(...)` entry; `MODULES` below lists the
modules (each imported on its first lookup) with their other names and suffixes. Suffix
lookup, sniffing, `--to` names, help texts and error messages all read from here, so adding
a format is one module plus one entry in that table."""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Optional

from ..core import paths
from ..core.quoting import shown_path
from ..core.tensorinfo import TensorInfo
from ..errors import CheckpointError, UsageError
from .protocol import Extent, SinkBase, Source, SourceBase
from .reading import location, open_bytes, reading

HEAD_BYTES = 16  # how much of a file sniffers see


# One module per format, each ending with `FORMAT = Format(...)`, named as the format is;
# sniffing tries them in this order. The modules import numpy only, so converting MXNet to
# safetensors never imports torch. Beside each: its other names (`--to` accepts them) and its
# file suffixes (lowercase, with the dot), kept here so that a suffix or a name finds its
# module, and help texts list the formats, without importing the other seven.
MODULES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "safetensors": ((), (".safetensors",)),
    "mxnet": (("params",), (".params",)),
    "torch": (("pt", "pytorch"), (".pt", ".pth", ".bin", ".ckpt")),
    "npz": ((), (".npz",)),
    "oneflow": ((), (".oneflow", ".of")),
    "wts": (("tensorrt",), (".wts",)),
    "gguf": ((), (".gguf",)),
    "distcp": (("dcp",), ()),
}


@dataclass(frozen=True)
class Format:
    name: str                              # the canonical name, its module's (`MODULES`)
    description: str                       # one phrase for help texts
    source: type                           # class(path) -> Source
    sink: type                             # class(path, outputs, metadata) -> Sink
    dtypes: frozenset[str]                 # the tensor dtypes it can hold
    # Does this file (or directory) hold this format? `head` is its first HEAD_BYTES bytes
    # (empty for a directory). Sniffers run in registry order; the first yes wins.
    sniff: Optional[Callable[[Path, bytes], bool]] = None
    directory: bool = False                # a checkpoint of this format is a directory
    # How transformers names it in a model directory: (single file, shard stem, index file),
    # e.g. ("model.safetensors", "model", "model.safetensors.index.json"); None: not sharded.
    hf_layout: Optional[tuple[str, str, str]] = None
    # The sink can place a tensor copied file-to-file at its source offset modulo 64 KiB;
    # it then takes `copied_from={output: source byte offset}` (see `placement.GRANULE`).
    places_copies: bool = False

    # The sink takes typed file-level metadata, `kv={key: gguf.Value}` (GGUF's key/values).
    takes_kv: bool = False
    # Writes `--max-shard-size` output its own way (GGUF's split parts, not HF shards):
    # class(path, outputs, max_bytes, metadata, copied_from, kv) -> Sink.
    split_sink: Optional[type] = None

    def open_sink(self, path: Path, outputs, metadata=None, copied_from=None, kv=None):
        """`sink(path, outputs, metadata)`, told where copied tensors come from if it can use
        that, and given `kv` if it takes typed metadata."""
        extra = {"kv": kv} if self.takes_kv and kv else {}
        if self.places_copies and copied_from:
            extra["copied_from"] = {k: v for k, v in copied_from.items() if k in outputs}
        return self.sink(path, outputs, metadata, **extra)

    @property
    def aliases(self) -> tuple[str, ...]:
        return MODULES[self.name][0]

    @property
    def suffixes(self) -> tuple[str, ...]:
        return MODULES[self.name][1]

    @property
    def names(self) -> tuple[str, ...]:
        return (self.name, *self.aliases)


def _load(module: str) -> Format:
    return importlib.import_module(f"{__package__}.{module}").FORMAT


def formats() -> tuple[Format, ...]:
    return tuple(_load(m) for m in MODULES)


def by_name(name: str) -> Format:
    for m, (aliases, _suffixes) in MODULES.items():
        if name.lower() in (m, *aliases):
            return _load(m)
    raise UsageError(f"unknown format '{name}' (known: {known_names()})")


def writes_rows(fmt: Format) -> bool:
    """Whether `fmt`'s sink writes a tensor a slice of rows at a time (`Sink.takes_rows`)."""
    return getattr(fmt.sink, "takes_rows", SinkBase.takes_rows) is not SinkBase.takes_rows


def known_names() -> str:
    """Every format with its aliases, for help texts and errors: 'safetensors, torch (pt, pytorch), ...'."""
    return ", ".join(m + (f" ({', '.join(aliases)})" if aliases else "") for m, (aliases, _) in MODULES.items())


def by_suffix(path: Path) -> Format | None:
    suffix = path.suffix.lower()
    return next((_load(m) for m, (_aliases, suffixes) in MODULES.items() if suffix in suffixes), None)


def sniff(path: Path) -> str:
    """The format of a single checkpoint (file or format directory), by suffix, else by content."""
    fmt = by_suffix(path)
    if fmt:
        return fmt.name
    head = b""
    if not path.is_dir():
        with reading(path), open_bytes(path) as f:
            head = f.read_bytes(0, min(HEAD_BYTES, f.size), "the file header")
    with reading(path):
        for f in formats():
            if f.sniff is not None and f.directory == path.is_dir() and f.sniff(path, head):
                return f.name
    if path.is_dir():
        raise CheckpointError(f"{path}: a directory, but no checkpoint in it (no *.index.json, no single "
                              f"checkpoint file, not a OneFlow directory)")
    suffixes = ", ".join(s for _aliases, suffixes in MODULES.values() for s in suffixes)
    raise CheckpointError(f"{path}: unknown checkpoint format (expected one of {suffixes}, a shard index "
                          f"*.index.json, or a model directory)")


def open_file(path: Path, fmt: str | None = None) -> Source:
    """One checkpoint file (or format directory) through its format's source."""
    path = location(path)
    if isinstance(path, Path):
        if not os.path.lexists(path):
            raise CheckpointError(f"{shown_path(path)}: no such file")
        paths.existing(path, "checkpoint", error=CheckpointError)
    elif not path.exists():
        raise CheckpointError(f"{path}: no such object")
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
        self.shards = getattr(inner, "shards", ())
        self.kv = getattr(inner, "kv", None)

    def infos(self) -> Mapping[str, TensorInfo]:
        with reading(self.path):
            return self.inner.infos()

    def read(self, key: str):
        with reading(self.path):
            return self.inner.read(key)

    def extent(self, key: str) -> Extent | None:
        with reading(self.path):
            return self.inner.extent(key)

    def read_rows(self, key: str, start: int, stop: int):
        with reading(self.path):
            return self.inner.read_rows(key, start, stop)

    def release(self, key: str) -> None:
        with reading(self.path):
            self.inner.release(key)

    def auto_select(self) -> str | None:
        with reading(self.path):
            return self.inner.auto_select()

    def shard_of(self, key: str) -> Path:
        return self.inner.shard_of(key)  # sources with `shards` (a split GGUF) say where each tensor is

    def close(self) -> None:
        with reading(self.path):
            self.inner.close()
