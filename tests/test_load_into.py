"""Partial loading into changed models: reports match load_state_dict's own lists."""

import pytest
from typer.testing import CliRunner

from mapspec import ConversionError, load_into
from mapspec.cli import app

from models import resnet

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def imagenet_resnet34(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "resnet34.pth"
    model = resnet((3, 4, 6, 3), 1000)
    torch.save({"state_dict": model.state_dict(), "epoch": 90, "optimizer": {"state": {}, "param_groups": []}},
               path)
    return path, model.state_dict()


def test_shape_mode_loads_everything_but_the_head(imagenet_resnet34):
    path, source = imagenet_resnet34
    model = resnet((3, 4, 6, 3), 5)
    report = load_into(model, path, mode="shape")
    assert sorted(report.missing) == ["fc.bias", "fc.weight"]
    assert report.mismatched == [("fc.weight", (1000, 512), (5, 512)), ("fc.bias", (1000,), (5,))]
    assert report.unexpected == []
    assert report.summary() == f"Transferred {len(model.state_dict()) - 2}/{len(model.state_dict())} tensors"
    assert torch.equal(model.layer4[2].conv2.weight, source["layer4.2.conv2.weight"])
    # the same lists torch gives for the same tensors
    fresh = resnet((3, 4, 6, 3), 5)
    ref = fresh.load_state_dict({k: v for k, v in source.items() if not k.startswith("fc.")}, strict=False)
    assert sorted(report.missing) == sorted(ref.missing_keys)


def test_drop_mode_leaves_exactly_the_dropped_keys_missing(imagenet_resnet34):
    path, source = imagenet_resnet34
    model = resnet((3, 4, 6, 3), 5)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    report = load_into(model, path, mode="drop", drop=["fc.*", "layer4.*"])
    expected = {k for k in model.state_dict() if k.startswith(("fc.", "layer4.")) and not k.endswith("num_batches_tracked")}
    assert set(report.missing) == expected
    fresh = resnet((3, 4, 6, 3), 5)
    ref = fresh.load_state_dict({k: v for k, v in source.items() if not k.startswith(("fc.", "layer4."))}, strict=False)
    assert sorted(report.missing) == sorted(ref.missing_keys)
    assert torch.equal(model.state_dict()["layer4.0.conv1.weight"], before["layer4.0.conv1.weight"])
    assert torch.equal(model.state_dict()["layer3.0.conv1.weight"], source["layer3.0.conv1.weight"])


def test_strict_mode_refuses_and_leaves_the_model_alone(imagenet_resnet34):
    path, _ = imagenet_resnet34
    model = resnet((3, 4, 6, 3), 5)
    before = model.state_dict()["conv1.weight"].clone()
    with pytest.raises(ConversionError) as info:
        load_into(model, path, mode="strict")
    text = info.value.render()
    assert "shape mismatch: fc.weight produced (1000, 512), target (5, 512)" in text
    # issue 11.6: fc is mismatched, not also "missing"; and the message says how to fix it
    assert "missing" not in text
    assert "fix: leave them out: mode='drop', drop=['fc.*'] (or mode='shape')" in text
    assert torch.equal(model.state_dict()["conv1.weight"], before)
    report = load_into(resnet((3, 4, 6, 3), 1000), path, mode="strict")
    assert report.missing == [] and report.unexpected == []


def test_spec_runs_before_loading(tmp_path):
    torch.save({"module.fc.weight": torch.ones(2, 4).half(), "module.fc.bias": torch.zeros(2).half()},
               tmp_path / "dp.pt")
    (tmp_path / "s.map").write_text("module.{r:**} -> {r} then cast(float32)\n")
    model = torch.nn.Sequential()
    model.fc = torch.nn.Linear(4, 2)
    report = load_into(model, tmp_path / "dp.pt", tmp_path / "s.map", mode="strict")
    assert report.loaded == ["fc.weight", "fc.bias"] and torch.equal(model.fc.weight, torch.ones(2, 4))


def test_cli_target_can_be_a_model_factory(tmp_path):
    torch.save({"weight": torch.ones(2, 4), "bias": torch.zeros(2)}, tmp_path / "lin.pt")
    (tmp_path / "s.map").write_text("keep weight | bias\n")
    r = CliRunner().invoke(app, ["check", str(tmp_path / "s.map"), str(tmp_path / "lin.pt"),
                                 "--target", "torch.nn:Linear(4, 2)"])
    assert r.exit_code == 0 and "matches the target" in r.output, r.output
    r = CliRunner().invoke(app, ["check", str(tmp_path / "s.map"), str(tmp_path / "lin.pt"),
                                 "--target", "torch.nn:Linear(in_features=8, out_features=2)"])
    assert r.exit_code == 1 and "shape mismatch: weight produced (2, 4), target (2, 8)" in r.output


def test_cli_fit_shape_and_drop_against_a_model_factory(tmp_path, imagenet_resnet34):
    path, source = imagenet_resnet34
    (tmp_path / "id.map").write_text("keep **\n")
    runner = CliRunner()
    factory = "models:resnet((3, 4, 6, 3), 5)"
    r = runner.invoke(app, ["apply", str(tmp_path / "id.map"), str(path), "-o", str(tmp_path / "a.safetensors"),
                            "--target", factory, "--fit", "shape"])
    assert r.exit_code == 0, r.output
    n = len(source)
    assert f"Transferred {n - 2}/{n} target tensors from {n} source tensors" in r.output
    assert "note: shape mismatch: fc.weight produced (1000, 512), target (5, 512)" in r.output
    r = runner.invoke(app, ["apply", str(tmp_path / "id.map"), str(path), "-o", str(tmp_path / "b.safetensors"),
                            "--target", factory, "--fit", "drop", "--drop", "fc.*", "--drop", "layer4.*"])
    assert r.exit_code == 0, r.output
    from mapspec import open_source

    assert set(open_source(tmp_path / "b.safetensors").infos()) == {
        k for k in source if not k.startswith(("fc.", "layer4."))}
    r = runner.invoke(app, ["apply", str(tmp_path / "id.map"), str(path), "-o", str(tmp_path / "c.safetensors"),
                            "--target", factory])
    assert r.exit_code == 1 and not (tmp_path / "c.safetensors").exists()


def test_check_reports_how_a_shape_fit_goes(tmp_path, imagenet_resnet34):
    path, source = imagenet_resnet34
    (tmp_path / "id.map").write_text("keep **\n")
    r = CliRunner().invoke(app, ["check", str(tmp_path / "id.map"), str(path),
                                 "--target", "models:resnet((3, 4, 6, 3), 5)", "--fit", "shape"])
    n = len(source)
    assert r.exit_code == 0 and f"fits the target ({n - 2}/{n}; 0 missing, 2 shape-mismatched, 0 unexpected)" in r.output


# ------------------------------------------------------------------ parametrised specs

def module_with(infos):
    """A torch module holding exactly these parameters (zeros), by dotted name."""
    root = torch.nn.Module()
    for key, info in infos.items():
        *path, leaf = key.split(".")
        node = root
        for part in path:
            if not hasattr(node, part):
                node.add_module(part, torch.nn.Module())
            node = getattr(node, part)
        node.register_parameter(leaf, torch.nn.Parameter(torch.zeros(info.shape)))
    return root


def test_a_parametrised_spec_loads_with_params_or_config(tmp_path):
    """load_into(..., params=..., config=...): a transformers Llama checkpoint into a model with
    Meta's names, the rotary permutation sized by the model's configuration."""
    transformers = pytest.importorskip("transformers")
    from safetensors.torch import save_file

    from mapspec import PlanError, plan_for
    from conftest import LLAMA, meta_to_hf

    config = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=1,
                                      num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False)
    torch.manual_seed(1)
    hf = transformers.LlamaForCausalLM(config)
    save_file({k: v.contiguous() for k, v in hf.state_dict().items()}, tmp_path / "hf.safetensors")
    config.to_json_file(tmp_path / "config.json")
    meta_names = plan_for(LLAMA, tmp_path / "hf.safetensors", config=tmp_path / "config.json").outputs()

    by_config = module_with(meta_names)
    report = load_into(by_config, tmp_path / "hf.safetensors", LLAMA, mode="strict", config=tmp_path / "config.json")
    assert report.missing == [] and report.unexpected == [] and len(report.loaded) == len(meta_names)
    wq = by_config.state_dict()["layers.0.attention.wq.weight"]
    assert torch.equal(meta_to_hf(torch, wq, 4), hf.state_dict()["model.layers.0.self_attn.q_proj.weight"])

    by_params = module_with(meta_names)
    load_into(by_params, tmp_path / "hf.safetensors", LLAMA, mode="strict",
              params={"n_heads": 4, "n_kv": 2, "hidden": 32})
    assert all(torch.equal(by_params.state_dict()[k], v) for k, v in by_config.state_dict().items())
    # -p wins over the configuration, as on the command line; a wrong count is refused before loading
    untouched = module_with(meta_names)
    with pytest.raises(PlanError, match=r"expect\(8, 32\)"):
        load_into(untouched, tmp_path / "hf.safetensors", LLAMA, mode="strict", params={"n_heads": 8},
                  config=tmp_path / "config.json")
    assert all(not v.any() for v in untouched.state_dict().values())
