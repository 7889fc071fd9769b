"""mapspec's own ggml quantizers: the bytes of Q8_0, Q4_0, Q4_1, Q5_0 and Q5_1 blocks equal
gguf-py's `quants.quantize` (which states bit-exactness with ggml's C reference) and the
dequantized values its `quants.dequantize`, over generated shapes and values: zeros, ties,
tiny and large magnitudes, constant blocks, f16 and bf16 sources. Where ggml would store an
infinite scale (values past what f16 scales can reach) or NaN (non-finite inputs), mapspec
refuses instead of writing garbage."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

gguf = pytest.importorskip("gguf")
from gguf import GGMLQuantizationType as Q  # noqa: E402

from mapspec import apply  # noqa: E402
from mapspec.ops import ggml  # noqa: E402
from mapspec.errors import ConversionError  # noqa: E402

TYPES = ggml.QUANTIZERS
# Magnitudes every quantizer represents: the largest stays well inside what an f16 scale holds.
SAFE = 60000.0


@st.composite
def blocks_of_values(draw):
    rows = draw(st.integers(1, 4))
    blocks = draw(st.integers(1, 4))
    kind = draw(st.sampled_from(["normal", "ints", "ties", "near_ties", "zeros", "tiny", "extreme", "constant",
                                 "mixed"]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    shape = (rows, 32 * blocks)
    if kind == "normal":
        x = rng.standard_normal(shape) * 10.0 ** draw(st.integers(-6, 3))
    elif kind == "ints":  # many exact ties for round-half-away
        x = rng.integers(-254, 255, shape) / 2.0
    elif kind == "ties":
        x = (rng.integers(-16, 17, shape) + 0.5) * 127 / 16
    elif kind == "near_ties":  # 127 in every block makes 1/d exactly 1: x.5 and its neighbours,
        # 0.49999997 among them, reach the rounding unchanged
        half = (rng.integers(-127, 127, shape) + 0.5).astype(np.float32)
        x = np.nextafter(half, rng.choice([-np.inf, 0, np.inf], shape).astype(np.float32))
        x[rng.random(shape) < 0.1] = rng.choice([np.float32(0.49999997), np.float32(-0.49999997)])
        x[:, ::32] = rng.choice([127.0, -127.0])
    elif kind == "zeros":
        x = np.zeros(shape)
        x[:, ::7] = rng.standard_normal(x[:, ::7].shape) * (rng.random() < 0.5)
    elif kind == "tiny":  # subnormal f32 and scales that underflow f16
        x = rng.standard_normal(shape) * 1e-40
    elif kind == "extreme":
        x = rng.choice([SAFE, -SAFE, 1e-45, -1e-45, 0.0, 1.0, -1.0, 65504.0 / 2], shape)
    elif kind == "constant":
        x = np.full(shape, draw(st.floats(-SAFE, SAFE, allow_nan=False, width=32)))
    else:
        x = rng.standard_normal(shape) * rng.choice([1e-3, 1.0, 1e3], (rows, 1))
    return x.astype(np.float32)


def reference(x: np.ndarray, qtype: str) -> np.ndarray:
    return gguf.quants.quantize(x.astype(np.float32), Q[qtype.upper()])


@pytest.mark.parametrize("qtype", TYPES)
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(x=blocks_of_values())
def test_quantized_bytes_and_dequantized_values_equal_gguf_py(qtype, x, engine):
    ours = ggml.quantize(x, "float32", qtype)
    with np.errstate(all="ignore"):
        ref = reference(x, qtype)
    assert ours.dtype == np.uint8 and ours.shape == ref.shape
    assert ours.tobytes() == ref.tobytes()
    values = ggml.dequantize(ours, qtype, x.shape)
    assert values.tobytes() == gguf.quants.dequantize(ref, Q[qtype.upper()]).tobytes()


@pytest.mark.parametrize("qtype", TYPES)
@pytest.mark.parametrize("src", ["float16", "bfloat16"])
def test_half_precision_sources_quantize_through_float32_as_llama_cpp_does(qtype, src, engine):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((3, 96)).astype(np.float32)
    if src == "float16":
        stored = x.astype(np.float16)
        as_f32 = stored.astype(np.float32)
    else:
        stored = gguf.quants.quantize(x, Q.BF16).view(np.uint16)  # bf16 bits, rounded as ggml rounds
        as_f32 = (stored.astype(np.uint32) << 16).view(np.float32)
    assert ggml.quantize(stored, src, qtype).tobytes() == reference(as_f32, qtype).tobytes()


def test_chunked_quantization_equals_one_pass(monkeypatch, engine):
    x = np.random.default_rng(2).standard_normal((40, 64)).astype(np.float32)
    whole = {t: ggml.quantize(x, "float32", t) for t in TYPES}
    monkeypatch.setattr(ggml, "CHUNK_BLOCKS", 7)
    for t in TYPES:  # (Q8_0 on the C loop under the native engine, the rest on numpy)
        assert ggml.quantize(x, "float32", t).tobytes() == whole[t].tobytes()
        assert ggml.dequantize(whole[t], t, x.shape).tobytes() == \
            gguf.quants.dequantize(whole[t], Q[t.upper()]).tobytes()


def test_chunks_quantized_on_two_threads_report_the_first_bad_chunk(monkeypatch, engine):
    """Chunks run on two threads, and the error is the one a pass in order meets first."""
    monkeypatch.setattr(ggml, "CHUNK_BLOCKS", 2)
    x = np.ones((16, 32), np.float32)
    x[5, 0] = 3e38  # chunk 2: a scale past f16
    x[11, 3] = np.nan  # chunk 5
    with pytest.raises(ConversionError, match="past float16's range"):
        ggml.quantize(x, "float32", "q8_0")


@pytest.mark.parametrize("src, dst", [("bfloat16", "float16"), ("float32", "bfloat16"), ("float16", "float32"),
                                      ("bfloat16", "float32"), ("float32", "float16")])
@pytest.mark.parametrize("layout", ["rows", "transposed", "experts", "flat"])
def test_casts_in_slices_on_two_threads_give_the_one_pass_bytes(monkeypatch, src, dst, layout):
    """cast() works on a large tensor slice by slice into one output (both cores, no
    whole-tensor temporaries): every value, NaN, infinity, ties and subnormals included, is
    the one a cast in one go gives, whatever the tensor's layout."""
    from mapspec.core import dtypes
    from mapspec.ops import cast

    monkeypatch.setattr(cast, "CHUNK_ELEMENTS", 50)
    rng = np.random.default_rng(3)
    x = (rng.standard_normal(6 * 70 * 33) * 10.0 ** rng.integers(-9, 6, 6 * 70 * 33)).astype(np.float32)
    x[:6] = [np.nan, np.inf, -np.inf, 65519.0, 1.00048828125, 1e-8]  # f16's largest, a tie, a subnormal
    if "float16" in (src, dst):  # values past its range are refused (test_ranges.py): here every value fits
        x = np.where(np.abs(x) > 65000, np.float32(65000) * np.sign(x), x)
        x[:4] = [np.nan, np.inf, -np.inf, 65519.0 if src != "bfloat16" else 65280.0]  # bf16 would round 65519 up
    values = dtypes.cast(x, "float32", src)
    shaped = {"rows": values.reshape(420, 33), "transposed": values.reshape(33, 420).T,
              "experts": values.reshape(6, 70, 33), "flat": values}[layout]
    want = dtypes.cast(shaped, src, dst)
    got = cast.cast_in_slices(shaped, src, dst)
    assert got.shape == want.shape and got.dtype == want.dtype
    assert np.ascontiguousarray(got).tobytes() == np.ascontiguousarray(want).tobytes()
    if dst == "float16":  # and a value past float16's range, in a later slice, is refused as in one go
        shaped = shaped.copy()
        shaped.reshape(-1)[-7] = dtypes.cast(np.array([70000.0], np.float32), "float32", src)[0]
        with pytest.raises(ConversionError, match="past what float16 holds"):
            cast.cast_in_slices(shaped, src, dst)


