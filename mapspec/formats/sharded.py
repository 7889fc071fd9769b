"""Sharded checkpoints, as transformers' `save_pretrained` writes them.

Reading: an index (`model.safetensors.index.json`, `pytorch_model.bin.index.json`), a model
directory holding one (or a single checkpoint file), or an explicit list or glob of shards
opens as one source over the union of the shards' keys, so a spec is compiled against the
whole model and merges across shards work; each tensor is read lazily from its own shard.
Every shard is opened, and the index checked against what the shards hold, before anything
is written.

Writing: `ShardedSink` fills shards in plan order up to `max_shard_size` (a tensor larger
than the bound gets a shard of its own, as transformers does), names them as transformers
does, writes the index, and builds it all in a temporary directory that is renamed into
place only when every shard is complete. Consecutive shards are copied side by side."""

from __future__ import annotations

import glob
import json
import os
import re
from collections import deque
from pathlib import Path
from typing import Mapping, Sequence

from ..core.lazy import numpy as np

from ..core import paths
from ..core.background import Job, Worker
from ..core.quoting import MAX_QUOTE, clip, shown, shown_path
from ..errors import CheckpointError, UsageError
from ..core.tensorinfo import TensorInfo
from .atomic import AtomicPath, abort_parts
from .model_dir import write_files
from .protocol import Extent, SinkBase, SourceBase
from .reading import read_small
from .registry import Format

MAX_INDEX = 100_000_000  # bytes; an index is names and file names only
MAX_QUEUED = 256  # copies queued on the shard lanes at most; then the oldest is waited for


def open_path(path: Path, fmt: str | None = None):
    """The source for one path argument: a file, a format directory, an index, a model
    directory, or a glob of shards."""
    from .registry import by_name, formats, open_file, sniff

    if not path.exists() and any(c in str(path) for c in "*?["):
        files = path.glob() if hasattr(path, "url") else sorted(Path(p) for p in glob.glob(str(path)))
        if not files:
            raise CheckpointError(f"{path}: no files match")
        return ShardedSource.from_files(files) if len(files) > 1 else open_file(files[0], fmt)
    if path.name.endswith(".index.json"):
        return ShardedSource.from_index(path)
    if path.is_dir():
        if fmt is not None and by_name(fmt).directory:
            return open_file(path, fmt)
        if any(f.directory and f.sniff(path, b"") for f in formats()):
            return open_file(path, sniff(path))
        return _open_model_dir(path)
    return open_file(path, fmt)


def _open_model_dir(path: Path):
    """A model directory: its index (safetensors preferred, as transformers prefers it), else
    its single checkpoint file."""
    from .registry import by_suffix, formats, open_file

    layouts = [f.hf_layout for f in formats() if f.hf_layout]  # registry order: safetensors first
    for _single, _stem, index in layouts:
        if (path / index).is_file():
            return ShardedSource.from_index(path / index)
    for single, _stem, _index in layouts:
        if (path / single).is_file():
            return open_file(path / single)
    files = [p for p in sorted(path.iterdir()) if p.is_file() and by_suffix(p) is not None]
    if len(files) == 1:
        return open_file(files[0])
    if files and _one_gguf_split(files):  # any part opens the set
        return open_file(files[0])
    found = ", ".join(p.name for p in files[:8]) or "no checkpoint files"
    raise CheckpointError(f"{path}: a directory without a shard index (*.index.json) or a single checkpoint "
                          f"file ({found}); name the files to read, e.g. '{path}/*.safetensors'")


def _one_gguf_split(files: list[Path]) -> bool:
    """Whether `files` are exactly the parts of one split GGUF (`NAME-0000K-of-0000N.gguf`)."""
    from .gguf import SPLIT_NAME, split_path

    m = SPLIT_NAME.fullmatch(files[0].name)
    if m is None:
        return False
    count = int(m["count"])
    stem = files[0].with_name(m["stem"])
    return [f.name for f in files] == [split_path(stem, i, count).name for i in range(count)]


