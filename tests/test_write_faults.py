"""Writes that survive faults: a full disk (RLIMIT_FSIZE in a child process, and ENOSPC
in-process), SIGTERM and SIGINT mid-run, concurrent writers to one output, an input truncated
while it is read. In every case: one `error:` line naming the output, and nothing left
in the output folder but a finished output."""

from __future__ import annotations

import errno
import os
import resource
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from mapspec.cli import app
from mapspec.errors import OutputError
from mapspec.formats.atomic import AtomicPath, guarded_writes

from conftest import write_safetensors

REPO = Path(__file__).resolve().parent.parent
IDENTITY = "mapspec 1\n{k:**} -> {k}\n"
TENSOR_BYTES = 8 * 64 * 1024 * 4


def write_input(folder: Path, tensors: int = 8, side: int = 256) -> Path:
    arrays = {f"t{i}": np.full((side, side), i, np.float32) for i in range(tensors)}
    path = write_safetensors(folder / "in.safetensors", arrays)
    (folder / "id.map").write_text(IDENTITY)
    (folder / "out").mkdir()
    return path


def cli(folder: Path, *args: str, fsize: int | None = None, **popen) -> subprocess.Popen:
    def limit():
        if fsize is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))
    env = dict(os.environ, PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1")
    env.pop("MAPSPEC_DEBUG", None)
    return subprocess.Popen([sys.executable, "-m", "mapspec.cli", *args], cwd=folder, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, preexec_fn=limit, **popen)


def finish(proc: subprocess.Popen) -> tuple[int, str]:
    _, err = proc.communicate(timeout=300)
    return proc.returncode, err


def assert_one_error_line(err: str, *needles: str) -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], err


# ---------------------------------------------------------------- disk full

@pytest.mark.parametrize("suffix", [".safetensors", ".pt", ".npz", ".params", ".wts"])
def test_file_size_limit_mid_write_leaves_nothing_and_names_the_output(tmp_path, suffix):
    """The limit admits the tensor bytes (so the up-front check passes) but not the format's
    own overhead: the write fails part-way. torch's writer must not abort the process."""
    pytest.importorskip("torch") if suffix == ".pt" else None
    write_input(tmp_path)
    rc, err = finish(cli(tmp_path, "apply", "id.map", "in.safetensors", "-o", f"out/o{suffix}",
                         fsize=TENSOR_BYTES + 16))
    assert rc == 2, err
    assert_one_error_line(err, f"out/o{suffix}: cannot write:")
    assert list((tmp_path / "out").iterdir()) == []


@pytest.mark.parametrize("suffix", [".safetensors", ".oneflow"])
def test_output_larger_than_the_file_size_limit_is_refused_before_writing(tmp_path, suffix):
    write_input(tmp_path)
    rc, err = finish(cli(tmp_path, "apply", "id.map", "in.safetensors", "-o", f"out/o{suffix}", fsize=4096))
    assert rc == 2
    assert_one_error_line(err, f"out/o{suffix}", "file size limit")
    assert list((tmp_path / "out").iterdir()) == []


def test_not_enough_free_space_is_refused_before_writing(tmp_path, monkeypatch):
    import shutil

    write_input(tmp_path)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10**9, 10**9 - 1000, 1000))
    result = CliRunner().invoke(app, ["apply", "id.map", "in.safetensors", "-o", "out/o.safetensors"])
    assert result.exit_code == 2
    assert "out/o.safetensors: not enough free space" in result.output
    assert list((tmp_path / "out").iterdir()) == []


class FullDisk:
    """A file on a disk with `room` bytes left: writes past it fail with ENOSPC, and so does
    the flush in close, as a buffered file on a full disk does."""

    def __init__(self, f, room: int):
        self.f, self.room, self.full = f, room, False

    def write(self, b) -> int:
        if len(b) > self.room:
            self.full = True
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.room -= len(b)
        return self.f.write(b)

    def close(self) -> None:
        self.f.close()
        if self.full:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def __getattr__(self, name):
        return getattr(self.f, name)


