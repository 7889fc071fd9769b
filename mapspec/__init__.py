"""mapspec: a declarative mapping-spec compiler for neural-network checkpoints."""

from .checks import check_spec
from .draft import Draft, draft as draft_spec
from .errors import (
    CheckpointError,
    ConversionError,
    MapspecError,
    PlanError,
    Span,
    SpecError,
    SpecSyntaxError,
    UsageError,
)
from .executor import Report, apply, plan_for
from .formats import open_source, read_infos
from .inspect import inspect_checkpoint
from .invert import Inversion, NotInvertible, invert_spec
from .load import LoadReport, load_into
from .parser import parse_spec
from .plan import Plan, Step, UnusedRule, compile_spec
from .remap import remap
from .tensorinfo import TensorInfo
from .verify import Verification, verify_against, verify_roundtrip

from .version import __version__

__all__ = [
    "CheckpointError", "ConversionError", "Draft", "MapspecError", "Plan", "PlanError", "UnusedRule", "Report", "Span",
    "SpecError", "SpecSyntaxError", "Step", "TensorInfo", "UsageError", "apply", "check_spec",
    "compile_spec", "draft_spec", "inspect_checkpoint", "load_into", "LoadReport", "open_source", "parse_spec",
    "plan_for", "read_infos", "remap", "__version__", "Inversion", "NotInvertible", "invert_spec", "Verification",
    "verify_against", "verify_roundtrip",
]