class ShardedSource(SourceBase):
    """Several checkpoint files seen as one: keys are the union, each read from its shard."""

    def __init__(self, path: Path, shards: Sequence[Path], weight_map: Mapping[str, str] | None = None):
        from .registry import open_file

        self.path = path
        self.shards = tuple(shards)
        missing = _missing(self.shards)
        if missing:
            raise CheckpointError(f"{shown_path(path)}: shard {shown_path(missing[0].name)} is missing"
                                  + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
        for shard in self.shards:  # a loop, a folder, no permission: said before any is opened
            if not hasattr(shard, "url"):
                paths.existing(shard, f"{shown_path(path)}: shard", kind="file", error=CheckpointError)
        self._sources = []
        self._owner: dict[str, SourceBase] = {}
        self._infos: dict[str, TensorInfo] = {}
        try:
            for source in _opened(self.shards, open_file, self._sources):
                shard = source.path
                for key, info in source.infos().items():
                    if key in self._owner:
                        raise CheckpointError(f"{path}: tensor {shown(key)} is in both {_where(self._owner[key])} "
                                              f"and {shard.name}")
                    self._owner[key] = source
                    self._infos[key] = info
            for key, name in (weight_map or {}).items():
                owner = self._owner.get(key)
                if owner is None or owner.path.name != name:
                    held = f"it is in {owner.path.name}" if owner is not None else "no shard holds it"
                    raise CheckpointError(f"{path}: the index puts tensor {shown(key)} in {name}, but {held}")
        except BaseException:
            self.close()
            raise

    @classmethod
    def from_files(cls, files: Sequence[Path]) -> "ShardedSource":
        if not files:
            raise CheckpointError("no shard files given")
        return cls(files[0].parent, files)

    @classmethod
    def from_index(cls, index: Path) -> "ShardedSource":
        try:
            data = json.loads(read_small(index, MAX_INDEX, "shard index").decode("utf-8"))
        except OSError as exc:
            raise CheckpointError(f"{index}: {exc.strerror}") from None
        except (ValueError, UnicodeDecodeError) as exc:
            raise CheckpointError(f"{shown_path(index)}: not a valid JSON shard index ({clip(exc, MAX_QUOTE)})") from None
        except RecursionError:
            raise CheckpointError(f"{shown_path(index)}: a shard index nested too deeply to read") from None
        weight_map = data.get("weight_map") if isinstance(data, dict) else None
        if not isinstance(weight_map, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                                       for k, v in weight_map.items()):
            raise CheckpointError(f"{index}: a shard index needs a 'weight_map' object of tensor -> file name")
        names = list(dict.fromkeys(weight_map.values()))
        for name in names:  # shards are file names beside the index, never paths elsewhere
            if name in ("", ".", "..") or "/" in name or "\\" in name or "\0" in name:
                raise CheckpointError(f"{shown_path(index)}: shard name {shown(name)} is not a file name beside "
                                      "the index")
        return cls(index, [index.parent / n for n in sorted(names)], weight_map)

    def infos(self) -> Mapping[str, TensorInfo]:
        return self._infos

    def read(self, key: str) -> np.ndarray:
        return self._owner[key].read(key)

    def read_rows(self, key: str, start: int, stop: int) -> np.ndarray | None:
        return self._owner[key].read_rows(key, start, stop)

    def extent(self, key: str) -> Extent | None:
        return self._owner[key].extent(key)

    def release(self, key: str) -> None:
        self._owner[key].release(key)

    def shard_of(self, key: str) -> Path:
        return self._owner[key].path

    def close(self) -> None:
        for s in self._sources:
            s.close()
        self._sources = []


def _absent(path: Path) -> bool:
    """No file by that name (a name that cannot be looked up at all is another error)."""
    try:
        os.lstat(path)
    except FileNotFoundError:
        return True
    except (OSError, ValueError):
        return False
    return False


def _missing(shards: Sequence[Path]) -> list[Path]:
    """The shards that are not there: one listing per folder for objects on a store (not a
    request per shard), an lstat each for local files."""
    remote = [p for p in shards if hasattr(p, "url")]
    if not remote:
        return [p for p in shards if _absent(p)]
    present = {q.url for folder in {p.parent for p in remote} for q in folder.iterdir()}
    return [p for p in shards if (p.url not in present if hasattr(p, "url") else _absent(p))]


OPEN_REMOTE = 16  # shards on a store whose headers are fetched at once


def _opened(shards: Sequence[Path], open_file, into: list):
    """Each shard's source, in order, appended to `into` as it opens (so a failure closes
    those opened). Shards on a store open OPEN_REMOTE at a time: each costs a few small
    requests, a round trip apiece, which 163 shards must not pay one after another."""
    if not any(hasattr(p, "url") for p in shards) or len(shards) == 1:
        for shard in shards:
            into.append(open_file(shard))
            yield into[-1]
        return
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(OPEN_REMOTE, thread_name_prefix="mapspec-open") as pool:
        futures = [pool.submit(open_file, shard) for shard in shards]
        try:
            for future in futures:
                into.append(future.result())
                yield into[-1]
        finally:
            for future in futures:  # a failure: the others are closed as they finish
                if future.cancel() or future.exception() is not None:
                    continue
                if future.result() not in into:
                    future.result().close()


def _where(source) -> str:
    return source.path.name


# ------------------------------------------------------------------ writing

UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
         "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}


def parse_size(size: int | str) -> int:
    """Bytes from '5GB', '500MB', '100KB' (decimal, as transformers reads them), '2GiB', or a number."""
    if isinstance(size, int):
        n = size
    else:
        m = re.fullmatch(r"\s*(\d{1,20}(?:\.\d{1,20})?)\s*([A-Za-z]*)\s*", size)
        unit = m and m[2].upper()
        if not m or unit not in UNITS:
            raise UsageError(f"--max-shard-size {shown(size)}: expected a size such as 5GB, 500MB, 2GiB or bytes "
                             "(at most 20 digits)")
        n = int(float(m[1]) * UNITS[unit])
    if n <= 0:
        raise UsageError(f"--max-shard-size must be positive (got {shown(str(size))})")
    return n


def assign_shards(outputs: Mapping[str, TensorInfo], max_bytes: int) -> list[list[str]]:
    """Tensors in order, filling each shard up to `max_bytes`; a tensor larger than the bound
    gets a shard of its own. Deterministic: the same plan always gives the same shards."""
    shards: list[list[str]] = []
    size = 0
    for name, info in outputs.items():
        n = info.nbytes
        if not shards or (shards[-1] and size + n > max_bytes):
            shards.append([])
            size = 0
        shards[-1].append(name)
        size += n
    return shards or [[]]


def shard_names(fmt: str, count: int) -> list[str]:
    from .registry import by_name

    single, stem, _index = by_name(fmt).hf_layout
    if count == 1:
        return [single]
    ext = single[len(stem):]
    return [f"{stem}-{i:05d}-of-{count:05d}{ext}" for i in range(1, count + 1)]


class ShardedSink(SinkBase):
    """HF-style shards + index in a new directory, which appears whole or not at all.

    Shards are written side by side: the kernel copies of shard k run on lane k % 2 (a
    worker thread each), so while one lane finishes a shard the next shard's copies start
    on the other, and two copies' reads are in flight at once (2 GB into 500 MB shards:
    0.57x the time of one after another, paired runs). A shard's records keep plan order:
    its copies run in order on its lane, and a tensor written from memory waits for them.

    Progress is reported when a copy is done on its lane, not when it is queued (up to
    MAX_QUEUED ahead): `progress` (set by whoever runs the sink, see core/progress.py)
    hears the bytes of each finished write, from the lane that wrote them."""

    reports_progress = True
    progress = None  # Callable[[int], None]: bytes written, called as each write finishes

    def __init__(self, path: Path, fmt: Format, outputs: Mapping[str, TensorInfo], max_shard_size: int | str,
                 metadata=None, copied_from: Mapping[str, int] | None = None,
                 files: Mapping[str, bytes | Path] | None = None):
        """`files`: other files of the model directory (name -> bytes, or a path to copy),
        written beside the shards (see `model_dir`)."""
        if fmt.hf_layout is None:
            from .registry import formats

            shardable = ", ".join(f.name for f in formats() if f.hf_layout)
            raise UsageError(f"--max-shard-size writes {shardable} shards, not {fmt.name}")
        max_bytes = parse_size(max_shard_size)
        self.final = Path(path)
        if self.final.exists() and not self.final.is_dir():
            raise UsageError(f"{self.final} is a file; sharded output goes to a directory")
        self.atomic = AtomicPath(self.final, directory=True)
        self.sinks = []
        self.route: dict[str, SinkBase] = {}
        # Two lanes copy shards side by side: shard k's copies run on lane k % 2.
        self.lanes = (Worker("mapspec-shards-0"), Worker("mapspec-shards-1"))
        self._lane: dict[int, Worker] = {}
        self.queued: dict[int, deque[Job]] = {}  # a shard's copies not known to be done
        self.inflight: deque[Job] = deque()  # all of them, oldest first
        try:
            groups = assign_shards(outputs, max_bytes)
            names = shard_names(fmt.name, len(groups))
            weight_map = {}
            for name, group in zip(names, groups):
                sink = fmt.open_sink(self.atomic.tmp / name, {k: outputs[k] for k in group}, metadata, copied_from)
                self._lane[id(sink)] = self.lanes[len(self.sinks) % 2]
                self.sinks.append(sink)
                for k in group:
                    self.route[k] = sink
                    weight_map[k] = name
            self.files = names
            self.index = None
            if len(names) > 1:
                self.index = (fmt.hf_layout[2], index_blob(weight_map, sum(i.nbytes for i in outputs.values())))
            self.extra = dict(files or {})
            clash = set(self.extra) & {*names, fmt.hf_layout[2]}
            if clash:
                raise UsageError(f"the model directory's {sorted(clash)[0]} would overwrite an output shard")
        except BaseException:
            self.abort()
            raise

    def write(self, name: str, array: np.ndarray) -> None:
        sink = self.route[name]
        self._drain(sink)  # the shard's queued copies first: its records stay in plan order
        sink.write(name, array)
        self._written(array.nbytes)

    def takes_rows(self, name: str) -> bool:
        return self.route[name].takes_rows(name)

    def write_rows(self, name: str, start: int, array: np.ndarray) -> None:
        sink = self.route[name]
        self._drain(sink)
        sink.write_rows(name, start, array)
        self._written(array.nbytes)

    def write_region(self, name: str, extent: Extent) -> bool:
        """Queued on the shard's lane (see the class doc); True at once, as every shard
        format copies regions. A failed copy is raised by a later call, at the latest by
        commit."""
        self._raise_failed()
        sink = self.route[name]
        job = self._lane[id(sink)].submit(Job(lambda job: self._copy(sink, name, extent)))
        self.queued.setdefault(id(sink), deque()).append(job)
        self.inflight.append(job)
        while len(self.inflight) > MAX_QUEUED:  # a million tiny tensors must not all wait in memory
            self.inflight.popleft().result()
        return True

    def _copy(self, sink, name: str, extent: Extent) -> None:
        """On a lane: the copy, then its bytes reported as written."""
        if not sink.write_region(name, extent):  # pragma: no cover - every shard format copies regions
            raise RuntimeError(f"{type(sink).__name__} declined to copy '{name}'")
        self._written(extent.nbytes)

    def _written(self, nbytes: int) -> None:
        if self.progress is not None:
            self.progress(nbytes)

    def _drain(self, sink) -> None:
        for job in self.queued.pop(id(sink), ()):
            job.result()

    def _raise_failed(self) -> None:
        """Raise a lane's error, forgetting the copies done so far (each lane runs in order)."""
        for jobs in (self.inflight, *self.queued.values()):
            while jobs and jobs[0].done():
                jobs.popleft().result()

    def commit(self) -> None:
        for sink in self.sinks:
            self._drain(sink)
        for sink in self.sinks:
            sink.commit()
        if self.index is not None:
            name, data = self.index
            (self.atomic.tmp / name).write_bytes(data)
        write_files(self.atomic.tmp, self.extra)
        self.atomic.commit()  # replacing an earlier output only with --force

    def abort(self) -> None:
        for lane in self.lanes:  # queued copies dropped, running ones done, before the files go
            lane.cancel([job for key, jobs in self.queued.items() if self._lane[key] is lane for job in jobs])
        self.queued, self.inflight = {}, deque()
        abort_parts(self.sinks, self.atomic)


def index_blob(weight_map: Mapping[str, str], total: int) -> bytes:
    """The shard index file's bytes, as transformers writes it (`total_size`: tensor bytes)."""
    data = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    return (json.dumps(data, indent=2, sort_keys=True) + "\n").encode("utf-8")
