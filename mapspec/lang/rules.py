"""The rule graph: pydantic models built from the parse tree.

Every node keeps the span it was written at, so any later check (in `checks`, in the
planner, at execution) can point at the exact `file:line:col`.
"""

from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field

from ..errors import Span


class Node(BaseModel):
    """A frozen record of the rule graph: fields declared with their types, compared and
    hashed by value, copied with `model_copy(update=...)`.

    Nodes are built only by mapspec's own code (the parser, the inverter, the checks), from
    values of the declared types, so `Node(...)` checks the field names (a missing or unknown
    one is a TypeError) but not the types: pydantic's validation builds each node class's
    schema on its first use, 30 ms of every run, the largest part of a small conversion after
    the imports. The tests pin what the parser builds, types included. defer_build: the
    schemas are never built unless something asks pydantic to validate or serialize."""

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True, defer_build=True)

    def __init__(self, /, **data) -> None:
        cls = type(self)
        fields, names = cls.__dict__.get("_node_fields") or cls._fields()
        if not names.issuperset(data):
            raise TypeError(f"{cls.__name__}: unknown field(s) {', '.join(sorted(set(data) - names))}")
        values = {}
        for name, default in fields:
            if name in data:
                values[name] = data[name]
            elif default is _REQUIRED:
                raise TypeError(f"{cls.__name__}: missing field '{name}'")
            else:
                values[name] = default
        object.__setattr__(self, "__dict__", values)
        object.__setattr__(self, "__pydantic_fields_set__", set(data))
        object.__setattr__(self, "__pydantic_extra__", None)
        object.__setattr__(self, "__pydantic_private__", None)

    @classmethod
    def _fields(cls) -> tuple[tuple, frozenset]:
        """(name, default or _REQUIRED) per field in declaration order, and the names; kept
        on the class."""
        out = []
        for name, info in cls.model_fields.items():
            if info.default_factory is not None:
                raise TypeError(f"{cls.__name__}.{name}: nodes take plain defaults")  # none do
            out.append((name, _REQUIRED if info.is_required() else info.default))
        fields = (tuple(out), frozenset(name for name, _ in out))
        type.__setattr__(cls, "_node_fields", fields)
        return fields


_REQUIRED = object()


# ------------------------------------------------------------------ key patterns

class Lit(Node):
    kind: Literal["lit"] = "lit"
    text: str


class Capture(Node):
    """`{name}` one segment, `{name:int}`, `{name:a|b}`, `{name in table}`, `{name:*}`,
    `{name:**}`; `*` and `**` are captures without a name."""

    kind: Literal["capture"] = "capture"
    name: str | None
    type: Literal["segment", "int", "alt", "table", "multi"]
    alternatives: tuple[str, ...] = ()
    table: str | None = None
    condition: tuple[str, int] | None = None  # `{a:int>0}`: (">", 0); the key matches only where it holds
    span: Span

    def holds(self, text: str) -> bool:
        """Whether a captured value meets the capture's condition (if it has one)."""
        if self.condition is None:
            return True
        op, bound = self.condition
        v = int(text)
        return {"==": v == bound, "!=": v != bound, "<": v < bound, "<=": v <= bound,
                ">": v > bound, ">=": v >= bound}[op]

    @property
    def numeric(self) -> bool:
        """Usable in arithmetic: `{i:int}`, or alternatives that are all numbers (`{i:0|3|6}`,
        an integer capture restricted to those values)."""
        return self.type == "int" or (self.type == "alt" and all(a.isdigit() and a.isascii()
                                                                   for a in self.alternatives))


PatternPart = Annotated[Union[Lit, Capture], Field(discriminator="kind")]


def join_literals(parts) -> tuple:
    """Key parts with adjacent literal text as one `Lit`, as a parsed key has them."""
    out: list = []
    for p in parts:
        if type(p) is Lit and out and type(out[-1]) is Lit:
            out[-1] = Lit(text=out[-1].text + p.text)
        else:
            out.append(p)
    return tuple(out)