@pytest.mark.parametrize("qtype", TYPES)
@pytest.mark.parametrize("bad", [np.nan, np.inf, 3e38])
def test_values_ggml_would_store_as_garbage_are_refused(qtype, bad, engine):
    x = np.ones((2, 32), np.float32)
    x[1, 5] = bad
    with pytest.raises(ConversionError, match=qtype):
        ggml.quantize(x, "float32", qtype)


SPEC = "mapspec 1\n{rest:**} -> {rest}\n    then {action}\n"


@pytest.mark.parametrize("action, qtype", [("cast(q8_0)", Q.Q8_0), ("cast(q4_0)", Q.Q4_0), ("cast(Q5_1)", Q.Q5_1)])
def test_safetensors_to_gguf_quantized_reads_back_in_gguf_py(tmp_path, action, qtype):
    from conftest import write_safetensors

    rng = np.random.default_rng(3)
    arrays = {"a.weight": rng.standard_normal((4, 64)).astype(np.float32),
              "b.weight": rng.standard_normal((2, 3, 32)).astype(np.float16)}
    src = write_safetensors(tmp_path / "m.safetensors", arrays)
    (tmp_path / "q.map").write_text(SPEC.replace("{action}", action))
    apply(tmp_path / "q.map", src, tmp_path / "m.gguf")
    r = gguf.GGUFReader(tmp_path / "m.gguf")
    got = {t.name: t for t in r.tensors}
    for name, a in arrays.items():
        t = got[name]
        assert t.tensor_type == qtype
        assert tuple(int(d) for d in t.shape) == tuple(reversed(a.shape))
        assert t.data.tobytes() == reference(a.astype(np.float32), qtype.name.lower()).tobytes()


