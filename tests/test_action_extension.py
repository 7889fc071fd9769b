"""Adding an action is one new definition plus tests (issue 16). The action below exists only
in this file: it takes two tensors of different dtypes (an int8 weight and its float16
per-row scales) and makes two (the weight dequantized to float32, and the scales widened to
float32). Registered from the test, it is checked, planned, explained and executed by the
ordinary planner and executor, its shapes and dtypes inferred from each input's own."""

import json
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from mapspec import apply, compile_spec, parse_spec, plan_for
from mapspec.compile.plan import TensorInfo
from mapspec.errors import PlanError, SpecError
from mapspec.ops import actions as act
from mapspec.ops.args import bind, capture_name, format_shape


class Dequantize(act.ActionDef):
    """`dequantize_rows(over=PART, into=OUT)`: (weight int8 (r, c), scales float16 (r,)) ->
    (weight float32 (r, c), scales float32 (r,)); weight * scales row by row."""

    name = "dequantize_rows"
    kind = "merge-split"

    def normalize(self, action):
        bound = bind(action, ["over", "into"], 0)
        return {"over": capture_name(action, bound, "over"), "into": capture_name(action, bound, "into")}

    def count(self, p):
        return 2

    def infer(self, p, inputs, action):
        if len(inputs) != 2:
            raise PlanError(f"dequantize_rows() takes a weight and its scales, got {len(inputs)} tensors", action.span)
        weight, scales = inputs
        if weight.dtype != "int8" or scales.dtype not in ("float16", "float32"):
            raise PlanError(f"dequantize_rows() takes an int8 weight and float scales, got {weight.dtype} and "
                            f"{scales.dtype}", action.span)
        if len(weight.shape) != 2 or tuple(scales.shape) != weight.shape[:1]:
            raise PlanError(f"dequantize_rows(): scales of shape {format_shape(scales.shape)} do not fit a weight of "
                            f"shape {format_shape(weight.shape)}", action.span)
        return [act.Typed(weight.shape, "float32"), act.Typed(scales.shape, "float32")], {}

    def run(self, p, arrays):
        weight, scales = arrays
        wide = scales.astype(np.float32)
        return [weight.astype(np.float32) * wide[:, None], wide]


SPEC = """mapspec 1
layer.{n:int}.{part:weight|scales} -> layer.{n}.{out:w|s} then dequantize_rows(over=part, into=out)
"""


@pytest.fixture
def dequantize():
    with act.registered(Dequantize()) as d:
        yield d


def checkpoint(path: Path, rows=(3, 5)) -> dict:
    rng = np.random.default_rng(7)
    tensors = {}
    for n, r in enumerate(rows):
        tensors[f"layer.{n}.weight"] = rng.integers(-128, 128, (r, 4)).astype(np.int8)
        tensors[f"layer.{n}.scales"] = rng.uniform(0.01, 2, r).astype(np.float16)
    save_file(tensors, str(path))
    return tensors


def test_an_action_with_two_typed_inputs_and_two_outputs_is_planned_from_each_inputs_dtype(dequantize):
    keys = {"layer.0.weight": TensorInfo((3, 4), "int8"), "layer.0.scales": TensorInfo((3,), "float16")}
    plan = compile_spec(parse_spec(text=SPEC), keys)
    steps = {s.output: s for s in plan.steps}
    assert set(steps) == {"layer.0.w", "layer.0.s"}
    w, s = steps["layer.0.w"], steps["layer.0.s"]
    assert w.inputs == s.inputs == ("layer.0.weight", "layer.0.scales")
    assert (w.info.shape, w.info.dtype) == ((3, 4), "float32")
    assert (s.info.shape, s.info.dtype) == ((3,), "float32")
    (planned,) = w.actions
    assert planned.params == {"over": "part", "index": 0}
    assert planned.to_json()["dtype"] == "float32"


def test_the_example_action_runs_through_apply_and_writes_the_right_numbers(dequantize, tmp_path):
    given = checkpoint(tmp_path / "in.safetensors")
    (tmp_path / "s.map").write_text(SPEC)
    apply(tmp_path / "s.map", tmp_path / "in.safetensors", tmp_path / "out.safetensors")
    out = load_file(str(tmp_path / "out.safetensors"))
    assert sorted(out) == ["layer.0.s", "layer.0.w", "layer.1.s", "layer.1.w"]
    for n in (0, 1):
        scales = given[f"layer.{n}.scales"].astype(np.float32)
        expected = given[f"layer.{n}.weight"].astype(np.float32) * scales[:, None]
        assert out[f"layer.{n}.w"].dtype == np.float32
        np.testing.assert_array_equal(out[f"layer.{n}.w"], expected)
        np.testing.assert_array_equal(out[f"layer.{n}.s"], scales)


def test_the_example_actions_own_checks_reach_the_user_at_the_action(dequantize, tmp_path):
    checkpoint(tmp_path / "in.safetensors")
    swapped = SPEC.replace("{part:weight|scales}", "{part:scales|weight}")
    (tmp_path / "s.map").write_text(swapped)
    with pytest.raises(PlanError) as err:
        plan_for(tmp_path / "s.map", tmp_path / "in.safetensors")
    assert "dequantize_rows() takes an int8 weight and float scales, got float16 and int8" in str(err.value)
    assert err.value.span.line == 2


def test_the_example_action_is_known_only_while_registered(tmp_path):
    with pytest.raises(SpecError, match="unknown action 'dequantize_rows'"):
        compile_spec(parse_spec(text=SPEC), {"layer.0.weight": TensorInfo((3, 4), "int8")})
    with act.registered(Dequantize()):
        with pytest.raises(ValueError, match="already defined"):
            act.register(Dequantize())
    assert "dequantize_rows" not in act.REGISTRY


def test_a_plan_with_mixed_input_dtypes_records_each_tensors_dtype(tmp_path):
    """Two inputs of different dtypes through a unary action (before a cast joins them):
    the planned action keeps a dtype per tensor, not a joined string."""
    spec = parse_spec(text="mapspec 1\nx.{p:a|b} -> y then view(-1) then cast(float32) then concat(0)\n")
    plan = compile_spec(spec, {"x.a": TensorInfo((2, 2), "int8"), "x.b": TensorInfo((3,), "float16")})
    view, cast, concat = plan.steps[0].actions
    assert view.dtype is None and view.dtypes == ("int8", "float16")
    assert json.loads(json.dumps(view.to_json()))["dtypes"] == ["int8", "float16"]
    assert cast.each == ({"from": "int8", "to": "float32"}, {"from": "float16", "to": "float32"})
    assert (cast.dtype, concat.dtype, concat.shapes) == ("float32", "float32", ((7,),))
