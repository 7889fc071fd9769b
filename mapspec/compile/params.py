"""Binding a spec's parameters before anything else is compiled.

Each `param` takes its value from `-p NAME=VALUE`, else from the `--config` JSON key the spec
names, else from its default; `let`s are derived from them in source order and `assert`s are
checked. The bound values are then substituted into patterns, templates and action
arguments, so the checks and the planner only ever see plain numbers and text; what each
value was and where it came from is kept (`Binding`) for the plan and `explain`.
"""

from __future__ import annotations

import difflib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from ..core import paths
from ..core.quoting import clip, shown_path
from ..errors import SpecError, SpecErrors, UsageError
from ..lang.exprs import fold, names as expr_names, transform, walk
from ..lang.text import expr as expr_text
from ..lang.rules import (
    Action,
    Assertion,
    Calc,
    Call,
    Dec,
    Capture,
    Fanout,
    KeepRule,
    Let,
    Lit,
    Lookup,
    MetaEntry,
    Neg,
    Num,
    Param,
    Pattern,
    Ref,
    RenameRule,
    Spec,
    Subst,
    Template,
    Text,
    Tuple,
    Word,
    join_literals,
)


@dataclass(frozen=True)
class Binding:
    """One parameter's (or let's) value and where it came from."""

    name: str
    value: int | str | float | bool | None  # None: an optional parameter nothing gave
    origin: str  # "-p", "config KEY", "default", "let", "absent"

    def to_json(self) -> dict:
        return {"value": self.value, "from": self.origin}


Config = str | Path | Mapping[str, Any] | None


def bind(spec: Spec, params: Mapping[str, Any] | None = None, config: Config = None
         ) -> tuple[Spec, tuple[Binding, ...]]:
    """The spec with every parameter substituted, and the values used. Every problem found
    (unset parameters, bad values, failed assertions) is reported at once."""
    bound, bindings, errors, _ = bind_all(spec, params, config)
    raise_all(errors)
    return bound, bindings


def bind_all(spec: Spec, params: Mapping[str, Any] | None = None, config: Config = None
             ) -> tuple[Spec, tuple[Binding, ...], list[SpecError], set[int]]:
    """As `bind`, but the problems are returned, with the indexes of the rules that use a
    parameter without a value (their own checks would only repeat that problem)."""
    params = dict(params or {})
    if not spec.definitions:
        _load_config(config)  # unused, but a --config that cannot be read is still an error
        if params:
            raise UsageError(f"-p {next(iter(params))}: this spec declares no parameters")
        sub = _Substitute({}, set())
        return sub.spec(spec), (), sub.errors, sub.tainted
    cfg, cfg_name = _load_config(config)
    errors: list[SpecError] = []
    declared = {d.name: d for d in spec.definitions}
    for name in params:
        if name not in declared:
            close = difflib.get_close_matches(name, list(declared), n=1)
            hint = f"; did you mean {close[0]}?" if close else f" (parameters: {', '.join(declared)})"
            errors.append(SpecError(f"-p {name}: the spec has no parameter '{name}'{hint}"))
        elif isinstance(declared[name], Let):
            errors.append(SpecError(f"-p {name}: '{name}' is derived (let), it cannot be set",
                                    declared[name].span))
    env: dict[str, Binding] = {}
    failed: set[str] = set()  # what depends on these is not evaluated: one error per fault
    tables = {t.name: t.mapping() for t in spec.tables}
    for d in spec.definitions:
        if d.name in env or d.name in failed:
            errors.append(SpecError(f"'{d.name}' is defined twice", d.span))
            continue
        try:
            if expr_names(d.expr if isinstance(d, Let) else d.default) & failed:
                failed.add(d.name)
                continue
            env[d.name] = (_let(d, env, declared, tables) if isinstance(d, Let)
                           else _param(d, params, cfg, cfg_name, env, declared, tables))
        except SpecError as exc:
            errors.append(exc)
            failed.add(d.name)
    for a in spec.assertions:
        try:
            if not (expr_names(a.left) | expr_names(a.right)) & failed:
                _check_assertion(a, env, declared)
        except SpecError as exc:
            errors.append(exc)
    sub = _Substitute({n: b.value for n, b in env.items() if b.value is not None},
                      failed | {n for n, b in env.items() if b.value is None})
    bound = sub.spec(spec)
    return bound, tuple(env.values()), errors + sub.errors, sub.tainted


