"""Loading a checkpoint into a live `torch.nn.Module` whose layers may have changed.

The spec (if any) runs first; what comes out meets the model's own `state_dict()` and is
loaded by one of three modes:

- "strict": every name and shape must match, both ways (nothing is loaded otherwise);
- "shape": the classic intersect: keep tensors whose name and shape both match;
- "drop": leave out the tensors matching `drop` patterns (globs such as "fc.*"), load the rest
  strictly; the model's keys that stay missing must all match the patterns too.

The report's `missing` and `unexpected` lists are the ones `load_state_dict` itself returns.
"""

from __future__ import annotations

import ast
import fnmatch
import importlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Literal, Mapping

import numpy as np

from .errors import ConversionError, UsageError
from .executor import as_spec, execute, open_for
from .params import Config
from .plan import TensorInfo, compile_spec
from .rules import Spec

Mode = Literal["strict", "shape", "drop"]


@dataclass
class LoadReport:
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    target_count: int = 0

    def summary(self) -> str:
        return f"Transferred {len(self.loaded)}/{self.target_count} tensors"

    def lines(self) -> list[str]:
        out = [f"missing: {k}" for k in self.missing]
        out += [f"unexpected: {k}" for k in self.unexpected]
        out += [f"shape mismatch: {k} checkpoint {s}, model {t}" for k, s, t in self.mismatched]
        return out


class _DictSink:
    def __init__(self):
        self.tensors: dict[str, np.ndarray] = {}

    def write(self, name: str, array: np.ndarray) -> None:
        self.tensors[name] = array


def converted(checkpoint: str | Path, spec: Spec | str | Path | None = None, *, select: str | None = None,
              epoch: int | None = None, strict: bool = True, params: Mapping[str, object] | None = None,
              config: Config = None) -> tuple[dict[str, np.ndarray], dict[str, TensorInfo]]:
    """The checkpoint's tensors after the spec (or as stored, without one)."""
    spec = as_spec(spec) if spec is not None else None
    source = open_for(spec, checkpoint, select, epoch)
    try:
        if spec is None:
            infos = dict(source.infos())
            return {k: np.array(source.read(k)) for k in infos}, infos
        plan = compile_spec(spec, source.infos(), strict=strict, params=params, config=config)
        sink = _DictSink()
        execute(plan, source, sink)
        return {k: np.array(v) for k, v in sink.tensors.items()}, plan.outputs()
    finally:
        source.close()


def load_into(model: Any, checkpoint: str | Path, spec: Spec | str | Path | None = None, *,
              mode: Mode = "shape", drop: Iterable[str] = (), select: str | None = None,
              epoch: int | None = None, params: Mapping[str, object] | None = None,
              config: Config = None) -> LoadReport:
    """Load `checkpoint` (through `spec`, its parameters from `params` and `config`) into
    `model`; returns what was loaded and what not."""
    from .formats.torch import to_torch

    if mode not in ("strict", "shape", "drop"):
        raise UsageError(f"unknown mode '{mode}' (strict, shape, drop)")
    drop = list(drop)
    if mode == "drop" and not drop:
        raise UsageError("mode 'drop' needs drop patterns, e.g. drop=['fc.*']")
    arrays, infos = converted(checkpoint, spec, select=select, epoch=epoch, params=params, config=config)
    target = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    report = LoadReport(target_count=len(target))
    dropped = {k for k in arrays if any(fnmatch.fnmatchcase(k, p) for p in drop)}
    report.dropped = sorted(dropped)
    keep = {}
    for k, a in arrays.items():
        if k in dropped:
            continue
        if k in target and tuple(a.shape) != target[k]:
            report.mismatched.append((k, tuple(a.shape), target[k]))
            continue
        if k in target or mode == "strict":
            keep[k] = a
    unexpected = [k for k in arrays if k not in target and k not in dropped]
    missing = [k for k in target if k not in keep and not k.endswith("num_batches_tracked")]
    if mode == "strict" and (unexpected or missing or report.mismatched):
        problems = LoadReport(missing=missing, unexpected=unexpected, mismatched=report.mismatched)
        raise ConversionError("the checkpoint does not fit the model strictly", problems.lines())
    if mode == "drop":
        stray = [k for k in missing if not any(fnmatch.fnmatchcase(k, p) for p in drop)]
        if stray or report.mismatched:
            problems = LoadReport(missing=stray, mismatched=report.mismatched)
            raise ConversionError("outside the dropped patterns, the checkpoint does not fit the model",
                                  problems.lines())
    tensors = {k: to_torch(a, infos[k].dtype) for k, a in keep.items() if k in target}
    result = model.load_state_dict(tensors, strict=False)
    report.loaded = list(tensors)
    report.missing = list(result.missing_keys)
    report.unexpected = unexpected
    return report


# ------------------------------------------------------------------ model factories

_FACTORY = re.compile(r"^(?P<module>[A-Za-z_][\w.]*):(?P<func>[A-Za-z_][\w.]*)(?:\((?P<args>.*)\))?$")


def is_factory(text: str) -> bool:
    return bool(_FACTORY.match(text)) and not Path(text).exists()


def from_factory(text: str) -> Any:
    """`module:callable(args)`: import, call with literal arguments, return the model."""
    m = _FACTORY.match(text)
    if not m:
        raise UsageError(f"not a model factory: {text!r} (expected module:callable(args))")
    try:
        obj: Any = importlib.import_module(m["module"])
    except ImportError as exc:
        raise UsageError(f"cannot import {m['module']}: {exc}") from None
    for part in m["func"].split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            raise UsageError(f"{m['module']} has no {m['func']}")
    args, kwargs = [], {}
    if m["args"]:
        try:
            call = ast.parse(f"f({m['args']})", mode="eval").body
            args = [ast.literal_eval(a) for a in call.args]
            kwargs = {k.arg: ast.literal_eval(k.value) for k in call.keywords}
        except (SyntaxError, ValueError) as exc:
            raise UsageError(f"model factory arguments must be literals: {m['args']!r} ({exc})") from None
    return obj(*args, **kwargs)


def factory_infos(text: str) -> dict[str, TensorInfo]:
    from .formats.torch_pickle import TORCH_DTYPES

    model = from_factory(text)
    return {k: TensorInfo(tuple(v.shape), TORCH_DTYPES[str(v.dtype).removeprefix("torch.")])
            for k, v in model.state_dict().items()}


def target_infos(target: Any) -> Mapping[str, TensorInfo] | None:
    """A --target: a checkpoint path, a `module:callable(args)` factory, or a mapping."""
    from .formats import read_infos

    if target is None or isinstance(target, Mapping):
        return target
    if isinstance(target, str) and is_factory(target):
        return factory_infos(target)
    return read_infos(target)
