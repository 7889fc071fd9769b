"""mapspec.remap: a spec applied to an in-memory state dict (issue 11, Python API)."""

import numpy as np
import pytest

import mapspec
from mapspec import UsageError

from conftest import LLAMA, meta_to_hf

SPEC = """mapspec 1
table bn {
  gamma = weight
  beta  = bias
}
module.bn.{p in bn} -> bn.{bn[p]}
module.fc.weight -> fc.weight then view(+(1, 1))
module.emb -> emb then cast(float32)
drop **.num_batches_tracked
"""


@pytest.fixture
def spec(tmp_path):
    (tmp_path / "s.map").write_text(SPEC)
    return tmp_path / "s.map"


def test_torch_tensors_renamed_without_a_copy_and_bf16_kept(spec):
    torch = pytest.importorskip("torch")
    sd = {"module.bn.gamma": torch.rand(3, dtype=torch.bfloat16), "module.bn.beta": torch.rand(3),
          "module.fc.weight": torch.rand(2, 3, dtype=torch.bfloat16), "module.emb": torch.rand(4, dtype=torch.float16),
          "module.bn.num_batches_tracked": torch.tensor(7)}
    out = mapspec.remap(spec, sd)
    assert list(out) == ["bn.weight", "bn.bias", "fc.weight", "emb"]
    assert out["bn.weight"] is sd["module.bn.gamma"] and out["bn.bias"] is sd["module.bn.beta"]
    assert out["fc.weight"].dtype == torch.bfloat16 and out["fc.weight"].shape == (2, 3, 1, 1)
    assert torch.equal(out["fc.weight"].flatten(), sd["module.fc.weight"].flatten())
    assert out["emb"].dtype == torch.float32 and torch.equal(out["emb"], sd["module.emb"].float())


def test_a_live_model_state_dict_round_trips_into_a_model(spec):
    torch = pytest.importorskip("torch")
    src = torch.nn.Module()
    src.module = torch.nn.Module()
    src.module.bn = torch.nn.Module()
    src.module.bn.register_parameter("gamma", torch.nn.Parameter(torch.rand(3)))
    src.module.bn.register_parameter("beta", torch.nn.Parameter(torch.rand(3)))
    src.module.fc = torch.nn.Linear(3, 2, bias=False)
    src.module.register_buffer("emb", torch.rand(4).half())
    out = mapspec.remap(spec, src.state_dict())
    dst = torch.nn.Module()
    dst.bn = torch.nn.BatchNorm2d(3, track_running_stats=False)
    dst.fc = torch.nn.Conv2d(3, 2, 1, bias=False)
    dst.register_buffer("emb", torch.zeros(4))
    dst.load_state_dict(out, strict=True)
    assert torch.equal(dst.fc.weight.flatten(), src.module.fc.weight.detach().flatten())
    assert torch.equal(dst.bn.weight, src.module.bn.gamma.detach())


def test_numpy_arrays_come_back_as_numpy(spec):
    sd = {"module.bn.gamma": np.ones(3, np.float32), "module.bn.beta": np.zeros(3, np.float32),
          "module.fc.weight": np.arange(6, dtype=np.float32).reshape(2, 3), "module.emb": np.ones(4, np.float16)}
    out = mapspec.remap(spec, sd)
    assert out["bn.weight"] is sd["module.bn.gamma"]
    assert isinstance(out["fc.weight"], np.ndarray) and out["fc.weight"].shape == (2, 3, 1, 1)
    assert out["emb"].dtype == np.float32


def test_unmatched_keys_and_unknown_parameters_are_refused(spec):
    with pytest.raises(mapspec.ConversionError, match="not matched by any rule"):
        mapspec.remap(spec, {"other": np.ones(1, np.float32)})
    with pytest.raises(UsageError, match="width: this spec declares no parameters"):
        mapspec.remap(spec, {}, width=2)
    with pytest.raises(UsageError, match="not a tensor"):
        mapspec.remap(spec, {"module.emb": [1, 2]})


def test_a_spec_select_header_takes_the_sub_tree(tmp_path):
    (tmp_path / "sel.map").write_text("mapspec 1\nselect model\nfc.{p:weight|bias} -> head.{p}\n")
    sd = {"model.fc.weight": np.ones((2, 2), np.float32), "model.fc.bias": np.zeros(2, np.float32),
          "optimizer.step": np.ones(1, np.float32)}
    out = mapspec.remap(tmp_path / "sel.map", sd)
    assert list(out) == ["head.weight", "head.bias"] and out["head.weight"] is sd["model.fc.weight"]


# ------------------------------------------------------------------ parametrised specs

def tiny_llama(torch, tied: bool):
    transformers = pytest.importorskip("transformers")
    config = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=tied)
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(config).to(torch.bfloat16), config


@pytest.mark.parametrize("tied", [False, True], ids=["untied", "tied"])
def test_a_parametrised_spec_remaps_a_live_transformers_llama(tied):
    """remap(spec, state_dict, **params): the parameters a spec declares, as keyword arguments."""
    torch = pytest.importorskip("torch")
    model, config = tiny_llama(torch, tied)
    sd = model.state_dict()
    out = mapspec.remap(LLAMA, sd, n_heads=config.num_attention_heads, n_kv=config.num_key_value_heads,
                        hidden=config.hidden_size)
    for i in range(2):
        for proj, heads in (("q", 4), ("k", 2)):
            meta = out[f"layers.{i}.attention.w{proj}.weight"]
            assert isinstance(meta, torch.Tensor) and meta.dtype == torch.bfloat16
            assert torch.equal(meta_to_hf(torch, meta, heads), sd[f"model.layers.{i}.self_attn.{proj}_proj.weight"])
        assert out[f"layers.{i}.attention.wv.weight"] is sd[f"model.layers.{i}.self_attn.v_proj.weight"]
        assert out[f"model.layers.{i}.input_layernorm.weight"] is sd[f"model.layers.{i}.input_layernorm.weight"]
    assert out["tok_embeddings.weight"] is sd["model.embed_tokens.weight"]
    assert torch.equal(out["output.weight"], sd["lm_head.weight"])
    # the head count the shapes cannot tell still fails where they can: k has 2 * 8 rows, not 2 * 4
    with pytest.raises(mapspec.PlanError, match=r"expect\(8, 32\): the tensor here has shape \(16, 32\)"):
        mapspec.remap(LLAMA, sd, n_heads=8, n_kv=2, hidden=32)
    with pytest.raises(mapspec.SpecError, match="parameter 'n_heads' has no value"):
        mapspec.remap(LLAMA, sd, hidden=32)
