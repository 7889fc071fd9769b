"""Fitting to a target (issue 11.1): one implementation behind `--target` and `load_into`,
with torch's own rule for BatchNorm counters, checked against the real load_state_dict."""

import pytest
from typer.testing import CliRunner

from mapspec import ConversionError, TensorInfo, load_into
from mapspec.cli import app
from mapspec.compile.fit import Target, compare, fit, model_target, torch_fills

from models import resnet, resnet50

torch = pytest.importorskip("torch")


def without_counters(model):
    return {k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}


def test_torch_itself_accepts_missing_counters_in_a_plain_dict_and_so_does_fit():
    """The rule being matched: strict load_state_dict fills in num_batches_tracked for a norm
    layer that tracks running stats when the dict carries no version metadata."""
    model = resnet50(9)
    plain = without_counters(model)
    assert str(model.load_state_dict(plain, strict=True)) == "<All keys matched successfully>"
    produced = {k: TensorInfo(tuple(v.shape), "float32") for k, v in plain.items()}
    kept, report = fit(produced, model_target(model))
    assert report.ok and len(report.filled) == 53 and kept == list(produced)


def test_counters_are_required_where_torch_requires_them():
    """With version metadata (a state dict straight from a module) torch does not fill them
    in; a module whose norm layer keeps no running stats has no counter to fill."""
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), torch.nn.BatchNorm2d(4))
    sd = model.state_dict()
    del sd["1.num_batches_tracked"]
    with pytest.raises(RuntimeError, match="num_batches_tracked"):
        model.load_state_dict(sd, strict=True)  # sd kept its _metadata: version 2
    odd = torch.nn.Module()
    odd.register_buffer("num_batches_tracked", torch.tensor(0))  # not a norm layer
    odd.register_buffer("running_mean", torch.zeros(2))
    odd.register_buffer("running_var", torch.ones(2))
    with pytest.raises(RuntimeError, match="num_batches_tracked"):
        odd.load_state_dict({"running_mean": torch.zeros(2), "running_var": torch.ones(2)}, strict=True)
    assert model_target(odd).filled == frozenset()
    no_stats = torch.nn.BatchNorm2d(4, track_running_stats=False)
    assert model_target(no_stats).filled == frozenset() and "num_batches_tracked" not in no_stats.state_dict()


def test_a_checkpoint_target_infers_the_same_counters_as_the_model():
    model = resnet50(9)
    infos = model_target(model).infos
    assert torch_fills(infos) == model_target(model).filled
    assert compare({}, infos).filled == tuple(k for k in infos if k.endswith("num_batches_tracked"))


def test_cli_and_api_agree_on_counters(tmp_path):
    """The observation: apply --target rejected what load_state_dict(strict=True) and
    load_into(mode='strict') accept."""
    model = resnet((2, 2, 2, 2), 9)
    torch.save(without_counters(model), tmp_path / "plain.pt")
    (tmp_path / "id.map").write_text("mapspec 1\nkeep **\n")
    r = CliRunner().invoke(app, ["apply", str(tmp_path / "id.map"), str(tmp_path / "plain.pt"), "-o",
                                 str(tmp_path / "out.safetensors"), "--target", "models:resnet((2, 2, 2, 2), 9)"])
    assert r.exit_code == 0, r.output
    assert "20 BatchNorm counters left to load_state_dict" in r.output
    report = load_into(resnet((2, 2, 2, 2), 9), tmp_path / "plain.pt", mode="strict")
    assert report.missing == [] and len(report.loaded) == len(without_counters(model))


def test_a_remaining_mismatch_says_how_to_fix_it(tmp_path):
    model = resnet((2, 2, 2, 2), 1000)
    torch.save(model.state_dict(), tmp_path / "in1k.pt")
    (tmp_path / "id.map").write_text("mapspec 1\nkeep **\n")
    r = CliRunner().invoke(app, ["check", str(tmp_path / "id.map"), str(tmp_path / "in1k.pt"),
                                 "--target", "models:resnet((2, 2, 2, 2), 9)"])
    assert r.exit_code == 1
    assert "shape mismatch: fc.weight produced (1000, 512), target (9, 512) (rule at line 2)" in r.output
    assert "fix: leave them out: --fit drop --drop 'fc.*' (or --fit shape)" in r.output
    # the suggestion works
    r = CliRunner().invoke(app, ["check", str(tmp_path / "id.map"), str(tmp_path / "in1k.pt"),
                                 "--target", "models:resnet((2, 2, 2, 2), 9)", "--fit", "drop", "--drop", "fc.*"])
    assert r.exit_code == 0, r.output


def test_load_into_strict_lists_a_mismatch_once(tmp_path):
    """issue 11.6: fc was reported both as missing and as mismatched."""
    torch.save(resnet((2, 2, 2, 2), 1000).state_dict(), tmp_path / "in1k.pt")
    with pytest.raises(ConversionError) as info:
        load_into(resnet((2, 2, 2, 2), 9), tmp_path / "in1k.pt", mode="strict")
    details = info.value.details
    assert [d for d in details if "fc.weight" in d] == ["shape mismatch: fc.weight produced (1000, 512), target (9, 512)"]
    assert not any(d.startswith("missing") for d in details)


def test_fit_target_object_keeps_explicit_filled_keys():
    t = Target({"a": TensorInfo((2,), "float32"), "b.num_batches_tracked": TensorInfo((), "int64")},
               frozenset({"b.num_batches_tracked"}))
    kept, report = fit({"a": TensorInfo((2,), "float32")}, t)
    assert kept == ["a"] and report.filled == ("b.num_batches_tracked",)


def test_alike_missing_and_unexpected_keys_are_listed_as_one_glob_line_each():
    from mapspec.errors import Span
    from mapspec.compile.fit import explain

    produced = {f"blocks.{i}.w": TensorInfo((2, i + 1), "float32") for i in range(5)}
    produced["solo.x"] = TensorInfo((3,), "float32")
    target = {f"layers.{i}.weight": TensorInfo((7, i + 9), "float32") for i in range(4)}
    target["only.y"] = TensorInfo((5,), "float32")
    rule = Span("a.map", 3, 1, 3, 9)
    lines = explain(compare(produced, target), {k: rule for k in produced})
    assert lines[:3] == [
        "missing from the output: 4 keys like layers.*.weight (e.g. layers.0.weight (7, 9))",
        "missing from the output: only.y (5,)",
        "not in the target: 6 outputs like ** (rule at line 3) (e.g. blocks.0.w (2, 1))",
    ]
