"""Derive the inverse of a spec: ordinary spec text with `from`/`to` swapped, proven rule by rule.

Each rename rule `P -> T then A1 ... An` becomes `T' -> P' then An^-1 ... A1^-1`:

- the target template becomes the inverse's pattern: `{c}` becomes a capture of the type `c`
  had in the source, `{t[c]}` a capture over the inverted table `t_r` (only where `t` is
  one-to-one over the values `c` takes), `{c+k}`/`{c-k}` an integer capture written back as
  `{c-k}`/`{c+k}`; other arithmetic is refused;
- the source pattern becomes the inverse's template; a capture that does not reach the target
  is refused (the inverse could not tell its value) unless it is the axis of a merge, which
  becomes the fan-out of the inverse split; fallback alternatives `P1 | P2` are refused unless
  the forward checkpoint used only one of them;
- every action is replaced by its inverse, in reverse order. Some inverses depend on what the
  spec alone does not say (the shape a `view` started from, the dtype a `cast` came from, where
  a `concat` joined): they are read from the plan against the forward checkpoint when one is
  given, and must be the same for every tensor of the rule.

A `drop`, a lossy cast, a non-injective table, an unnamed wildcard, and two rules whose
inverses would read the same keys are compile errors at the forward rule, all reported at
once. `reverse -> KEY [then ...]` under a rule states its inverse where the derivation is wrong
or undecided: KEY is written back (its captures are the forward source's), and its actions, if
given, replace the derived ones. The result is parsed like any spec, and its plan checks
coverage and ambiguity like any plan.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping


from ..ops import actions as act
from ..errors import SpecError, SpecErrors, Span, UsageError
from ..lang.parser import parse_spec
from ..compile.plan import Plan, Step, TensorInfo, compile_spec
from ..compile.params import Config, bind
from ..lang import text as write
from ..lang.exprs import names, transform, walk
from ..lang.rules import (Action, BinOp, Capture, DropRule, Fanout, Header, KeepRule, Lit, Lookup, Num, Pattern, Ref,
                          RenameRule, Spec, Subst, Table, TableEntry, Template, join_literals)

class NotInvertible(SpecErrors):
    """One or more rules have no inverse; each problem at its own rule, in file order."""


@dataclass(frozen=True)
class Inversion:
    text: str  # the inverse spec, formatted
    spec: Spec  # parsed from `text`
    origins: Mapping[Span, Span]  # each inverse rule's span -> its forward rule's span
    losses: tuple[str, ...] = ()  # what --lossy let through
    params: Mapping[str, int | str] = field(default_factory=dict)  # the forward spec's bound values

    def forward_rule(self, span: Span) -> Span:
        """The forward rule an inverse rule (or any span inside it) was derived from."""
        if span in self.origins:
            return self.origins[span]
        for inv, fwd in self.origins.items():
            if inv.file == span.file and inv.line <= span.line <= inv.end_line:
                return fwd
        return span

    def compile(self, keys: Mapping[str, TensorInfo], **options) -> Plan:
        """The inverse's plan for the checkpoint being converted back; an error in it is
        reported at the forward rule it came from."""
        try:
            return compile_spec(self.spec, keys, **options)
        except SpecError as exc:
            if exc.span is None or exc.span.file != self.spec.file:
                raise
            fwd = self.forward_rule(exc.span)
            raise type(exc)(f"in the inverse ({exc.message}; inverse rule: "
                            f"{_line(self.text, exc.span.line)})", fwd) from None


@dataclass
class _Shapes:
    """What the forward plan says about one rule: per action, its inputs' shapes and dtype."""

    inputs: list[set] = field(default_factory=list)  # per action: {(shapes tuple, dtypes tuple)}
    planned: list[list] = field(default_factory=list)  # per action: [(PlannedAction, shapes, dtypes)]
    alternatives: set = field(default_factory=set)  # source pattern indexes the checkpoint used


