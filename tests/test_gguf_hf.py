"""Hugging Face -> GGUF with specs/hf_to_gguf/*.map, proven against llama.cpp's own converter.

For a tiny model of every family the specs cover (made by transformers with a small real
tokenizer), mapspec's GGUF and the one `convert_hf_to_gguf.py` writes have the same tensors
(names, shapes, ggml types, bytes) and the same metadata (naming keys aside), for each
`--outtype`. Then: the file reads back in gguf-py and in transformers' GGUF loader as the
reference does, the way back (`apply --reverse`) gives a model directory `from_pretrained`
loads with the original weights, `verify` round-trips bit for bit, and `apply MODEL_DIR` picks
the spec from config.json.

The reference comes from the llama-cpp-python source archive (tests/llamacpp_ref.py); without
it (offline) these tests skip.
"""
import json
import subprocess
import sys

import numpy as np
import pytest

import llamacpp_ref
from gguf_compare import differences
from gguf_models import make_model
from mapspec import apply
from mapspec.errors import UsageError

pytest.importorskip("transformers")
pytest.importorskip("sentencepiece")
gguf = pytest.importorskip("gguf")

SPECS = llamacpp_ref.Path(__file__).parent.parent / "specs" / "hf_to_gguf"
OUTTYPES = ("f32", "f16", "bf16", "q8_0")
# family -> spec; every one with a sentencepiece tokenizer (which llama.cpp's Qwen2/Qwen3 classes
# try first), qwen2 also with Qwen2's real BPE one, qwen3moe only with it (its class reads no other)
FAMILIES = {"llama": "llama", "mixtral": "llama", "qwen2": "qwen2", "qwen3": "qwen3", "qwen3moe": "qwen3moe",
            "gemma3": "gemma3", "phi3": "phi3"}


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """{(family, outtype): (model_dir, mapspec.gguf, reference.gguf)}, the references made in one
    run of the converter."""
    root = llamacpp_ref.require()
    base = tmp_path_factory.mktemp("gguf_hf")
    vocab = root / "models" / "ggml-vocab-qwen2.gguf"
    models = {f: make_model(f, base / f, qwen_vocab=vocab if f == "qwen3moe" else None, tied=f == "qwen3moe")
              for f in FAMILIES}
    models["qwen2-bpe"] = make_model("qwen2", base / "qwen2-bpe", qwen_vocab=vocab, tied=True)
    jobs, out = [], {}
    for name, d in models.items():
        for t in OUTTYPES if name != "qwen2-bpe" else ("f32", "q8_0"):
            out[(name, t)] = (d, base / f"{name}-{t}.gguf", base / f"{name}-{t}.ref.gguf")
            jobs.append((d, base / f"{name}-{t}.ref.gguf", t))
    llamacpp_ref.convert_many(jobs, root)
    for (name, t), (d, mine, _) in out.items():
        spec = SPECS / f"{FAMILIES[name.split('-')[0]]}.map"
        apply(spec, d, mine, params={"outtype": t})
    return out


CASES = [(f, t) for f in FAMILIES for t in OUTTYPES] + [("qwen2-bpe", "f32"), ("qwen2-bpe", "q8_0")]


@pytest.mark.parametrize("family,outtype", CASES)
def test_same_file_as_llama_cpp(converted, family, outtype):
    _, mine, ref = converted[(family, outtype)]
    assert differences(mine, ref) == []


def test_a_type_kept_is_a_file_to_file_copy_and_the_same_file(tmp_path):
    """An f16 model to --outtype f16 (and bf16 to bf16): every tensor whose type stays and
    whose values do not move (all but the q/k permutes and the F32 norms) is offered to the
    sink as a kernel copy, though its rule says expect(dtype=) and cast(); the file is the
    reference's, byte for byte."""
    from mapspec import plan_for
    from mapspec.formats import open_source
    from mapspec.run.executor import source_extent

    root = llamacpp_ref.require()
    jobs, cases = [], []
    for dtype, outtype in (("float16", "f16"), ("bfloat16", "bf16")):
        d = make_model("llama", tmp_path / dtype, dtype=dtype)
        jobs.append((d, tmp_path / f"{dtype}.ref.gguf", outtype))
        cases.append((d, outtype, tmp_path / f"{dtype}.gguf", tmp_path / f"{dtype}.ref.gguf"))
    llamacpp_ref.convert_many(jobs, root)
    for d, outtype, mine, ref in cases:
        plan = plan_for(SPECS / "llama.map", d, params={"outtype": outtype})
        source = open_source(d)
        try:
            copied = {st.output for st in plan.steps if source_extent(st, source) is not None}
        finally:
            source.close()
        moved = {st.output for st in plan.steps if "norm" in st.output or "attn_q" in st.output
                 or "attn_k" in st.output}
        assert copied == {st.output for st in plan.steps} - moved and copied
        apply(SPECS / "llama.map", d, mine, params={"outtype": outtype})
        assert differences(mine, ref) == []


