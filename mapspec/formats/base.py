"""The adapter protocol: a lazy `Source` of named tensors and a `Sink` that writes them
atomically. Arrays travel as numpy arrays with a dtype name beside them (bf16 as raw bits)."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Mapping, NamedTuple, Protocol

import numpy as np

from ..errors import CheckpointError, UsageError
from ..tensorinfo import TensorInfo


class Region(NamedTuple):
    """A tensor's bytes exactly as a sink would store them (C order, little-endian), lying
    in one file: sinks copy it file-to-file with `os.copy_file_range`, never through Python."""

    path: Path
    offset: int
    nbytes: int


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
        """One tensor, memory-mapped where the format allows (bf16 as uint16 bits)."""

    def region(self, key: str) -> Region | None:
        """Where `key`'s bytes lie unchanged on disk, if they do."""

    def release(self, key: str) -> None:
        """`key` is no longer needed: hand its pages back, so RSS stays near one step."""

    def auto_select(self) -> str | None:
        """The sub-tree to convert when the caller did not say (a training checkpoint's model)."""

    def close(self) -> None: ...


class SourceBase:
    """What a source without the feature answers; sources override what they support."""

    metadata: Mapping[str, str] = {}
    object: Any = None
    shards: tuple[Path, ...] = ()
    auto = False

    def region(self, key: str) -> Region | None:
        return None

    def release(self, key: str) -> None:
        pass

    def auto_select(self) -> str | None:
        return None


class Sink(Protocol):
    def write(self, name: str, array: np.ndarray) -> None: ...

    def write_region(self, name: str, region: Region) -> bool:
        """Write `name` by copying its stored bytes file-to-file; False: not supported here,
        `write` it instead."""

    def commit(self) -> None:
        """Make the output appear, whole, under its final name."""

    def abort(self) -> None:
        """Remove everything written so far."""


class SinkBase:
    def write_region(self, name: str, region: Region) -> bool:
        return False


def copy_region(region: Region, fd_out: int, offset_out: int) -> None:
    """Copy `region` to `fd_out` at `offset_out` inside the kernel (copy_file_range), so the
    bytes never pass through Python or page faults; falls back to pread/pwrite in chunks."""
    with open(region.path, "rb") as src:
        fd_in = src.fileno()
        pos, left = region.offset, region.nbytes
        out = offset_out
        fast = hasattr(os, "copy_file_range")
        while left:
            n = 0
            if fast:
                try:
                    n = os.copy_file_range(fd_in, fd_out, min(left, 1 << 30), pos, out)
                except OSError:  # EXDEV on old kernels, EINVAL on some file systems
                    fast = False
            if not fast:
                chunk = os.pread(fd_in, min(left, 8 << 20), pos)
                n = os.pwrite(fd_out, chunk, out) if chunk else 0
            if n <= 0:
                raise CheckpointError(f"{region.path}: ends before byte {pos + left} (file changed while reading?)")
            pos, out, left = pos + n, out + n, left - n


class AtomicPath:
    """A temporary path beside `final`, renamed over it on commit and removed on abort, so
    no half-written output is ever seen under the final name. Missing output folders are
    created, and removed again on abort."""

    def __init__(self, final: Path, directory: bool = False):
        self.final = Path(final)
        parent = self.final.parent
        self.created: list[Path] = []  # folders made for this output, deepest first
        missing = parent
        while not missing.exists():
            self.created.append(missing)
            missing = missing.parent
        if not missing.is_dir():
            raise UsageError(f"cannot create the output folder {parent}: {missing} is not a folder")
        try:
            parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UsageError(f"cannot create the output folder {parent}: {exc.strerror}") from None
        prefix = f".{self.final.name}."
        if directory:
            self.tmp = Path(tempfile.mkdtemp(prefix=prefix, suffix=".part", dir=parent))
        else:
            fd, name = tempfile.mkstemp(prefix=prefix, suffix=".part", dir=parent)
            os.close(fd)
            self.tmp = Path(name)
            # mkstemp makes the file private (0600); the output should get the usual mode.
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(self.tmp, 0o666 & ~umask)

    def commit(self) -> None:
        os.replace(self.tmp, self.final)

    def abort(self) -> None:
        if self.tmp.is_dir():
            import shutil

            shutil.rmtree(self.tmp, ignore_errors=True)
        else:
            try:
                self.tmp.unlink()
            except FileNotFoundError:
                pass
        for folder in self.created:
            try:
                folder.rmdir()
            except OSError:  # something else was put there meanwhile: leave it
                break


