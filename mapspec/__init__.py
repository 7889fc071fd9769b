"""mapspec: a declarative mapping-spec compiler for neural-network checkpoints.

The public names below are imported on first use (PEP 562 `__getattr__`), not when the
package is: `mapspec apply` imports the parser, planner, executor and one format, not
`draft`, `inspect`, `invert`, `load` or `verify` (CLI start was 0.4 s before, most of it
modules the command never ran)."""

from __future__ import annotations

from importlib import import_module
from typing import Any

from .remap import remap  # eager: the submodule `mapspec.remap` would otherwise shadow the function
from .version import __version__

# public name -> (module, attribute in it)
_EXPORTS: dict[str, tuple[str, str]] = {
    "check_spec": (".checks", "check_spec"),
    "Draft": (".draft", "Draft"),
    "draft_spec": (".draft", "draft"),
    "CheckpointError": (".errors", "CheckpointError"),
    "ConversionError": (".errors", "ConversionError"),
    "MapspecError": (".errors", "MapspecError"),
    "PlanError": (".errors", "PlanError"),
    "Span": (".errors", "Span"),
    "SpecError": (".errors", "SpecError"),
    "SpecSyntaxError": (".errors", "SpecSyntaxError"),
    "UsageError": (".errors", "UsageError"),
    "Report": (".executor", "Report"),
    "apply": (".executor", "apply"),
    "plan_for": (".executor", "plan_for"),
    "open_source": (".formats", "open_source"),
    "read_infos": (".formats", "read_infos"),
    "inspect_checkpoint": (".inspect", "inspect_checkpoint"),
    "Inversion": (".invert", "Inversion"),
    "NotInvertible": (".invert", "NotInvertible"),
    "invert_spec": (".invert", "invert_spec"),
    "LoadReport": (".load", "LoadReport"),
    "load_into": (".load", "load_into"),
    "parse_spec": (".parser", "parse_spec"),
    "Plan": (".plan", "Plan"),
    "Step": (".plan", "Step"),
    "UnusedRule": (".plan", "UnusedRule"),
    "compile_spec": (".plan", "compile_spec"),
    "TensorInfo": (".tensorinfo", "TensorInfo"),
    "Verification": (".verify", "Verification"),
    "verify_against": (".verify", "verify_against"),
    "verify_roundtrip": (".verify", "verify_roundtrip"),
}

__all__ = [*_EXPORTS, "remap", "__version__"]


def __getattr__(name: str) -> Any:
    try:
        module, attr = _EXPORTS[name]
    except KeyError:
        raise AttributeError(f"module 'mapspec' has no attribute '{name}'") from None
    value = getattr(import_module(module, __name__), attr)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})

