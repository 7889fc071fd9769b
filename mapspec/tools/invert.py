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

import json
import re

from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

from ..core.quoting import shown

from ..ops import actions as act
from ..ops.base import make
from ..errors import SpecError, SpecErrors, Span, UsageError
from ..lang.formatter import format_text
from ..lang.parser import parse_spec
from ..compile.plan import Plan, Step, TensorInfo, compile_spec
from ..compile.params import Config, bind
from ..lang.rules import (BinOp, Capture, DropRule, Fanout, KeepRule, Lit, Lookup, Num, Pattern, Ref, RenameRule, Spec,
                    Subst, Template, action_text, expr_text)

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
            ambiguous = getattr(exc, "ambiguous", None)
            if ambiguous is not None and ambiguous[1].file == self.spec.file:
                # two forward rules write keys of one name back: the layouts they stand for
                other = self.forward_rule(ambiguous[1])
                raise type(exc)(f"the inverses of this rule and of the rule at {Path(other.file).name}:{other.line} "
                                f"both read '{ambiguous[0]}': the keys do not decide which to write back. State "
                                "the key that tells the layouts apart on one of them (`reverse -> ... where KEY`), "
                                "or mark one `reverse none`", fwd) from None
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
                lossy: bool = False, prefer: Mapping[int | None, int] | None = None,
                matched: Mapping[int, int] | None = None) -> Inversion:
    """The inverse of `spec`. `forward` (the forward checkpoint's tensors, or its plan) supplies
    what the spec alone does not say; without it, rules that need it are refused. Parameters
    are bound first (`params`, `config`, as for apply): the inverse states their values.
    `prefer` chooses which fallback alternative (`A | B -> T`) the inverse writes back, counted
    from 1: {line: n} for the rule starting on that line of the spec, {None: n} for every other
    such rule (see `parse_prefer`). It overrides what the forward checkpoint used; a rule's own
    `reverse` clause overrides it. `matched` ({line: n}, from a file's provenance record) says
    which alternative a forward conversion by this spec matched, as the forward checkpoint
    would: it is written back where a reverse clause only chooses among the alternatives."""
    if not isinstance(spec, Spec):
        spec = parse_spec(spec)
    if forward is not None and not isinstance(forward, Plan):
        forward = compile_spec(spec, forward, params=params, config=config)
    bound, bindings = bind(spec, params, config) if forward is None else bind(
        spec, {b.name: b.value for b in forward.params if b.origin != "let"})
    return _Inverter(bound, forward, lossy, bindings, dict(prefer or {}), dict(matched or {})).run()


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
    def __init__(self, spec: Spec, plan: Plan | None, lossy: bool, bindings=(), prefer=None, matched=None):
        self.spec = spec
        self.prefer = prefer or {}
        self.matched = matched or {}  # line -> the alternative a forward conversion matched (provenance)
        self._choices: dict[Span, Pattern | None] = {}
        self.bindings = bindings
        self.plan = plan
        self.lossy = lossy
        self.tables = {t.name: t.mapping() for t in spec.tables}
        self.used_tables: set[str] = set()
        self.new_tables: dict[str, dict[str, str]] = {}
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
        blocks: list[tuple[Span, list[str]]] = []
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
            head = ("optional " if rule.optional else "") + ("otherwise " if rule.otherwise else "")
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
                pats = [] if rule.otherwise else [p.text for p in rule.patterns]
                keys = "keep" if rule.otherwise else "keep " + " | ".join(p.text for p in rule.patterns)
                lines = [head + keys + "".join(f" then {a}" for a in actions)]
            elif rule.is_copy:
                if rule.if_absent and self.plan is None:
                    continue  # the ordinary rule for the same target inverts it
                # The copy's target holds the same values as its source's own output: the
                # inverse leaves it out (the round trip checks they are equal).
                pattern, _ = self._pattern_from(rule.target, rule.sources[0].captures())
                if pattern is None:
                    continue
                pats, lines = [pattern], [f"drop {pattern}"]
            else:
                inv = self._rename(rule)
                if inv is None:
                    continue
                pats = [inv[0]]
                lines = [head + inv[0] + " -> " + inv[1] + "".join(f" then {a}" for a in inv[2])]
                if inv[3] is not None:
                    lines.append(f"    where {inv[3]}")
            conditional = isinstance(rule, RenameRule) and rule.reverse is not None and rule.reverse.where is not None
            for p in pats if not conditional else ():  # a `where` inverse takes its keys from the others
                if p in seen_patterns:
                    self._fail(f"the inverse of this rule reads the same keys ({p}) as the inverse of the rule "
                               f"at line {seen_patterns[p].line}: the keys do not decide which to write back. "
                               "State the key that tells the layouts apart on one of them (`reverse -> ... where "
                               "KEY`), or mark one `reverse none`", rule.span)
                seen_patterns.setdefault(p, rule.span)
            blocks.append((rule.span, lines))
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

    def _emit(self, blocks: list[tuple[Span, list[str]]]) -> Inversion:
        h = self.spec.header
        name = Path(self.spec.file).name
        out = [f"# The inverse of {name}, derived by `mapspec invert`."]
        if self.bindings:
            out.append("# with " + ", ".join(f"{b.name} = {b.value}" for b in self.bindings))
        out += [f"# warning: {loss}" for loss in self.losses]  # what the inverse does not restore, in its text
        out.append("mapspec 1")
        if h.source or h.target:
            out.append(f"from {h.target or 'unknown'} to {h.source or 'unknown'}")
        if h.ranks_side:  # the rank files are on the other side of the inverse
            other = "target" if h.ranks_side == "source" else "source"
            bound = {b.name: b.value for b in self.bindings}

            def put(m):  # the parameters' values in the file names: the inverse has no parameters
                if m[1] in bound:
                    v = bound[m[1]]
                    return f"{v:0{int(m[2])}d}" if m[2] and isinstance(v, int) else str(v)
                count = f" of {bound.get(m[3], m[3])}" if m[3] else ""
                return "{" + m[1] + (f":{m[2]}" if m[2] else "") + count + "}"
            names = [re.sub(r"\{([A-Za-z_][A-Za-z0-9_]*)(?::([0-9]{1,2}))?(?:[ \t]+of[ \t]+(\w+))?\}", put, t)
                     for t in h.ranks]
            line = f"ranks {other} " + " | ".join(json.dumps(t) for t in names)
            if h.ranks_under:
                line += f" under {h.ranks_under}"
                if h.ranks_entries:
                    line += " {\n" + "".join(
                        f"  {e.key} = " + re.sub(r"\{([A-Za-z_][A-Za-z0-9_]*)\}",
                                                 lambda m: str(bound.get(m[1], m[0])), e.value) + "\n"
                        for e in h.ranks_entries) + "}"
            out.append(line)
        for t in self.spec.tables:
            if t.name in self.used_tables:
                out += ["", f"table {t.name} {{"] + [f"  {e.key} = {e.value}" for e in t.entries] + ["}"]
        for tname, mapping in self.new_tables.items():
            out += ["", f"table {tname} {{"] + [f"  {k} = {v}" for k, v in mapping.items()] + ["}"]
        out.append("")
        for span, lines in blocks:
            out.append(f"# {name}:{span.line}")
            out.extend(lines)
        text = format_text("\n".join(out) + "\n")
        inverse_name = f"{self.spec.file} (inverted)"
        inverse = parse_spec(text=text, name=inverse_name)
        # The formatter keeps rule order, so the i-th inverse rule comes from the i-th block.
        origins = {r.span: span for r, (span, _) in zip(inverse.rules, blocks)}
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
    def _rename(self, rule: RenameRule):
        n_problems = len(self.problems)
        source = self._choose_source(rule)
        if source is None:
            return None
        caps = source.captures()
        pattern, values = self._pattern_from(rule.target, caps, rule.reverse is not None
                                             and rule.reverse.target is not None)
        merge_axes = self._merge_axes(rule, source)
        reported = _refs_in(rule.target) - set(values)  # their arithmetic or table was refused above
        template = self._template_from(source if self._forward_choice(rule) is not None else
                                       rule.reverse.target if rule.reverse is not None else source,
                                       values, merge_axes, reported)
        if rule.reverse is not None and rule.reverse.actions is not None:
            actions = [action_text(a) for a in rule.reverse.actions]
        else:
            actions = self._actions(rule, merge_axes)
        where = None
        if rule.reverse is not None and rule.reverse.where is not None:  # the inverse applies where KEY is
            where = self._template_from(rule.reverse.where, values, [], reported)
            if where is None:
                return None
        if len(self.problems) > n_problems or pattern is None or template is None or actions is None:
            return None
        return pattern, template, actions, where

    def _forward_choice(self, rule: RenameRule) -> Pattern | None:
        """The fallback alternative the forward checkpoint used, where the rule's reverse clause
        only chooses among its alternatives (names one of them, no actions or condition): what
        the forward direction matched is written back (`verify`, a file's provenance record),
        the clause's choice is the default for a file that does not tell, and said."""
        if rule.span not in self._choices:
            self._choices[rule.span] = self._find_forward_choice(rule)
        return self._choices[rule.span]

    def _find_forward_choice(self, rule: RenameRule) -> Pattern | None:
        rev = rule.reverse
        if len(rule.sources) < 2 or rev is None or rev.target is None or rev.actions is not None \
                or rev.where is not None or not all(isinstance(x, Lit) for x in rev.target.parts):
            return None
        named = "".join(x.text for x in rev.target.parts)  # parameters bound: `arg:{fc}_weight` is text now
        if not any(all(isinstance(x, Lit) for x in p.parts) and "".join(x.text for x in p.parts) == named
                   for p in rule.sources):
            return None
        own = rule.span.file == self.spec.file
        preferred = self.prefer.get(rule.span.line if own else -1, self.prefer.get(None))
        if preferred is not None and preferred <= len(rule.sources):
            return rule.sources[preferred - 1]  # --prefer-alternative: the user's word first
        used = self.shapes[rule.span].alternatives if rule.span in self.shapes else set()
        n = self.matched.get(rule.span.line) if own else None
        if not used and n is not None and n <= len(rule.sources):
            used = {n - 1}
        if len(used) == 1:
            return rule.sources[next(iter(used))]
        if not used:  # nothing tells what the forward direction matched: the default, said
            params = [b.name for b in self.bindings if "{" + b.name + "}" in rev.target.text and b.origin == "default"]
            decide = (f"-p {params[0]}=... decides" if params else "--prefer-alternative N decides")
            self.losses.append(f"{Path(rule.span.file).name}:{rule.span.line}: writes back {named}, the reverse "
                               f"clause's default among {' | '.join(p.text for p in rule.sources)}: nothing says "
                               f"which the forward conversion matched ({decide}; a file mapspec wrote records it)")
        return None

    def _choose_source(self, rule: RenameRule) -> Pattern | None:
        if len(rule.sources) == 1:
            return rule.sources[0]
        if rule.reverse is not None:
            # the reverse clause names the key (captures as in the first), unless it only chose
            # among the alternatives and the forward checkpoint shows which one it used
            return self._forward_choice(rule) or rule.sources[0]
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
    def _pattern_from(self, target: Template, caps: dict[str, Capture], stated: bool = False):
        """The inverse's pattern, and for each forward capture the expression of its value.
        `stated`: a `reverse ->` clause writes the key back, so a number the inverse cannot
        read back is matched as any integer (the clause computes what it needs from named ones)."""
        parts: list[str] = []
        values: dict[str, str] = {}
        self._divmod_pairs = _divmod_pairs(target)
        ok = True
        for part in target.parts:
            if isinstance(part, Lit):
                parts.append(_quote(part.text))
            elif isinstance(part, Fanout):
                parts.append("{" + part.capture.name + ":" + _ctype(part.capture) + "}")
            elif stated and part.name is None and not self._invertible(part.expr):
                parts.append("{_" + str(len(parts)) + ":int}")
            elif part.name is not None and not self._invertible(part.expr):
                # `{t=EXPR}`: the inverse captures the number as t; a `reverse ->` clause
                # computes the source's numbers from it
                if not self._bind(part.name, values, part.span):
                    ok = False
                    continue
                values[part.name] = part.name
                parts.append("{" + part.name + ":int}")
            else:
                got = self._invert_expr(part, caps, values)
                if got is None:
                    ok = False
                else:
                    parts.append(got)
                    if part.name is not None:  # the number the pattern captures, by its name too
                        values.setdefault(part.name, got.strip("{}").split(":")[0].split(" in ")[0])
        return ("".join(parts) if ok else None), values

    def _invertible(self, expr) -> bool:
        dm = _divmod(expr)
        return isinstance(expr, (Ref, Lookup)) or _linear(expr) is not None or (
            dm is not None and dm[1] in self._divmod_pairs)

    def _invert_expr(self, part: Subst, caps: dict[str, Capture], values: dict[str, str]) -> str | None:
        expr = part.expr
        if isinstance(expr, Ref):
            cap = caps[expr.name]
            if not self._bind(expr.name, values, part.span):
                return None
            if cap.type == "table":
                self.used_tables.add(cap.table)
            values[expr.name] = expr.name
            return "{" + expr.name + _capture_suffix(cap) + "}"
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
                    self._fail(f"table '{expr.table}' maps both {shown(inverse[v])} and {shown(k)} to {shown(v)}: it is not "
                               "one-to-one, so the inverse cannot tell which to write back", expr.span)
                    return None
                inverse[v] = k
            if not self._bind(name, values, part.span):
                return None
            tname = self._table(expr.table, inverse)
            values[name] = f"{tname}[{name}]"
            return "{" + name + " in " + tname + "}"
        linear = _linear(expr)
        if linear is not None:
            name, sign, offset = linear
            if not self._bind(name, values, part.span):
                return None
            if sign < 0:  # t = k - c: c = k - t, its own inverse
                values[name] = f"{offset}-{name}"
            else:
                values[name] = name if offset == 0 else f"{name}{'-' if offset > 0 else '+'}{abs(offset)}"
            return "{" + name + ":int}"
        dm = _divmod(expr)
        if dm is not None and dm[1] in self._divmod_pairs:
            # {(c+o)//m + dq} and {(c+o)%m + dr} in one template: together they give c back
            kind, name, m, o, d = dm
            pair = self._divmod_pairs[name]
            q, r = f"{name}_div", f"{name}_mod"
            if name not in values:
                c = _sum([f"({q}-{pair['//']})*{m}" if pair["//"] else f"{q}*{m}", r, -pair["%"] - o])
                values[name] = c
            if kind == "//":
                return "{" + q + ":int}"
            return "{" + r + ":" + "|".join(str(d + i) for i in range(m)) + "}"
        self._fail(f"template arithmetic {{{expr_text(expr, sep='')}}} cannot be inverted (only {{c + k}}, "
                   "{k - c}, and {(c+k)//m} with {(c+k)%m} in one template can); state the inverse: name the "
                   f"number in the target ({{t={expr_text(expr, sep='')}}}) and compute the source's from it in "
                   "`reverse -> ...` (e.g. {2*t})", part.span)
        return None

    def _bind(self, name: str, values: dict[str, str], span: Span) -> bool:
        if name in values:
            self._fail(f"{{{name}}} appears twice in the target; the inverse would bind it twice", span)
            return False
        return True

    def _table(self, name: str, inverse: dict[str, str]) -> str:
        for tname, mapping in self.new_tables.items():
            if mapping == inverse and tname.startswith(name + "_r"):
                return tname
        tname = f"{name}_r"
        n = 2
        while tname in self.new_tables or tname in self.tables:
            tname, n = f"{name}_r{n}", n + 1
        self.new_tables[tname] = inverse
        return tname

    # -------------------------------------------------------------- source -> inverse template
    def _template_from(self, node, values: dict[str, str], merge_axes: list[Capture],
                       reported: set[str]) -> str | None:
        axes = {c.name: c for c in merge_axes}
        out: list[str] = []
        ok = True
        for part in node.parts:
            if isinstance(part, Lit):
                out.append(_quote(part.text))
            elif isinstance(part, Capture):
                if part.name is None:
                    self._fail(f"the wildcard {'**' if part.type == 'multi' else '*'} in {node.text} does not "
                               "reach the target, so the inverse cannot write it back; name it and use it in "
                               "the target", part.span)
                    ok = False
                elif part.name in axes:
                    out.append("{" + part.name + ":" + _ctype(part) + "}")
                elif part.name in values:
                    out.append("{" + values[part.name] + "}")
                elif part.name in reported:
                    ok = False
                else:
                    self._fail(f"capture {{{part.name}}} does not reach the target, so the inverse cannot tell "
                               f"which {_ctype(part) if part.type == 'alt' else 'value'} to write back; state "
                               "it with `reverse -> ...`", part.span)
                    ok = False
            elif isinstance(part, Fanout):
                out.append("{" + part.capture.name + ":" + _ctype(part.capture) + "}")
            else:  # a reverse clause's substitution: forward captures -> the inverse's values
                text = self._substitute(part.expr, values)
                if text is None:
                    ok = False
                else:
                    out.append("{" + text + "}")
        return "".join(out) if ok else None

    def _substitute(self, expr, values: dict[str, str]) -> str | None:
        if isinstance(expr, Ref):
            if expr.name not in values:
                self._fail(f"{{{expr.name}}} is not known to the inverse (it does not reach the target as a "
                           "number the inverse can read back); name the target's number (`{t=EXPR}`) and compute "
                           f"{{{expr.name}}} from t here", expr.span)
                return None
            v = values[expr.name]
            return v if v == expr.name or "[" in v else f"({v})"
        if isinstance(expr, Num):
            return str(expr.value)
        if isinstance(expr, Lookup):
            self.used_tables.add(expr.table)
            key = self._substitute(expr.key, values)
            return None if key is None else f"{expr.table}[{key.strip('()')}]"
        left = self._substitute(expr.left, values)
        right = self._substitute(expr.right, values)
        return None if left is None or right is None else f"({left} {expr.op} {right})"

    # -------------------------------------------------------------- actions
    def _actions(self, rule, merge_axes: list[Capture]) -> list[str] | None:
        fanouts = [p.capture.name for p in getattr(rule, "target", None).parts
                   if isinstance(p, Fanout)] if isinstance(rule, RenameRule) else []
        inverse: list[list[str]] = []
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
            if inv is None and known_dtype is not None and d.dtype_only and self.plan is None:
                inv = self._lossy_back(d, p, known_dtype, action)  # from the spec's stated dtype
            inv = [action_text(a) for a in inv] if inv is not None else self._from_plan(rule, i, action, d, axis)
            if inv is None:
                ok = False
            else:
                inverse.append(inv)
            known = d.shape_after(p, known)
            known_dtype = d.dtype_after(p, known_dtype)
        return [a for inv in reversed(inverse) for a in inv] if ok else None

    def _lossy_back(self, d, p, before: str, action) -> list | None:
        """A cast from a dtype the spec states (expect(dtype=)) that loses precision (to
        float16, to Q8_0): refused, or under --lossy cast back and the loss reported."""
        targets = sorted(d.targets(p)) if hasattr(d, "targets") else [p.get("dtype", "?")]
        message = f"cast({'/'.join(targets)}) of {before} tensors loses precision; the inverse cannot restore them"
        if not self.lossy:
            self._fail(message + " (--lossy inverts it anyway and reports the loss)", action.span)
            return []
        text = f"{Path(action.span.file).name}:{action.span.line}: {message}"
        if text not in self.losses:
            self.losses.append(text)
        return [make(d.name, before, span=action.span)]

    def _from_plan(self, rule, i: int, action, d, axis: str | None) -> list[str] | None:
        """The inverse from the forward plan: the actions' own `inverse`, the same for every
        tensor of the rule."""
        got = self._input(rule, i, action, d.needs, dtype_only=d.dtype_only)
        if got is None:
            return None
        texts = set()
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
            texts.add(tuple(action_text(a) for a in written))
        if len(texts) != 1:
            self._fail(f"{action.name}() would be undone differently for different tensors of this rule "
                       f"({' / '.join(' '.join(t) for t in sorted(texts)[:3])}); split the rule", action.span)
            return None
        return list(next(iter(texts)))


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


