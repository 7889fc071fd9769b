"""A tiny Llama written to GGUF by mapspec loads in transformers (`from_pretrained(...,
gguf_file=...)`, which reads the file with gguf-py, builds the config from the metadata and
undoes llama.cpp's rotary q/k permutation) with the values it started from: exactly for F32,
as F16 rounds them, and as gguf-py dequantizes Q8_0 blocks."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
gguf = pytest.importorskip("gguf")
pytest.importorskip("accelerate")  # transformers loads GGUF files only with it

from mapspec import apply  # noqa: E402
from mapspec.formats.gguf import Value  # noqa: E402

HEADS, KV, HIDDEN, FF, LAYERS, VOCAB = 4, 2, 64, 128, 2, 96
HEAD_DIM = HIDDEN // HEADS


def spec(weights: str) -> str:
    """HF Llama -> llama.cpp names, q/k permuted as llama.cpp's converter does; `weights` is
    the action every 2-D weight ends with (the outtype)."""
    then = f"\n    then {weights}" if weights else ""
    return f"""mapspec 1
model.embed_tokens.weight -> token_embd.weight{then}
model.norm.weight -> output_norm.weight
lm_head.weight -> output.weight{then}
model.layers.{{i:int}}.input_layernorm.weight -> blk.{{i}}.attn_norm.weight
model.layers.{{i:int}}.post_attention_layernorm.weight -> blk.{{i}}.ffn_norm.weight
model.layers.{{i:int}}.self_attn.q_proj.weight -> blk.{{i}}.attn_q.weight
    then view({HEADS}, 2, {HEAD_DIM // 2}, {HIDDEN}) then transpose(1, 2) then reshape(-1, {HIDDEN}){then}
model.layers.{{i:int}}.self_attn.k_proj.weight -> blk.{{i}}.attn_k.weight
    then view({KV}, 2, {HEAD_DIM // 2}, {HIDDEN}) then transpose(1, 2) then reshape(-1, {HIDDEN}){then}
model.layers.{{i:int}}.self_attn.v_proj.weight -> blk.{{i}}.attn_v.weight{then}
model.layers.{{i:int}}.self_attn.o_proj.weight -> blk.{{i}}.attn_output.weight{then}
model.layers.{{i:int}}.mlp.{{p:gate|up|down}}_proj.weight -> blk.{{i}}.ffn_{{p}}.weight{then}
"""


METADATA = {
    "general.architecture": "llama", "general.name": "tiny", "llama.block_count": LAYERS,
    "llama.context_length": 256, "llama.embedding_length": HIDDEN, "llama.feed_forward_length": FF,
    "llama.attention.head_count": HEADS, "llama.attention.head_count_kv": KV,
    "llama.rope.freq_base": 10000.0, "llama.attention.layer_norm_rms_epsilon": Value("float32", 1e-5),
    "llama.rope.dimension_count": HEAD_DIM, "llama.vocab_size": VOCAB,
}


@pytest.fixture(scope="module")
def hf_model(tmp_path_factory):
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=FF,
                                      num_hidden_layers=LAYERS, num_attention_heads=HEADS, num_key_value_heads=KV,
                                      max_position_embeddings=256, rms_norm_eps=1e-5, tie_word_embeddings=False)
    model = transformers.LlamaForCausalLM(config).eval()
    with torch.no_grad():
        for p in model.parameters():  # norms away from 1, so a wrong mapping shows
            p.add_(torch.randn_like(p) * 0.1)
    folder = tmp_path_factory.mktemp("hf")
    model.save_pretrained(folder)
    return model, folder


@pytest.mark.parametrize("outtype, action", [("f32", ""), ("f16", "cast(float16)"), ("q8_0", "cast(q8_0)")])
def test_transformers_loads_our_gguf_with_the_same_values(tmp_path, hf_model, outtype, action):
    model, folder = hf_model
    (tmp_path / "to_gguf.map").write_text(spec(action))
    apply(tmp_path / "to_gguf.map", folder / "model.safetensors", tmp_path / "tiny.gguf", kv=METADATA)
    loaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file="tiny.gguf",
                                                               dtype=torch.float32).eval()
    assert loaded.config.num_key_value_heads == KV and loaded.config.hidden_size == HIDDEN
    want = model.state_dict()
    got = loaded.state_dict()
    assert set(got) == set(want)
    for name, w in want.items():
        w = w.float().numpy()
        if w.ndim == 2 and outtype == "f16":
            w = w.astype(np.float16).astype(np.float32)
        elif w.ndim == 2 and outtype == "q8_0":
            q = gguf.GGMLQuantizationType.Q8_0
            w = gguf.quants.dequantize(gguf.quants.quantize(w, q), q)
        assert np.array_equal(got[name].float().numpy(), w), name
    ids = torch.tensor([[1, 5, 9, 33, 70]])
    with torch.no_grad():
        if outtype == "f32":
            assert torch.equal(loaded(ids).logits, model(ids).logits)
