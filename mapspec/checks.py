"""Cross-rule checks that need no checkpoint: captures, tables, actions, duplicate targets."""

from __future__ import annotations

from .actions import lookup as lookup_action, normalize
from .errors import SpecError
from .rules import BinOp, Capture, Fanout, Lookup, Num, Ref, RenameRule, Spec, Subst


def check_spec(spec: Spec) -> None:
    """Raise `SpecError` at the first problem found."""
    tables = _check_tables(spec)
    for rule in spec.rules:
        patterns = rule.sources if isinstance(rule, RenameRule) else rule.patterns
        for pat in patterns:
            for part in pat.parts:
                if isinstance(part, Capture) and part.type == "table" and part.table not in tables:
                    raise SpecError(f"unknown table '{part.table}'", part.span)
        if isinstance(rule, RenameRule):
            # Two rules may name the same target: a spec can cover several layouts of a
            # checkpoint. Only a checkpoint holding both sources is an error (in the planner).
            _check_rename(rule, tables)


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
    multi = []
    params = []
    for action in rule.actions:
        p = normalize(action)
        params.append(p)
        if lookup_action(action).kind != "unary":
            multi.append((action, p))
    if len(multi) > 1:
        raise SpecError("a rule can hold one many-to-one or one-to-many action, not several", multi[1][0].span)

    fanout = rule.target.fanout()
    fanouts = [p for p in rule.target.parts if isinstance(p, Fanout)]
    if len(fanouts) > 1:
        raise SpecError("a target can declare one fan-out capture", fanouts[1].capture.span)
    kind = lookup_action(multi[0][0]).kind if multi else None
    if fanout is not None and kind != "split":
        raise SpecError(f"target declares {{{fanout.name}:...}}, one output per value; that needs split() or chunk()",
                        fanout.span)
    if kind == "split":
        action, p = multi[0]
        if fanout is None:
            raise SpecError(f"{action.name}() makes several outputs; declare their names in the target, "
                            "e.g. {part:q|k|v} or {i:int}", action.span)
        if fanout.type not in ("alt", "int"):
            raise SpecError("a fan-out capture lists its values ({p:q|k|v}) or counts them ({i:int})", fanout.span)
        count = len(p["sizes"]) if "sizes" in p else p["chunks"]
        if fanout.type == "alt" and len(fanout.alternatives) != count:
            raise SpecError(f"{action.name}() makes {count} outputs but {{{fanout.name}}} names "
                            f"{len(fanout.alternatives)}", fanout.span)

    used = _template_refs(rule)
    for src in rule.sources:
        caps = src.captures()
        if fanout is not None and fanout.name in caps:
            raise SpecError(f"{{{fanout.name}}} is bound in the source and declared again in the target",
                            fanout.span)
        for ref, in_arith in used:
            if fanout is not None and ref.name == fanout.name:
                if in_arith and fanout.type != "int":
                    raise SpecError(f"arithmetic needs an integer capture; {{{ref.name}}} is not", ref.span)
                continue
            cap = caps.get(ref.name)
            if cap is None:
                hint = f" (bound: {', '.join('{' + n + '}' for n in caps)})" if caps else ""
                raise SpecError(f"capture {{{ref.name}}} is not bound by source pattern {src.text}{hint}", ref.span)
            if in_arith and cap.type != "int":
                raise SpecError(f"arithmetic needs an integer capture; declare it as {{{ref.name}:int}} "
                                f"in {src.text}", ref.span)
        if kind == "merge":
            names = {r.name for r, _ in used}
            if not any(n not in names for n in caps):
                raise SpecError(f"{multi[0][0].name}() merges several keys into one; the source needs a capture "
                                "that the target does not use, to tell the inputs apart", multi[0][0].span)

    for part in rule.target.parts:
        if isinstance(part, Subst):
            _check_lookups(part.expr, rule, tables)


def _template_refs(rule: RenameRule) -> list[tuple[Ref, bool]]:
    out: list[tuple[Ref, bool]] = []

    def walk(expr, in_arith: bool) -> None:
        if isinstance(expr, Ref):
            out.append((expr, in_arith))
        elif isinstance(expr, BinOp):
            walk(expr.left, True)
            walk(expr.right, True)
        elif isinstance(expr, Lookup):
            walk(expr.key, False)

    for part in rule.target.parts:
        if isinstance(part, Subst):
            walk(part.expr, False)
    return out


def _check_lookups(expr, rule: RenameRule, tables: dict[str, dict[str, str]]) -> None:
    if isinstance(expr, BinOp):
        _check_lookups(expr.left, rule, tables)
        _check_lookups(expr.right, rule, tables)
    if not isinstance(expr, Lookup):
        return
    if expr.table not in tables:
        known = f" (tables: {', '.join(tables)})" if tables else ""
        raise SpecError(f"unknown table '{expr.table}'{known}", expr.span)
    _check_lookups(expr.key, rule, tables)
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
