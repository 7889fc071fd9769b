"""Cross-rule checks that need no checkpoint: captures, tables, actions and the merge axes
and fan-out captures they name. Every problem is reported, not only the first."""

from __future__ import annotations

from typing import Any, Mapping

from ..ops.actions import lookup as lookup_action, normalize
from ..errors import SpecError
from .params import Config, bind_all, raise_all
from ..lang.exprs import walk
from ..lang.rules import Capture, Fanout, KeepRule, Lookup, Num, Pattern, Ref, RenameRule, Spec, Subst


def check_spec(spec: Spec, *, params: Mapping[str, Any] | None = None, config: Config = None) -> None:
    """Bind the spec's parameters and check it; raise `SpecError` (or `SpecErrors`, all of
    them) at the problems found."""
    bound, _, errors, tainted = bind_all(spec, params, config)
    check_bound(bound, errors, tainted)


def check_bound(spec: Spec, errors: list[SpecError] | None = None, skip: set[int] = frozenset()) -> None:
    """Check a spec whose parameters are bound, adding to the `errors` binding found; the
    rules in `skip` use a parameter that has no value and are not checked further."""
    errors = list(errors or [])
    try:
        tables = _check_tables(spec)
    except SpecError as exc:
        raise_all(errors + [exc])
    first_otherwise = None
    for i, rule in enumerate(spec.rules):
        if i in skip:
            continue
        try:
            for pat in patterns_of(rule):
                for part in pat.parts:  # (`type() is`: a failing isinstance on a node costs 4x)
                    if type(part) is Capture and part.type == "table" and part.table not in tables:
                        raise SpecError(f"unknown table '{part.table}'", part.span)
            if rule.otherwise:
                if first_otherwise is not None:
                    raise SpecError(f"a spec has at most one otherwise rule (the first is at line "
                                    f"{first_otherwise.span.line})", rule.span)
                first_otherwise = rule
            if isinstance(rule, RenameRule):
                # Two rules may name the same target: a spec can cover several layouts of a
                # checkpoint. Only a checkpoint holding both sources is an error (in the planner).
                _check_rename(rule, tables)
            elif isinstance(rule, KeepRule):
                _check_unary(rule.actions, "keep")
        except SpecError as exc:
            errors.append(exc)
    raise_all(errors)


def patterns_of(rule) -> tuple[Pattern, ...]:
    return rule.sources if isinstance(rule, RenameRule) else rule.patterns


def axes_of(rule: RenameRule) -> list[Capture]:
    """The merge axes of a rule: the named captures of its source that its target does not use."""
    used = set()
    for part in rule.target.parts:
        if isinstance(part, Subst):
            used |= {r.name for r, _ in _walk_refs(part.expr, False)}
    return [p for p in rule.sources[0].parts if isinstance(p, Capture) and p.name and p.name not in used]


def _check_unary(actions, what: str) -> None:
    for action in actions:
        normalize(action)
        if lookup_action(action).kind != "unary":
            raise SpecError(f"{what} takes actions on one tensor; {action.name}() needs a rule of its own",
                            action.span)


def _check_tables(spec: Spec) -> dict[str, dict[str, str]]:
    tables: dict[str, dict[str, str]] = {}
    where = {}
    for table in spec.tables:
        if table.name in tables:
            raise SpecError(f"table '{table.name}' is defined twice (first at line {where[table.name].line})",
                            table.span)
        seen: dict[str, int] = {}
        for e in table.entries:
            if e.key in seen:
                raise SpecError(f"table '{table.name}' maps '{e.key}' twice (first at line {seen[e.key]})", e.span)
            seen[e.key] = e.span.line
        tables[table.name] = table.mapping()
        where[table.name] = table.span
    return tables