class Pattern(Node):
    parts: tuple[PatternPart, ...]
    text: str
    span: Span

    def conditions(self) -> list[Capture]:
        return [p for p in self.parts if isinstance(p, Capture) and p.condition is not None]

    def captures(self) -> dict[str, Capture]:
        return {p.name: p for p in self.parts if type(p) is Capture and p.name}  # (a failing isinstance costs 4x)


# ------------------------------------------------------------------ templates

class Ref(Node):
    kind: Literal["ref"] = "ref"
    name: str
    span: Span


class Num(Node):
    kind: Literal["num"] = "num"
    value: int


class BinOp(Node):
    kind: Literal["binop"] = "binop"
    op: Literal["+", "-", "*", "//", "%"]
    left: "Expr"
    right: "Expr"


class Lookup(Node):
    kind: Literal["lookup"] = "lookup"
    table: str
    key: "Expr"
    span: Span


class Neg(Node):
    kind: Literal["neg"] = "neg"
    operand: "Expr"


class Dec(Node):
    """A decimal number (`10000.0`, `1e-6`): metadata values and float parameters."""

    kind: Literal["dec"] = "dec"
    value: float
    text: str


class Call(Node):
    """`uint32(n_layers)`, `float32(rope_theta)`: a value given a metadata type."""

    kind: Literal["call"] = "call"
    func: str
    arg: "Expr"
    span: Span


Expr = Annotated[Union[Ref, Num, BinOp, Lookup, Neg, Dec, Call], Field(discriminator="kind")]


class Subst(Node):
    kind: Literal["subst"] = "subst"
    expr: Expr
    span: Span
    name: str | None = None  # `{t=EXPR}`: the target's number, named for a `reverse ->` clause


class Fanout(Node):
    """A capture declared in a template: one output per value (split/chunk targets)."""

    kind: Literal["fanout"] = "fanout"
    capture: Capture


TemplatePart = Annotated[Union[Lit, Subst, Fanout], Field(discriminator="kind")]


class Template(Node):
    parts: tuple[TemplatePart, ...]
    text: str
    span: Span


# ------------------------------------------------------------------ actions

class Word(Node):
    """A bare name argument: a parameter until parameters are bound, else a word such as a
    dtype or a capture named by over=/into=."""

    kind: Literal["word"] = "word"
    name: str
    span: Span | None = None


class Calc(Node):
    """An arithmetic argument such as `head_dim // 2`, evaluated when parameters are bound."""

    kind: Literal["calc"] = "calc"
    expr: Expr
    span: Span


class Text(Node):
    kind: Literal["text"] = "text"
    value: str


class Tuple(Node):
    kind: Literal["tuple"] = "tuple"
    items: tuple["Value", ...]
    append: bool = False


Value = Annotated[Union[int, Word, Text, Tuple, Calc], Field(union_mode="left_to_right")]


class Action(Node):
    name: str
    args: tuple[Value, ...] = ()
    kwargs: tuple[tuple[str, Value], ...] = ()
    span: Span


# ------------------------------------------------------------------ statements

class Reverse(Node):
    """`reverse -> KEY [then ...]`: how a rule inverts, where the derived inverse is not wanted."""

    target: Template | None  # None: `reverse none`, the rule has no part in the inverse
    actions: tuple[Action, ...] | None = None  # None: the derived inverse actions
    where: Template | None = None  # the inverse rule's `where` (forward captures, as in target)
    span: Span


class RenameRule(Node):
    """`SOURCE -> TARGET then ...`; also a `copy` (one more output of a key some other rule
    matches, `if_absent`: only when no other rule produces that target) and the catch-all
    `otherwise` (matches only keys no other rule matched)."""

    kind: Literal["rename"] = "rename"
    sources: tuple[Pattern, ...]
    target: Template
    actions: tuple[Action, ...] = ()
    reverse: Reverse | None = None
    where: Template | None = None  # applies only where the checkpoint holds this key too
    span: Span
    is_copy: bool = False
    if_absent: bool = False
    otherwise: bool = False
    optional: bool = False  # may match nothing (a spec covering several layouts)