def test_gguf_quantized_back_to_safetensors_in_the_dtype_asked_for(tmp_path):
    from safetensors.numpy import load_file

    from tests.test_gguf import gguf_py_file

    x = np.random.default_rng(4).standard_normal((4, 64)).astype(np.float32)
    q = gguf.quants.quantize(x, Q.Q4_1)
    src = gguf_py_file(tmp_path / "a.gguf", {"w": (q, Q.Q4_1), "n": x[0]})
    (tmp_path / "d.map").write_text(SPEC.replace("{action}", "cast(float16)"))
    apply(tmp_path / "d.map", src, tmp_path / "o.safetensors")
    got = load_file(tmp_path / "o.safetensors")
    assert got["w"].dtype == np.float16
    assert np.array_equal(got["w"], gguf.quants.dequantize(q, Q.Q4_1).astype(np.float16))
    assert np.array_equal(got["n"], x[0].astype(np.float16))  # one rule for the F32 norm and the Q4_1 matrix


@pytest.mark.parametrize("source, action, words", [
    ("float32", "cast(q4_k)", "quantizes to q8_0, q4_0"), ("int32", "cast(q8_0)", "quantizes float tensors"),
    ("q8_0", "cast(int8)", "dequantize to float32"), ("float32", "cast(q9_9)", "unknown dtype q9_9"),
])
def test_casts_to_and_from_block_types_are_checked_before_anything_is_written(tmp_path, source, action, words):
    from tests.test_gguf import gguf_py_file

    from mapspec.errors import PlanError, SpecError

    x = np.ones((2, 32), np.float32)
    t = (gguf.quants.quantize(x, Q.Q8_0), Q.Q8_0) if source == "q8_0" else x.astype(source)
    src = gguf_py_file(tmp_path / "m.gguf", {"a": t})
    (tmp_path / "q.map").write_text(SPEC.replace("{action}", action))
    with pytest.raises((PlanError, SpecError), match=words):
        apply(tmp_path / "q.map", src, tmp_path / "o.gguf")
    assert not (tmp_path / "o.gguf").exists()


