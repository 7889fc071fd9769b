"""Running a plan step a block of rows at a time, as a pipeline.

A step whose every action works row by row (`ActionDef.rows`: a cast, a ggml or FP8 block
quantize or dequantize, one expert of stacked experts at a time, a view or a transpose that
keeps the first dimension, so the rotary q/k permutes of GGUF, a join of column-split ranks)
need not hold its tensors whole: its inputs are read a slice of rows at a time
(`Source.read_rows`), the actions run on the slice, and the result goes to its place in the
output (`Sink.write_rows`). The values are the same, as each slice of the output depends on
its slice of the inputs alone.

Slices flow through two stages: the read-ahead thread reads the next slices (as many as
AHEAD_BYTES hold, at least one) and runs the actions on them, its reads and kernels split
with a helper thread (`core.background`), while this thread writes the one before. The
pipeline runs on across steps: the last slices of a step are written while the next step's
first slice (or its whole inputs, for a step that is not sliced) is brought in. Memory is
then those slices and the one being written, not the step's inputs and output: an 11008 x
4096 bf16 -> Q8_0 cast holds about 3 x 16 MiB, not 132 MiB; a step smaller than a slice is
one slice. Steps with a source or sink that cannot read or write part of a tensor, and tiny
steps, run whole.

A join of row-split ranks (concat along rows) is written the same way, one input at a time
(`parting`): each rank's part goes to its rows of the output as it is read."""

from __future__ import annotations

import math
from collections import deque
from typing import Callable, NamedTuple, Sequence

from ..core import dtypes
from ..core.lazy import numpy as np
from ..core.background import Job, Worker
from ..core.quoting import shown
from ..formats.protocol import row_bytes
from ..compile.plan import Step
from ..ops import actions as act
from .siblings import unpieced

SLICE_BYTES = 16 << 20  # inputs and output of one slice, about
AHEAD_BYTES = 2 * SLICE_BYTES  # slices read and computed ahead of the one being written: at most
# this many bytes of them, and at least one
MIN_BYTES = 1 << 20  # smaller steps run whole: handing them to the read-ahead thread costs more


class Slicing(NamedTuple):
    """How a step is cut: input i's rows come `units[i]` per block, the output's `out_unit`;
    `blocks` blocks in all, `per_slice` of them at a time, `depth` slices computed ahead;
    `nbytes`: one slice's inputs and output."""

    units: tuple[int, ...]
    out_unit: int
    blocks: int
    per_slice: int
    depth: int = 1
    nbytes: int = 0