@pytest.mark.parametrize("suffix", [".safetensors", ".params", ".wts", ".npz"])
def test_disk_full_names_the_output_and_removes_the_temp_file(tmp_path, monkeypatch, suffix):
    """`error: : No space left on device` named nothing; and abort used to close the file
    first, which raised again, so the temp file stayed."""
    write_input(tmp_path)
    monkeypatch.chdir(tmp_path)
    # A cast makes every tensor pass through the sink's Python file (unchanged tensors are
    # copied by the kernel; the RLIMIT_FSIZE tests above cover that path on a real limit).
    (tmp_path / "cast.map").write_text("mapspec 1\n{k:**} -> {k} then cast(float64)\n")
    real_open = AtomicPath.open
    monkeypatch.setattr(AtomicPath, "open", lambda self, *a, **k: FullDisk(real_open(self, *a, **k), 100_000))
    result = CliRunner().invoke(app, ["apply", "cast.map", "in.safetensors", "-o", f"out/o{suffix}"])
    assert result.exit_code == 2, result.output
    assert result.output.strip() == f"error: out/o{suffix}: cannot write: No space left on device"
    assert list((tmp_path / "out").iterdir()) == []


def test_a_sink_failing_while_it_is_built_leaves_no_temp_file(tmp_path, monkeypatch):
    """The sink is built inside the guard: its constructor's partial output is removed too."""
    write_input(tmp_path)
    monkeypatch.chdir(tmp_path)
    real_open = AtomicPath.open
    monkeypatch.setattr(AtomicPath, "open", lambda self, *a, **k: FullDisk(real_open(self, *a, **k), 0))
    result = CliRunner().invoke(app, ["apply", "id.map", "in.safetensors", "-o", "out/o.params"])
    assert result.exit_code == 2
    assert list((tmp_path / "out").iterdir()) == []


# ---------------------------------------------------------------- signals

def _interrupt_mid_run(tmp_path: Path, sig: int, action=None, output: str = "out/o.wts",
                       spec: str = "id.map", extra: tuple[str, ...] = ()) -> tuple[int, str]:
    """Start a conversion, freeze it once its temp output exists, deliver `sig` (after
    `action`), let it run on, and return its exit code and stderr."""
    for tensors in (64, 256):  # a bigger input if the first finished before it could be caught
        write_input(tmp_path, tensors=tensors, side=512)
        (tmp_path / "cast.map").write_text("mapspec 1\n{k:**} -> {k} then cast(float64)\n")
        proc = cli(tmp_path, "apply", spec, "in.safetensors", "-o", output, *extra)
        out = tmp_path / "out"
        while proc.poll() is None and not any(p.name.endswith(".part") for p in out.iterdir()):
            time.sleep(0.001)
        if proc.poll() is None:
            proc.send_signal(signal.SIGSTOP)
            if action:
                action()
            proc.send_signal(sig)
            proc.send_signal(signal.SIGCONT)
            return finish(proc)
        finish(proc)
        for p in out.iterdir():
            p.unlink()
    pytest.fail("the conversion always finished before it could be interrupted")