def test_outtype_rules(converted):
    """The per-tensor types of --outtype q8_0: weights Q8_0, a weight whose rows (80 wide) are
    no multiple of the 32-element block F16, norms and the MoE router F32, experts stacked."""
    _, mine, _ = converted[("mixtral", "q8_0")]
    types = {t.name: t.tensor_type.name for t in gguf.GGUFReader(mine).tensors}
    assert types["token_embd.weight"] == types["output.weight"] == types["blk.0.attn_q.weight"] == "Q8_0"
    assert types["blk.0.ffn_down_exps.weight"] == "F16"  # rows of 80
    assert types["blk.0.ffn_gate_exps.weight"] == "Q8_0"
    assert types["blk.0.attn_norm.weight"] == types["blk.0.ffn_gate_inp.weight"] == "F32"
    shapes = {t.name: list(map(int, t.shape)) for t in gguf.GGUFReader(mine).tensors}
    assert shapes["blk.0.ffn_gate_exps.weight"] == [64, 80, 4]  # ggml order: (experts, ffn, hidden) reversed


def test_tied_head_writes_no_output(converted):
    _, mine, _ = converted[("qwen2-bpe", "f32")]
    names = {t.name for t in gguf.GGUFReader(mine).tensors}
    assert "token_embd.weight" in names and "output.weight" not in names


def test_values_read_back(converted):
    """gguf-py reads mapspec's f32 file as the model's own numbers (llama: q and k permuted to
    llama.cpp's interleaved rotary; gemma3: norms + 1)."""
    import torch
    import transformers

    d, mine, _ = converted[("llama", "f32")]
    sd = transformers.AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32).state_dict()
    r = {t.name: np.asarray(t.data) for t in gguf.GGUFReader(mine).tensors}
    np.testing.assert_array_equal(r["blk.1.attn_v.weight"], sd["model.layers.1.self_attn.v_proj.weight"].numpy())
    k = sd["model.layers.0.self_attn.k_proj.weight"].numpy()  # 2 kv heads of 16
    permuted = k.reshape(2, 2, 8, 64).swapaxes(1, 2).reshape(32, 64)
    np.testing.assert_array_equal(r["blk.0.attn_k.weight"], permuted)
    d, mine, _ = converted[("gemma3", "f32")]
    sd = transformers.AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32).state_dict()
    r = {t.name: np.asarray(t.data) for t in gguf.GGUFReader(mine).tensors}
    np.testing.assert_array_equal(r["output_norm.weight"], sd["model.norm.weight"].numpy() + np.float32(1))


@pytest.mark.parametrize("family", ["llama"])
def test_transformers_gguf_loading_equal(converted, tmp_path, family):
    """transformers' own GGUF loader reads mapspec's file as it reads the reference's."""
    import torch
    import transformers

    d, mine, ref = converted[(family, "f32")]
    a = transformers.AutoModelForCausalLM.from_pretrained(mine.parent, gguf_file=mine.name).state_dict()
    b = transformers.AutoModelForCausalLM.from_pretrained(ref.parent, gguf_file=ref.name).state_dict()
    original = transformers.AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32).state_dict()
    assert sorted(a) == sorted(b)
    for k in a:
        assert torch.equal(a[k], b[k]), k
        if k in original:  # transformers undoes llama.cpp's permutes: the model's own weights
            assert torch.equal(a[k].float(), original[k]), k


@pytest.mark.parametrize("family,outtype", [("llama", "f32"), ("llama", "bf16"), ("mixtral", "bf16"),
                                            ("qwen3moe", "f32"), ("gemma3", "bf16"), ("phi3", "f32")])
