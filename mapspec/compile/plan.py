"""Compile a spec against a checkpoint's key list into a frozen `Plan`.

Only names, shapes and dtypes are used: every source key is matched by exactly one rule,
every output is produced once, and every output's shape and dtype is known before a single
tensor is read.
"""

from __future__ import annotations

import itertools
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, NamedTuple

from ..core.quoting import clip, shown
from ..ops import actions as act
from . import fit as fitting
from ..ops.actions import PlannedAction
from .checks import axes_of, check_bound, patterns_of
from ..errors import ConversionError, PlanError, Span, SpecError
from .fit import TargetReport
from .matcher import Ambiguous, Entry, Matcher
from ..core.modelconfig import ConfigPatch
from ..core.nogc import without_gc
from .params import Binding, Config, bind_all, bind_meta, raise_all
from ..lang.exprs import fold, names as expr_names
from ..lang.rules import BinOp, Capture, DropRule, Fanout, Lit, Lookup, Neg, Num, Ref, RenameRule, Spec, Subst
from ..lang.text import rule_text
from ..core.tensorinfo import TensorInfo  # re-exported: the plan speaks in TensorInfo

# The dtypes a model's config can name as its dtype.
MODEL_DTYPES = ("float32", "bfloat16", "float16", "float64")

# A step whose inputs are this large has them read by a worker thread while the step before
# runs (executor.execute); below it, handing the read over costs more than it saves.
READ_AHEAD_BYTES = 1 << 20


class UnusedRule(NamedTuple):
    """A rule that matched no key: where it is and what it says."""

    rule: Span
    text: str

    def to_json(self) -> dict:
        return {"rule": _where(self.rule), "text": self.text}


class Step(NamedTuple):
    """One output tensor: where it comes from and what happens on the way. (A NamedTuple:
    immutable like the rest of the plan, and cheap to build 100,000 times.)"""

    output: str
    inputs: tuple[str, ...]
    input_infos: tuple[TensorInfo, ...]
    actions: tuple[PlannedAction, ...]
    info: TensorInfo
    rule: Span

    def to_json(self) -> dict:
        return {
            "output": self.output,
            "inputs": list(self.inputs),
            "input_shapes": [list(i.shape) for i in self.input_infos],
            "input_dtypes": [i.dtype for i in self.input_infos],
            "actions": [a.to_json() for a in self.actions],
            "shape": list(self.info.shape),
            "dtype": self.info.dtype,
            "rule": _where(self.rule),
        }


@dataclass(frozen=True)
class Plan:
    spec_file: str
    source_framework: str | None
    target_framework: str | None
    select: str | None
    steps: tuple[Step, ...]
    dropped: tuple[tuple[str, Span], ...]
    unmatched: tuple[str, ...]
    source_count: int
    target_report: "TargetReport | None" = None
    unused: tuple[UnusedRule, ...] = ()  # rules that matched no key
    params: tuple[Binding, ...] = ()
    fallback: Span | None = None  # the `otherwise` rule, if the spec has one
    copied: tuple[str, ...] = ()  # outputs written by `copy` rules (a source read twice)
    # file-level metadata the spec states (`meta`): (key, type or None, value), and
    # (provider, args) for `meta from` entries, in source order (params.bind_meta)
    meta: tuple = ()

    def source_used(self) -> int:
        """How many source tensors went into the outputs."""
        return len({k for s in self.steps for k in s.inputs})

    def outputs(self) -> dict[str, TensorInfo]:
        return {s.output: s.info for s in self.steps}

    def peak_step(self, held: Callable[[Step], int | None] | None = None) -> tuple[int, Step | None]:
        """The most tensor memory one step holds, and that step: its inputs' pages while
        read (released after their last use), plus, when actions run, the result and one
        intermediate, plus the next step's inputs when they are READ_AHEAD_BYTES or more
        (the executor reads them meanwhile). Steps without actions may be copied by the
        kernel and hold nothing, so this is an upper bound; the process adds its
        interpreter (about 100 MiB). `held(step)`, where not None and less, is what a step
        holds instead (a step run in row slices: the slices in flight, `run.rows.held`); the
        same is then counted for it as the step before's read-ahead."""
        own, ahead = [], []
        for s in self.steps:
            ins = sum(i.nbytes for i in s.input_infos)
            whole = ins + (2 * s.info.nbytes if s.actions else 0)
            h = held(s) if held is not None else None
            if h is not None and h < whole:
                own.append(h)
                ahead.append(h)
            else:
                own.append(whole)
                ahead.append(ins if ins >= READ_AHEAD_BYTES else 0)
        best, where = 0, None
        for j, s in enumerate(self.steps):
            n = own[j] + (ahead[j + 1] if j + 1 < len(self.steps) else 0)
            if n > best:
                best, where = n, s
        return best, where

    def config_patch(self) -> ConfigPatch:
        """What the output's `config.json` says differently from the source's: what the
        plan's actions declare (a dequantize removes `quantization_config`, a quantize
        writes it), and, when a step changes a dtype, the model's dtype: the floating dtype
        most of the output's unquantized bytes are in."""
        sets: dict[str, Any] = {}
        removes: set[str] = set()
        changed = False
        for step in self.steps:
            changed = changed or any(i.dtype != step.info.dtype for i in step.input_infos)
            for pa in step.actions:
                effect = act.config_effect(pa)
                if effect is None:
                    continue
                new_sets, new_removes = effect
                for key, value in new_sets.items():
                    if sets.get(key, value) != value or key in removes:
                        raise PlanError(f"the rules give config.json two values of {key} "
                                        f"({sets.get(key, 'removed')} and {value})", step.rule)
                    sets[key] = value
                if set(new_removes) & set(sets):
                    raise PlanError(f"one rule removes {sorted(set(new_removes) & set(sets))[0]} from config.json "
                                    "and another writes it", step.rule)
                removes |= set(new_removes)
        dtype = None
        if changed:
            weight: dict[str, int] = {}
            for step in self.steps:
                if step.info.dtype in MODEL_DTYPES:
                    weight[step.info.dtype] = weight.get(step.info.dtype, 0) + step.info.nbytes
            dtype = max(weight, key=lambda d: (weight[d], d)) if weight else None
        return ConfigPatch(sets, frozenset(removes), dtype)

    def to_json(self) -> dict:
        return {
            "format": "mapspec-plan/1",
            "spec": Path(self.spec_file).name,
            "from": self.source_framework,
            "to": self.target_framework,
            "select": self.select,
            **({"params": {b.name: b.to_json() for b in self.params}} if self.params else {}),
            **({"otherwise": _where(self.fallback)} if self.fallback else {}),
            **({"copied": list(self.copied)} if self.copied else {}),
            **({"unused_rules": [u.to_json() for u in self.unused]} if self.unused else {}),
            "steps": [s.to_json() for s in self.steps],
            "dropped": [{"key": k, "rule": _where(s)} for k, s in self.dropped],
            "unmatched": list(self.unmatched),
            "summary": {
                "source_tensors": self.source_count,
                "outputs": len(self.steps),
                "dropped": len(self.dropped),
                "unmatched": len(self.unmatched),
            },
        }


