"""Writing and reviewing specs from the command line (issue 11): listing keys, rules that
match nothing, reviewable plans, spec diffs, and the smaller observations of 11.6."""

import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

import mapspec
from mapspec import TensorInfo, compile_spec, parse_spec
from mapspec.tools import present as render
from mapspec.cli import app
from mapspec.formats import formats, open_sink, open_source

from conftest import write_safetensors as write

runner = CliRunner()


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture
def many(tmp_path):
    """300 keys: more than any listing used to show."""
    return write(tmp_path / "many.safetensors",
                 {f"blocks.{i}.{p}": np.zeros((i % 7 + 1, 2), np.float32) for i in range(150) for p in ("w", "b")})


# ------------------------------------------------------------------ 11.2 inspect --keys, the tree

def test_inspect_keys_lists_every_key_one_per_line(many):
    r = run("inspect", many, "--keys")
    assert r.exit_code == 0
    lines = r.output.splitlines()
    assert len(lines) == 300 and len(set(lines)) == 300
    assert "blocks.0.w\t(1, 2)\tfloat32" in lines and "blocks.149.b\t(3, 2)\tfloat32" in lines
    listed = json.loads(run("inspect", many, "--keys", "--format", "json").output)
    assert len(listed) == 300 and {"name": "blocks.1.b", "shape": [2, 2], "dtype": "float32"} in listed


def test_inspect_keys_of_a_training_checkpoint_say_which_part_they_are(tmp_path):
    torch = pytest.importorskip("torch")
    torch.save({"model": {"fc.weight": torch.ones(2, 2)}, "epoch": 3}, tmp_path / "train.pt")
    r = run("inspect", tmp_path / "train.pt", "--keys")
    assert r.exit_code == 0 and "fc.weight\t(2, 2)\tfloat32" in r.output
    assert "note: the keys under 'model', which apply converts (--select '' lists the whole file)" in r.output
    assert "model.fc.weight\t(2, 2)\tfloat32" in run("inspect", tmp_path / "train.pt", "--keys", "--select", "").output


def test_the_tree_shows_what_it_hides_and_cuts_no_line(tmp_path):
    torch = pytest.importorskip("torch")
    long = "x" * 400
    torch.save({"model": {"fc.weight": torch.ones(2, 2)}, "train_args": {f"arg{i}": i for i in range(113)},
                "note": long}, tmp_path / "train.pt")
    r = run("inspect", tmp_path / "train.pt")
    assert r.exit_code == 0
    assert f"note: '{long}'" in r.output
    assert "arg39: 39" in r.output and "... 73 more" in r.output
    assert "`mapspec inspect --keys` lists every tensor" in r.output


def test_the_tree_of_flat_files_keeps_mxnet_prefixes_and_counts_hidden_groups(tmp_path):
    from mapspec.tools.inspect import inspect_checkpoint

    keys = {f"arg:net_conv{i}_weight": np.zeros(1, np.float32) for i in range(3)}
    keys.update({f"aux:net_bn{i}_moving_mean": np.zeros(1, np.float32) for i in range(2)})
    path = tmp_path / "m.params"
    sink = open_sink(path, "mxnet", {k: TensorInfo((1,), "float32") for k in keys})
    for k, a in keys.items():
        sink.write(k, a)
    sink.commit()
    entries = inspect_checkpoint(path)["content"]["entries"]
    assert {k: v["count"] for k, v in entries.items()} == {"arg:net": 3, "aux:net": 2}
    groups = write(tmp_path / "g.safetensors", {f"g{i}.w": np.zeros(1, np.float32) for i in range(230)})
    r = run("inspect", groups)
    assert "└── ... 30 more" in r.output


# ------------------------------------------------------------------ 11.3 rules that match nothing

