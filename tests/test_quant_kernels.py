"""The FP8 block and MXFP4 kernels give transformers 5.23's numbers bit for bit: FP8
dequantize as `_dequantize_fp8_weight(w, s, block, float32).to(bf16)` (ragged shapes too),
FP8 quantize as `Fp8Quantize` (float32 and ue8m0 scales), MXFP4 dequantize as
`convert_moe_packed_tensors` (every byte, every scale, its transpose); and the properties
that hold beyond what the references cover (ragged blocks quantized by their own absmax,
bounded slices, MXFP4 quantize as the inverse layout). The FP8 and MXFP4 dequantize tests
run twice, on numpy's whole-array passes and on the compiled loops of `kernels.c`
(`mapspec.ops.native`), which must give the same bits."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

ml_dtypes = pytest.importorskip("ml_dtypes")
torch = pytest.importorskip("torch")
finegrained_fp8 = pytest.importorskip("transformers.integrations.finegrained_fp8")
from transformers import FineGrainedFP8Config  # noqa: E402
from transformers.integrations.mxfp4 import convert_moe_packed_tensors  # noqa: E402

from mapspec.ops import floatbits, fp8, mxfp4  # noqa: E402
from mapspec.errors import ConversionError  # noqa: E402
from conftest import native_library  # noqa: E402

BF16 = ml_dtypes.bfloat16
E4M3 = ml_dtypes.float8_e4m3fn


class _Quantizer:
    """What `Fp8Quantize` reads from its quantizer: `quantization_config`, here the real
    `FineGrainedFP8Config`."""

    def __init__(self, **kwargs):
        self.quantization_config = FineGrainedFP8Config(**kwargs)


def _np(t):
    """A torch tensor's bytes as the numpy (ml_dtypes) array of the same dtype."""
    as_numpy = {torch.bfloat16: (torch.int16, BF16), torch.float8_e4m3fn: (torch.uint8, E4M3),
                torch.float8_e8m0fnu: (torch.uint8, ml_dtypes.float8_e8m0fnu)}
    if t.dtype in as_numpy:
        bits, dt = as_numpy[t.dtype]
        return t.contiguous().view(bits).numpy().view(dt)
    return t.numpy()


def _same_bits(a, b) -> bool:
    a, b = np.asarray(a), np.asarray(b)
    return a.shape == b.shape and a.dtype.itemsize == b.dtype.itemsize and \
        bytes(np.ascontiguousarray(a).view(np.uint8)) == bytes(np.ascontiguousarray(b).view(np.uint8))


def _random_fp8(rng, shape):
    """Every e4m3 bit pattern but NaN, uniformly."""
    bits = rng.integers(0, 256, shape, dtype=np.uint8)
    bits[(bits & 0x7F) == 0x7F] = 0x3C
    return bits.view(E4M3)


shapes = st.tuples(st.integers(1, 3), st.integers(1, 70), st.integers(1, 70))
blocks = st.tuples(st.sampled_from([1, 3, 16, 32, 128]), st.sampled_from([1, 5, 16, 32, 128]))


@settings(max_examples=60, deadline=None)
@given(shape=shapes, block=blocks, seed=st.integers(0, 2 ** 32 - 1), out=st.sampled_from(["bf16", "f16", "f32"]))
def test_fp8_dequantize_is_transformers_float32_product_rounded_once(shape, block, seed, out, engine):
    rng = np.random.default_rng(seed)
    w = _random_fp8(rng, shape)
    s = (rng.standard_normal(fp8.grid(shape, block)) * 0.01).astype(np.float32)
    dtype, torch_dtype = {"bf16": (BF16, torch.bfloat16), "f16": (np.float16, torch.float16),
                          "f32": (np.float32, torch.float32)}[out]
    want = finegrained_fp8._dequantize_fp8_weight(
        torch.from_numpy(w.view(np.uint8)).view(torch.float8_e4m3fn), torch.from_numpy(s), list(block),
        torch.float32).to(torch_dtype)
    assert _same_bits(fp8.dequantize(w, s, block, dtype), _np(want))


