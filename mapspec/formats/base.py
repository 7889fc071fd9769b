"""The adapter protocol: a lazy `Source` of named tensors and a `Sink` that writes them
atomically. Arrays travel as numpy arrays with a dtype name beside them (bf16 as raw bits)."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, NamedTuple, Protocol

import numpy as np

from ..errors import CheckpointError, UsageError
from ..tensorinfo import TensorInfo

if TYPE_CHECKING:
    from .reading import RegularFile


class Extent(NamedTuple):
    """A tensor's bytes exactly as a sink would store them (C order, little-endian), lying in
    one range of a file: sinks copy them file-to-file (`copy_extent`), never through Python."""

    file: "RegularFile"
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


def copy_extent(extent: Extent, fd_out: int, offset_out: int) -> None:
    """Copy `extent` to `fd_out` at `offset_out` inside the kernel (copy_file_range), so the
    bytes never pass through Python or page faults; falls back to pread/pwrite in chunks."""
    file, pos, left = extent
    fd_in, out = file.fd, offset_out
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
            raise CheckpointError(f"{file.path}: ends before byte {pos + left} (truncated while reading?)")
        pos, out, left = pos + n, out + n, left - n


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

    def extent(self, key: str) -> Extent | None:
        return self.inner.extent(self._names[key])

    def release(self, key: str) -> None:
        self.inner.release(self._names[key])

    def close(self) -> None:
        self.inner.close()