def _check_rename(rule: RenameRule, tables: dict[str, dict[str, str]]) -> None:
    fanouts: dict[str, Capture] = {}
    used: list[tuple[Ref, bool]] = []  # the template's names, each with whether it is in arithmetic
    computed = []  # expressions that are more than a name (arithmetic, lookups)
    for part in rule.target.parts:  # (`type() is`: a failing isinstance on a node costs 4x)
        kind = type(part)
        if kind is Subst:
            if type(part.expr) is Ref:  # the common `{name}`: no walk
                used.append((part.expr, False))
            else:
                used.extend(_walk_refs(part.expr, False))
                computed.append(part.expr)
        elif kind is Fanout:
            cap = part.capture
            if cap.name in fanouts:
                raise SpecError(f"{{{cap.name}}} is declared twice in the target", cap.span)
            if cap.type not in ("alt", "int"):
                raise SpecError("a fan-out capture lists its values ({p:q|k|v}) or counts them ({i:int})", cap.span)
            fanouts[cap.name] = cap
    if rule.otherwise and fanouts:
        raise SpecError("an otherwise rule has one output per key; it cannot declare fan-out captures",
                        next(iter(fanouts.values())).span)
    if rule.is_copy and not fanouts:
        _check_unary(rule.actions, "copy")
    if rule.is_copy:  # a copy may fan out (one copy per rank: chunk, replicate), never merge
        for action in rule.actions:
            if lookup_action(action).merges:
                raise SpecError(f"a copy reads one key; {action.name}() merges several", action.span)

    for src in rule.sources:
        caps = src.captures()
        for name, fan in fanouts.items():
            if name in caps:
                raise SpecError(f"{{{name}}} is bound in the source and declared again in the target", fan.span)
        for ref, in_arith in used:
            if ref.name in fanouts:
                if in_arith and fanouts[ref.name].type != "int":
                    raise SpecError(f"arithmetic needs an integer capture; {{{ref.name}}} is not", ref.span)
                continue
            cap = caps.get(ref.name)
            if cap is None:
                hint = f" (bound: {', '.join('{' + n + '}' for n in caps)})" if caps else ""
                raise SpecError(f"capture {{{ref.name}}} is not bound by source pattern {src.text}{hint}", ref.span)
            if in_arith and not cap.numeric:
                raise SpecError(f"arithmetic needs an integer capture; declare it as {{{ref.name}:int}} "
                                f"(or list the numbers it may be, {{{ref.name}:0|1|2}}) in {src.text}", ref.span)

        where = getattr(rule, "where", None)
        for part in where.parts if where is not None else ():
            for ref, _ in (_walk_refs(part.expr, False) if type(part) is Subst else ()):
                if ref.name not in caps:
                    raise SpecError(f"capture {{{ref.name}}} in the `where` key is not bound by source pattern "
                                    f"{src.text}", ref.span)

    _check_chain(rule, fanouts, {r.name for r, _ in used})
    for expr in computed:
        _check_lookups(expr, rule, tables)