def chained(actions, typed: list) -> act.Rows | None:
    """The rows of each input and of the result that make one block of `actions` run one
    after another on tensors `typed`, or None if some action needs whole tensors."""
    first = act.rows(actions[0], typed)
    if first is None or len(first.inputs) != len(typed):
        return None
    ins, out = first.inputs, first.output
    for before, pa in zip(actions, actions[1:]):
        later = act.rows(pa, before.outputs)
        if later is None or len(later.inputs) != 1:
            return None
        # chained blocks: as many rows in the middle as both actions' blocks fill whole
        middle = math.lcm(out, later.inputs[0])
        ins = tuple(u * (middle // out) for u in ins)
        out = later.output * (middle // later.inputs[0])
    return act.Rows(tuple(ins), out)


def block_rows(step: Step) -> act.Rows | None:
    """One block of `step`'s actions (`chained`), or None if it has none or one needs whole
    tensors."""
    if not step.actions:
        return None
    return chained(step.actions, [act.Typed(tuple(i.shape), i.dtype) for i in step.input_infos])


def cut(step: Step) -> Slicing | None:
    """How `step` would run slice by slice, from its actions and sizes alone (`slicing`
    adds what the source and sink must be able to do), or None if it runs whole."""
    if sum(i.nbytes for i in step.input_infos) + step.info.nbytes < MIN_BYTES:
        return None
    block = block_rows(step)
    if block is None:
        return None
    infos = [*step.input_infos, step.info]
    units = (*block.inputs, block.output)
    if any(row_bytes(i) is None or u <= 0 for i, u in zip(infos, units)):
        return None
    counts = {-(-i.shape[0] // u) for i, u in zip(infos, units)}
    if len(counts) != 1:
        return None
    blocks = counts.pop()
    per_block = sum(row_bytes(i) * u for i, u in zip(infos, units))
    per_slice = min(blocks, max(1, SLICE_BYTES // per_block))
    nbytes = per_slice * per_block
    return Slicing(block.inputs, block.output, blocks, per_slice, max(1, AHEAD_BYTES // nbytes), nbytes)


def slicing(step: Step, source, sink) -> Slicing | None:
    """How `step` runs slice by slice, or None if it runs whole."""
    how = cut(step)
    if how is None:
        return None
    takes_rows = getattr(sink, "takes_rows", None)  # sinks and sources outside formats/ may lack them
    if takes_rows is None or not takes_rows(step.output):
        return None
    if not hasattr(source, "read_rows") or any(source.extent(k) is None for k in step.inputs):
        return None
    return how


def held(step: Step) -> int | None:
    """The tensor bytes `step` holds at most when it runs in slices (`Plan.peak_step`, which
    takes the whole step's figure where that is less): the slices computed ahead, the one
    being written and one slice of intermediates; None if it runs whole."""
    how = cut(step)
    return None if how is None else (how.depth + 2) * how.nbytes


class Parts(NamedTuple):
    """A join along rows written input by input: input i, through the step's later actions,
    fills output rows from `starts[i]`."""

    starts: tuple[int, ...]


def parting(step: Step, source, sink) -> Parts | None:
    """How `step`, a concat along rows (the rows of rank files), writes each input's part as
    it is read, or None. Then the merged tensor is never held: a part and the next, read
    meanwhile. The later actions run on each part, so their blocks must not straddle two
    (a rotary permute of whole heads, each rank holding whole heads)."""
    if not step.actions or len(step.inputs) < 2 or sum(i.nbytes for i in step.input_infos) < MIN_BYTES:
        return None
    join = step.actions[0]
    if join.name != "concat" or join.groups is not None or join.params.get("dim") != 0:
        return None
    rest = step.actions[1:]
    block = chained(rest, join.outputs) if rest else act.Rows((1,), 1)
    if block is None:
        return None
    (unit,) = block.inputs
    starts, row = [], 0
    for info in step.input_infos:
        if not info.shape or info.shape[0] % unit:
            return None
        starts.append(row // unit * block.output)
        row += info.shape[0]
    takes_rows = getattr(sink, "takes_rows", None)
    if takes_rows is None or not takes_rows(step.output):
        return None
    return Parts(tuple(starts))


def run_parts(step: Step, cut: Parts, source, sink, worker: Worker) -> None:
    """`step` input by input into `sink`; the next input is read on `worker` meanwhile."""
    keys = step.inputs
    ahead = worker.submit(Job(lambda job: source.read(keys[0])))
    try:
        for n, start in enumerate(cut.starts):
            array = ahead.result()
            ahead = worker.submit(Job(lambda job, k=keys[n + 1]: source.read(k))) if n + 1 < len(keys) else None
            (out,) = act.run_all(step.actions[1:], [array]) if len(step.actions) > 1 else (array,)
            del array
            end = cut.starts[n + 1] if n + 1 < len(keys) else step.info.shape[0]
            _put(step, start, end - start, out, sink)
            del out
    finally:
        if ahead is not None:
            worker.cancel([ahead])


def _put(step: Step, first: int, rows: int, out, sink) -> None:
    """`out`, rows [first, first + rows) of `step`'s output, into `sink`, if it has the
    planned shape."""
    want = dtypes.stored_shape((rows, *step.info.shape[1:]), step.info.dtype)
    if tuple(out.shape) != want:  # pragma: no cover - an action's rows() that lies
        raise RuntimeError(f"{shown(step.output)}: rows {first}:{first + rows} planned {want}, produced {out.shape}")
    sink.write_rows(step.output, first, out)


def kept_rows(step: Step, sibling: Step, cut: Slicing) -> int | None:
    """Output rows of `sibling` (a piece of `step`'s split) per block of `cut`, if `sibling`'s
    blocks take the same input rows as `step`'s; None if its piece cannot be kept by slices."""
    block = block_rows(sibling)
    if block is None or block.inputs != cut.units or not sibling.info.shape:
        return None
    if -(-sibling.info.shape[0] // block.output) != cut.blocks:
        return None
    return block.output


def slice_job(step: Step, cut: Slicing, source, b0: int, whole: bool, worker: Worker) -> Job:
    """Read the slice of `step`'s inputs starting at block `b0` and run the step's actions
    on it, on `worker`; the job, whose result is the actions' outputs (`whole`: the last
    action makes every piece of its split, for `keep`)."""
    actions = unpieced(step) if whole else step.actions
    b1 = b0 + cut.per_slice

    def work(job: Job) -> list:
        arrays = [source.read_rows(k, min(b0 * u, i.shape[0]), min(b1 * u, i.shape[0]))
                  for k, i, u in zip(step.inputs, step.input_infos, cut.units)]
        return act.run_all(actions, arrays)
    return worker.submit(Job(work))


def run_sliced(step: Step, cut: Slicing, source, sink, worker: Worker,
               keep: Sequence[tuple[int, int, Step]] = (), kept: dict | None = None,
               first: Job | None = None, then: Callable[[], None] | None = None) -> None:
    """`step`, slice by slice into `sink`: up to `cut.depth` slices are read and computed on
    `worker` while the one before them is written here. `first`: the job of the first slice
    (`slice_job`), if started already; `then()` is called once the last slice is in flight
    and there is room for one more, to start bringing in what comes after the step.
    `keep` ((piece, rows per block, sibling step)...): pieces of the step's split that later
    steps write, gathered into `kept[sibling.output]` as the slices compute them."""
    starts = range(0, cut.blocks, cut.per_slice)
    own = step.actions[-1].params["index"] if keep else None
    ahead = deque([first if first is not None else slice_job(step, cut, source, 0, bool(keep), worker)])
    queued = 1  # slices submitted so far

    def more() -> None:  # depth slices in flight; once the last is, what comes after the step
        nonlocal queued, then
        while len(ahead) < cut.depth and queued < len(starts):
            ahead.append(slice_job(step, cut, source, starts[queued], bool(keep), worker))
            queued += 1
        if queued == len(starts) and len(ahead) < cut.depth and then is not None:
            then, follow = None, then
            follow()

    try:
        more()
        for n, b0 in enumerate(starts):
            pieces = ahead.popleft().result()
            more()
            if keep:
                for piece, unit, sib in keep:
                    if n == 0:  # the piece's storage dtype is what the action makes
                        kept[sib.output] = np.empty(dtypes.stored_shape(sib.info.shape, sib.info.dtype),
                                                    pieces[piece].dtype)
                    start = b0 * unit
                    kept[sib.output][start:start + len(pieces[piece])] = pieces[piece]
                pieces = [pieces[own]]
            (out,) = pieces
            first_row = b0 * cut.out_unit
            _put(step, first_row, min(first_row + cut.per_slice * cut.out_unit, step.info.shape[0]) - first_row,
                 out, sink)
            del out, pieces
    finally:
        if ahead:
            worker.cancel(ahead)