class DropRule(Node):
    kind: Literal["drop"] = "drop"
    patterns: tuple[Pattern, ...]
    span: Span
    otherwise: bool = False
    reverse_none: bool = False  # `reverse none`: the inverse may leave these keys out, reported
    optional: bool = False


class KeepRule(Node):
    """Pass keys through under their own name, through unary actions if any."""

    kind: Literal["keep"] = "keep"
    patterns: tuple[Pattern, ...]
    actions: tuple[Action, ...] = ()
    span: Span
    otherwise: bool = False
    optional: bool = False


Rule = Annotated[Union[RenameRule, DropRule, KeepRule], Field(discriminator="kind")]


class TableEntry(Node):
    key: str
    value: str
    span: Span


class Table(Node):
    name: str
    entries: tuple[TableEntry, ...]
    span: Span

    def mapping(self) -> dict[str, str]:
        return {e.key: e.value for e in self.entries}


class Param(Node):
    """`param NAME [: int|str|float|bool] [from "CONFIG.KEY" | "OTHER.KEY"... | len("CONFIG.KEY")]
    [= DEFAULT]`: a value given when compiling. `= none` makes it optional: absent when
    nothing gives it."""

    kind: Literal["param"] = "param"
    name: str
    type: Literal["int", "str", "float", "bool"] = "int"
    config_key: str | None = None
    more_keys: tuple[str, ...] = ()  # further config keys, tried in order after config_key
    config_len: bool = False  # `from len("KEY")`: the length of the list at KEY
    default: Expr | str | None = None
    span: Span

    @property
    def config_keys(self) -> tuple[str, ...]:
        return ((self.config_key,) if self.config_key is not None else ()) + self.more_keys


class Let(Node):
    """`let NAME = EXPR`: a value derived from parameters (never set from outside)."""

    kind: Literal["let"] = "let"
    name: str
    expr: Expr
    span: Span


class Assertion(Node):
    """`assert EXPR OP EXPR [, "message"]`, checked once parameters are bound."""

    left: Expr
    op: Literal["==", "!=", "<", "<=", ">", ">="]
    right: Expr
    message: str | None = None
    span: Span


Definition = Annotated[Union[Param, Let], Field(discriminator="kind")]


class MetaEntry(Node):
    """`meta KEY = VALUE`: one file-level metadata entry (see `params.bind_meta`)."""

    kind: Literal["entry"] = "entry"
    key: str
    value: Expr | str
    span: Span


class MetaFrom(Node):
    """`meta from PROVIDER("arg", ...)`: the entries a provider computes from the model
    directory (`tokenizer`: llama.cpp's tokenizer.ggml.* keys)."""

    kind: Literal["from"] = "from"
    provider: str
    args: tuple[str, ...] = ()
    span: Span


Meta = Annotated[Union[MetaEntry, MetaFrom], Field(discriminator="kind")]


class Header(Node):
    version: int = 1
    source: str | None = None
    target: str | None = None
    select: str | None = None
    ranks_side: Literal["source", "target"] | None = None  # which side is rank files
    ranks: tuple[str, ...] = ()  # their file name templates (`ranks` statement)
    ranks_under: str | None = None  # each rank file holds its tensors under this key
    ranks_entries: tuple["TableEntry", ...] = ()  # ... beside these entries (rendered with the parameters)
    span: Span | None = None


class WriteFile(Node):
    """`write "params.json" { dim = {hidden} ... }`: a small file beside the output, its
    entries rendered with the parameters' values (a JSON object), or one rendered text."""

    path: str
    entries: tuple[TableEntry, ...] | None = None
    text: str | None = None
    span: Span


class Spec(Node):
    """A parsed, include-resolved spec: tables and rules in source order."""

    file: str
    header: Header
    tables: tuple[Table, ...] = ()
    rules: tuple[Rule, ...] = ()
    includes: tuple[str, ...] = ()
    definitions: tuple[Definition, ...] = ()  # params and lets, in source order
    assertions: tuple[Assertion, ...] = ()
    meta: tuple[Meta, ...] = ()  # file-level metadata, in source order
    writes: tuple[WriteFile, ...] = ()

    def table_map(self) -> dict[str, Table]:
        return {t.name: t for t in self.tables}