def test_a_rule_matching_nothing_is_a_warning_with_its_location_or_an_error_when_strict(tmp_path, many):
    spec = tmp_path / "s.map"
    spec.write_text("mapspec 1\nblocks.{i:int}.{p:w|b} -> b{i}.{p}\nhead.weight -> fc.weight\n")
    r = run("check", spec, many)
    assert r.exit_code == 0
    assert (f"{spec}:3:1: warning: this rule matches no key of this checkpoint (head.weight -> fc.weight): if it "
            "should, correct its pattern (`mapspec inspect --keys` lists the keys), else remove it") in r.output
    assert "1 rule matching nothing" in r.output
    r = run("apply", spec, many, "-o", tmp_path / "o.safetensors")
    assert r.exit_code == 0 and f"{spec}:3:1: warning: this rule matches no key" in r.output
    for cmd in (["check", spec, many], ["apply", spec, many, "-o", tmp_path / "p.safetensors"]):
        r = run(*cmd, "--strict-rules")
        assert r.exit_code == 1
        assert r.output.startswith(f"{spec}:3:1: error: this rule matches no key of the checkpoint (300 keys;")
    assert not (tmp_path / "p.safetensors").exists()


def test_the_plan_json_lists_rules_that_match_nothing(tmp_path, many):
    spec = tmp_path / "s.map"
    spec.write_text("mapspec 1\nblocks.{i:int}.{p:w|b} -> b{i}.{p}\nhead.weight -> fc.weight then view(n, -1)\n"
                    "param n = 2\ndrop head.*\n")
    r = run("explain", spec, many, "--format", "json")
    assert r.exit_code == 0, r.output
    listed = [{"rule": "s.map:3:1", "text": "head.weight -> fc.weight then view(n, -1)"},
              {"rule": "s.map:5:1", "text": "drop head.*"}]
    assert json.loads(r.stdout)["unused_rules"] == listed
    assert mapspec.plan_for(spec, many).to_json()["unused_rules"] == listed
    spec.write_text("mapspec 1\nblocks.{i:int}.{p:w|b} -> b{i}.{p}\n")
    assert "unused_rules" not in json.loads(run("explain", spec, many, "--format", "json").stdout)


def test_a_rule_a_copy_stands_in_for_is_not_unused_and_a_copy_that_yields_says_so(tmp_path):
    """Tied embeddings: `lm_head.weight -> output.weight` matches nothing in a tied model
    because `copy ... if absent` writes output.weight instead; in an untied one the copy yields."""
    spec = tmp_path / "s.map"
    spec.write_text("mapspec 1\nemb.weight -> tok.weight\nlm_head.weight -> output.weight\n"
                    "copy emb.weight -> output.weight if absent\n")
    tied = write(tmp_path / "tied.safetensors", {"emb.weight": np.ones((4, 2), np.float32)})
    r = run("check", spec, tied, "--strict-rules")
    assert r.exit_code == 0 and "warning" not in r.output, r.output
    rows = [line for line in run("explain", spec, tied, "--format", "markdown").stdout.splitlines()
            if line.startswith("| s.map")]
    assert rows[1] == "| s.map:3 | `lm_head.weight -> output.weight` | 0 | absent here; the copy at line 4 writes its target |   |"
    assert rows[2] == "| s.map:4 | `copy emb.weight -> output.weight if absent` | 1 | `emb.weight -> output.weight` |   |"
    untied = write(tmp_path / "untied.safetensors", {"emb.weight": np.ones((4, 2), np.float32),
                                                     "lm_head.weight": np.ones((4, 2), np.float32)})
    rows = [line for line in run("explain", spec, untied, "--format", "markdown").stdout.splitlines()
            if line.startswith("| s.map")]
    assert rows[1] == "| s.map:3 | `lm_head.weight -> output.weight` | 1 | `lm_head.weight -> output.weight` |   |"
    assert rows[2] == ("| s.map:4 | `copy emb.weight -> output.weight if absent` | 0 | yields: other rules write "
                       "every target it names |   |")
    spec.write_text("mapspec 1\nemb.weight -> tok.weight\nlm_head.weight -> output.weight\n")
    assert "s.map:3:1: warning: this rule matches no key" in run("check", spec, tied).output


# ------------------------------------------------------------------ 11.5 explain, diff

