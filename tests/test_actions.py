"""Each action's inverse: applying an action then the actions its definition gives back
returns the input bit for bit; lossy actions (a narrowing cast, one piece of a split) have none."""

import numpy as np
import pytest

from mapspec.ops import actions as act
from mapspec import parse_spec


def action(text: str):
    """One action as written in a spec."""
    return parse_spec(text=f"mapspec 1\nx -> y then {text}\n").rules[0].actions[0]


def bits(seed: int, shape, dtype=np.float32) -> np.ndarray:
    """Arbitrary bit patterns (NaN payloads, signed zeros and all), not only nice numbers."""
    raw = np.random.default_rng(seed).integers(0, 2**32, size=shape, dtype=np.uint32)
    return raw.view(np.float32).astype(dtype, copy=False) if dtype == np.float32 else raw.astype(dtype)


CASES = [  # (action, input shapes)
    ("view(4, -1)", [(8, 6)]),
    ("reshape(-1)", [(2, 3, 4)]),
    ("view(+(1, 1))", [(5, 3)]),
    ("transpose()", [(3, 5)]),
    ("transpose(0, 2)", [(2, 3, 4)]),
    ("permute(2, 0, 1)", [(2, 3, 4)]),
    ("squeeze()", [(1, 3, 1)]),
    ("squeeze(0)", [(1, 3, 1)]),
    ("unsqueeze(1)", [(3, 4)]),
    ("split((2, 6), 1)", [(3, 8)]),
    ("chunk(3, 0)", [(6, 4)]),
    ("unstack(1)", [(2, 3, 4)]),
    ("concat(1)", [(3, 2), (3, 5), (3, 1)]),
    ("stack(0)", [(2, 3)] * 4),
    ("stack(-1)", [(2, 3)] * 2),
    ("expect(_, 4)", [(3, 4)]),
    ("view(2, -1)", [(4, 6), (2, 2)]),  # one view over tensors of different sizes
]


@pytest.mark.parametrize("text,shapes", CASES)
def test_action_then_its_inverse_gives_the_input_back_bit_for_bit(text, shapes):
    a = action(text)
    arrays = [bits(n, s) for n, s in enumerate(shapes)]
    planned = act.resolve(a, shapes, "float32")
    out = act.run(planned, arrays)
    assert [tuple(o.shape) for o in out] == [tuple(s) for s in planned.shapes]
    undo = act.inverse(planned, shapes, "float32")
    back = act.run_all(undo, out)
    assert len(back) == len(arrays)
    for b, x in zip(back, arrays):
        assert b.dtype == x.dtype and b.shape == x.shape and b.tobytes() == x.tobytes()


@pytest.mark.parametrize("src,dst", [("float16", "float32"), ("float32", "float64"), ("bfloat16", "float32"),
                                     ("int8", "int64"), ("uint8", "int16")])
def test_lossless_casts_invert(src, dst):
    from mapspec.core import dtypes

    rng = np.random.default_rng(1)
    if src.startswith(("int", "uint")):
        x = rng.integers(np.iinfo(src).min, np.iinfo(src).max, size=(4, 5)).astype(src)
    elif src == "bfloat16":
        x = dtypes.cast(rng.standard_normal((4, 5)).astype(np.float32), "float32", "bfloat16")
    else:
        x = rng.standard_normal((4, 5)).astype(src)
    planned = act.PlannedAction("cast", {"from": src, "to": dst}, ((4, 5),), dst)
    (y,) = act.run(planned, [x])
    (back,) = act.run_all(act.inverse(planned, [(4, 5)], src), [y])
    assert back.dtype == x.dtype and back.tobytes() == x.tobytes()


def test_lossy_actions_have_no_inverse():
    assert act.inverse(act.PlannedAction("cast", {"from": "float32", "to": "float16"}), [(2,)], "float32") is None
    assert act.inverse(act.PlannedAction("cast", {"from": "int64", "to": "int32"}), [(2,)], "int64") is None
    one_piece = act.PlannedAction("split", {"index": 0, "dim": 0, "start": 0, "stop": 2})
    assert act.inverse(one_piece, [(4,)], "float32") is None


def test_every_action_has_an_inverse_rule():
    assert all(d.inverse is not None for d in act.REGISTRY.values())
    assert {d.name for d in act.REGISTRY.values() if d.kind == "split"} == {"split", "chunk", "unstack", "quantize",
                                                                             "replicate"}


@pytest.mark.parametrize("actions,dtype,shape,copy", [
    ("", "float16", (4, 6), True),
    ("expect(4, _, dtype=float16)", "float16", (4, 6), True),
    ("cast(float16)", "float16", (4, 6), True),
    ("expect(dtype=bfloat16) then cast(bfloat16) then reshape(4, 6)", "bfloat16", (4, 6), True),
    ("cast(float32)", "float16", (4, 6), False),
    ("cast(float32) then cast(float16)", "float16", (4, 6), False),  # what moved is not judged as a whole
    ("reshape(6, 4)", "float16", (4, 6), False),
    ("transpose(0, 1)", "float32", (4, 4), False),  # the same shape, the values moved
    ("view(2, 2, 4) then transpose(0, 1) then reshape(4, 4)", "float32", (4, 4), False),
])
def test_a_step_is_a_copy_only_where_every_action_moves_no_byte(actions, dtype, shape, copy):
    """`act.passes_through`: a rule's expect() and a cast to the dtype the tensor has do not
    stop it being a file-to-file copy (llama.cpp's outtype f16 of an f16 model); anything
    that moves or converts a value does, even where the shape and dtype come out the same."""
    from mapspec import TensorInfo, compile_spec

    then = f" then {actions}" if actions else ""
    spec = parse_spec(text=f"mapspec 1\nw -> out{then}\n", name="s.map")
    (step,) = compile_spec(spec, {"w": TensorInfo(shape, dtype)}).steps
    assert act.passes_through(step.input_infos, step.actions) is copy
