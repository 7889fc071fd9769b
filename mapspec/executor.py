"""Run a plan: read one tensor at a time from a source, apply the step's actions, hand the
result to a sink; on any failure the sink removes what it wrote."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Mapping

from .lazy import numpy as np

from . import actions as act
from .background import Job, Worker
from .errors import MapspecError, OutputError, UsageError
from .formats import Selected, open_sink, open_source, sink_format
from .formats.base import Extent, guarded_writes
from .params import Config
from .parser import parse_spec
from .plan import READ_AHEAD_BYTES, Plan, Step, compile_spec
from .provenance import Provenance
from .tensorinfo import TensorInfo
from .rules import Spec

if TYPE_CHECKING:
    from .invert import Inversion

read_worker = Worker("mapspec-read-ahead")


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
        from .render import report_summary

        return report_summary(self)


def disk_size(path: Path) -> int:
    """Bytes a written output takes on disk (a directory output: all its files)."""
    if path.is_dir():
        return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    return path.stat().st_size


def run_step(step: Step, arrays: list[np.ndarray]) -> np.ndarray:
    """One step's actions on its input arrays (bf16 as bits); the planned output array."""
    (out,) = act.run_all(step.actions, arrays)
    if tuple(out.shape) != step.info.shape:  # pragma: no cover - the planner guarantees this
        raise RuntimeError(f"{step.output}: planned {step.info.shape}, produced {out.shape}")
    return out


def source_extent(step: Step, source) -> Extent | None:
    """Where `step`'s one input lies in the source file, if the step passes it through
    unchanged: such a step is offered to the sink as a file-to-file copy."""
    return source.extent(step.inputs[0]) if not step.actions and len(step.inputs) == 1 else None


def copied_from(plan: Plan, source) -> dict[str, int]:
    """output -> source byte offset, for the steps `execute` offers the sink as file-to-file
    copies (the sink may place them where the kernel copies fastest)."""
    return {step.output: e.offset for step in plan.steps if (e := source_extent(step, source)) is not None}


def execute(plan: Plan, source, sink, progress: Callable[[int], None] | None = None) -> int:
    """Write every step of `plan` to `sink`; returns the tensor bytes written. `progress`
    hears the running byte count after each tensor.

    A tensor passing through unchanged is copied file-to-file by the kernel; the others pass
    through numpy. While step i runs, step i + 1's inputs are brought in: a range to be
    copied is announced to the kernel (WILLNEED: its disk reads start now), arrays are read
    by a worker thread (preadv: disk waits and page copies on the second core). So at most
    one extra step's inputs are held (`Plan.peak_step` counts them). Every read of the
    source happens on that one thread or, with none in flight, on this one: sources need
    not be thread-safe."""
    total = 0
    steps = plan.steps
    # Steps that split one input read it several times: release it after its last use.
    last_use = {k: i for i, step in enumerate(steps) for k in step.inputs}
    copies = True  # until the sink declines a copy, it takes every one offered

    def copyable(step: Step) -> Extent | None:
        return source_extent(step, source) if copies else None

    def upcoming(j: int) -> tuple[Extent | None, Job | None]:
        """Step j's extent if it is to be copied, or the job reading its arrays, if started."""
        if j == len(steps):
            return None, None
        extent = copyable(steps[j])
        if extent is not None:
            extent.file.willneed(extent.offset, extent.nbytes)
            return extent, None
        if sum(i.nbytes for i in steps[j].input_infos) < READ_AHEAD_BYTES:
            return None, None
        keys = steps[j].inputs
        return None, read_worker.submit(Job(lambda job: [source.read(k) for k in keys]))

    extent, ahead = (copyable(steps[0]) if steps else None), None
    try:
        for i, step in enumerate(steps):
            if extent is not None and sink.write_region(step.output, extent):
                extent, ahead = upcoming(i + 1)
            else:
                if extent is not None:  # the sink declined the copy: it will decline every one
                    copies = False
                arrays = ahead.result() if ahead is not None else [source.read(k) for k in step.inputs]
                extent, ahead = upcoming(i + 1)
                out = run_step(step, arrays)
                del arrays
                sink.write(step.output, out)
                del out
                for k in step.inputs:
                    if last_use[k] == i:
                        source.release(k)
            total += step.info.nbytes
            if progress:
                progress(total)
    finally:
        if ahead is not None:  # failed: the read in flight ends before the source is closed
            read_worker.cancel([ahead])
    return total


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
        from .invert import invert_spec

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
        with guarded_writes(replace=force), _naming(output):
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


def check_space(output: Path, needed: int) -> None:
    """Refuse up front when the output's tensor bytes cannot fit: not on the file system
    holding it, nor under the process's file size limit. Format-independent, so no writer
    (torch's included) ever meets a full disk half-way through."""
    import shutil

    folder = output.parent
    while not folder.exists() and folder != folder.parent:  # the sink creates missing folders
        folder = folder.parent
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return  # the sink reports the folder's problem itself
    if needed > free:
        raise OutputError(f"{output}: not enough free space: the output needs at least {needed:,} bytes, "
                          f"{free:,} are free")
    try:
        import resource
    except ImportError:  # not on this platform
        return
    soft, _ = resource.getrlimit(resource.RLIMIT_FSIZE)
    if soft != resource.RLIM_INFINITY and needed > soft:
        raise OutputError(f"{output}: the output needs at least {needed:,} bytes, over this process's "
                          f"file size limit of {soft:,} bytes")


class _naming:
    """An OSError from writing says no file (`error: : No space left on device`): name the output."""

    def __init__(self, output: Path):
        self.output = output

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind, exc, tb) -> None:
        if isinstance(exc, OSError) and not isinstance(exc, MapspecError) and (
                not exc.filename or Path(str(exc.filename)).name.endswith(".part")):
            raise OutputError(f"{self.output}: cannot write: {exc.strerror or exc}") from None


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
    from .invert import invert_spec

    inverse = invert_spec(as_spec(spec), params=params, config=config, lossy=lossy, prefer=prefer)
    source = open_for(inverse.spec, checkpoint, select, epoch)
    try:
        infos = dict(source.infos())
    finally:
        source.close()
    if "target" in options:
        options["target"] = _target(options["target"])
    return inverse, inverse.compile(infos, **options)


def as_spec(spec: Spec | str | Path) -> Spec:
    return spec if isinstance(spec, Spec) else parse_spec(spec)


def open_for(spec: Spec | None, checkpoint: str | Path, select: str | None, epoch: int | None):
    """The checkpoint's source, seen through --select or else the spec's own `select`."""
    return open_source(checkpoint, select=select or (spec.header.select if spec else None), epoch=epoch)


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
    from .load import target_infos

    return target_infos(str(target) if isinstance(target, os.PathLike) else target)