def test_fp8_dequantize_multiplies_in_float32_not_in_bf16(engine):
    w = np.array([[1.125]], np.float32).astype(E4M3)
    s = np.array([[1.0 + 2 ** -8]], np.float32)  # not a bf16 number: a bf16 product rounds it first
    got = fp8.dequantize(w, s, (128, 128), "bfloat16").view(BF16)  # bf16 comes back as its bits
    assert got.astype(np.float32)[0, 0] == np.float32(1.125 * (1 + 2 ** -8)).astype(BF16).astype(np.float32)
    assert got.astype(np.float32)[0, 0] != np.float32(1.125) * np.float32(np.float32(s[0, 0]).astype(BF16))


def test_fp8_dequantize_refuses_a_scale_grid_that_does_not_fit():
    with pytest.raises(ValueError, match=r"scale grid \(2, 2\) does not fit a weight of shape \(300, 128\)"):
        fp8.dequantize(np.zeros((300, 128), E4M3), np.ones((2, 2), np.float32), (128, 128), BF16)


@settings(max_examples=50, deadline=None)
@given(lead=st.integers(1, 2), tiles=st.tuples(st.integers(1, 3), st.integers(1, 3)),
       block=st.sampled_from([(1, 1), (2, 4), (16, 8), (32, 32), (128, 128)]),
       seed=st.integers(0, 2 ** 32 - 1), ue8m0=st.booleans(), dtype=st.sampled_from(["bf16", "f32"]),
       zero_block=st.booleans())
def test_fp8_quantize_is_transformers_fp8quantize(lead, tiles, block, seed, ue8m0, dtype, zero_block, engine):
    rng = np.random.default_rng(seed)
    shape = (lead, tiles[0] * block[0], tiles[1] * block[1])
    x = (rng.standard_normal(shape) * 10.0 ** rng.integers(-6, 6)).astype(np.float32)
    if zero_block:
        x[0, :block[0], :block[1]] = 0
    xt = torch.from_numpy(x).to(torch.bfloat16 if dtype == "bf16" else torch.float32)
    kwargs = {"weight_block_size": list(block)}
    if ue8m0:
        kwargs["scale_fmt"] = "ue8m0"
    want = finegrained_fp8.Fp8Quantize(_Quantizer(**kwargs)).convert({"m.weight": xt})
    q, s = fp8.quantize(_np(xt), block, "e8m0" if ue8m0 else "float32")
    assert _same_bits(q, _np(want["m.weight"]))
    assert _same_bits(s, _np(want["m.weight_scale_inv"]))
    assert _same_bits(fp8.quantize(_np(xt), block, "e8m0" if ue8m0 else "float32", scales_only=True)[1], s)
    assert s.dtype == (np.uint8 if ue8m0 else np.float32)  # E8M0 as its codes


def test_fp8_quantize_scale_is_torch_reciprocal_times_448_not_one_division(engine):
    # torch evaluates `448 / amax` as reciprocal(amax) * 448; for this amax the two differ
    amax = np.float32(1.5)
    assert (np.float32(1) / amax) * np.float32(448) != np.float32(448) / amax
    x = np.full((2, 2), amax, np.float32)
    want = finegrained_fp8.Fp8Quantize(_Quantizer(weight_block_size=[2, 2])).convert({"w": torch.from_numpy(x)})
    _, s = fp8.quantize(x, (2, 2))
    assert _same_bits(s, _np(want["w_scale_inv"]))


