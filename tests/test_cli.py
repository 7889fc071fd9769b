"""The CLI in-process: outputs, summaries, exit codes, and no damage on failure."""

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from mapspec.cli import app
from mapspec.formats import open_sink, open_source
from mapspec.compile.plan import TensorInfo

REPO = Path(__file__).resolve().parent.parent
runner = CliRunner()

SPEC = """mapspec 1
from pytorch to pytorch
table bn {
  gamma = weight
  beta = bias
}
m.{i:int}.bn_{p in bn} -> layers.{i}.norm.{bn[p]}
fc.weight -> head.weight then view(+(1, 1)) then cast(float32)
drop **.num_batches_tracked
"""


def make(tmp_path: Path, extra: dict | None = None) -> Path:
    tensors = {
        "m.0.bn_gamma": np.ones(3, np.float32),
        "m.0.bn_beta": np.zeros(3, np.float32),
        "fc.weight": np.arange(12, dtype=np.float16).reshape(4, 3),
        "m.num_batches_tracked": np.array(5, np.int64),
    }
    tensors.update(extra or {})
    path = tmp_path / "in.safetensors"
    sink = open_sink(path, "safetensors", {k: TensorInfo(a.shape, str(a.dtype)) for k, a in tensors.items()})
    for k, a in tensors.items():
        sink.write(k, a)
    sink.commit()
    (tmp_path / "spec.map").write_text(SPEC)
    return path


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


