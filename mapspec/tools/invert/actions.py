"""Actions inverted: each action of a rule replaced by what undoes it, in reverse order, from
the spec alone where its definition can tell (`ActionDef.spec_inverse`), else from what the
forward plan says (`ActionDef.inverse`, the same for every tensor of the rule), or refused."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from ...errors import Span
from ...lang import text as write
from ...lang.rules import Action, Capture, Fanout, RenameRule
from ...ops import actions as act
from ...ops.base import make
from .facts import Facts


class Undo:
    """The inverse actions of each rule; what `--lossy` lets through goes to `losses`."""

    def __init__(self, facts: Facts, tables: dict[str, dict[str, str]], lossy: bool, losses: list[str],
                 fail: Callable[[str, Span | None], None], spec_only: bool = False):
        self.facts, self.tables, self.lossy, self.losses, self.fail = facts, tables, lossy, losses, fail
        self.spec_only = spec_only  # no forward plan: what the spec states is all there is

    def actions(self, rule, merge_axes: list[Capture]) -> list[Action] | None:
        fanouts = [p.capture.name for p in getattr(rule, "target", None).parts
                   if isinstance(p, Fanout)] if isinstance(rule, RenameRule) else []
        inverse: list[list[Action]] = []
        known: tuple[int, ...] | None = None  # the shape before the action, when the spec fixes it
        known_dtype: str | None = None  # the dtype before it, when an expect(dtype=) or a cast fixes it
        ok = True
        for i, action in enumerate(rule.actions):
            d = act.lookup(action)
            p = act.normalize(action)
            axis = _axis_of(p, merge_axes)
            cap = next((c for c in merge_axes if c.name == axis), None)
            count = (len(cap.alternatives) if cap is not None and cap.type == "alt" else
                     len(self.tables[cap.table]) if cap is not None and cap.type == "table" else None)
            ctx = act.InverseContext(known, axis, fanouts[0] if len(fanouts) == 1 else None, count, action.span,
                                     known_dtype)
            inv = d.spec_inverse(p, ctx)
            if inv is None and known_dtype is not None and d.dtype_only and self.spec_only:
                inv = self._lossy_back(d, p, known_dtype, action)  # from the spec's stated dtype
            if inv is None:
                inv = self._from_plan(rule, i, action, d, axis)
            if inv is None:
                ok = False
            else:
                inverse.append(inv)
            known = d.shape_after(p, known)
            known_dtype = d.dtype_after(p, known_dtype)
        return [a for inv in reversed(inverse) for a in inv] if ok else None

    def _lossy_back(self, d, p, before: str, action) -> list[Action]:
        """A cast from a dtype the spec states (expect(dtype=)) that loses precision (to
        float16, to Q8_0): refused, or under --lossy cast back and the loss reported."""
        targets = sorted(d.targets(p)) if hasattr(d, "targets") else [p.get("dtype", "?")]
        message = f"cast({'/'.join(targets)}) of {before} tensors loses precision; the inverse cannot restore them"
        if not self.lossy:
            self.fail(message + " (--lossy inverts it anyway and reports the loss)", action.span)
            return []
        text = f"{Path(action.span.file).name}:{action.span.line}: {message}"
        if text not in self.losses:
            self.losses.append(text)
        return [make(d.name, before, span=action.span)]

    def _from_plan(self, rule, i: int, action, d, axis: str | None) -> list[Action] | None:
        """The inverse from the forward plan: the actions' own `inverse`, the same for every
        tensor of the rule."""
        got = self.facts.input(rule, i, action, d.needs, dtype_only=d.dtype_only)
        if got is None:
            return None
        texts: dict[tuple[str, ...], list[Action]] = {}
        for planned, shapes, kinds in self.facts.shapes[rule.span].planned[i]:
            inv = act.inverse(planned, list(shapes), kinds)
            loss = d.loss(planned) if inv is None else None
            if loss is not None:
                message, inv = loss
                if not self.lossy:
                    self.fail(message + " (--lossy inverts it anyway and reports the loss)", action.span)
                    return None
                loss = f"{Path(action.span.file).name}:{action.span.line}: {message}"
                if loss not in self.losses:
                    self.losses.append(loss)
            written = None if inv is None else [act.REGISTRY[a.name].written(a, axis, action.span) for a in inv]
            if written is None or None in written:
                self.fail(f"{action.name}() has no inverse one rule can state for these tensors "
                           "(their shapes differ in more than one dimension)", action.span)
                return None
            texts.setdefault(tuple(write.action(a) for a in written), written)
        if len(texts) != 1:
            self.fail(f"{action.name}() would be undone differently for different tensors of this rule "
                       f"({' / '.join(' '.join(t) for t in sorted(texts)[:3])}); split the rule", action.span)
            return None
        return next(iter(texts.values()))




def _axis_of(p, merge_axes: list[Capture]) -> str | None:
    """The capture a merge consumes: its over=, or the only one there is."""
    if p.get("over"):
        return p["over"]
    return merge_axes[0].name if len(merge_axes) == 1 else None