@pytest.mark.parametrize("sig,code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_signal_mid_run_removes_the_temp_output(tmp_path, sig, code):
    rc, err = _interrupt_mid_run(tmp_path, sig)
    assert rc == code, err
    assert_one_error_line(err, "interrupted")
    assert list((tmp_path / "out").iterdir()) == []


@pytest.mark.parametrize("output, spec, extra", [
    ("out/o.pt", "id.map", ()), ("out/o.safetensors", "cast.map", ()),
    ("out/d", "id.map", ("--max-shard-size", "3MB", "--to", "torch"))], ids=["crc-worker", "read-ahead", "shard-lanes"])
def test_signal_while_a_worker_thread_is_busy_removes_the_temp_output(tmp_path, output, spec, extra):
    """Copied records' CRCs taken on a worker thread (.pt output), the next step's tensors
    read on one (1 MiB tensors cast), shards copied on two lanes: the signal still ends the
    run cleanly."""
    rc, err = _interrupt_mid_run(tmp_path, signal.SIGTERM, output=output, spec=spec, extra=extra)
    assert rc == 143, err
    assert_one_error_line(err, "interrupted")
    assert list((tmp_path / "out").iterdir()) == []


def test_signal_handlers_are_restored_after_the_run():
    before = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    with guarded_writes():
        assert signal.getsignal(signal.SIGTERM) is not before[signal.SIGTERM]
    assert {s: signal.getsignal(s) for s in before} == before


def test_input_truncated_while_it_is_read_is_an_error_not_a_crash(tmp_path):
    """Shrinking the input under a running conversion used to kill it with SIGBUS."""
    def truncate():
        with open(tmp_path / "in.safetensors", "r+b") as f:
            f.truncate(4096)
    rc, err = _interrupt_mid_run(tmp_path, signal.SIGCONT, truncate)
    assert rc == 2, err
    assert_one_error_line(err, "in.safetensors")
    assert list((tmp_path / "out").iterdir()) == []


# ---------------------------------------------------------------- concurrent writers

def _commit_two(final: Path, directory: bool) -> list:
    """Two writers prepare the same output; both pass any existence check, then commit."""
    results = []
    atomics = []
    for n in (1, 2):
        with guarded_writes(replace=False):
            a = AtomicPath(final, directory=directory)
        if directory:
            (a.tmp / "who").write_text(str(n))
        else:
            a.tmp.write_text(str(n))
        atomics.append(a)
    for a in atomics:
        try:
            a.commit()
            results.append("ok")
        except OutputError as exc:
            a.abort()
            results.append(str(exc))
    return results


@pytest.mark.parametrize("directory", [False, True], ids=["file", "directory"])
def test_commit_never_replaces_an_output_that_appeared_meanwhile(tmp_path, directory):
    final = tmp_path / ("o.oneflow" if directory else "o.safetensors")
    first, second = _commit_two(final, directory)
    assert first == "ok"
    assert "appeared while converting" in second and "--force" in second
    assert (final / "who" if directory else final).read_text() == "1"
    assert [p.name for p in tmp_path.iterdir()] == [final.name]


def test_force_replaces_files_and_folders(tmp_path):
    for directory, name in ((False, "o.safetensors"), (True, "o.oneflow")):
        final = tmp_path / name
        for n in (1, 2):
            with guarded_writes(replace=True):
                a = AtomicPath(final, directory=directory)
            (a.tmp / "who" if directory else a.tmp).write_text(str(n))
            a.commit()
        assert (final / "who" if directory else final).read_text() == "2"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.oneflow", "o.safetensors"]


def test_concurrent_apply_runs_to_one_output_exactly_one_wins(tmp_path):
    write_input(tmp_path, tensors=32)
    procs = [cli(tmp_path, "apply", "id.map", "in.safetensors", "-o", "out/o.safetensors") for _ in range(4)]
    results = [finish(p) for p in procs]
    codes = sorted(rc for rc, _ in results)
    assert codes == [0, 2, 2, 2], results
    for rc, err in results:
        if rc:
            assert_one_error_line(err, "out/o.safetensors")
            assert "--force" in err
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["o.safetensors"]


def test_guard_removes_temp_outputs_of_another_thread_only_in_its_own_scope(tmp_path):
    """Each run tracks its own temp outputs (thread-local): a failure in one thread's run
    does not remove another's."""
    other_ready, fail_now = threading.Event(), threading.Event()
    kept = {}

    def other():
        with guarded_writes():
            kept["a"] = AtomicPath(tmp_path / "other.safetensors")
            other_ready.set()
            fail_now.wait(10)
    t = threading.Thread(target=other)
    t.start()
    other_ready.wait(10)
    with pytest.raises(RuntimeError):
        with guarded_writes():
            mine = AtomicPath(tmp_path / "mine.safetensors")
            raise RuntimeError("boom")
    fail_now.set()
    t.join()
    assert mine.tmp is None and kept["a"].tmp.exists()
    kept["a"].abort()
