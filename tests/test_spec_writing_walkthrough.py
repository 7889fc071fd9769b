"""Issue 11, done when: a new user's attempt at MXNet Gluon ResNet-50 -> torchvision's layout
gets from a wrong first spec to a right one by following mapspec's messages alone.

Each step runs the command a user would, asserts that the message names the fix, applies
exactly that fix (taken from the message text), and goes on. The checkpoints are written by
real mxnet; the target is torchvision's ResNet-50 layout (tests/models.py)."""

import re
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from mapspec import load_into
from mapspec.cli import app

from conftest import seeded_gluon
from models import resnet50

mx = pytest.importorskip("mxnet")
torch = pytest.importorskip("torch")
pytestmark = pytest.mark.mxnet
CLASSES = 9
TARGET = f"models:resnet50({CLASSES})"
REPO = Path(__file__).resolve().parent.parent


def run(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def gluon_r50(tmp_path_factory):
    from mxnet.gluon.model_zoo import vision

    d = tmp_path_factory.mktemp("r50")
    net = seeded_gluon(vision.resnet50_v1(classes=CLASSES), 50)
    x = np.random.default_rng(1).standard_normal((2, 3, 64, 64)).astype(np.float32)
    expected = net(mx.nd.array(x)).asnumpy()
    net.save_parameters(str(d / "r50.params"))
    return d, x, expected


FIRST_SPEC = """mapspec 1
from mxnet to pytorch

table gbn {
  gamma        = weight
  beta         = bias
  running_mean = running_mean
  running_var  = running_var
}

table body {
  0 = conv1
  1 = bn1
  3 = conv2
  4 = bn2
  6 = conv3
  7 = bn3
}

features.0.weight -> conv1.weight
features.1.{p in gbn} -> bn1.{gbn[p]}
features.{s:int}.{b:int}.body.{i:0|3|6}.weight -> layer{s-3}.{b}.{body[i]}.weight
features.{s:int}.{b:int}.body.{i:1|4|7}.{p in gbn} -> layer{s-3}.{b}.{body[i]}.{gbn[p]}
features.{s:int}.{b:int}.downsample.0.weight -> layer{s-3}.{b}.downsample.0.weight
features.{s:int}.{b:int}.downsample.1.{p in gbn} -> layer{s-3}.{b}.downsample.bn.{gbn[p]}
features.{s:int}.{b:int}.conv.weight -> layer{s-3}.{b}.conv.weight
output.{p:weight|bias} -> fc.{p}
"""


def test_a_new_user_gets_from_a_wrong_spec_to_a_right_one_by_the_messages(gluon_r50):
    d, x, expected = gluon_r50
    ckpt = d / "r50.params"
    spec = d / "r50.map"
    spec.write_text(FIRST_SPEC)

    # 0. The keys to write rules for, one per line, nothing hidden.
    keys = run("inspect", ckpt, "--keys").output.splitlines()
    assert len(keys) == 299 and "features.4.0.body.0.bias\t(64,)\tfloat32" in keys

    # 1. Gluon's bottleneck convs have biases the rules do not take: one folded line, one fix.
    r = run("check", spec, ckpt, "--target", TARGET)
    assert r.exit_code == 1
    assert ("32 keys like features.*.*.body.*.bias: closest rule: line 22 "
            "(features.{s:int}.{b:int}.body.{i:0|3|6}.weight) has 'weight' in place of 'bias'") in r.output
    fix = re.search(r"add '(drop features[^']*)'", r.output)[1]
    assert fix == "drop features.*.*.body.*.bias"
    spec.write_text(spec.read_text() + fix + "\n")

    # 2. The downsample BatchNorm lands under a name the target does not have: paired with
    #    the name it has, with the rule that wrote it and the segment to change.
    r = run("check", spec, ckpt, "--target", TARGET)
    assert r.exit_code == 1
    found = re.search(r"16 outputs like (\S+) are not in the target; the target has (\S+) with the same shapes: "
                      r"the rule at line (\d+) writes '(\w+)' where the target has '(\w+)'", r.output)
    assert found and found.groups() == ("layer*.0.downsample.bn.*", "layer*.0.downsample.1.*", "25", "bn", "1")
    assert "missing from the output" not in r.output.replace("most likely missing", "")
    lines = spec.read_text().splitlines()
    line, old, new = int(found[3]), found[4], found[5]
    lines[line - 1] = lines[line - 1].replace(f".{old}.", f".{new}.")
    spec.write_text("\n".join(lines) + "\n")

    # 3. It compiles, fits the target (BatchNorm counters as torch's load_state_dict
    #    treats them), and says which rule matches nothing, where.
    r = run("check", spec, ckpt, "--target", TARGET)
    assert r.exit_code == 0, r.output
    assert "matches the target (53 BatchNorm counters left out, which load_state_dict fills in)" in r.output
    unused = re.search(r"r50\.map:(\d+):1: warning: this rule matches no key of this checkpoint \(([^)]*)\): "
                       r"if it should, correct its pattern \(`mapspec inspect --keys` lists the keys\), else remove it",
                       r.output)
    assert unused and unused[1] == "26"
    lines = spec.read_text().splitlines()
    del lines[int(unused[1]) - 1]
    spec.write_text("\n".join(lines) + "\n")

    # 4. Clean, even strictly.
    r = run("check", spec, ckpt, "--target", TARGET, "--strict-rules")
    assert r.exit_code == 0 and "warning" not in r.output, r.output

    # 5. Converted, it loads strictly into the torchvision layout and gives Gluon's logits
    #    (Gluon's v1 bottleneck strides in its first 1x1 conv: the model is built that way).
    out = d / "r50.pt"
    r = run("apply", spec, ckpt, "-o", out, "--target", TARGET)
    assert r.exit_code == 0, r.output
    assert "Transferred 267/320 target tensors from 299 source tensors" in r.output
    model = resnet50(CLASSES, stride_in_1x1=True)
    model.load_state_dict(torch.load(out, weights_only=True), strict=True)
    with torch.no_grad():
        got = model(torch.from_numpy(x)).numpy()
    assert 0.1 < np.abs(expected).max() < 1e3
    assert np.abs(got - expected).max() < 1e-4

    # 6. The Python API agrees with the CLI: strict loading accepts the same conversion.
    api_model = resnet50(CLASSES, stride_in_1x1=True)
    report = load_into(api_model, ckpt, spec, mode="strict")
    assert report.missing == [] and report.unexpected == [] and len(report.loaded) == 267
    with torch.no_grad():
        assert np.abs(api_model(torch.from_numpy(x)).numpy() - expected).max() < 1e-4


def test_the_export_form_by_the_messages(tmp_path):
    """HybridBlock.export writes PREFIX-0000.params with arg:/aux: names; a spec that
    forgets the prefix of the running statistics is told which rules and what to write."""
    from mxnet.gluon.model_zoo import vision

    net = seeded_gluon(vision.resnet18_v1(classes=CLASSES), 18)
    net(mx.nd.zeros((1, 3, 64, 64)))
    net.export(str(tmp_path / "r18"), 0)
    spec = tmp_path / "r18.map"
    spec.write_text((REPO / "specs" / "gluon_resnet.map").read_text().replace("{x:arg|aux}:", "arg:"))

    r = run("check", spec, tmp_path / "r18")
    assert r.exit_code == 2 and "r18-0000.params exists: it is an MXNet checkpoint prefix, add --epoch 0" in r.output
    r = run("check", spec, tmp_path / "r18", "--epoch", "0")
    assert r.exit_code == 1
    hints = re.findall(r"keys like aux:\S+: the rule at line (\d+) \([^)]*\) matches with 'arg:', not 'aux:': "
                       r"write '(\{x:arg\|aux\}:)' to take both", r.output)
    assert sorted(int(n) for n, _ in hints) == [33, 35, 37]
    lines = spec.read_text().splitlines()
    for n, fix in hints:
        lines[int(n) - 1] = lines[int(n) - 1].replace("arg:", fix, 1)
    spec.write_text("\n".join(lines) + "\n")
    r = run("check", spec, tmp_path / "r18", "--epoch", "0")
    assert r.exit_code == 0, r.output