@settings(max_examples=40, deadline=None)
@given(shape=shapes, block=blocks, seed=st.integers(0, 2 ** 32 - 1))
def test_fp8_quantize_ragged_edge_blocks_use_their_own_absmax(shape, block, seed, engine):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape).astype(np.float32).astype(BF16)
    q, s = fp8.quantize(x, block)
    assert q.shape == shape and s.shape == fp8.grid(shape, block)
    xf = x.astype(np.float32)
    bm, bn = block
    for e in range(shape[0]):
        for i in range(s.shape[1]):
            for j in range(s.shape[2]):
                tile = xf[e, i * bm:(i + 1) * bm, j * bn:(j + 1) * bn]
                amax = np.abs(tile).max()
                # the tile alone, quantized as a whole block by Fp8Quantize's arithmetic
                q1, s1 = fp8.quantize(tile[None].astype(BF16), tile.shape)
                assert s1[0, 0, 0] == s[e, i, j]
                assert _same_bits(q1[0], q[e, i * bm:(i + 1) * bm, j * bn:(j + 1) * bn])
                if amax > 0:
                    # the largest element lands on +-448 (every value is in range)
                    codes = q[e, i * bm:(i + 1) * bm, j * bn:(j + 1) * bn]
                    assert np.abs(codes.view(E4M3).astype(np.float32)).max() == 448


def test_fp8_kernels_work_in_bounded_slices(monkeypatch, engine):
    """With slices of one block row, a 3-expert ragged tensor gives the numbers it gives in
    one piece."""
    rng = np.random.default_rng(7)
    x = rng.standard_normal((3, 300, 200)).astype(np.float32).astype(BF16)
    whole_q, whole_s = fp8.quantize(x, (128, 128))
    whole_d = fp8.dequantize(whole_q, whole_s, (128, 128), BF16, "float8_e4m3fn")  # codes, named
    monkeypatch.setattr(fp8, "CHUNK_ELEMENTS", 1)
    q, s = fp8.quantize(x, (128, 128))
    assert _same_bits(q, whole_q) and _same_bits(s, whole_s)
    assert _same_bits(fp8.dequantize(q, s, (128, 128), BF16, "float8_e4m3fn"), whole_d)


def test_mxfp4_dequantize_every_byte_and_every_scale_as_transformers(engine):
    blocks = np.broadcast_to(np.arange(256, dtype=np.uint8)[None, :, None, None], (1, 256, 1, 16))
    blocks = np.concatenate([blocks] * 256, axis=2)  # (1, 256, 256, 16): byte n in row n
    scales = np.broadcast_to(np.arange(256, dtype=np.uint8)[None, None, :], (1, 256, 256)).copy()
    for dtype, torch_dtype in [(BF16, torch.bfloat16), (np.float32, torch.float32), (np.float16, torch.float16)]:
        if dtype is np.float16:  # scales past 2**13 would put 6.0 x scale past float16's range: refused
            with pytest.raises(ConversionError, match="past what float16 holds"):
                mxfp4.dequantize(blocks, scales, dtype)
            scales = np.minimum(scales, 127 + 13)
        want = convert_moe_packed_tensors(torch.from_numpy(blocks.copy()), torch.from_numpy(scales), dtype=torch_dtype)
        got = mxfp4.dequantize(blocks, scales, dtype)
        assert got.shape == (1, 256 * 32, 256)
        assert _same_bits(got, _np(want))


@settings(max_examples=30, deadline=None)
@given(e=st.integers(1, 3), n=st.integers(1, 40), g=st.integers(1, 4), seed=st.integers(0, 2 ** 32 - 1))
def test_mxfp4_dequantize_shapes_as_transformers(e, n, g, seed, engine):
    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, 256, (e, n, g, 16), dtype=np.uint8)
    scales = rng.integers(100, 150, (e, n, g), dtype=np.uint8)
    want = convert_moe_packed_tensors(torch.from_numpy(blocks), torch.from_numpy(scales))
    assert _same_bits(mxfp4.dequantize(blocks, scales, BF16), _np(want))