def test_explain_by_rule_is_one_row_per_rule(tmp_path, many):
    spec = tmp_path / "s.map"
    spec.write_text("mapspec 1\nblocks.{i:int}.w -> b{i}.weight then view(+(1, 1))\nblocks.{i:int}.b -> b{i}.bias\n"
                    "drop head.*\n")
    r = run("explain", spec, many, "--format", "markdown")
    assert r.exit_code == 0
    rows = [line for line in r.output.splitlines() if line.startswith("| s.map")]
    assert rows == [
        "| s.map:2 | `blocks.{i:int}.w -> b{i}.weight then view(+(1, 1))` | 150 | `blocks.0.w -> b0.weight` "
        "| (1, 2) -> (1, 2, 1, 1); by view(1, 2, 1, 1); and 6 other changes |",
        "| s.map:3 | `blocks.{i:int}.b -> b{i}.bias` | 150 | `blocks.0.b -> b0.bias` |   |",
        "| s.map:4 | `drop head.*` | 0 | matches nothing |   |",
    ]
    detail = run("explain", spec, many, "--per-tensor").stdout
    assert len(detail.splitlines()) == 3 + 300 + 1  # + the expected peak memory line


def test_explain_folds_dropped_keys_per_rule(tmp_path, many):
    spec = tmp_path / "s.map"
    spec.write_text("mapspec 1\nblocks.{i:int}.w -> b{i}.weight\ndrop blocks.*.b\n")
    r = run("explain", spec, many, "--per-tensor", "--format", "markdown")
    assert "- s.map:3: 150 keys like blocks.*.b (e.g. blocks.0.b)" in r.output


def test_a_hundred_thousand_rows_render_as_plain_text(tmp_path):
    """The rich Table took 30 s here; plain formatting is linear (no timing asserted)."""
    spec = tmp_path / "big.map"
    spec.write_text("mapspec 1\nl{i:int}.{p:w|b} -> m{i}.{p}\n")
    keys = {f"l{i}.{p}": TensorInfo((4,), "float32") for i in range(50_000) for p in ("w", "b")}
    plan = compile_spec(parse_spec(spec), keys)
    table = render.explain(plan, parse_spec(spec), "table", per_tensor=True)
    assert table.count("\n") == 100_003 and re.search(r"\nl49999\.b +m49999\.b +2 +- +\(4,\) -> \(4,\)", table)
    md = render.explain(plan, parse_spec(spec), "markdown", per_tensor=True)
    assert md.count("\n| l") == 100_000
    assert "100000" in render.explain(plan, parse_spec(spec), "table")


def test_diff_shows_which_outputs_change(tmp_path, many):
    old = tmp_path / "old.map"
    new = tmp_path / "new.map"
    old.write_text("mapspec 1\nblocks.{i:int}.w -> b{i}.weight\nblocks.{i:int}.b -> b{i}.bias\n")
    new.write_text("mapspec 1\nblocks.{i:int}.w -> b{i}.kernel then view(+(1))\nblocks.{i:int}.b -> b{i}.bias\n"
                   )
    r = run("diff", old, new, many)
    assert r.exit_code == 0, r.output
    assert r.output.splitlines() == [
        "old.map -> new.map: 150 output changes (150 outputs unchanged)",
        "  renamed 150 outputs like b*.weight -> b*.kernel (e.g. renamed b0.weight -> b0.kernel "
        "(from blocks.0.w; now from blocks.0.w, (1, 2, 1) float32, view))",
    ]
    assert run("diff", old, new, many, "--exit-code").exit_code == 1
    assert run("diff", old, old, many, "--exit-code").exit_code == 0
    changes = json.loads(run("diff", old, new, many, "--format", "json").output)["changes"]
    assert changes[0] == {"kind": "renamed", "old": "b0.weight", "new": "b0.kernel",
                          "detail": "from blocks.0.w; now from blocks.0.w, (1, 2, 1) float32, view"}
    new.write_text("mapspec 1\nblocks.{i:int}.w -> b{i}.weight then cast(float16)\ndrop blocks.*.b\n")
    lines = run("diff", old, new, many).output.splitlines()
    assert lines[1].startswith("  changed 150 outputs like b*.weight (e.g. changed b0.weight: dtype float32 -> float16;")
    assert lines[2].startswith("  removed 150 outputs like b*.bias (e.g. removed b0.bias (was from blocks.0.b")


