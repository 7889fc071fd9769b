"""mapspec: a declarative mapping-spec compiler for neural-network checkpoints.

The public names below are imported on first use (PEP 562 `__getattr__`), not when the
package is: `mapspec apply` imports the parser, planner, executor and one format, not
`tools.draft`, `tools.inspect`, `tools.invert`, `tools.load` or `tools.verify` (CLI start was 0.4 s before, most of it
modules the command never ran)."""

from __future__ import annotations

from importlib import import_module
from typing import Any

from .version import __version__

# public name -> (module, attribute in it)
_EXPORTS: dict[str, tuple[str, str]] = {
    "check_spec": (".compile.checks", "check_spec"),
    "Draft": (".tools.draft", "Draft"),
    "draft_spec": (".tools.draft", "draft"),
    "CheckpointError": (".errors", "CheckpointError"),
    "ConversionError": (".errors", "ConversionError"),
    "MapspecError": (".errors", "MapspecError"),
    "PlanError": (".errors", "PlanError"),
    "Span": (".errors", "Span"),
    "SpecError": (".errors", "SpecError"),
    "SpecSyntaxError": (".errors", "SpecSyntaxError"),
    "UsageError": (".errors", "UsageError"),
    "Options": (".api", "Options"),
    "Report": (".api", "Report"),
    "apply": (".api", "apply"),
    "plan_for": (".api", "plan_for"),
    "open_source": (".formats", "open_source"),
    "read_infos": (".formats", "read_infos"),
    "inspect_checkpoint": (".tools.inspect", "inspect_checkpoint"),
    "Inversion": (".tools.invert", "Inversion"),
    "NotInvertible": (".tools.invert", "NotInvertible"),
    "invert_spec": (".tools.invert", "invert_spec"),
    "LoadReport": (".tools.load", "LoadReport"),
    "load_into": (".tools.load", "load_into"),
    "parse_spec": (".lang.parser", "parse_spec"),
    "Plan": (".compile.plan", "Plan"),
    "Step": (".compile.plan", "Step"),
    "UnusedRule": (".compile.plan", "UnusedRule"),
    "compile_spec": (".compile.plan", "compile_spec"),
    "TensorInfo": (".core.tensorinfo", "TensorInfo"),
    "remap": (".api", "remap"),
    "Verification": (".tools.verify", "Verification"),
    "verify_against": (".tools.verify", "verify_against"),
    "verify_roundtrip": (".tools.verify", "verify_roundtrip"),
}

__all__ = [*_EXPORTS, "__version__"]


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