def digest(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


@pytest.mark.parametrize("suffix", [".safetensors", ".npz"])
def test_apply_converts_and_reports(tmp_path, suffix):
    ckpt = make(tmp_path)
    before = digest(ckpt)
    out = tmp_path / f"out{suffix}"
    r = run("apply", tmp_path / "spec.map", ckpt, "-o", out)
    assert r.exit_code == 0, r.output
    assert "Transferred 3/4 tensors (1 dropped)" in r.output
    src = open_source(out)
    assert dict(src.infos()) == {
        "layers.0.norm.weight": TensorInfo((3,), "float32"),
        "layers.0.norm.bias": TensorInfo((3,), "float32"),
        "head.weight": TensorInfo((4, 3, 1, 1), "float32"),
    }
    np.testing.assert_array_equal(src.read("head.weight").ravel(), np.arange(12, dtype=np.float32))
    assert digest(ckpt) == before


def test_apply_to_pt_loads_in_torch_strictly(tmp_path):
    torch = pytest.importorskip("torch")
    ckpt = make(tmp_path)
    out = tmp_path / "out.pt"
    assert run("apply", tmp_path / "spec.map", ckpt, "-o", out).exit_code == 0
    sd = torch.load(out, weights_only=True)
    model = torch.nn.Module()
    model.head = torch.nn.Conv2d(3, 4, 1, bias=False)
    model.layers = torch.nn.ModuleList([torch.nn.Module()])
    model.layers[0].norm = torch.nn.BatchNorm2d(3)
    missing, unexpected = model.load_state_dict(sd, strict=False)
    assert unexpected == []
    # BatchNorm fills in a missing num_batches_tracked itself, so torch does not list it.
    assert sorted(missing) == ["layers.0.norm.running_mean", "layers.0.norm.running_var"]


def test_refuses_to_overwrite_without_force(tmp_path):
    ckpt = make(tmp_path)
    out = tmp_path / "out.safetensors"
    out.write_bytes(b"keep me")
    r = run("apply", tmp_path / "spec.map", ckpt, "-o", out)
    assert r.exit_code == 2 and "--force" in r.output
    assert out.read_bytes() == b"keep me"
    assert run("apply", tmp_path / "spec.map", ckpt, "-o", out, "--force").exit_code == 0


def test_unmatched_key_fails_with_exit_1_and_no_output(tmp_path):
    ckpt = make(tmp_path, {"extra.weight": np.ones(2, np.float32)})
    out = tmp_path / "out.safetensors"
    r = run("apply", tmp_path / "spec.map", ckpt, "-o", out)
    assert r.exit_code == 1
    assert "1 source key is not matched" in r.output and "extra.weight" in r.output
    assert "Traceback" not in r.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.safetensors", "spec.map"]
    r = run("apply", tmp_path / "spec.map", ckpt, "-o", out, "--non-strict")
    assert r.exit_code == 0 and "1 unmatched" in r.output


def test_spec_error_is_compiler_style_with_exit_2(tmp_path):
    ckpt = make(tmp_path)
    (tmp_path / "bad.map").write_text("fc.weight -> head.{x}\n")
    r = run("apply", tmp_path / "bad.map", ckpt, "-o", tmp_path / "o.safetensors")
    assert r.exit_code == 2
    lines = r.output.splitlines()
    assert lines[0].endswith("bad.map:1:20: error: capture {x} is not bound by source pattern fc.weight")
    assert lines[1] == "    fc.weight -> head.{x}"
    assert lines[2] == "    " + " " * 19 + "^"


def test_unreadable_checkpoint_is_exit_2(tmp_path):
    make(tmp_path)
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    r = run("apply", tmp_path / "spec.map", tmp_path / "junk.pt", "-o", tmp_path / "o.safetensors")
    assert r.exit_code == 2 and r.output.startswith("error:") and "Traceback" not in r.output
    assert not (tmp_path / "o.safetensors").exists()


def test_malicious_pickle_never_runs(tmp_path):
    torch = pytest.importorskip("torch")
    marker = tmp_path / "PWNED"

    class Evil:
        def __reduce__(self):
            import os
            return (os.system, (f"touch {marker}",))

    torch.save({"a": Evil()}, tmp_path / "evil.pt")
    make(tmp_path)
    r = run("apply", tmp_path / "spec.map", tmp_path / "evil.pt", "-o", tmp_path / "o.safetensors")
    assert r.exit_code == 2 and "refusing to unpickle" in r.output
    assert not marker.exists()


def test_check_with_and_without_checkpoint_and_target(tmp_path):
    ckpt = make(tmp_path)
    assert run("check", tmp_path / "spec.map").exit_code == 0
    assert run("check", tmp_path / "spec.map", ckpt).exit_code == 0
    out = tmp_path / "t.safetensors"
    run("apply", tmp_path / "spec.map", ckpt, "-o", out)
    r = run("check", tmp_path / "spec.map", ckpt, "--target", out)
    assert r.exit_code == 0 and "matches the target" in r.output
    wrong = tmp_path / "wrong.safetensors"
    sink = open_sink(wrong, "safetensors", {"head.weight": TensorInfo((4, 3), "float32"),
                                            "layers.0.norm.running_var": TensorInfo((3,), "float32"),
                                            "layers.0.norm.weight": TensorInfo((3,), "float32")})
    for k, i in {"head.weight": (4, 3), "layers.0.norm.running_var": (3,), "layers.0.norm.weight": (3,)}.items():
        sink.write(k, np.zeros(i, np.float32))
    sink.commit()
    r = run("check", tmp_path / "spec.map", ckpt, "--target", wrong)
    assert r.exit_code == 1
    # issue 11.4: an unexpected output is paired with the missing key it most likely should be
    assert ("not in the target: layers.0.norm.bias (3,), most likely missing from the output: "
            "layers.0.norm.running_var (same shape): the rule at line 7 writes 'bias' where the target has "
            "'running_var'") in r.output
    assert "shape mismatch: head.weight produced (4, 3, 1, 1), target (4, 3) (rule at line 8)" in r.output
    assert "fix: correct the rules named above; leave them out: --fit drop --drop 'head.*' (or --fit shape)" in r.output


def test_explain_json_is_the_plan(tmp_path):
    ckpt = make(tmp_path)
    r = run("explain", tmp_path / "spec.map", ckpt, "--format", "json")
    assert r.exit_code == 0
    plan = json.loads(r.output)
    head = next(s for s in plan["steps"] if s["output"] == "head.weight")
    assert head["inputs"] == ["fc.weight"] and head["shape"] == [4, 3, 1, 1] and head["dtype"] == "float32"
    assert [a["name"] for a in head["actions"]] == ["view", "cast"]
    assert plan["dropped"] == [{"key": "m.num_batches_tracked", "rule": "spec.map:9:1"}]
    md = run("explain", tmp_path / "spec.map", ckpt, "--format", "markdown", "--per-tensor").output
    assert "| fc.weight | head.weight | 8 | view(4, 3, 1, 1) cast(float32) |" in md
    assert "head.weight" in run("explain", tmp_path / "spec.map", ckpt).output


def test_fmt_check_and_rewrite(tmp_path):
    spec = tmp_path / "s.map"
    spec.write_text("mapspec 1\n\n\n# t\ntable bn { gamma = weight   beta = bias }\n"
                    "a.{ i : int }.x->b.{ i + 1 }.x   then view( +( 1,1 ) )  # trailing\n")
    assert run("fmt", "--check", spec).exit_code == 1
    assert run("fmt", spec).exit_code == 0
    assert spec.read_text() == ("mapspec 1\n\n# t\ntable bn {\n  gamma = weight\n  beta  = bias\n}\n"
                                "a.{i:int}.x -> b.{i+1}.x then view(+(1, 1))  # trailing\n")
    assert run("fmt", "--check", spec).exit_code == 0
