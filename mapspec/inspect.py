"""What is inside a checkpoint, as a JSON-able tree (`mapspec inspect`).

A training checkpoint shows its entries (epoch, best_fitness, train_args, date, version, ...)
with tensor collections summarised: state dicts and pickled modules by tensor count, dtypes
and bytes, optimizer state by entries and parameter groups. Flat formats show their tensors
grouped by the first segment of their names."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from . import provenance
from .formats import open_source, sniff
from .formats.torch_pickle import StandIn, Tensor
from .plan import TensorInfo

MAX_ITEMS = 40
AUTO_SELECT = ("state_dict", "model_state_dict", "model", "ema", "net", "module", "params")


def summarize(infos: list[TensorInfo]) -> dict:
    dtypes = Counter(i.dtype for i in infos)
    return {
        "type": "tensors",
        "count": len(infos),
        "dtypes": dict(sorted(dtypes.items())),
        "elements": int(sum(int(np.prod(i.shape, dtype=np.int64)) for i in infos)),
        "bytes": int(sum(i.nbytes for i in infos)),
    }


def _tensors_in(obj: Any) -> list[TensorInfo]:
    from .formats.torch import flatten

    out: dict = {}
    flatten(obj, "", out)
    return [TensorInfo(tuple(t.array.shape), t.dtype) for t in out.values()]


def describe(obj: Any, depth: int = 0) -> dict:
    from .formats.torch import is_module

    if isinstance(obj, Tensor):
        return {"type": "tensor", "shape": list(obj.array.shape), "dtype": obj.dtype}
    if is_module(obj):
        return {"type": "module", "class": obj.qualname(), **_counts(_tensors_in(obj))}
    if isinstance(obj, dict):
        if "state" in obj and "param_groups" in obj:
            groups = [{k: _plain(v) for k, v in g.items() if k != "params"} for g in obj["param_groups"]
                      if isinstance(g, dict)]
            return {"type": "optimizer", "state_entries": len(obj["state"]), "param_groups": groups,
                    **_counts(_tensors_in(obj["state"]))}
        tensors = _tensors_in(obj)
        if obj and all(isinstance(v, Tensor) for v in obj.values()):
            return {"type": "state_dict", **_counts(tensors)}
        if depth > 3:
            return {"type": "dict", "length": len(obj)}
        entries = {str(k): describe(v, depth + 1) for k, v in list(obj.items())[:MAX_ITEMS]}
        out = {"type": "dict", "entries": entries}
        if len(obj) > MAX_ITEMS:
            out["more"] = len(obj) - MAX_ITEMS
        return out
    if isinstance(obj, (list, tuple)):
        tensors = _tensors_in(obj)
        if tensors:
            return {"type": "list", "length": len(obj), **_counts(tensors)}
        return {"type": "value", "value": _plain(obj)}
    if isinstance(obj, StandIn):
        fields = {k: _plain(v) for k, v in obj.__dict__.items()
                  if not k.startswith("_") and not isinstance(v, (Tensor, StandIn))}
        out = {"type": "object", "class": obj.qualname(), "fields": dict(list(fields.items())[:MAX_ITEMS])}
        if len(fields) > MAX_ITEMS:
            out["more"] = len(fields) - MAX_ITEMS
        return out
    return {"type": "value", "value": _plain(obj)}


def _counts(infos: list[TensorInfo]) -> dict:
    s = summarize(infos)
    return {k: v for k, v in s.items() if k != "type"}


def _plain(v: Any, depth: int = 0) -> Any:
    """A JSON-friendly rendering of a small value."""
    if isinstance(v, np.generic):  # before float: np.float64 is a float subclass
        return v.item()
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    if isinstance(v, bytes):
        return f"<{len(v)} bytes>"
    if depth > 2:
        return "..."
    if isinstance(v, dict):
        out = {str(k): _plain(x, depth + 1) for k, x in list(v.items())[:MAX_ITEMS]}
        if len(v) > MAX_ITEMS:
            out["..."] = f"{len(v) - MAX_ITEMS} more"
        return out
    if isinstance(v, (list, tuple, set, frozenset)):
        items = list(v)
        return [_plain(x, depth + 1) for x in items[:MAX_ITEMS]] + (
            [f"... {len(items) - MAX_ITEMS} more"] if len(items) > MAX_ITEMS else [])
    if isinstance(v, Tensor):
        return f"tensor{list(v.array.shape)} {v.dtype}"
    if isinstance(v, StandIn):
        fields = {k: _plain(x, depth + 1) for k, x in v.__dict__.items() if not k.startswith("_")}
        return {"class": v.qualname(), **fields} if fields else f"<{v.qualname()}>"
    return repr(v)[:80]


def inspect_checkpoint(path: str | Path, epoch: int | None = None) -> dict:
    from .formats.mxnet import resolve_prefix

    path = resolve_prefix(Path(path), epoch)
    fmt = sniff(path) if path.exists() else None
    source = open_source(path, select="")  # "" asks for the whole file, no automatic choice
    try:
        infos = dict(source.infos())
        tree = {"file": str(path), "format": fmt, "tensors": summarize(list(infos.values()))}
        record = provenance.read(path)
        if record is not None:
            tree["provenance"] = record
        obj = getattr(source, "object", None)
        if obj is not None:
            tree["content"] = describe(obj)
            chosen = auto_select(obj)
            if chosen:
                tree["auto_select"] = chosen
        else:
            groups: dict[str, list[TensorInfo]] = {}
            for k, i in infos.items():
                groups.setdefault(_group(k), []).append(i)
            tree["content"] = {"type": "groups",
                               "entries": {g: summarize(v) for g, v in list(groups.items())[:MAX_ITEMS * 5]}}
            if len(groups) > MAX_ITEMS * 5:
                tree["content"]["more"] = len(groups) - MAX_ITEMS * 5
        return tree
    finally:
        source.close()


def _group(key: str) -> str:
    """The first segment of a name: up to a dot or an MXNet-style double underscore (a name
    with neither: up to its first underscore). An MXNet `arg:`/`aux:` prefix stays part of
    it, since a spec must match it."""
    prefix, rest = (key[:4], key[4:]) if key.startswith(("arg:", "aux:")) else ("", key)
    parts = re.split(r"\.|__", rest, maxsplit=1)
    return prefix + (parts[0] if len(parts) > 1 else rest.split("_", 1)[0])


def auto_select(obj: Any) -> str | None:
    """The sub-tree that holds the model in common training-checkpoint layouts."""
    from .formats.torch import is_module

    if not isinstance(obj, dict) or all(isinstance(v, Tensor) for v in obj.values()):
        return None
    for name in AUTO_SELECT:
        value = obj.get(name)
        if value is not None and (is_module(value) or _tensors_in(value)):
            return name
    return None
