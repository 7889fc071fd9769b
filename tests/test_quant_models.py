"""The shipped quantization specs on whole (tiny) transformers models, model directory in,
model directory out: from_pretrained loads every output with no missing, unexpected or
mismatched weights, and its logits are those of the model built from transformers' own
reference ops' tensors, exactly (`Fp8Quantize`, `_dequantize_fp8_weight`,
`convert_moe_packed_tensors`, and the quantizers' `dequantize=True` loading on CPU)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
st = pytest.importorskip("safetensors.torch")
from transformers.integrations.finegrained_fp8 import Fp8Quantize, _dequantize_fp8_weight  # noqa: E402
from transformers.integrations.mxfp4 import convert_moe_packed_tensors  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
SPECS = REPO / "specs"
IDS = torch.tensor([[1, 5, 9, 3, 7, 2]])


def _cli(*args, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "mapspec.cli", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True)


def _loaded(path: Path, **kwargs):
    """from_pretrained(path), asserting the load report is clean."""
    model, info = transformers.AutoModelForCausalLM.from_pretrained(path, output_loading_info=True, **kwargs)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    return model


def _logits(model):
    with torch.no_grad():
        return model(IDS).logits


def _reference(src: Path, state: dict):
    """The source model as from_pretrained builds it, holding `state` instead."""
    model = transformers.AutoModelForCausalLM.from_pretrained(src)
    model.load_state_dict(state, strict=True)
    return model


def _llama(path: Path, intermediate: int) -> Path:
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=intermediate,
                                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)
    transformers.LlamaForCausalLM(config).to(torch.bfloat16).save_pretrained(path)
    (path / "tokenizer.json").write_text('{"model": {"type": "BPE"}}')
    return path


class _Quantizer:
    def __init__(self, **kwargs):
        self.quantization_config = transformers.FineGrainedFP8Config(**kwargs)


def test_fp8_quantize_then_dequantize_a_llama_gives_the_reference_ops_logits(tmp_path):
    """intermediate 80 in 32x32 blocks: the MLP weights have ragged edge blocks."""
    src = _llama(tmp_path / "src", intermediate=80)
    r = _cli("apply", SPECS / "fp8_block_quantize.map", src, "-o", "q", "--max-shard-size", "5GB", "-p", "block=32",
             cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    q_dir = tmp_path / "q"
    config = json.loads((q_dir / "config.json").read_text())
    assert config["quantization_config"] == {"activation_scheme": "dynamic", "fmt": "e4m3", "quant_method": "fp8",
                                             "weight_block_size": [32, 32]}
    assert config["dtype"] == "bfloat16"
    assert (q_dir / "tokenizer.json").read_bytes() == (src / "tokenizer.json").read_bytes()
    source = st.load_file(src / "model.safetensors")
    q = st.load_file(q_dir / "model.safetensors")
    fp8quantize = Fp8Quantize(_Quantizer(weight_block_size=[32, 32]))
    for key, value in source.items():
        if key.endswith("_proj.weight"):
            assert q[key].dtype == torch.float8_e4m3fn and q[key + "_scale_inv"].dtype == torch.float32
            rows, cols = value.shape
            if rows % 32 == 0 and cols % 32 == 0:  # what Fp8Quantize quantizes: bit for bit the same
                want = fp8quantize.convert({key: value})
                assert torch.equal(q[key].view(torch.uint8), want[key].view(torch.uint8)), key
                assert torch.equal(q[key + "_scale_inv"], want[key + "_scale_inv"]), key
            else:
                assert q[key + "_scale_inv"].shape == (-(-rows // 32), -(-cols // 32))
        else:  # embeddings, norms, lm_head: byte for byte
            assert torch.equal(q[key].view(torch.uint8), value.view(torch.uint8)), key

    r = _cli("explain", SPECS / "fp8_block_dequant.map", q_dir, "--config", q_dir / "config.json", cwd=tmp_path)
    assert "config.json (model directory in and out): quantization_config removed; dtype bfloat16" in r.stdout
    r = _cli("apply", SPECS / "fp8_block_dequant.map", q_dir, "-o", "dq", "--config", q_dir / "config.json",
             "--max-shard-size", "5GB", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    dq = tmp_path / "dq"
    assert json.loads((dq / "config.json").read_text()) == json.loads((src / "config.json").read_text())
    reference = {k: _dequantize_fp8_weight(q[k], q[k + "_scale_inv"], [32, 32], torch.float32).to(torch.bfloat16)
                 if k.endswith("_proj.weight") else v for k, v in source.items()}
    ours = _loaded(dq)
    assert ours.dtype == torch.bfloat16
    assert torch.equal(_logits(ours), _logits(_reference(src, reference)))


def test_fp8_dequantized_model_is_what_transformers_dequantize_true_loads(tmp_path):
    src = _llama(tmp_path / "src", intermediate=64)
    assert _cli("apply", SPECS / "fp8_block_quantize.map", src, "-o", "q", "--max-shard-size", "5GB", "-p", "block=32",
                cwd=tmp_path).returncode == 0
    r = _cli("apply", SPECS / "fp8_block_dequant.map", "q", "-o", "dq", "--config", "q/config.json",
             "--max-shard-size", "5GB", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    theirs = _loaded(tmp_path / "q", quantization_config=transformers.FineGrainedFP8Config(dequantize=True))
    assert torch.equal(_logits(_loaded(tmp_path / "dq")), _logits(theirs))
    # what Fp8Quantize made, dequantized and quantized again, comes back bit for bit
    r = _cli("verify", SPECS / "fp8_block_dequant.map", "q", "--config", "q/config.json", "--lossy", cwd=tmp_path)
    assert r.returncode == 0 and r.stdout.strip().endswith("ok: 35 tensors, 35 bit-exact"), r.stdout + r.stderr


def test_fp8_e8m0_scales_round_trip(tmp_path):
    src = _llama(tmp_path / "src", intermediate=64)
    r = _cli("apply", SPECS / "fp8_block_quantize.map", src, "-o", "q", "--max-shard-size", "5GB",
             "-p", "block=32", "-p", "scale=e8m0", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    config = json.loads((tmp_path / "q" / "config.json").read_text())
    assert config["quantization_config"]["scale_fmt"] == "ue8m0"
    q = st.load_file(tmp_path / "q" / "model.safetensors")
    source = st.load_file(src / "model.safetensors")
    key = "model.layers.0.mlp.down_proj.weight"
    want = Fp8Quantize(_Quantizer(weight_block_size=[32, 32], scale_fmt="ue8m0")).convert({key: source[key]})
    assert q[key + "_scale_inv"].dtype == torch.float8_e8m0fnu
    assert torch.equal(q[key + "_scale_inv"].view(torch.uint8), want[key + "_scale_inv"].view(torch.uint8))
    assert torch.equal(q[key].view(torch.uint8), want[key].view(torch.uint8))
    r = _cli("apply", SPECS / "fp8_block_dequant.map", "q", "-o", "dq", "--config", "q/config.json",
             "--max-shard-size", "5GB", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    dq = st.load_file(tmp_path / "dq" / "model.safetensors")
    assert torch.equal(dq[key], _dequantize_fp8_weight(q[key], q[key + "_scale_inv"], [32, 32],
                                                       torch.float32).to(torch.bfloat16))


def _fp8_checkpoint(path: Path) -> dict:
    torch.manual_seed(1)
    state = {}
    for p in ("q_proj", "o_proj"):
        state[f"model.layers.0.self_attn.{p}.weight"] = torch.randn(300, 200).to(torch.float8_e4m3fn)
        state[f"model.layers.0.self_attn.{p}.weight_scale_inv"] = torch.rand(3, 2) * 0.01
    state["model.norm.weight"] = torch.ones(200, dtype=torch.bfloat16)
    return state


@pytest.mark.parametrize("fault, message", [
    ("missing", "'model.layers.0.self_attn.o_proj.weight' merges {part} = weight, weight_scale_inv with dequantize(), "
                "but model.layers.0.self_attn.o_proj.weight_scale_inv is missing "
                "(found model.layers.0.self_attn.o_proj.weight)"),
    ("orphan", "but model.layers.0.self_attn.q_proj.weight is missing "
               "(found model.layers.0.self_attn.q_proj.weight_scale_inv)"),
    ("grid", "dequantize(fp8): the scale grid (2, 2) does not fit the weight of shape (300, 200) in 128x128 blocks "
             "(it needs (3, 2)): model.layers.0.self_attn.q_proj.weight, model.layers.0.self_attn.q_proj.weight_scale_inv"),
])
def test_a_scale_that_does_not_fit_its_weight_is_a_compile_error_naming_both(tmp_path, fault, message):
    state = _fp8_checkpoint(tmp_path)
    if fault == "missing":
        del state["model.layers.0.self_attn.o_proj.weight_scale_inv"]
    elif fault == "orphan":
        del state["model.layers.0.self_attn.q_proj.weight"]
    else:
        state["model.layers.0.self_attn.q_proj.weight_scale_inv"] = torch.rand(2, 2)
    st.save_file(state, tmp_path / "fp8.safetensors")
    r = _cli("apply", SPECS / "fp8_block_dequant.map", "fp8.safetensors", "-o", "out.safetensors", cwd=tmp_path)
    assert r.returncode == 1
    assert message in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "out.safetensors").exists()


def test_verify_says_where_fp8_is_lossy_and_by_how_much(tmp_path):
    src = _llama(tmp_path / "src", intermediate=64)
    r = _cli("verify", SPECS / "fp8_block_quantize.map", src / "model.safetensors", "--lossy", cwd=tmp_path)
    assert r.returncode == 1
    rows = {line.split()[0]: line.split() for line in r.stdout.splitlines() if line.startswith("fp8_block_quantize.map:")}
    lines = (SPECS / "fp8_block_quantize.map").read_text().splitlines()
    line = {text.split()[0]: n for n, text in enumerate(lines, 1) if text.startswith(("model.layers", "otherwise"))}
    quantized = rows[f"fp8_block_quantize.map:{line['model.layers.{i:int}.{m:**}_proj.weight']}"]
    kept = rows[f"fp8_block_quantize.map:{line['otherwise']}"]
    assert quantized[3] == "0/14" and 0 < float(quantized[4]) < 0.1  # every weight moved, by fp8 rounding
    assert kept[3] == "7/7" and kept[4] == "0"
    assert "quantize(fp8) rounds bfloat16 values to float8" in r.stderr


def _gpt_oss(path: Path) -> tuple[Path, dict]:
    """A tiny gpt-oss checkpoint as OpenAI ships it: MXFP4 experts (random codes and scales
    in the range real checkpoints use), everything else bf16."""
    torch.manual_seed(0)
    config = transformers.GptOssConfig(vocab_size=128, hidden_size=64, intermediate_size=64, num_hidden_layers=2,
                                       num_attention_heads=4, num_key_value_heads=2, head_dim=16, num_local_experts=4,
                                       num_experts_per_tok=2, layer_types=["sliding_attention", "full_attention"])
    model = transformers.GptOssForCausalLM(config).to(torch.bfloat16)
    rng = np.random.default_rng(0)
    state = {}
    for key, value in model.state_dict().items():
        if key.endswith(("experts.gate_up_proj", "experts.down_proj")):
            e, k, n = value.shape
            state[key + "_blocks"] = torch.from_numpy(rng.integers(0, 256, (e, n, k // 32, 16), dtype=np.uint8))
            state[key + "_scales"] = torch.from_numpy(rng.integers(119, 126, (e, n, k // 32), dtype=np.uint8))
        else:
            state[key] = value.contiguous()
    path.mkdir()
    st.save_file(state, path / "model.safetensors", metadata={"format": "pt"})
    saved = config.to_dict()
    saved["dtype"] = "bfloat16"
    saved["quantization_config"] = {"quant_method": "mxfp4", "modules_to_not_convert": [
        "model.layers.*.self_attn", "model.layers.*.mlp.router", "model.embed_tokens", "lm_head"]}
    (path / "config.json").write_text(json.dumps(saved, indent=2))
    return path, state


def test_gpt_oss_mxfp4_dequant_loads_as_transformers_computes_it(tmp_path):
    src, state = _gpt_oss(tmp_path / "src")
    r = _cli("apply", SPECS / "gpt_oss_mxfp4_dequant.map", src, "-o", "out", "--max-shard-size", "5GB", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    out = tmp_path / "out"
    config = json.loads((out / "config.json").read_text())
    assert "quantization_config" not in config
    assert config == {k: v for k, v in json.loads((src / "config.json").read_text()).items()
                      if k != "quantization_config"}
    ours = _loaded(out)
    written = st.load_file(out / "model.safetensors")
    for key in [k for k in state if k.endswith("_blocks")]:
        name = key.removesuffix("_blocks")
        want = convert_moe_packed_tensors(state[key], state[name + "_scales"])
        assert torch.equal(written[name], want), name  # (E, N, G, 16) -> (E, 32 G, N), transposed as transformers does
    reference = {k: v for k, v in state.items() if not k.endswith(("_blocks", "_scales"))}
    reference.update({k.removesuffix("_blocks"): convert_moe_packed_tensors(v, state[k.removesuffix("_blocks") + "_scales"])
                      for k, v in state.items() if k.endswith("_blocks")})
    model = transformers.GptOssForCausalLM.from_pretrained(out)  # the architecture, then the reference tensors
    model.load_state_dict(reference, strict=True)
    assert torch.equal(_logits(ours), _logits(model))
    theirs = _loaded(src, quantization_config=transformers.Mxfp4Config(dequantize=True), dtype=torch.bfloat16)
    assert torch.equal(_logits(ours), _logits(theirs))

    # and back to MXFP4 with the derived inverse: these blocks come back byte for byte
    r = _cli("invert", SPECS / "gpt_oss_mxfp4_dequant.map", src, "--lossy", "-o", "back.map", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "then quantize(mxfp4, into=part)" in (tmp_path / "back.map").read_text()
    r = _cli("apply", "back.map", out, "-o", "back", "--max-shard-size", "5GB", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    back = st.load_file(tmp_path / "back" / "model.safetensors")
    assert set(back) == set(state) and all(torch.equal(back[k], v) for k, v in state.items())
    assert json.loads((tmp_path / "back" / "config.json").read_text())["quantization_config"] == {"quant_method": "mxfp4"}
    again = _loaded(tmp_path / "back", quantization_config=transformers.Mxfp4Config(dequantize=True), dtype=torch.bfloat16)
    assert torch.equal(_logits(again), _logits(ours))


def test_the_dequant_spec_covers_deepseek_and_qwen3_moe_layouts():
    """Compiled against the key lists of DeepSeek-V3 (MLA, dense and MoE layers, shared experts,
    the router's bias, MTP) and Qwen3-MoE-FP8 shapes: every quantized weight meets its scale,
    everything else passes as it is."""
    from mapspec import compile_spec, parse_spec
    from mapspec.compile.plan import TensorInfo

    def fp8(name, shape):
        rows, cols = shape
        return {f"{name}.weight": TensorInfo(shape, "float8_e4m3fn"),
                f"{name}.weight_scale_inv": TensorInfo((-(-rows // 128), -(-cols // 128)), "float32")}

    keys = {"model.embed_tokens.weight": TensorInfo((1000, 7168), "bfloat16"),
            "lm_head.weight": TensorInfo((1000, 7168), "bfloat16")}
    a = "model.layers.3.self_attn"
    keys.update(fp8(f"{a}.q_a_proj", (1536, 7168)) | fp8(f"{a}.q_b_proj", (24576, 1536))
                | fp8(f"{a}.kv_a_proj_with_mqa", (576, 7168)) | fp8(f"{a}.kv_b_proj", (32768, 512))
                | fp8(f"{a}.o_proj", (7168, 16384)))
    keys[f"{a}.q_a_layernorm.weight"] = TensorInfo((1536,), "bfloat16")
    keys[f"{a}.kv_a_layernorm.weight"] = TensorInfo((512,), "bfloat16")
    keys.update(fp8("model.layers.0.mlp.gate_proj", (18432, 7168)))
    for e in range(2):
        keys.update(fp8(f"model.layers.3.mlp.experts.{e}.up_proj", (2048, 7168)))
        keys.update(fp8(f"model.layers.3.mlp.experts.{e}.down_proj", (7168, 2048)))
    keys.update(fp8("model.layers.3.mlp.shared_experts.gate_proj", (2048, 7168)))
    keys["model.layers.3.mlp.gate.weight"] = TensorInfo((256, 7168), "bfloat16")
    keys["model.layers.3.mlp.gate.e_score_correction_bias"] = TensorInfo((256,), "float32")
    keys.update(fp8("model.layers.61.eh_proj", (7168, 14336)))
    keys.update(fp8("model.layers.4.mlp.experts.0.gate_proj", (768, 2048)))  # Qwen3-30B-A3B expert shapes
    plan = compile_spec(parse_spec(SPECS / "fp8_block_dequant.map"), keys,
                        config={"quantization_config": {"weight_block_size": [128, 128]}})
    outputs = plan.outputs()
    assert not plan.unmatched and not any(k.endswith("_scale_inv") for k in outputs)
    for key, info in keys.items():
        if key.endswith("_scale_inv"):
            continue
        want = "bfloat16" if info.dtype == "float8_e4m3fn" else info.dtype
        assert (outputs[key].shape, outputs[key].dtype) == (info.shape, want), key
    assert plan.config_patch().remove == frozenset({"quantization_config"})