def _where(span: Span) -> str:
    return f"{Path(span.file).name}:{span.line}:{span.column}"


# ------------------------------------------------------------------ compiling

@dataclass
class _Group:
    """The source keys of one multi-tensor rule that render the same target (up to the
    target's fan-out captures): planned together once every key has been seen."""

    renderer: "_Renderer"
    members: list[tuple[str, dict[str, str]]] = field(default_factory=list)  # (key, captures)


@without_gc
def compile_spec(
    spec: Spec,
    keys: Mapping[str, TensorInfo],
    *,
    params: Mapping[str, Any] | None = None,
    config: Config = None,
    target: Mapping[str, TensorInfo] | None = None,
    strict: bool = True,
    fit: str = "strict",
    drop: tuple[str, ...] = (),
    strict_rules: bool = False,
) -> Plan:
    """Plan the conversion of a checkpoint whose tensors are `keys` (name -> shape, dtype).

    `params` (name -> value, as `-p` gives them) and `config` (a model configuration: a JSON
    file or a mapping) give the spec's parameters their values. With a `target`, `fit` says
    how the outputs must meet it: "strict" (same keys and shapes), "shape" (keep only outputs
    whose name and shape the target has), or "drop" (leave out outputs matching the `drop`
    globs; the rest must fit, and what the target then misses must match the globs too). A rule
    that matches no key is listed in `Plan.unused`, or is an error with `strict_rules`."""
    written = spec  # as the author wrote it (parameters by name): how its rules are quoted back
    spec, bindings, errors, tainted = bind_all(spec, params, config)
    meta, meta_errors = bind_meta(spec, bindings) if spec.meta else ((), [])
    check_bound(spec, errors + meta_errors, tainted)
    tables = {t.name: t.mapping() for t in spec.tables}
    table_keys = {n: tuple(m) for n, m in tables.items()}
    ordinary, copies, fallback, conditional = [], [], [], []
    for ri, rule in enumerate(spec.rules):
        entries = [Entry(ri, ai, p) for ai, p in enumerate(patterns_of(rule))]
        if getattr(rule, "is_copy", False):
            copies.append((ri, Matcher(entries, table_keys)))
        elif getattr(rule, "where", None) is not None or any(p.conditions() for p in patterns_of(rule)):
            where = getattr(rule, "where", None)
            conditional.append((ri, Matcher(entries, table_keys), where and _Renderer(
                rule.model_copy(update={"target": where, "actions": ()}), tables)))
        elif rule.otherwise:
            fallback.extend(entries)
        else:
            ordinary.extend(entries)
    matcher = Matcher(ordinary, table_keys)
    otherwise = Matcher(fallback, table_keys).match if fallback else None
    renderers = _Renderers(spec.rules, tables, _rank_universe(spec, keys, bindings))

    dropped: list[tuple[str, Span]] = []
    unmatched: list[str] = []
    produced: dict[Any, Step | _Group] = {}  # output (or group) -> its step; insertion order is plan order
    used: set[int] = {ri for ri, _ in copies}  # a copy that matches nothing is an error of its own
    failed: dict[int, PlanError] = {}  # a rule's first shape error; its other keys are not planned again
    match = matcher.match
    for key in keys:
        try:
            hit = _conditional(key, conditional, keys, spec, match) if conditional else None
            if hit is None:
                hit = match(key)
        except Ambiguous as amb:
            a = spec.rules[amb.first.rule]
            err = PlanError(f"key {shown(key)} is matched by this rule and by the rule at "
                            f"{_where(a.span)} ({amb.first.pattern.text}); make the patterns disjoint",
                            amb.second.pattern.span)
            err.ambiguous = (key, a.span)  # for a caller that explains it in its own terms (an inverse)
            raise err from None
        if hit is None and otherwise is not None:
            hit = otherwise(key)
        if hit is None:
            unmatched.append(key)
            continue
        entry, caps = hit
        used.add(entry.rule)
        if entry.rule in failed:
            continue
        renderer = renderers[entry.rule]
        if renderer is None:
            rule = spec.rules[entry.rule]
            if isinstance(rule, DropRule):
                dropped.append((key, rule.span))
                continue
            if key in produced:  # keep
                raise _duplicate(key, produced[key], key, rule)
            try:
                produced[key] = _unary_step(key, key, keys[key], rule)
            except PlanError as exc:  # reported with every other rule's problems below
                failed[entry.rule] = exc
            continue
        if renderer.simple_step:
            out = renderer.render(key, caps)
            prev = produced.get(out)
            if prev is not None:
                raise _duplicate(out, prev, key, renderer.rule)
            try:
                produced[out] = renderer.step(out, key, keys[key])
            except PlanError as exc:  # reported with every other rule's problems below
                failed[entry.rule] = exc
            continue
        gid = (entry.rule, renderer.group_key(caps))
        group = produced.get(gid)
        if group is None:
            group = produced[gid] = _Group(renderer)
        group.members.append((key, caps))

    if unmatched and strict:
        missing = {k: i for k, i in target.items() if k not in produced} if target is not None else {}
        raise _coverage_error(unmatched, spec, matcher, table_keys, keys, missing)

    problems: list[SpecError] = list(failed.values())  # every rule's, group's and copy's, reported together
    steps: dict[str, Step] = {}
    for item in produced.values():
        try:
            new = [item] if isinstance(item, Step) else item.renderer.plan_group(item.members, keys)
            for step in new:
                if step.output in steps:
                    raise _duplicate(step.output, steps[step.output], step.inputs[0], item.renderer.rule
                                     if isinstance(item, _Group) else _rule_at(spec, step.rule))
                steps[step.output] = step
        except PlanError as exc:
            problems.append(exc)
    copied: list[str] = []
    for ri, copy_matcher in copies:
        try:
            copied += _plan_copies(renderers[ri], copy_matcher, keys, set(unmatched), steps)
        except PlanError as exc:
            problems.append(exc)
    raise_all([_naming_params(exc, written, bindings) for exc in problems])
    # A rule whose target a `copy ... if absent` wrote instead (lm_head in a tied model) is
    # not unused: the spec says what stands in for it.
    stand_ins = copy_stand_ins(spec, steps.values())
    unused = tuple(UnusedRule(r.span, rule_text(written.rules[i])) for i, r in enumerate(spec.rules)
                   if i not in used and not r.optional and (not stand_ins or r.span not in stand_ins))
    if unused and strict_rules:
        raise PlanError(f"this rule matches no key of the checkpoint ({len(keys)} keys; "
                        "`mapspec inspect --keys` lists them)", unused[0].rule)

    report = None
    out_steps = list(steps.values())
    if target is not None:
        by_name = {st.output: st for st in out_steps}
        roles = {r.span: "copy" if getattr(r, "is_copy", False) else "otherwise" for r in spec.rules
                 if getattr(r, "is_copy", False) or r.otherwise}
        kept, report = fitting.fit({st.output: st.info for st in out_steps}, target, fit, drop,
                                   {st.output: st.rule for st in out_steps}, roles=roles)
        out_steps = [by_name[k] for k in kept]
    return Plan(spec.file, spec.header.source, spec.header.target, spec.header.select, tuple(out_steps),
                tuple(dropped), tuple(unmatched), len(keys), report, unused, bindings,
                next((r.span for r in spec.rules if r.otherwise), None), tuple(copied), tuple(meta))


