"""What is inside a checkpoint, as a JSON-able tree (`mapspec inspect`).

A training checkpoint shows its entries (epoch, best_fitness, train_args, date, version, ...)
with tensor collections summarised: state dicts and pickled modules by tensor count, dtypes
and bytes, optimizer state by entries and parameter groups. Flat formats show their tensors
grouped by the first segment of their names."""

from __future__ import annotations

import math
import re
from collections import Counter
from pathlib import Path
from typing import Any

from ..core.lazy import numpy as np

from ..formats import provenance
from ..formats import open_source, sniff
from ..formats.reading import clip, location, reading
from ..formats.torch import auto_select
from ..formats.torch_pickle import StandIn, Tensor
from ..formats.unpickle import MAX_NODES, Budget
from ..core.tensorinfo import TensorInfo

MAX_ITEMS = 40
MAX_TEXT = 1024  # characters of a string from the file shown in a summary (a 1 MB one is clipped)


def summarize(infos: list[TensorInfo]) -> dict:
    dtypes = Counter(i.dtype for i in infos)
    return {
        "type": "tensors",
        "count": len(infos),
        "dtypes": dict(sorted(dtypes.items())),
        "elements": int(sum(int(np.prod(i.shape, dtype=np.int64)) for i in infos)),
        "bytes": int(sum(i.nbytes for i in infos)),
    }


def _tensors_in(obj: Any, budget: Budget | None = None) -> list[TensorInfo]:
    from ..formats.torch import flatten

    out: dict = {}
    flatten(obj, "", out, budget=budget)
    return [TensorInfo(t.shape, t.dtype) for t in out.values()]


def describe(obj: Any, depth: int = 0, budget: Budget | None = None) -> dict:
    """A summary of what a pickle built. Everything in it is a plain JSON value made here:
    nothing from the file is printed through its own repr()."""
    from ..formats.torch import is_module

    if budget is None:
        budget = Budget(MAX_NODES, "the checkpoint's object graph has")
    if isinstance(obj, Tensor):
        return {"type": "tensor", "shape": list(obj.shape), "dtype": obj.dtype}
    if is_module(obj):
        return {"type": "module", "class": clip(obj.qualname(), MAX_TEXT), **_counts(_tensors_in(obj, budget))}
    if isinstance(obj, dict):
        if "state" in obj and "param_groups" in obj:
            groups = obj["param_groups"] if isinstance(obj["param_groups"], (list, tuple)) else []
            state = obj["state"]
            return {"type": "optimizer", "state_entries": len(state) if isinstance(state, (dict, list)) else 0,
                    "param_groups": [{_key(k): _plain(v) for k, v in list(g.items())[:MAX_ITEMS] if k != "params"}
                                     for g in groups[:MAX_ITEMS] if isinstance(g, dict)],
                    **_counts(_tensors_in(state, budget))}
        tensors = _tensors_in(obj, budget)
        if obj and all(isinstance(v, Tensor) for v in obj.values()):
            return {"type": "state_dict", **_counts(tensors)}
        if depth > 3:
            return {"type": "dict", "length": len(obj)}
        entries = {_key(k): describe(v, depth + 1, budget) for k, v in list(obj.items())[:MAX_ITEMS]}
        out = {"type": "dict", "entries": entries}
        if len(obj) > MAX_ITEMS:
            out["more"] = len(obj) - MAX_ITEMS
        return out
    if isinstance(obj, (list, tuple)):
        tensors = _tensors_in(obj, budget)
        if tensors:
            return {"type": "list", "length": len(obj), **_counts(tensors)}
        return {"type": "value", "value": _plain(obj)}
    if isinstance(obj, StandIn):
        fields = [(k, v) for k, v in obj.__dict__.items()
                  if isinstance(k, str) and not k.startswith("_") and not isinstance(v, (Tensor, StandIn))]
        out = {"type": "object", "class": clip(obj.qualname(), MAX_TEXT),
               "fields": {_key(k): _plain(v) for k, v in fields[:MAX_ITEMS]}}
        if len(fields) > MAX_ITEMS:
            out["more"] = len(fields) - MAX_ITEMS
        return out
    return {"type": "value", "value": _plain(obj)}


def _counts(infos: list[TensorInfo]) -> dict:
    s = summarize(infos)
    return {k: v for k, v in s.items() if k != "type"}


def _key(k: Any) -> str:
    """A dict key from a file as JSON text: strings and numbers as they are, others by type."""
    if isinstance(k, str):
        return clip(k, MAX_TEXT)
    if isinstance(k, (bool, int, float, np.generic)) and not isinstance(k, np.void):
        return clip(str(_plain(k)), MAX_TEXT)
    return f"<{type(k).__name__}>"


