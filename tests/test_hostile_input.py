"""The four hostile-input classes that used to end in an internal error or lose the error's
location, each refused the same way wherever it can occur: one printable `error:` line
(spec errors: `file:line:col: error:`, the line and a caret), exit 2, nothing written.

1. Paths that cannot be resolved, in every place mapspec takes a path.
2. Numbers past Python's integer-string limit (4300 digits) in keys, specs and options.
3. Specs that are huge or nested deep: they work, or the error has a location.
4. Errors quoting a file: every quoted fragment short and printable (a property over
   errors from mutated files).
The fuzz harness has a generator for each (tests/fuzz/hostile.py; the fourth is a rule it
applies to every case)."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from mapspec.cli import app
from mapspec.errors import MAX_LINE, CheckpointError, MapspecError
from mapspec.formats import open_source

from conftest import write_safetensors

REPO = Path(__file__).resolve().parent.parent
runner = CliRunner()
IDENTITY = "mapspec 1\n{k:**} -> {k}\n"


def one_clean_error(stderr: str) -> str:
    """The error, asserted to be one printable line of bounded length (or a spec error's
    three lines: location, the spec line, the caret)."""
    lines = stderr.rstrip("\n").split("\n")
    assert lines and (len(lines) == 1 and lines[0].startswith("error: ") or
                      len(lines) == 3 and ": error: " in lines[0] and lines[1].startswith("    ")), stderr
    assert all(len(x) <= MAX_LINE + 40 for x in lines), stderr
    assert all(c.isprintable() or c == "\t" for x in lines for c in x), repr(stderr)
    assert "Traceback" not in stderr and "internal error" not in stderr, stderr
    return lines[0]


@pytest.fixture
def folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MAPSPEC_DEBUG", raising=False)
    write_safetensors(tmp_path / "m.safetensors", {"layers.0.w": np.ones((2, 2), np.float32)})
    (tmp_path / "identity.map").write_text(IDENTITY)
    (tmp_path / "p.map").write_text('mapspec 1\nparam n from "n" = 1\n{k:**} -> {k}\n')
    (tmp_path / "out").mkdir()
    return tmp_path


# ------------------------------------------------------------------ 1. paths

def bad_path(folder: Path, badness: str, reading: bool) -> str:
    if badness == "loop":
        os.symlink("loop_b", folder / "loop_a")
        os.symlink("loop_a", folder / "loop_b")
        return "loop_a"
    if badness == "nul":
        return "a\0b.safetensors"
    if badness == "long_name":
        return "n" * 300 + ".safetensors"
    if badness == "folder":
        (folder / "a_folder.safetensors").mkdir()
        return "a_folder.safetensors"
    if badness == "missing_parent":
        return "no/such/folder/x.safetensors"
    if badness == "file_as_folder":
        (folder / "plain").write_text("a file")
        return "plain/x.safetensors"
    assert badness == "no_permission"
    locked = folder / "locked"
    locked.mkdir()
    if reading:
        (locked / "x.safetensors").write_bytes(b"unreadable")
        (locked / "x.safetensors").chmod(0)
    else:
        locked.chmod(0o555)
    return "locked/x.safetensors"


# Each place mapspec takes a path: the command, with BAD where the path goes.
ROLES = {
    "source": ["apply", "identity.map", "BAD", "-o", "out/o.safetensors"],
    "output": ["apply", "identity.map", "m.safetensors", "-o", "BAD"],
    "target": ["apply", "identity.map", "m.safetensors", "-o", "out/o.safetensors", "--target", "BAD"],
    "config": ["apply", "p.map", "m.safetensors", "-o", "out/o.safetensors", "--config", "BAD"],
    "spec": ["apply", "BAD", "m.safetensors", "-o", "out/o.safetensors"],
    "include": ["check", "inc.map"],
    "shard": ["apply", "identity.map", "model.safetensors.index.json", "-o", "out/o.safetensors"],
    "against": ["verify", "identity.map", "m.safetensors", "--against", "BAD"],
    "draft source": ["draft", "BAD", "m.safetensors"],
    "draft target": ["draft", "m.safetensors", "BAD"],
    "draft -o": ["draft", "m.safetensors", "m.safetensors", "-o", "BAD"],
    "invert -o": ["invert", "identity.map", "-o", "BAD"],
    "fmt": ["fmt", "BAD"],
}
WRITING = {"output", "draft -o", "invert -o"}
SAYS = {  # what the error says, in mapspec's words or (for typer's own checks of a path option) click's
    "loop": ("symbolic link loop",),
    "nul": ("NUL byte", "null byte", "not a file name beside the index"),
    "long_name": ("longer than the file system allows",),
    "folder": ("a folder", "a directory"),
    "missing_parent": ("does not exist", "no such file", "not a file name beside the index"),
    "file_as_folder": ("is a file, not a folder", "not a file name beside the index"),
    "no_permission": ("permission denied", "not readable", "not a file name beside the index"),
}


def _command(folder: Path, role: str, badness: str) -> list[str]:
    bad = bad_path(folder, badness, role not in WRITING)
    if role == "include":
        (folder / "inc.map").write_text(f"mapspec 1\ninclude {json.dumps(bad)}\n{{k:**}} -> {{k}}\n")
    if role == "shard":
        index = {"metadata": {}, "weight_map": {"layers.0.w": "m.safetensors", "layers.1.w": bad}}
        (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    return [bad if a == "BAD" else a for a in ROLES[role]]


def _nothing_written(folder: Path, before: set[str]) -> None:
    assert not list((folder / "out").iterdir())
    assert {p.name for p in folder.iterdir()} == before


@pytest.mark.parametrize("badness", [b for b in SAYS if b not in ("missing_parent", "no_permission")])
@pytest.mark.parametrize("role", ROLES)
def test_a_path_that_cannot_be_used_is_one_line_exit_2_nothing_written(folder, role, badness):
    argv = _command(folder, role, badness)
    before = {p.name for p in folder.iterdir()}
    result = runner.invoke(app, argv)
    assert result.exit_code == 2, result.output
    line = one_clean_error(result.stderr)
    assert any(s in line for s in SAYS[badness]), line
    _nothing_written(folder, before)


@pytest.mark.parametrize("role", ROLES)
def test_a_missing_folder_is_named(folder, role):
    """Except for apply's -o, whose missing folders are made (and removed again on failure)."""
    argv = _command(folder, role, "missing_parent")
    result = runner.invoke(app, argv)
    if role == "output":
        assert result.exit_code == 0, result.output
        assert (folder / "no/such/folder/x.safetensors").is_file()
        return
    assert result.exit_code == 2, result.output
    assert any(s in one_clean_error(result.stderr) for s in SAYS["missing_parent"])


