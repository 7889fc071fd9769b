"""Run a plan: read one tensor at a time from a source, apply the step's actions, hand the
result to a sink; on any failure the sink removes what it wrote. The facade that compiles a
spec and opens the sink around this is `mapspec.api`."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

from ..core.lazy import numpy as np

from ..ops import actions as act
from ..core import dtypes
from ..core.background import Job, Worker
from ..compile.params import Config
from ..core.progress import Progress, metered
from ..errors import ConversionError, MapspecError, OutputError, UsageError
from ..formats import open_source
from ..formats.protocol import Extent
from ..compile.plan import READ_AHEAD_BYTES, Plan, Step
from ..lang.rules import Spec
from .rows import kept_rows, parting, run_parts, run_sliced, slice_job, slicing
from .siblings import run_pieces, siblings

read_worker = Worker("mapspec-read-ahead")


def disk_size(path: Path) -> int:
    """Bytes a written output takes on disk (a directory output: all its files)."""
    if path.is_dir():
        return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    return path.stat().st_size


def run_step(step: Step, arrays: list[np.ndarray], keep: Sequence[tuple[int, int, Step]] = (),
             kept: dict | None = None) -> np.ndarray:
    """One step's actions on its input arrays (bf16 as bits); the planned output array.
    `keep` ((piece, _, sibling step)...): other pieces of the step's split, put in `kept`."""
    if keep:
        pieces = run_pieces(step, arrays)
        for piece, _, sib in keep:
            # a copy: a piece may be a view of the inputs (unstack), which would keep them whole
            kept[sib.output] = pieces[piece].copy()
        out = pieces[step.actions[-1].params["index"]]
    else:
        (out,) = act.run_all(step.actions, arrays)
    if tuple(out.shape) != dtypes.stored_shape(step.info.shape, step.info.dtype):  # pragma: no cover
        raise RuntimeError(f"{step.output}: planned {step.info.shape}, produced {out.shape}")
    return out


def _keeping(steps: Sequence[Step], sliced: dict) -> dict[int, list[tuple[int, int, Step]]]:
    """step index -> (piece, output rows per slice block, sibling step) for each small piece
    of its split that it computes for a later step; a sliced step keeps a piece only where
    the piece's blocks line up with its slices."""
    out: dict[int, list[tuple[int, int, Step]]] = {}
    for i, sibs in siblings(steps, skip={j for j, s in enumerate(steps) if streamed(s)}).items():
        for sib in sibs:
            later = steps[sib.step]
            unit = kept_rows(steps[i], later, sliced[i]) if i in sliced else 0
            if unit is not None:
                out.setdefault(i, []).append((sib.piece, unit, later))
    return out


def source_extent(step: Step, source) -> Extent | None:
    """Where `step`'s one input lies in the source file, if the step passes it through
    unchanged (no actions, or only ones that move no byte: `act.passes_through`): such a
    step is offered to the sink as a file-to-file copy."""
    if len(step.inputs) != 1 or (step.actions and not act.passes_through(step.input_infos, step.actions)):
        return None
    return source.extent(step.inputs[0])


def copied_from(plan: Plan, source) -> dict[str, int]:
    """output -> source byte offset, for the steps `execute` offers the sink as file-to-file
    copies (the sink may place them where the kernel copies fastest)."""
    return {step.output: e.offset for step in plan.steps if (e := source_extent(step, source)) is not None}


