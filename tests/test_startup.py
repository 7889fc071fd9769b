"""CLI start-up: the package imports its public names on first use, and the spec parser's
LALR tables come from a private cache instead of being rebuilt by every process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import write_safetensors

import mapspec
from mapspec.lang import grammar

REPO = Path(__file__).resolve().parent.parent
SPEC = "mapspec 1\nmodel.{rest:**} -> net.{rest}\n"


def test_every_public_name_resolves_to_what_its_module_defines():
    import importlib
    for name in mapspec.__all__:
        value = getattr(mapspec, name)
        assert value is not None
        if name in mapspec._EXPORTS:
            module, attr = mapspec._EXPORTS[name]
            assert value is getattr(importlib.import_module(module, "mapspec"), attr)
    assert set(mapspec.__all__) <= set(dir(mapspec))
    assert callable(mapspec.remap)  # the function, not the submodule of the same name
    with pytest.raises(AttributeError):
        mapspec.no_such_name


def test_apply_does_not_import_the_commands_it_does_not_run():
    code = ("import sys, mapspec.cli; "
            "print(' '.join(sorted(m for m in sys.modules if m.split('.')[:2] in "
            "(['mapspec', 'draft'], ['mapspec', 'inspect'], ['mapspec', 'load'], ['mapspec', 'verify']))))")
    out = subprocess.run([sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": str(REPO)},
                         capture_output=True, text=True, check=True).stdout
    assert out.strip() == ""


def _console(code: str, *args: str, cwd: Path, environ: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """`code` then the `mapspec` console entry point (mapspec.cli:main) on `args`, in a process
    of its own (with `environ`, else this one's), its output through pipes."""
    script = f"import sys\n{code}\nfrom mapspec.cli import main\nsys.argv = ['mapspec', *sys.argv[1:]]\nmain()\n"
    env = {k: v for k, v in (os.environ if environ is None else environ).items()
           if k != "PYTHONUNBUFFERED"}  # stdout buffered, as usual
    env.update(PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1")
    return subprocess.run([sys.executable, "-c", script, *args], cwd=cwd, env=env, capture_output=True, text=True)


# What the process held at its end, printed by an atexit handler (which the console exit runs).
_AT_EXIT = """
import atexit, json
import mapspec.cli as cli
built = []
_build = cli.get_command_from_info
cli.get_command_from_info = lambda info, **kw: built.append(info.callback.__name__) or _build(info, **kw)
atexit.register(lambda: print(json.dumps({"built": built, "modules": sorted(sys.modules)})))
"""


def test_a_rename_only_apply_builds_one_command_and_imports_no_numpy(tmp_path):
    """The cheap start, pinned by what is loaded (not by time): typer builds only `apply`'s
    click command; numpy, the other commands' modules, torch and rich are never imported."""
    write_safetensors(tmp_path / "in.safetensors", {f"model.l{i}.w": np.full((4, 4), i, np.float32)
                                                   for i in range(6)})
    (tmp_path / "s.map").write_text(SPEC)
    r = _console(_AT_EXIT, "apply", "s.map", "in.safetensors", "-o", "out.safetensors", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    summary, at_exit = r.stdout.splitlines()
    assert summary.startswith("Transferred 6/6 tensors")
    seen = json.loads(at_exit)
    assert seen["built"] == ["apply"]
    loaded = set(seen["modules"])
    assert not loaded & {"numpy", "torch", "rich", "mapspec.tools.draft", "mapspec.tools.inspect", "mapspec.tools.invert",
                         "mapspec.tools.verify", "mapspec.tools.load", "mapspec.lang.formatter", "mapspec.tools.diff"}
    out = mapspec.open_source(tmp_path / "out.safetensors")
    try:
        assert {k: out.read(k).tolist() for k in out.infos()} == \
            {f"net.l{i}.w": np.full((4, 4), i, np.float32).tolist() for i in range(6)}
    finally:
        out.close()


def test_the_console_exit_waits_for_threads_flushes_pipes_and_keeps_the_exit_code(tmp_path):
    """main() ends the process without interpreter teardown, but only after what a normal exit
    runs: a non-daemon thread is waited for, buffered output reaches the pipe, codes stay."""
    late = ("import pathlib, threading, time, mapspec.cli\n"
            "threading.Thread(target=lambda: (time.sleep(0.5), pathlib.Path('late').write_text('done'))).start()")
    r = _console(late, "fmt", "--check", cwd=tmp_path)  # no specs: a usage error, at once
    assert r.returncode == 2 and r.stderr.startswith("error: ")
    assert (tmp_path / "late").read_text() == "done"
    r = _console("", "apply", "--no-such-option", cwd=tmp_path)
    assert r.returncode == 2 and r.stderr.startswith("error: ") and "Traceback" not in r.stderr
    r = _console("sys.stdout.write('x' * 5000)", "no-such-command", cwd=tmp_path)
    assert r.returncode == 2 and r.stdout == "x" * 5000  # still in the buffer when the command ends


def _blas_threads(tmp_path: Path, **env: str) -> int:
    """How many threads numpy's OpenBLAS runs in a `mapspec` command that casts (so loads
    numpy): the library's own count, from the copy numpy loaded."""
    write_safetensors(tmp_path / "in.safetensors", {"model.w": np.ones((4, 4), np.float32)})
    (tmp_path / "c.map").write_text("mapspec 1\nmodel.w -> net.w then cast(float16)\n")
    report = ("import atexit, ctypes, re\n"
              "def threads():\n"
              "    path = re.search(r'(/\\S*openblas\\S*\\.so\\S*)', open('/proc/self/maps').read()).group(1)\n"
              "    lib = ctypes.CDLL(path)\n"
              "    names = ('scipy_openblas_get_num_threads64_', 'openblas_get_num_threads64_', 'openblas_get_num_threads')\n"
              "    print(next(getattr(lib, n) for n in names if hasattr(lib, n))())\n"
              "atexit.register(threads)\n")
    environ = {k: v for k, v in os.environ.items() if k not in ("OPENBLAS_NUM_THREADS", "GOTO_NUM_THREADS",
                                                                "OMP_NUM_THREADS")}
    r = _console(report, "apply", "c.map", "in.safetensors", "-o", "out.safetensors", "--force", cwd=tmp_path,
                 environ={**environ, **env})
    assert r.returncode == 0, r.stderr
    return int(r.stdout.splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux") or (os.cpu_count() or 1) < 2,
                    reason="reads the loaded OpenBLAS from /proc/self/maps; one core runs one thread anyway")
def test_the_command_runs_numpy_without_blas_threads_unless_the_user_set_a_count(tmp_path):
    """mapspec does no linear algebra; OpenBLAS's idle threads only spin on the cores the
    read-ahead thread and the kernels need. A count the user set is theirs."""
    assert _blas_threads(tmp_path) == 1
    assert _blas_threads(tmp_path, OMP_NUM_THREADS="2") == 2


@pytest.fixture
def cache_home(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.delenv("MAPSPEC_NO_CACHE", raising=False)
    grammar.parser.cache_clear()
    yield tmp_path / "mapspec" / grammar.cache_name()
    grammar.parser.cache_clear()


def _tree(parser):
    return parser.parse(SPEC, start="spec")


def test_the_parser_is_cached_and_the_cached_one_parses_the_same(cache_home):
    built = grammar.parser()
    assert cache_home.is_file()
    assert cache_home.parent.stat().st_mode & 0o777 == 0o700
    grammar.parser.cache_clear()
    loaded = grammar.parser()
    assert loaded is not built
    assert _tree(loaded) == _tree(built)
    assert [t.name for t in loaded.terminals] == [t.name for t in built.terminals]


def test_parsers_of_other_grammars_stay_beside_it_up_to_a_few(cache_home):
    """Two mapspec versions used in turn each find their own built parser (one file of the
    same name would be rebuilt by each in turn); the oldest beyond KEEP_BUILT go, and so does
    the single file of before."""
    folder = cache_home.parent
    folder.mkdir(mode=0o700)
    others = [folder / f"grammar-{i:016x}.lark-cache" for i in range(6)]
    for age, p in enumerate(others):
        p.write_bytes(b"another grammar\n")
        os.utime(p, (1000 + age, 1000 + age))
    (folder / "grammar.lark-cache").write_bytes(b"before\n")
    grammar.parser()
    kept = sorted(p.name for p in folder.glob("grammar*.lark-cache"))
    assert kept == sorted([cache_home.name, *(p.name for p in others[-(grammar.KEEP_BUILT - 1):])])
    grammar.parser.cache_clear()
    assert _tree(grammar.parser()) is not None and cache_home.is_file()


def test_a_corrupt_or_stale_cache_is_rebuilt_not_trusted(cache_home):
    grammar.parser()
    cache_home.write_bytes(b"not the key\n" + os.urandom(100))
    grammar.parser.cache_clear()
    assert _tree(grammar.parser()) is not None
    assert cache_home.read_bytes().split(b"\n", 1)[0] != b"not the key"
    key = cache_home.read_bytes().split(b"\n", 1)[0]
    cache_home.write_bytes(key + b"\n" + b"truncated pickle")
    grammar.parser.cache_clear()
    assert _tree(grammar.parser()) is not None


def test_a_cache_directory_others_can_write_is_not_used(cache_home):
    cache_home.parent.mkdir(mode=0o700)
    os.chmod(cache_home.parent, 0o777)
    assert grammar.cache_path() is None
    assert _tree(grammar.parser()) is not None
    assert not cache_home.exists()


def test_no_cache_when_asked(cache_home, monkeypatch):
    monkeypatch.setenv("MAPSPEC_NO_CACHE", "1")
    assert grammar.cache_path() is None
    assert _tree(grammar.parser()) is not None
    assert not cache_home.exists()


def test_a_file_changed_moments_ago_is_hashed_not_remembered(cache_home, tmp_path, monkeypatch):
    from mapspec.formats import provenance
    from mapspec.formats.provenance import cached_sha256
    monkeypatch.setattr(provenance, "REMEMBER_FROM", 0)
    src = tmp_path / "w.bin"
    src.write_bytes(b"weights")
    cached_sha256(src)
    assert not list((cache_home.parent / "sha256").iterdir())


def test_the_source_sha256_is_remembered_until_the_file_changes(cache_home, tmp_path, monkeypatch):
    from mapspec.formats import provenance
    from mapspec.formats.provenance import cached_sha256, sha256_path
    import hashlib
    import time
    monkeypatch.setattr(provenance, "RACY_NS", 0)
    monkeypatch.setattr(provenance, "REMEMBER_FROM", 0)
    src = tmp_path / "w.bin"
    src.write_bytes(b"weights" * 1000)
    first = cached_sha256(src)
    assert first == hashlib.sha256(src.read_bytes()).hexdigest()
    entries = list((cache_home.parent / "sha256").iterdir())
    assert len(entries) == 1 and entries[0].read_text() == first
    entries[0].write_text("f" * 64)  # a remembered value is used while the stamps match...
    assert cached_sha256(src) == "f" * 64
    time.sleep(0.05)  # past the file clock's tick (RACY_NS, 2 s in real use, is set to 0 here)
    with open(src, "r+b") as f:  # ...and any write changes them (same size, one byte)
        f.write(b"W")
    assert cached_sha256(src) == hashlib.sha256(src.read_bytes()).hexdigest() != first
    d = tmp_path / "dir"
    (d / "b").mkdir(parents=True)
    (d / "a").write_bytes(b"xy")
    (d / "b" / "c").write_bytes(b"z")
    assert cached_sha256(d) == sha256_path(d) == cached_sha256(d)
    time.sleep(0.05)
    (d / "b" / "c").write_bytes(b"q")
    assert cached_sha256(d) == sha256_path(d)


def test_a_small_source_is_hashed_not_remembered(cache_home, tmp_path, monkeypatch):
    from mapspec.formats import provenance
    monkeypatch.setattr(provenance, "RACY_NS", 0)
    src = tmp_path / "small.bin"
    src.write_bytes(b"w" * 100)
    provenance.cached_sha256(src)
    assert not list((cache_home.parent / "sha256").iterdir())


def test_one_options_object_serves_the_cli_apply_plan_for_and_remap():
    """The options of compiling a spec against a checkpoint are one object (`mapspec.Options`):
    the keywords of apply/plan_for are its field names, an unknown one is refused."""
    import dataclasses
    import inspect

    import mapspec

    names = {f.name for f in dataclasses.fields(mapspec.Options)}
    assert names == {"target", "select", "epoch", "strict", "fit", "drop", "strict_rules", "params", "config"}
    for fn in (mapspec.apply, mapspec.plan_for, mapspec.remap):
        assert "options" in inspect.signature(fn).parameters
    with pytest.raises(TypeError, match="unexpected keyword argument 'selct'"):
        mapspec.Options.of(None, selct="model")
    assert mapspec.Options.of(mapspec.Options(select="model"), drop=["fc.*"]) == mapspec.Options(select="model",
                                                                                             drop=("fc.*",))