def test_rows_that_are_not_whole_blocks_are_refused_at_plan_time(tmp_path):
    from conftest import write_safetensors

    from mapspec.errors import PlanError

    src = write_safetensors(tmp_path / "m.safetensors", {"a": np.ones((32, 48), np.float32)})
    (tmp_path / "q.map").write_text(SPEC.replace("{action}", "cast(q8_0)"))
    with pytest.raises(PlanError, match="multiple of 32"):
        apply(tmp_path / "q.map", src, tmp_path / "m.gguf")
    assert not (tmp_path / "m.gguf").exists()


def test_the_inverse_of_a_quantizing_spec_dequantizes_only_with_lossy(tmp_path):
    """cast(q8_0) is a lossy cast to the inverter: refused, or with --lossy undone by a cast
    back to the dtype it came from (read from the forward checkpoint), which dequantizes."""
    from conftest import write_safetensors
    from safetensors.numpy import load_file

    from mapspec.errors import SpecError
    from mapspec.formats import read_infos
    from mapspec.tools.invert import invert_spec

    x = np.random.default_rng(6).standard_normal((4, 64)).astype(np.float32)
    src = write_safetensors(tmp_path / "m.safetensors", {"model.w": x})
    (tmp_path / "q.map").write_text("mapspec 1\nmodel.{rest:**} -> blk.{rest}\n    then cast(q8_0)\n")
    apply(tmp_path / "q.map", src, tmp_path / "m.gguf")
    with pytest.raises(SpecError, match="loses precision.*--lossy"):
        invert_spec(tmp_path / "q.map", read_infos(src))
    inverse = invert_spec(tmp_path / "q.map", read_infos(src), lossy=True)
    assert inverse.losses and "q8_0" in inverse.losses[0]
    (tmp_path / "back.map").write_text(inverse.text)
    apply(tmp_path / "back.map", tmp_path / "m.gguf", tmp_path / "back.safetensors")
    back = load_file(tmp_path / "back.safetensors")["model.w"]
    assert back.dtype == np.float32
    assert back.tobytes() == gguf.quants.dequantize(reference(x, "q8_0"), Q.Q8_0).tobytes()


def test_the_c_q8_0_loop_rounds_its_float16_scale_as_numpy_does():
    """The compiled Q8_0 loop writes each block's scale d = max|x| / 127 as float16 itself:
    for scales across float16's whole range (subnormal, normal, the ties between, past 65504),
    its bytes are numpy's astype(float16)'s, and the codes gguf-py's."""
    from conftest import native_library

    native = native_library()
    rng = np.random.default_rng(5)
    halves = np.arange(0, 0x7C00, dtype=np.uint16).view(np.float16).astype(np.float32)
    mids = (halves[:-1] + (halves[1:] - halves[:-1]) / 2).astype(np.float32)  # exact ties, to even
    d = np.concatenate([halves, mids, np.nextafter(mids, 0), np.nextafter(mids, np.inf),
                        np.float32([65504, 65519, 65519.996, 1e-45, 2 ** -25, 2 ** -24, 3 * 2 ** -26])])
    d = d[d * 127 < 3.4e38]
    x = rng.uniform(-1, 1, (d.size, 32)).astype(np.float32)
    x[:, 7] = d * np.float32(127)  # the block's largest magnitude: d is exactly x / 127 as computed
    x = np.where(np.abs(x) > np.abs(x[:, 7:8]), x[:, 7:8] * 0.5, x).astype(np.float32)
    for src, values in (("float32", x), ("bfloat16", None)):
        if values is None:  # bf16 bits of the same blocks, rounded by gguf-py as ggml rounds
            bits = gguf.quants.quantize(x, Q.BF16).view(np.uint16)
            values, x_used = bits, (bits.astype(np.uint32) << 16).view(np.float32)
        else:
            x_used = x
        ok = np.abs(x_used).max(axis=1) / np.float32(127) < 65504  # scales past float16: refused, tested above
        out = np.empty((int(ok.sum()), 34), np.uint8)
        native.quantize_q8_0(np.ascontiguousarray(values[ok]), src, out)
        with np.errstate(all="ignore"):
            ref = gguf.quants.quantize(x_used[ok], Q.Q8_0)
        assert out.tobytes() == ref.tobytes()