def test_diff_reports_rule_and_parameter_changes_that_change_no_output(tmp_path, many):
    """Never "0 output changes" about a spec that changed: rules added or removed that match
    nothing, rules rewritten with the same outputs, parameter values; output changes first."""
    old, new = tmp_path / "old.map", tmp_path / "new.map"
    old.write_text("mapspec 1\nparam n = 2\nblocks.{i:int}.w -> b{i}.weight then view(n, -1)\n"
                   "blocks.{i:int}.b -> b{i}.bias\nhead.weight -> fc.weight\n")
    new.write_text("mapspec 1\nparam n = 2\nparam width = 8\nblocks.{i:int}.w -> b{i}.weight then view(n, -1)\n"
                   "blocks.{j:int}.{p:b} -> b{j}.bias\ndrop head.*\n")
    r = run("diff", old, new, many, "-p", "n=1")
    assert r.exit_code == 0, r.output
    assert r.output.splitlines() == [
        "old.map -> new.map: 0 output changes (300 outputs unchanged); 3 rule changes no output shows; "
        "1 parameter changed",
        "  rule rewritten old.map:4 -> new.map:5 (the same 150 outputs): blocks.{i:int}.b -> b{i}.bias => "
        "blocks.{j:int}.{p:b} -> b{j}.bias",
        "  rule removed old.map:5 (matched nothing): head.weight -> fc.weight",
        "  rule added new.map:6 (matches nothing): drop head.*",
        "  parameter added width = 8 (default)",
    ]
    assert run("diff", old, new, many, "-p", "n=1", "--exit-code").exit_code == 0  # no output changed
    data = json.loads(run("diff", old, new, many, "-p", "n=1", "--format", "json").stdout)
    assert data["changes"] == [] and [c["kind"] for c in data["rules"]] == ["rule rewritten", "rule removed", "rule added"]
    assert data["params"] == [{"kind": "parameter added", "old": None, "new": "width", "detail": "width = 8 (default)"}]

    # a rule split in two with the same outputs; a default changed that changes shapes too
    new.write_text("mapspec 1\nparam n = 1\nblocks.{i:int}.w -> b{i}.weight then view(n, -1)\n"
                   "blocks.{i:int}.b -> b{i}.bias\nhead.weight -> fc.weight\n")
    lines = run("diff", old, new, many).output.splitlines()
    assert lines[0] == ("old.map -> new.map: 150 output changes (150 outputs unchanged); 1 parameter changed")
    assert lines[1].startswith("  changed 150 outputs like b*.weight (e.g. changed b0.weight: shape (2, 1) -> (1, 2);")
    assert lines[2:] == ["  parameter n: 2 (default) -> 1 (default)"]
    new.write_text("mapspec 1\nparam n = 2\nblocks.{i:int}.w -> b{i}.weight then view(n, -1)\n"
                   "blocks.{i:int}.b -> b{i}.bias\nhead.weight -> fc.weight\n")
    old.write_text("mapspec 1\nparam n = 2\nblocks.{i:int}.{p:w} -> b{i}.weight then view(n, -1)\n"
                   "blocks.{i:int}.b -> b{i}.bias\nhead.weight -> fc.weight\n")
    assert run("diff", old, new, many).output.splitlines()[1:] == [
        "  rule rewritten old.map:3 -> new.map:3 (the same 150 outputs): blocks.{i:int}.{p:w} -> b{i}.weight then "
        "view(n, -1) => blocks.{i:int}.w -> b{i}.weight then view(n, -1)"]
    old.write_text("mapspec 1\nparam n = 2\nblocks.{i:int}.{p:w|b} -> b{i}.{p}\n")
    new.write_text("mapspec 1\nparam n = 2\nblocks.{i:int}.w -> b{i}.w\nblocks.{i:int}.b -> b{i}.b\n")
    assert run("diff", old, new, many).output.splitlines()[1:] == [
        "  rule removed old.map:3 (300 outputs, which other rules now produce the same): blocks.{i:int}.{p:w|b} -> b{i}.{p}",
        "  rule added new.map:3 (150 outputs, as other rules produced them before): blocks.{i:int}.w -> b{i}.w",
        "  rule added new.map:4 (150 outputs, as other rules produced them before): blocks.{i:int}.b -> b{i}.b"]


