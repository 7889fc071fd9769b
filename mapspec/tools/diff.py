"""`mapspec diff OLD.map NEW.map CKPT`: which outputs change between two versions of a spec.

Both specs are compiled against the same checkpoint; outputs are compared by name, and an
output that vanished while another appeared from the same source tensors is a rename.

Then what changed without changing an output, so a reviewer is never told "0 changes" about
a spec that did change: rules added or removed that match nothing (or whose outputs other
rules produce just the same), rules rewritten that produce the same outputs, and parameter
values (a default changed, say). A rule change that does change outputs is shown by them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..ops.actions import format_shape
from ..compile.hints import replacements
from ..errors import Span
from ..compile.plan import Plan, Step
from ..lang.rules import Spec
from ..lang.text import rule_text


@dataclass(frozen=True)
class Change:
    kind: str  # renamed, added, removed, changed
    old: str | None
    new: str | None
    detail: str
    what: str = ""  # what the change is, without names: repeated changes fold on it

    def line(self) -> str:
        if self.kind == "renamed":
            return f"renamed {self.old} -> {self.new} ({self.detail})"
        if self.kind == "added":
            return f"added {self.new} ({self.detail})"
        if self.kind == "removed":
            return f"removed {self.old} ({self.detail})"
        if self.kind == "rule rewritten":
            return f"rule rewritten {self.detail}: {self.old} => {self.new}"
        if self.kind in ("rule added", "rule removed"):
            return f"{self.kind} {self.detail}: {self.new or self.old}"
        if self.kind.startswith("parameter"):
            return f"{self.kind} {self.detail}"
        return f"changed {self.new}: {self.detail}"

    def to_json(self) -> dict:
        return {"kind": self.kind, "old": self.old, "new": self.new, "detail": self.detail}


@dataclass(frozen=True)
class PlanDiff:
    old_name: str
    new_name: str
    changes: tuple[Change, ...]
    unchanged: int
    rules: tuple[Change, ...] = ()  # rule changes no output shows
    params: tuple[Change, ...] = ()  # parameter values that differ

    def to_json(self) -> dict:
        return {"old": self.old_name, "new": self.new_name, "unchanged": self.unchanged,
                "changes": [c.to_json() for c in self.changes],
                "rules": [c.to_json() for c in self.rules], "params": [c.to_json() for c in self.params]}


def _src(step: Step) -> str:
    return "from " + ", ".join(step.inputs)


def _describe(step: Step) -> str:
    acts = " ".join(a.name for a in step.actions)
    return f"{_src(step)}, {format_shape(step.info.shape)} {step.info.dtype}" + (f", {acts}" if acts else "")


def diff_plans(old: Plan, new: Plan, old_spec: Spec | None = None, new_spec: Spec | None = None) -> PlanDiff:
    """What changes from `old` to `new` (plans of one checkpoint); with the specs they were
    compiled from, rule changes that change no output too."""
    a = {s.output: s for s in old.steps}
    b = {s.output: s for s in new.steps}
    changes: list[Change] = []
    unchanged = 0
    for name, s in b.items():
        t = a.get(name)
        if t is None:
            continue
        aspects = []
        if t.inputs != s.inputs:
            aspects.append(f"sources {', '.join(t.inputs)} -> {', '.join(s.inputs)}")
        if t.info.shape != s.info.shape:
            aspects.append(f"shape {format_shape(t.info.shape)} -> {format_shape(s.info.shape)}")
        if t.info.dtype != s.info.dtype:
            aspects.append(f"dtype {t.info.dtype} -> {s.info.dtype}")
        if t.actions != s.actions:
            aspects.append(f"actions {' '.join(str(x) for x in t.actions) or '-'} -> "
                           f"{' '.join(str(x) for x in s.actions) or '-'}")
        if aspects:
            changes.append(Change("changed", name, name, "; ".join(aspects), "; ".join(x.split(" ")[0] for x in aspects)))
        else:
            unchanged += 1
    gone = [s for n, s in a.items() if n not in b]
    came = [s for n, s in b.items() if n not in a]
    by_inputs = {}
    for s in came:
        by_inputs.setdefault(s.inputs, []).append(s)
    renamed_new = set()
    for s in gone:
        cands = [c for c in by_inputs.get(s.inputs, ()) if c.output not in renamed_new]
        if cands:
            c = cands[0]
            renamed_new.add(c.output)
            detail = _src(s) if c.info == s.info and c.actions == s.actions else f"{_src(s)}; now {_describe(c)}"
            changes.append(Change("renamed", s.output, c.output, detail, repr(replacements(s.output, c.output))))
        else:
            changes.append(Change("removed", s.output, None, "was " + _describe(s)))
    for c in came:
        if c.output not in renamed_new:
            changes.append(Change("added", None, c.output, _describe(c)))
    rules = _rule_changes(old, new, old_spec, new_spec, changes) if old_spec and new_spec else ()
    return PlanDiff(Path(old.spec_file).name, Path(new.spec_file).name, tuple(changes), unchanged,
                    rules, _param_changes(old, new))


# ------------------------------------------------------------------ changes no output shows

def _effects(plan: Plan) -> dict[Span, frozenset]:
    """What each rule did: the outputs it wrote and the keys it dropped."""
    out: dict[Span, set] = {}
    for s in plan.steps:
        out.setdefault(s.rule, set()).add(("out", s.output))
    for key, span in plan.dropped:
        out.setdefault(span, set()).add(("drop", key))
    return {span: frozenset(e) for span, e in out.items()}


def _effect_text(effect: frozenset, tense: str) -> str:
    outs = sum(1 for kind, _ in effect if kind == "out")
    drops = len(effect) - outs
    if not effect:
        return "matches nothing" if tense == "now" else "matched nothing"
    parts = ([f"{outs} output{'s' if outs != 1 else ''}"] if outs else []) + ([f"{drops} dropped"] if drops else [])
    return ", ".join(parts)


def _rule_changes(old: Plan, new: Plan, old_spec: Spec, new_spec: Spec, changes: list[Change]) -> tuple[Change, ...]:
    """Rules only one version has, where no output change shows them: those matching nothing,
    and those whose outputs (and drops) are the same in both plans."""
    touched = {n for c in changes for n in (c.old, c.new) if n}
    both_out = {s.output for s in old.steps} & {s.output for s in new.steps}
    both_drop = {k for k, _ in old.dropped} & {k for k, _ in new.dropped}

    def same(effect: frozenset) -> bool:
        return all((name in both_out and name not in touched) if kind == "out" else name in both_drop
                   for kind, name in effect)

    old_fx, new_fx = _effects(old), _effects(new)
    new_texts = {rule_text(r) for r in new_spec.rules}
    old_texts = {rule_text(r) for r in old_spec.rules}
    gone = [(r, old_fx.get(r.span, frozenset())) for r in old_spec.rules if rule_text(r) not in new_texts]
    came = [(r, new_fx.get(r.span, frozenset())) for r in new_spec.rules if rule_text(r) not in old_texts]
    out: list[Change] = []
    paired = set()
    for r, fx in gone:
        twin = next((i for i, (q, gx) in enumerate(came) if fx and gx == fx and i not in paired), None)
        if twin is not None:
            paired.add(twin)
            if same(fx):
                q = came[twin][0]
                out.append(Change("rule rewritten", rule_text(r), rule_text(q),
                                  f"{_at(r)} -> {_at(q)} (the same {_effect_text(fx, 'now')})"))
        elif same(fx):
            detail = _effect_text(fx, "then") + ("" if not fx else ", which other rules now produce the same")
            out.append(Change("rule removed", rule_text(r), None, f"{_at(r)} ({detail})"))
    for i, (q, fx) in enumerate(came):
        if i not in paired and same(fx):
            detail = _effect_text(fx, "now") + ("" if not fx else ", as other rules produced them before")
            out.append(Change("rule added", None, rule_text(q), f"{_at(q)} ({detail})"))
    return tuple(out)


def _at(rule) -> str:
    return f"{Path(rule.span.file).name}:{rule.span.line}"


def _param_changes(old: Plan, new: Plan) -> tuple[Change, ...]:
    a = {b.name: b for b in old.params}
    b = {b.name: b for b in new.params}
    out = []
    for name in [*a, *(n for n in b if n not in a)]:
        x, y = a.get(name), b.get(name)
        if x is None:
            out.append(Change("parameter added", None, name, f"{name} = {y.value} ({y.origin})"))
        elif y is None:
            out.append(Change("parameter removed", name, None, f"{name} (was {x.value}, {x.origin})"))
        elif x.value != y.value:
            out.append(Change("parameter", name, name, f"{name}: {x.value} ({x.origin}) -> {y.value} ({y.origin})"))
    return tuple(out)
