"""The adapter protocol: a lazy `Source` of named tensors and a `Sink` that writes them
atomically. Arrays travel as numpy arrays with a dtype name beside them (bf16 as raw bits)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Mapping, Protocol

import numpy as np

from ..errors import CheckpointError, UsageError
from ..plan import TensorInfo


class Source(Protocol):
    path: Path

    def infos(self) -> Mapping[str, TensorInfo]:
        """Every tensor's name, shape and dtype, in file order; no tensor data is read."""

    def read(self, key: str) -> np.ndarray:
        """One tensor, read now into a fresh buffer (bf16 as uint16 bits).

        Sources may also offer `release(key)` (its bytes are consumed) and `extent(key)`:
        `(RegularFile, offset, nbytes)` when the tensor is stored as-is, C-order and
        little-endian, in one range of a file (so it can be copied without decoding), else None."""

    def close(self) -> None: ...


class Sink(Protocol):
    def write(self, name: str, array: np.ndarray) -> None: ...

    def commit(self) -> None:
        """Make the output appear, whole, under its final name."""

    def abort(self) -> None:
        """Remove everything written so far."""


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


class Selected:
    """A source seen through `select`: only the sub-tree, with names relative to it."""

    auto = False  # chosen by mapspec for a training checkpoint, not asked for

    def __init__(self, inner: Source, prefix: str | None):
        self.inner = inner
        self.prefix = prefix
        self.path = inner.path
        all_infos = inner.infos()
        self._names = select(all_infos, prefix, inner.path)
        self._infos = {k: all_infos[v] for k, v in self._names.items()}

    def infos(self) -> Mapping[str, TensorInfo]:
        return self._infos

    def read(self, key: str) -> np.ndarray:
        return self.inner.read(self._names[key])

    def release(self, key: str) -> None:
        release = getattr(self.inner, "release", None)
        if release:
            release(self._names[key])

    def extent(self, key: str):
        extent = getattr(self.inner, "extent", None)
        return extent(self._names[key]) if extent else None

    def close(self) -> None:
        self.inner.close()