def _naming_params(exc: SpecError, written: Spec, bindings: tuple[Binding, ...]) -> SpecError:
    """A shape that contradicts an `expect()` written with parameters: the error names the
    parameters of that rule's actions up to it (and what derived ones are derived from), with
    their values and where those came from: a default where the config lacks a key is the
    usual cause (head_dim not stated in params.json, llama_version not given)."""
    if not isinstance(exc, PlanError) or exc.span is None or not bindings:
        return exc
    for rule in written.rules:
        actions = list(getattr(rule, "actions", ()))
        at = next((i for i, a in enumerate(actions) if a.span == exc.span and a.name == "expect"), None)
        if at is not None:
            break
    else:
        return exc
    lets = {d.name: d for d in written.definitions if d.kind == "let"}
    names: list[str] = []

    def add(expr) -> None:
        for n in sorted(expr_names(expr)):
            if n not in names:
                names.append(n)
                if n in lets:
                    add(lets[n].expr)

    for action in [actions[at]] + actions[:at]:
        for v in (*action.args, *(v for _, v in action.kwargs)):
            expr = getattr(v, "expr", None)
            if expr is None and isinstance(getattr(v, "name", None), str):
                expr = Ref(name=v.name, span=v.span)
            if expr is not None:
                add(expr)
    by_name = {b.name: b for b in bindings}
    shown = [f"{n} = {by_name[n].value} ({_origin(by_name[n].origin)})" for n in names if n in by_name]
    if not shown:
        return exc
    return PlanError(f"{exc.message}; the parameters here: {', '.join(shown)}", exc.span, exc._source)


