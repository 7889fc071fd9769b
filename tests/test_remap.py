"""mapspec.remap: a spec applied to an in-memory state dict (issue 11, Python API)."""

import numpy as np
import pytest

import mapspec
from mapspec import UsageError

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