def _plain(v: Any, depth: int = 0) -> Any:
    """A JSON-friendly rendering of a small value, built from plain types only."""
    if isinstance(v, np.generic):  # before float: np.float64 is a float subclass
        v = v.item() if v.dtype.kind in "biufc?" else f"<numpy {v.dtype.name}>"
    if isinstance(v, complex):
        return str(v)
    if isinstance(v, bool) or v is None:
        return v
    if isinstance(v, int):
        return int(v) if v.bit_length() <= 64 else f"<integer of {v.bit_length()} bits>"
    if isinstance(v, float):
        return float(v) if math.isfinite(v) else str(v)  # JSON has no NaN or Infinity
    if isinstance(v, str):
        return clip(str(v), MAX_TEXT)
    if isinstance(v, (bytes, bytearray)):
        return f"<{len(v)} bytes>"
    if isinstance(v, Tensor):
        return f"tensor{list(v.shape)} {v.dtype}"
    if depth > 2:
        return "..."
    if isinstance(v, dict):
        out = {_key(k): _plain(x, depth + 1) for k, x in list(v.items())[:MAX_ITEMS]}
        if len(v) > MAX_ITEMS:
            out["..."] = f"{len(v) - MAX_ITEMS} more"
        return out
    if isinstance(v, (list, tuple, set, frozenset)):
        items = list(v)[:MAX_ITEMS + 1]
        return [_plain(x, depth + 1) for x in items[:MAX_ITEMS]] + (
            [f"... {len(v) - MAX_ITEMS} more"] if len(v) > MAX_ITEMS else [])
    if isinstance(v, StandIn):
        fields = [(k, x) for k, x in v.__dict__.items() if isinstance(k, str) and not k.startswith("_")]
        name = clip(v.qualname(), MAX_TEXT)
        return {"class": name, **{_key(k): _plain(x, depth + 1) for k, x in fields[:MAX_ITEMS]}} if fields else f"<{name}>"
    return f"<{type(v).__name__}>"


def inspect_checkpoint(path: str | Path, epoch: int | None = None) -> dict:
    from ..formats.mxnet import resolve_prefix

    path = resolve_prefix(location(path), epoch)
    source = open_source(path, select="")  # "" asks for the whole file, no automatic choice
    try:
        infos = dict(source.infos())
        fmt = sniff(source.shards[0] if source.shards else path)
        tree = {"file": str(path), "format": fmt, "tensors": summarize(list(infos.values()))}
        if source.shards:
            tree["shards"] = _shards(source, infos)
        chunks = getattr(getattr(source, "inner", source), "chunk_layout", None)
        if chunks:  # a distributed checkpoint: each tensor's chunks and their files
            tree["chunks"] = dict(chunks)
        record = provenance.read(path)
        if record is not None:
            tree["provenance"] = record
        obj = source.object
        if obj is not None:
            with reading(path):
                tree["content"] = describe(obj)
                chosen = auto_select(obj)
            if chosen:
                tree["auto_select"] = chosen
        else:
            groups: dict[str, list[TensorInfo]] = {}
            for k, i in infos.items():
                groups.setdefault(clip(_group(k), MAX_TEXT), []).append(i)
            tree["content"] = {"type": "groups",
                               "entries": {g: summarize(v) for g, v in list(groups.items())[:MAX_ITEMS * 5]}}
            if len(groups) > MAX_ITEMS * 5:
                tree["content"]["more"] = len(groups) - MAX_ITEMS * 5
        return tree
    finally:
        source.close()


def _shards(source, infos: dict[str, TensorInfo]) -> list[dict]:
    """Each shard of a sharded checkpoint: its file, tensor count and bytes."""
    held: dict = {p: [] for p in source.shards}
    for k, i in infos.items():
        held[source.shard_of(k)].append(i)
    return [{"file": p.name, "tensors": len(v), "bytes": int(sum(i.nbytes for i in v))} for p, v in held.items()]


def _group(key: str) -> str:
    """The first segment of a name: up to a dot or an MXNet-style double underscore (a name
    with neither: up to its first underscore). An MXNet `arg:`/`aux:` prefix stays part of
    it, since a spec must match it."""
    prefix, rest = (key[:4], key[4:]) if key.startswith(("arg:", "aux:")) else ("", key)
    parts = re.split(r"\.|__", rest, maxsplit=1)
    return prefix + (parts[0] if len(parts) > 1 else rest.split("_", 1)[0])