def _linear(expr) -> tuple[str, int, int] | None:
    """`c`, `c + k`, `k + c`, `c - k`, `k - c` (nested): (c, sign of c, total k) for
    sign * c + k, else None."""
    if isinstance(expr, Ref):
        return expr.name, 1, 0
    if isinstance(expr, BinOp) and expr.op in ("+", "-"):
        left = _linear(expr.left)
        if left is not None and isinstance(expr.right, Num):
            return left[0], left[1], left[2] + (expr.right.value if expr.op == "+" else -expr.right.value)
        right = _linear(expr.right)
        if right is not None and isinstance(expr.left, Num):
            if expr.op == "+":
                return right[0], right[1], right[2] + expr.left.value
            return right[0], -right[1], expr.left.value - right[2]
    return None


def _divmod(expr) -> tuple[str, str, int, int, int] | None:
    """`(c + o) // m + d` or `(c + o) % m + d` (m > 0, c with sign +): (op, c, m, o, d), else None."""
    d = 0
    if isinstance(expr, BinOp) and expr.op in ("+", "-") and isinstance(expr.right, Num) \
            and isinstance(expr.left, BinOp) and expr.left.op in ("//", "%"):
        d = expr.right.value if expr.op == "+" else -expr.right.value
        expr = expr.left
    if not (isinstance(expr, BinOp) and expr.op in ("//", "%") and isinstance(expr.right, Num)
            and expr.right.value > 0):
        return None
    inner = _linear(expr.left)
    if inner is None or inner[1] != 1:
        return None
    return expr.op, inner[0], expr.right.value, inner[2], d