def invert_spec(spec: Spec | str | Path, forward: Mapping[str, TensorInfo] | Plan | None = None, *,
                params: Mapping[str, object] | None = None, config: Config = None,
                lossy: bool = False, prefer: Mapping[int | None, int] | None = None) -> Inversion:
    """The inverse of `spec`. `forward` (the forward checkpoint's tensors, or its plan) supplies
    what the spec alone does not say; without it, rules that need it are refused. Parameters
    are bound first (`params`, `config`, as for apply): the inverse states their values.
    `prefer` chooses which fallback alternative (`A | B -> T`) the inverse writes back, counted
    from 1: {line: n} for the rule starting on that line of the spec, {None: n} for every other
    such rule (see `parse_prefer`). It overrides what the forward checkpoint used; a rule's own
    `reverse` clause overrides it."""
    if not isinstance(spec, Spec):
        spec = parse_spec(spec)
    if forward is not None and not isinstance(forward, Plan):
        forward = compile_spec(spec, forward, params=params, config=config)
    bound, bindings = bind(spec, params, config) if forward is None else bind(
        spec, {b.name: b.value for b in forward.params if b.origin != "let"})
    return _Inverter(bound, forward, lossy, bindings, dict(prefer or {})).run()


def parse_prefer(values: list[str]) -> dict[int | None, int]:
    """`--prefer-alternative` values: `N` (every fallback rule) or `LINE:N` (the rule on LINE)."""
    out: dict[int | None, int] = {}
    for v in values:
        line, _, n = v.rpartition(":")
        if not n.isdigit() or int(n) < 1 or (line and not line.isdigit()):
            raise UsageError(f"--prefer-alternative {v!r}: expected N or LINE:N (N counts the alternatives from 1)")
        out[int(line) if line else None] = int(n)
    return out