def _unprivileged():
    from tests.fuzz.privilege import drop_file_override

    assert drop_file_override()


@pytest.mark.parametrize("role", sorted(ROLES))
def test_no_permission_is_refused_as_for_any_user_even_as_root(folder, role):
    """Root reads and writes anything (CAP_DAC_OVERRIDE), so as root this test runs mapspec
    without that capability (tests/fuzz/privilege.py): permissions then apply as for any user."""
    argv = _command(folder, role, "no_permission")
    before = {p.name for p in folder.iterdir()}
    env = dict(os.environ, PYTHONPATH=str(REPO))
    env.pop("MAPSPEC_DEBUG", None)
    done = subprocess.run([sys.executable, "-m", "mapspec.cli", *argv], cwd=folder, env=env, capture_output=True,
                          text=True, timeout=120, preexec_fn=_unprivileged)
    assert done.returncode == 2, done.stdout + done.stderr
    assert any(s in one_clean_error(done.stderr) for s in SAYS["no_permission"]), done.stderr
    _nothing_written(folder, before)


def test_the_library_checks_paths_too(folder):
    """open_source, the API's entry, is where the check lives: not only the CLI."""
    for path, says in (("loop_a", "symbolic link loop"), ("a\0b", "NUL byte"), ("x" * 300, "longer than")):
        if path == "loop_a":
            bad_path(folder, "loop", True)
        with pytest.raises(CheckpointError, match=says):
            open_source(path)


def test_an_output_name_too_long_for_its_temporary_name_is_refused_before_writing(folder):
    """The output is written as `.NAME.xxxxxxxx.part` first: a NAME that fits but whose
    temporary name does not is refused up front, not after the conversion."""
    name = "o" * (255 - len(".safetensors") - 5) + ".safetensors"  # 250 bytes fit; 250 + 15 do not
    result = runner.invoke(app, ["apply", "identity.map", "m.safetensors", "-o", f"out/{name}"])
    assert result.exit_code == 2
    assert "too long for the temporary name" in one_clean_error(result.stderr)
    assert not list((folder / "out").iterdir())


# ------------------------------------------------------------------ 2. numbers

BIG = "7" * 5000


