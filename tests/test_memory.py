"""Memory bounded by the work, not the file: the plan states its peak before running, and a
conversion's peak RSS stays under the largest step + 150 MiB whatever the file size."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from mapspec import TensorInfo, compile_spec, parse_spec
from mapspec.cli import app
from mapspec.formats import open_sink

REPO = Path(__file__).resolve().parent.parent
MiB = 1 << 20


def test_the_plan_knows_its_largest_step(tmp_path):
    spec = tmp_path / "s.map"
    spec.write_text("mapspec 1\nbig -> big\nsmall -> small then cast(float16)\n")
    infos = {"big": TensorInfo((1000,), "float32"), "small": TensorInfo((300,), "float32")}
    n, step = compile_spec(parse_spec(spec), infos).peak_step()
    assert (n, step.output) == (4000, "big")  # 1200 read + 2 x 600 written < 4000
    spec.write_text("mapspec 1\nbig -> big then cast(float64)\nsmall -> small\n")
    n, step = compile_spec(parse_spec(spec), infos).peak_step()
    assert (n, step.output) == (4000 + 2 * 8000, "big")


def test_check_and_explain_state_the_expected_peak(tmp_path):
    sink = open_sink(tmp_path / "in.safetensors", "safetensors", {"w": TensorInfo((256, 1024), "float32")})
    sink.write("w", np.zeros((256, 1024), np.float32))
    sink.commit()
    (tmp_path / "s.map").write_text("mapspec 1\nw -> v then transpose()\n")
    args = [str(tmp_path / "s.map"), str(tmp_path / "in.safetensors")]
    r = CliRunner().invoke(app, ["check", *args])
    assert r.exit_code == 0 and "expected peak memory: 3.0 MiB of tensors (largest step: v)" in r.output
    r = CliRunner().invoke(app, ["explain", *args, "--format", "json"])
    assert json.loads(r.output)["summary"]["expected_peak_bytes"] == 3 * MiB


def _peak_above_idle(spec: Path, src: Path, out: Path) -> int:
    """Peak RSS of `mapspec apply spec src -o out` in a process of its own, less the RSS of a
    process that only imported the command."""
    code = ("import resource, sys\nfrom mapspec.cli import app\n"
            f"sys.argv = ['mapspec', 'apply', {str(spec)!r}, {str(src)!r}, '-o', {str(out)!r}]\n"
            "try:\n    app()\nexcept SystemExit:\n    pass\n"
            "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\n")
    base = "import resource, mapspec.cli\nprint(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\n"
    env = {"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"}
    idle, peak = (int(subprocess.run([sys.executable, "-c", c], capture_output=True, text=True, env=env,
                                     check=True).stdout.split()[-1]) * 1024 for c in (base, code))
    return peak - idle


def test_a_step_run_in_row_slices_holds_the_slices_the_plan_states(tmp_path):
    """A 128 MiB float32 tensor cast to float16 would hold 256 MiB whole (input, result, one
    intermediate); into safetensors from a local file it runs in row slices, and check says
    so with both figures: what the slices hold, and the whole step for an output that cannot
    take rows. The run stays under the sliced figure."""
    infos = {"w": TensorInfo((8192, 4096), "float32")}
    sink = open_sink(tmp_path / "in.safetensors", "safetensors", infos)
    sink.write("w", np.ones((8192, 4096), np.float32))
    sink.commit()
    (tmp_path / "s.map").write_text("mapspec 1\nw -> v then cast(float16)\n")
    plan = compile_spec(parse_spec(tmp_path / "s.map"), infos)
    from mapspec.run import rows
    whole, sliced = plan.peak_step()[0], plan.peak_step(rows.held)[0]
    assert whole == 128 * MiB + 2 * 64 * MiB
    assert 32 * MiB <= sliced <= 80 * MiB
    r = CliRunner().invoke(app, ["check", str(tmp_path / "s.map"), str(tmp_path / "in.safetensors")])
    assert r.exit_code == 0
    assert (f"expected peak memory: {sliced / MiB:.1f} MiB of tensors (largest step: v, in row slices) + the "
            "interpreter; 256.0 MiB (largest step: v) where steps run whole (output other than safetensors or "
            "gguf, or a remote source)") in r.output
    r = CliRunner().invoke(app, ["explain", str(tmp_path / "s.map"), str(tmp_path / "in.safetensors"),
                                 "--format", "json"])
    summary = json.loads(r.output)["summary"]
    assert (summary["expected_peak_bytes"], summary["expected_peak_bytes_in_slices"]) == (whole, sliced)
    held = _peak_above_idle(tmp_path / "s.map", tmp_path / "in.safetensors", tmp_path / "out.safetensors")
    assert held < sliced + 48 * MiB, f"held {held / MiB:.0f} MiB, stated {sliced / MiB:.0f} MiB"


@pytest.mark.parametrize("suffix", ["pt", "safetensors", "params"])
def test_peak_rss_is_bounded_by_the_largest_step_not_the_file(tmp_path, suffix):
    """A 256 MiB checkpoint of 16 MiB tensors, cast on the way: a whole-file reader would hold
    it all; mapspec releases each tensor's pages after its step, and holds at most the
    plan's stated peak (one step, plus the next step's inputs being read meanwhile)."""
    fmt = {"pt": "torch", "safetensors": "safetensors", "params": "mxnet"}[suffix]
    infos = {f"t{i}": TensorInfo((4 * MiB,), "float32") for i in range(16)}
    sink = open_sink(tmp_path / f"in.{suffix}", fmt, infos)
    for i, k in enumerate(infos):
        sink.write(k, np.full(4 * MiB, i, np.float32))
    sink.commit()
    (tmp_path / "s.map").write_text("mapspec 1\nt{i:int} -> u{i} then cast(float16)\n")
    held = _peak_above_idle(tmp_path / "s.map", tmp_path / f"in.{suffix}", tmp_path / "out.safetensors")
    assert (tmp_path / "out.safetensors").stat().st_size > 128 * MiB
    step, _ = compile_spec(parse_spec(tmp_path / "s.map"), infos).peak_step()
    assert step == 16 * MiB + 2 * 8 * MiB + 16 * MiB  # + the next step's input, read meanwhile
    assert held < step + 64 * MiB, f"held {held / MiB:.0f} MiB above the idle process"
