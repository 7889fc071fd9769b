"""Progress that tells the truth: bytes of the output actually written, as the sinks report
them, with a rate and an estimate of the time left.

A sink reports bytes once they are written (handed to the kernel: `write`, `pwrite`,
`copy_file_range` returned), not when they are queued: a sharded output queues up to 256
copies on its lanes, so counting at the queue would run ahead of the disk by gigabytes.
`Progress.add` may be called from any thread (the shard lanes, a remote upload's workers);
the listener hears every report in order, `done` never decreasing, under one lock.

Sinks written synchronously (each `write`/`write_region` returns when its bytes are
written) need do nothing: `metered(sink, progress)` reports for them. A sink that finishes
its writes later (on worker threads, remotely) sets `reports_progress = True` and calls
its `progress` attribute itself with the bytes each finished write took."""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import Callable

Listener = Callable[[int, int], None]  # (bytes done, bytes in all)
RATE_WINDOW = 5.0  # seconds of reports the rate is measured over


class Progress:
    """A thread-safe count of bytes written out of `total`."""

    def __init__(self, total: int, listener: Listener | None = None, clock: Callable[[], float] = time.monotonic):
        self.total = total
        self.done = 0
        self._listener = listener
        self._clock = clock
        self._lock = threading.Lock()
        self.started = clock()
        self._samples: deque[tuple[float, int]] = deque([(self.started, 0)])

    def add(self, nbytes: int) -> None:
        """`nbytes` more are written."""
        if nbytes <= 0:
            return
        with self._lock:
            self.done += nbytes
            now = self._clock()
            self._samples.append((now, self.done))
            while len(self._samples) > 2 and now - self._samples[1][0] >= RATE_WINDOW:
                self._samples.popleft()
            if self._listener is not None:
                self._listener(self.done, self.total)

    def rate(self) -> float:
        """Bytes per second over the last RATE_WINDOW seconds of reports (0 before any)."""
        with self._lock:
            (t0, d0), (t1, d1) = self._samples[0], self._samples[-1]
        return (d1 - d0) / (t1 - t0) if t1 > t0 else 0.0

    def eta(self) -> float | None:
        """Seconds left at the current rate; None until there is a rate."""
        rate = self.rate()
        return max(0, self.total - self.done) / rate if rate > 0 else None


class Metered:
    """`sink` seen through `progress`: writes that return written are counted here; a sink
    with `reports_progress` counts its own (it is given `progress.add`)."""

    def __init__(self, sink, progress: Progress):
        self.sink = sink
        self.own = bool(getattr(sink, "reports_progress", False))
        if self.own:
            sink.progress = progress.add
        self._add = progress.add

    def write(self, name: str, array) -> None:
        self.sink.write(name, array)
        if not self.own:
            self._add(array.nbytes)

    def write_rows(self, name: str, start: int, array) -> None:
        self.sink.write_rows(name, start, array)
        if not self.own:
            self._add(array.nbytes)

    def write_region(self, name: str, extent) -> bool:
        taken = self.sink.write_region(name, extent)
        if taken and not self.own:
            self._add(extent.nbytes)
        return taken

    def __getattr__(self, name: str):
        return getattr(self.sink, name)


def metered(sink, progress: Progress | None):
    """`sink` reporting to `progress` (itself, when there is no progress to report)."""
    return sink if progress is None else Metered(sink, progress)