def _origin(origin: str) -> str:
    return {"-p": "from -p", "default": "its default: not in the config", "let": "derived"}.get(
        origin, origin.replace("config ", "config key "))


def alternatives_used(spec: Spec, plan: Plan) -> dict[str, int]:
    """For each rule of `spec`'s own file with fallback alternatives (`A | B -> T`) whose steps
    all came through one of them: its line (as text, a JSON key) -> that alternative, counted
    from 1. What the forward direction matched, for a reverse that writes it back."""
    table_keys = {t.name: tuple(t.mapping()) for t in spec.tables}
    rules = {r.span: r for r in spec.rules if isinstance(r, RenameRule) and len(r.sources) > 1
             and r.span.file == spec.file}
    seen: dict[Span, set[int]] = {}
    matchers: dict[Span, Matcher] = {}
    for step in plan.steps:
        rule = rules.get(step.rule)
        if rule is None:
            continue
        m = matchers.get(rule.span)
        if m is None:
            m = matchers[rule.span] = Matcher([Entry(0, i, p) for i, p in enumerate(rule.sources)], table_keys)
        try:
            hit = m.match(step.inputs[0])
        except Ambiguous:
            hit = None
        if hit is not None:
            seen.setdefault(rule.span, set()).add(hit[0].alternative)
    return {str(span.line): next(iter(used)) + 1 for span, used in seen.items() if len(used) == 1}


def _conditional(key: str, conditional: list, keys: Mapping[str, TensorInfo], spec: Spec, match):
    """The hit of the one rule with a condition that takes `key`, or None: its pattern matches,
    its captures' conditions (`{a:int>0}`) hold and the checkpoint holds the key its `where`
    names. A `where` rule takes the key from rules without one; a rule with only capture
    conditions is an ordinary rule, so another that matches too is the usual ambiguity. Two
    conditional rules that would take it are an error: the keys do not decide between them."""
    hits = []
    for ri, matcher, where in conditional:
        hit = matcher.match(key)
        if hit is None or not all(c.holds(hit[1][c.name]) for c in hit[0].pattern.conditions() if c.name):
            continue
        if where is None or where.render(key, hit[1]) in keys:
            hits.append(hit)
    if len(hits) == 1 and getattr(spec.rules[hits[0][0].rule], "where", None) is None:
        other = match(key)
        if other is not None:
            raise Ambiguous(key, other[0], hits[0][0])
    if len(hits) > 1:
        a, b = (spec.rules[h[0].rule] for h in hits[:2])
        why = (f"the keys their `where` clauses name ({a.where.text}, {b.where.text}) both exist"
               if a.where is not None and b.where is not None else "both their conditions hold")
        raise PlanError(f"key '{key}' is taken by this rule and by the rule at {_where(a.span)}: {why}, so the "
                        "keys do not decide between them; make one condition stricter", b.span)
    return hits[0] if hits else None


def copy_stand_ins(spec: Spec, steps: Iterable[Step]) -> dict[Span, Span]:
    """Rules that produced nothing because the target they name was written by a
    `copy ... if absent` instead: rule span -> the copy's span."""
    copies = {r.span for r in spec.rules if isinstance(r, RenameRule) and r.is_copy and r.if_absent}
    if not copies:  # most specs: no pass over the steps (a million of them hash a Span each)
        return {}
    steps = list(steps)
    producing = {s.rule for s in steps}
    written = [(s.rule, s.output) for s in steps if s.rule in copies]
    out = {}
    for rule in spec.rules:
        if isinstance(rule, RenameRule) and not rule.is_copy and rule.span not in producing and written:
            names = re.compile("".join(re.escape(p.text) if isinstance(p, Lit) else ".+" for p in rule.target.parts))
            by = next((span for span, name in written if names.fullmatch(name)), None)
            if by is not None:
                out[rule.span] = by
    return out


def _rule_at(spec: Spec, span: Span):
    return next(r for r in spec.rules if r.span == span)


def _unary_step(out: str, key: str, info: TensorInfo, rule) -> Step:
    """The step of a one-input, one-output rule: its actions, if any, in a row."""
    if not rule.actions:
        return Step(out, (key,), (info,), (), info, rule.span)
    tensor, planned = act.Typed(tuple(info.shape), info.dtype), []
    for action in rule.actions:
        d, p = act.lookup(action), act.normalize(action)
        (tensor,), resolved = d.outputs(p, [tensor], action)
        planned.append(PlannedAction(action.name, resolved, (tuple(tensor.shape),), tensor.dtype))
    return Step(out, (key,), (info,), tuple(planned), TensorInfo(tuple(tensor.shape), tensor.dtype), rule.span)


