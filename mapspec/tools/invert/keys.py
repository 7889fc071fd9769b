"""Keys inverted: the forward target becomes the inverse's pattern (each capture's value an
expression the inverse's template writes back), the forward source its template."""

from __future__ import annotations

from typing import Callable

from ...errors import Span
from ...lang import text as write
from ...lang.exprs import names, transform, walk
from ...lang.rules import BinOp, Capture, Fanout, Lit, Lookup, Num, Pattern, Ref, Subst, Template, join_literals


class Keys:
    """The keys of one inversion, rule by rule; the tables it inverts on the way (a lookup
    `{t[c]}` becomes a capture over `t_r`, `t` inverted where it is one-to-one)."""

    def __init__(self, tables: dict[str, dict[str, str]], fail: Callable[[str, Span | None], None]):
        self.tables = tables  # the forward spec's
        self.fail = fail
        self.used_tables: set[str] = set()  # forward tables the inverse uses as they are
        self.new_tables: dict[str, tuple[dict[str, str], Span]] = {}  # inverted tables: name -> (entries, where made)

    def pattern_from(self, target: Template, caps: dict[str, Capture], span: Span):
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
                    self.fail(f"table '{expr.table}' maps both '{inverse[v]}' and '{k}' to '{v}': it is not "
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
        self.fail(f"template arithmetic {{{write.expr(expr, compact=True)}}} cannot be inverted (only {{c + k}} and "
                   "{c - k} can); state the inverse with `reverse -> ...`", part.span)
        return None

    def _bind(self, name: str, values: dict[str, object], span: Span) -> bool:
        if name in values:
            self.fail(f"{{{name}}} appears twice in the target; the inverse would bind it twice", span)
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

    def template_from(self, node, values: dict[str, object], merge_axes: list[Capture],
                       reported: set[str]) -> Template | None:
        axes = {c.name: c for c in merge_axes}
        out: list = []
        ok = True
        for part in node.parts:
            if isinstance(part, Lit):
                out.append(part)
            elif isinstance(part, Capture):
                if part.name is None:
                    self.fail(f"the wildcard {'**' if part.type == 'multi' else '*'} in {node.text} does not "
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
                    self.fail(f"capture {{{part.name}}} does not reach the target, so the inverse cannot tell "
                               f"which {_ctype(part) if part.type == 'alt' else 'value'} to write back; state "
                               "it with `reverse -> ...`", part.span)
                    ok = False
            elif isinstance(part, Fanout):
                out.append(part)
            else:  # a reverse clause's substitution: forward captures -> the inverse's values
                expr = self.substitute(part.expr, values)
                if expr is None:
                    ok = False
                else:
                    out.append(Subst(expr=expr, span=part.span))
        if not ok:
            return None
        parts = join_literals(out)
        return Template(parts=parts, text=write.template(parts), span=node.span)

    def substitute(self, expr, values: dict[str, object]):
        """A reverse clause's expression over the forward captures, over the inverse's values."""
        for node, _ in walk(expr):
            if type(node) is Ref and node.name not in values:
                self.fail(f"{{{node.name}}} is not known to the inverse (it does not reach the target)", node.span)
                return None
            if type(node) is Lookup:
                self.used_tables.add(node.table)
        return transform(expr, lambda e: values[e.name] if type(e) is Ref else e)


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


def refs_in(template: Template) -> set[str]:
    return {name for part in template.parts if isinstance(part, Subst) for name in names(part.expr)}


def _ctype(cap: Capture) -> str:
    return {"int": "int", "multi": "**", "segment": "*"}.get(cap.type) or "|".join(cap.alternatives)
