"""The small pieces of a split (a quantized weight's scales) are computed once, with the
first piece, and written by their own step from what was kept (run/siblings.py): the output
is byte for byte the one computing each piece on its own writes, whole or slice by slice, and
the weight is scanned once. Large pieces (the thirds of a fused tensor) are not kept."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import mapspec
from mapspec import TensorInfo
from mapspec.compile.plan import compile_spec
from mapspec.formats import open_sink
from mapspec.lang.parser import parse_spec
from mapspec.ops import fp8, mxfp4
from mapspec.run import rows, siblings

ml_dtypes = pytest.importorskip("ml_dtypes")
RNG = np.random.default_rng(11)

FP8 = "mapspec 1\n{n}.w -> {n}.{p:weight|weight_scale_inv} then quantize(fp8, block=(16, 32), into=p)\n"
MXFP4 = "mapspec 1\n{n}.x -> {n}.x_{p:blocks|scales} then quantize(mxfp4, into=p)\n"


def _bf16(shape) -> np.ndarray:
    return RNG.standard_normal(shape, dtype=np.float32).astype(ml_dtypes.bfloat16).view(np.uint16)


def _source(path: Path, tensors: dict[str, np.ndarray]) -> Path:
    sink = open_sink(path, "safetensors", {k: TensorInfo(a.shape, "bfloat16") for k, a in tensors.items()})
    for k, a in tensors.items():
        sink.write(k, a)
    sink.commit()
    return path


def _counting(monkeypatch, module) -> list[bool]:
    """Each call of `module.quantize`, as whether it computed the scales alone."""
    calls = []
    real = module.quantize

    def counted(*args, **kwargs):
        calls.append(kwargs.get("scales_only", False))
        return real(*args, **kwargs)

    monkeypatch.setattr(module, "quantize", counted)
    return calls


@pytest.mark.parametrize("sliced", [False, True])
@pytest.mark.parametrize("scheme", ["fp8", "mxfp4"])
def test_scales_come_from_the_weights_pass_and_equal_their_own(tmp_path, monkeypatch, sliced, scheme):
    module, spec = (fp8, FP8) if scheme == "fp8" else (mxfp4, MXFP4)
    shapes = {"a.w": (300, 200), "b.w": (64, 96)} if scheme == "fp8" else {"a.x": (6, 64, 48), "b.x": (2, 32, 16)}
    source = _source(tmp_path / "in.safetensors", {k: _bf16(s) for k, s in shapes.items()})
    (tmp_path / "s.map").write_text(spec)
    if sliced:
        monkeypatch.setattr(rows, "SLICE_BYTES", 4096)
        monkeypatch.setattr(rows, "MIN_BYTES", 3 * 4096)
    calls = _counting(monkeypatch, module)
    mapspec.apply(tmp_path / "s.map", source, tmp_path / "kept.safetensors")
    assert not any(calls)  # no pass computed the scales alone: every scale was kept
    once = len(calls)
    monkeypatch.setattr(siblings, "SMALL", 1 << 62)  # nothing counts as small: each piece its own pass
    calls.clear()
    mapspec.apply(tmp_path / "s.map", source, tmp_path / "own.safetensors")
    assert calls.count(False) == once and calls.count(True) > 0  # the same weight passes, and scale passes
    assert (tmp_path / "kept.safetensors").read_bytes() == (tmp_path / "own.safetensors").read_bytes()


def test_only_small_pieces_are_kept(tmp_path):
    """A split into thirds keeps nothing (each third would be held until its step); an FP8
    quantize keeps its scales for the scales' step."""
    spec = (tmp_path / "s.map")
    spec.write_text("mapspec 1\nqkv -> {p:q|k|v} then chunk(3, 0, into=p)\n"
                    "w -> w.{p:weight|weight_scale_inv} then quantize(fp8, block=(16, 16), into=p)\n")
    infos = {"qkv": TensorInfo((96, 64), "float32"), "w": TensorInfo((64, 64), "bfloat16")}
    plan = compile_spec(parse_spec(spec), infos)
    names = [s.output for s in plan.steps]
    kept = {names[i]: [(names[s.step], s.piece) for s in sibs] for i, sibs in siblings.siblings(plan.steps).items()}
    assert kept == {"w.weight": [("w.weight_scale_inv", 1)]}


def test_many_small_pieces_are_kept_only_up_to_a_small_share_together():
    """Pieces of 1/64 each are each small, but 63 of them would be the tensor again: what is
    kept for later steps stays within 1/32 of the input all together (two such pieces here).
    (split and chunk steps never share: each piece's own bounds are in its parameters.)"""
    from mapspec.compile.plan import Step
    from mapspec.errors import Span
    from mapspec.ops.base import PlannedAction

    src = TensorInfo((64 * 4, 8), "float32")
    steps = [Step(f"w.{k}", ("w",), (src,), (PlannedAction("quantize", {"scheme": "x", "index": k}),),
                  TensorInfo((4, 8), "float32"), Span("s.map", 1, 1, 1, 1)) for k in range(64)]
    assert siblings.siblings(steps) == {0: [siblings.Sibling(1, 1), siblings.Sibling(2, 2)]}


def test_a_kept_piece_is_not_read_again(tmp_path, monkeypatch):
    """The scales' step reads nothing from the source: the weight is read once."""
    from mapspec.formats import safetensors as st

    source = _source(tmp_path / "in.safetensors", {"a.w": _bf16((256, 128))})
    (tmp_path / "s.map").write_text(FP8)
    reads = []
    real = st.SafetensorsSource.read

    def counted(self, key):
        reads.append(key)
        return real(self, key)

    monkeypatch.setattr(st.SafetensorsSource, "read", counted)
    mapspec.apply(tmp_path / "s.map", source, tmp_path / "out.safetensors")
    assert reads == ["a.w"]


def test_unstacked_experts_share_and_the_kept_pieces_do_not_hold_the_input(tmp_path, monkeypatch):
    """unstack's pieces differ only in `index`, so the first expert's step keeps the next few
    (1/32 of the input all together); they are copies, not views that would keep the whole
    stacked tensor alive, and the output is the one of every expert computed on its own."""
    from mapspec.run import executor

    stacked = np.random.default_rng(3).standard_normal((64, 8, 16), dtype=np.float32)
    sink = open_sink(tmp_path / "in.safetensors", "safetensors", {"e": TensorInfo(stacked.shape, "float32")})
    sink.write("e", stacked)
    sink.commit()
    (tmp_path / "s.map").write_text("mapspec 1\ne -> e.{p:int} then unstack(0, into=p)\n")
    plan = compile_spec(parse_spec(tmp_path / "s.map"), {"e": TensorInfo(stacked.shape, "float32")})
    assert [s.piece for s in siblings.siblings(plan.steps)[0]] == [1, 2]
    kept: dict = {}
    keep = [(s.piece, 0, plan.steps[s.step]) for s in siblings.siblings(plan.steps)[0]]
    first = executor.run_step(plan.steps[0], [stacked], keep, kept)
    assert np.array_equal(first, stacked[0])
    for k in (1, 2):
        assert np.array_equal(kept[f"e.{k}"], stacked[k]) and not np.shares_memory(kept[f"e.{k}"], stacked)
    mapspec.apply(tmp_path / "s.map", tmp_path / "in.safetensors", tmp_path / "kept.safetensors")
    monkeypatch.setattr(siblings, "SMALL", 1 << 62)
    mapspec.apply(tmp_path / "s.map", tmp_path / "in.safetensors", tmp_path / "own.safetensors")
    assert (tmp_path / "kept.safetensors").read_bytes() == (tmp_path / "own.safetensors").read_bytes()
