"""Writes made behind the next step (run/behind.py): the sink sees every call in plan order,
one at a time; the arrays waiting stay within WRITE_BEHIND_BYTES; a failed write is raised
by the next call and leaves no output; a cancelled run waits for the write in flight."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from mapspec import TensorInfo
from mapspec.core.background import WRITE_BEHIND_BYTES, Worker
from mapspec.formats import open_sink
from mapspec.run.behind import WriteBehind


class Recorder:
    """A sink that records its calls, slowly, and notes any two that overlap."""

    def __init__(self, delay: float = 0.0, fail_on: str | None = None):
        self.calls: list[tuple] = []
        self.delay, self.fail_on = delay, fail_on
        self.busy = threading.Lock()
        self.overlapped = False

    def _enter(self, call: tuple) -> None:
        if not self.busy.acquire(blocking=False):
            self.overlapped = True
            self.busy.acquire()
        try:
            time.sleep(self.delay)
            if call[1] == self.fail_on:
                raise OSError(28, "No space left on device")
            self.calls.append(call)
        finally:
            self.busy.release()

    def write(self, name, array):
        self._enter(("write", name, int(array[0])))

    def write_rows(self, name, start, array):
        self._enter(("rows", name, start))

    def write_region(self, name, extent):
        self._enter(("copy", name, extent))
        return True

    def takes_rows(self, name):
        return True


def test_the_sink_sees_every_call_in_order_one_at_a_time():
    sink = Recorder(delay=0.002)
    behind = WriteBehind(sink, Worker("test-behind"))
    for i in range(20):
        if i % 5 == 4:
            assert behind.write_region(f"c{i}", "extent") is True
        elif i % 3 == 0:
            behind.write_rows(f"r{i}", i, np.full(4, i))
        else:
            behind.write(f"w{i}", np.full(4, i))
    assert behind.takes_rows("x")  # questions go straight to the sink
    behind.drain()
    assert [c[1] for c in sink.calls] == [f"{'c' if i % 5 == 4 else 'r' if i % 3 == 0 else 'w'}{i}" for i in range(20)]
    assert not sink.overlapped


def test_waiting_arrays_stay_within_the_bound_and_larger_ones_are_written_at_once():
    sink = Recorder(delay=0.01)
    behind = WriteBehind(sink, Worker("test-behind"))
    quarter = np.zeros(WRITE_BEHIND_BYTES // 4, np.uint8)
    for i in range(12):
        behind.write(f"w{i}", quarter)
        assert behind.held <= WRITE_BEHIND_BYTES
    big = np.zeros(WRITE_BEHIND_BYTES + 1, np.uint8)
    behind.write("big", big)
    assert behind.held == 0 and not behind.pending and sink.calls[-1][1] == "big"


def test_a_failed_write_is_raised_by_the_next_call():
    sink = Recorder(fail_on="w1")
    behind = WriteBehind(sink, Worker("test-behind"))
    behind.write("w0", np.zeros(4))
    behind.write("w1", np.zeros(4))
    with pytest.raises(OSError, match="No space left"):
        behind.write_region("c2", "extent")  # waits for the queue, which failed
    assert [c[1] for c in sink.calls] == ["w0"]


def test_cancel_drops_queued_writes_and_waits_for_the_running_one():
    sink = Recorder(delay=0.05)
    behind = WriteBehind(sink, Worker("test-behind"))
    for i in range(5):
        behind.write(f"w{i}", np.zeros(4))
    behind.cancel()
    done = len(sink.calls)
    time.sleep(0.2)
    assert len(sink.calls) == done < 5  # nothing ran after cancel returned
    assert not behind.pending and behind.held == 0


def test_a_conversion_whose_write_fails_leaves_no_output(tmp_path, monkeypatch):
    """End to end: the error of a write made behind stops the run, and the output's
    temporary file is removed (the write in flight ended before the sink aborted)."""
    from mapspec.api import apply

    infos = {f"t{i}": TensorInfo((1024,), "float32") for i in range(8)}
    src = open_sink(tmp_path / "in.safetensors", "safetensors", infos)
    for k in infos:
        src.write(k, np.ones(1024, np.float32))
    src.commit()
    (tmp_path / "s.map").write_text("mapspec 1\nt{i:int} -> u{i} then cast(float16)\n")
    from mapspec.formats import placement

    real = placement.OffsetSink.write

    def failing(self, name, array):
        if name == "u5":
            raise OSError(28, "No space left on device")
        real(self, name, array)

    monkeypatch.setattr(placement.OffsetSink, "write", failing)
    with pytest.raises(Exception, match="No space left"):
        apply(tmp_path / "s.map", tmp_path / "in.safetensors", tmp_path / "out.safetensors")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.safetensors", "s.map"]
