"""Reading an action's arguments as written: positional and keyword binding, integers,
tuples, capture names; every error points at the action."""

from __future__ import annotations

from ..errors import PlanError as ShapeError, SpecError
from ..lang.rules import Action, Calc, Text, Tuple, Value, Word

Shape = tuple[int, ...]


def bind(action: Action, names: list[str], required: int) -> dict[str, Value]:
    """Positional and keyword arguments to names; arity errors at the action."""
    if len(action.args) > len(names):
        raise SpecError(
            f"{action.name}() takes {_arity(names, required)}, got {len(action.args)}", action.span)
    bound: dict[str, Value] = dict(zip(names, action.args))
    for key, value in action.kwargs:
        if key not in names:
            raise SpecError(f"{action.name}() has no argument '{key}' (it takes {', '.join(names)})",
                            action.span)
        if key in bound:
            raise SpecError(f"{action.name}() got '{key}' twice", action.span)
        bound[key] = value
    missing = [n for n in names[:required] if n not in bound]
    if missing:
        raise SpecError(f"{action.name}() takes {_arity(names, required)}; missing {', '.join(missing)}",
                        action.span)
    return bound


def _arity(names: list[str], required: int) -> str:
    if required == len(names):
        return f"{required} argument{'s' if required != 1 else ''} ({', '.join(names)})"
    return f"{required} to {len(names)} arguments ({', '.join(names)})"


def integer(action: Action, value: Value, what: str) -> int:
    if isinstance(value, Word):
        raise SpecError(f"{action.name}(): {what} must be an integer; '{value.name}' is not a parameter",
                        value.span or action.span)
    if isinstance(value, bool) or not isinstance(value, int):
        raise SpecError(f"{action.name}(): {what} must be an integer, got {show(value)}", action.span)
    return value


def optional_int(action: Action, bound: dict[str, Value], key: str, default: int = 0) -> int:
    return integer(action, bound[key], key) if key in bound else default


def capture_name(action: Action, bound: dict[str, Value], key: str) -> str | None:
    """A capture named by over= / into=."""
    if key not in bound:
        return None
    value = bound[key]
    if not isinstance(value, Word):
        raise SpecError(f"{action.name}(): {key}= names a capture of the rule, got {show(value)}", action.span)
    return value.name


def integers(action: Action, value: Value, what: str) -> list[int]:
    if not isinstance(value, Tuple) or value.append:
        raise SpecError(f"{action.name}(): {what} must be a tuple of integers such as (2, 3)", action.span)
    return [integer(action, v, what) for v in value.items]


def show(value: Value) -> str:
    if isinstance(value, Word):
        return value.name
    if isinstance(value, Text):
        return repr(value.value)
    if isinstance(value, Tuple):
        return ("+" if value.append else "") + "(" + ", ".join(show(v) for v in value.items) + ")"
    if isinstance(value, Calc):
        return "an expression"
    return str(value)


def varargs_as_tuple(action: Action) -> Action:
    """`view(2, 3)` and `view((2, 3))` mean the same; so do permute's."""
    if action.args and not any(isinstance(a, Tuple) for a in action.args):
        return action.model_copy(update={"args": (Tuple(items=action.args),)})
    return action


def axis(dim: int, ndim: int, action_name: str, span, extra: int = 0) -> int:
    n = ndim + extra
    if not -n <= dim < n:
        raise ShapeError(f"{action_name}(): dim {dim} is out of range for a {ndim}-d tensor", span)
    return dim % n if n else 0


def format_shape(shape: Shape) -> str:
    return "(" + ", ".join(str(s) for s in shape) + ("," if len(shape) == 1 else "") + ")"
