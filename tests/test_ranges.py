"""A cast rounds, but never turns a value into another kind of value: a float past the
target's range (infinity in float16, NaN in float8_e4m3fn, the largest value in a saturating
float4), NaN into a dtype without NaN, an integer that would wrap. The real libraries do all
of these silently; mapspec refuses, naming the tensor, the rule, how many values and the
farthest (core/ranges.py)."""

from __future__ import annotations

import math

import ml_dtypes
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from typer.testing import CliRunner

from mapspec.cli import app
from mapspec.core import dtypes, ranges
from mapspec.errors import ConversionError
from conftest import write_safetensors

# (dtype, significand bits with the implicit one): what the oracle needs to judge rounding
FLOATS = {"float16": 11, "bfloat16": 8, "float32": 24, "float8_e4m3fn": 4, "float8_e4m3fnuz": 4,
          "float8_e5m2": 3, "float8_e5m2fnuz": 3, "float4_e2m1fn": 2}


def real_cast(x: np.ndarray, dst: str) -> np.ndarray:
    """What numpy / ml_dtypes make of float64 values x in dst, back as float64."""
    with np.errstate(over="ignore", invalid="ignore"):
        if dst in ("float16", "float32"):
            return x.astype(dst).astype(np.float64)
        return x.astype(getattr(ml_dtypes, dst)).astype(np.float64)


def kept(x: float, r: float, dst: str) -> bool:
    """The library's result r is x rounded, not x overflowed or saturated: finite, within half
    a step of x at r, and at exactly half only if r's significand is even (ties to even)."""
    if math.isnan(x) or math.isinf(x):
        return math.isnan(r) or math.isinf(r)
    if not math.isfinite(r):
        return False
    if abs(x) < 1:  # below every target's largest; its spacing there (subnormals) is not judged here
        return True
    step = 2.0 ** (math.floor(math.log2(abs(r))) - FLOATS[dst] + 1)
    if abs(r - x) < step / 2:
        return True
    return abs(r - x) == step / 2 and (abs(r) / step) % 2 == 0


def refused(values: np.ndarray, src: str, dst: str) -> bool:
    try:
        ranges.check(values, src, dst)
    except ConversionError:
        return True
    return False


@pytest.mark.parametrize("dst", [d for d in FLOATS if d != "float32"])
def test_a_float_cast_is_refused_exactly_where_the_real_cast_would_overflow_or_saturate(dst):
    largest = float(ml_dtypes.finfo(getattr(ml_dtypes, dst)).max) if dst != "float16" else 65504.0
    step = 2.0 ** (math.floor(math.log2(largest)) - FLOATS[dst] + 1)
    probes = [largest, largest + step / 4, largest + step / 2, np.nextafter(largest + step / 2, 0),
              np.nextafter(largest + step / 2, math.inf), largest + step, 2 * largest, 1e30, 1.0, 0.0]
    for x in probes + [-p for p in probes]:
        if abs(x) > 3.4e38:
            continue
        x32 = np.float32(x)  # the source holds float32 values
        r = real_cast(np.array([x32], np.float64), dst)[0]
        assert refused(np.array([x32]), "float32", dst) == (not kept(float(x32), r, dst)), (dst, float(x32), r)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from([d for d in FLOATS if d != "float32"]),
       st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, width=32))
def test_random_float32_values_against_the_real_cast(dst, x):
    r = real_cast(np.array([x], np.float64), dst)[0]
    assert refused(np.array([x], np.float32), "float32", dst) == (not kept(x, r, dst))


def test_nan_and_infinity_are_refused_only_where_the_target_has_no_nan():
    special = np.array([1.0, np.nan, -np.inf], np.float32)
    for dst in ("float16", "bfloat16", "float8_e4m3fn", "float8_e5m2", "float8_e8m0fnu"):
        ranges.check(special[:2], "float32", dst)  # NaN stays NaN
    with pytest.raises(ConversionError, match=r"2 float32 values are NaN or infinite, which float4_e2m1fn cannot"):
        ranges.check(special, "float32", "float4_e2m1fn")  # ml_dtypes makes NaN -0 and -inf -6
    with pytest.raises(ConversionError, match="NaN or infinite, which int32 cannot hold"):
        ranges.check(special, "float32", "int32")


