"""Running a plan step a block of rows at a time.

A step whose every action works row by row (`ActionDef.rows`: a cast, a ggml or FP8 block
quantize or dequantize, one expert of stacked experts at a time) need not hold its tensors
whole: its inputs are read a slice of rows at a time (`Source.read_rows`), the actions run
on the slice, and the result goes to its place in the output (`Sink.write_rows`). Memory is
then two slices (the one being worked on and the next, read meanwhile on the read-ahead
thread), not the step's inputs and output: an 11008 x 4096 bf16 -> Q8_0 cast holds about
2 x 16 MiB instead of 132 MiB. The values are the same, as each slice of the output depends
on its slice of the inputs alone. Steps with a source or sink that cannot read or write part
of a tensor, and small steps, run whole."""

from __future__ import annotations

from typing import NamedTuple

from ..core import dtypes
from ..core.background import Job, Worker
from ..core.quoting import shown
from ..formats.protocol import row_bytes
from ..compile.plan import Step
from ..ops import actions as act

SLICE_BYTES = 16 << 20  # inputs and output of one slice, about
MIN_BYTES = 3 * SLICE_BYTES  # smaller steps run whole: slicing them saves little memory


class Slicing(NamedTuple):
    """How a step is cut: input i's rows come `units[i]` per block, the output's `out_unit`;
    `blocks` blocks in all, `per_slice` of them at a time."""

    units: tuple[int, ...]
    out_unit: int
    blocks: int
    per_slice: int


def slicing(step: Step, source, sink) -> Slicing | None:
    """How `step` runs slice by slice, or None if it runs whole."""
    if not step.actions or sum(i.nbytes for i in step.input_infos) + step.info.nbytes < MIN_BYTES:
        return None
    typed = [act.Typed(tuple(i.shape), i.dtype) for i in step.input_infos]
    first = act.rows(step.actions[0], typed)
    if first is None or len(first.inputs) != len(typed):
        return None
    for before, pa in zip(step.actions, step.actions[1:]):
        if act.rows(pa, before.outputs) != act.Rows((1,), 1):
            return None  # a later action must keep rows one to one
    infos = [*step.input_infos, step.info]
    units = (*first.inputs, first.output)
    if any(row_bytes(i) is None or u <= 0 for i, u in zip(infos, units)):
        return None
    counts = {-(-i.shape[0] // u) for i, u in zip(infos, units)}
    if len(counts) != 1:
        return None
    blocks = counts.pop()
    per_block = sum(row_bytes(i) * u for i, u in zip(infos, units))
    per_slice = max(1, SLICE_BYTES // per_block)
    takes_rows = getattr(sink, "takes_rows", None)  # sinks and sources outside formats/ may lack them
    if per_slice >= blocks or takes_rows is None or not takes_rows(step.output):
        return None
    if not hasattr(source, "read_rows") or any(source.extent(k) is None for k in step.inputs):
        return None
    return Slicing(tuple(first.inputs), first.output, blocks, per_slice)


def run_sliced(step: Step, cut: Slicing, source, sink, worker: Worker) -> None:
    """`step`, slice by slice into `sink`; the next slice is read on `worker` meanwhile."""
    starts = range(0, cut.blocks, cut.per_slice)

    def read(b0: int) -> list:
        b1 = b0 + cut.per_slice
        return [source.read_rows(k, min(b0 * u, i.shape[0]), min(b1 * u, i.shape[0]))
                for k, i, u in zip(step.inputs, step.input_infos, cut.units)]

    ahead = worker.submit(Job(lambda job: read(starts[0])))
    try:
        for n, b0 in enumerate(starts):
            arrays = ahead.result()
            ahead = worker.submit(Job(lambda job, b=starts[n + 1]: read(b))) if n + 1 < len(starts) else None
            (out,) = act.run_all(step.actions, arrays)
            del arrays
            first = b0 * cut.out_unit
            rows = min(first + cut.per_slice * cut.out_unit, step.info.shape[0]) - first
            want = dtypes.stored_shape((rows, *step.info.shape[1:]), step.info.dtype)
            if tuple(out.shape) != want:  # pragma: no cover - an action's rows() that lies
                raise RuntimeError(f"{shown(step.output)}: rows {first}:{first + rows} planned {want}, "
                                   f"produced {out.shape}")
            sink.write_rows(step.output, first, out)
            del out
    finally:
        if ahead is not None:
            worker.cancel([ahead])
