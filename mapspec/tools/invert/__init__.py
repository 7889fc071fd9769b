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

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

from ...compile.params import Config, bind
from ...compile.plan import Plan, TensorInfo, compile_spec
from ...errors import SpecError, SpecErrors, Span, UsageError
from ...lang import text as write
from ...lang.parser import parse_spec
from ...lang.rules import Capture, DropRule, Header, KeepRule, Lit, Pattern, RenameRule, Spec, Table, TableEntry
from ...ops import actions as act
from .actions import Undo
from .facts import Facts
from .keys import Keys, refs_in


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
    """The inversion of one spec, rule by rule: keys by `Keys`, actions by `Undo`, what the
    forward plan says by `Facts`; the inverse rules written by the spec writer."""

    def __init__(self, spec: Spec, plan: Plan | None, lossy: bool, bindings=(), prefer=None, matched=None):
        self.spec = spec
        self.prefer = prefer or {}
        self.matched = matched or {}  # line -> the alternative a forward conversion matched (provenance)
        self._choices: dict[Span, Pattern | None] = {}
        self.bindings = bindings
        self.plan = plan
        self.lossy = lossy
        self.problems: list[SpecError] = []
        self.losses: list[str] = []
        self.facts = Facts(spec, plan, self._fail)
        self.keys = Keys(self.facts.tables, self._fail)
        self.undo = Undo(self.facts, self.facts.tables, lossy, self.losses, self._fail, plan is None)

    def _fail(self, message: str, span: Span | None) -> None:
        self.problems.append(SpecError(message, span))

    def run(self) -> Inversion:
        blocks: list[tuple[Span, object]] = []  # (forward rule, the inverse rule made from it)
        seen_patterns: dict[str, Span] = {}
        for rule in self.spec.rules:
            if self.plan is not None and rule.span not in self.facts.used_rules:
                continue  # nothing of the forward checkpoint went through it: nothing to write back
            if isinstance(rule, DropRule):
                keys = self.facts.dropped.get(rule.span, [])
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
                actions = self.undo.actions(rule, [])
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
                pattern, _ = self.keys.pattern_from(rule.target, rule.sources[0].captures(), rule.span)
                if pattern is None:
                    continue
                made = DropRule(patterns=(pattern,), span=rule.span)
                pats = [pattern]
            else:
                made = self._rename(rule)
                if made is None:
                    continue
                pats = list(made.sources)
            conditional = isinstance(rule, RenameRule) and rule.reverse is not None and rule.reverse.where is not None
            for p in (write.pattern(p.parts) for p in pats if not conditional):  # a `where` inverse takes its keys from the others
                if p in seen_patterns:
                    self._fail(f"the inverse of this rule reads the same keys ({p}) as the inverse of the rule "
                               f"at line {seen_patterns[p].line}: the keys do not decide which to write back. "
                               "State the key that tells the layouts apart on one of them (`reverse -> ... where "
                               "KEY`), or mark one `reverse none`", rule.span)
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
        if h.ranks_side:
            header = header.model_copy(update=self._ranks(h))
        tables = [t for t in self.spec.tables if t.name in self.keys.used_tables]
        tables += [Table(name=tname, entries=tuple(TableEntry(key=k, value=v, span=span) for k, v in mapping.items()),
                         span=span) for tname, (mapping, span) in self.keys.new_tables.items()]
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

    def _ranks(self, h: Header) -> dict:
        """The forward header's `ranks`, for the inverse: the rank files are on its other side,
        and the parameters' values are in their names (the inverse has no parameters)."""
        bound = {b.name: b.value for b in self.bindings}

        def put(m):
            if m[1] in bound:
                v = bound[m[1]]
                return f"{v:0{int(m[2])}d}" if m[2] and isinstance(v, int) else str(v)
            count = f" of {bound.get(m[3], m[3])}" if m[3] else ""
            return "{" + m[1] + (f":{m[2]}" if m[2] else "") + count + "}"

        names = [re.sub(r"\{([A-Za-z_][A-Za-z0-9_]*)(?::([0-9]{1,2}))?(?:[ \t]+of[ \t]+(\w+))?\}", put, t)
                 for t in h.ranks]
        entries = tuple(e.model_copy(update={"value": re.sub(r"\{([A-Za-z_][A-Za-z0-9_]*)\}",
                                                             lambda m: str(bound.get(m[1], m[0])), e.value)})
                        for e in h.ranks_entries)
        return {"ranks_side": "target" if h.ranks_side == "source" else "source", "ranks": tuple(names),
                "ranks_under": h.ranks_under, "ranks_entries": entries}

    def _check_fallback(self, inverse: Spec) -> None:
        """What the forward catch-all wrote must reach the inverse's catch-all, not a rule
        that would write it back under another name."""
        fallback = next((r for r in self.spec.rules if r.otherwise), None)
        if self.plan is None or fallback is None:
            return
        from ...compile.checks import patterns_of
        from ...compile.matcher import Ambiguous, Entry, Matcher

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

    def _rename(self, rule: RenameRule) -> RenameRule | None:
        n_problems = len(self.problems)
        source = self._choose_source(rule)
        if source is None:
            return None
        caps = source.captures()
        stated = rule.reverse is not None and rule.reverse.target is not None
        pattern, values = self.keys.pattern_from(rule.target, caps, rule.span, stated)
        merge_axes = self._merge_axes(rule, source)
        reported = refs_in(rule.target) - set(values)  # their arithmetic or table was refused above
        template = self.keys.template_from(source if self._forward_choice(rule) is not None else
                                           rule.reverse.target if rule.reverse is not None else source,
                                           values, merge_axes, reported)
        if rule.reverse is not None and rule.reverse.actions is not None:
            actions = list(rule.reverse.actions)
        else:
            actions = self.undo.actions(rule, merge_axes)
        where = None
        if rule.reverse is not None and rule.reverse.where is not None:  # the inverse applies where KEY is
            where = self.keys.template_from(rule.reverse.where, values, [], reported)
            if where is None:
                return None
        if len(self.problems) > n_problems or pattern is None or template is None or actions is None:
            return None
        return RenameRule(sources=(pattern,), target=template, actions=tuple(actions), where=where, span=rule.span,
                          otherwise=rule.otherwise, optional=rule.optional)

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
        preferred = self._preferred(rule)
        if preferred is not None and preferred <= len(rule.sources):
            return rule.sources[preferred - 1]  # --prefer-alternative: the user's word first
        used = self.facts.alternatives(rule)
        n = self.matched.get(rule.span.line) if rule.span.file == self.spec.file else None
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

    def _preferred(self, rule: RenameRule) -> int | None:
        """The alternative --prefer-alternative chooses for a rule (LINE:N names a line of the
        spec itself, not of an include)."""
        own = rule.span.file == self.spec.file
        return self.prefer.get(rule.span.line if own else -1, self.prefer.get(None))

    def _choose_source(self, rule: RenameRule) -> Pattern | None:
        if len(rule.sources) == 1:
            return rule.sources[0]
        if rule.reverse is not None:
            # the reverse clause names the key (captures as in the first), unless it only chose
            # among the alternatives and the forward checkpoint shows which one it used
            return self._forward_choice(rule) or rule.sources[0]
        n = self._preferred(rule)
        if n is not None:
            if n > len(rule.sources):
                self._fail(f"--prefer-alternative {n}: this rule has only {len(rule.sources)} alternatives",
                           rule.span)
                return None
            return rule.sources[n - 1]
        used = self.facts.alternatives(rule)
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
        used = refs_in(rule.target)
        return [c for c in source.parts if isinstance(c, Capture) and c.name and c.name not in used]


def _patterns(rule) -> str:
    return " | ".join(p.text for p in rule.patterns)


def _line(text: str, line: int) -> str:
    lines = text.splitlines()
    return lines[line - 1].strip() if 0 < line <= len(lines) else ""