def _plan_copies(renderer: "_Renderer", matcher: Matcher, keys: Mapping[str, TensorInfo],
                 unmatched: set[str], steps: dict[str, Step]) -> list[str]:
    """Add the steps of one copy rule; returns their outputs."""
    rule = renderer.rule
    outputs = []
    hits = [(k, h) for k in keys if (h := matcher.match(k)) is not None]
    if not hits:
        raise PlanError(f"copy: no key of the checkpoint matches {rule.sources[0].text}", rule.sources[0].span)
    for key, (entry, caps) in hits:
        if key in unmatched:
            raise PlanError(f"copy: {shown(key)} is not matched by any other rule; a copy is an extra output, "
                            "the key still needs its own rule", rule.span)
        made = ([renderer.step(renderer.render(key, caps), key, keys[key])] if renderer.simple_step
                else renderer.plan_group([(key, caps)], keys))  # a copy fanned out (to every rank, say)
        if rule.if_absent and any(s.output in steps for s in made):
            continue
        for step in made:
            if step.output in steps:
                raise _duplicate(step.output, steps[step.output], key, rule)
            steps[step.output] = step
            outputs.append(step.output)
    return outputs


def _duplicate(out: str, prev, key: str, rule) -> PlanError:
    first = prev.inputs[0] if isinstance(prev, Step) else prev.members[0][0]
    line = prev.rule.line if isinstance(prev, Step) else prev.renderer.rule.span.line
    return PlanError(f"target '{out}' is produced twice: from '{first}' (rule at line {line}) "
                     f"and from {shown(key)}", rule.span)


def _coverage_error(unmatched: list[str], spec: Spec, matcher: Matcher, tables: dict[str, tuple[str, ...]],
                    keys: Mapping[str, TensorInfo], missing: Mapping[str, TensorInfo]) -> ConversionError:
    from .coverage import unmatched_lines

    n = len(unmatched)
    return ConversionError(f"{n} source key{'s are' if n != 1 else ' is'} not matched by any rule "
                           "(add rules, drop them, or use --non-strict)",
                           unmatched_lines(unmatched, spec, matcher, tables, keys, missing))


class _Negative(ArithmeticError):
    pass


def _nonneg(value: int) -> str:
    if value < 0:
        raise _Negative(value)
    return str(value)


class _Tensor(NamedTuple):
    """One tensor of a rule's data while it is planned: where it sits on the merge axes
    still open, its shape and dtype."""

    coords: dict[str, Any]
    shape: tuple[int, ...]
    dtype: str




class _Renderers(dict):
    """rule index -> its `_Renderer` (None for drop and keep rules), made when the rule first
    matches a key: a rule that matches nothing never renders, so costs nothing here."""

    def __init__(self, rules, tables: dict[str, dict[str, str]], ranks: list[list[int]] | None = None):
        super().__init__()
        self.rules, self.tables, self.ranks = rules, tables, ranks
        self.code: dict[str, Any] = {}  # template code -> its compiled maker, shared by rules of one shape

    def __missing__(self, i: int) -> "_Renderer | None":
        rule = self.rules[i]
        made = self[i] = _Renderer(rule, self.tables, self.code) if isinstance(rule, RenameRule) else None
        if made is not None and self.ranks:
            made.rank_axes = _rank_axes(rule, self.ranks)
        return made


def _rank_universe(spec: Spec, keys: Mapping[str, TensorInfo], bindings) -> list[list[int]] | None:
    """With `ranks source`, the keys start with the rank coordinates (`C1/.../KEY`): the values
    each coordinate takes in the whole checkpoint. A merge over a rank then needs every rank
    the checkpoint has, not only up to the largest its own keys show (a key missing from the
    last rank is missing, not a smaller model)."""
    if spec.header.ranks_side != "source":
        return None
    bound = {b.name for b in bindings}
    names: list[str] = []
    for t in spec.header.ranks:
        for m in re.finditer(r"\{([A-Za-z_][A-Za-z0-9_]*)(?::[0-9]{1,2})?(?:[ \t]+of[ \t]+\w+)?\}", t):
            if m[1] not in bound and m[1] not in names:
                names.append(m[1])
    seen: list[set[int]] = [set() for _ in names]
    for key in keys:
        parts = key.split("/", len(names))
        for c, text in enumerate(parts[:len(names)] if len(parts) > len(names) else ()):
            if text.isdigit() and len(text) <= 9:
                seen[c].add(int(text))
    return [sorted(v) for v in seen]


def _rank_axes(rule: RenameRule, ranks: list[list[int]]) -> dict[str, list[int]]:
    """The captures of `rule`'s source that stand for a rank coordinate (a whole leading
    `/`-segment), each with the values the checkpoint has for it."""
    out: dict[str, list[int]] = {}
    segment, start = 0, True
    parts = rule.sources[0].parts
    for j, part in enumerate(parts):
        if segment >= len(ranks):
            break
        if isinstance(part, Lit):
            segment += part.text.count("/")
            start = part.text.endswith("/")
            continue
        after = parts[j + 1] if j + 1 < len(parts) else None
        if (start and isinstance(part, Capture) and part.name and part.type == "int"
                and isinstance(after, Lit) and after.text.startswith("/")):
            out[part.name] = ranks[segment]
        start = False
    return out


