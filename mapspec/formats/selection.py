"""`--select`: a source seen through one sub-tree, its names relative to it."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

from ..core.lazy import numpy as np

from ..errors import CheckpointError
from ..core.tensorinfo import TensorInfo
from .protocol import Extent, Source, SourceBase


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
        self.kv = getattr(inner, "kv", None)
        all_infos = inner.infos()
        self._names = select(all_infos, prefix, inner.path)
        self._infos = {k: all_infos[v] for k, v in self._names.items()}

    def infos(self) -> Mapping[str, TensorInfo]:
        return self._infos

    def read(self, key: str) -> np.ndarray:
        return self.inner.read(self._names[key])

    def extent(self, key: str) -> Extent | None:
        return self.inner.extent(self._names[key])

    def read_rows(self, key: str, start: int, stop: int) -> np.ndarray | None:
        return self.inner.read_rows(self._names[key], start, stop)

    def release(self, key: str) -> None:
        self.inner.release(self._names[key])

    def close(self) -> None:
        self.inner.close()