def test_mxfp4_quantize_inverts_dequantize_on_its_values(monkeypatch):
    rng = np.random.default_rng(3)
    blocks = rng.integers(0, 256, (2, 24, 3, 16), dtype=np.uint8)
    scales = rng.integers(110, 140, (2, 24, 3), dtype=np.uint8)
    x = mxfp4.dequantize(blocks, scales, BF16)
    b, s = mxfp4.quantize(x, "bfloat16")  # bf16 bits, named
    assert b.shape == blocks.shape and s.shape == scales.shape
    assert _same_bits(mxfp4.dequantize(b, s, BF16), x)
    assert _same_bits(mxfp4.quantize(x.view(BF16))[0], b)  # or an ml_dtypes array
    assert _same_bits(mxfp4.quantize(x, "bfloat16", scales_only=True)[1], s)
    monkeypatch.setattr(mxfp4, "CHUNK_ELEMENTS", 1)  # one row at a time: the same bytes
    b1, s1 = mxfp4.quantize(x, "bfloat16")
    assert _same_bits(b1, b) and _same_bits(s1, s)


def test_mxfp4_quantize_rounds_as_the_reference_quantizer():
    # one block of 32: amax 5.0 -> 5/6 rounds up to 1 -> scale byte 127; values on the E2M1 grid
    x = np.zeros((1, 32, 1), np.float32)
    x[0, :8, 0] = [5.0, -2.5, 0.25, 0.2, 1.25, -0.75, 1.75, 0.0]
    b, s = mxfp4.quantize(x)
    assert s[0, 0, 0] == 127
    values = mxfp4.dequantize(b, s, np.float32)[0, :8, 0]
    # halves round away from zero on the code grid (5 -> 6, 2.5 -> 3, 0.25 -> 0.5, 1.25 -> 1.5,
    # 0.75 -> 1, 1.75 -> 2), 0.2 -> 0
    assert values.tolist() == [6.0, -3.0, 0.5, 0.0, 1.5, -1.0, 2.0, 0.0]
    assert mxfp4.quantize(np.zeros((1, 32, 2), np.float32))[1].tolist() == [[[0], [0]]]


def test_mxfp4_refuses_shapes_it_cannot_hold():
    with pytest.raises(ValueError, match="do not fit"):
        mxfp4.dequantize(np.zeros((2, 3, 4, 16), np.uint8), np.zeros((2, 3, 5), np.uint8), BF16)
    with pytest.raises(ValueError, match="multiple of 32"):
        mxfp4.quantize(np.zeros((1, 33, 4), np.float32))


@pytest.mark.parametrize("name", ["float8_e4m3fn", "float8_e5m2", "float8_e8m0fnu"])
def test_floatbits_byte_tables_are_ml_dtypes_values(name):
    want = np.arange(256, dtype=np.uint8).view(getattr(ml_dtypes, name)).astype(np.float32)
    got = floatbits.byte_values(name)
    assert _same_bits(got[~np.isnan(want)], want[~np.isnan(want)]) and np.isnan(got[np.isnan(want)]).all()


def _float32_samples(n=4_000_000, limit=None):
    rng = np.random.default_rng(11)
    x = rng.integers(0, 2 ** 32, n, dtype=np.uint64).astype(np.uint32).view(np.float32)
    if limit is not None:
        x = x[np.isnan(x) | (np.abs(x) <= limit)]
    return x


def _grid_midpoints(dtype, limit):
    """Every finite value of a small float dtype, the midpoints between neighbours (the
    ties) and the float32 numbers either side of them."""
    v = np.arange(256, dtype=np.uint8).view(dtype).astype(np.float32)
    v = np.unique(v[np.isfinite(v) & (np.abs(v) <= limit)])
    mids = ((v[1:].astype(np.float64) + v[:-1]) / 2).astype(np.float32)
    return np.concatenate([v, mids, np.nextafter(mids, np.float32(np.inf)), np.nextafter(mids, np.float32(-np.inf))])