class _Inverter:
    def __init__(self, spec: Spec, plan: Plan | None, lossy: bool, bindings=(), prefer=None):
        self.spec = spec
        self.prefer = prefer or {}
        self.bindings = bindings
        self.plan = plan
        self.lossy = lossy
        self.tables = {t.name: t.mapping() for t in spec.tables}
        self.used_tables: set[str] = set()
        self.new_tables: dict[str, tuple[dict[str, str], Span]] = {}  # name -> (entries, where made)
        self.problems: list[SpecError] = []
        self.losses: list[str] = []
        self.shapes: dict[Span, _Shapes] = {}
        self.dropped: dict[Span, list[str]] = {}
        self.used_rules: set[Span] = set()
        self._matchers: dict[int, object] = {}
        if plan is not None:
            rules = {r.span: r for r in spec.rules}
            for step in plan.steps:
                rule = rules.get(step.rule)
                self.used_rules.add(step.rule)
                if isinstance(rule, (RenameRule, KeepRule)):
                    self._record(rule, step)
            for key, span in plan.dropped:
                self.dropped.setdefault(span, []).append(key)
                self.used_rules.add(span)

    # -------------------------------------------------------------- the plan's facts
    def _record(self, rule, step: Step) -> None:
        info = self.shapes.setdefault(rule.span, _Shapes([set() for _ in rule.actions],
                                                         [[] for _ in rule.actions]))
        if isinstance(rule, RenameRule) and len(rule.sources) > 1:
            for i, pat in enumerate(rule.sources):
                if self._matches(pat, step.inputs[0]):
                    info.alternatives.add(i)
        if len(step.actions) != len(rule.actions):  # pragma: no cover - one planned action per action
            return
        shapes = tuple(tuple(i.shape) for i in step.input_infos)
        kinds = tuple(i.dtype for i in step.input_infos)
        for i, planned in enumerate(step.actions):
            info.inputs[i].add((shapes, kinds))
            info.planned[i].append((planned, shapes, kinds))
            shapes, kinds = tuple(t.shape for t in planned.outputs), tuple(t.dtype for t in planned.outputs)

    def _matches(self, pattern: Pattern, key: str) -> bool:
        from ..compile.matcher import Entry, Matcher

        m = self._matchers.get(id(pattern))
        if m is None:
            tables = {n: tuple(t) for n, t in self.tables.items()}
            m = self._matchers[id(pattern)] = Matcher([Entry(0, 0, pattern)], tables)
        return m.match(key) is not None

    def _input(self, rule: RenameRule, i: int, action, what: str, dtype_only: bool = False):
        """The one (shapes, dtype) action i of `rule` met in the forward plan, or None (reported).
        `dtype_only`: the shapes may differ (a cast's inverse needs only the dtype)."""
        info = self.shapes.get(rule.span)
        if self.plan is None:
            self._fail(f"{action.name}() inverts only knowing {what}; give the forward checkpoint "
                       f"(mapspec invert SPEC CHECKPOINT) or state the inverse with `reverse -> ...`", action.span)
            return None
        if info is None or not info.inputs[i]:
            self._fail(f"{action.name}(): the forward checkpoint has no tensor for this rule, so {what} "
                       "is unknown", action.span)
            return None
        if dtype_only and len({dt for _, dt in info.inputs[i]}) == 1:
            return next(iter(info.inputs[i]))
        if len(info.inputs[i]) > 1:
            seen = sorted(info.inputs[i])
            shown = ", ".join(f"{'/'.join(act.format_shape(s) for s in shapes)} {'/'.join(sorted(set(dts)))}"
                              for shapes, dts in seen[:4])
            self._fail(f"{action.name}() meets different inputs in this rule ({shown}); one inverse rule "
                       "cannot undo them all: split the rule", action.span)
            return None
        return next(iter(info.inputs[i]))

    def _fail(self, message: str, span: Span | None) -> None:
        self.problems.append(SpecError(message, span))

    # -------------------------------------------------------------- the whole spec
    def run(self) -> Inversion:
        blocks: list[tuple[Span, object]] = []  # (forward rule, the inverse rule made from it)
        seen_patterns: dict[str, Span] = {}
        for rule in self.spec.rules:
            if self.plan is not None and rule.span not in self.used_rules:
                continue  # nothing of the forward checkpoint went through it: nothing to write back
            if isinstance(rule, DropRule):
                keys = self.dropped.get(rule.span, [])
                listed = f": {', '.join(keys[:8])}{' ...' if len(keys) > 8 else ''}" if keys else ""
                if rule.reverse_none or self.lossy:
                    why = "marked `reverse none`" if rule.reverse_none else "--lossy"
                    self.losses.append(f"{Path(rule.span.file).name}:{rule.span.line}: the inverse does not "
                                       f"recreate the keys this drop removes ({why}){listed or ': ' + _patterns(rule)}")
                    continue
                self._fail(f"a drop cannot be inverted: the dropped keys cannot be recreated{listed} (mark it "
                           "`reverse none` if the inverse may leave them out)", rule.span)
                continue
            if isinstance(rule, RenameRule) and rule.reverse is not None and rule.reverse.target is None:
                continue  # `reverse none`: another rule writes these keys back
            if rule.otherwise and self.plan is None and getattr(rule, "reverse", None) is None:
                self._fail("a catch-all cannot be inverted from the spec alone: a key it wrote could as well "
                           "be one another rule wrote, and its inverse would claim it; invert against the "
                           "forward checkpoint (which shows what it wrote)"
                           + (", or state `reverse -> ...`" if isinstance(rule, RenameRule) else ""), rule.span)
                continue
            if isinstance(rule, KeepRule):
                actions = self._actions(rule, [])
                if actions is None:
                    continue
                made = KeepRule(patterns=rule.patterns, actions=tuple(actions), span=rule.span,
                                otherwise=rule.otherwise, optional=rule.optional)
                pats = [] if rule.otherwise else list(rule.patterns)
            elif rule.is_copy:
                if rule.if_absent and self.plan is None:
                    continue  # the ordinary rule for the same target inverts it
                # The copy's target holds the same values as its source's own output: the
                # inverse leaves it out (the round trip checks they are equal).
                pattern, _ = self._pattern_from(rule.target, rule.sources[0].captures(), rule.span)
                if pattern is None:
                    continue
                made = DropRule(patterns=(pattern,), span=rule.span)
                pats = [pattern]
            else:
                made = self._rename(rule)
                if made is None:
                    continue
                pats = list(made.sources)
            for p in (write.pattern(p.parts) for p in pats):
                if p in seen_patterns:
                    self._fail(f"the inverse of this rule reads the same keys ({p}) as the inverse of the rule "
                               f"at line {seen_patterns[p].line}: which one should write them back? Mark the other "
                               "`reverse none`", rule.span)
                seen_patterns.setdefault(p, rule.span)
            blocks.append((rule.span, made))
        fallbacks = {r.span.line for r in self.spec.rules if isinstance(r, RenameRule) and len(r.sources) > 1
                     and r.span.file == self.spec.file}
        for line in sorted(k for k in self.prefer if k is not None and k not in fallbacks):
            raise UsageError(f"--prefer-alternative {line}:{self.prefer[line]}: no rule with alternatives "
                             f"(A | B -> T) starts on line {line} of {Path(self.spec.file).name}")
        if len(self.problems) == 1:
            raise self.problems[0]
        if self.problems:
            raise NotInvertible(self.problems)
        return self._emit(blocks)

    def _emit(self, blocks: list[tuple[Span, object]]) -> Inversion:
        h = self.spec.header
        name = Path(self.spec.file).name
        comments = [f"The inverse of {name}, derived by `mapspec invert`."]
        if self.bindings:
            comments.append("with " + ", ".join(f"{b.name} = {b.value}" for b in self.bindings))
        comments += [f"warning: {loss}" for loss in self.losses]  # what the inverse does not restore, in its text
        header = Header(source=h.target or "unknown", target=h.source or "unknown") if h.source or h.target else Header()
        tables = [t for t in self.spec.tables if t.name in self.used_tables]
        tables += [Table(name=tname, entries=tuple(TableEntry(key=k, value=v, span=span) for k, v in mapping.items()),
                         span=span) for tname, (mapping, span) in self.new_tables.items()]
        text, where = write.spec(header, tables, [([f"{name}:{span.line}"], made) for span, made in blocks], comments)
        inverse = parse_spec(text=text, name=f"{self.spec.file} (inverted)")
        # Each inverse rule is linked to the forward rule it was made from: the writer says
        # which rule object it wrote on the line the parsed rule starts on.
        forward = {id(made): span for span, made in blocks}
        origins = {r.span: forward[id(where[r.span.line])] for r in inverse.rules}
        self._check_fallback(inverse)
        if self.problems:
            raise self.problems[0] if len(self.problems) == 1 else NotInvertible(self.problems)
        return Inversion(text, inverse, origins, tuple(self.losses), {b.name: b.value for b in self.bindings})

    def _check_fallback(self, inverse: Spec) -> None:
        """What the forward catch-all wrote must reach the inverse's catch-all, not a rule
        that would write it back under another name."""
        fallback = next((r for r in self.spec.rules if r.otherwise), None)
        if self.plan is None or fallback is None:
            return
        from ..compile.checks import patterns_of
        from ..compile.matcher import Ambiguous, Entry, Matcher

        entries = [Entry(i, j, p) for i, r in enumerate(inverse.rules) if not r.otherwise
                   for j, p in enumerate(patterns_of(r))]
        matcher = Matcher(entries, {t.name: tuple(t.mapping()) for t in inverse.tables})
        claimed = []
        for step in self.plan.steps:
            if step.rule == fallback.span:
                try:
                    hit = matcher.match(step.output)
                except Ambiguous:
                    hit = True
                if hit is not None:
                    claimed.append(f"{step.inputs[0]} -> {step.output}")
        if claimed:
            self._fail("the inverse of this catch-all is ambiguous: other rules' inverses would claim what "
                       f"it wrote ({', '.join(claimed[:4])}{' ...' if len(claimed) > 4 else ''}); give those "
                       "keys rules of their own", fallback.span)

    # -------------------------------------------------------------- one rename rule
    def _rename(self, rule: RenameRule) -> RenameRule | None:
        n_problems = len(self.problems)
        source = self._choose_source(rule)
        if source is None:
            return None
        caps = source.captures()
        pattern, values = self._pattern_from(rule.target, caps, rule.span)
        merge_axes = self._merge_axes(rule, source)
        reported = _refs_in(rule.target) - set(values)  # their arithmetic or table was refused above
        template = self._template_from(rule.reverse.target if rule.reverse is not None else source,
                                       values, merge_axes, reported)
        if rule.reverse is not None and rule.reverse.actions is not None:
            actions = list(rule.reverse.actions)
        else:
            actions = self._actions(rule, merge_axes)
        if len(self.problems) > n_problems or pattern is None or template is None or actions is None:
            return None
        return RenameRule(sources=(pattern,), target=template, actions=tuple(actions), span=rule.span,
                          otherwise=rule.otherwise, optional=rule.optional)

    def _choose_source(self, rule: RenameRule) -> Pattern | None:
        if len(rule.sources) == 1:
            return rule.sources[0]
        if rule.reverse is not None:
            return rule.sources[0]  # the reverse clause names the key; captures as in the first
        own = rule.span.file == self.spec.file  # LINE:N names a line of the spec itself, not of an include
        n = self.prefer.get(rule.span.line if own else -1, self.prefer.get(None))
        if n is not None:
            if n > len(rule.sources):
                self._fail(f"--prefer-alternative {n}: this rule has only {len(rule.sources)} alternatives",
                           rule.span)
                return None
            return rule.sources[n - 1]
        used = self.shapes.get(rule.span).alternatives if rule.span in self.shapes else set()
        if len(used) == 1:
            return rule.sources[next(iter(used))]
        alts = " | ".join(p.text for p in rule.sources)
        self._fail(f"fallback alternatives ({alts}): which name should the inverse write back? "
                   "State it with `reverse -> NAME` or choose with --prefer-alternative N" + ("" if self.plan is None else
                                                         " (the checkpoint used " + (
                                                             "several" if used else "none") + " of them)"),
                   rule.span)
        return None

    def _merge_axes(self, rule: RenameRule, source: Pattern) -> list[Capture]:
        """The source captures a merge consumes (they do not reach the target)."""
        if not any(act.lookup(a).merges for a in rule.actions):
            return []
        used = _refs_in(rule.target)
        return [c for c in source.parts if isinstance(c, Capture) and c.name and c.name not in used]

    # -------------------------------------------------------------- target -> inverse pattern
    def _pattern_from(self, target: Template, caps: dict[str, Capture], span: Span):
        """The inverse's pattern, and for each forward capture the expression of its value."""
        parts: list = []
        values: dict[str, object] = {}
        ok = True
        for part in target.parts:
            if isinstance(part, Lit):
                parts.append(part)
            elif isinstance(part, Fanout):
                parts.append(part.capture)
            else:
                got = self._invert_expr(part, caps, values)
                if got is None:
                    ok = False
                else:
                    parts.append(got)
        if not ok:
            return None, values
        parts = join_literals(parts)
        return Pattern(parts=parts, text=write.pattern(parts), span=span), values

    def _invert_expr(self, part: Subst, caps: dict[str, Capture], values: dict[str, object]) -> Capture | None:
        expr = part.expr
        if isinstance(expr, Ref):
            cap = caps[expr.name]
            if not self._bind(expr.name, values, part.span):
                return None
            if cap.type == "table":
                self.used_tables.add(cap.table)
            values[expr.name] = expr
            return cap
        if isinstance(expr, Lookup) and isinstance(expr.key, Ref):
            name = expr.key.name
            cap = caps[name]
            table = self.tables[expr.table]
            domain = (list(cap.alternatives) if cap.type == "alt" else
                      list(self.tables[cap.table]) if cap.type == "table" else list(table))
            inverse: dict[str, str] = {}
            for k in domain:
                v = table[k]
                if v in inverse:
                    self._fail(f"table '{expr.table}' maps both '{inverse[v]}' and '{k}' to '{v}': it is not "
                               "one-to-one, so the inverse cannot tell which to write back", expr.span)
                    return None
                inverse[v] = k
            if not self._bind(name, values, part.span):
                return None
            tname = self._table(expr.table, inverse, expr.span)
            values[name] = Lookup(table=tname, key=expr.key, span=expr.span)
            return Capture(name=name, type="table", table=tname, span=part.span)
        linear = _linear(expr)
        if linear is not None:
            name, offset = linear
            if not self._bind(name, values, part.span):
                return None
            ref = Ref(name=name, span=part.span)
            values[name] = ref if offset == 0 else BinOp(op="-" if offset > 0 else "+", left=ref, right=Num(value=abs(offset)))
            return Capture(name=name, type="int", span=part.span)
        self._fail(f"template arithmetic {{{write.expr(expr, compact=True)}}} cannot be inverted (only {{c + k}} and "
                   "{c - k} can); state the inverse with `reverse -> ...`", part.span)
        return None

    def _bind(self, name: str, values: dict[str, object], span: Span) -> bool:
        if name in values:
            self._fail(f"{{{name}}} appears twice in the target; the inverse would bind it twice", span)
            return False
        return True

    def _table(self, name: str, inverse: dict[str, str], span: Span) -> str:
        for tname, (mapping, _) in self.new_tables.items():
            if mapping == inverse and tname.startswith(name + "_r"):
                return tname
        tname = f"{name}_r"
        n = 2
        while tname in self.new_tables or tname in self.tables:
            tname, n = f"{name}_r{n}", n + 1
        self.new_tables[tname] = (inverse, span)
        return tname

    # -------------------------------------------------------------- source -> inverse template
    def _template_from(self, node, values: dict[str, object], merge_axes: list[Capture],
                       reported: set[str]) -> Template | None:
        axes = {c.name: c for c in merge_axes}
        out: list = []
        ok = True
        for part in node.parts:
            if isinstance(part, Lit):
                out.append(part)
            elif isinstance(part, Capture):
                if part.name is None:
                    self._fail(f"the wildcard {'**' if part.type == 'multi' else '*'} in {node.text} does not "
                               "reach the target, so the inverse cannot write it back; name it and use it in "
                               "the target", part.span)
                    ok = False
                elif part.name in axes:
                    out.append(Fanout(capture=part))
                elif part.name in values:
                    out.append(Subst(expr=values[part.name], span=part.span))
                elif part.name in reported:
                    ok = False
                else:
                    self._fail(f"capture {{{part.name}}} does not reach the target, so the inverse cannot tell "
                               f"which {_ctype(part) if part.type == 'alt' else 'value'} to write back; state "
                               "it with `reverse -> ...`", part.span)
                    ok = False
            elif isinstance(part, Fanout):
                out.append(part)
            else:  # a reverse clause's substitution: forward captures -> the inverse's values
                expr = self._substitute(part.expr, values)
                if expr is None:
                    ok = False
                else:
                    out.append(Subst(expr=expr, span=part.span))
        if not ok:
            return None
        parts = join_literals(out)
        return Template(parts=parts, text=write.template(parts), span=node.span)

    def _substitute(self, expr, values: dict[str, object]):
        """A reverse clause's expression over the forward captures, over the inverse's values."""
        for node, _ in walk(expr):
            if type(node) is Ref and node.name not in values:
                self._fail(f"{{{node.name}}} is not known to the inverse (it does not reach the target)", node.span)
                return None
            if type(node) is Lookup:
                self.used_tables.add(node.table)
        return transform(expr, lambda e: values[e.name] if type(e) is Ref else e)

    # -------------------------------------------------------------- actions
    def _actions(self, rule, merge_axes: list[Capture]) -> list[Action] | None:
        fanouts = [p.capture.name for p in getattr(rule, "target", None).parts
                   if isinstance(p, Fanout)] if isinstance(rule, RenameRule) else []
        inverse: list[list[Action]] = []
        known: tuple[int, ...] | None = None  # the shape before the action, when the spec fixes it
        ok = True
        for i, action in enumerate(rule.actions):
            d = act.lookup(action)
            p = act.normalize(action)
            axis = _axis_of(p, merge_axes)
            cap = next((c for c in merge_axes if c.name == axis), None)
            count = (len(cap.alternatives) if cap is not None and cap.type == "alt" else
                     len(self.tables[cap.table]) if cap is not None and cap.type == "table" else None)
            ctx = act.InverseContext(known, axis, fanouts[0] if len(fanouts) == 1 else None, count, action.span)
            inv = d.spec_inverse(p, ctx)
            if inv is None:
                inv = self._from_plan(rule, i, action, d, axis)
            if inv is None:
                ok = False
            else:
                inverse.append(inv)
            known = d.shape_after(p, known)
        return [a for inv in reversed(inverse) for a in inv] if ok else None

    def _from_plan(self, rule, i: int, action, d, axis: str | None) -> list[Action] | None:
        """The inverse from the forward plan: the actions' own `inverse`, the same for every
        tensor of the rule."""
        got = self._input(rule, i, action, d.needs, dtype_only=d.dtype_only)
        if got is None:
            return None
        texts: dict[tuple[str, ...], list[Action]] = {}
        for planned, shapes, kinds in self.shapes[rule.span].planned[i]:
            inv = act.inverse(planned, list(shapes), kinds)
            loss = d.loss(planned) if inv is None else None
            if loss is not None:
                message, inv = loss
                if not self.lossy:
                    self._fail(message + " (--lossy inverts it anyway and reports the loss)", action.span)
                    return None
                loss = f"{Path(action.span.file).name}:{action.span.line}: {message}"
                if loss not in self.losses:
                    self.losses.append(loss)
            written = None if inv is None else [act.REGISTRY[a.name].written(a, axis, action.span) for a in inv]
            if written is None or None in written:
                self._fail(f"{action.name}() has no inverse one rule can state for these tensors "
                           "(their shapes differ in more than one dimension)", action.span)
                return None
            texts.setdefault(tuple(write.action(a) for a in written), written)
        if len(texts) != 1:
            self._fail(f"{action.name}() would be undone differently for different tensors of this rule "
                       f"({' / '.join(' '.join(t) for t in sorted(texts)[:3])}); split the rule", action.span)
            return None
        return next(iter(texts.values()))