def test_diff_takes_parameters_each_spec_declares(tmp_path, many):
    old, new = tmp_path / "old.map", tmp_path / "new.map"
    old.write_text("mapspec 1\nparam rows from \"rows\"\nblocks.{i:int}.{p:w|b} -> b{i}.{p} then view(rows, -1)\n")
    new.write_text("mapspec 1\nparam cols from \"cols\"\nblocks.{i:int}.{p:w|b} -> b{i}.{p} then view(cols, -1)\n")
    config = tmp_path / "config.json"
    config.write_text('{"rows": 1, "cols": 1}')
    r = run("diff", old, new, many, "--config", config)
    assert r.exit_code == 0, r.output
    assert r.output.splitlines()[0] == ("old.map -> new.map: 0 output changes (300 outputs unchanged); "
                                        "1 rule change no output shows; 2 parameters changed")
    assert "  parameter removed rows (was 1, config rows)" in r.output
    assert run("diff", old, new, many, "-p", "rows=1", "-p", "cols=1").exit_code == 0
    r = run("diff", old, new, many, "-p", "rows=1", "-p", "colz=1")  # a name neither declares: NEW says so
    assert r.exit_code == 2 and r.output.startswith("error: -p colz: the spec has no parameter 'colz'; did you mean cols?")


# ------------------------------------------------------------------ 11.6 the smaller observations

def test_a_checkpoint_prefix_without_epoch_suggests_it(tmp_path, many):
    (tmp_path / "r50-0000.params").write_bytes(b"")
    spec = tmp_path / "s.map"
    spec.write_text("mapspec 1\nkeep **\n")
    r = run("check", spec, tmp_path / "r50")
    assert r.exit_code == 2
    assert r.output.strip() == (f"error: checkpoint {tmp_path / 'r50'}: no such file or folder; r50-0000.params exists: "
                                "it is an MXNet checkpoint prefix, add --epoch 0")


def _help_text(*cmd) -> str:
    return " ".join(run(*cmd, "--help").output.split())


def test_to_help_lists_every_format():
    text = _help_text("apply").split("--to <str>")[1].split("--select")[0]
    for fmt in (f.name for f in formats()):
        assert re.search(rf"\b{fmt}\b", text), fmt


COMMANDS = typer.main.get_command(app).commands  # every command, so a new one is swept too


def test_the_sweep_covers_every_command():
    assert set(COMMANDS) >= {"apply", "check", "explain", "diff", "inspect", "fmt", "draft", "invert", "verify"}


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_command_option_and_argument_has_help(name):
    command = COMMANDS[name]
    assert (command.help or "").strip(), f"{name} has no help"
    for param in command.params:
        assert (getattr(param, "help", None) or "").strip(), f"{name}: {param.name} has no help"


def _one_error_line(r, what: str) -> None:
    assert r.exit_code == 2, r.output
    assert len(r.output.strip().splitlines()) == 1 and r.output.startswith("error: ") and what in r.output, r.output
    assert "╭" not in r.output and "Traceback" not in r.output


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_an_unknown_option_or_a_missing_argument_is_one_error_line(name):
    _one_error_line(run(name, "--no-such-option"), "No such option: --no-such-option")
    _one_error_line(run(name), "Missing argument")


def test_usage_errors_are_one_error_line(tmp_path, many):
    spec = tmp_path / "s.map"
    spec.write_text("mapspec 1\nkeep **\n")
    for args, what in ((["apply", "a.map", "--fitt", "x"], "No such option: --fitt"),
                       (["apply", "a.map", "c.pt", "-o", "x.pt", "--fit", "loose"], "Invalid value for '--fit'"),
                       (["apply", spec, many], "Missing option '-o' / '--output'"),
                       (["explain", spec, many, "--format"], "Option '--format' requires an argument"),
                       (["diff", spec, spec], "Missing argument 'CHECKPOINT'"),
                       (["check", spec, many, "-p", "n"], "-p n: expected NAME=VALUE"),
                       # values that used to be taken and then ignored, or turned into a file name
                       (["check", spec, many, "--epoch", "-1"], "Invalid value for '--epoch'"),
                       (["inspect", many, "--epoch", "-2"], "Invalid value for '--epoch'"),
                       (["verify", spec, many, "--worst", "-1"], "Invalid value for '--worst'"),
                       (["verify", spec, many, "--against", many, "--atol", "-1"], "Invalid value for '--atol'"),
                       (["check", spec, many, "--fit", "drop"], "--fit drop says how the output meets --target"),
                       (["explain", spec, many, "--drop", "fc.*"], "--drop says how the output meets --target"),
                       (["apply", spec, many, "-o", tmp_path / "o.safetensors", "--fit", "shape"], "--target too"),
                       (["check", spec, spec, "--target", many], "--target needs a CHECKPOINT"),
                       (["apply", spec, many, "-o", tmp_path / "o.safetensors", "--lossy"], "--lossy goes with --reverse")):
        _one_error_line(run(*args), what)
    assert not (tmp_path / "o.safetensors").exists()