def execute(plan: Plan, source, sink, progress: Progress | None = None) -> int:
    """Write every step of `plan` to `sink`; returns the tensor bytes written. `progress`
    hears the bytes as the sink writes them (core/progress.py: a sink that writes later,
    on worker threads, reports them itself when they are written, not when queued).

    A tensor passing through unchanged is copied file-to-file by the kernel; the others pass
    through numpy. While step i runs, the next step that reads anything is brought in: a
    range to be copied is announced to the kernel (WILLNEED: its disk reads start now),
    arrays are read by a worker thread (preadv: disk waits and page copies on the second
    core); for a step that runs in slices (`rows`), its first slice is read and computed
    there too. So at most one extra step's inputs, or a few slices, are held
    (`Plan.peak_step` counts a step's). Every read of the source happens on that one
    thread or, with none in flight, on this one: sources need not be thread-safe."""
    total = 0
    sink = metered(sink, progress)
    steps = plan.steps
    # Steps that run a slice of rows at a time (`rows`), computed ahead while earlier ones are written.
    sliced = {i: cut for i, step in enumerate(steps) if (cut := slicing(step, source, sink)) is not None}
    # Joins along rows (row-split ranks) write each input's part as they read it.
    parted = {i: cut for i, step in enumerate(steps)
              if i not in sliced and (cut := parting(step, source, sink)) is not None}
    # Small pieces of a split (a quantized weight's scales) computed with the first piece and
    # kept for their own steps, which then read nothing (siblings.py).
    keep, kept = _keeping(steps, sliced), {}
    given = {sib.output for pieces in keep.values() for _, _, sib in pieces}  # steps that read nothing
    # Steps that split one input read it several times: release it after its last use.
    last_use = {k: i for i, step in enumerate(steps) for k in step.inputs}
    copies = True  # until the sink declines a copy, it takes every one offered

    def copyable(step: Step) -> Extent | None:
        return source_extent(step, source) if copies else None

    def upcoming(j: int) -> tuple[int, Extent | None, Job | None]:
        """The next step from j that reads anything (steps whose output was kept read
        nothing), and its extent if it is to be copied, or the job reading its arrays (a
        sliced step: its first slice, read and computed), if started. A step that could also
        run in slices (its actions move no byte, so they work row by row) is copied: slicing
        is for the sink that declines copies."""
        while j < len(steps) and steps[j].output in given:
            j += 1
        if j == len(steps) or streamed(steps[j]) or j in parted:  # these read bit by bit
            return j, None, None
        extent = copyable(steps[j])
        if extent is not None:
            extent.file.willneed(extent.offset, extent.nbytes)
            return j, extent, None
        if j in sliced:
            return j, None, slice_job(steps[j], sliced[j], source, 0, j in keep, read_worker)
        if sum(i.nbytes for i in steps[j].input_infos) < READ_AHEAD_BYTES:
            return j, None, None
        keys = steps[j].inputs
        return j, None, read_worker.submit(Job(lambda job: [source.read(k) for k in keys]))

    at, extent, ahead = 0, (copyable(steps[0]) if steps else None), None  # brought in for step `at`
    try:
        for i, step in enumerate(steps):
            try:
                copied = False
                if step.output in given:  # computed with an earlier step; what is brought in is for a later one
                    out = kept.pop(step.output)
                elif extent is not None and sink.write_region(step.output, extent):
                    at, extent, ahead = upcoming(i + 1)
                    out, copied = None, True
                else:  # here at == i: only steps that read nothing are skipped by `upcoming`
                    if extent is not None:  # the sink declined the copy: it will decline every one
                        copies = False
                    if i in sliced:
                        first, ahead = ahead, None  # run_sliced owns it now

                        def follow(j: int = i + 1) -> None:  # while its last slices are computed and written
                            nonlocal at, extent, ahead
                            at, extent, ahead = upcoming(j)
                        run_sliced(step, sliced[i], source, sink, read_worker, keep.get(i, ()), kept, first, follow)
                        out = None
                    elif i in parted:
                        run_parts(step, parted[i], source, sink, read_worker)
                        at, extent, ahead = upcoming(i + 1)
                        out = None
                    elif streamed(step):
                        at, extent, ahead = upcoming(i + 1)
                        out = merge_streaming(step, source)
                    else:
                        arrays = ahead.result() if ahead is not None else [source.read(k) for k in step.inputs]
                        at, extent, ahead = upcoming(i + 1)
                        try:
                            out = run_step(step, arrays, keep.get(i, ()), kept)
                        except act.ReplicaMismatch as exc:
                            raise _replica_error(step, exc.index, source) from None
                        del arrays
                if out is not None:
                    sink.write(step.output, out)
                del out
                if not copied:  # a copy may still be queued on a lane: its pages are wanted
                    for k in step.inputs:
                        if last_use[k] == i:
                            source.release(k)
                total += step.info.nbytes
            except ConversionError as exc:  # raised by an action on this step's values: say which
                raise about(exc, step) from None
    finally:
        if ahead is not None:  # failed: the read in flight ends before the source is closed
            read_worker.cancel([ahead])
    return total


def convert_into(make_sink: Callable[[], object], plan: Plan, source,
                 progress: Progress | None = None) -> None:
    """Open a sink, `execute` the plan into it and commit it; on any failure (the sink's own
    construction included) the sink removes what it wrote."""
    sink = None
    try:
        sink = make_sink()
        execute(plan, source, sink, progress)
        sink.commit()
    except BaseException:
        if sink is not None:
            sink.abort()
        raise
def streamed(step: Step) -> bool:
    """A step that starts by concatenating all its inputs: its output buffer is allocated once
    and each input read into its slice and released, so a merge across rank files holds the
    merged tensor and one input, never every input at once."""
    return (len(step.inputs) > 1 and bool(step.actions) and step.actions[0].name == "concat"
            and step.actions[0].groups is None)


