"""Compile a spec against a checkpoint's key list into a frozen `Plan`.

Only names, shapes and dtypes are used: every source key is matched by exactly one rule,
every output is produced once, and every output's shape and dtype is known before a single
tensor is read.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, NamedTuple

from . import actions as act
from .checks import check_spec
from .errors import ConversionError, PlanError, Span
from . import fit as fitting
from .fit import TargetReport
from .matcher import Ambiguous, Entry, Matcher
from .rules import BinOp, Capture, DropRule, Fanout, Lit, Lookup, Num, Ref, RenameRule, Spec, Subst


@dataclass(frozen=True, slots=True)
class TensorInfo:
    shape: tuple[int, ...]
    dtype: str

    @property
    def nbytes(self) -> int:
        from .dtypes import nbytes

        return nbytes(self.shape, self.dtype)


@dataclass(frozen=True, slots=True)
class PlannedAction:
    name: str
    params: Mapping[str, Any]

    def to_json(self) -> dict:
        return {"name": self.name, "params": dict(self.params)}

    def __str__(self) -> str:
        args = ", ".join(f"{k}={v}" for k, v in self.params.items())
        return f"{self.name}({args})"


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
    unused: tuple[Span, ...] = ()  # rules that matched no key

    def source_used(self) -> int:
        """How many source tensors went into the outputs."""
        return len({k for s in self.steps for k in s.inputs})

    def outputs(self) -> dict[str, TensorInfo]:
        return {s.output: s.info for s in self.steps}

    def to_json(self) -> dict:
        return {
            "format": "mapspec-plan/1",
            "spec": Path(self.spec_file).name,
            "from": self.source_framework,
            "to": self.target_framework,
            "select": self.select,
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
class _Pending:
    rule: RenameRule
    output: str
    renderer: "_Renderer | None"
    inputs: list[tuple[tuple, str]] = field(default_factory=list)  # (order key, source key)


def compile_spec(
    spec: Spec,
    keys: Mapping[str, TensorInfo],
    *,
    target: Mapping[str, TensorInfo] | None = None,
    strict: bool = True,
    fit: str = "strict",
    drop: tuple[str, ...] = (),
    strict_rules: bool = False,
) -> Plan:
    """Plan the conversion of a checkpoint whose tensors are `keys` (name -> shape, dtype).

    With a `target`, `fit` says how the outputs must meet it: "strict" (same keys and shapes),
    "shape" (keep only outputs whose name and shape the target has), or "drop" (leave out
    outputs matching the `drop` globs; the rest must fit, and what the target then misses
    must match the globs too). A rule that matches no key is listed in `Plan.unused`, or is
    an error with `strict_rules`."""
    check_spec(spec)
    tables = {t.name: t.mapping() for t in spec.tables}
    table_keys = {n: tuple(m) for n, m in tables.items()}
    entries = []
    for ri, rule in enumerate(spec.rules):
        pats = rule.sources if isinstance(rule, RenameRule) else rule.patterns
        entries.extend(Entry(ri, ai, p) for ai, p in enumerate(pats))
    matcher = Matcher(entries, table_keys)
    renderers = {i: _Renderer(r, tables) for i, r in enumerate(spec.rules) if isinstance(r, RenameRule)}

    dropped: list[tuple[str, Span]] = []
    unmatched: list[str] = []
    produced: dict[str, Step | _Pending] = {}  # output -> its step; insertion order is plan order
    used: set[int] = set()
    match = matcher.match
    for key in keys:
        try:
            hit = match(key)
        except Ambiguous as amb:
            a = spec.rules[amb.first.rule]
            raise PlanError(f"key '{key}' is matched by this rule and by the rule at "
                            f"{_where(a.span)} ({amb.first.pattern.text}); make the patterns disjoint",
                            amb.second.pattern.span) from None
        if hit is None:
            unmatched.append(key)
            continue
        entry, caps = hit
        used.add(entry.rule)
        renderer = renderers.get(entry.rule)
        if renderer is None:
            rule = spec.rules[entry.rule]
            if isinstance(rule, DropRule):
                dropped.append((key, rule.span))
                continue
            outputs = ((key, 0),)  # keep
        else:
            rule = renderer.rule
            outputs = renderer.render(key, caps, entry)
        for out, fan_index in outputs:
            prev = produced.get(out)
            if renderer is None or renderer.simple_step:
                if prev is not None:
                    raise _duplicate(out, prev, key, rule)
                info = keys[key]
                produced[out] = (Step(out, (key,), (info,), (), info, rule.span) if renderer is None
                                 else renderer.step(out, key, info))
                continue
            if prev is None:
                prev = produced[out] = _Pending(rule, out, renderer)
            elif not isinstance(prev, _Pending) or prev.rule is not rule or not renderer.merges:
                raise _duplicate(out, prev, key, rule)
            prev.inputs.append(((fan_index, renderer.order_key(caps)), key))

    if unmatched and strict:
        missing = {k: i for k, i in target.items() if k not in produced} if target is not None else {}
        raise _coverage_error(unmatched, spec, matcher, table_keys, keys, missing)
    unused = tuple(r.span for i, r in enumerate(spec.rules) if i not in used)
    if unused and strict_rules:
        raise PlanError(f"this rule matches no key of the checkpoint ({len(keys)} keys; "
                        "`mapspec inspect --keys` lists them)", unused[0])

    steps = [_plan_step(p, keys) if isinstance(p, _Pending) else p for p in produced.values()]
    report = None
    if target is not None:
        by_name = {st.output: st for st in steps}
        kept, report = fitting.fit({st.output: st.info for st in steps}, target, fit, drop,
                                   {st.output: st.rule for st in steps})
        steps = [by_name[k] for k in kept]
    return Plan(spec.file, spec.header.source, spec.header.target, spec.header.select, tuple(steps),
                tuple(dropped), tuple(unmatched), len(keys), report, unused)


def _duplicate(out: str, prev, key: str, rule) -> PlanError:
    first = prev.inputs[0] if isinstance(prev, Step) else prev.inputs[0][1]
    line = prev.rule.line if isinstance(prev, Step) else prev.rule.span.line
    return PlanError(f"target '{out}' is produced twice: from '{first}' (rule at line {line}) "
                     f"and from '{key}'", rule.span)


def _coverage_error(unmatched: list[str], spec: Spec, matcher: Matcher, tables: dict[str, tuple[str, ...]],
                    keys: Mapping[str, TensorInfo], missing: Mapping[str, TensorInfo]) -> ConversionError:
    from .coverage import unmatched_lines

    n = len(unmatched)
    return ConversionError(f"{n} source key{'s are' if n != 1 else ' is'} not matched by any rule "
                           "(add rules, drop them, or use --non-strict)",
                           unmatched_lines(unmatched, spec, matcher, tables, keys, missing))


def _plan_step(p: _Pending, keys: Mapping[str, TensorInfo]) -> Step:
    rule = p.rule
    inputs = [k for _, k in sorted(p.inputs, key=lambda x: x[0])] if len(p.inputs) > 1 else [p.inputs[0][1]]
    infos = [keys[k] for k in inputs]
    if not isinstance(rule, RenameRule):
        return Step(p.output, tuple(inputs), tuple(infos), (), infos[0], rule.span)
    renderer = p.renderer
    if renderer.merges:
        renderer.check_group(p.output, [o[1] for o, _ in sorted(p.inputs, key=lambda x: x[0])], inputs)
    dtype_set = {i.dtype for i in infos}
    if len(dtype_set) > 1 and renderer.merges:
        raise PlanError(f"inputs of '{p.output}' have different dtypes: {', '.join(sorted(dtype_set))}; "
                        "cast() them first", rule.span)
    shapes = [tuple(i.shape) for i in infos]
    dtype = infos[0].dtype
    planned = []
    fan_index = p.inputs[0][0][0]
    for action, d, params in renderer.actions:
        if d.kind == "split":
            params = {**params, "index": fan_index}
        new_shape, dtype, resolved = d.infer(params, shapes, dtype, action)
        planned.append(PlannedAction(action.name, resolved))
        shapes = [new_shape]
    if len(shapes) != 1:
        raise PlanError(f"'{p.output}' has {len(shapes)} inputs but no concat() or stack() to merge them",
                        rule.span)
    return Step(p.output, tuple(inputs), tuple(infos), tuple(planned), TensorInfo(shapes[0], dtype), rule.span)


class _Negative(ArithmeticError):
    pass


def _nonneg(value: int) -> str:
    if value < 0:
        raise _Negative(value)
    return str(value)


class _Renderer:
    """Turns a match's captures into output names (and simple steps) for one rename rule.

    Each (rule, source alternative) gets its template compiled to a small Python function
    once, so rendering a key costs one call; errors (a missing table entry, a negative
    index) are diagnosed afterwards by `_diagnose`, off the fast path."""

    def __init__(self, rule: RenameRule, tables: dict[str, dict[str, str]]):
        self.rule = rule
        self.tables = tables
        self.actions = [(a, act.lookup(a), act.normalize(a)) for a in rule.actions]
        kinds = {d.kind for _, d, _ in self.actions}
        self.merges = "merge" in kinds
        self.fanout: Capture | None = rule.target.fanout()
        self.fan_count = 0
        for _, d, p in self.actions:
            if d.kind == "split":
                self.fan_count = len(p["sizes"]) if "sizes" in p else p["chunks"]
        self.simple_step = not kinds - {"unary"} and self.fanout is None
        used = set()
        for part in rule.target.parts:
            if isinstance(part, Subst):
                used |= _refs(part.expr)
        self.used = used
        self._fns: dict[int, Any] = {}

    # -------------------------------------------------------------- rendering
    def _compile(self, pattern) -> Any:
        types = {n: c.type for n, c in pattern.captures().items()}
        if self.fanout is not None:
            types[self.fanout.name] = self.fanout.type
        pieces = []
        for part in self.rule.target.parts:
            if isinstance(part, Lit):
                pieces.append(repr(part.text))
            elif isinstance(part, Fanout):
                pieces.append("F")
            elif isinstance(part.expr, BinOp):
                pieces.append(f"_nonneg({self._code(part.expr, types, True)})")
            else:
                pieces.append(self._code(part.expr, types, False))
        src = "lambda c, F=None: " + (" + ".join(pieces) if pieces else "''")
        return eval(src, {"T": self.tables, "_nonneg": _nonneg})  # noqa: S307 - our own generated code

    def _code(self, expr, types, arith: bool) -> str:
        if isinstance(expr, Ref):
            ref = "F" if self.fanout is not None and expr.name == self.fanout.name else f"c[{expr.name!r}]"
            return f"int({ref})" if arith else ref
        if isinstance(expr, Num):
            return repr(expr.value) if arith else repr(str(expr.value))
        if isinstance(expr, Lookup):
            key = self._code(expr.key, types, isinstance(expr.key, BinOp))
            if isinstance(expr.key, BinOp):
                key = f"str({key})"
            return f"T[{expr.table!r}][{key}]"
        return f"({self._code(expr.left, types, True)} {expr.op} {self._code(expr.right, types, True)})"

    def render(self, key: str, caps: dict[str, str], entry) -> list[tuple[str, int]]:
        fn = self._fns.get(entry.alternative)
        if fn is None:
            fn = self._fns[entry.alternative] = self._compile(entry.pattern)
        try:
            if self.fanout is None:
                return ((fn(caps), 0),)
            values = (self.fanout.alternatives if self.fanout.type == "alt"
                      else [str(i) for i in range(self.fan_count)])
            return [(fn(caps, v), i) for i, v in enumerate(values)]
        except (KeyError, ArithmeticError):
            self._diagnose(key, caps)
            raise  # pragma: no cover - _diagnose always raises

    def step(self, out: str, key: str, info: TensorInfo) -> Step:
        """The step of a one-input, one-output rule."""
        if not self.actions:
            return Step(out, (key,), (info,), (), info, self.rule.span)
        shape, dtype, planned = tuple(info.shape), info.dtype, []
        for action, d, params in self.actions:
            shape, dtype, resolved = d.infer(params, [shape], dtype, action)
            planned.append(PlannedAction(action.name, resolved))
        return Step(out, (key,), (info,), tuple(planned), TensorInfo(tuple(shape), dtype), self.rule.span)

    def _diagnose(self, key: str, caps: dict[str, str]) -> None:
        values: dict[str, Any] = dict(caps)
        for part in self.rule.target.parts:
            if isinstance(part, Subst):
                value = self._eval(part.expr, values, key, part.span)
                if isinstance(value, int) and value < 0:
                    raise PlanError(f"template arithmetic gives {value} for key '{key}'", part.span)
        raise PlanError(f"cannot render the target for key '{key}'", self.rule.target.span)

    def _eval(self, expr, values, key, span):
        if isinstance(expr, Ref):
            return values.get(expr.name, "0")
        if isinstance(expr, Num):
            return expr.value
        if isinstance(expr, Lookup):
            k = str(self._eval(expr.key, values, key, span))
            table = self.tables[expr.table]
            if k not in table:
                raise PlanError(f"table '{expr.table}' has no entry '{k}' (for key '{key}')", expr.span)
            return table[k]
        left = int(self._eval(expr.left, values, key, span))
        right = int(self._eval(expr.right, values, key, span))
        if expr.op in ("//", "%") and right == 0:
            raise PlanError(f"division by zero in the template for key '{key}'", span)
        if expr.op == "+":
            return left + right
        if expr.op == "-":
            return left - right
        if expr.op == "*":
            return left * right
        return left // right if expr.op == "//" else left % right

    def order_key(self, caps: dict[str, str]) -> tuple:
        """Where a merged input goes: by the captures the target does not use."""
        if not self.merges:
            return ()
        out = []
        for part in self._group_captures():
            v = caps.get(part.name)
            if part.type == "int":
                out.append(int(v))
            elif part.type == "alt":
                out.append(part.alternatives.index(v))
            elif part.type == "table":
                out.append(list(self.tables[part.table]).index(v))
            else:
                out.append(v)
        return tuple(out)

    def _group_captures(self) -> list[Capture]:
        src = self.rule.sources[0]
        return [p for p in src.parts if isinstance(p, Capture) and p.name and p.name not in self.used]

    def check_group(self, output: str, order_keys: list[tuple], inputs: list[str]) -> None:
        """A merge over one alternative or integer capture needs every value, once."""
        caps = self._group_captures()
        if len(caps) != 1:
            return
        cap = caps[0]
        seen = [k[0] for k in order_keys]
        if cap.type == "alt":
            expected = list(range(len(cap.alternatives)))
            if seen != expected:
                missing = [cap.alternatives[i] for i in expected if i not in seen]
                raise PlanError(f"'{output}' merges {{{cap.name}}} = {', '.join(cap.alternatives)}, "
                                f"but {', '.join(missing)} {'is' if len(missing) == 1 else 'are'} missing "
                                f"(found {', '.join(inputs)})", self.rule.span)
        elif cap.type == "int":
            if seen != list(range(len(seen))):
                raise PlanError(f"'{output}' merges {{{cap.name}}} = 0..{len(seen) - 1}, but found "
                                f"{', '.join(map(str, seen))}", self.rule.span)


def _refs(expr) -> set[str]:
    if isinstance(expr, Ref):
        return {expr.name}
    if isinstance(expr, BinOp):
        return _refs(expr.left) | _refs(expr.right)
    if isinstance(expr, Lookup):
        return _refs(expr.key)
    return set()
