"""Pieces of one split computed once.

A splitting action (an FP8 or MXFP4 quantize, a split) makes several tensors, and the plan
has one step per output tensor, each running the action on the same inputs for its own
piece (`index`). For a quantized weight that means reading and scanning the weight twice:
once for the weight, once for its scales. Where a piece is small beside the inputs (FP8
scales of 128 x 128 blocks are 1/32768 of a bf16 weight's bytes, MXFP4 scales 1/64), the
step that runs first computes it too and keeps it, and the piece's own step writes the kept
array without reading anything. Large pieces (a fused QKV's thirds) are not kept: holding
them would raise the memory bound; their steps compute them again, as before."""

from __future__ import annotations

from dataclasses import replace
from typing import NamedTuple, Sequence

from ..compile.plan import Step
from ..ops import actions as act

SMALL = 32  # the pieces kept for later steps hold at most 1/SMALL of the input bytes, all together


class Sibling(NamedTuple):
    """A later step whose output an earlier step computes as piece `piece` of its last action."""

    step: int
    piece: int


def _family(step: Step) -> str | None:
    """What a step computes apart from which piece: steps with the same family differ only in
    the piece of their last (splitting) action."""
    if not step.actions or "index" not in step.actions[-1].params or step.actions[-1].each is not None:
        return None
    last = step.actions[-1]
    whole = {k: v for k, v in last.params.items() if k != "index"}
    # repr, not JSON: it runs for every piece of every split of a plan (an MoE's experts
    # unstacked: tens of thousands), and steps of one rule write their parameters alike
    return repr((step.inputs, [(a.name, a.params, a.groups, a.each) for a in step.actions[:-1]], last.name,
                 whole, last.groups))


def siblings(steps: Sequence[Step], skip: set[int] = frozenset()) -> dict[int, list[Sibling]]:
    """step index -> the later steps whose small outputs it computes and keeps; steps in
    `skip` (read in their own way) take no part."""
    first: dict[str, int] = {}
    held: dict[int, int] = {}  # bytes kept so far for each first step
    out: dict[int, list[Sibling]] = {}
    for i, step in enumerate(steps):
        if i in skip or (family := _family(step)) is None:
            continue
        j = first.setdefault(family, i)
        if j == i:
            continue
        inputs = sum(info.nbytes for info in step.input_infos)
        # small all together, not only each: 64 rank pieces of 1/64 each would be the tensor
        if (held.get(j, 0) + step.info.nbytes) * SMALL <= inputs:
            held[j] = held.get(j, 0) + step.info.nbytes
            out.setdefault(j, []).append(Sibling(i, step.actions[-1].params["index"]))
    return out


def unpieced(step: Step) -> tuple:
    """`step`'s actions with the last one computing every piece, not only the step's own."""
    last = step.actions[-1]
    return (*step.actions[:-1], replace(last, params={k: v for k, v in last.params.items() if k != "index"}))


def run_pieces(step: Step, arrays: list) -> list:
    """Every piece of `step`'s last action, from the step's input arrays."""
    return act.run_all(unpieced(step), arrays)
