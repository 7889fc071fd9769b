"""What the planner and every format adapter know about a tensor without reading it: its
shape and dtype. It lives below both, so formats never import the planner."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class TensorInfo:
    shape: tuple[int, ...]
    dtype: str

    @property
    def nbytes(self) -> int:
        from .dtypes import nbytes

        return nbytes(self.shape, self.dtype)
