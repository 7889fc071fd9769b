"""What the forward plan says about each rule of the spec being inverted: the shapes and dtypes
each action met, which fallback alternative the checkpoint used, what the drops removed.
Some inverses depend on these (the shape a `view` started from, the dtype a `cast` came from)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from ...compile.plan import Plan, Step
from ...errors import Span
from ...lang.rules import KeepRule, Pattern, RenameRule, Spec
from ...ops import actions as act


@dataclass
class _Shapes:
    """What the forward plan says about one rule: per action, its inputs' shapes and dtype."""

    inputs: list[set] = field(default_factory=list)  # per action: {(shapes tuple, dtypes tuple)}
    planned: list[list] = field(default_factory=list)  # per action: [(PlannedAction, shapes, dtypes)]
    alternatives: set = field(default_factory=set)  # source pattern indexes the checkpoint used


class Facts:
    """The forward plan read once, rule by rule; `input` reports (through `fail`) where it
    cannot say one thing for a whole rule."""

    def __init__(self, spec: Spec, plan: Plan | None, fail: Callable[[str, Span | None], None]):
        self.plan = plan
        self.fail = fail
        self.tables = {t.name: t.mapping() for t in spec.tables}
        self.shapes: dict[Span, _Shapes] = {}
        self.dropped: dict[Span, list[str]] = {}  # drop rule -> the keys it dropped
        self.used_rules: set[Span] = set()  # the rules something of the checkpoint went through
        self._matchers: dict[int, object] = {}
        if plan is not None:
            rules = {r.span: r for r in spec.rules}
            for step in plan.steps:
                rule = rules.get(step.rule)
                self.used_rules.add(step.rule)
                if isinstance(rule, (RenameRule, KeepRule)):
                    self.record(rule, step)
            for key, span in plan.dropped:
                self.dropped.setdefault(span, []).append(key)
                self.used_rules.add(span)

    def record(self, rule, step: Step) -> None:
        info = self.shapes.setdefault(rule.span, _Shapes([set() for _ in rule.actions],
                                                         [[] for _ in rule.actions]))
        if isinstance(rule, RenameRule) and len(rule.sources) > 1:
            for i, pat in enumerate(rule.sources):
                if self.matches(pat, step.inputs[0]):
                    info.alternatives.add(i)
        if len(step.actions) != len(rule.actions):  # pragma: no cover - one planned action per action
            return
        shapes = tuple(tuple(i.shape) for i in step.input_infos)
        kinds = tuple(i.dtype for i in step.input_infos)
        for i, planned in enumerate(step.actions):
            info.inputs[i].add((shapes, kinds))
            info.planned[i].append((planned, shapes, kinds))
            shapes, kinds = tuple(t.shape for t in planned.outputs), tuple(t.dtype for t in planned.outputs)

    def matches(self, pattern: Pattern, key: str) -> bool:
        from ...compile.matcher import Entry, Matcher

        m = self._matchers.get(id(pattern))
        if m is None:
            tables = {n: tuple(t) for n, t in self.tables.items()}
            m = self._matchers[id(pattern)] = Matcher([Entry(0, 0, pattern)], tables)
        return m.match(key) is not None

    def input(self, rule: RenameRule, i: int, action, what: str, dtype_only: bool = False):
        """The one (shapes, dtype) action i of `rule` met in the forward plan, or None (reported).
        `dtype_only`: the shapes may differ (a cast's inverse needs only the dtype)."""
        info = self.shapes.get(rule.span)
        if self.plan is None:
            self.fail(f"{action.name}() inverts only knowing {what}; give the forward checkpoint "
                       f"(mapspec invert SPEC CHECKPOINT) or state the inverse with `reverse -> ...`", action.span)
            return None
        if info is None or not info.inputs[i]:
            self.fail(f"{action.name}(): the forward checkpoint has no tensor for this rule, so {what} "
                       "is unknown", action.span)
            return None
        if dtype_only and len({dt for _, dt in info.inputs[i]}) == 1:
            return next(iter(info.inputs[i]))
        if len(info.inputs[i]) > 1:
            seen = sorted(info.inputs[i])
            shown = ", ".join(f"{'/'.join(act.format_shape(s) for s in shapes)} {'/'.join(sorted(set(dts)))}"
                              for shapes, dts in seen[:4])
            self.fail(f"{action.name}() meets different inputs in this rule ({shown}); one inverse rule "
                       "cannot undo them all: split the rule", action.span)
            return None
        return next(iter(info.inputs[i]))

    def alternatives(self, rule: RenameRule) -> set[int]:
        """The source alternatives of a fallback rule (`A | B -> T`) the checkpoint used."""
        return self.shapes[rule.span].alternatives if rule.span in self.shapes else set()
