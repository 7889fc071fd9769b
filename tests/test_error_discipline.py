"""One error discipline at the top, and bounds on what a spec may ask for.

Unexpected exceptions are one `error: internal error (...); please report it` line with exit
3 (traceback only under --debug or MAPSPEC_DEBUG=1); MemoryError and RecursionError are bad
input (exit 2); no error line echoes megabytes; specs and includes are read from regular
files only; include chains, expressions, integers and split/chunk counts are bounded; the
matcher stays linear-ish on a 1 MB key however many `**` captures a pattern has."""

from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

import mapspec.cli as cli
from mapspec.cli import app
from mapspec.compile.checks import check_spec
from mapspec.errors import MAX_LINE, SpecError, shorten
from mapspec.compile.matcher import LinearPattern, Matcher, pattern_regex
from mapspec.lang.parser import MAX_INCLUDE_DEPTH, parse_spec

from conftest import write_safetensors

REPO = Path(__file__).resolve().parent.parent
runner = CliRunner()


def checkpoint(folder: Path, arrays: dict[str, np.ndarray]) -> Path:
    return write_safetensors(folder / "in.safetensors", arrays)


@pytest.fixture
def small(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MAPSPEC_DEBUG", raising=False)
    checkpoint(tmp_path, {"a.weight": np.ones(2, np.float32)})
    (tmp_path / "id.map").write_text("mapspec 1\n{k:**} -> {k}\n")
    return tmp_path


def _raising(exc: BaseException):
    def fail(*args, **kwargs):
        raise exc
    return fail


def test_unexpected_exception_is_one_internal_error_line_exit_3(small, monkeypatch):
    monkeypatch.setattr(cli, "apply_spec", _raising(ValueError("boom")))
    result = runner.invoke(app, ["apply", "id.map", "in.safetensors", "-o", "out.safetensors"])
    assert result.exit_code == 3
    assert result.output.strip().splitlines() == [
        "error: internal error (ValueError: boom); please report it; rerun with --debug for the traceback"]


@pytest.mark.parametrize("how", ["flag", "env"])
def test_debug_shows_the_traceback(small, monkeypatch, how):
    monkeypatch.setattr(cli, "apply_spec", _raising(ValueError("boom")))
    args = ["apply", "id.map", "in.safetensors", "-o", "out.safetensors"]
    if how == "flag":
        args = ["--debug", *args]
    else:
        monkeypatch.setenv("MAPSPEC_DEBUG", "1")
    result = runner.invoke(app, args)
    assert result.exit_code == 3
    assert "Traceback (most recent call last)" in result.output and "ValueError: boom" in result.output
    assert result.output.strip().splitlines()[-1] == "error: internal error (ValueError: boom); please report it"


@pytest.mark.parametrize("exc,message", [(MemoryError(), "error: the input needs more memory than is available"),
                                         (RecursionError(), "error: the input nests too deeply")])
def test_memory_and_recursion_errors_are_bad_input(small, monkeypatch, exc, message):
    monkeypatch.setattr(cli, "apply_spec", _raising(exc))
    result = runner.invoke(app, ["apply", "id.map", "in.safetensors", "-o", "out.safetensors"])
    assert result.exit_code == 2
    assert result.output.strip() == message


def test_os_error_without_a_file_name_has_no_empty_path(small, monkeypatch):
    monkeypatch.setattr(cli, "apply_spec", _raising(OSError(5, "Input/output error")))
    result = runner.invoke(app, ["apply", "id.map", "in.safetensors", "-o", "out.safetensors"])
    assert result.exit_code == 2
    assert result.output.strip() == "error: Input/output error"


def test_shorten_cuts_long_lines_in_the_middle_and_keeps_short_ones():
    assert shorten("error: short\n  detail") == "error: short\n  detail"
    long = "error: " + "k" * 1_000_000 + " end"
    cut = shorten(long)
    assert len(cut) <= MAX_LINE + 40 and cut.startswith("error: kkk") and cut.endswith("k end")
    assert "characters]" in cut


def test_a_1_mb_key_is_never_echoed_whole(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    key = "x" * 1_000_000
    checkpoint(tmp_path, {key: np.ones(1, np.float32)})
    (tmp_path / "s.map").write_text("mapspec 1\nfoo -> bar\n")
    result = runner.invoke(app, ["apply", "s.map", "in.safetensors", "-o", "o.safetensors"])
    assert result.exit_code == 1
    assert max(len(line) for line in result.output.splitlines()) <= MAX_LINE + 40
    assert len(result.output) < 4 * MAX_LINE


def test_a_1_mb_spec_line_is_shown_as_a_window_around_the_caret(tmp_path):
    path = tmp_path / "long.map"
    path.write_text("mapspec 1\n" + "a" * 1_000_000 + " -> b then nosuch(1)\n")
    with pytest.raises(SpecError) as info:
        check_spec(parse_spec(path))
    rendered = info.value.render()
    assert len(rendered) < 4 * MAX_LINE
    head, line, caret = rendered.splitlines()
    assert "unknown action 'nosuch'" in head
    assert line.strip().startswith("...") and line.endswith("nosuch(1)")
    assert line.index("then nosuch") == caret.index("^")


# ---------------------------------------------------------------- spec files

def run(folder: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    env.pop("MAPSPEC_DEBUG", None)
    return subprocess.run([sys.executable, "-m", "mapspec.cli", *args], cwd=folder, env=env, capture_output=True,
                          text=True, timeout=timeout)


@pytest.mark.parametrize("what", ["fifo", "dev_zero", "folder"])
def test_specs_must_be_regular_files(tmp_path, what):
    """A FIFO or /dev/zero as a spec used to hang."""
    if what == "fifo":
        os.mkfifo(tmp_path / "spec.map")
        spec = "spec.map"
    elif what == "dev_zero":
        spec = "/dev/zero"
    else:
        (tmp_path / "spec.map").mkdir()
        spec = "spec.map"
    done = run(tmp_path, "check", spec, timeout=60)
    assert done.returncode == 2
    why = "a folder, not a spec file" if what == "folder" else "not a regular file"
    assert done.stderr.strip() == f"error: cannot read spec {spec}: {why}"


@pytest.mark.parametrize("what", ["fifo", "dev_zero"])
def test_includes_must_be_regular_files(tmp_path, what):
    target = "/dev/zero" if what == "dev_zero" else "pipe.map"
    if what == "fifo":
        os.mkfifo(tmp_path / "pipe.map")
    (tmp_path / "main.map").write_text(f'mapspec 1\ninclude "{target}"\n')
    done = run(tmp_path, "check", "main.map", timeout=60)
    assert done.returncode == 2
    assert f"main.map:2:9: error: cannot include {target}: not a regular file" in done.stderr


def test_a_1200_deep_include_chain_stops_at_the_bound(tmp_path):
    for i in range(1200):
        (tmp_path / f"inc{i}.map").write_text(("mapspec 1\n" if i == 0 else "") + f'include "inc{i + 1}.map"\n')
    (tmp_path / "inc1200.map").write_text("drop **\n")
    with pytest.raises(SpecError) as info:
        parse_spec(tmp_path / "inc0.map")
    assert info.value.message == f"includes nest deeper than {MAX_INCLUDE_DEPTH} files"
    assert Path(info.value.span.file).name == f"inc{MAX_INCLUDE_DEPTH - 1}.map"


def test_a_64_deep_include_chain_is_fine(tmp_path):
    for i in range(MAX_INCLUDE_DEPTH - 1):
        (tmp_path / f"inc{i}.map").write_text(("mapspec 1\n" if i == 0 else "") + f'include "inc{i + 1}.map"\n')
    (tmp_path / f"inc{MAX_INCLUDE_DEPTH - 1}.map").write_text("drop **\n")
    assert len(parse_spec(tmp_path / "inc0.map").includes) == MAX_INCLUDE_DEPTH - 1


def test_deeply_parenthesised_expressions_parse_without_recursion_errors():
    spec = parse_spec(text="mapspec 1\nl{n:int} -> m{" + "(" * 3000 + "n" + ")" * 3000 + "}\n")
    assert len(spec.rules) == 1


def test_arithmetic_within_the_bound_still_works():
    spec = parse_spec(text="mapspec 1\nl{n:int} -> m{" + " + ".join(["n"] * 60) + "}\n")
    assert len(spec.rules) == 1


# ---------------------------------------------------------------- the matcher on long keys

PATTERNS = ["{a:**}.{b:**}.{c:**}.weight", "**.{x}.{y:**}", "layer{n:int}_{m}.{r:**}", "{a:x|x.y|y}.{b}",
            "a{b}{c}.{d:**}", "**.bn", "{p:**}_{q:int}", "x.{a:**}{b:int}", "{t in tab}.{u:**}.{v}"]


def _pattern(text: str):
    spec = parse_spec(text=f"mapspec 1\ntable tab {{\n  x = 1\n  x.y = 2\n}}\n{text} -> out\n")
    return spec.rules[0].sources[0], {"tab": ("x", "x.y")}


@pytest.mark.parametrize("text", PATTERNS)
def test_linear_matching_gives_the_regex_engines_captures(text):
    """The linear-time matcher used for long keys agrees with Python's backtracking regex
    (captures included) on thousands of short random keys."""
    pattern, tables = _pattern(text)
    rx, linear = pattern_regex(pattern, tables), LinearPattern(pattern, tables)
    rng = random.Random(text)
    for _ in range(2000):
        key = "".join(rng.choice("xy.a1_2bnweight") for _ in range(rng.randint(0, 14)))
        if rng.random() < 0.3:
            key += rng.choice([".weight", ".bn", "_3", ".y"])
        m = rx.fullmatch(key)
        assert linear.fullmatch(key) == (m.groupdict() if m else None), key


def test_matcher_routes_long_keys_to_the_linear_path_with_the_same_answer():
    spec = parse_spec(text="mapspec 1\n{a:**}.{b:**}.{c:**}.weight -> w.{a}.{b}.{c}\n{a:**}.bias -> b.{a}\n")
    from mapspec.compile.matcher import Entry

    entries = [Entry(i, j, p) for i, r in enumerate(spec.rules) for j, p in enumerate(r.sources)]
    m = Matcher(entries, {})
    key = "p." * 300 + "q.weight"
    assert len(key) > m.fast_limit
    hit = m.match(key)
    assert hit.entry.rule == 0 and hit.captures == {"a": "p." * 299 + "p", "b": "q", "c": "weight"} or \
        hit.captures == pattern_regex(entries[0].pattern, {}).fullmatch(key).groupdict()
    assert m.match("p." * 300 + "bias").captures == {"a": ("p." * 300)[:-1]}
    assert m.match("p." * 300 + "nothing") is None


def test_several_double_star_captures_against_a_1_mb_key_finish(tmp_path):
    """Catastrophic backtracking made this run for hours; a generous bound only guards
    against that, it does not time anything."""
    checkpoint(tmp_path, {"x." * 500_000 + "y": np.zeros(2, np.float32), "a.b.c.d.weight": np.ones(2, np.float32)})
    (tmp_path / "s.map").write_text("mapspec 1\n{a:**}.{b:**}.{c:**}.{d:**}.weight -> {a}.{b}.{c}.{d}.w\n"
                                    "{a:**}.{b:**}.{c:**}.bias -> {a}.{b}.{c}.b\n")
    done = run(tmp_path, "check", "s.map", "in.safetensors", "--non-strict", timeout=600)
    assert done.returncode == 0, done.stderr[:2000]
    assert "1 unmatched" in done.stdout


def test_a_spec_with_hundreds_of_errors_shows_twenty_and_counts_the_rest(tmp_path):
    from mapspec.errors import SpecErrors

    errors = [SpecError(f"problem {i}") for i in range(500)]
    lines = SpecErrors(errors).render().splitlines()
    assert lines[:2] == ["error: problem 0", "error: problem 1"] and len(lines) == 22
    assert lines[-2:] == ["... 480 more not shown", "500 errors"]