def test_a_key_number_too_long_to_compute_with_names_the_key_and_the_rule(folder):
    write_safetensors(folder / "k.safetensors", {f"layers.{BIG}.w": np.ones(2, np.float32)})
    (folder / "s.map").write_text("mapspec 1\nlayers.{i:int}.w -> x.{i + 1}.w\n")
    result = runner.invoke(app, ["apply", "s.map", "k.safetensors", "-o", "out/o.safetensors"])
    assert result.exit_code == 1
    head = one_clean_error(result.stderr)
    assert head.startswith("s.map:2:23: error: key 'layers.777")
    assert "{i} captures a number of 5,000 digits" in head
    assert not list((folder / "out").iterdir())


def test_a_key_number_is_copied_as_text_when_no_arithmetic_needs_it(folder):
    write_safetensors(folder / "k.safetensors", {f"layers.{BIG}.w": np.ones(2, np.float32)})
    (folder / "s.map").write_text("mapspec 1\nlayers.{i:int}.w -> x.{i}.w\n")
    result = runner.invoke(app, ["apply", "s.map", "k.safetensors", "-o", "out/o.safetensors"])
    assert result.exit_code == 0, result.output
    assert list(open_source(folder / "out/o.safetensors").infos()) == [f"x.{BIG}.w"]


def test_draft_reads_a_long_digit_run_as_a_name(folder):
    write_safetensors(folder / "k.safetensors", {f"layers.{BIG}.w": np.ones(2, np.float32)})
    result = runner.invoke(app, ["draft", "k.safetensors", "k.safetensors"])
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize("where, argv, says", [
    ("spec", ["check", "s.map"], "s.map:2:28: error: integer 777777777777...(5,000 digits) is out of range"),
    ("config", ["check", "p.map", "--config", "c.json"], "the number 777777777777... has 5,000 digits"),
    ("-p", ["check", "p.map", "-p", f"n={BIG}"], "'n' is an integer parameter"),
    ("--max-shard-size", ["apply", "identity.map", "m.safetensors", "-o", "out/o", "--max-shard-size", BIG],
     "expected a size such as 5GB"),
    ("--epoch", ["apply", "identity.map", "m", "-o", "out/o.safetensors", "--epoch", "9" * 12],
     "an epoch is a number from 0 to 999,999,999"),
])
def test_a_number_of_thousands_of_digits_is_an_error_with_its_place(folder, where, argv, says):
    (folder / "s.map").write_text(f"mapspec 1\nlayers.{{i:int}}.w -> x.{{i + {BIG}}}.w\n")
    (folder / "c.json").write_text(f'{{"n": {BIG}}}')
    result = runner.invoke(app, argv)
    assert result.exit_code == 2, result.output
    assert says in one_clean_error(result.stderr)


# ------------------------------------------------------------------ 3. huge and deep specs

@pytest.mark.parametrize("target, says", [
    ("x.{i}.w then view(" + "(" * 5000 + "2" + ",)" * 5000 + ")", "s.map:2:140: error: an argument nested more than 100"),
    ("x.{" + " + ".join(["i"] * 5000) + "}.w", "s.map:2:24: error: expression nested more than 100 levels deep"),
    ("x.{" + "-" * 5000 + "i}.w", "error: expression nested more than 100 levels deep"),
])
def test_deep_nesting_is_an_error_at_its_line_and_column(folder, target, says):
    (folder / "s.map").write_text(f"mapspec 1\nlayers.{{i:int}}.w -> {target}\n")
    for command in ("check", "invert"):
        result = runner.invoke(app, [command, "s.map"])
        assert result.exit_code == 2
        assert says in one_clean_error(result.stderr)
    result = runner.invoke(app, ["fmt", "s.map"])  # formatting reads the statement tree itself
    assert result.exit_code == 2 and one_clean_error(result.stderr).startswith("s.map:2:")


def test_an_action_making_more_dimensions_than_a_tensor_has_is_an_error_at_it(folder):
    """Found by the long fuzz campaign (seed 21): the plan said yes, numpy refused a
    1001-dimensional view while converting (an internal error)."""
    (folder / "s.map").write_text(f"mapspec 1\nlayers.{{i:int}}.w -> x.{{i}}.w then view({'1, ' * 1000}4)\n")
    result = runner.invoke(app, ["apply", "s.map", "m.safetensors", "-o", "out/o.safetensors"])
    assert result.exit_code == 1
    assert one_clean_error(result.stderr).startswith("s.map:2:29: error: view() makes a tensor of 1001 dimensions")
    assert not list((folder / "out").iterdir())


