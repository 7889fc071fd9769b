"""The benchmark scripts are documented commands: each must at least import against the
current package layout (they run outside CI, so a moved module would otherwise go unseen
until someone tries to measure). Each is imported in a fresh interpreter, as a script is,
without running its main part."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SCRIPTS = sorted((REPO / "bench").glob("*.py"))

IMPORT = """
import importlib.util, sys
path = sys.argv[1]
spec = importlib.util.spec_from_file_location("bench_under_test", path)
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
print("imported", len([n for n in vars(module) if not n.startswith("_")]))
"""


def test_every_script_is_checked():
    assert {p.name for p in SCRIPTS} >= {"convert_bench.py", "quant_bench.py", "gguf_bench.py",
                                         "remote_bench.py", "startup_bench.py"}


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_bench_script_imports(script: Path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "bench"), str(REPO / "tests")])}
    done = subprocess.run([sys.executable, "-c", IMPORT, str(script)], capture_output=True, text=True,
                          env=env, cwd=REPO, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.startswith("imported ")
