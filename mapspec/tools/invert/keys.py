"""Keys inverted: the forward target becomes the inverse's pattern (each capture's value an
expression the inverse's template writes back), the forward source its template."""

from __future__ import annotations

from typing import Callable

from ...core.quoting import shown
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

    def pattern_from(self, target: Template, caps: dict[str, Capture], span: Span, stated: bool = False):
        """The inverse's pattern, and for each forward capture the expression of its value.
        `stated`: a `reverse ->` clause writes the key back, so a number the inverse cannot
        read back is matched as any integer (the clause computes what it needs from named ones)."""
        parts: list = []
        values: dict[str, object] = {}
        self._divmod_pairs = _divmod_pairs(target)
        ok = True
        for part in target.parts:
            if isinstance(part, Lit):
                parts.append(part)
            elif isinstance(part, Fanout):
                parts.append(part.capture)
            elif stated and part.name is None and not self._invertible(part.expr):
                parts.append(Capture(name=f"_{len(parts)}", type="int", span=part.span))
            elif part.name is not None and not self._invertible(part.expr):
                # `{t=EXPR}`: the inverse captures the number as t; a `reverse ->` clause
                # computes the source's numbers from it
                if not self._bind(part.name, values, part.span):
                    ok = False
                    continue
                values[part.name] = Ref(name=part.name, span=part.span)
                parts.append(Capture(name=part.name, type="int", span=part.span))
            else:
                got = self._invert_expr(part, caps, values)
                if got is None:
                    ok = False
                else:
                    parts.append(got)
                    if part.name is not None:  # the number the pattern captures, by its name too
                        values.setdefault(part.name, Ref(name=got.name, span=part.span))
        if not ok:
            return None, values
        parts = join_literals(parts)
        return Pattern(parts=parts, text=write.pattern(parts), span=span), values

    def _invertible(self, expr) -> bool:
        dm = _divmod(expr)
        return isinstance(expr, (Ref, Lookup)) or _linear(expr) is not None or (
            dm is not None and dm[1] in self._divmod_pairs)

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
                    self.fail(f"table '{expr.table}' maps both {shown(inverse[v])} and {shown(k)} to {shown(v)}: it is not "
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
            name, sign, offset = linear
            if not self._bind(name, values, part.span):
                return None
            ref = Ref(name=name, span=part.span)
            if sign < 0:  # t = k - c: c = k - t, its own inverse
                values[name] = BinOp(op="-", left=Num(value=offset), right=ref)
            else:
                values[name] = ref if offset == 0 else BinOp(op="-" if offset > 0 else "+", left=ref,
                                                             right=Num(value=abs(offset)))
            return Capture(name=name, type="int", span=part.span)
        dm = _divmod(expr)
        if dm is not None and dm[1] in self._divmod_pairs:
            # {(c+o)//m + dq} and {(c+o)%m + dr} in one template: together they give c back
            kind, name, m, o, d = dm
            pair = self._divmod_pairs[name]
            q, r = f"{name}_div", f"{name}_mod"
            if name not in values:
                quotient = Ref(name=q, span=part.span)
                if pair["//"]:
                    quotient = BinOp(op="-", left=quotient, right=Num(value=pair["//"]))
                c = BinOp(op="+", left=BinOp(op="*", left=quotient, right=Num(value=m)), right=Ref(name=r, span=part.span))
                rest = -pair["%"] - o
                values[name] = c if not rest else BinOp(op="+" if rest > 0 else "-", left=c, right=Num(value=abs(rest)))
            if kind == "//":
                return Capture(name=q, type="int", span=part.span)
            return Capture(name=r, type="alt", alternatives=tuple(str(d + i) for i in range(m)), span=part.span)
        shown_expr = write.expr(expr, compact=True)
        self.fail(f"template arithmetic {{{shown_expr}}} cannot be inverted (only {{c + k}}, "
                  "{k - c}, and {(c+k)//m} with {(c+k)%m} in one template can); state the inverse: name the "
                  f"number in the target ({{t={shown_expr}}}) and compute the source's from it in "
                  "`reverse -> ...` (e.g. {2*t})", part.span)
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
                self.fail(f"{{{node.name}}} is not known to the inverse (it does not reach the target as a "
                          "number the inverse can read back); name the target's number (`{t=EXPR}`) and compute "
                          f"{{{node.name}}} from t here", node.span)
                return None
            if type(node) is Lookup:
                self.used_tables.add(node.table)
        return transform(expr, lambda e: values[e.name] if type(e) is Ref else e)


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
            for node, _ in walk(part.expr):
                if type(node) is Ref:
                    uses[node.name] = uses.get(node.name, 0) + 1
            dm = _divmod(part.expr)
            if dm is not None:
                found.setdefault(dm[1], []).append(dm)
    out = {}
    for name, dms in found.items():
        if len(dms) == 2 and uses.get(name) == 2 and {x[0] for x in dms} == {"//", "%"} \
                and len({(x[2], x[3]) for x in dms}) == 1:
            out[name] = {x[0]: x[4] for x in dms}
    return out


def refs_in(template: Template) -> set[str]:
    return {name for part in template.parts if isinstance(part, Subst) for name in names(part.expr)}


def _ctype(cap: Capture) -> str:
    return {"int": "int", "multi": "**", "segment": "*"}.get(cap.type) or "|".join(cap.alternatives)
