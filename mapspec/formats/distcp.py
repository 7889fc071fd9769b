"""PyTorch distributed checkpoints (`torch.distributed.checkpoint.save`): a directory holding
`.metadata` and one or more `__R_N.distcp` files.

`.metadata` is a pickle of `torch.distributed.checkpoint.metadata.Metadata`. It is read through
the restricted unpickler like every pickle mapspec reads: the few dataclasses it names come
back as inert stand-ins holding their fields, nothing of torch.distributed is imported or
run, and any other global it names is refused as in a `.pt` file. What it says is then
checked whole before a tensor is read: every tensor's chunks lie inside the tensor and cover
it exactly once, every chunk has its storage entry, every entry names a `.distcp` file beside
`.metadata` and a byte range inside it.

Each chunk is stored as `torch.save` would store it (a small zip of its own, at an offset in
its `.distcp` file) or, with `SerializationFormat.SAFETENSORS`, as the tensor of its key in a
safetensors block that follows the rank's byte entries (every chunk's entry points at the
block's start). A tensor is
assembled as it is read: one buffer of its full shape, each chunk read into its slice and
released, so memory holds one tensor (plus one chunk) at a time, never the whole model.
Non-tensor entries (`BytesStorageMetadata`: step counters, RNG states) are skipped, as in
`.pt` files. Writing (`DcpSink`) makes a checkpoint torch.distributed.checkpoint.load reads."""

from __future__ import annotations

import io
import math
import os
from pathlib import Path
from typing import Any, Mapping

from ..core import dtypes
from ..core.lazy import numpy as np
from ..core.tensorinfo import TensorInfo
from ..errors import CheckpointError, UsageError
from .protocol import SinkBase, SourceBase
from .reading import RegularFile, read_small, shown
from .registry import Format
from .unpickle import MAX_PICKLE, StandIn, standin, unpickle

METADATA = ".metadata"
MAX_CHUNKS = 1 << 20  # chunks of one checkpoint
_DCP_CLASSES = {
    ("torch.distributed.checkpoint.metadata", n) for n in
    ("Metadata", "TensorStorageMetadata", "TensorProperties", "ChunkStorageMetadata", "BytesStorageMetadata",
     "MetadataIndex", "StorageMeta", "_MEM_FORMAT_ENCODING")
} | {("torch.distributed.checkpoint.filesystem", "_StorageInfo")}


class _Globals:
    """The unpickler's answers for `.metadata`: the DCP dataclasses as stand-ins, torch dtypes
    and sizes as plain values; nothing else of torch."""

    def __init__(self, path: Path):
        self.path = path

    def extra(self, module: str, name: str) -> Any:
        if (module, name) in _DCP_CLASSES:
            return standin(module, name)
        if module == "torch":
            if name in dtypes.TORCH_DTYPES:
                return _Dtype(dtypes.TORCH_DTYPES[name])
            if name == "Size":
                return self._size
            if name in ("strided", "contiguous_format"):
                return name
        if module == "torch.serialization" and name == "_get_layout":
            return self._layout
        if module == "pathlib" and name in ("Path", "PosixPath", "PurePosixPath", "WindowsPath", "PureWindowsPath"):
            return self._path  # StorageMeta.checkpoint_id: where it was saved (informative)
        return None

    def _path(self, *parts):
        if len(parts) > 64 or not all(isinstance(p, str) for p in parts):
            raise CheckpointError(f"{self.path}: a path of unexpected parts in the pickle")
        return "/".join(parts)

    def _size(self, dims=()):
        if not isinstance(dims, (list, tuple)) or len(dims) > dtypes.MAX_NDIM or not all(
                isinstance(d, int) and not isinstance(d, bool) and 0 <= d < 1 << 62 for d in dims):
            raise CheckpointError(f"{self.path}: torch.Size of unexpected arguments")
        return tuple(dims)

    def _layout(self, name=None):
        if name != "torch.strided":
            raise CheckpointError(f"{self.path}: a tensor of layout {shown(name)}; mapspec reads strided tensors only")
        return "strided"


class _Dtype:
    __slots__ = ("name",)

    def __init__(self, name: str):
        self.name = name

    def __reduce__(self):  # pragma: no cover - never pickled again
        raise TypeError("not picklable")


