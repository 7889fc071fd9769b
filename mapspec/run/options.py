"""The options every command that compiles a spec against a checkpoint shares, as one object:
the CLI builds it from its flags, and `mapspec.apply`, `plan_for`, `inverse_plan_for`,
`remap` and the verify tools take it (or the same names as keywords)."""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any, Mapping

from ..compile.params import Config


@dataclass(frozen=True)
class Options:
    target: Any = None  # a template checkpoint path, a model factory text, or {name: TensorInfo}
    select: str | None = None  # a sub-tree of the checkpoint ('' for the whole file; None: automatic)
    epoch: int | None = None  # MXNet: the checkpoint is a prefix; read PREFIX-EPOCH.params
    strict: bool = True  # every source key must be matched (False: unmatched keys left out, warned)
    fit: str = "strict"  # with target: strict, shape or drop
    drop: tuple[str, ...] = ()  # with fit="drop": output globs left out
    strict_rules: bool = False  # a rule that matches no key is an error
    params: Mapping[str, object] | None = None  # the spec's parameters (as -p NAME=VALUE)
    config: Config = None  # a config.json the spec's parameters read

    @classmethod
    def of(cls, options: "Options | None" = None, **overrides: Any) -> "Options":
        """`options` (or the defaults) with `overrides` (field names) set; an unknown name is a
        TypeError, as for any keyword argument."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise TypeError(f"unexpected keyword argument {unknown[0]!r} (options: {', '.join(sorted(known))})")
        if "drop" in overrides:
            overrides["drop"] = tuple(overrides["drop"] or ())
        return replace(options or cls(), **overrides)

    def compiling(self, target: Any = None, *, inverse: bool = False) -> dict[str, Any]:
        """The keywords `compile_spec` takes (`Inversion.compile` with `inverse`: a derived
        inverse states its parameters' values already), `target` resolved to infos."""
        out = dict(target=target, strict=self.strict, fit=self.fit, drop=self.drop, strict_rules=self.strict_rules)
        return out if inverse else dict(out, params=self.params, config=self.config)
