"""`mapspec diff OLD.map NEW.map CKPT`: which outputs change between two versions of a spec.

Both specs are compiled against the same checkpoint; outputs are compared by name, and an
output that vanished while another appeared from the same source tensors is a rename."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .actions import format_shape
from .hints import replacements
from .plan import Plan, Step


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
        return f"changed {self.new}: {self.detail}"

    def to_json(self) -> dict:
        return {"kind": self.kind, "old": self.old, "new": self.new, "detail": self.detail}


@dataclass(frozen=True)
class PlanDiff:
    old_name: str
    new_name: str
    changes: tuple[Change, ...]
    unchanged: int

    def to_json(self) -> dict:
        return {"old": self.old_name, "new": self.new_name, "unchanged": self.unchanged,
                "changes": [c.to_json() for c in self.changes]}


def _src(step: Step) -> str:
    return "from " + ", ".join(step.inputs)


def _describe(step: Step) -> str:
    acts = " ".join(a.name for a in step.actions)
    return f"{_src(step)}, {format_shape(step.info.shape)} {step.info.dtype}" + (f", {acts}" if acts else "")


def diff_plans(old: Plan, new: Plan) -> PlanDiff:
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
    return PlanDiff(Path(old.spec_file).name, Path(new.spec_file).name, tuple(changes), unchanged)
