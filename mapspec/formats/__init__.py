"""Format adapters, looked up in the registry (`registry.Format`): by `--to` name, by file
suffix, or by sniffing a source's first bytes. Sharded checkpoints (an HF index, a model
directory, a list or glob of shards) open as one source over the union of their keys."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Mapping, Sequence

from ..core import paths
from ..errors import CheckpointError, UsageError
from ..core.tensorinfo import TensorInfo
from .atomic import AtomicPath
from .protocol import Extent, Sink, Source, SourceBase
from .selection import Selected
from .reading import location
from .remote import is_url
from .registry import Format, Guarded, by_name, by_suffix, formats, known_names, open_file, sniff

def _with_epoch(path, epoch: int | None):
    """`--epoch N`: an MXNet checkpoint prefix made a file name (the MXNet module only then)."""
    if epoch is None:
        return path
    from .mxnet import resolve_prefix

    return resolve_prefix(path, epoch)


def open_source(path: str | Path | Sequence[str | Path], fmt: str | None = None, select: str | None = None,
                epoch: int | None = None, role: str = "checkpoint") -> Source:
    """A lazy source. `path` is a checkpoint file, a format directory (OneFlow), a shard index
    (`*.index.json`), a model directory holding one or a single checkpoint file, a glob of
    shards, or a list of shard files. `select` picks a sub-tree; None lets a training
    checkpoint pick its model part automatically; "" keeps the whole file. A path that
    cannot be used is a CheckpointError naming it as `role` (checkpoint, --target, ...)."""
    from . import sharded

    if isinstance(path, (list, tuple)):
        files = [location(p) if is_url(p) else paths.existing(p, f"{role} shard", kind="file", error=CheckpointError)
                 for p in path]
        source: Source = sharded.ShardedSource.from_files(files)
    elif is_url(path):
        path = _with_epoch(location(path), epoch)
        if not path.exists() and not any(c in str(path) for c in "*?["):
            raise CheckpointError(f"{path}: no such object")
        source = sharded.open_path(path, fmt)
    else:
        path = _with_epoch(Path(paths.plain(path, role, CheckpointError)), epoch)
        if os.path.lexists(path) or not any(c in str(path) for c in "*?["):  # not a glob of shards
            try:
                paths.existing(path, role, error=CheckpointError)
            except CheckpointError as exc:
                hint = _epoch_hint(path) if epoch is None and not os.path.lexists(path) else ""
                raise CheckpointError(f"{exc}{hint}") from None
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


def _epoch_hint(path: Path) -> str:
    """`r50` when `r50-0000.params` exists: the MXNet prefix form, which needs --epoch."""
    import glob
    import re

    found = sorted(p.name for p in path.parent.glob(f"{glob.escape(path.name)}-*.params")
                   if re.fullmatch(r"-[0-9]{1,9}\.params", p.name[len(path.name):]))
    if not found:
        return ""
    epoch = int(found[-1][len(path.name) + 1:-len(".params")])
    return (f"; {', '.join(found[-3:])} {'exists' if len(found) == 1 else 'exist'}: "
            f"it is an MXNet checkpoint prefix, add --epoch {epoch}")


def read_infos(path: str | Path, select: str | None = None, role: str = "checkpoint") -> dict[str, TensorInfo]:
    source = open_source(path, select=select, role=role)
    try:
        return dict(source.infos())
    finally:
        source.close()


def sink_format(path: str | Path, to: str | None) -> str:
    if to:
        return by_name(to).name
    fmt = by_suffix(location(path))
    if fmt is None:
        raise UsageError(f"cannot tell the output format from '{location(path).name}'; use --to "
                         f"({known_names()})")
    return fmt.name


def check_dtypes(fmt: Format, dtypes: Iterable[str]) -> None:
    from ..core.dtypes import BYTES_ONLY

    unsupported = sorted(set(dtypes) - fmt.dtypes)
    if unsupported:
        fix = ("convert to a format that holds them (safetensors)" if set(unsupported) & BYTES_ONLY
               else "cast them in the spec")
        raise UsageError(f"{fmt.name} files cannot hold {', '.join(unsupported)} tensors; {fix}")


def open_sink(path: str | Path, fmt: str, outputs: Mapping[str, TensorInfo], metadata=None,
              max_shard_size: int | str | None = None, copied_from: Mapping[str, int] | None = None,
              files: Mapping[str, bytes | Path] | None = None, kv=None) -> Sink:
    """A sink for `outputs`; with `max_shard_size`, `path` is a directory of HF-style shards
    (GGUF: split parts), with `files` (name -> bytes or a path to copy: a model directory's
    other files) beside them. `copied_from` (output -> source byte offset) names the outputs
    that will be copied file-to-file, for sinks that can place them where the kernel copies
    fastest. `kv` is typed file metadata ({key: gguf.Value}) for formats that take it."""
    f = by_name(fmt)
    check_dtypes(f, (i.dtype for i in outputs.values()))
    if max_shard_size is not None and f.split_sink is not None:
        from .sharded import parse_size

        return f.split_sink(Path(path), outputs, parse_size(max_shard_size), metadata, copied_from, kv=kv)
    if max_shard_size is not None:
        from .sharded import ShardedSink

        return ShardedSink(Path(path), f, outputs, max_shard_size, metadata, copied_from, files)
    return f.open_sink(Path(path), outputs, metadata, copied_from, kv)


__all__ = ["AtomicPath", "Extent", "Format", "Guarded", "Selected", "Sink", "Source", "SourceBase", "by_name", "formats", "known_names",
           "open_file", "open_sink", "open_source", "read_infos", "sink_format", "sniff"]