def test_integers_that_would_wrap_are_refused():
    ranges.check(np.array([-2 ** 31, 2 ** 31 - 1], np.int64), "int64", "int32")
    with pytest.raises(ConversionError, match=r"1 int64 value past what int32 holds \(integers from "
                                              r"-2147483648 to 2147483647\), the farthest 2147483648"):
        ranges.check(np.array([0, 2 ** 31], np.int64), "int64", "int32")
    with pytest.raises(ConversionError, match="past what uint8 holds"):
        ranges.check(np.array([-1], np.int8), "int8", "uint8")
    with pytest.raises(ConversionError, match="the farthest -2"):  # bf16 bits: the magnitudes' fast path
        ranges.check_bf16_bits(np.array([0x3F80, 0xC000], np.uint16), "uint8")  # 1.0, -2.0
    ranges.check(np.array([127.9, -128.9], np.float32), "float32", "int8")  # truncated toward zero: in range
    with pytest.raises(ConversionError, match="the farthest -129"):
        ranges.check(np.array([127.9, -129.0], np.float32), "float32", "int8")
    with pytest.raises(ConversionError, match="past what float16 holds"):
        ranges.check(np.array([70000], np.int32), "int32", "float16")


def test_widening_casts_are_not_checked_at_all():
    for src, dst in [("float16", "float32"), ("bfloat16", "float32"), ("float16", "bfloat16"), ("int8", "float16"),
                     ("float8_e4m3fn", "float16"), ("int16", "int64"), ("uint8", "int16"), ("float32", "float64"),
                     ("float4_e2m1fn", "float8_e4m3fn"), ("bool", "int8"), ("float32", "bool")]:
        assert ranges.bounds(src, dst) is None, (src, dst)
    for src, dst in [("float32", "float16"), ("bfloat16", "float16"), ("float32", "bfloat16"), ("int64", "int32"),
                     ("uint8", "int8"), ("float16", "int16"), ("float8_e5m2", "float8_e4m3fn"),
                     ("float32", "float8_e8m0fnu")]:
        assert ranges.bounds(src, dst) is not None, (src, dst)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 0xFFFF), min_size=1, max_size=40),
       st.sampled_from(["float16", "float8_e4m3fn", "float8_e5m2", "float4_e2m1fn", "int8", "uint8", "int16",
                        "float8_e8m0fnu"]))
def test_the_bf16_bits_check_agrees_with_the_check_of_the_values(bits, dst):
    bits = np.array(bits, np.uint16)
    values = (bits.astype(np.uint32) << 16).view(np.float32)

    def outcome(f):
        try:
            f()
        except ConversionError as exc:
            return str(exc)
        return None
    assert outcome(lambda: ranges.check_bf16_bits(bits, dst)) == outcome(lambda: ranges.check(values, "bfloat16", dst))


def test_cast_refuses_and_keeps_every_in_range_value_as_before():
    x = np.array([1.5, -65504.0, 65519.0], np.float32)
    assert dtypes.cast(x, "float32", "float16").tolist() == [1.5, -65504.0, 65504.0]
    with pytest.raises(ConversionError, match="the farthest 65520"):
        dtypes.cast(np.array([65520.0], np.float32), "float32", "float16")
    bf = dtypes.cast(np.array([1.0, 65536.0], np.float32), "float32", "bfloat16")
    with pytest.raises(ConversionError, match="the farthest 65536"):
        dtypes.cast(bf, "bfloat16", "float16")
    with pytest.raises(ConversionError, match="float8_e4m3fn holds"):
        dtypes.cast(np.array([500.0], np.float32), "float32", "float8_e4m3fn")
    assert dtypes.cast(np.array([464.0], np.float32), "float32", "float8_e4m3fn").tolist() == [0x7E]  # 448: a tie


