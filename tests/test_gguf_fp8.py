"""FP8 block-scaled checkpoints straight to GGUF with specs/hf_to_gguf/*.map, proven against
llama.cpp's own converter, which reads them on CPU.

What the reference does with such a model (`quantization_config.quant_method == "fp8"`): each
`X.weight_scale_inv` is dropped and its `X.weight` becomes `float32(w) * scale`, the scale grid
repeated `weight_block_size` times along each dimension and cut to the weight's shape (so a block
at a ragged edge takes its own scale), the product in float32; that float32 tensor then goes the
way of any other (llama's q/k permute, experts stacked) and is typed by `--outtype`. With
`--fp8-as-q8` the dequantized weights (2-D and up) are Q8_0 whatever the outtype, F16 where their
rows are no multiple of 32; every other tensor and `general.file_type` stay as the outtype says.
mapspec's `-p fp8_as_q8=true` is that flag.

A tiny transformers model of each family is quantized here with DeepSeek's block arithmetic in
24x48 blocks (no dimension of the model is a multiple of both), converted by both: the same
tensors (names, shapes, types, bytes) and metadata. Where llama-cpp-python's wheel is in the test
cache (scripts/build_llama_cpp.sh) llama.cpp runs both files and gives the same logits.
"""
import subprocess
import sys

import numpy as np
import pytest

import llamacpp_ref
from gguf_compare import differences
from gguf_models import fp8_quantize, make_model
from mapspec import apply

pytest.importorskip("transformers")
pytest.importorskip("sentencepiece")
gguf = pytest.importorskip("gguf")

SPECS = llamacpp_ref.Path(__file__).parent.parent / "specs" / "hf_to_gguf"
BLOCK = (24, 48)
# (family, outtype, fp8_as_q8): every outtype on llama, the others where they differ (qwen3moe's
# bf16 and q8_0 were checked as well when this was written, and passed)
CASES = [("llama", t, False) for t in ("f32", "f16", "bf16", "q8_0")] + [
    ("llama", "f32", True), ("llama", "bf16", True),
    ("qwen3", "f16", False), ("qwen3", "q8_0", False), ("qwen3", "bf16", True),
    ("qwen3moe", "f16", True),
    ("mixtral", "f32", False), ("qwen2", "f16", False), ("gemma3", "bf16", True), ("phi3", "q8_0", True)]  # Qwen2's 151,646-token vocabulary: slow to compare, one case


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """{case: (model_dir, mapspec.gguf, reference.gguf)}, the references made in one run of the
    converter."""
    root = llamacpp_ref.require()
    base = tmp_path_factory.mktemp("gguf_fp8")
    vocab = root / "models" / "ggml-vocab-qwen2.gguf"
    models = {f: fp8_quantize(make_model(f, base / f, qwen_vocab=vocab if f == "qwen3moe" else None,
                                         tied=f == "qwen3moe"), BLOCK)
              for f in {f for f, _, _ in CASES}}
    out, jobs = {}, []
    for f, t, q8 in CASES:
        name = f"{f}-{t}{'-fp8q8' if q8 else ''}"
        out[(f, t, q8)] = (models[f], base / f"{name}.gguf", base / f"{name}.ref.gguf")
        jobs.append((models[f], base / f"{name}.ref.gguf", t, *(["--fp8-as-q8"] if q8 else [])))
    llamacpp_ref.convert_many(jobs, root)
    for (f, t, q8), (d, mine, _) in out.items():
        apply(SPECS / f"{'llama' if f == 'mixtral' else f}.map", d, mine, params={"outtype": t, "fp8_as_q8": "true" if q8 else "false"})
    return out