class Chunk:
    __slots__ = ("offsets", "sizes", "file", "start", "length")

    def __init__(self, offsets, sizes, file, start, length):
        self.offsets, self.sizes, self.file, self.start, self.length = offsets, sizes, file, start, length

    def where(self) -> str:
        return "[" + ", ".join(f"{o}:{o + s}" for o, s in zip(self.offsets, self.sizes)) + f"] in {self.file}"


def _fields(obj, path: Path, what: str, cls: str) -> dict:
    if not isinstance(obj, StandIn) or type(obj)._name != cls:
        raise CheckpointError(f"{path}: {what} is a {shown(type(obj).__name__)}, not a {cls}")
    return obj.__dict__


def _ints(value, path: Path, what: str) -> tuple[int, ...]:
    if not isinstance(value, tuple) or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0
                                               for v in value):
        raise CheckpointError(f"{path}: {what} is not a list of sizes")
    return value


def read_metadata(root: Path) -> tuple[dict[str, TensorInfo], dict[str, list[Chunk]]]:
    """The tensors a distributed checkpoint holds and where each chunk of each lies; checked
    whole (see the module doc)."""
    path = root / METADATA
    if not path.is_file():
        raise CheckpointError(f"{root}: no {METADATA} (not a torch.distributed.checkpoint directory)")
    data = read_small(path, MAX_PICKLE, "distributed checkpoint metadata")
    obj = unpickle(data, path, _Globals(path).extra)
    md = _fields(obj, path, "the pickle", "Metadata")
    entries = md.get("state_dict_metadata")
    storage = md.get("storage_data")
    if not isinstance(entries, dict) or not isinstance(storage, dict):
        raise CheckpointError(f"{path}: Metadata without state_dict_metadata and storage_data dicts")
    where: dict[tuple[str, tuple[int, ...]], tuple[str, int, int]] = {}
    for index, info in storage.items():
        i = _fields(index, path, "a storage key", "MetadataIndex")
        s = _fields(info, path, "a storage entry", "_StorageInfo")
        fqn, offset = i.get("fqn"), i.get("offset")
        rel, start, length = s.get("relative_path"), s.get("offset"), s.get("length")
        if not isinstance(fqn, str) or (offset is not None and not isinstance(offset, tuple)):
            raise CheckpointError(f"{path}: corrupt storage key {shown(i)}")
        if not isinstance(rel, str) or rel in ("", ".", "..") or "/" in rel or "\\" in rel or "\0" in rel:
            raise CheckpointError(f"{path}: storage file {shown(rel)} is not a file name beside {METADATA}")
        if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in (start, length)):
            raise CheckpointError(f"{path}: storage entry of {shown(fqn)} has no valid offset and length")
        if s.get("transform_descriptors"):
            raise CheckpointError(f"{path}: {shown(fqn)} is stored through transforms "
                                  f"({shown(s['transform_descriptors'])}), which mapspec does not read")
        where[(fqn, tuple(offset or ()))] = (rel, start, length)
    sizes: dict[str, int] = {}
    infos: dict[str, TensorInfo] = {}
    chunks: dict[str, list[Chunk]] = {}
    count = 0
    for fqn, entry in entries.items():
        if not isinstance(fqn, str):
            raise CheckpointError(f"{path}: a state dict key {shown(fqn)} that is not text")
        if isinstance(entry, StandIn) and type(entry)._name == "BytesStorageMetadata":
            continue  # not a tensor (a step counter, RNG state): skipped, as in .pt files
        t = _fields(entry, path, f"the entry of {shown(fqn)}", "TensorStorageMetadata")
        props = _fields(t.get("properties"), path, f"the properties of {shown(fqn)}", "TensorProperties")
        state = props.get("_state")
        dtype = state[0] if isinstance(state, tuple) and state else props.get("dtype")
        if not isinstance(dtype, _Dtype):
            raise CheckpointError(f"{path}: {shown(fqn)} has a dtype mapspec does not read ({shown(dtype)})")
        shape = dtypes.check_shape(_ints(t.get("size"), path, f"the size of {shown(fqn)}"), f"{path}: {fqn}")
        listed = t.get("chunks")
        if not isinstance(listed, list):
            raise CheckpointError(f"{path}: {shown(fqn)} has no chunk list")
        count += len(listed)
        if count > MAX_CHUNKS:
            raise CheckpointError(f"{path}: more than {MAX_CHUNKS:,} chunks")
        mine = []
        for c in listed:
            f = _fields(c, path, f"a chunk of {shown(fqn)}", "ChunkStorageMetadata")
            off = _ints(f.get("offsets"), path, f"a chunk offset of {shown(fqn)}")
            size = _ints(f.get("sizes"), path, f"a chunk size of {shown(fqn)}")
            if len(off) != len(shape) or len(size) != len(shape) or any(
                    o + s > d for o, s, d in zip(off, size, shape)):
                raise CheckpointError(f"{path}: a chunk of {shown(fqn)} at {list(off)} of size {list(size)} lies "
                                      f"outside its shape {list(shape)}")
            stored = where.get((fqn, off))
            if stored is None:
                raise CheckpointError(f"{path}: the chunk of {shown(fqn)} at {list(off)} has no storage entry")
            mine.append(Chunk(off, size, *stored))
        _check_cover(path, fqn, shape, mine)
        infos[fqn] = TensorInfo(shape, dtype.name)
        chunks[fqn] = mine
    for c in (c for cs in chunks.values() for c in cs):
        file = root / c.file
        if c.file not in sizes:
            if not file.is_file():
                raise CheckpointError(f"{path}: names chunks in {c.file}, which is not in {root}")
            sizes[c.file] = file.stat().st_size
        if c.start + c.length > sizes[c.file]:
            raise CheckpointError(f"{path}: a chunk at bytes {c.start}..{c.start + c.length} of {c.file} lies past "
                                  f"its end ({sizes[c.file]} bytes; truncated?)")
    return infos, chunks


