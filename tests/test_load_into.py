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