def test_summary_counts_source_tensors_and_reports_the_file_size(tmp_path):
    src = write(tmp_path / "in.safetensors", {"qk.weight": np.ones((4, 2), np.float32), "n": np.ones(3, np.float16)})
    spec = tmp_path / "s.map"
    spec.write_text("mapspec 1\nqk.weight -> {part:q|k}.weight then chunk(2, dim=0)\nn -> n then cast(float32)\n")
    out = tmp_path / "out.safetensors"
    r = run("apply", spec, src, "-o", out)
    assert r.exit_code == 0, r.output
    size = render.size(os.path.getsize(out))
    assert f"Transferred 2/2 tensors into 3 outputs (0 dropped) -> {out} [safetensors, {size}]" in r.output


def test_missing_output_folders_are_created_and_removed_again_on_failure(tmp_path, many, monkeypatch):
    spec = tmp_path / "s.map"
    spec.write_text("mapspec 1\nkeep **\n")
    out = tmp_path / "new" / "deeper" / "o.safetensors"
    assert run("apply", spec, many, "-o", out).exit_code == 0 and out.exists()
    from mapspec.run import executor

    def broken(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(executor, "execute", broken)
    with pytest.raises(OSError):
        mapspec.apply(spec, many, tmp_path / "other" / "deep" / "o.safetensors")
    assert not (tmp_path / "other").exists()


def test_progress_counts_bytes(tmp_path, many):
    spec = tmp_path / "s.map"
    spec.write_text("mapspec 1\nkeep **\n")
    heard = []
    mapspec.apply(spec, many, tmp_path / "o.npz", progress=lambda done, total: heard.append((done, total)))
    total = sum(i.nbytes for i in open_source(many).infos().values())
    assert heard[-1] == (total, total) and len(heard) == 300
    assert all(a[0] < b[0] for a, b in zip(heard, heard[1:]))


# ------------------------------------------------------------------ pre-commit

def test_pre_commit_hooks_run_the_commands_they_name(tmp_path):
    """.pre-commit-hooks.yaml: pre-commit calls `ENTRY FILE...` with the staged .map files."""
    yaml = pytest.importorskip("yaml")
    hooks = {h["id"]: h for h in yaml.safe_load((Path(__file__).parent.parent / ".pre-commit-hooks.yaml").read_text())}
    assert set(hooks) == {"mapspec-fmt", "mapspec-check"}
    assert all(h["files"] == r"\.map$" and h["language"] == "python" for h in hooks.values())
    good = tmp_path / "good.map"
    good.write_text("mapspec 1\nkeep **\n")
    other = tmp_path / "other.map"
    other.write_text("mapspec 1\ntable t {\n  a = b\n}\n")
    for hook in hooks.values():
        args = hook["entry"].split()[1:]
        r = run(*args, good, other)
        assert r.exit_code == 0, (hook["id"], r.output)
    other.write_text("mapspec 1\nkeep   **\n")
    assert run(*hooks["mapspec-fmt"]["entry"].split()[1:], good, other).exit_code == 1
    other.write_text("mapspec 1\na.{i} -> b.{j}\n")
    r = run(*hooks["mapspec-check"]["entry"].split()[1:], good, other)
    assert r.exit_code == 2 and "capture {j} is not bound" in r.output