def _check_cover(path: Path, fqn: str, shape: tuple[int, ...], chunks: list[Chunk]) -> None:
    """The chunks cover the tensor exactly once: their sizes add up to it and no two overlap."""
    total = sum(math.prod(c.sizes) for c in chunks)
    if total != math.prod(shape):
        raise CheckpointError(f"{path}: the chunks of {shown(fqn)} hold {total} elements, the tensor has "
                              f"{math.prod(shape)}")
    ordered = sorted(chunks, key=lambda c: c.offsets)
    if len(ordered) > 4096:  # sizes add up and no chunk overlaps its neighbour in order
        pairs = zip(ordered, ordered[1:])
    else:
        pairs = ((a, b) for i, a in enumerate(ordered) for b in ordered[i + 1:])
    for a, b in pairs:
        if all(x < y + t and y < x + s for x, s, y, t in zip(a.offsets, a.sizes, b.offsets, b.sizes)) and all(
                s > 0 for s in a.sizes + b.sizes):
            raise CheckpointError(f"{path}: chunks {a.where()} and {b.where()} of {shown(fqn)} overlap")


class _Window(RegularFile):
    """Bytes [start, start + length) of an open file, seen as a file of their own (a chunk
    stored as a torch.save zip at an offset of its .distcp file)."""

    def __init__(self, file: RegularFile, start: int, length: int):
        self.path, self.fd, self.size, self.start = file.path, file.fd, length, start

    def read_into(self, buffer: memoryview, offset: int, what: str = "data") -> None:
        self._check_range(offset, len(buffer), what)
        got = 0
        while got < len(buffer):
            n = os.preadv(self.fd, [buffer[got:]], self.start + offset + got)
            if n <= 0:
                raise CheckpointError(f"{self.path}: the file ended while reading {what}")
            got += n

    def release(self, offset: int, nbytes: int) -> None:
        super().release(self.start + offset, nbytes)

    def willneed(self, offset: int, nbytes: int) -> None:
        super().willneed(self.start + offset, nbytes)

    def file(self):
        return io.BufferedReader(_WindowIO(self), 1 << 16)

    def close(self) -> None:  # the .distcp file stays open for the other chunks
        pass


class _WindowIO(io.RawIOBase):
    def __init__(self, window: _Window):
        self.w, self.pos = window, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = 0) -> int:
        self.pos = offset if whence == 0 else self.pos + offset if whence == 1 else self.w.size + offset
        return self.pos

    def tell(self) -> int:
        return self.pos

    def readinto(self, buffer) -> int:
        n = max(0, min(len(buffer), self.w.size - self.pos))
        if n:
            self.w.read_into(memoryview(buffer)[:n], self.pos)
        self.pos += n
        return n