def _divmod_pairs(target: Template) -> dict[str, dict[str, int]]:
    """Captures that appear in the target exactly as one `(c+o)//m + dq` and one `(c+o)%m + dr`
    with the same o and m (and nowhere else): c -> {"//": dq, "%": dr}."""
    found: dict[str, list] = {}
    uses: dict[str, int] = {}
    for part in target.parts:
        if isinstance(part, Subst):
            for name in _expr_refs(part.expr):
                uses[name] = uses.get(name, 0) + 1
            dm = _divmod(part.expr)
            if dm is not None:
                found.setdefault(dm[1], []).append(dm)
    out = {}
    for name, dms in found.items():
        if len(dms) == 2 and uses.get(name) == 2 and {x[0] for x in dms} == {"//", "%"} \
                and len({(x[2], x[3]) for x in dms}) == 1:
            out[name] = {x[0]: x[4] for x in dms}
    return out


def _expr_refs(expr) -> list[str]:
    if isinstance(expr, Ref):
        return [expr.name]
    if isinstance(expr, BinOp):
        return _expr_refs(expr.left) + _expr_refs(expr.right)
    if isinstance(expr, Lookup):
        return _expr_refs(expr.key)
    return []


def _sum(terms: list) -> str:
    """`a + b - 3` from terms (text, or an int that is left out when 0)."""
    out = ""
    for t in terms:
        if isinstance(t, int):
            if t:
                out += f"{'+' if t > 0 else '-'}{abs(t)}"
        else:
            out += ("+" if out else "") + t
    return out


def _refs_in(template: Template) -> set[str]:
    out: set[str] = set()

    def walk(e):
        if isinstance(e, Ref):
            out.add(e.name)
        elif isinstance(e, BinOp):
            walk(e.left)
            walk(e.right)
        elif isinstance(e, Lookup):
            walk(e.key)

    for part in template.parts:
        if isinstance(part, Subst):
            walk(part.expr)
    return out


def _capture_suffix(cap: Capture) -> str:
    if cap.type == "segment":
        return ""
    if cap.type == "table":
        return f" in {cap.table}"
    return ":" + _ctype(cap)


def _ctype(cap: Capture) -> str:
    return {"int": "int", "multi": "**", "segment": "*"}.get(cap.type) or "|".join(cap.alternatives)


def _quote(text: str) -> str:
    import re

    return text if re.fullmatch(r"[A-Za-z0-9_.\/:()\-]*", text) and "->" not in text else '"' + text.replace(
        "\\", "\\\\").replace('"', '\\"') + '"'