def merge_streaming(step: Step, source) -> np.ndarray:
    """`step`'s first action, concat over every input, written input by input into one buffer;
    then the rest of its actions."""
    first = step.actions[0]
    dim = first.params["dim"]
    out, start = None, 0
    for key in step.inputs:
        array = source.read(key)
        if out is None:
            out = np.empty(first.shapes[0], dtype=array.dtype)
        index = [slice(None)] * out.ndim
        index[dim] = slice(start, start + array.shape[dim])
        out[tuple(index)] = array
        start += array.shape[dim]
        del array
        source.release(key)
    (result,) = act.run_all(step.actions[1:], [out])
    return result


def about(exc: ConversionError, step: Step) -> ConversionError:
    """An action's refusal of some values (a cast past the range, NaN into a block quantize),
    located: the tensor it was making and the rule that made it."""
    if exc.span is not None or exc.message.startswith(f"{step.output}: "):
        return exc
    return ConversionError(f"{step.output}: {exc.message}", exc.details, step.rule)


def _replica_error(step: Step, index: int, source) -> ConversionError:
    """A replicated tensor whose copies differ: both named, as the user finds them."""
    where = getattr(source, "where", None) or (lambda k: f"'{k}'")
    if step.actions and step.actions[0].name == "replicated" and index < len(step.inputs):
        a, b = step.inputs[0], step.inputs[index]
        return ConversionError(f"{step.output}: the replicated copies differ: {where(a)} and {where(b)} "
                               "are not equal (ranks of different checkpoints?)")
    return ConversionError(f"{step.output}: the replicated copies of its inputs differ")


def rank_values(spec: Spec, params=None, config: Config = None) -> dict:
    """The parameter values a spec's `ranks` and `write` statements use."""
    from ..compile.params import bind

    if not spec.header.ranks and not spec.writes:
        return {}
    return {b.name: b.value for b in bind(spec, params, config)[1]}


def _render(spec: Spec, text: str, where, values) -> str:
    """`{name}` in a `write` or `ranks ... under` entry: the parameter's value."""
    import re

    def put(m):
        if m[1] not in values:
            raise UsageError(f"{Path(spec.file).name}:{where.line}: '{m[1]}' is not a parameter")
        return str(values[m[1]])
    return re.sub(r"\{([A-Za-z_][A-Za-z0-9_]*)\}", put, text)


def rendered_entries(spec: Spec, entries, values) -> dict:
    """Entries `key = text` as a JSON object: each text rendered, then read as JSON (a number)
    where it is JSON, else kept as text."""
    import json

    obj = {}
    for e in entries:
        text = _render(spec, e.value, e.span, values)
        try:
            obj[e.key] = json.loads(text)
        except ValueError:
            obj[e.key] = text
    return obj


def written_files(spec: Spec, values) -> dict[str, str]:
    """The files of the spec's `write` statements, rendered with the parameters' values."""
    import json

    out = {}
    for w in spec.writes:
        if w.text is not None:
            out[w.path] = _render(spec, w.text, w.span, values)
        else:
            out[w.path] = json.dumps(rendered_entries(spec, w.entries, values), indent=2) + "\n"
    return out


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


class named_output_errors:
    """An OSError from writing says no file (`error: : No space left on device`): name the output."""

    def __init__(self, output: Path):
        self.output = output

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind, exc, tb) -> None:
        if isinstance(exc, OSError) and not isinstance(exc, MapspecError) and (
                not exc.filename or Path(str(exc.filename)).name.endswith(".part")):
            raise OutputError(f"{self.output}: cannot write: {exc.strerror or exc}") from None


def open_for(spec: Spec | None, checkpoint: str | Path, select: str | None, epoch: int | None, values=None,
             role: str = "checkpoint"):
    """The checkpoint's source, seen through --select or else the spec's own `select`; a spec
    whose source is rank files (`ranks source ...`) reads the rank files under `checkpoint`."""
    chosen = select or (spec.header.select if spec else None)
    if spec is not None and spec.header.ranks_side == "source":
        from ..formats.ranked import RankedSource, layout

        if isinstance(checkpoint, (list, tuple)):
            raise UsageError("a spec that reads rank files takes the directory holding them")
        return RankedSource(Path(checkpoint), layout(spec.header.ranks, values or {}),
                            spec.header.ranks_under or chosen)
    return open_source(checkpoint, select=chosen, epoch=epoch, role=role)
