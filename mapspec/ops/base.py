"""What an action is: one `ActionDef` per action holds everything mapspec knows about it, so
no other module asks an action its name. The planner, the executor, `invert` and the presenter
call its methods; `registry` lists the defined ones.

A rule's data is a list of typed tensors (a shape and a dtype each). An action reads groups of
it: one tensor at a time (unary, split) or the members of one merge axis (merge). Each group
gives one output, or several (split; an action may also merge and split at once, such as a
dequantization of a weight and its scales into two tensors). In a plan step, where the output's
name fixes which piece is wanted, a splitting action computes that one piece (`index`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Mapping, NamedTuple, Sequence

from ..core import dtypes
from ..errors import PlanError, Span, SpecError
from ..lang.rules import Action, Tuple, Word
from .args import Shape, format_shape
from .blocks import keep_rows

Params = dict[str, Any]


class Rows(NamedTuple):
    """One block of rows of an action that works row by row: its input i's `inputs[i]` rows
    (a ragged last block holds fewer) give `output` rows of its output."""

    inputs: tuple[int, ...]
    output: int


class Typed(NamedTuple):
    """One tensor as the planner sees it: its shape and dtype, before anything is read."""

    shape: Shape
    dtype: str


@dataclass(frozen=True, slots=True)
class PlannedAction:
    """One action of a plan step with its arguments resolved, and the state after it: the
    shape of every tensor and their dtype (`dtype`; None where the tensors' dtypes differ,
    which `dtypes` then lists one by one). `groups` (merges) says which tensors go into each
    output group; `each` holds per-group arguments where they differ (a `view(-1, d)` of
    tensors of different sizes)."""

    name: str
    params: Mapping[str, Any]
    shapes: tuple[Shape, ...] = ()
    dtype: str | None = ""
    groups: tuple[tuple[int, ...], ...] | None = None
    each: tuple[Mapping[str, Any], ...] | None = None
    dtypes: tuple[str, ...] | None = None

    @property
    def outputs(self) -> list[Typed]:
        """The tensors after this action, each with its own dtype."""
        if self.dtypes is not None:
            return [Typed(tuple(s), d) for s, d in zip(self.shapes, self.dtypes)]
        return [Typed(tuple(s), self.dtype) for s in self.shapes]

    def to_json(self) -> dict:
        out: dict = {"name": self.name, "params": dict(self.params)}
        if self.each is not None:
            out["each"] = [dict(p) for p in self.each]
        if self.groups is not None:
            out["groups"] = [list(g) for g in self.groups]
        out["shapes"] = [list(s) for s in self.shapes]
        out["dtype"] = self.dtype
        if self.dtypes is not None:
            out["dtypes"] = list(self.dtypes)
        return out

    def __str__(self) -> str:
        args = ", ".join(f"{k}={v}" for k, v in self.params.items())
        return f"{self.name}({args})"


def planned(name: str, params: Sequence[Mapping[str, Any]], outputs: Iterable[Typed],
            groups: Sequence[Sequence[int]] | None = None) -> PlannedAction:
    """A planned action from its per-group arguments and its outputs: per-group arguments
    only if they differ, per-tensor dtypes only if they differ."""
    outputs = list(outputs)
    first = dict(params[0]) if params else {}
    same = all(q == first for q in params[1:])
    kinds = [t.dtype for t in outputs]
    one = len(set(kinds)) <= 1
    return PlannedAction(name, first, tuple(tuple(t.shape) for t in outputs), kinds[0] if one and kinds else
                         ("" if one else None), None if groups is None else tuple(tuple(g) for g in groups),
                         None if same else tuple(params), None if one else tuple(kinds))


@dataclass(frozen=True)
class InverseContext:
    """What `invert` knows of a rule at one action, for `ActionDef.spec_inverse`."""

    known: Shape | None  # the shape before the action, where the spec alone fixes it
    axis: str | None  # the source capture a merge consumes (over=, or the only one)
    into: str | None  # the target capture a split makes (into=, or the only one)
    count: int | None  # how many values `axis` takes, where the spec says (an alternation, a table)
    span: Any  # where the inverse actions are reported (the forward action)
    dtype: str | None = None  # the dtype before the action, where an expect(dtype=) or a cast fixes it


MADE = Span("<made by mapspec>", 1, 1, 1, 1)  # where an action made by mapspec, not written, is


def make(name: str, *args, span=None, **kwargs) -> Action:
    """An action as the spec would write it: integers, tuples (lists), capture names (str)."""
    def value(v):
        if isinstance(v, (list, tuple)):
            return Tuple(items=tuple(value(x) for x in v))
        return Word(name=v) if isinstance(v, str) else int(v)

    return Action(name=name, args=tuple(value(a) for a in args),
                  kwargs=tuple((k, value(v)) for k, v in kwargs.items() if v is not None), span=span or MADE)


class ActionDef:
    """One action. Subclasses define what they support; the defaults say "nothing more"."""

    name: str = ""
    kind: str = "unary"  # "unary", "merge" (a group -> one), "split" (one -> pieces), "merge-split"
    reorders = False  # moves values even where the shape comes out the same (shown by explain)
    needs = "the shape it started from"  # what its inverse reads from the forward plan
    dtype_only = False  # ... of which only the dtype (the shapes may differ)
    names_inputs = False  # its errors at compile time name the step's input keys (tensors that must fit)

    def __init__(self, name: str | None = None):
        if name is not None:
            self.name = name

    @property
    def merges(self) -> bool:
        return self.kind in ("merge", "merge-split")

    @property
    def splits(self) -> bool:
        return self.kind in ("split", "merge-split")

    # ---------------------------------------------------------------- compile time
    def normalize(self, action: Action) -> Params:
        """Static check of the arguments; the parameters as plain data."""
        raise NotImplementedError

    def infer(self, p: Params, inputs: list[Typed], action: Action) -> tuple[list[Typed], Params]:
        """One group's outputs (one, or every piece for a splitting action) and the resolved
        parameters that execute it. Errors are PlanErrors at `action`."""
        raise NotImplementedError

    def outputs(self, p: Params, inputs: list[Typed], action: Action) -> tuple[list[Typed], Params]:
        """`infer`, with every output's dimensions bounded (MAX_NDIM): what numpy would
        refuse while converting is a PlanError at `action` while planning."""
        outs, resolved = self.infer(p, inputs, action)
        for t in outs:
            if len(t.shape) > dtypes.MAX_NDIM:
                raise PlanError(f"{action.name}() makes a tensor of {len(t.shape)} dimensions; tensors have at "
                                f"most {dtypes.MAX_NDIM}", action.span)
        return outs, resolved

    def piece(self, resolved: Params, index: int) -> Params:
        """The resolved parameters of a splitting action that compute output `index` only."""
        return {**resolved, "index": index}

    def count(self, p: Params) -> int | None:
        """How many outputs a splitting action makes, when its arguments alone tell."""
        return None

    # ---------------------------------------------------------------- execution
    def unchanged(self, p: Params, before: Typed, after: Typed) -> bool:
        """Does the action, taking one tensor from `before` to `after`, leave its bytes as
        they are? A step of such actions alone is a file-to-file copy (an `expect`, a cast to
        the dtype the tensor has: llama.cpp's outtype f16 of an f16 model). No, by default."""
        return False

    def rows(self, p: Params, inputs: list[Typed]) -> Rows | None:
        """Whether the action works a block of rows (slices of the first dimension) at a
        time, each block of its output computed from the matching blocks of its inputs
        alone; then the executor may run it slice by slice, holding a slice of the tensors,
        not all of them. None: it needs whole tensors (the default)."""
        return None

    def run(self, p: Params, arrays: list) -> list:
        """The group's arrays -> its output arrays (with `index` in `p`: that one, or all)."""
        raise NotImplementedError

    # ---------------------------------------------------------------- inversion
    def inverse(self, p: Params, inputs: list[Typed]) -> list[PlannedAction] | None:
        """The planned actions that undo this one given what went into it; None if it loses
        information."""
        return None

    def loss(self, pa: PlannedAction) -> tuple[str, list[PlannedAction]] | None:
        """For a lossy action whose inverse `--lossy` may still take: what is lost, and that
        inverse. None: no inverse at all."""
        return None

    def spec_inverse(self, p: Params, ctx: InverseContext) -> list[Action] | None:
        """The inverse the spec alone gives, as spec actions; None if it needs the forward
        plan (shapes, dtypes)."""
        return None

    def shape_after(self, p: Params, known: Shape | None) -> Shape | None:
        """The shape after the action, where the spec alone fixes it."""
        return None

    def dtype_after(self, p: Params, known: str | None) -> str | None:
        """The dtype after the action, where the spec alone fixes it (most keep it)."""
        return known

    def written(self, pa: PlannedAction, axis: str | None, span=None) -> Action | None:
        """A planned action (an inverse) as one spec action, or None if it cannot be one;
        `axis`: the capture its merge consumes or its split makes."""
        return None

    # ---------------------------------------------------------------- the model's config
    def config(self, p: Params) -> tuple[dict, frozenset] | None:
        """What the action means for the model's config.json: (keys set, keys removed), e.g.
        a dequantize removes `quantization_config` (see `core.modelconfig`); None: nothing."""
        return None

    # ---------------------------------------------------------------- presentation
    def display(self, pa: PlannedAction, index: bool = True) -> str:
        """The planned action as `explain` shows it."""
        p = pa.params
        return f"{pa.name}({', '.join(str(v) for k, v in p.items() if k not in ('each', 'groups'))})"


class Unary(ActionDef):
    """An action on one tensor at a time."""

    kind = "unary"

    def run(self, p: Params, arrays: list) -> list:
        return [self.apply(p, arrays[0])]

    def apply(self, p: Params, array):
        raise NotImplementedError


class Reshaping(Unary):
    """A unary action that changes the shape only; the dtype passes through."""

    def infer(self, p: Params, inputs: list[Typed], action: Action) -> tuple[list[Typed], Params]:
        (t,) = inputs
        shape, resolved = self.shape(p, tuple(t.shape), action)
        outputs = [Typed(tuple(shape), t.dtype)]
        return outputs, keep_rows(self.name, inputs, outputs, resolved, action)

    def shape(self, p: Params, shape: Shape, action: Action) -> tuple[Shape, Params]:
        raise NotImplementedError


def unknown(action: Action, known: Iterable[str]) -> SpecError:
    return SpecError(f"unknown action '{action.name}' (known: {', '.join(sorted(known))})", action.span)


__all__ = ["ActionDef", "InverseContext", "PlannedAction", "Params", "Reshaping", "Rows", "Shape", "Typed", "Unary",
           "format_shape", "make", "planned", "unknown"]
