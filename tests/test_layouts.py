"""Interleaved and strided layouts written with parameters (the golden specs in
tests/data/specs/ok), checked value for value against the layouts' definitions, written here
independently in numpy, at two sizes each (different head counts and GQA ratios)."""

import json

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from mapspec import apply

from conftest import DATA

OK = DATA / "specs" / "ok"
SIZES = [  # (heads, kv heads, hidden)
    (4, 2, 16),
    (8, 1, 64),
    (6, 6, 48),
]


def convert(tmp_path, spec: str, tensors: dict, config: dict, **params) -> dict:
    src, out, cfg = tmp_path / "in.safetensors", tmp_path / "out.safetensors", tmp_path / "config.json"
    save_file(tensors, src)
    cfg.write_text(json.dumps(config))
    apply(OK / spec, src, out, config=cfg, params=params)
    return load_file(out)


def rng_tensor(rng, *shape):
    return rng.standard_normal(shape).astype(np.float32)


@pytest.mark.parametrize("heads,kv,hidden", SIZES)
def test_llama_rotary_permutation_is_the_reference_formula(tmp_path, heads, kv, hidden):
    rng = np.random.default_rng(heads * 100 + kv)
    d = hidden // heads
    q, k = rng_tensor(rng, heads * d, hidden), rng_tensor(rng, kv * d, hidden)
    out = convert(tmp_path, "llama_rotary.map",
                  {"model.layers.0.self_attn.q_proj.weight": q, "model.layers.0.self_attn.k_proj.weight": k},
                  {"num_attention_heads": heads, "num_key_value_heads": kv, "hidden_size": hidden})

    def hf_to_meta(w, n):  # rows of each head: [first halves | second halves] -> interleaved pairs
        return w.reshape(n, 2, d // 2, hidden).transpose(0, 2, 1, 3).reshape(n * d, hidden)

    assert np.array_equal(out["layers.0.attention.wq.weight"], hf_to_meta(q, heads))
    assert np.array_equal(out["layers.0.attention.wk.weight"], hf_to_meta(k, kv))
    # and row by row: Meta row 2j of a head is HF row j, Meta row 2j+1 is HF row d/2 + j
    wq = out["layers.0.attention.wq.weight"]
    for h in range(heads):
        for j in range(d // 2):
            assert np.array_equal(wq[h * d + 2 * j], q[h * d + j])
            assert np.array_equal(wq[h * d + 2 * j + 1], q[h * d + d // 2 + j])


@pytest.mark.parametrize("heads,kv,hidden", SIZES)
def test_neox_per_head_qkv_interleave_splits_exactly(tmp_path, heads, kv, hidden):
    rng = np.random.default_rng(heads)
    d = hidden // heads
    w, b = rng_tensor(rng, 3 * hidden, hidden), rng_tensor(rng, 3 * hidden)
    out = convert(tmp_path, "neox_qkv.map",
                  {"gpt_neox.layers.0.attention.query_key_value.weight": w,
                   "gpt_neox.layers.0.attention.query_key_value.bias": b},
                  {"num_attention_heads": heads, "hidden_size": hidden})
    for n, p in enumerate("qkv"):
        # head h's rows of p sit at fused rows (3h + n) * d ... (3h + n + 1) * d
        rows = np.concatenate([np.arange((3 * h + n) * d, (3 * h + n + 1) * d) for h in range(heads)])
        assert np.array_equal(out[f"model.layers.0.self_attn.{p}_proj.weight"], w[rows])
        assert np.array_equal(out[f"model.layers.0.self_attn.{p}_proj.bias"], b[rows])


@pytest.mark.parametrize("heads,kv,hidden", SIZES)
def test_megatron_gqa_groups_are_laid_out_group_by_group(tmp_path, heads, kv, hidden):
    rng = np.random.default_rng(kv)
    d = hidden // heads
    q, k, v = rng_tensor(rng, heads * d, hidden), rng_tensor(rng, kv * d, hidden), rng_tensor(rng, kv * d, hidden)
    gate, up = rng_tensor(rng, 3 * hidden, hidden), rng_tensor(rng, 3 * hidden, hidden)
    out = convert(tmp_path, "megatron_gqa.map",
                  {"model.layers.0.self_attn.q_proj.weight": q, "model.layers.0.self_attn.k_proj.weight": k,
                   "model.layers.0.self_attn.v_proj.weight": v, "model.layers.0.mlp.gate_proj.weight": gate,
                   "model.layers.0.mlp.up_proj.weight": up},
                  {"num_attention_heads": heads, "num_key_value_heads": kv, "hidden_size": hidden})
    per = heads // kv
    expected = []
    for g in range(kv):  # group g: its query heads, its key head, its value head
        expected.append(q[g * per * d:(g + 1) * per * d])
        expected.append(k[g * d:(g + 1) * d])
        expected.append(v[g * d:(g + 1) * d])
    assert np.array_equal(out["decoder.layers.0.self_attention.linear_qkv.weight"], np.concatenate(expected))
    assert np.array_equal(out["decoder.layers.0.mlp.linear_fc1.weight"], np.concatenate([gate, up]))


def test_a_wrong_head_count_fails_at_compile_time_where_shapes_can_tell(tmp_path):
    """With GQA, k's rows are n_kv * hidden / n_heads: a wrong n_heads breaks expect()."""
    rng = np.random.default_rng(0)
    tensors = {"model.layers.0.self_attn.q_proj.weight": rng_tensor(rng, 64, 64),
               "model.layers.0.self_attn.k_proj.weight": rng_tensor(rng, 16, 64)}
    config = {"num_attention_heads": 8, "num_key_value_heads": 2, "hidden_size": 64}
    from mapspec import PlanError

    with pytest.raises(PlanError) as info:
        convert(tmp_path, "llama_rotary.map", tensors, config, n_heads=4)
    # n_heads=4 makes head_dim 16, so k would need 2 * 16 rows; it has 16
    assert "llama_rotary.map:15:5: error: expect(32, 64): the tensor here has shape (16, 64)" in info.value.render()
    assert not (tmp_path / "out.safetensors").exists()
