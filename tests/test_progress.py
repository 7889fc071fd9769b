"""Progress tells the truth: it counts bytes the sinks have written, never bytes merely
queued (a sharded output queues up to 256 copies on its two lanes), with a rate and an
estimate of the time left, for every kind of conversion (core/progress.py).

The sinks here are the real ones (safetensors, torch, sharded) wrapped in a recorder that
counts the bytes each write has finished writing; every progress event is checked against
that count at the moment it is heard."""

from __future__ import annotations

import dataclasses
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import mapspec
from mapspec.core.progress import Progress
from mapspec.compile.plan import compile_spec
from mapspec.formats import by_name, open_sink, open_source
from mapspec.formats.sharded import MAX_QUEUED, ShardedSink
from mapspec.run.executor import execute

from conftest import write_safetensors

IDENTITY = "mapspec 1\n{k:**} -> {k}\n"


class Recorder:
    """A real sink, counting the bytes of every write once it has returned (a lane's copy
    included): the truth progress must never run ahead of. `delay` slows each copy, so a
    queue in front of it would run far ahead."""

    def __init__(self, sink, ledger: "Ledger", delay: float = 0.0):
        self.sink, self.ledger, self.delay = sink, ledger, delay

    def write(self, name, array):
        self.sink.write(name, array)
        self.ledger.add(array.nbytes)

    def write_region(self, name, extent):
        time.sleep(self.delay)
        taken = self.sink.write_region(name, extent)
        if taken:
            self.ledger.add(extent.nbytes)
        return taken

    def commit(self):
        self.sink.commit()

    def abort(self):
        self.sink.abort()


class Ledger:
    def __init__(self):
        self.written = 0
        self.lock = threading.Lock()
        self.events: list[tuple[int, int]] = []  # (progress heard, bytes written by then)

    def add(self, n):
        with self.lock:
            self.written += n

    def heard(self, done, total):
        with self.lock:
            self.events.append((done, self.written))


def checkpoint(folder: Path, n: int = 300) -> Path:
    """`n` tensors of assorted sizes (4 B to 64 KiB)."""
    rng = np.random.default_rng(0)
    return write_safetensors(folder / "in.safetensors",
                             {f"layers.{i}.w": rng.standard_normal((i % 16 + 1, 2 ** (i % 11))).astype(np.float32)
                              for i in range(n)})


def _plan(src: Path, spec_text: str = IDENTITY):
    source = open_source(src)
    spec = mapspec.parse_spec(text=spec_text)
    return source, compile_spec(spec, source.infos())


def _check_truthful(ledger: Ledger, total: int) -> None:
    assert ledger.events, "no progress was reported"
    assert all(done <= written for done, written in ledger.events), \
        next((d, w) for d, w in ledger.events if d > w)
    dones = [d for d, _ in ledger.events]
    assert dones == sorted(dones) and dones[-1] == total == ledger.written


@pytest.mark.parametrize("fmt, spec", [("safetensors", IDENTITY),  # file-to-file copies
                                       ("torch", IDENTITY),
                                       ("safetensors", "mapspec 1\n{k:**} -> {k} then cast(float16)\n")])  # numpy
def test_progress_never_runs_ahead_of_the_bytes_written(tmp_path, fmt, spec):
    source, plan = _plan(checkpoint(tmp_path), spec)
    total = sum(s.info.nbytes for s in plan.steps)
    ledger = Ledger()
    sink = Recorder(open_sink(tmp_path / f"o.{fmt}", fmt, plan.outputs()), ledger)
    try:
        execute(plan, source, sink, Progress(total, ledger.heard))
        sink.commit()
    finally:
        source.close()
    _check_truthful(ledger, total)
    assert len(ledger.events) == len(plan.steps)


def test_sharded_progress_counts_copies_when_the_lanes_finish_them_not_when_queued(tmp_path):
    """The two-lane path: copies are queued up to MAX_QUEUED ahead; each is slowed here, so
    counting at the queue would report most of the output written while little of it is."""
    source, plan = _plan(checkpoint(tmp_path, n=2 * MAX_QUEUED))
    total = sum(s.info.nbytes for s in plan.steps)
    ledger = Ledger()
    real = by_name("safetensors")
    recording = dataclasses.replace(
        real, sink=lambda path, outputs, metadata=None, copied_from=None: Recorder(
            real.open_sink(path, outputs, metadata, copied_from), ledger, delay=0.002))
    sink = ShardedSink(tmp_path / "out", recording, plan.outputs(), total // 5)
    heard_at_end_of_queueing = []
    try:
        meter = Progress(total, ledger.heard)
        execute(plan, source, sink, meter)
        heard_at_end_of_queueing.append(meter.done)  # execute returns once every copy is queued
        sink.commit()
    finally:
        source.close()
    _check_truthful(ledger, total)
    assert len(sink.files) >= 5
    assert heard_at_end_of_queueing[0] < total  # the lanes were still copying: not all was reported
    loaded = open_source(tmp_path / "out")
    assert sorted(loaded.infos()) == sorted(plan.outputs())


def test_apply_reports_progress_for_a_sharded_reverse_and_plain_conversion(tmp_path):
    src = checkpoint(tmp_path)
    (tmp_path / "s.map").write_text("mapspec 1\nlayers.{i:int}.w -> blocks.{i}.weight\n")
    total = sum(i.nbytes for i in open_source(src).infos().values())
    for name, kwargs in (("plain.safetensors", {}), ("sharded", {"max_shard_size": "100KB"})):
        heard = []
        mapspec.apply(tmp_path / "s.map", src, tmp_path / name, progress=lambda d, t: heard.append((d, t)), **kwargs)
        assert heard[-1] == (total, total) and all(a[0] < b[0] for a, b in zip(heard, heard[1:]))
    heard = []
    mapspec.apply(tmp_path / "s.map", tmp_path / "plain.safetensors", tmp_path / "back.safetensors", reverse=True,
                  progress=lambda d, t: heard.append((d, t)))
    assert heard[-1] == (total, total)


def test_rate_and_time_left_follow_the_last_seconds_of_writes():
    now = [100.0]
    meter = Progress(1000, clock=lambda: now[0])
    assert meter.rate() == 0 and meter.eta() is None
    for _ in range(4):  # 100 bytes a second
        now[0] += 1
        meter.add(100)
    assert meter.rate() == pytest.approx(100) and meter.eta() == pytest.approx(6)
    for _ in range(10):  # then 10 bytes a second: the rate follows within RATE_WINDOW seconds
        now[0] += 1
        meter.add(10)
    assert meter.rate() == pytest.approx(10) and meter.eta() == pytest.approx(50)


def test_reports_from_many_threads_are_heard_in_order(tmp_path):
    heard = []
    meter = Progress(8 * 1000 * 3, lambda d, t: heard.append(d))
    threads = [threading.Thread(target=lambda: [meter.add(3) for _ in range(1000)]) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert heard == sorted(heard) and heard[-1] == meter.done == meter.total and len(heard) == 8000
