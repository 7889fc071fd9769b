"""`mapspec draft`: infer a reviewable spec from a source checkpoint and a target.

pairing.py decides which tensor becomes which, generalize.py turns the pairs into rules,
render.py writes them with their evidence; here the draft is verified before anyone sees it:
it must compile against the source, reproduce exactly the pairs it was made from, and fit the
target strictly (or say which target keys it leaves unexplained)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

from ...compile.hints import plural
from ...compile.plan import Plan, TensorInfo, compile_spec
from ...lang.formatter import format_text
from ...lang.parser import parse_spec
from ...ops.actions import format_shape
from .generalize import Rule, generalize, target_only
from .pairing import Pairing, pair
from .render import explain_lines, spec_text

COUNTER_GLOB = "*num_batches_tracked"


@dataclass
class Draft:
    text: str
    pairing: Pairing
    rules: list[Rule]
    plan: Plan
    problems: list[str] = field(default_factory=list)   # target keys the draft leaves unexplained

    @property
    def ok(self) -> bool:
        return not self.problems

    def explain(self) -> list[str]:
        return explain_lines(self.rules, self.pairing.source)


def draft(source: Mapping[str, TensorInfo], target: Mapping[str, TensorInfo], *,
          source_name: str = "source", target_name: str = "target", file: str = "draft.map") -> Draft:
    """A verified draft spec converting `source` tensors into `target` ones."""
    pairing = pair(source, target)
    pairing.target_only = target_only(pairing)
    # plainer and plainer rules until they compile and reproduce the pairs: unpaired source keys
    # are spelled out one by one before the paired ones lose their general rules
    attempts = ({}, {"restrict": True}, {"literal_drops": True}, {"restrict": True, "literal_drops": True},
                {"literal": True})
    last_error = None
    for options in attempts:
        rules = generalize(pairing.pairs, pairing.dropped, pairing.source, **options)
        text = format_text(spec_text(pairing, rules, source_name, target_name), file)
        try:
            plan = compile_spec(parse_spec(text=text, name=file), dict(source))
        except Exception as exc:  # a generalisation that overlaps: fall back to a plainer one
            last_error = exc
            continue
        if _reproduces(plan, pairing):
            return Draft(text, pairing, rules, plan, _problems(plan, pairing, target))
    raise RuntimeError(f"mapspec draft could not verify its own rules: {last_error}")  # pragma: no cover


def _reproduces(plan: Plan, pairing: Pairing) -> bool:
    want = pairing.mapping()
    got = {s.output: s.inputs for s in plan.steps}
    return got == {t: tuple(v) for t, v in want.items()} and \
        {k for k, _ in plan.dropped} == set(pairing.dropped)


def _problems(plan: Plan, pairing: Pairing, target: Mapping[str, TensorInfo]) -> list[str]:
    """What keeps the draft from fitting the target: a line per target key a suggestion leaves
    to the reviewer, one per pattern of target keys no source tensor can make."""
    from ...compile.fit import compare as compare_target

    counters = set(pairing.counters)
    report = compare_target(plan.outputs(), {k: v for k, v in target.items() if k not in counters})
    only = {k for _, keys in pairing.target_only for k in keys}
    out = [line for line, (k, _) in zip(report.lines(), report.missing) if k not in only]
    out += [f"missing from the output: {plural(len(keys), 'target key')} no source tensor holds, {glob} "
            f"(e.g. {keys[0]} {format_shape(target[keys[0]].shape)})" if len(keys) > 1 else
            f"missing from the output: {keys[0]} {format_shape(target[keys[0]].shape)} (no source tensor holds it)"
            for glob, keys in pairing.target_only]
    return out + report.lines()[len(report.missing):]