# ------------------------------------------------------------------ helpers

def _axis_of(p, merge_axes: list[Capture]) -> str | None:
    """The capture a merge consumes: its over=, or the only one there is."""
    if p.get("over"):
        return p["over"]
    return merge_axes[0].name if len(merge_axes) == 1 else None


def _patterns(rule) -> str:
    return " | ".join(p.text for p in rule.patterns)


def _line(text: str, line: int) -> str:
    lines = text.splitlines()
    return lines[line - 1].strip() if 0 < line <= len(lines) else ""


def _linear(expr) -> tuple[str, int] | None:
    """`c`, `c + k`, `k + c`, `c - k` (nested): (c, total k), else None."""
    if isinstance(expr, Ref):
        return expr.name, 0
    if isinstance(expr, BinOp) and expr.op in ("+", "-"):
        left = _linear(expr.left)
        if left is not None and isinstance(expr.right, Num):
            return left[0], left[1] + (expr.right.value if expr.op == "+" else -expr.right.value)
        right = _linear(expr.right)
        if expr.op == "+" and right is not None and isinstance(expr.left, Num):
            return right[0], right[1] + expr.left.value
    return None


def _refs_in(template: Template) -> set[str]:
    return {name for part in template.parts if isinstance(part, Subst) for name in names(part.expr)}


def _ctype(cap: Capture) -> str:
    return {"int": "int", "multi": "**", "segment": "*"}.get(cap.type) or "|".join(cap.alternatives)