def test_apply_names_the_tensor_and_the_rule_and_writes_nothing(tmp_path):
    w = np.ones((64, 64), np.float32)
    w[3, 5] = 1e6
    write_safetensors(tmp_path / "in.safetensors", {"a.weight": w, "b.weight": np.ones((64, 64), np.float32)})
    (tmp_path / "s.map").write_text("mapspec 1\nb.weight -> b.weight\n{n:a}.weight -> {n}.half then cast(float16)\n")
    out = tmp_path / "out.safetensors"
    r = CliRunner().invoke(app, ["apply", str(tmp_path / "s.map"), str(tmp_path / "in.safetensors"), "-o", str(out)])
    assert r.exit_code == 1
    assert r.output.strip().splitlines()[0] == (
        f"{tmp_path / 's.map'}:3:1: error: a.half: cast(float16): 1 float32 value past what float16 holds "
        "(magnitudes up to 65504), the farthest 1000000; cast to a wider dtype, or scale the values first")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.safetensors", "s.map"]


def test_dequantizing_to_float16_past_its_range_is_refused_and_quietly_fine_below_it(recwarn):
    from mapspec.ops import fp8, mxfp4

    w = np.full((4, 4), 0x38, np.uint8)  # e4m3 1.0 everywhere
    scale = np.array([[1000.0]], np.float32)
    assert np.all(fp8.dequantize(w, scale, (128, 128), "float16", "float8_e4m3fn") == np.float16(1000.0))
    w[2, 3] = 0x7E  # 448 x 1000
    with pytest.raises(ConversionError, match=r"dequantize\(fp8\) to float16: 1 float16 value would be past"):
        fp8.dequantize(w, scale, (128, 128), "float16", "float8_e4m3fn")
    assert fp8.dequantize(w, scale, (128, 128), "bfloat16", "float8_e4m3fn").dtype == np.uint16  # bf16 holds it

    blocks = np.full((1, 2, 1, 16), 0x22, np.uint8)  # E2M1 1.0 in both nibbles
    scales = np.full((1, 2, 1), 127 + 14, np.uint8)  # 2**14
    assert np.all(mxfp4.dequantize(blocks, scales, "float16") == np.float16(2.0 ** 14))
    blocks[0, 1, 0, 7] = 0x27  # one value 6.0 x 2**14 = 98304
    with pytest.raises(ConversionError, match=r"dequantize\(mxfp4\) to float16: 1 float16 value"):
        mxfp4.dequantize(blocks, scales, "float16")
    assert not [w for w in recwarn if issubclass(w.category, RuntimeWarning)]


@pytest.mark.parametrize("bad", [np.inf, -np.inf, np.nan])
def test_quantizing_nan_or_infinity_to_fp8_or_mxfp4_is_refused_as_ggml_types_are(bad):
    """torch's FP8 math would zero the rest of a block holding an infinity (448 / inf = 0),
    and give a NaN block scale 1; an MXFP4 block's scale would be NaN. Refused instead."""
    from mapspec.ops import fp8, ggml, mxfp4

    x = np.ones((256, 256), np.float32)
    x[130, 7] = bad
    for quantize, target in [(lambda: fp8.quantize(x, (128, 128)), "fp8"),
                             (lambda: fp8.quantize(x, (128, 128), scale_fmt="e8m0"), "fp8"),
                             (lambda: mxfp4.quantize(x[None]), "mxfp4"),
                             (lambda: ggml.quantize(x, "float32", "q8_0"), "q8_0")]:
        with pytest.raises(ConversionError, match=f"cannot quantize to {target}: the tensor holds NaN or infinite"):
            quantize()
    x[130, 7] = 1.0
    fp8.quantize(x, (128, 128))  # and finite values quantize as before