def replace_dir(tmp: Path, final: Path) -> None:
    """Rename the finished directory `tmp` to `final`. An existing `final` (--force) is renamed
    aside first and removed after, so `final` is always either the old or the new whole."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp made it private; the output gets the usual mode
    if final.exists():
        old = final.with_name(f".{final.name}.old-{os.getpid()}")
        os.rename(final, old)
        os.rename(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(tmp, final)


class MappedFile:
    """A read-only memory map of a whole file whose consumed ranges can be handed back.

    Pages read through a map stay resident (and count in RSS) until the kernel needs them;
    `release` tells it at once, so a conversion's footprint stays near one tensor."""

    def __init__(self, path: Path):
        import mmap

        self.size = path.stat().st_size
        self._mmap = None
        if self.size:
            with open(path, "rb") as f:
                self._mmap = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        self.array = (np.frombuffer(self._mmap, dtype=np.uint8) if self._mmap is not None
                      else np.zeros(0, np.uint8))

    def release(self, start: int, stop: int) -> None:
        import mmap

        if self._mmap is None or not hasattr(mmap, "MADV_DONTNEED"):
            return
        page = mmap.PAGESIZE
        lo = (start // page) * page
        hi = min(-(-stop // page) * page, self.size)
        if hi > lo:
            self._mmap.madvise(mmap.MADV_DONTNEED, lo, hi - lo)

    def span(self, array: np.ndarray) -> tuple[int, int] | None:
        """The file byte range [start, stop) an array viewing this map covers, else None
        (an array elsewhere in memory, e.g. decompressed)."""
        if self._mmap is None or array.size == 0:
            return None
        base = self.array.__array_interface__["data"][0]
        lo = hi = array.__array_interface__["data"][0]
        for n, stride in zip(array.shape, array.strides):
            if stride > 0:
                hi += (n - 1) * stride
            else:
                lo += (n - 1) * stride
        hi += array.itemsize
        if not (base <= lo and hi <= base + self.size):
            return None
        return lo - base, hi - base

    def close(self) -> None:
        # Arrays handed out may still view the map; let the GC close it when they go.
        self.array = np.zeros(0, np.uint8)
        self._mmap = None


def select(infos: Mapping[str, TensorInfo], prefix: str | None, path: Path) -> dict[str, str]:
    """Map selected names to stored names: the keys under `prefix.`, with it stripped."""
    if not prefix:
        return {k: k for k in infos}
    head = prefix + "."
    out = {k[len(head):]: k for k in infos if k.startswith(head)}
    if not out:
        tops = sorted({k.split(".", 1)[0] for k in infos})
        shown = ", ".join(tops[:12]) + (", ..." if len(tops) > 12 else "")
        raise CheckpointError(f"{path}: select {prefix}: no tensors under '{prefix}' (top level: {shown})")
    return out


class Selected(SourceBase):
    """A source seen through `select`: only the sub-tree, with names relative to it."""

    auto = False  # chosen by mapspec for a training checkpoint, not asked for

    def __init__(self, inner: Source, prefix: str | None):
        self.inner = inner
        self.prefix = prefix
        self.path = inner.path
        self.metadata = inner.metadata
        self.object = inner.object
        self.shards = inner.shards
        all_infos = inner.infos()
        self._names = select(all_infos, prefix, inner.path)
        self._infos = {k: all_infos[v] for k, v in self._names.items()}

    def infos(self) -> Mapping[str, TensorInfo]:
        return self._infos

    def read(self, key: str) -> np.ndarray:
        return self.inner.read(self._names[key])

    def region(self, key: str) -> Region | None:
        return self.inner.region(self._names[key])

    def release(self, key: str) -> None:
        self.inner.release(self._names[key])

    def close(self) -> None:
        self.inner.close()
