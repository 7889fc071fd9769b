"""The public facade: convert (`apply`), compile (`plan_for`, `inverse_plan_for`) and remap in
memory (`remap`). It joins the layers below (lang, compile, formats, run, tools); the CLI and
`mapspec/__init__.py` call only this."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping

from .compile.plan import Plan, alternatives_used, compile_spec
from .core.tensorinfo import TensorInfo
from .errors import UsageError
from .formats import Selected, open_sink, sink_format
from .formats.base import guarded_writes
from .formats.provenance import Provenance
from .lang.parser import as_spec
from .lang.rules import Spec
from .run.executor import named_output_errors, check_space, copied_from, disk_size, execute, open_for
from .run.memory import remap_tensors
from .run.options import Options

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
    options: Options | None = None,
    *,
    to: str | None = None,
    force: bool = False,
    max_shard_size: int | str | None = None,
    progress: Callable[[int, int], None] | None = None,
    reverse: bool = False,
    lossy: bool = False,
    prefer: Mapping[int | None, int] | None = None,
    **overrides: Any,
) -> Report:
    """Convert `checkpoint` with `spec` into `output`; atomic, never touching the input.
    `options` (`Options`: target, select, epoch, strict, fit, drop, strict_rules, params,
    config), or the same names as keywords, say how the spec meets the checkpoint.
    `progress(done, total)` hears tensor bytes written so far and in all; `reverse` runs the spec's
    derived inverse (see `invert`); `lossy` lets it undo lossy casts and drops; `prefer` chooses
    the fallback alternatives it writes back (see `invert_spec`).

    `checkpoint` may be a sharded checkpoint (an index, a model directory, a glob or a list of
    shards). With `max_shard_size` ("5GB", bytes), `output` is a directory of HF-style shards
    plus an index, `to` safetensors (the default) or torch."""
    spec = as_spec(spec)
    opts = Options.of(options, **overrides)
    inverse = None
    if reverse:
        from .tools.invert import invert_spec

        inverse = invert_spec(spec, params=opts.params, config=opts.config, lossy=lossy, prefer=prefer,
                              matched=_forward_alternatives(spec, checkpoint))
    output = Path(output)
    fmt = sink_format(output, to or ("safetensors" if max_shard_size is not None else None))
    if output.exists() and not force:
        raise UsageError(f"{output} exists; use --force to overwrite it")
    _refuse_overwrite(output, _paths(checkpoint), max_shard_size is not None)
    source = open_for(inverse.spec if inverse else spec, checkpoint, opts.select, opts.epoch)
    try:
        _refuse_overwrite(output, source.shards, max_shard_size is not None)
        target = _target(opts.target)
        if inverse:
            plan = inverse.compile(source.infos(), **opts.compiling(target, inverse=True))
            values = inverse.params
        else:
            plan = compile_spec(spec, source.infos(), **opts.compiling(target))
            values = {b.name: b.value for b in plan.params}
        record = Provenance(spec_file=spec.file, includes=spec.includes, source=source.path, params=values,
                            direction="reverse" if reverse else "forward",
                            select=source.prefix if isinstance(source, Selected) else None,
                            alternatives=None if reverse else alternatives_used(spec, plan))
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




def _forward_alternatives(spec: Spec, checkpoint) -> dict[int, int]:
    """The fallback alternatives a forward conversion by this very spec matched, from the
    provenance record of the file being converted back (none: no record, another spec, or
    one that changed since)."""
    from .errors import CheckpointError
    from .formats import provenance

    if isinstance(checkpoint, (list, tuple)) or not spec.file or not Path(spec.file).is_file():
        return {}
    try:
        record = provenance.read(checkpoint)
    except (CheckpointError, OSError):
        return {}  # reading the checkpoint itself reports what is wrong with it
    if not record or record.get("direction") != "forward" or \
            record.get("spec_sha256") != provenance.sha256_path(Path(spec.file)):
        return {}
    alts = record.get("alternatives")
    if not isinstance(alts, dict):
        return {}
    return {int(k): v for k, v in alts.items() if isinstance(k, str) and k.isdigit() and type(v) is int and v > 0}


def plan_for(spec: Spec | str | Path, checkpoint: str | Path, options: Options | None = None,
             **overrides: Any) -> Plan:
    """Compile `spec` against a checkpoint's key list without converting anything; `options`
    (or the same names as keywords) as for `apply`."""
    spec = as_spec(spec)
    opts = Options.of(options, **overrides)
    return compile_spec(spec, _infos(open_for(spec, checkpoint, opts.select, opts.epoch)),
                        **opts.compiling(_target(opts.target)))


def inverse_plan_for(spec: Spec | str | Path, checkpoint: str | Path, options: Options | None = None, *,
                     lossy: bool = False, prefer: Mapping[int | None, int] | None = None,
                     **overrides: Any) -> tuple[Inversion, Plan]:
    """The derived inverse of `spec` (from the spec alone, as apply --reverse runs it) and its
    plan against a checkpoint of the spec's target layout: (Inversion, Plan)."""
    from .tools.invert import invert_spec

    opts = Options.of(options, **overrides)
    spec = as_spec(spec)
    inverse = invert_spec(spec, params=opts.params, config=opts.config, lossy=lossy, prefer=prefer,
                          matched=_forward_alternatives(spec, checkpoint))
    infos = _infos(open_for(inverse.spec, checkpoint, opts.select, opts.epoch))
    return inverse, inverse.compile(infos, **opts.compiling(_target(opts.target), inverse=True))


def _infos(source) -> dict[str, TensorInfo]:
    """A source's key list; the source is closed."""
    try:
        return dict(source.infos())
    finally:
        source.close()


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


def remap(spec: Spec | str | Path, state_dict: Mapping[str, Any], options: Options | None = None,
          **params: Any) -> dict[str, Any]:
    """Convert an in-memory state dict (torch tensors or numpy arrays) with `spec`.

    Returns a new dict in plan order; renamed tensors are the objects given, others keep the
    tensor type given. A spec header `select model` takes the keys under `model.`.
    Every key must be matched by a rule, as `mapspec apply` requires. Keyword arguments are
    the spec's parameters; `options` gives params, config and select as for `apply`."""
    spec = as_spec(spec)
    opts = options or Options()
    values = {**(opts.params or {}), **params}
    select = opts.select if opts.select is not None else spec.header.select
    return remap_tensors(spec, state_dict, select, values or None, opts.config)[1]
