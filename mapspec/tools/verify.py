"""Numerical verification of a conversion (`mapspec verify`).

A conversion runs through the ordinary executor, but into a `CompareSink` that reads the
reference tensor of the same name and compares instead of writing: one tensor in memory at a
time (plus a bounded window of float64 values for the tolerance check), nothing on disk.
`--against REFERENCE` compares with a checkpoint produced another way; without it, the spec
runs forward into a temporary file and its inverse runs back from there into the comparison
with the original (see `invert`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
import tempfile
from pathlib import Path
from typing import Callable
from ..core.lazy import numpy as np

from ..core import dtypes
from ..errors import Span
from ..formats.protocol import SinkBase
from ..compile.plan import Plan, TensorInfo

CHUNK = 1 << 20  # elements compared at once in float64


@dataclass(frozen=True)
class TensorCheck:
    name: str
    rule: Span | None
    nbytes: int
    exact: bool  # bit for bit, same dtype and shape
    max_abs: float  # 0.0 when exact; inf when the shapes or dtypes differ
    ok: bool  # exact, or within the tolerances
    note: str = ""


@dataclass
class Verification:
    checks: list[TensorCheck] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # in the reference, not produced
    extra: list[str] = field(default_factory=list)  # produced, not in the reference
    # round trip: dropped by a rule marked `reverse none`, so left out on the way back by design
    not_restored: list[tuple[str, Span]] = field(default_factory=list)
    atol: float = 0.0
    rtol: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.missing and not self.extra and all(c.ok for c in self.checks)

    def by_rule(self) -> list[tuple[Span | None, list[TensorCheck]]]:
        groups: dict = {}
        for c in self.checks:
            groups.setdefault(c.rule, []).append(c)
        return sorted(groups.items(), key=lambda kv: (kv[0].file, kv[0].line, kv[0].column) if kv[0] else ("", 0, 0))

    def worst(self, n: int = 10) -> list[TensorCheck]:
        bad = [c for c in self.checks if not c.exact]
        return sorted(bad, key=lambda c: (c.ok, -c.max_abs, c.name))[:n]


def _floats(array: np.ndarray, dtype: str) -> np.ndarray:
    flat = np.asarray(array).reshape(-1)
    if dtype == "bfloat16" or dtype in dtypes.LOW_PRECISION:  # values, not the codes they are held as
        flat = dtypes.cast(flat, dtype, "float32")
    return flat.astype(np.float64)


def compare(name: str, got: np.ndarray, info: TensorInfo, want: np.ndarray, ref: TensorInfo,
            rule: Span | None, atol: float, rtol: float) -> TensorCheck:
    """One tensor against its reference: bits first, then values within atol + rtol * |ref|."""
    if tuple(info.shape) != tuple(ref.shape):
        return TensorCheck(name, rule, info.nbytes, False, float("inf"), False,
                           f"shape {tuple(info.shape)} vs {tuple(ref.shape)}")
    if info.dtype != ref.dtype:
        return TensorCheck(name, rule, info.nbytes, False, float("inf"), False, f"dtype {info.dtype} vs {ref.dtype}")
    a = dtypes.stored(got, info.dtype).reshape(-1)
    b = dtypes.stored(want, ref.dtype).reshape(-1)
    if _bits_equal(a, b):
        return TensorCheck(name, rule, info.nbytes, True, 0.0, True)
    worst, ok = 0.0, True
    for start in range(0, a.size, CHUNK):
        x = _floats(a[start:start + CHUNK], info.dtype)
        y = _floats(b[start:start + CHUNK], ref.dtype)
        with np.errstate(invalid="ignore"):
            diff = np.abs(x - y)
        nan_x, nan_y = np.isnan(x), np.isnan(y)
        if (nan_x != nan_y).any():
            return TensorCheck(name, rule, info.nbytes, False, float("nan"), False, "NaN where the reference has none")
        same = (x == y) | (nan_x & nan_y)  # equal infinities give NaN differences
        diff = np.where(same, 0.0, diff)
        if diff.size:
            worst = max(worst, float(diff.max()))
        ok = ok and bool((diff <= atol + rtol * np.abs(np.where(same, 0.0, y))).all())
    return TensorCheck(name, rule, info.nbytes, False, worst, ok and (atol > 0 or rtol > 0))


def _bits_equal(a: np.ndarray, b: np.ndarray) -> bool:
    ua, ub = a.view(np.uint8), b.view(np.uint8)
    step = CHUNK * 8
    return all(np.array_equal(ua[i:i + step], ub[i:i + step]) for i in range(0, ua.size, step))


class CompareSink(SinkBase):
    """A sink that compares each tensor with the reference instead of writing it (never by a
    kernel copy: `write_region` says no, so every tensor arrives as an array)."""

    def __init__(self, plan: Plan, reference, atol: float = 0.0, rtol: float = 0.0,
                 rule_of: Callable[[Span], Span] = lambda span: span):
        self.reference = reference
        self.rules = {s.output: rule_of(s.rule) for s in plan.steps}
        self.infos = plan.outputs()
        self.ref_infos = reference.infos()
        self.result = Verification(atol=atol, rtol=rtol)
        self.result.missing = [k for k in self.ref_infos if k not in self.infos]
        self.result.extra = sorted(k for k in self.infos if k not in self.ref_infos)

    def write(self, name: str, array: np.ndarray) -> None:
        if name not in self.ref_infos:
            return  # listed in `extra`
        want = self.reference.read(name)
        self.result.checks.append(compare(name, array, self.infos[name], want, self.ref_infos[name],
                                          self.rules.get(name), self.result.atol, self.result.rtol))
        release = getattr(self.reference, "release", None)
        if release is not None:
            release(name)

    def commit(self) -> None:
        pass

    def abort(self) -> None:
        pass


def verify_against(spec, checkpoint: str | Path, reference: str | Path, *, atol: float = 0.0,
                   rtol: float = 0.0, select: str | None = None, epoch: int | None = None,
                   **compile_options) -> Verification:
    """`compile_options` go to compile_spec (params=, config=, ...)."""
    """Convert `checkpoint` with `spec` and compare every output with `reference`, key by key."""
    from ..lang.parser import as_spec
    from ..run.executor import execute, open_for, rank_values
    from ..formats import open_source
    from ..compile.plan import compile_spec

    spec = as_spec(spec)
    source = open_for(spec, checkpoint, select, epoch,
                      rank_values(spec, compile_options.get("params"), compile_options.get("config")))
    try:
        plan = compile_spec(spec, source.infos(), **compile_options)
        ref = open_source(reference, role="--against")
        try:
            sink = CompareSink(plan, ref, atol, rtol)
            execute(plan, source, sink)
        finally:
            ref.close()
    finally:
        source.close()
    return sink.result


def verify_roundtrip(spec, checkpoint: str | Path, *, select: str | None = None, epoch: int | None = None,
                     params=None, config=None, lossy: bool = False, workdir: str | Path | None = None,
                     prefer=None):
    """Convert `checkpoint` forward with `spec`, then back with its derived inverse, and
    compare every tensor bit for bit with the original. The forward result goes to a temporary
    safetensors file in `workdir` (default: the system's temporary folder), so memory holds
    one tensor at a time. `lossy` and `prefer` go to invert_spec. Returns the verification and
    the inversion."""
    from ..lang.parser import as_spec
    from ..run.executor import execute, open_for, rank_values
    from ..formats import open_sink, open_source
    from .invert import invert_spec
    from ..compile.plan import compile_spec

    from .hf_gguf import default_config

    spec = as_spec(spec)
    config = default_config(spec, checkpoint, config)
    source = open_for(spec, checkpoint, select, epoch, rank_values(spec, params, config))
    try:
        plan = compile_spec(spec, source.infos(), params=params, config=config)
        inverse = invert_spec(spec, plan, lossy=lossy, prefer=prefer)
        with tempfile.TemporaryDirectory(prefix="mapspec-verify-", dir=workdir) as tmp:
            middle = Path(tmp) / "forward.safetensors"
            sink = open_sink(middle, "safetensors", plan.outputs())
            try:
                execute(plan, source, sink)
                sink.commit()
            except BaseException:
                sink.abort()
                raise
            back = open_source(middle, select="")
            try:
                back_plan = inverse.compile(back.infos())
                compare_sink = CompareSink(back_plan, source, rule_of=inverse.forward_rule)
                execute(back_plan, back, compare_sink)
                compare_sink.result.checks.extend(_copies(spec, plan, back))
                _not_restored(spec, plan, compare_sink.result)
            finally:
                back.close()
    finally:
        source.close()
    return compare_sink.result, inverse


def _not_restored(spec, plan: Plan, result: Verification) -> None:
    """Keys a `drop ... reverse none` removed are not missing from the round trip: the spec
    says the way back leaves them out. They are listed apart, never silently."""
    marked = {r.span for r in spec.rules if getattr(r, "reverse_none", False)}
    by_design = {key: span for key, span in plan.dropped if span in marked}
    result.not_restored = [(k, by_design[k]) for k in result.missing if k in by_design]
    result.missing = [k for k in result.missing if k not in by_design]


def _copies(spec, plan: Plan, written) -> list[TensorCheck]:
    """The inverse leaves a copy's output out; check it equals the output it copies (the same
    source through the same actions), so nothing the round trip skips can differ."""
    copies = {r.span for r in spec.rules if getattr(r, "is_copy", False)}
    ordinary = {(s.inputs, repr(s.actions)): s for s in plan.steps if s.rule not in copies}
    infos = written.infos()
    out = []
    for s in plan.steps:
        twin = ordinary.get((s.inputs, repr(s.actions))) if s.rule in copies else None
        if twin is not None:
            out.append(compare(s.output, written.read(s.output), infos[s.output], written.read(twin.output),
                               infos[twin.output], s.rule, 0.0, 0.0))
    return out
