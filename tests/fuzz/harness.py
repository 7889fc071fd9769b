"""Run fuzz cases in resource-limited child processes and judge each by one rule.

A case is clean when: the child exited 0 with the right data, or exited 2 with one short,
printable `error:` line (a spec error: its `file:line:col: error:` line, the spec line and a
caret; a tab may align the caret, no other control character appears); no
traceback; it finished within the wall-time, CPU and memory limits; the output folder holds
nothing but a finished output (and nothing at all after a failure); the input is unchanged;
and no payload's marker file exists. Anything else is a finding."""

from __future__ import annotations

import hashlib
import json
import os
import queue
import re
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
LIMITS = {"memory": 3 << 30, "cpu": 20, "wall": 40}
MAX_ERROR = 500  # characters of one error line
SPEC_ERROR = re.compile(r"^\S.*:\d+:\d+: error: ")
SPEC_COUNT = re.compile(r"^(\d+ errors?|\.\.\. \d+ more not shown)$")
MAX_SPEC_ERRORS = 20
IDENTITY = "mapspec 1\n{k:**} -> {k}\n"
# Formats whose library is the reference: a file it refuses must not convert either.
STRICT_ORACLES = {"safetensors", "npz"}


class Zygote:
    """One long-lived child that forks a grandchild per job (see zygote.py)."""

    def __init__(self, preload: str, python: str = sys.executable):
        env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
                   OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", HF_HUB_OFFLINE="1",
                   PYTHONDONTWRITEBYTECODE="1")
        env.pop("MAPSPEC_DEBUG", None)
        self.proc = subprocess.Popen([python, "-m", "tests.fuzz.zygote", preload], cwd=ROOT, env=env,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def run(self, job: dict) -> dict:
        self.proc.stdin.write(json.dumps(job) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("the fuzz zygote died")
        return json.loads(line)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            self.proc.wait(timeout=30)


def tree_hash(path: Path) -> str:
    """Names, kinds and bytes of a file or folder (symlinks by target, not followed)."""
    h = hashlib.sha256()
    paths = [path] if not path.is_dir() or path.is_symlink() else [path, *sorted(path.rglob("*"))]
    for p in paths:
        h.update(str(p.relative_to(path.parent)).encode() + b"\0")
        if p.is_symlink():
            h.update(b"L" + os.readlink(p).encode())
        elif p.is_file():
            h.update(b"F" + p.read_bytes())
        else:
            h.update(b"D" if p.is_dir() else b"?")
    return h.hexdigest()


@dataclass
class Case:
    """One run: `mapspec argv` in `folder`, reading `inputs`, writing into `folder/out`."""

    name: str
    folder: Path
    argv: list[str]
    inputs: list[Path]
    output: Path | None = None
    marker: Path | None = None
    oracle: tuple[str, Path] | None = None  # (format, file) the reference library reads
    allowed: tuple[int, ...] = (0, 2)
    limits: dict = field(default_factory=lambda: dict(LIMITS))


@dataclass
class Verdict:
    case: Case
    rc: int | None
    problems: list[str]
    stderr: str
    seconds: float
    notes: list[str] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not self.problems

    def __str__(self) -> str:
        head = f"{self.case.name}: rc={self.rc} {'; '.join(self.problems) or 'clean'}"
        return head + ("\n    " + self.stderr.strip().replace("\n", "\n    ")[:600] if self.stderr.strip() else "")


class Runner:
    """Runs cases on `workers` zygotes at once (the reference reader is shared)."""

    def __init__(self, workers: int = 2, python: str = sys.executable):
        self.python = python
        self._idle: queue.Queue[Zygote] = queue.Queue()
        self._all = [Zygote("cli", python) for _ in range(max(1, workers))]
        for z in self._all:
            self._idle.put(z)
        self._oracle = None
        self._oracle_lock = threading.Lock()

    def _read_with_library(self, job: dict) -> dict:
        with self._oracle_lock:
            if self._oracle is None:
                self._oracle = Zygote("oracle", self.python)
            return self._oracle.run(job)

    def close(self) -> None:
        for z in self._all:
            z.close()
        if self._oracle is not None:
            self._oracle.close()

    def run_all(self, cases: Iterable[Case]) -> list[Verdict]:
        """Every case's verdict, in order, `workers` at a time."""
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(len(self._all)) as pool:
            return list(pool.map(self.run, cases))

    def __enter__(self) -> "Runner":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def run(self, case: Case) -> Verdict:
        before = {p: tree_hash(p) for p in case.inputs}
        out_dir = case.folder / "out"
        out_dir.mkdir(exist_ok=True)
        stdout, stderr = case.folder / "stdout.txt", case.folder / "stderr.txt"
        zygote = self._idle.get()
        try:
            result = zygote.run({"kind": "cli", "argv": case.argv, "cwd": str(case.folder), "stdout": str(stdout),
                                 "stderr": str(stderr), "limits": case.limits})
        finally:
            self._idle.put(zygote)
        err = stderr.read_text(errors="replace")
        problems: list[str] = []
        rc = result["rc"]
        if result["timeout"]:
            problems.append(f"no answer within {case.limits['wall']} s")
        elif result["signal"] is not None:
            problems.append(f"killed by signal {result['signal']}")
        elif rc not in case.allowed:
            problems.append(f"exit {rc}")
        if "Traceback" in err:
            problems.append("traceback")
        if rc is not None and rc != 0:
            problems += _error_shape(err)
        if "needs more memory than is available" in err:
            problems.append("allocation not bounded before it was made (MemoryError)")
        for p, h in before.items():
            if not p.exists() and not p.is_symlink() or tree_hash(p) != h:
                problems.append(f"input {p.name} changed")
        left = sorted(x.name for x in out_dir.iterdir())
        expected = [case.output.name] if rc == 0 and case.output is not None else []
        if rc == 0 and case.output is not None and case.output.name not in left:
            problems.append("exit 0 but no output")
        if [x for x in left if x not in expected]:
            problems.append(f"left behind in the output folder: {', '.join(x for x in left if x not in expected)}")
        if case.marker is not None and (case.marker.exists() or case.marker.is_symlink()):
            problems.append("PAYLOAD RAN: the marker file exists")
        notes: list[str] = []
        if rc == 0 and case.oracle is not None and not problems:
            problems += self._check_data(case, notes)
        return Verdict(case, rc, problems, err, result["seconds"], notes)

    def _check_data(self, case: Case, notes: list[str]) -> list[str]:
        fmt, path = case.oracle
        save = case.folder / "oracle.npz"
        res = self._read_with_library({"kind": "oracle", "format": fmt, "path": str(path), "save": str(save),
                                 "cwd": str(case.folder), "stdout": str(case.folder / "oracle.out"),
                                 "stderr": str(case.folder / "oracle.err"), "limits": case.limits})
        if res["rc"] == 2:
            return []
        if res["rc"] != 0:
            if fmt in STRICT_ORACLES:
                return [f"converted a file the {fmt} library refuses"]
            # Not a failure for torch: what torch.load(weights_only=True) refuses and mapspec
            # converts comes down to records mapspec does not read and whose bytes no tensor
            # depends on: a missing or unparseable `version`, `.storage_alignment` that is not
            # a number (mapspec reads each record where its zip entry says, not by alignment),
            # a `serialization_id` that is not UTF-8, an unused record of an unknown compression
            # method, a stray zip64 disk number; and torch's allowlist refusing a global
            # mapspec reads inertly (`collections.defaultdict` as a dict; an unknown callable
            # as a stand-in that holds no tensor, so none is converted). Where torch refuses
            # because the data is ambiguous (a storage record longer than its storage, records
            # outside the archive's folder) mapspec refuses too (tests/test_hostile_read.py).
            notes.append(f"converted a file the {fmt} library refuses")
            return []
        from tests.fuzz.oracle import load_saved

        want = {k: v for k, v in load_saved(str(save)).items() if k}
        got = read_output(case.output)
        if set(got) != set(want):
            extra, missing = sorted(set(got) - set(want)), sorted(set(want) - set(got))
            return [f"keys differ from the {fmt} library's: extra {extra[:3]}, missing {missing[:3]}"]
        bad = [k for k in want if not same_bits(got[k], want[k])]
        return [f"data differ from the {fmt} library's: {bad[:3]}"] if bad else []


def _error_shape(err: str) -> list[str]:
    lines = err.rstrip("\n").split("\n") if err.strip() else []
    if not lines:
        return ["failed without a message"]
    problems = []
    if SPEC_ERROR.match(lines[0]):
        # one or more `file:line:col: error:` blocks (the line and a caret below each), and
        # then maybe an `N errors` count
        odd = [x for x in lines if not (SPEC_ERROR.match(x) or x.startswith("    ") or SPEC_COUNT.match(x))]
        blocks = sum(1 for x in lines if SPEC_ERROR.match(x))
        if odd or len(lines) > 3 * blocks + 2 or blocks > MAX_SPEC_ERRORS:
            problems.append(f"spec error of {len(lines)} lines")
    elif not lines[0].startswith("error: ") or len(lines) != 1:
        if not (lines[0].startswith("error: ") and all(x.startswith("  ") for x in lines[1:])):
            problems.append("not one `error:` line")
    if any(len(x) > MAX_ERROR for x in lines):
        problems.append(f"error line of {max(len(x) for x in lines):,} characters")
    bad = sorted({c for x in lines for c in x if not c.isprintable() and c != "\t"})
    if bad:  # a tab may align a spec line's caret; nothing else unprintable is ever shown
        problems.append(f"unprintable characters in the error: {''.join(bad)!r}")
    return problems


def read_output(path: Path) -> dict[str, np.ndarray]:
    """A finished safetensors output, bf16 as raw bits (mapspec's reader; the writer is
    proven against the safetensors library elsewhere)."""
    from mapspec.formats.safetensors import SafetensorsSource

    src = SafetensorsSource(path)
    try:
        return {k: np.array(src.read(k)) for k in src.infos()}
    finally:
        src.close()


def same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    a, b = np.ascontiguousarray(a), np.ascontiguousarray(b)
    if a.shape != b.shape:
        return False
    if a.dtype != b.dtype:
        # mapspec keeps the stored type; a library may widen (wts: float32 either way)
        if a.dtype.kind == "f" or b.dtype.kind == "f":
            return bool(np.array_equal(a.astype(np.float64), b.astype(np.float64), equal_nan=True))
        return bool(np.array_equal(a, b))
    return a.tobytes() == b.tobytes()
