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
import importlib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Literal, Mapping

from ..errors import ConversionError, UsageError
from ..lang.parser import as_spec
from ..run.executor import open_for
from ..compile.fit import MODES, Target, fit, memory_names_note, model_target
from ..compile.params import Config
from ..compile.plan import TensorInfo
from ..run.memory import remap_tensors, tensor_info
from ..lang.rules import Spec

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



def load_into(model: Any, checkpoint: str | Path, spec: Spec | str | Path | None = None, *,
              mode: Mode = "shape", drop: Iterable[str] = (), select: str | None = None,
              epoch: int | None = None, params: Mapping[str, object] | None = None,
              config: Config = None) -> LoadReport:
    """Load `checkpoint` (through `spec`, see `remap`; its parameters from `params` and
    `config`) into `model`; returns what was loaded and what not. Fitting follows the same
    rules as `mapspec apply --target` (`fit.py`)."""
    from ..formats.torch import to_torch

    if mode not in MODES:
        raise UsageError(f"unknown mode '{mode}' ({', '.join(MODES)})")
    drop = list(drop)
    if mode == "drop" and not drop:
        raise UsageError("mode 'drop' needs drop patterns, e.g. drop=['fc.*']")
    spec = as_spec(spec) if spec is not None else None
    source = open_for(spec, checkpoint, select, epoch)
    try:  # the tensors share the source's memory until load_state_dict copies them
        tensors = {k: to_torch(source.read(k), i.dtype) for k, i in source.infos().items()}
        origin = {}
        if spec is not None:
            plan, tensors = remap_tensors(spec, tensors, None, params, config)  # open_for applied the selection
            origin = {s.output: s.rule for s in plan.steps}
        target = model_target(model)
        try:
            kept, fitted = fit({k: tensor_info(v) for k, v in tensors.items()}, target, mode, drop, origin, api=True)
        except ConversionError as exc:
            note = memory_names_note(model)  # a transformers model's files use other names: say which compared
            if note is not None:
                exc.details.insert(0, note)
            raise
        load = {k: tensors[k] for k in kept if k in target.infos}
        result = model.load_state_dict(load, strict=False)
    finally:
        source.close()
    unexpected = [k for k, _ in fitted.unexpected]
    mismatched = [(k, tuple(p.shape), tuple(t.shape)) for k, p, t in fitted.mismatched]
    left_out = set(tensors) - set(kept) - set(unexpected) - {k for k, _, _ in mismatched}
    return LoadReport(loaded=list(load), missing=list(result.missing_keys), unexpected=unexpected,
                      mismatched=mismatched, dropped=sorted(left_out), target_count=len(target.infos))


# ------------------------------------------------------------------ model factories

_FACTORY = re.compile(r"^(?P<module>[A-Za-z_][\w.]*):(?P<func>[A-Za-z_][\w.]*)(?:\((?P<args>.*)\))?$")


def is_factory(text: str) -> bool:
    return bool(_FACTORY.match(text)) and not os.path.lexists(text)


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


def target_infos(target: Any) -> Target | Mapping[str, TensorInfo] | None:
    """A --target: a checkpoint path, a `module:callable(args)` factory, or a mapping."""
    from ..formats import read_infos

    if target is None or isinstance(target, Mapping):
        return target
    if isinstance(target, str) and is_factory(target):
        return model_target(from_factory(target), names="file")
    return read_infos(target, role="--target")
