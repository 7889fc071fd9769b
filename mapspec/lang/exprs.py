"""Generic traversal of template and parameter expressions (`Ref`, `Num`, `Dec`, `BinOp`,
`Lookup`, `Neg`, `Call`): every pass over them (names used, evaluation, substitution, writing) goes through
`children`, `walk`, `fold` or `transform` instead of its own isinstance chain."""

from __future__ import annotations

from typing import Any, Callable, Iterator

from .rules import BinOp, Call, Lookup, Neg, Ref


def children(expr) -> tuple:
    """The sub-expressions of one node, left to right."""
    kind = type(expr)  # (not isinstance: failing, on a pydantic node, it costs 4x)
    if kind is BinOp:
        return (expr.left, expr.right)
    if kind is Neg:
        return (expr.operand,)
    if kind is Lookup:
        return (expr.key,)
    if kind is Call:
        return (expr.arg,)
    return ()


def walk(expr, parent=None) -> Iterator[tuple[Any, Any]]:
    """Every node with its parent (None at the top), depth first, left to right."""
    stack = [(expr, parent)]
    while stack:
        node, up = stack.pop()
        yield node, up
        stack.extend((c, node) for c in reversed(children(node)))


def names(expr) -> set[str]:
    """The names (captures, parameters) an expression uses."""
    return {node.name for node, _ in walk(expr) if type(node) is Ref}


def fold(expr, visit: Callable[[Any, list], Any]):
    """Bottom-up: `visit(node, [the results of its children])` for every node; the top's result."""
    return visit(expr, [fold(c, visit) for c in children(expr)])


def transform(expr, change: Callable[[Any], Any]):
    """The expression rebuilt bottom-up with `change(node)` applied to every node (after its
    children are changed); nodes `change` returns as they are stay shared."""
    kind = type(expr)
    if kind is BinOp:
        left, right = transform(expr.left, change), transform(expr.right, change)
        if left is not expr.left or right is not expr.right:
            expr = expr.model_copy(update={"left": left, "right": right})
    elif kind is Neg:
        operand = transform(expr.operand, change)
        if operand is not expr.operand:
            expr = expr.model_copy(update={"operand": operand})
    elif kind is Lookup:
        key = transform(expr.key, change)
        if key is not expr.key:
            expr = expr.model_copy(update={"key": key})
    elif kind is Call:
        arg = transform(expr.arg, change)
        if arg is not expr.arg:
            expr = expr.model_copy(update={"arg": arg})
    return change(expr)