def test_floatbits_rounding_is_ml_dtypes_rounding():
    # NaNs whose payload would carry into the sign or wrap when rounded on the bits
    nans = np.array([0x7FFF0000, 0x7FFFFFFF, 0xFFFFFFFF, 0xFFF80000, 0x7FC00000, 0xFFC00000, 0x7F800001],
                    np.uint32).view(np.float32)
    x = np.concatenate([_float32_samples(limit=448), _grid_midpoints(E4M3, 448), nans, np.float32([0.0, -0.0])])
    assert _same_bits(floatbits.to_e4m3(x), x.astype(E4M3))
    assert list(floatbits.to_e4m3(nans)) == [0x7F, 0x7F, 0xFF, 0xFF, 0x7F, 0xFF, 0x7F]
    y = np.concatenate([_float32_samples(), np.array([np.inf, -np.inf, 3.0e38, 1e-45], np.float32)])
    out = np.empty(y.shape, np.uint16)
    floatbits.to_bfloat16(y, out)
    with np.errstate(invalid="ignore"):
        want = y.astype(BF16).view(np.uint16)
    finite = ~np.isnan(y)
    assert _same_bits(out[finite], want[finite]) and np.isnan(out[~finite].view(BF16).astype(np.float32)).all()


def test_native_e4m3_rounding_is_ml_dtypes_rounding():
    """The C loop rounds every float32 as ml_dtypes does (after the clamp to +-448 that
    quantizing applies): random bits, every tie of the e4m3 grid and its neighbours, NaNs
    with payloads, infinities, signed zeros, subnormals; through float32 and through bf16."""
    native = native_library()
    nans = np.array([0x7FFF0000, 0x7FFFFFFF, 0xFFFFFFFF, 0xFFF80000, 0x7FC00000, 0x7F800001],
                    np.uint32).view(np.float32)
    x = np.concatenate([_float32_samples(), _grid_midpoints(E4M3, 448), nans,
                        np.float32([0.0, -0.0, np.inf, -np.inf, 448.0, 464.0, -500.0, 1e-45, -2 ** -10])])
    rows = x[: x.size // 1000 * 1000].reshape(-1, 1000)
    ones = np.ones((rows.shape[0], 8), np.float32)
    q = np.empty(rows.shape, np.uint8)
    native.quantize_e4m3(rows, "float32", 1, 128, ones, q)
    assert _same_bits(q, np.clip(rows, -448, 448).astype(E4M3))
    bits = (rows.view(np.uint32) >> 16).astype(np.uint16)
    native.quantize_e4m3(bits, "bfloat16", 1, 128, ones, q)
    assert _same_bits(q, np.clip((bits.astype(np.uint32) << 16).view(np.float32), -448, 448).astype(E4M3))


def test_native_refuses_arrays_that_do_not_fit():
    """The C loops trust their arguments, so the wrappers check them: a wrong shape, dtype or
    a strided output is a ValueError before any byte is touched."""
    native = native_library()
    x = np.zeros((4, 6), np.uint16)
    with pytest.raises(ValueError, match="shape"):
        native.quantize_e4m3(x, "bfloat16", 2, 4, np.ones((2, 1), np.float32), np.empty((4, 6), np.uint8))
    with pytest.raises(ValueError, match="C-contiguous uint8"):
        native.quantize_e4m3(x, "bfloat16", 2, 4, np.ones((2, 2), np.float32), np.empty((4, 12), np.uint8)[:, ::2])
    with pytest.raises(ValueError, match="bfloat16 bits or float32"):
        native.quantize_e4m3(x, "float16", 2, 4, np.ones((2, 2), np.float32), np.empty((4, 6), np.uint8))
    with pytest.raises(ValueError, match="table"):
        native.gather_blocks(np.zeros((4, 6), np.uint8), np.zeros((1, 256), np.uint16), 4, np.empty((4, 6), np.uint16))
    with pytest.raises(ValueError, match="block 0x4"):
        native.block_max(x, 0, 4, np.empty((1, 2), np.uint16))
    blocks, scales = np.zeros((3, 2, 16), np.uint8), np.zeros((3, 2), np.uint8)
    table = np.zeros(1 << 16, np.uint32)
    with pytest.raises(ValueError, match="adjacent elements"):  # every other column: not adjacent
        native.mxfp4_dequantize(blocks, scales, table, np.empty((64, 6), np.uint16)[:, ::2])
    with pytest.raises(ValueError, match="twice their width"):
        native.mxfp4_dequantize(blocks, scales, table, np.empty((64, 3), np.uint32))
