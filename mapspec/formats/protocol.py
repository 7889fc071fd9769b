"""The adapter protocol: a lazy `Source` of named tensors and a `Sink` that writes them
atomically. Arrays travel as numpy arrays with a dtype name beside them (bf16 as raw bits)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, NamedTuple, Protocol

from ..core.lazy import numpy as np

from ..core.tensorinfo import TensorInfo


class Extent(NamedTuple):
    """A tensor's bytes exactly as a sink would store them (C order, little-endian), lying in
    one range of a file: sinks copy them file-to-file (`copy_extent`), never through Python."""

    file: Any  # a byte-range reader: reading.RegularFile, or remote.RemoteFile for an object on a store
    offset: int
    nbytes: int
    # The CRC-32 of these bytes when the source states it (a whole torch zip record): a zip
    # sink copies it instead of reading the copied bytes back. A wrong stated CRC is carried
    # over, so a corrupt record stays detectably corrupt rather than getting a fresh CRC.
    crc32: int | None = None


class Source(Protocol):
    """Everything the executor, `inspect` and selection ask of a checkpoint reader."""

    path: Path
    metadata: Mapping[str, str]  # free-form file metadata (safetensors `__metadata__`), else {}
    object: Any                  # the unpickled tree for pickle formats (training checkpoints), else None
    shards: tuple[Path, ...]     # the files behind a sharded checkpoint, else ()
    auto: bool                   # a sub-tree mapspec selected by itself (see auto_select)

    def infos(self) -> Mapping[str, TensorInfo]:
        """Every tensor's name, shape and dtype, in file order; no tensor data is read."""

    def read(self, key: str) -> np.ndarray:
        """One tensor, read now into a fresh buffer (bf16 as uint16 bits)."""

    def extent(self, key: str) -> Extent | None:
        """Where `key`'s bytes lie as stored, C-order and little-endian, in one range of a
        file, if they do (so they can be copied without decoding)."""

    def release(self, key: str) -> None:
        """`key`'s bytes are consumed: hand their pages back, so memory stays near one step."""

    def auto_select(self) -> str | None:
        """The sub-tree to convert when the caller did not say (a training checkpoint's model)."""

    def close(self) -> None: ...


class SourceBase:
    """What a source without the feature answers; sources override what they support."""

    metadata: Mapping[str, str] = {}
    object: Any = None
    shards: tuple[Path, ...] = ()
    auto = False
    kv: Mapping[str, Any] | None = None  # typed file metadata ({key: gguf.Value}) of a GGUF source

    def extent(self, key: str) -> Extent | None:
        return None

    def release(self, key: str) -> None:
        pass

    def auto_select(self) -> str | None:
        return None


class Sink(Protocol):
    def write(self, name: str, array: np.ndarray) -> None: ...

    def write_region(self, name: str, extent: Extent) -> bool:
        """Write `name` by copying its stored bytes file-to-file; False: not supported here,
        `write` it instead."""

    def commit(self) -> None:
        """Make the output appear, whole, under its final name."""

    def abort(self) -> None:
        """Remove everything written so far."""


class SinkBase:
    def write_region(self, name: str, extent: Extent) -> bool:
        return False
