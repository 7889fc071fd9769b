"""Pausing Python's cyclic garbage collector around work that only builds objects."""

from __future__ import annotations

import functools
import gc
from typing import Callable, TypeVar

F = TypeVar("F", bound=Callable)


def without_gc(fn: F) -> F:
    """`fn` run with the cyclic collector paused. Parsing and compiling build many small
    objects that all live until the result is done, so the collector would only re-scan
    them, again and again as they grow (a third of the time at 1M keys, growing with the
    size of a spec): nothing it could free is made here. Reference counting still frees
    everything short-lived."""

    @functools.wraps(fn)
    def run(*args, **kwargs):
        was = gc.isenabled()
        gc.disable()
        try:
            return fn(*args, **kwargs)
        finally:
            if was:
                gc.enable()
    return run  # type: ignore[return-value]