def test_a_nul_inside_a_quoted_string_is_read_as_its_escape(folder):
    """Found by the long fuzz campaign (seed 21): Python's parser refuses source text with a
    raw NUL; the spec's string holds it as \\x00 would."""
    (folder / "s.map").write_text('mapspec 1\nassert 1 == 1, "a\0b"\n{k:**} -> {k}\n')
    result = runner.invoke(app, ["check", "s.map"])
    assert result.exit_code == 0, result.output
    (folder / "i.map").write_text('mapspec 1\ninclude "x\0.map"\n')
    result = runner.invoke(app, ["check", "i.map"])
    assert "i.map:2:9: error: include x\\x00.map: the path holds a NUL byte" in one_clean_error(result.stderr)


def test_deep_parentheses_and_thousands_of_parts_work(folder):
    parts = 3000
    (folder / "s.map").write_text(
        "mapspec 1\n"
        f"layers.{{i:int}}.w -> x.{{{'(' * 5000}i{')' * 5000}}}.w\n"
        f"l.{'.'.join(f'{{p{j}:*}}' for j in range(parts))} -> m.{'.'.join(f'{{p{j}}}' for j in range(parts))}\n"
        f"a.{{x:{'|'.join(f'a{j}' for j in range(parts))}}}.w -> b.{{x}}.w\n")
    result = runner.invoke(app, ["apply", "s.map", "m.safetensors", "-o", "out/o.safetensors", "--non-strict"])
    assert result.exit_code == 0, result.output
    assert list(open_source(folder / "out/o.safetensors").infos()) == ["x.0.w"]


def test_a_spec_of_a_hundred_thousand_lines_compiles(folder):
    lines = 100_000
    (folder / "s.map").write_text("mapspec 1\n" + "".join(f"a{j}.w -> b{j}.w\n" for j in range(lines))
                                  + "layers.{i:int}.w -> x.{i}.w\n")
    result = runner.invoke(app, ["apply", "s.map", "m.safetensors", "-o", "out/o.safetensors"])
    assert result.exit_code == 0, result.output


# ------------------------------------------------------------------ 4. errors quoting a file

def test_a_zip_error_quotes_a_short_printable_excerpt(folder):
    """A malformed archive's error once quoted ~400 characters of raw zip bytes: here the
    member's local header names it with 300 bytes of binary, which zipfile quotes whole."""
    import io
    import struct

    buf = io.BytesIO()
    np.savez(buf, x=np.arange(4.0))
    data = buf.getvalue()
    n = struct.unpack("<H", data[26:28])[0]
    junk = bytes((i * 37 + 11) % 256 for i in range(300))
    bad = bytearray(data[:26] + struct.pack("<H", 300) + data[28:30] + junk + data[30 + n:])
    end = len(bad) - 22  # the central directory moved by the longer name
    bad[end + 16:end + 20] = struct.pack("<I", struct.unpack("<I", bad[end + 16:end + 20])[0] + 300 - n)
    (folder / "bad.npz").write_bytes(bytes(bad))
    result = runner.invoke(app, ["apply", "identity.map", "bad.npz", "-o", "out/o.safetensors"])
    assert result.exit_code == 2
    line = one_clean_error(result.stderr)
    assert "corrupt zip archive (File name in directory 'x.npy' and header b'\\x0b0Uz" in line and len(line) < 250


def test_every_error_from_a_mutated_file_is_one_short_printable_line(tmp_path):
    """The property, over 300 seeded mutations of valid files of every format: whatever
    goes wrong while reading is one CheckpointError whose rendered line is short and
    printable (the fuzz harness holds the CLI to the same rule)."""
    from tests.fuzz.mutate import mutate_file
    from tests.fuzz.seeds import write_seeds

    seeds = {k: v for k, v in write_seeds(tmp_path / "seeds").items() if v.is_file()}
    refused = 0
    for n in range(300):
        rng = random.Random(f"quote:{n}")
        kind = sorted(seeds)[n % len(seeds)]
        path = tmp_path / f"m{n}{seeds[kind].suffix}"
        path.write_bytes(seeds[kind].read_bytes())
        mutate_file(path, kind, rng)
        try:
            source = open_source(path, select="")
            try:
                for key in source.infos():
                    source.read(key)
            finally:
                source.close()
        except MapspecError as exc:
            refused += 1
            text = exc.render()
            assert "\n" not in text and len(text) <= MAX_LINE and text.isprintable(), repr(text)
    assert refused > 100  # the mutations do reach the error paths