def test_an_fp8_model_directory_alone_picks_its_spec(converted, tmp_path):
    d, _, ref = converted[("llama", "bf16", True)]
    done = subprocess.run([sys.executable, "-m", "mapspec.cli", "apply", str(d), "-o", str(tmp_path / "auto.gguf"),
                           "-p", "outtype=bf16", "-p", "fp8_as_q8=true"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert differences(tmp_path / "auto.gguf", ref) == []


def test_fp8_as_q8_takes_true_or_false_only(converted, tmp_path):
    d = converted[("llama", "f16", False)][0]
    with pytest.raises(Exception, match="no entry 'yes' \\(entries: false, true\\)"):
        apply(SPECS / "llama.map", d, tmp_path / "x.gguf", params={"fp8_as_q8": "yes"})
    assert not (tmp_path / "x.gguf").exists()


@pytest.mark.parametrize("family,outtype,fp8_as_q8", CASES)
def test_same_file_as_llama_cpp(converted, family, outtype, fp8_as_q8):
    _, mine, ref = converted[(family, outtype, fp8_as_q8)]
    assert differences(mine, ref) == []


def _dequantized(d, key):
    """An independent dequantization of KEY of the FP8 model directory D: every element times
    the scale of the block it lies in, in float32."""
    from safetensors.torch import load_file

    state = load_file(str(d / "model.safetensors"))
    w = state[key].float().numpy()
    s = state[key + "_scale_inv"].numpy()
    rows, cols = np.arange(w.shape[0]) // BLOCK[0], np.arange(w.shape[1]) // BLOCK[1]
    return w * s[rows[:, None], cols[None, :]]


def test_values_are_the_blockwise_dequantization_edge_blocks_included(converted):
    d, mine, _ = converted[("llama", "f32", False)]
    tensors = {t.name: t for t in gguf.GGUFReader(mine).tensors}
    down = tensors["blk.1.ffn_down.weight"]  # (64, 80): ragged in both 24 and 48
    assert down.tensor_type == gguf.GGMLQuantizationType.F32
    assert np.array_equal(down.data.reshape(64, 80), _dequantized(d, "model.layers.1.mlp.down_proj.weight"))
    v = tensors["blk.0.attn_v.weight"]
    assert np.array_equal(v.data.reshape(32, 64), _dequantized(d, "model.layers.0.self_attn.v_proj.weight"))
    assert not any(n.endswith("scale_inv") for n in tensors)


def test_fp8_as_q8_types_the_dequantized_weights_only(converted):
    _, mine, _ = converted[("llama", "f32", True)]
    r = gguf.GGUFReader(mine)
    types = {t.name: t.tensor_type.name for t in r.tensors}
    assert types["blk.0.attn_q.weight"] == types["blk.0.ffn_up.weight"] == "Q8_0"
    assert types["blk.0.ffn_down.weight"] == "F16"  # rows of 80: no multiple of 32
    assert types["token_embd.weight"] == types["blk.0.attn_norm.weight"] == "F32"  # never FP8
    assert r.fields["general.file_type"].contents() == 0  # still the outtype's


@pytest.mark.parametrize("outtype,fp8_as_q8", [("f32", False), ("f16", False), ("bf16", False), ("q8_0", False),
                                               ("bf16", True)])
def test_llama_cpp_gives_the_reference_files_logits(converted, outtype, fp8_as_q8):
    """llama.cpp (the C++ library, from llama-cpp-python's cached wheel) loads mapspec's file and
    the reference's, without weight repacking, and evaluates the same tokens to the same logits."""
    _, mine, ref = converted[("llama", outtype, fp8_as_q8)]
    a, b = llamacpp_ref.same_logits(mine, ref, PROMPT)
    assert a.shape == b.shape and a.shape[0] > 10 and a.shape[1] == 384 and np.isfinite(a).all()
    assert np.abs(a).max() > 0.1  # a real model's numbers, not zeros
    if outtype == "q8_0" or fp8_as_q8:
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-4)
    else:
        assert np.array_equal(a, b)


PROMPT = "The quick brown fox jumps over the lazy dog."


def test_the_way_back_gives_the_dequantized_model(converted, tmp_path):
    d, mine, _ = converted[("llama", "f32", False)]
    apply(SPECS / "llama.map", mine, tmp_path / "back", reverse=True)
    from safetensors.torch import load_file

    back = load_file(str(tmp_path / "back" / "model.safetensors"))
    assert not any("scale" in k for k in back)
    key = "model.layers.1.mlp.down_proj.weight"
    assert np.array_equal(back[key].numpy(), _dequantized(d, key))


def test_an_fp8_weight_without_its_scale_is_refused(converted, tmp_path):
    """Never a raw FP8 copy: the weight falls to the plain rule, whose dtype check refuses it."""
    import shutil

    from safetensors.torch import load_file, save_file

    d = tmp_path / "model"
    shutil.copytree(converted[("llama", "f16", False)][0], d)
    state = load_file(str(d / "model.safetensors"))
    del state["model.layers.0.mlp.up_proj.weight_scale_inv"]
    save_file(state, str(d / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(Exception, match=r"expect\(dtype=bfloat16\): the tensor here is float8_e4m3fn "
                                        r"\(a quantized weight whose scale tensor \(weight_scale_inv\) is missing\?\)"):
        apply(SPECS / "llama.map", d, tmp_path / "x.gguf")
    assert not (tmp_path / "x.gguf").exists()