def raise_all(errors: list[SpecError]) -> None:
    """Raise nothing, the one error, or all of them together (sorted by position)."""
    if errors:
        combined = SpecErrors(errors)
        raise combined.errors[0] if len(combined.errors) == 1 else combined


MAX_DIGITS = 100  # digits of an integer in a --config: far past any model's numbers


def _config_int(path: Path):
    """json's parse_int for a --config: a number of more than MAX_DIGITS digits is an error
    naming it (Python refuses to read one of 4300, with a ValueError)."""
    def parse(text: str) -> int:
        if len(text.lstrip("-")) > MAX_DIGITS:
            raise UsageError(f"--config {shown_path(path)}: the number {text[:12]}... has {len(text.lstrip('-')):,} "
                             f"digits; a configuration's numbers have at most {MAX_DIGITS}")
        return int(text)
    return parse


def _load_config(config: Config) -> tuple[Mapping[str, Any] | None, str]:
    if config is None:
        return None, ""
    if isinstance(config, Mapping):
        return config, "config"
    path = paths.existing(config, "--config", kind="file")
    try:
        data = json.loads(path.read_text(encoding="utf-8"), parse_int=_config_int(path))
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read --config {shown_path(path)}: {paths.reason(exc) if isinstance(exc, OSError) else exc}"
                         ) from None
    except json.JSONDecodeError as exc:
        raise UsageError(f"--config {shown_path(path)} is not JSON: {exc}") from None
    except RecursionError:
        raise UsageError(f"--config {shown_path(path)}: JSON nested too deeply to read") from None
    if not isinstance(data, dict):
        raise UsageError(f"--config {path} holds a JSON {type(data).__name__}, not an object")
    return data, path.name


_MISSING = object()


def _config_value(cfg: Mapping[str, Any], key: str) -> Any:
    """The value at a dotted key; a numeric part indexes a list (`architectures.0`)."""
    node: Any = cfg
    for part in key.split("."):
        if isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        elif isinstance(node, Mapping) and part in node:
            node = node[part]
        else:
            return _MISSING
    return node


def _param(d: Param, params: dict, cfg, cfg_name: str, env: dict[str, Binding], declared,
           tables: Mapping[str, Mapping[str, str]] = {}) -> Binding:
    if d.name in params:
        if params[d.name] is None:  # an optional parameter passed on as absent (an inverse's bindings)
            return Binding(d.name, None, "absent")
        return Binding(d.name, _typed(d, params[d.name], f"-p {d.name}={clip(params[d.name], 40)}"), "-p")
    if cfg is not None:
        for key in d.config_keys:
            raw = _config_value(cfg, key)
            if raw is _MISSING or raw is None:
                continue
            if d.config_len:
                if not isinstance(raw, list):
                    raise SpecError(f"{cfg_name} key '{key}' = {_short_json(raw)} is not a list: "
                                    f"'{d.name}' takes its length", d.span)
                return Binding(d.name, _typed(d, len(raw), f"len({key})"), f"config len({key})")
            return Binding(d.name, _typed(d, raw, f"{cfg_name} key '{key}' = {_short_json(raw)}"),
                           f"config {key}")
    if d.default is not None:
        if isinstance(d.default, str):
            value = d.default
        else:
            value = evaluate_value(d.default, env, declared, tables)
        if value is None:
            return Binding(d.name, None, "absent")
        return Binding(d.name, _typed(d, value, "its default"), "default")
    ways = [f"-p {d.name}=VALUE"]
    if d.config_key is not None:
        if d.config_len:
            ways.append(f"--config with a list at key '{d.config_key}'" if cfg is None
                        else f"a list at key '{d.config_key}' in {cfg_name}")
        else:
            ways.append(f"--config with key '{d.config_key}'" if cfg is None
                        else f"a '{d.config_key}' key in {cfg_name}")
    raise SpecError(f"parameter '{d.name}' has no value: give {' or '.join(ways)}", d.span)


