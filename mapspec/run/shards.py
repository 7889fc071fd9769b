"""A conversion split by output file: the unit of work for outputs on object storage and for
Ray workers.

`split` cuts a compiled plan into `ShardTask`s, one per output file, exactly as the sharded
sink assigns tensors to shards (so the same files, the same names, the same bytes); a single
output file is one task. `write_shard` runs one task from an open source into a folder with
the format's own single-file sink, told the same copy offsets the sharded sink tells it:
each shard comes out byte-identical to the one a single-process run writes.

`apply_remote` is the single-process run for an output on object storage: tasks in order,
each shard written to a local spool folder, uploaded (invisible until complete) while the
next shard converts, its spool file removed once sent; then everything is completed and the
index written last (`objects.ObjectOutput`). Local disk holds at most two shards."""

from __future__ import annotations

import dataclasses
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping

from ..core.background import Job, Worker
from ..formats import by_name
from ..formats.atomic import guarded_writes
from ..formats.sharded import assign_shards, index_blob, parse_size, shard_names
from ..compile.plan import Plan


@dataclass(frozen=True)
class ShardTask:
    name: str  # the output file's name (a shard's, or the single output's own)
    steps: tuple[int, ...]  # indices into the plan's steps, in plan order
    nbytes: int  # tensor bytes it writes


def split(plan: Plan, fmt: str, max_shard_size: int | str | None, output_name: str) -> list[ShardTask]:
    outputs = plan.outputs()
    if max_shard_size is None:
        return [ShardTask(output_name, tuple(range(len(plan.steps))), sum(i.nbytes for i in outputs.values()))]
    groups = assign_shards(outputs, parse_size(max_shard_size))
    names = shard_names(fmt, len(groups))
    where = {s.output: i for i, s in enumerate(plan.steps)}
    return [ShardTask(name, tuple(where[k] for k in group), sum(outputs[k].nbytes for k in group))
            for name, group in zip(names, groups)]


def index_of(plan: Plan, fmt: str, tasks: list[ShardTask]) -> tuple[str, bytes] | None:
    """The shard index a sharded output ends with (None for one file), as the sharded sink writes it."""
    if len(tasks) < 2:
        return None
    weight_map = {plan.steps[i].output: t.name for t in tasks for i in t.steps}
    total = sum(t.nbytes for t in tasks)
    return by_name(fmt).hf_layout[2], index_blob(weight_map, total)


def sub_plan(plan: Plan, task: ShardTask) -> Plan:
    return dataclasses.replace(plan, steps=tuple(plan.steps[i] for i in task.steps))


def write_shard(plan: Plan, task: ShardTask, source, fmt: str, record, folder: Path,
                progress: Callable[[int], None] | None = None) -> Path:
    """Convert one task into `folder / task.name`, atomically; returns that path."""
    from ..core.progress import Progress
    from .executor import convert_into, copied_from

    part = sub_plan(plan, task)
    # Tasks report the bytes of their own shard so far; a Progress counts them as sinks write.
    meter = Progress(task.nbytes, lambda done, total: progress(done)) if progress else None
    path = Path(folder) / task.name
    with guarded_writes(replace=True):  # a retried task replaces what an earlier attempt left
        convert_into(lambda: by_name(fmt).open_sink(path, part.outputs(), record, copied_from(part, source)),
                     part, source, meter)
    return path


def apply_remote(plan: Plan, source, output, fmt: str, record, max_shard_size,
                 progress: Callable[[int], None] | None = None, files: Mapping | None = None) -> int:
    """Convert into `output` (a `remote.URLPath`) in this process; returns the bytes sent.
    `files`: the model directory's other files (`carried_files`), written before the index.
    Must run inside `guarded_writes`, which aborts every upload on failure or signal."""
    from ..formats.objects import ObjectOutput

    tasks = split(plan, fmt, max_shard_size, output.name)
    directory = max_shard_size is not None
    out = ObjectOutput(output, directory)
    uploader = Worker("mapspec-upload")
    sending: Job | None = None
    done = 0
    sent = 0
    with tempfile.TemporaryDirectory(prefix="mapspec-spool-") as spool:
        try:
            for task in tasks:
                base = done
                path = write_shard(plan, task, source, fmt, record, Path(spool),
                                   (lambda n, base=base: progress(base + n)) if progress else None)
                done += task.nbytes
                if sending is not None:  # one upload in flight: two shards on local disk at most
                    sent += sending.result()
                sending = uploader.submit(Job(lambda job, task=task, path=path: _send(out, task.name, path)))
            if sending is not None:
                sent += sending.result()
                sending = None
            out.commit(index_of(plan, fmt, tasks), extra=files)
        except BaseException:
            if sending is not None:
                uploader.cancel([sending])
            out.abort()
            raise
    return sent


def _send(out, name: str, path: Path) -> int:
    """Upload a finished file and its provenance sidecar if its format writes one (`.params`,
    `.wts`), then free the spool."""
    from ..formats.provenance import sidecar

    sent = 0
    for file in (path, sidecar(path)):
        if file.is_file():
            sent += out.stage(file.name if file != path else name, file).size
            file.unlink()
    return sent