class DcpSource(SourceBase):
    """A distributed checkpoint directory as one source; `read` assembles a tensor chunk by chunk."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._infos, self._chunks = read_metadata(self.path)
        self._files: dict[str, RegularFile] = {}
        self._st: dict[tuple[str, int], dict] = {}  # (file, offset) -> the header of a safetensors block
        self.chunk_layout = {k: describe(self._infos[k], cs) for k, cs in self._chunks.items()}

    def infos(self) -> Mapping[str, TensorInfo]:
        return self._infos

    def chunks(self, key: str) -> list[Chunk]:
        return self._chunks[key]

    def _file(self, name: str) -> RegularFile:
        f = self._files.get(name)
        if f is None:
            f = self._files[name] = RegularFile(self.path / name)
        return f

    def read(self, key: str) -> np.ndarray:
        info = self._infos[key]
        out = np.empty(info.shape, dtypes.STORAGE[info.dtype])
        for c in self._chunks[key]:
            piece = self._read_chunk(key, info, c)
            out[tuple(slice(o, o + s) for o, s in zip(c.offsets, c.sizes))] = piece
            del piece
            self._file(c.file).release(c.start, c.length)
        return out

    def _read_chunk(self, key: str, info: TensorInfo, c: Chunk) -> np.ndarray:
        file = self._file(c.file)
        window = _Window(file, c.start, file.size - c.start)
        head = window.read_bytes(0, min(9, window.size), "a chunk header")
        if head[:4] == b"PK\x03\x04":  # torch.save of the chunk
            from .torch_pickle import Tensor, _load_zip

            obj = _load_zip(Path(f"{self.path / c.file} (chunk of {key})"), _Window(file, c.start, c.length))
            self._check(key, info, c, obj.dtype if isinstance(obj, Tensor) else None,
                        tuple(obj.shape) if isinstance(obj, Tensor) else type(obj).__name__)
            return obj.read()
        if len(head) == 9 and head[8:9] == b"{":  # SerializationFormat.SAFETENSORS
            return self._safetensors_chunk(key, info, c, window)
        raise CheckpointError(f"{self.path / c.file}: the chunk of {shown(key)} at {list(c.offsets)} (byte {c.start}) "
                              "is neither a torch.save record nor a safetensors block")

    def _check(self, key: str, info: TensorInfo, c: Chunk, dtype, shape) -> None:
        if dtype != info.dtype or shape != tuple(c.sizes):
            raise CheckpointError(f"{self.path / c.file}: the chunk of {shown(key)} at {list(c.offsets)} holds "
                                  f"{dtype} {shape}, the metadata says {info.dtype} {tuple(c.sizes)}")

    def _safetensors_chunk(self, key: str, info: TensorInfo, c: Chunk, window: "_Window") -> np.ndarray:
        """With SerializationFormat.SAFETENSORS each rank's tensors follow its byte entries as one
        safetensors block, every chunk's storage entry pointing at that block's start; the
        block holds the rank's chunk of each tensor under the tensor's key."""
        import json
        import struct

        from .safetensors import MAX_HEADER, NAMES

        header = self._st.get((c.file, c.start))
        if header is None:
            (n,) = struct.unpack("<Q", window.read_bytes(0, 8, "a safetensors header length"))
            if n > min(MAX_HEADER, window.size - 8):
                raise CheckpointError(f"{self.path / c.file}: a safetensors block at byte {c.start} declares a "
                                      f"{n}-byte header, more than the file holds")
            try:
                header = json.loads(window.read_bytes(8, n, "a safetensors header"))
            except (ValueError, UnicodeDecodeError) as exc:
                raise CheckpointError(f"{self.path / c.file}: the safetensors block at byte {c.start} has an "
                                      f"unreadable header ({exc})") from None
            if not isinstance(header, dict):
                raise CheckpointError(f"{self.path / c.file}: the safetensors block at byte {c.start} has no header")
            header["__base__"] = 8 + n
            self._st[(c.file, c.start)] = header
        entry = header.get(key)
        if not isinstance(entry, dict):
            raise CheckpointError(f"{self.path / c.file}: the safetensors block at byte {c.start} has no tensor "
                                  f"{shown(key)}, where the metadata puts a chunk")
        span = entry.get("data_offsets")
        shape = entry.get("shape")
        if (not isinstance(span, list) or len(span) != 2 or not all(isinstance(v, int) for v in span)
                or not isinstance(shape, list)):
            raise CheckpointError(f"{self.path / c.file}: corrupt safetensors entry for {shown(key)}")
        self._check(key, info, c, NAMES.get(entry.get("dtype")), tuple(shape))
        begin, stop = span
        nbytes = math.prod(c.sizes) * dtypes.itemsize(info.dtype)
        if stop - begin != nbytes or begin < 0:
            raise CheckpointError(f"{self.path / c.file}: the safetensors entry for {shown(key)} holds "
                                  f"{stop - begin} bytes, its shape needs {nbytes}")
        raw = window.read_range(header["__base__"] + begin, nbytes, f"a chunk of {key}")
        return raw.view(dtypes.STORAGE[info.dtype]).reshape(c.sizes)

    def close(self) -> None:
        for f in self._files.values():
            f.close()
        self._files, self._st = {}, {}


def describe(info: TensorInfo, chunks: list[Chunk]) -> str:
    """How a tensor is chunked, for `inspect`: '2 chunks: [0:3, 0:4] in __0_0.distcp, ...'."""
    shown_ = ", ".join(c.where() for c in chunks[:4]) + (f", ... ({len(chunks) - 4} more)" if len(chunks) > 4 else "")
    return f"{len(chunks)} chunk{'s' if len(chunks) != 1 else ''}: {shown_}"


class DcpSink(SinkBase):
    """A distributed checkpoint directory that `torch.distributed.checkpoint.load` reads into any
    sharding of the model (it narrows each saved chunk to the shard it loads): one file,
    `__0_0.distcp`, each tensor one chunk written as DCP writes one (torch.save at an offset),
    then `.metadata`. Writing uses torch (imported only here): the metadata is torch's own
    dataclasses, so what load reads is what save would have written."""

    FILE = "__0_0.distcp"

    def __init__(self, path: Path, outputs: Mapping[str, TensorInfo], metadata=None):
        from .atomic import AtomicPath

        self.final = Path(path)
        if self.final.exists() and not self.final.is_dir():
            raise UsageError(f"{self.final} is a file; a distributed checkpoint is a directory")
        self.infos = dict(outputs)
        self.provenance = metadata
        self.atomic = AtomicPath(self.final, directory=True)
        try:
            self.file = open(self.atomic.tmp / self.FILE, "wb")
        except BaseException:
            self.atomic.abort()
            raise
        self.stored: dict[str, tuple[int, int]] = {}

    def write(self, name: str, array: np.ndarray) -> None:
        from .torch import to_torch
        import torch

        start = self.file.tell()
        torch.save(to_torch(np.ascontiguousarray(array), self.infos[name].dtype), self.file)
        self.stored[name] = (start, self.file.tell() - start)

    def commit(self) -> None:
        import pickle

        import torch
        from torch.distributed.checkpoint.filesystem import _StorageInfo
        from torch.distributed.checkpoint.metadata import (ChunkStorageMetadata, Metadata, MetadataIndex,
                                                           TensorProperties, TensorStorageMetadata)
        from .torch import to_torch

        missing = [k for k in self.infos if k not in self.stored]
        if missing:  # pragma: no cover - the executor writes every output
            raise RuntimeError(f"distcp sink closed with {len(missing)} tensors unwritten")
        self.file.close()
        entries, storage = {}, {}
        for name, info in self.infos.items():
            zero = torch.Size([0] * len(info.shape))
            dtype = to_torch(np.zeros((), dtypes.STORAGE[info.dtype]), info.dtype).dtype
            entries[name] = TensorStorageMetadata(properties=TensorProperties(dtype=dtype),
                                                  size=torch.Size(info.shape),
                                                  chunks=[ChunkStorageMetadata(offsets=zero,
                                                                               sizes=torch.Size(info.shape))])
            start, length = self.stored[name]
            storage[MetadataIndex(name, zero)] = _StorageInfo(relative_path=self.FILE, offset=start, length=length)
        md = Metadata(state_dict_metadata=entries, planner_data={k: (k,) for k in self.infos}, storage_data=storage)
        (self.atomic.tmp / METADATA).write_bytes(pickle.dumps(md))
        if self.provenance is not None:  # beside the checkpoint; DCP reads only what .metadata names
            (self.atomic.tmp / "mapspec-provenance.json").write_text(self.provenance.json(), "utf-8")
        self.atomic.commit()

    def abort(self) -> None:
        try:
            self.file.close()
        except Exception:
            pass
        self.atomic.abort()


def _is_dcp(path: Path, head: bytes) -> bool:
    return path.is_dir() and (path / METADATA).is_file()


FORMAT = Format("distcp", "PyTorch distributed checkpoint (torch.distributed.checkpoint)", DcpSource, DcpSink,
                frozenset(dtypes.NAMES), sniff=_is_dcp, directory=True)