class _Renderer:
    """Everything about one rename rule the planner needs: its target as a small compiled
    function per source alternative (so rendering a key costs one call; errors such as a
    missing table entry or a negative index are diagnosed off the fast path by `_diagnose`),
    and the planning of its multi-tensor groups."""

    def __init__(self, rule: RenameRule, tables: dict[str, dict[str, str]], code: dict[str, Any] | None = None):
        self.rule = rule
        self.tables = tables
        self.rank_axes: dict[str, list[int]] = {}  # captures standing for a rank (see _rank_axes)
        self.actions = [(a, act.lookup(a), act.normalize(a)) for a in rule.actions]
        kinds = {d.kind for _, d, _ in self.actions}
        self.fanouts: dict[str, Capture] = {p.capture.name: p.capture for p in rule.target.parts
                                            if isinstance(p, Fanout)}
        self.simple_step = not kinds - {"unary"} and not self.fanouts
        if not self.simple_step:  # what only rules planned in groups (merges, splits) need
            used = set()
            for part in rule.target.parts:
                if isinstance(part, Subst):
                    used |= expr_names(part.expr)
            self.axes: list[Capture] = axes_of(rule)
            self._key_names = sorted(used - set(self.fanouts))
        self._fn = self._compile({} if code is None else code)

    # -------------------------------------------------------------- rendering
    def _compile(self, cache: dict[str, Any]) -> Any:
        """The target as one function of the captures. Its literal text is an argument of the
        generated code, so rules differing only in literals (most rules of a spec) share one
        compiled maker in `cache`."""
        pieces, texts = [], []
        for part in self.rule.target.parts:
            if isinstance(part, Lit):
                pieces.append(f"L{len(texts)}")
                texts.append(part.text)
            elif isinstance(part, Fanout):
                pieces.append(f"F[{part.capture.name!r}]")
            elif isinstance(part.expr, (BinOp, Neg)):
                pieces.append(f"_nonneg({self._code(part.expr, True)})")
            else:
                pieces.append(self._code(part.expr, False))
        src = " + ".join(pieces) if pieces else "''"
        maker = cache.get(src)
        if maker is None:  # our own generated code: names, quoted names and integers only
            args = "".join(f"L{n}, " for n in range(len(texts)))
            maker = cache[src] = eval(f"lambda {args}T, _nonneg: lambda c, F=None: {src}", {})  # noqa: S307
        return maker(*texts, self.tables, _nonneg)

    def _code(self, expr, arith: bool) -> str:
        """Python code for an expression: as an int (`arith`) or as key text."""
        def visit(node, kids: list[tuple[str, str]]) -> tuple[str, str]:  # (as int, as text)
            kind = type(node)
            if kind is Ref:
                ref = f"F[{node.name!r}]" if node.name in self.fanouts else f"c[{node.name!r}]"
                return f"int({ref})", ref
            if kind is Num:
                return repr(node.value), repr(str(node.value))
            if kind is Lookup:
                code = f"T[{node.table!r}][{kids[0][1]}]"
                return code, code
            code = f"(-{kids[0][0]})" if kind is Neg else f"({kids[0][0]} {node.op} {kids[1][0]})"
            return code, f"str({code})"

        return fold(expr, visit)[0 if arith else 1]

    def render(self, key: str, caps: dict[str, str], fan: dict[str, str] | None = None) -> str:
        try:
            return self._fn(caps, fan)
        except (KeyError, ArithmeticError, ValueError):  # ValueError: a number past int()'s 4300 digits
            self._diagnose(key, {**caps, **(fan or {})})
            raise  # pragma: no cover - _diagnose always raises

    def step(self, out: str, key: str, info: TensorInfo) -> Step:
        """The step of a one-input, one-output rule."""
        if not self.actions:  # the common case, 100,000 times: no call further down
            return Step(out, (key,), (info,), (), info, self.rule.span)
        return _unary_step(out, key, info, self.rule)

    def _diagnose(self, key: str, caps: dict[str, str]) -> None:
        values: dict[str, Any] = dict(caps)
        for part in self.rule.target.parts:
            if isinstance(part, Subst):
                try:
                    value = self._eval(part.expr, values, key, part.span)
                    text = str(value)
                except ValueError:  # int() and str() refuse numbers of more than 4300 digits
                    raise PlanError(f"key {shown(key)}: {_too_long(caps)}", part.span) from None
                if isinstance(value, int) and value < 0:
                    raise PlanError(f"template arithmetic gives {clip(text, 40)} for key {shown(key)}", part.span)
        raise PlanError(f"cannot render the target for key {shown(key)}", self.rule.target.span)

    def _eval(self, expr, values, key, span):
        def visit(node, kids: list):
            kind = type(node)
            if kind is Ref:
                return values.get(node.name, "0")
            if kind is Num:
                return node.value
            if kind is Neg:
                return -int(kids[0])
            if kind is Lookup:
                k, table = str(kids[0]), self.tables[node.table]
                if k not in table:
                    raise PlanError(f"table '{node.table}' has no entry {shown(k)} (for key {shown(key)})", node.span)
                return table[k]
            left, right = int(kids[0]), int(kids[1])
            if node.op in ("//", "%") and right == 0:
                raise PlanError(f"division by zero in the template for key {shown(key)}", span)
            return {"+": lambda: left + right, "-": lambda: left - right, "*": lambda: left * right,
                    "//": lambda: left // right, "%": lambda: left % right}[node.op]()

        return fold(expr, visit)

    # -------------------------------------------------------------- multi-tensor groups
    def group_key(self, caps: dict[str, str]) -> tuple:
        """Keys of one group render the same target: the same values of the captures it uses."""
        return tuple(caps.get(n) for n in self._key_names)

    def _value(self, cap: Capture, text: str, key: str):
        if cap.type != "int":
            return text
        try:
            return int(text)
        except ValueError:  # more than 4300 digits
            raise PlanError(f"key {shown(key)}: {_too_long({cap.name: text})}", self.rule.span) from None

    def _rank(self, cap: Capture, value) -> Any:
        """Where a value of a merge axis goes: alternatives and table keys in the order
        written, integers numerically, other text in sorted order."""
        if cap.type == "alt":
            return cap.alternatives.index(value)
        if cap.type == "table":
            return list(self.tables[cap.table]).index(value)
        return value

    def plan_group(self, members: list[tuple[str, dict[str, str]]], keys: Mapping[str, TensorInfo]) -> list[Step]:
        """Plan every output of one group: walk the actions over the grid of its tensors."""
        axes = self.axes
        coords = [{a.name: self._value(a, caps[a.name], key) for a in axes} for key, caps in members]
        order = sorted(range(len(members)), key=lambda i: tuple(self._rank(a, coords[i][a.name]) for a in axes))
        inputs = tuple(members[i][0] for i in order)
        infos = tuple(keys[k] for k in inputs)
        base = members[0][1]
        tensors = [_Tensor(coords[i], tuple(info.shape), info.dtype) for i, info in zip(order, infos)]
        walk = _Walk(self, base, inputs, infos)
        return list(walk.run(0, tensors, (), {}, {}))

    def _preview(self, caps: dict[str, str], fan: dict[str, str] | None = None) -> str:
        """The target as far as it is known (fan-out captures not yet chosen stay {name})."""
        fan = dict(fan or {})
        for name in self.fanouts:
            fan.setdefault(name, "{" + name + "}")
        try:
            return self._fn(caps, fan)
        except (KeyError, ArithmeticError, ValueError):
            return self.rule.target.text


def _outputs(results, k: int) -> list:
    """Output k of every group's inferred outputs."""
    return [outs[k] for outs, _ in results]


class _Walk:
    """The actions of one group's rule applied in order. A merge consumes a merge axis (after
    checking it is complete), a split fixes a fan-out capture: the walk branches there, once
    per piece, and each branch that reaches the end is one output step."""

    def __init__(self, r: _Renderer, base: dict[str, str], inputs: tuple[str, ...], infos: tuple[TensorInfo, ...]):
        self.r, self.base, self.inputs, self.infos = r, base, inputs, infos

    def run(self, i: int, tensors: list[_Tensor], planned: tuple, fan: dict, consumed: dict) -> Iterator[Step]:
        r = self.r
        if i == len(r.actions):
            if len(tensors) != 1:
                left = [a.name for a in r.axes if a.name in tensors[0].coords]
                raise PlanError(f"'{r._preview(self.base, fan)}' has {len(tensors)} inputs left after the last "
                                f"action; merge them with concat() or stack() over "
                                f"{', '.join('{' + n + '}' for n in left)}", r.rule.span)
            out = r.render(self.inputs[0], self.base, fan)
            info = TensorInfo(tensors[0].shape, tensors[0].dtype)
            yield Step(out, self.inputs, self.infos, planned, info, r.rule.span)
            return
        action, d, p = r.actions[i]
        values = consumed
        if d.merges:  # the members of one merge axis in each group, in axis order
            axis = self._axis(action, p, tensors)
            groups = self._complete(axis, tensors, fan, consumed, action)
            values = consumed | {axis.name: self._required(axis, tensors)}
            p = {**p, "over": axis.name}
        else:
            groups = [[j] for j in range(len(tensors))]
        try:
            results = [d.outputs(p, [act.Typed(tensors[j].shape, tensors[j].dtype) for j in g], action) for g in groups]
        except PlanError as exc:
            if not d.names_inputs or exc.span != action.span:
                raise
            # which tensors did not fit each other: their keys, as a missing member is told
            raise PlanError(f"{exc.message}: {', '.join(self.inputs)}", exc.span) from None
        coords = [{k: v for k, v in tensors[g[0]].coords.items() if not d.merges or k != axis.name} for g in groups]
        over = {"over": axis.name} if d.merges else {}
        grouped = None if not d.merges or len(groups) == 1 else groups
        if not d.splits:
            new = [_Tensor(c, outs[0].shape, outs[0].dtype) for c, (outs, _) in zip(coords, results)]
            params = [results[0][1] | over] if d.merges else [res for _, res in results]
            pa = act.planned(action.name, params, _outputs(results, 0), grouped)
            yield from self.run(i + 1, new, planned + (pa,), fan, values)
            return
        name = p.get("into") or next(n for n in r.fanouts if n not in fan)
        cap = r.fanouts[name]
        n = len(results[0][0])
        if any(len(outs) != n for outs, _ in results):
            raise PlanError(f"{action.name}() gives {', '.join(str(len(outs)) for outs, _ in results)} pieces for "
                            "the tensors here; they must agree", action.span)
        if cap.type == "alt" and n != len(cap.alternatives):
            raise PlanError(f"{action.name}() makes {n} outputs here but {{{name}}} names "
                            f"{len(cap.alternatives)} ({', '.join(cap.alternatives)})", action.span)
        names = cap.alternatives if cap.type == "alt" else [str(k) for k in range(n)]
        for k, value in enumerate(names):
            new = [_Tensor(c, outs[k].shape, outs[k].dtype) for c, (outs, _) in zip(coords, results)]
            pa = act.planned(action.name, [d.piece(res, k) | over for _, res in results], _outputs(results, k),
                             grouped)
            yield from self.run(i + 1, new, planned + (pa,), {**fan, name: value}, values)

    def _axis(self, action, p, tensors: list[_Tensor]) -> Capture:
        """The axis a merge consumes (the checks made sure it is open, and the only one
        open when over= is not given)."""
        name = p["over"] if p["over"] is not None else next(iter(tensors[0].coords))
        return next(a for a in self.r.axes if a.name == name)

    def _required(self, axis: Capture, tensors: list[_Tensor]) -> list:
        if axis.name in self.r.rank_axes:  # every rank of the checkpoint
            return list(self.r.rank_axes[axis.name])
        if axis.type == "alt":
            return list(axis.alternatives)
        if axis.type == "table":
            return list(self.r.tables[axis.table])
        present = {t.coords[axis.name] for t in tensors}
        if axis.type == "int":
            return list(range(max(present) + 1))
        return sorted(present)

    def _complete(self, axis: Capture, tensors: list[_Tensor], fan: dict, consumed: dict, action) -> list[list[int]]:
        """The tensors to merge, group by group in axis order. The whole grid of the axes
        still open must be there: every value of each (every alternative, every table key,
        every integer up to the largest seen) with every value of the others."""
        r = self.r
        open_ = [a for a in r.axes if a.name in tensors[0].coords]
        others = [a for a in open_ if a.name != axis.name]
        required = {a.name: self._required(a, tensors) for a in open_}
        where = {tuple(t.coords[a.name] for a in open_): j for j, t in enumerate(tensors)}
        groups, missing = [], []
        for row in itertools.product(*(required[a.name] for a in others)):
            cell = dict(zip((a.name for a in others), row))
            group = []
            for v in required[axis.name]:
                cell[axis.name] = v
                j = where.get(tuple(cell[a.name] for a in open_))
                if j is None:
                    rank = tuple(r._rank(a, cell[a.name]) for a in open_)
                    missing.extend((rank, k) for k in self._keys(cell, consumed))
                else:
                    group.append(j)
            groups.append(group)
        if missing:
            keys = [k for _, k in sorted(missing)]
            values = required[axis.name]
            desc = f"0..{len(values) - 1}" if axis.type == "int" else ", ".join(map(str, values))
            shown = ", ".join(keys[:8]) + (f" and {len(keys) - 8} more" if len(keys) > 8 else "")
            verb = "is" if len(keys) == 1 else "are"
            found = f" (found {', '.join(self.inputs)})" if len(self.inputs) <= 6 else ""
            raise PlanError(f"'{r._preview(self.base, fan)}' merges {{{axis.name}}} = {desc} with "
                            f"{action.name}(), but {shown} {verb} missing{found}", r.rule.span)
        return groups

    def _keys(self, coords: dict, consumed: dict) -> list[str]:
        """The source keys a missing tensor would have come from."""
        names = list(consumed)
        pattern = self.r.rule.sources[0]
        out = []
        for combo in itertools.product(*(consumed[n] for n in names)):
            values = {**self.base, **coords, **dict(zip(names, combo))}
            out.append("".join(p.text if isinstance(p, Lit) else
                               str(values.get(p.name, "{" + str(p.name) + "}")) if p.name else
                               ("*" if p.type == "segment" else "**") for p in pattern.parts))
        return out


def _too_long(caps: Mapping[str, str]) -> str:
    """Why a key's number cannot be computed with: which capture holds how many digits."""
    long = [(n, t) for n, t in caps.items() if isinstance(t, str) and len(t) > 100 and t.lstrip("-").isdigit()]
    held = (f"{{{long[0][0]}}} captures a number of {len(long[0][1]):,} digits" if long
            else "the template's arithmetic gives a number")
    return (f"{held}, more than Python computes with ({sys.get_int_max_str_digits():,} digits); "
            "numbers in keys and templates are bounded by it")
