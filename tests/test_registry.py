"""The format registry: one entry per format, and everything that lists formats reads it."""

import ast
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mapspec import UsageError
from mapspec.cli import app
from mapspec.formats import by_name, by_suffix, formats, known_names, sink_format

REPO = Path(__file__).resolve().parent.parent


def test_every_format_is_registered_once_with_names_suffixes_and_dtypes():
    names = [f.name for f in formats()]
    assert names == ["safetensors", "mxnet", "torch", "npz", "oneflow", "wts", "gguf", "distcp"]
    every = [n for f in formats() for n in f.names]
    assert len(every) == len(set(every))
    suffixes = [s for f in formats() for s in f.suffixes]
    assert len(suffixes) == len(set(suffixes))
    for f in formats():
        assert f.dtypes and f.source and f.sink
        assert by_name(f.name) is f
        assert f.suffixes or f.directory  # a directory format (distcp) is known by its contents
        if f.suffixes:
            assert by_suffix(Path("x" + f.suffixes[0])) is f
    assert by_name("pt").name == "torch" and by_name("tensorrt").name == "wts"


def test_a_named_or_suffixed_format_imports_only_its_own_module():
    """Start-up: `-o out.safetensors`, `--to pt` and help texts need no other format module."""
    import subprocess
    import sys

    code = ("import sys; from pathlib import Path; from mapspec.formats import by_name, by_suffix, known_names; "
            "known_names(); by_suffix(Path('m.safetensors')); by_name('pt'); "
            "print(sorted(m for m in sys.modules if m.startswith('mapspec.formats.')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    loaded = {m.rsplit(".", 1)[1] for m in eval(out)}
    assert {"safetensors", "torch"} <= loaded
    assert not loaded & {"mxnet", "npz", "oneflow", "wts", "gguf", "distcp"}


def test_help_and_errors_list_every_format():
    r = CliRunner().invoke(app, ["apply", "--help"], env={"COLUMNS": "300"})
    for f in formats():
        assert f.name in r.output
    with pytest.raises(UsageError) as e:
        sink_format("out.xyz", None)
    assert known_names() in str(e.value)
    with pytest.raises(UsageError, match="unknown format 'tf'.*oneflow.*wts"):
        sink_format("out.safetensors", "tf")


def test_formats_import_nothing_above_them():
    """Imports point down the pipeline: no format module imports the planner, inspect or the CLI."""
    above = {"compile", "run", "tools", "api", "cli", "ops", "lang"}
    for module in (REPO / "mapspec" / "formats").glob("*.py"):
        for node in ast.walk(ast.parse(module.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 2:
                assert (node.module or "").split(".")[0] not in above, f"{module.name} imports ..{node.module}"
