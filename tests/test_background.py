"""The second core: a worker takes jobs in order on one thread that lives only while there
is work (and a moment after); errors are raised where results are taken; cancelled jobs
never run; `in_parallel` splits work between this thread and a helper. And the
executor built on it: while a step runs, the next step's inputs are read by the worker,
never more than one step ahead, with the same results and the same error path."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from mapspec import TensorInfo, apply, compile_spec, parse_spec
from mapspec.run import executor
from mapspec.core import background
from mapspec.core.background import Job, Worker, in_parallel
from mapspec.errors import CheckpointError
from mapspec.formats import open_sink, open_source

from conftest import write_safetensors


def wait_until_idle(worker: Worker) -> None:
    for t in threading.enumerate():
        if t.name == worker.name:
            t.join(10)
            assert not t.is_alive()


def test_jobs_run_in_order_on_one_thread_that_ends_with_the_work():
    worker = Worker("test-worker")
    seen = []
    jobs = [worker.submit(Job(lambda job, i=i: seen.append((i, threading.current_thread().name)) or i * i))
            for i in range(5)]
    assert [j.result() for j in jobs] == [0, 1, 4, 9, 16]
    assert seen == [(i, "test-worker") for i in range(5)]
    wait_until_idle(worker)
    assert worker.submit(Job(lambda job: "again")).result() == "again"  # a new thread for new work


def test_an_error_is_raised_where_the_result_is_taken():
    worker = Worker("test-worker")

    def fail(job):
        raise CheckpointError("x.safetensors: truncated")

    job = worker.submit(Job(fail))
    with pytest.raises(CheckpointError, match="truncated"):
        job.result()
    assert worker.submit(Job(lambda job: 1)).result() == 1  # the worker goes on


def test_cancel_drops_queued_jobs_and_stops_the_running_one():
    worker = Worker("test-worker")
    running = threading.Event()
    ran = []

    def long(job):
        running.set()
        while not job.cancelled:
            threading.Event().wait(0.005)
        ran.append("long")

    first = worker.submit(Job(long))
    queued = [worker.submit(Job(lambda job, i=i: ran.append(i))) for i in range(3)]
    assert running.wait(10)
    worker.cancel([first, *queued])  # returns once `long` has stopped
    assert ran == ["long"]
    wait_until_idle(worker)


def test_a_worker_keeps_its_thread_for_work_that_comes_soon_and_ends_it_after():
    worker = Worker("test-worker", linger=5)
    first = worker.submit(Job(lambda job: threading.get_ident())).result()
    assert worker.submit(Job(lambda job: threading.get_ident())).result() == first  # no new thread
    quick = Worker("test-quick", linger=0)
    quick.submit(Job(lambda job: None)).result()
    wait_until_idle(quick)
    worker.linger = 0
    worker.submit(Job(lambda job: None)).result()
    wait_until_idle(worker)


def test_in_parallel_runs_every_job_once_on_this_thread_and_the_helpers():
    seen, lock = [], threading.Lock()

    def work(i):
        threading.Event().wait(0.001)
        with lock:
            seen.append((i, threading.current_thread().name))

    in_parallel(range(40), work)
    assert sorted(i for i, _ in seen) == list(range(40))
    threads = {name for _, name in seen}
    assert threading.current_thread().name in threads and len(threads) <= background.THREADS


def test_in_parallel_raises_the_first_error_once_every_thread_has_stopped():
    started, lock = [], threading.Lock()

    def work(i):
        with lock:
            started.append(i)
        if i == 3:
            raise CheckpointError(f"job {i} failed")
        threading.Event().wait(0.002)

    with pytest.raises(CheckpointError, match="job 3 failed"):
        in_parallel(range(100), work)
    n = len(started)
    threading.Event().wait(0.05)
    assert len(started) == n < 100  # nothing runs after it returns, and the rest were dropped


def test_in_parallel_raises_the_error_a_pass_in_order_meets_first(monkeypatch):
    """Job 1 fails slowly, job 2 at once, on the other thread: job 1's error is raised, as
    when the jobs run one after another (chunks of a quantize report the first bad chunk)."""
    monkeypatch.setattr(background, "THREADS", 2)
    job_2_failed = threading.Event()

    def work(i):
        if i == 1:
            job_2_failed.wait(5)
            raise CheckpointError("job 1 failed")
        if i == 2:
            job_2_failed.set()
            raise CheckpointError("job 2 failed")

    for _ in range(5):
        job_2_failed.clear()
        with pytest.raises(CheckpointError, match="job 1 failed"):
            in_parallel(range(4), work)


@pytest.mark.parametrize("threads", [1, 2, 4])
def test_in_parallel_nested_and_from_two_threads_at_once_finishes(monkeypatch, threads):
    """Callers share the helpers: a caller whose helper is busy does its jobs itself."""
    monkeypatch.setattr(background, "THREADS", threads)
    total, lock = [0], threading.Lock()

    def inner(i):
        with lock:
            total[0] += i

    def outer(i):
        in_parallel(range(10), inner)

    worker = Worker("test-worker")
    other = worker.submit(Job(lambda job: in_parallel(range(20), outer)))
    in_parallel(range(20), outer)
    other.result()
    assert total[0] == 2 * 20 * 45


# ---------------------------------------------------------------- read-ahead

MiB = 1 << 20


class Recording:
    """A source and a sink that log, in one list, every read (with its thread) and write."""

    def __init__(self, inner):
        self.inner, self.log = inner, []
        self.lock = threading.Lock()

    def infos(self):
        return self.inner.infos()

    def read(self, key):
        with self.lock:
            self.log.append(("read", key, threading.current_thread().name))
        return self.inner.read(key)

    def extent(self, key):
        return None  # every tensor through numpy

    def release(self, key):
        pass

    def write(self, name, array):
        with self.lock:
            self.log.append(("write", name, threading.current_thread().name))

    def write_region(self, name, extent):  # pragma: no cover - extent() offers none
        return False


def test_the_next_steps_inputs_are_read_on_the_worker_one_step_ahead_and_no_further(tmp_path):
    arrays = {f"t{i}": np.full(MiB // 4, i, np.float32) for i in range(6)}  # 1 MiB each: read ahead
    arrays["small"] = np.ones(3, np.float32)  # below READ_AHEAD_BYTES: read when its step runs
    source = open_source(write_safetensors(tmp_path / "in.safetensors", arrays))
    (tmp_path / "s.map").write_text("mapspec 1\nt{i:int} -> u{i} then cast(float16)\nsmall -> small\n")
    plan = compile_spec(parse_spec(tmp_path / "s.map"), source.infos())
    rec = Recording(source)
    executor.execute(plan, rec, rec)
    source.close()
    order = [s.output for s in plan.steps]
    written = 0
    for kind, name, thread in rec.log:
        if kind == "write":
            assert name == order[written]
            written += 1
            continue
        step = next(i for i, s in enumerate(plan.steps) if name in s.inputs)
        assert step <= written + 1, f"{name} (step {step}) read with only {written} steps written"
        big = plan.steps[step].input_infos[0].nbytes >= executor.READ_AHEAD_BYTES
        assert thread == ("mapspec-read-ahead" if big and step > 0 else "MainThread"), (name, thread)
    assert written == len(order)


@pytest.mark.parametrize("fmt, suffix", [("safetensors", ".safetensors"), ("torch", ".pt"), ("mxnet", ".params"),
                                         ("npz", ".npz"), ("oneflow", ".oneflow"), ("wts", ".wts")])
def test_read_ahead_gives_the_same_results_from_every_source_format(tmp_path, monkeypatch, fmt, suffix):
    """Every tensor read ahead (threshold 0), cast, split and concatenated on the way."""
    monkeypatch.setattr(executor, "READ_AHEAD_BYTES", 0)
    rng = np.random.default_rng(5)
    arrays = {f"l{i}.{m}": rng.standard_normal(600).astype(np.float32) for i in range(4) for m in ("up", "gate")}
    sink = open_sink(tmp_path / f"in{suffix}", fmt, {k: TensorInfo(a.shape, "float32") for k, a in arrays.items()})
    for k, a in arrays.items():
        sink.write(k, a)
    sink.commit()
    (tmp_path / "s.map").write_text("mapspec 1\nl{i:int}.{m:up|gate} -> l{i}.up_gate then concat(0)\n")
    apply(tmp_path / "s.map", tmp_path / f"in{suffix}", tmp_path / "out.safetensors")
    out = open_source(tmp_path / "out.safetensors")
    for i in range(4):
        np.testing.assert_array_equal(out.read(f"l{i}.up_gate"), np.concatenate([arrays[f"l{i}.up"],
                                                                                 arrays[f"l{i}.gate"]]))
    out.close()


def test_a_read_failing_ahead_is_the_normal_error_and_leaves_nothing(tmp_path, monkeypatch):
    """The worker's read of the next step fails (the source truncated under the run): the
    run ends with that CheckpointError once it reaches the step, and writes nothing."""
    monkeypatch.setattr(executor, "READ_AHEAD_BYTES", 0)
    path = write_safetensors(tmp_path / "in.safetensors", {f"t{i}": np.full(64, i, np.float32) for i in range(4)})
    (tmp_path / "s.map").write_text("mapspec 1\nt{i:int} -> u{i} then cast(float16)\n")
    from mapspec.formats import safetensors

    real = safetensors.SafetensorsSource.read

    def read(self, key):
        if key == "t2":
            assert threading.current_thread().name == "mapspec-read-ahead"
            raise CheckpointError(f"{path}: the file ended at byte 99 while reading tensor 't2'")
        return real(self, key)

    monkeypatch.setattr(safetensors.SafetensorsSource, "read", read)
    (tmp_path / "out").mkdir()
    with pytest.raises(CheckpointError, match="ended at byte 99"):
        apply(tmp_path / "s.map", path, tmp_path / "out" / "o.safetensors")
    assert list((tmp_path / "out").iterdir()) == []


def test_the_expected_peak_counts_the_step_read_ahead(tmp_path):
    spec = tmp_path / "s.map"
    spec.write_text("mapspec 1\na -> a then cast(float16)\nb -> b then cast(float16)\n")
    infos = {"a": TensorInfo((MiB,), "float32"), "b": TensorInfo((MiB // 4,), "float32")}  # 4 MiB, 1 MiB
    n, step = compile_spec(parse_spec(spec), infos).peak_step()
    assert (n, step.output) == (4 * MiB + 2 * 2 * MiB + MiB, "a")  # a's inputs, result, one intermediate, + b's
    infos["b"] = TensorInfo((MiB // 4 - 1,), "float32")  # under READ_AHEAD_BYTES: read when its step runs
    n, step = compile_spec(parse_spec(spec), infos).peak_step()
    assert (n, step.output) == (4 * MiB + 2 * 2 * MiB, "a")


# ---------------------------------------------------------------- shards side by side

@pytest.mark.parametrize("fmt, cls", [("safetensors", "SafetensorsSink"), ("torch", "TorchSink")])
@pytest.mark.parametrize("queued", [256, 1], ids=["queue", "one-queued"])
def test_shards_are_copied_on_two_lanes_each_shard_in_plan_order(tmp_path, monkeypatch, fmt, cls, queued):
    """Also with at most one copy queued (MAX_QUEUED, which bounds the memory queued copies take)."""
    import importlib

    from mapspec.formats import sharded

    monkeypatch.setattr(sharded, "MAX_QUEUED", queued)
    module = importlib.import_module(f"mapspec.formats.{fmt}")
    seen = []
    real = getattr(module, cls).write_region

    def write_region(self, name, extent):
        seen.append((self.atomic.tmp.name, name, threading.current_thread().name))
        return real(self, name, extent)

    monkeypatch.setattr(getattr(module, cls), "write_region", write_region)
    arrays = {f"t{i}": np.full(1000, i, np.float32) for i in range(10)}
    arrays["small"] = np.arange(5, dtype=np.float32)  # cast: through numpy, written on this thread
    write_safetensors(tmp_path / "in.safetensors", arrays)
    (tmp_path / "s.map").write_text("mapspec 1\nt{i:int} -> u{i}\nsmall -> small then cast(float64)\n")
    apply(tmp_path / "s.map", tmp_path / "in.safetensors", tmp_path / "out", max_shard_size=8000, to=fmt)
    shards = sorted({shard for shard, _, _ in seen})
    assert len(shards) >= 3
    for k, shard in enumerate(shards):  # shard k on lane k % 2, its records in plan order
        mine = [(name, thread) for s, name, thread in seen if s == shard]
        assert {thread for _, thread in mine} == {f"mapspec-shards-{k % 2}"}
        assert [n for n, _ in mine] == sorted((n for n, _ in mine), key=lambda n: int(n[1:]))
    out = open_source(tmp_path / "out")
    for k, a in arrays.items():
        np.testing.assert_array_equal(out.read(k.replace("t", "u") if k.startswith("t") else k), a)
    out.close()


def test_a_copy_failing_on_a_lane_is_the_normal_error_and_leaves_nothing(tmp_path, monkeypatch):
    import errno

    from typer.testing import CliRunner

    from mapspec.cli import app
    from mapspec.formats import safetensors

    real = safetensors.SafetensorsSink.write_region

    def write_region(self, name, extent):
        if name == "u7":
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, name, extent)

    monkeypatch.setattr(safetensors.SafetensorsSink, "write_region", write_region)
    write_safetensors(tmp_path / "in.safetensors", {f"t{i}": np.full(1000, i, np.float32) for i in range(10)})
    (tmp_path / "s.map").write_text("mapspec 1\nt{i:int} -> u{i}\n")
    (tmp_path / "out").mkdir()
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["apply", "s.map", "in.safetensors", "-o", "out/d", "--max-shard-size", "8000"])
    assert result.exit_code == 2, result.output
    assert result.output.strip() == "error: out/d: cannot write: No space left on device"
    assert list((tmp_path / "out").iterdir()) == []
    for name in ("mapspec-shards-0", "mapspec-shards-1"):
        wait_until_idle(Worker(name))


def test_a_copied_tensors_pages_are_not_dropped_while_its_copy_may_be_queued(tmp_path, monkeypatch):
    """Copies run on the shards' lanes, later than the executor hands them over: releasing
    their source pages (fadvise DONTNEED) then would make each copy read the disk again.
    Tensors computed here are released after their last use, as before."""
    from mapspec.formats import safetensors

    released = []
    monkeypatch.setattr(safetensors.SafetensorsSource, "release", lambda self, key: released.append(key))
    arrays = {f"t{i}": np.full(1000, i, np.float32) for i in range(6)}
    arrays["c"] = np.arange(4000, dtype=np.float32)
    write_safetensors(tmp_path / "in.safetensors", arrays)
    (tmp_path / "s.map").write_text("mapspec 1\nt{i:int} -> u{i}\nc -> c then cast(float16)\n")
    apply(tmp_path / "s.map", tmp_path / "in.safetensors", tmp_path / "out", max_shard_size=8000)
    assert released == ["c"]