def _short_json(value: Any, limit: int = 60) -> str:
    text = json.dumps(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _typed(d: Param, value: Any, what: str) -> int | str | float | bool:
    if d.type == "float":
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value.strip())
            except ValueError:
                pass
        raise SpecError(f"{what}: '{d.name}' is a number parameter", d.span)
    if d.type == "bool":
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in ("true", "false"):
            return value.strip().lower() == "true"
        raise SpecError(f"{what}: '{d.name}' is a true/false parameter", d.span)
    if d.type == "str":
        if isinstance(value, (str, int)) and not isinstance(value, bool):
            return str(value)
        if isinstance(value, float):  # a config's 1e-05: its JSON text (`write` puts it back as a number)
            return json.dumps(value)
        raise SpecError(f"{what}: '{d.name}' is a text parameter", d.span)
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            pass
    raise SpecError(f"{what}: '{d.name}' is an integer parameter", d.span)


def _let(d: Let, env: dict[str, Binding], declared, tables: Mapping[str, Mapping[str, str]] = {}) -> Binding:
    return Binding(d.name, evaluate_value(d.expr, env, declared, tables), "let")


# ------------------------------------------------------------------ values beyond integers
# Parameter defaults, lets and metadata entries may be numbers with a fraction (`10000.0`),
# text, true/false, or none (an optional parameter nothing gave: what uses it is absent too),
# and may look a table up by a parameter's value (`ftype[outtype]`). Action arguments and
# templates stay integer arithmetic (`evaluate`).

CONSTANTS = {"none": None, "true": True, "false": False}

# metadata value types (GGUF's names): what `uint32(x)`, `float32(x)`... give a value
META_TYPES = ("uint8", "int8", "uint16", "int16", "uint32", "int32", "uint64", "int64",
              "float32", "float64", "bool", "string")


