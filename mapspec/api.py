"""The public facade: convert (`apply`), compile (`plan_for`, `inverse_plan_for`) and remap in
memory (`remap`). It joins the layers below (lang, compile, formats, run, tools); the CLI and
`mapspec/__init__.py` call only this."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping

from .compile.params import Config
from .compile.plan import Plan, compile_spec
from .core.tensorinfo import TensorInfo
from .errors import UsageError
from .formats import Selected, open_sink, sink_format
from .formats.base import guarded_writes
from .formats.provenance import Provenance
from .lang.parser import as_spec
from .lang.rules import Spec
from .run.executor import named_output_errors, check_space, copied_from, disk_size, execute, open_for
from .run.memory import remap_tensors

if TYPE_CHECKING:
    from .tools.invert import Inversion


@dataclass(frozen=True)
class Report:
    plan: Plan
    output: Path
    format: str
    bytes: int  # the output's size on disk
    selected: str | None = None  # the sub-tree mapspec chose by itself, if it did
    inverse: Inversion | None = None  # with reverse: the derived inverse that ran

    @property
    def losses(self) -> tuple[str, ...]:
        """With reverse: what the inverse leaves out or undoes lossily."""
        return self.inverse.losses if self.inverse is not None else ()

    @property
    def written(self) -> int:
        return len(self.plan.steps)

    def summary(self) -> str:
        from .tools.present import report_summary

        return report_summary(self)


def apply(
    spec: Spec | str | Path,
    checkpoint: str | Path,
    output: str | Path,
    *,
    target: str | Path | Mapping[str, TensorInfo] | None = None,
    to: str | None = None,
    select: str | None = None,
    epoch: int | None = None,
    strict: bool = True,
    fit: str = "strict",
    drop: tuple[str, ...] = (),
    force: bool = False,
    strict_rules: bool = False,
    max_shard_size: int | str | None = None,
    progress: Callable[[int, int], None] | None = None,
    params: Mapping[str, object] | None = None,
    config: Config = None,
    reverse: bool = False,
    lossy: bool = False,
    prefer: Mapping[int | None, int] | None = None,
) -> Report:
    """Convert `checkpoint` with `spec` into `output`; atomic, never touching the input.
    `progress(done, total)` hears tensor bytes written so far and in all; `params` and `config`
    give the spec's parameters their values (as -p and --config); `reverse` runs the spec's
    derived inverse (see `invert`); `lossy` lets it undo lossy casts and drops; `prefer` chooses
    the fallback alternatives it writes back (see `invert_spec`).

    `checkpoint` may be a sharded checkpoint (an index, a model directory, a glob or a list of
    shards). With `max_shard_size` ("5GB", bytes), `output` is a directory of HF-style shards
    plus an index, `to` safetensors (the default) or torch."""
    spec = as_spec(spec)
    inverse = None
    if reverse:
        from .tools.invert import invert_spec

        inverse = invert_spec(spec, params=params, config=config, lossy=lossy, prefer=prefer)
    output = Path(output)
    fmt = sink_format(output, to or ("safetensors" if max_shard_size is not None else None))
    if output.exists() and not force:
        raise UsageError(f"{output} exists; use --force to overwrite it")
    _refuse_overwrite(output, _paths(checkpoint), max_shard_size is not None)
    source = open_for(inverse.spec if inverse else spec, checkpoint, select, epoch)
    try:
        _refuse_overwrite(output, source.shards, max_shard_size is not None)
        options = dict(target=_target(target), strict=strict, fit=fit, drop=tuple(drop), strict_rules=strict_rules)
        if inverse:  # the inverse states the parameters' values already
            plan = inverse.compile(source.infos(), **options)
            values = inverse.params
        else:
            plan = compile_spec(spec, source.infos(), params=params, config=config, **options)
            values = {b.name: b.value for b in plan.params}
        record = Provenance(spec_file=spec.file, includes=spec.includes, source=source.path, params=values,
                            direction="reverse" if reverse else "forward",
                            select=source.prefix if isinstance(source, Selected) else None)
        n = sum(s.info.nbytes for s in plan.steps)
        check_space(output, n)
        # Everything that creates, fills or renames the output runs inside the guard: a failure
        # anywhere (even while the sink is being built) or SIGTERM/SIGINT removes its temp files.
        with guarded_writes(replace=force), named_output_errors(output):
            sink = None
            try:
                sink = open_sink(output, fmt, plan.outputs(), record, max_shard_size=max_shard_size,
                                 copied_from=copied_from(plan, source))
                execute(plan, source, sink, (lambda done: progress(done, n)) if progress else None)
                sink.commit()
            except BaseException:
                if sink is not None:
                    sink.abort()
                raise
    finally:
        source.close()
    return Report(plan, output, fmt, disk_size(output),
                  source.prefix if source.auto else None, inverse)




def plan_for(spec: Spec | str | Path, checkpoint: str | Path, *, target=None, select: str | None = None,
             epoch: int | None = None, strict: bool = True, fit: str = "strict", drop: tuple[str, ...] = (),
             strict_rules: bool = False, params: Mapping[str, object] | None = None,
             config: Config = None) -> Plan:
    """Compile `spec` against a checkpoint's key list without converting anything."""
    spec = as_spec(spec)
    source = open_for(spec, checkpoint, select, epoch)
    try:
        infos = dict(source.infos())
    finally:
        source.close()
    return compile_spec(spec, infos, params=params, config=config, target=_target(target), strict=strict,
                        fit=fit, drop=tuple(drop), strict_rules=strict_rules)


def inverse_plan_for(spec: Spec | str | Path, checkpoint: str | Path, *, select: str | None = None,
                     epoch: int | None = None, params: Mapping[str, object] | None = None, config: Config = None,
                     lossy: bool = False, prefer=None, **options):
    """The derived inverse of `spec` (from the spec alone, as apply --reverse runs it) and its
    plan against a checkpoint of the spec's target layout: (Inversion, Plan). `options` go to
    compile_spec (target=, strict=, fit=, ...)."""
    from .tools.invert import invert_spec

    inverse = invert_spec(as_spec(spec), params=params, config=config, lossy=lossy, prefer=prefer)
    source = open_for(inverse.spec, checkpoint, select, epoch)
    try:
        infos = dict(source.infos())
    finally:
        source.close()
    if "target" in options:
        options["target"] = _target(options["target"])
    return inverse, inverse.compile(infos, **options)


def _refuse_overwrite(output: Path, inputs, directory: bool) -> None:
    out = output.resolve()
    for p in inputs:
        p = Path(p).resolve()
        if out == p or (directory and out in p.parents):
            raise UsageError("the output would overwrite the input checkpoint")


def _paths(checkpoint) -> list[Path]:
    return [Path(p) for p in checkpoint] if isinstance(checkpoint, (list, tuple)) else [Path(checkpoint)]


def _target(target):
    if target is None:  # no --target: `load` (model factories) is not even imported
        return None
    from .tools.load import target_infos

    return target_infos(str(target) if isinstance(target, os.PathLike) else target)


def remap(spec: Spec | str | Path, state_dict: Mapping[str, Any], **params: Any) -> dict[str, Any]:
    """Convert an in-memory state dict (torch tensors or numpy arrays) with `spec`.

    Returns a new dict in plan order; renamed tensors are the objects given, others keep the
    tensor type given. A spec header `select model` takes the keys under `model.`.
    Every key must be matched by a rule, as `mapspec apply` requires."""
    spec = as_spec(spec)
    return remap_tensors(spec, state_dict, spec.header.select, params or None)[1]
