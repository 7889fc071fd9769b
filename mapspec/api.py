"""The public facade: convert (`apply`), compile (`plan_for`, `inverse_plan_for`) and remap in
memory (`remap`). It joins the layers below (lang, compile, formats, run, tools); the CLI and
`mapspec/__init__.py` call only this."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping

from .compile.plan import Plan, alternatives_used, compile_spec
from .core.tensorinfo import TensorInfo
from .core import paths
from .core.progress import Progress
from .core.quoting import shown_path
from .errors import CheckpointError, UsageError
from .formats import Selected, by_name, open_sink, sink_format
from .formats.atomic import guarded_writes
from .formats.model_dir import carried_files, model_dir_of
from .formats.provenance import Provenance
from .formats.reading import location
from .lang.parser import as_spec
from .lang.rules import Spec
from .run.executor import (named_output_errors, check_space, convert_into, copied_from, disk_size, open_for,
                           rank_values, rendered_entries, written_files)
from .run.memory import remap_tensors
from .run.options import Options
from .tools.hf_gguf import default_config

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
    concurrency: int | None = None,
    ray: str | None = None,
    shards_progress: Callable[[int, int], None] | None = None,
    kv: Mapping[str, object] | None = None,
    hash: bool = True,
    **overrides: Any,
) -> Report:
    """Convert `checkpoint` with `spec` into `output`; atomic, never touching the input.
    `hash=False` records the source by sizes and modification times, not sha256.
    `options` (`Options`: target, select, epoch, strict, fit, drop, strict_rules, params,
    config), or the same names as keywords, say how the spec meets the checkpoint.
    `progress(done, total)` hears tensor bytes written so far (as the sinks write them: the
    shard lanes' copies when done, not when queued) and in all, from any thread; `reverse` runs the spec's
    derived inverse (see `invert`); `lossy` lets it undo lossy casts and drops; `prefer` chooses
    the fallback alternatives it writes back (see `invert_spec`). `kv` is typed file metadata
    for formats that hold it (GGUF: {key: gguf.Value or plain value}); it is written over the
    metadata a GGUF source carries into a GGUF output.

    `checkpoint` may be a sharded checkpoint (an index, a model directory, a glob or a list of
    shards). With `max_shard_size` ("5GB", bytes), `output` is a directory of HF-style shards
    plus an index, `to` safetensors (the default) or torch, or of GGUF split parts when it is
    named *.gguf (or `to` is gguf).

    `checkpoint` and `output` may be URLs (s3://, gs://, hf://, https://, memory://...: see
    `formats.remote`); `concurrency` bounds the range requests in flight per transfer. With
    `ray` (a cluster address, or "auto": join the local one or start one) the plan runs as
    one Ray task per output shard (`run.cluster`); `shards_progress(done, total)` hears
    finished shards there. `kv` adds or overrides file-level metadata (GGUF)."""
    spec = as_spec(spec)
    opts = Options.of(options, **overrides)
    inverse = None
    model_config = None  # with reverse of a spec stating file metadata: the config.json rebuilt
    if not reverse:
        opts = replace(opts, config=default_config(spec, checkpoint, opts.config))
    if reverse:
        from .tools.invert import invert_spec

        if spec.meta:  # parameters the forward metadata recorded (GGUF -> HF: config.json comes back)
            opts = replace(opts, params={**_params_from_file(spec, checkpoint), **(opts.params or {})})
        inverse = invert_spec(spec, params=opts.params, config=opts.config, lossy=lossy, prefer=prefer,
                              matched=_forward_alternatives(spec, checkpoint))
    output = location(output)
    remote_out = not isinstance(output, Path)
    if concurrency is not None or remote_out or _any_url(checkpoint):
        from .formats import fetching

        fetching.configure(concurrency)
    if not remote_out:
        output = paths.writable(output, "output", directory=None)  # a loop, a NUL byte...: before its suffix is read
    runs = inverse.spec if inverse else spec
    ranked_out = runs.header.ranks_side == "target"
    if runs.header.ranks_side is not None and (ray is not None or remote_out or _any_url(checkpoint)):
        raise UsageError("a spec that reads or writes rank files runs on local files in one process "
                         "(no URLs, no --ray)")
    if inverse is not None and spec.meta and not output.suffix and to is None and max_shard_size is None:
        from .tools.hf_gguf import config_from_params

        model_config = config_from_params(spec, inverse.params)
        max_shard_size = 1 << 62  # a model directory: one model.safetensors beside config.json
    if (not ranked_out and max_shard_size is None and to is None and not output.suffix
            and (remote_out or not output.is_file())):
        max_shard_size = DEFAULT_SHARD_SIZE  # `-o OUT_DIR`: a model directory, as save_pretrained writes one
    # --max-shard-size writes a directory: safetensors shards, or GGUF split parts when it is named *.gguf
    split_gguf = max_shard_size is not None and output.suffix.lower() == ".gguf"
    fmt = "ranks" if ranked_out else sink_format(output, to or ("safetensors" if max_shard_size is not None
                                                                   and not split_gguf else None))
    if remote_out:
        from .formats.objects import check_writable

        if fmt == "oneflow":
            raise UsageError(f"{output}: OneFlow output (a directory format) cannot be written to object storage")
        check_writable(output, force)
    else:
        paths.writable(output, "output",
                       directory=max_shard_size is not None or ranked_out or by_name(fmt).directory)
        if os.path.lexists(output) and not force:
            raise UsageError(f"{shown_path(output)} exists; use --force to overwrite it")
    if ray is not None and not remote_out:
        output = output.absolute()  # the workers' working directory is not ours
    values = dict(inverse.params) if inverse else rank_values(spec, opts.params, opts.config)
    _refuse_overwrite(output, _paths(checkpoint), max_shard_size is not None or ranked_out)
    source = open_for(runs, checkpoint, opts.select, opts.epoch, values)
    try:
        _refuse_overwrite(output, source.shards, max_shard_size is not None)
        target = _target(opts.target)
        if inverse:
            plan = inverse.compile(source.infos(), **opts.compiling(target, inverse=True))
            values = inverse.params
        else:
            plan = compile_spec(spec, source.infos(), **opts.compiling(target))
            values = {b.name: b.value for b in plan.params}
        if plan.meta:
            kv = {**_file_metadata(plan, fmt, checkpoint, opts.config), **(kv or {})}
        record = Provenance(spec_file=spec.file, includes=spec.includes, source=source.path, params=values,
                            direction="reverse" if reverse else "forward",
                            select=source.prefix if isinstance(source, Selected) else None,
                            shards=source.shards, hash=hash,
                            alternatives=None if reverse else alternatives_used(spec, plan))
        n = sum(s.info.nbytes for s in plan.steps)
        if not remote_out:
            check_space(output, n)
        tick = (lambda done: progress(done, n)) if progress else None
        selected = source.prefix if source.auto else None
        # A model directory in, a directory out: its other files go along, config.json as the plan says.
        # (Not rank files: their folder's other files, params.json, describe the ranked layout.)
        model_dir = (model_dir_of(checkpoint) if max_shard_size is not None and runs.header.ranks_side is None
                     else None)
        files = carried_files(model_dir, plan.config_patch()) if model_dir else None
        # Everything that creates, fills or renames the output runs inside the guard: a failure
        # anywhere (even while the sink is being built) or SIGTERM/SIGINT removes its temp files.
        with guarded_writes(replace=force), named_output_errors(output):
            if ray is not None:
                from .formats.fetching import concurrency as width
                from .run.cluster import apply_on_ray

                prefix = source.prefix if isinstance(source, Selected) else ""
                apply_on_ray(plan, _for_workers(checkpoint), prefix, opts.epoch, output, fmt, record.resolved(),
                             max_shard_size, ray, tick, shards_progress, width(), files=files)
                return Report(plan, output, fmt, _size(output), selected, inverse)
            if remote_out:
                from .run.shards import apply_remote

                sent = apply_remote(plan, source, output, fmt, record, max_shard_size, tick, files=files)
                return Report(plan, output, fmt, sent, selected, inverse)
            if ranked_out:  # `ranks target`: one file per rank, and the spec's `write` files
                from .formats.ranked import RankedSink, layout

                def make_sink():
                    return RankedSink(output, layout(runs.header.ranks, values), plan.outputs(), record,
                                      files=written_files(spec, values) if not inverse else {},
                                      under=runs.header.ranks_under,
                                      extras=rendered_entries(runs, runs.header.ranks_entries, values))
            else:
                if model_config is not None:  # the reverse of a GGUF: a model directory with its config.json
                    text = json.dumps(model_config, indent=2, sort_keys=True) + "\n"
                    files = {**(files or {}), "config.json": text.encode("utf-8")}
                metadata = {**carried_kv(source, plan), **(kv or {})}

                def make_sink():
                    return open_sink(output, fmt, plan.outputs(), record, max_shard_size=max_shard_size,
                                     copied_from=copied_from(plan, source), files=files, kv=metadata)
            convert_into(make_sink, plan, source, Progress(n, progress) if progress else None)
    finally:
        source.close()
    return Report(plan, output, fmt, disk_size(output), selected, inverse)


def _any_url(checkpoint) -> bool:
    from .formats.remote import is_url

    return any(is_url(str(p)) for p in (checkpoint if isinstance(checkpoint, (list, tuple)) else [checkpoint]))


def _for_workers(checkpoint):
    """The checkpoint argument as Ray workers must see it: URLs as they are, local paths absolute."""
    def one(p):
        return str(p) if _any_url(p) else str(Path(p).absolute())

    return [one(p) for p in checkpoint] if isinstance(checkpoint, (list, tuple)) else one(checkpoint)


def _size(output) -> int:
    """Bytes of a finished output, local or on a store (for the report)."""
    if isinstance(output, Path):
        return disk_size(output)
    try:
        if output.is_dir():
            return sum(int(i.get("size") or 0) for i in output.fs.find(output.path, detail=True).values())
        return int(output.stat().st_size)
    except Exception:  # noqa: BLE001 - a size for the report only
        return 0




def carried_kv(source, plan: Plan) -> dict:
    """A GGUF source's metadata, to be carried into a GGUF output; without its
    `general.file_type` when the plan changes tensor types (the type it names would be stale)."""
    kv = dict(source.kv or {})
    if any(s.info.dtype != i.dtype for s in plan.steps for i in s.input_infos):
        kv.pop("general.file_type", None)
    return kv


DEFAULT_SHARD_SIZE = "5GB"  # an `-o` without a suffix: safetensors shards of at most this, + index


def _forward_alternatives(spec: Spec, checkpoint) -> dict[int, int]:
    """The fallback alternatives a forward conversion by this very spec matched, from the
    provenance record of the file being converted back (none: no record, another spec, or
    one that changed since)."""
    from .errors import CheckpointError
    from .formats import provenance

    if isinstance(checkpoint, (list, tuple)) or _any_url(checkpoint) or not spec.file or not Path(spec.file).is_file():
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
    return {int(k): v for k, v in alts.items() if isinstance(k, str) and k.isdigit() and len(k) < 10 and type(v) is int and v > 0}


def plan_for(spec: Spec | str | Path, checkpoint: str | Path, options: Options | None = None,
             **overrides: Any) -> Plan:
    """Compile `spec` against a checkpoint's key list without converting anything; `options`
    (or the same names as keywords) as for `apply`."""
    spec = as_spec(spec)
    opts = Options.of(options, **overrides)
    opts = replace(opts, config=default_config(spec, checkpoint, opts.config))
    return compile_spec(spec, _infos(open_for(spec, checkpoint, opts.select, opts.epoch,
                                              rank_values(spec, opts.params, opts.config))),
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
    infos = _infos(open_for(inverse.spec, checkpoint, opts.select, opts.epoch, dict(inverse.params)))
    return inverse, inverse.compile(infos, **opts.compiling(_target(opts.target), inverse=True))


def _infos(source) -> dict[str, TensorInfo]:
    """A source's key list; the source is closed."""
    try:
        return dict(source.infos())
    finally:
        source.close()


def _refuse_overwrite(output: Path, inputs, directory: bool) -> None:
    out = location(output)
    out = paths.resolve(out, "output") if isinstance(out, Path) else out.resolve()
    for p in inputs:
        p = location(p)
        p = paths.resolve(p, "checkpoint", CheckpointError) if isinstance(p, Path) else p.resolve()
        if isinstance(p, Path) != isinstance(out, Path):
            continue
        if out == p or (directory and out in p.parents):
            raise UsageError("the output would overwrite the input checkpoint")


def _file_metadata(plan, fmt: str, checkpoint, config) -> dict:
    """The file metadata a plan states, for an output format that holds it."""
    from .formats import by_name
    from .tools.hf_gguf import file_metadata, model_dir_of

    if not by_name(fmt).takes_kv:
        raise UsageError(f"the spec states file metadata (meta ...), which a {fmt} file cannot hold; write gguf")
    return file_metadata(plan, model_dir_of(checkpoint, config))


def _params_from_file(spec: Spec, checkpoint) -> dict:
    """With reverse: parameter values a GGUF checkpoint's metadata holds (see hf_gguf)."""
    from .tools.hf_gguf import params_from_metadata

    path = Path(checkpoint[0] if isinstance(checkpoint, (list, tuple)) else checkpoint)
    if path.suffix.lower() != ".gguf" or not path.is_file():
        return {}
    from .formats import open_source

    source = open_source(path)
    try:
        return params_from_metadata(spec, source.kv or {}, tuple(source.infos()))
    finally:
        source.close()


def _paths(checkpoint) -> list[Path]:
    return [location(p) for p in checkpoint] if isinstance(checkpoint, (list, tuple)) else [location(checkpoint)]


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