def evaluate_value(expr, env: Mapping[str, Binding], declared: Mapping = {},
                   tables: Mapping[str, Mapping[str, str]] = {}):
    """A value (int, float, str, bool or None) of an expression over bound names; none
    (an optional parameter nothing gave) makes what uses it none too."""
    if isinstance(expr, str):
        return expr

    def visit(node, kids: list):
        kind = type(node)
        if kind is Num or kind is Dec:
            return node.value
        if kind is Ref:
            if node.name in CONSTANTS and node.name not in env:
                return CONSTANTS[node.name]
            b = env.get(node.name)
            return evaluate(node, env, declared) if b is None else b.value  # (evaluate raises, naming what is wrong)
        table = tables.get(node.table) if kind is Lookup else None
        if kind is Lookup and table is None:
            raise SpecError(f"no table '{node.table}'" + (f" (tables: {', '.join(tables)})" if tables else ""),
                            node.span)
        if any(k is None for k in kids):
            return None
        if kind is Call:
            return meta_value(node.func, kids[0], node.span)[1]
        if kind is Lookup:
            if str(kids[0]) not in table:
                raise SpecError(f"table '{node.table}' has no entry '{kids[0]}' (entries: {', '.join(table)})",
                                node.span)
            return _number_or_text(table[str(kids[0])])
        if kind is Neg:
            return -_arith(kids[0], node.operand)
        left, right = _arith(kids[0], node.left), _arith(kids[1], node.right)
        if node.op in ("//", "%") and right == 0:
            raise SpecError(f"division by zero in {expr_text(node)}", _first_span(node))
        return {"+": lambda: left + right, "-": lambda: left - right, "*": lambda: left * right,
                "//": lambda: left // right, "%": lambda: left % right}[node.op]()

    return fold(expr, visit)


def _arith(value, expr):
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        name = expr.name if isinstance(expr, Ref) else expr_text(expr)
        raise SpecError(f"arithmetic needs a number; '{name}' is {json.dumps(value)}", _first_span(expr))
    return value


def _number_or_text(text: str):
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def meta_value(kind: str, value, span=None) -> tuple[str, Any]:
    """(type, value) of `kind(value)`: an integer type takes a whole number (10.0 is 10), a
    float type any number, bool true/false, string any value as text; out of range or of the
    wrong kind is a SpecError at `span`."""
    if kind not in META_TYPES:
        raise SpecError(f"unknown metadata type '{kind}' (types: {', '.join(META_TYPES)})", span)
    if kind == "string":
        return kind, value if isinstance(value, str) else json.dumps(value)
    if kind == "bool":
        if not isinstance(value, bool):
            raise SpecError(f"bool() needs true or false, not {json.dumps(value)}", span)
        return kind, value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise SpecError(f"{kind}() needs a number, not {json.dumps(value)}", span)
    if kind.startswith("float"):
        return kind, float(value)
    if isinstance(value, float):
        if not value.is_integer():
            raise SpecError(f"{kind}() needs a whole number, not {value}", span)
        value = int(value)
    bits = int(kind.lstrip("uint"))
    lo, hi = (0, 1 << bits) if kind.startswith("u") else (-(1 << (bits - 1)), 1 << (bits - 1))
    if not lo <= value < hi:
        raise SpecError(f"{value} does not fit {kind}", span)
    return kind, value


def bind_meta(spec: Spec, bindings: tuple[Binding, ...]) -> tuple[list, list[SpecError]]:
    """The spec's `meta KEY = VALUE` entries evaluated: [(key, type or None, value)] in source
    order (an untyped value's type is left to the format), entries whose value is none left
    out; `meta from` providers as (provider, args) in their place. Errors are returned."""
    env = {b.name: b for b in bindings}
    declared = {d.name: d for d in spec.definitions}
    tables = {t.name: t.mapping() for t in spec.tables}
    out, errors = [], []
    for m in spec.meta:
        if not isinstance(m, MetaEntry):
            out.append((m.provider, m.args))
            continue
        try:
            expr = m.value
            if isinstance(expr, Call):
                value = evaluate_value(expr.arg, env, declared, tables)
                if value is not None:
                    out.append((m.key, *meta_value(expr.func, value, expr.span)))
                continue
            value = evaluate_value(expr, env, declared, tables)
            if value is not None:
                out.append((m.key, None, value))
        except SpecError as exc:
            errors.append(exc)
    return out, errors


_COMPARE = {"==": lambda a, b: a == b, "!=": lambda a, b: a != b, "<": lambda a, b: a < b,
            "<=": lambda a, b: a <= b, ">": lambda a, b: a > b, ">=": lambda a, b: a >= b}


def _check_assertion(a: Assertion, env: dict[str, Binding], declared) -> None:
    left, right = evaluate(a.left, env, declared), evaluate(a.right, env, declared)
    if not _COMPARE[a.op](left, right):
        shown = f"{expr_text(a.left)} {a.op} {expr_text(a.right)} is {left} {a.op} {right}"
        raise SpecError(f"{a.message}: {shown}" if a.message else f"assertion failed: {shown}", a.span)


def evaluate(expr, env: Mapping[str, Binding], declared: Mapping = {}) -> int:
    """An integer expression over bound names."""
    for node, _ in walk(expr):  # in evaluation order: the first name or lookup that fails
        if type(node) is Lookup:
            raise SpecError("a table lookup needs a capture; parameters are known when compiling", node.span)
        if type(node) is Ref:
            b = env.get(node.name)
            if b is None:
                if node.name in declared:
                    raise SpecError(f"'{node.name}' is used before its definition "
                                    f"(line {declared[node.name].span.line})", node.span)
                known = f" (parameters: {', '.join(env)})" if env else ""
                raise SpecError(f"unknown name '{node.name}'{known}", node.span)
            if not isinstance(b.value, int):
                raise SpecError(f"arithmetic needs an integer; '{node.name}' is text", node.span)

    def visit(node, kids: list[int]) -> int:
        kind = type(node)
        if kind is Num:
            return node.value
        if kind is Ref:
            return env[node.name].value
        if kind is Neg:
            return -kids[0]
        left, right = kids
        if node.op in ("//", "%") and right == 0:
            raise SpecError(f"division by zero in {expr_text(node)}", _first_span(node))
        return {"+": left + right, "-": left - right, "*": left * right}.get(node.op) if node.op in "+-*" else (
            left // right if node.op == "//" else left % right)

    return fold(expr, visit)


def _first_span(expr):
    return next((node.span for node, _ in walk(expr) if type(node) in (Ref, Lookup)), None)


class _Substitute:
    """Puts bound values where a spec names them: `{name}` in a pattern becomes its text, a
    name in a template or an action argument its value."""

    def __init__(self, values: Mapping[str, int | str], failed: set[str]):
        self.values = values
        self.failed = failed
        self.names = set(values) | failed  # what substitution looks for
        self.env = {n: Binding(n, v, "") for n, v in values.items()}
        self.errors: list[SpecError] = []
        self.tainted: set[int] = set()
        self._taint = False

    def spec(self, spec: Spec) -> Spec:
        rules = []
        changed = False
        for i, r in enumerate(spec.rules):
            if self._untouched(r):  # most rules of most specs: not copied (45 us a rule)
                rules.append(r)
                continue
            self._taint = False
            rules.append(self._rule(r))
            changed = True
            if self._taint:
                self.tainted.add(i)
        return spec.model_copy(update={"rules": tuple(rules)}) if changed else spec

    def _untouched(self, rule) -> bool:
        """Whether substituting would leave `rule` as it is: no actions (a `Calc` is evaluated
        even without parameters), no parameter named in its patterns or template, and no
        adjacent literals in its template to join."""
        if getattr(rule, "actions", ()) or getattr(rule, "reverse", None) is not None:
            return False
        names = self.names
        rename = type(rule) is RenameRule  # (`type() is`: a failing isinstance on a node costs 4x)
        if names:
            for pat in rule.sources if rename else rule.patterns:
                for p in pat.parts:
                    if type(p) is Capture and p.name in names:
                        return False
        if not rename:
            return True
        lit = False
        for p in rule.target.parts:
            kind = type(p)
            if kind is Lit:
                if lit:
                    return False
                lit = True
                continue
            lit = False
            if not names:
                continue
            if kind is Subst:
                if not expr_names(p.expr).isdisjoint(names):
                    return False
            elif p.capture.name in names:  # a fan-out named like a parameter: an error to report
                return False
        return True

    def _eval(self, expr):
        if expr_names(expr) & self.failed:
            self._taint = True
            return 0
        try:
            return evaluate(expr, self.env)
        except SpecError as exc:
            self.errors.append(exc)
            return 0

    def _rule(self, rule):
        if isinstance(rule, RenameRule):
            rev = rule.reverse
            if rev is not None and rev.target is not None:  # `reverse ->` uses parameters too
                rev = rev.model_copy(update={"target": self._template(rev.target),
                                             "actions": None if rev.actions is None else self._actions(rev.actions)})
            return rule.model_copy(update={"sources": tuple(self._pattern(p) for p in rule.sources),
                                           "target": self._template(rule.target),
                                           "actions": self._actions(rule.actions), "reverse": rev})
        update = {"patterns": tuple(self._pattern(p) for p in rule.patterns)}
        if isinstance(rule, KeepRule):
            update["actions"] = self._actions(rule.actions)
        return rule.model_copy(update=update)

    def _pattern(self, pat: Pattern) -> Pattern:
        if not any(isinstance(p, Capture) and p.name in self.values for p in pat.parts):
            return pat
        parts: list = []
        self._taint |= any(isinstance(p, Capture) and p.name in self.failed for p in pat.parts)
        for p in pat.parts:
            if isinstance(p, Capture) and p.name in self.values:
                if p.type != "segment":
                    self.errors.append(SpecError(f"capture {{{p.name}}} has the name of a parameter", p.span))
                p = Lit(text=str(self.values[p.name]))
            parts.append(p)
        return pat.model_copy(update={"parts": join_literals(parts)})

    def _template(self, tpl: Template) -> Template:
        parts: list = []
        for p in tpl.parts:
            if isinstance(p, Subst) and isinstance(p.expr, Ref) and p.expr.name in self.values:
                p = Lit(text=str(self.values[p.expr.name]))
            elif isinstance(p, Subst):
                p = p.model_copy(update={"expr": self._expr(p.expr)})
            elif isinstance(p, Fanout) and p.capture.name in self.values:
                self.errors.append(SpecError(f"capture {{{p.capture.name}}} has the name of a parameter",
                                             p.capture.span))
            parts.append(p)
        return tpl.model_copy(update={"parts": join_literals(parts)})

    def _expr(self, expr):
        return transform(expr, lambda e: Num(value=self._eval(e)) if type(e) is Ref and (
            e.name in self.values or e.name in self.failed) else e)

    def _actions(self, actions: tuple[Action, ...]) -> tuple[Action, ...]:
        return tuple(a.model_copy(update={"args": tuple(self._value(v) for v in a.args),
                                          "kwargs": tuple((k, self._value(v)) for k, v in a.kwargs)})
                     for a in actions)

    def _value(self, v):
        if isinstance(v, Word) and v.name in self.failed:
            self._taint = True
        if isinstance(v, Word) and v.name in self.values:
            value = self.values[v.name]
            return value if isinstance(value, int) else Text(value=value)
        if isinstance(v, Calc):
            return self._eval(v.expr)
        if isinstance(v, Tuple):
            return v.model_copy(update={"items": tuple(self._value(i) for i in v.items)})
        return v
