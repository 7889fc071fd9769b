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

    def read_rows(self, key: str, start: int, stop: int) -> np.ndarray | None:
        """Rows [start, stop) of `key` (slices of its first dimension) as `read` gives the
        whole; None where this source cannot read part of a tensor."""

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

    def read_rows(self, key: str, start: int, stop: int) -> np.ndarray | None:
        """From the tensor's extent: its rows lie one after another in the file."""
        extent = self.extent(key)
        return None if extent is None else rows_of(extent, self.infos()[key], key, start, stop)

    def auto_select(self) -> str | None:
        return None


def row_bytes(info: TensorInfo) -> int | None:
    """Bytes of one row (one index of the first dimension) of a tensor as stored, if every row
    takes whole bytes (packed float4 rows of an odd length do not), else None."""
    from ..core import dtypes

    if not info.shape or info.shape[0] == 0:
        return None
    one = dtypes.nbytes((1, *info.shape[1:]), info.dtype)
    return one if one * info.shape[0] == info.nbytes else None


def rows_of(extent: Extent, info: TensorInfo, key: str, start: int, stop: int) -> np.ndarray:
    """Rows [start, stop) of the tensor stored at `extent`, read into a fresh buffer."""
    from ..core import dtypes
    from ..core.quoting import shown

    per = row_bytes(info)
    if per is None or not 0 <= start <= stop <= info.shape[0]:
        raise ValueError(f"rows {start}:{stop} of {shown(key)} {info.shape} cannot be read apart")
    raw = extent.file.read_range(extent.offset + start * per, (stop - start) * per, f"tensor {shown(key)}")
    return dtypes.from_raw(raw, dtypes.stored_shape((stop - start, *info.shape[1:]), info.dtype), info.dtype)


class Sink(Protocol):
    def write(self, name: str, array: np.ndarray) -> None: ...

    def takes_rows(self, name: str) -> bool:
        """Whether `write_rows` may write `name` a slice of rows at a time."""

    def write_rows(self, name: str, start: int, array: np.ndarray) -> None:
        """Rows of `name` from row `start` on (`array`: as `write` takes the whole); a
        tensor written this way is written whole, every row once, before `commit`."""

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

    def takes_rows(self, name: str) -> bool:
        return False

    def write_rows(self, name: str, start: int, array: np.ndarray) -> None:  # pragma: no cover
        raise NotImplementedError(f"{type(self).__name__} writes whole tensors")
