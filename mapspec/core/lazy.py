"""numpy, imported on its first use rather than when mapspec is.

Importing numpy is the largest single cost of starting `mapspec` (70-90 ms of a 0.3 s small
conversion), and a rename-only conversion never calls it: tensors that pass through unchanged
are copied by the kernel (`copy_file_range`), the plan speaks in dtype names and byte counts.
So modules write `from .lazy import numpy as np` and use `np.x` as usual; the first `np.x`
that runs imports numpy."""

from __future__ import annotations

import importlib
import types
from typing import Any


class LazyModule(types.ModuleType):
    """Stands for the module `name` until an attribute is first read, then holds its
    attributes (so later reads are plain lookups, no import machinery)."""

    def __getattr__(self, attr: str) -> Any:  # only for names not (yet) in __dict__
        module = importlib.import_module(self.__name__)
        self.__dict__.update(module.__dict__)
        return getattr(module, attr)


numpy: Any = LazyModule("numpy")
