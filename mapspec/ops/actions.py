"""The actions a rule may apply after renaming. Each is one `ActionDef` (`base`): how its
arguments are checked, how it changes the shapes and dtypes of a list of typed tensors (at
compile time, before any tensor is read), what it does to arrays, which planned actions undo
it, and how `invert` and `explain` write it. The definitions live by family (`shape`,
`merge`, `cast`); `registry` knows them by name. This module is the one import for users."""

from .args import format_shape
from .base import ActionDef, InverseContext, Params, PlannedAction, Rows, Shape, Typed, make, planned
from .merge import MAX_PIECES
from .ranks import ReplicaMismatch
from .registry import (REGISTRY, config_effect, inverse, lookup, normalize, passes_through, register, registered,
                       resolve, rows, run, run_all, typed)

__all__ = ["ActionDef", "InverseContext", "MAX_PIECES", "Params", "PlannedAction", "REGISTRY", "ReplicaMismatch",
           "Shape", "Typed", "config_effect", "format_shape", "inverse", "lookup", "make", "normalize", "passes_through", "planned",
           "register", "registered", "resolve",
           "Rows", "rows", "run", "run_all", "typed"]