def _check_chain(rule: RenameRule, fanouts: dict[str, Capture], used: set[str]) -> None:
    """Follow the merge axes and fan-out captures through the actions: each merge consumes an
    open axis (named by over=, or the only one open), each split produces a declared fan-out
    capture (named by into=, or the only one left), and none is left over at the end."""
    if not rule.actions:  # nothing merges or splits: only a declared fan-out can be left over
        if fanouts:
            _left_over(next(iter(fanouts.values())))
        return
    axes = [c.name for c in rule.sources[0].parts if isinstance(c, Capture) and c.name and c.name not in used]
    if any(lookup_action(a).merges for a in rule.actions):
        for src in rule.sources[1:]:
            names = [c.name for c in src.parts if isinstance(c, Capture) and c.name and c.name not in used]
            if sorted(names) != sorted(axes):
                raise SpecError(f"the alternatives of a merging rule must have the same merge axes; {src.text} "
                                f"has {_names(names) or 'none'} where {rule.sources[0].text} has "
                                f"{_names(axes) or 'none'}", src.span)
    open_, todo = list(axes), dict(fanouts)
    merges = False
    for action in rule.actions:
        d, p = lookup_action(action), normalize(action)
        if d.merges:
            merges = True
            if p["over"] is not None:
                if p["over"] not in open_:
                    what = ("is already merged" if p["over"] in axes else
                            "is used by the target" if p["over"] in rule.sources[0].captures() else
                            "is not a capture of the source")
                    raise SpecError(f"{action.name}(over={p['over']}): {{{p['over']}}} {what}; "
                                    f"the merge axes here are {_names(open_) or 'none'}", action.span)
                open_.remove(p["over"])
            elif len(open_) == 1:
                open_.pop()
            elif not open_:
                raise SpecError(f"{action.name}() merges several keys into one; the source needs a capture "
                                "that the target does not use, to tell the inputs apart", action.span)
            else:
                raise SpecError(f"{action.name}() must say which capture it merges: "
                                f"{' or '.join('over=' + a for a in open_)}", action.span)
        if d.splits:
            if p.get("into") is not None:
                if p["into"] not in todo:
                    what = "is already split" if p["into"] in fanouts else "is not declared in the target"
                    raise SpecError(f"{action.name}(into={p['into']}): {{{p['into']}}} {what}; declare the "
                                    "outputs in the target, e.g. {part:q|k|v} or {i:int}", action.span)
                cap = todo.pop(p["into"])
            elif len(todo) == 1:
                cap = todo.pop(next(iter(todo)))
            elif not todo:
                raise SpecError(f"{action.name}() makes several outputs; declare their names in the target, "
                                "e.g. {part:q|k|v} or {i:int}", action.span)
            else:
                raise SpecError(f"{action.name}() must say which target capture it makes: "
                                f"{' or '.join('into=' + n for n in todo)}", action.span)
            n = d.count(p)
            if n is not None and cap.type == "alt" and n != len(cap.alternatives):
                raise SpecError(f"{action.name}() makes {n} outputs but {{{cap.name}}} names "
                                f"{len(cap.alternatives)}", cap.span)
    if todo:
        _left_over(next(iter(todo.values())))
    if merges and open_:
        raise SpecError(f"the source capture{'s' if len(open_) > 1 else ''} {_names(open_)} "
                        f"{'are' if len(open_) > 1 else 'is'} neither used by the target nor merged; "
                        f"merge over {'them' if len(open_) > 1 else 'it'} too (over={open_[0]})", rule.span)


def _left_over(cap: Capture) -> None:
    raise SpecError(f"target declares {{{cap.name}:...}}, one output per value; that needs split(), "
                    "chunk() or unstack()", cap.span)


def _names(names) -> str:
    return ", ".join("{" + n + "}" for n in names)


def _walk_refs(expr, in_arith: bool) -> list[tuple[Ref, bool]]:
    """The names an expression uses, each with whether it is inside arithmetic."""
    return [(node, in_arith if up is None else type(up) is not Lookup)
            for node, up in walk(expr) if type(node) is Ref]


def _check_lookups(expr, rule: RenameRule, tables: dict[str, dict[str, str]]) -> None:
    for node, _ in walk(expr):
        if type(node) is Lookup:
            _check_lookup(node, rule, tables)


def _check_lookup(expr: Lookup, rule: RenameRule, tables: dict[str, dict[str, str]]) -> None:
    if expr.table not in tables:
        known = f" (tables: {', '.join(tables)})" if tables else ""
        raise SpecError(f"unknown table '{expr.table}'{known}", expr.span)
    if isinstance(expr.key, Ref):
        for src in rule.sources:
            cap = src.captures().get(expr.key.name)
            if cap is not None and cap.type == "alt":
                missing = [a for a in cap.alternatives if a not in tables[expr.table]]
                if missing:
                    raise SpecError(f"table '{expr.table}' has no entry for {', '.join(map(repr, missing))}",
                                    expr.span)
            if cap is not None and cap.type == "table" and cap.table != expr.table:
                missing = [k for k in tables.get(cap.table, {}) if k not in tables[expr.table]]
                if missing:
                    raise SpecError(f"table '{expr.table}' has no entry for {', '.join(map(repr, missing))}",
                                    expr.span)
    elif isinstance(expr.key, Num):
        if str(expr.key.value) not in tables[expr.table]:
            raise SpecError(f"table '{expr.table}' has no entry for '{expr.key.value}'", expr.span)