def test_reverse_gives_a_loadable_model_directory(converted, tmp_path, family, outtype):
    """GGUF -> HF: safetensors plus a config.json rebuilt from the GGUF metadata;
    from_pretrained loads the original (bf16) weights bit for bit."""
    import torch
    import transformers

    d, mine, _ = converted[(family, outtype)]
    out = tmp_path / "back"
    params = {"hf_dtype": "bfloat16"}
    if family == "mixtral":  # a llama GGUF does not say which HF class wrote it
        params.update(hf_arch="MixtralForCausalLM", model_type="mixtral")
    apply(SPECS / f"{FAMILIES[family]}.map", mine, out, reverse=True, params=params)
    config = json.loads((out / "config.json").read_text())
    original = json.loads((d / "config.json").read_text())
    for key in ("num_hidden_layers", "hidden_size", "num_attention_heads", "num_key_value_heads", "vocab_size",
                "max_position_embeddings", "rms_norm_eps", "architectures", "model_type"):
        assert config[key] == original[key], key
    a = transformers.AutoModelForCausalLM.from_pretrained(d).state_dict()
    b = transformers.AutoModelForCausalLM.from_pretrained(out).state_dict()
    assert sorted(a) == sorted(b)
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_reverse_of_q8_0_dequantizes_to_the_picked_dtype(converted, tmp_path):
    """A Q8_0 GGUF comes back dequantized (with --lossy: the loss is reported) to the dtype
    -p hf_dtype picks, the values gguf-py's dequantize gives."""
    import torch
    import transformers

    _, mine, _ = converted[("llama", "q8_0")]
    with pytest.raises(Exception, match="loses precision"):
        apply(SPECS / "llama.map", mine, tmp_path / "refused", reverse=True, params={"hf_dtype": "float32"})
    report = apply(SPECS / "llama.map", mine, tmp_path / "back", reverse=True, lossy=True,
                   params={"hf_dtype": "float32"})
    assert report.losses
    model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "back")
    assert model.dtype == torch.float32
    t = {t.name: t for t in gguf.GGUFReader(mine).tensors}["blk.0.attn_v.weight"]
    want = gguf.dequantize(t.data, t.tensor_type)
    np.testing.assert_array_equal(model.state_dict()["model.layers.0.self_attn.v_proj.weight"].numpy(), want)


@pytest.mark.parametrize("outtype", ["f32", "bf16"])
@pytest.mark.parametrize("family", ["llama", "mixtral", "gemma3", "qwen3moe"])
def test_verify_round_trip_bit_exact(converted, family, outtype):
    from mapspec import verify_roundtrip

    d = converted[(family, outtype)][0]
    result, _ = verify_roundtrip(SPECS / f"{FAMILIES[family]}.map", d, params={"outtype": outtype})
    assert result.ok and not result.missing


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "mapspec.cli", *map(str, args)], capture_output=True, text=True)


def test_model_directory_alone_picks_its_spec(converted, tmp_path):
    d, _, ref = converted[("phi3", "f16")]
    done = run_cli("apply", d, "-o", tmp_path / "auto.gguf", "-p", "outtype=f16")
    assert done.returncode == 0, done.stderr
    assert differences(tmp_path / "auto.gguf", ref) == []


def test_unsupported_architecture_is_a_clear_error(tmp_path):
    d = tmp_path / "bert"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"architectures": ["BertModel"]}))
    done = run_cli("apply", d, "-o", tmp_path / "x.gguf")
    assert done.returncode == 2 and not (tmp_path / "x.gguf").exists()
    (line,) = done.stderr.strip().splitlines()
    assert "BertModel" in line and "LlamaForCausalLM" in line and "Qwen3MoeForCausalLM" in line
    with pytest.raises(UsageError, match="no config.json"):
        from mapspec.tools.hf_gguf import spec_for

        spec_for(tmp_path)


def test_metadata_needs_a_format_that_holds_it(converted, tmp_path):
    d = converted[("llama", "f32")][0]
    with pytest.raises(UsageError, match="cannot hold"):
        apply(SPECS / "llama.map", d, tmp_path / "x.safetensors", params={"outtype": "f32"})
    assert not (tmp_path / "x.safetensors").exists()


def test_llama_cpp_runs_mapspecs_file_as_the_reference(converted):
    """Where llama-cpp-python's wheel was built into the test cache (scripts/build_llama_cpp.sh),
    llama.cpp loads mapspec's q8_0 file and gives the reference file's logits."""
    _, mine, ref = converted[("llama", "q8_0")]
    a, b = llamacpp_ref.same_logits(mine, ref, "The quick brown fox")
    assert np.isfinite(a).all() and np.array_equal(a, b)
