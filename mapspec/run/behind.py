"""Writing a step's result while the next step computes.

Handing an array to a sink is a copy into the page cache: system time, on this project's
2-core machine about as long as computing it (an FP8 quantize). Made by the main thread,
it stalls the next step; made by a worker thread, it runs on the other core while the next
step computes (paired runs: 0.8-0.9x the time of FP8 and MXFP4 conversions).

`WriteBehind` stands in front of the sink for `execute`. `write` and `write_rows` are queued
on one worker, in order; every other call (a kernel copy that must say whether the sink took
it, the commit) waits for the queue first, so the sink still sees one call at a time, in
plan order, and needs no locks. The arrays waiting hold WRITE_BEHIND_BYTES at most together
(`Plan.peak_step` counts them); a larger array is written before `write` returns. An error
of a queued write is raised by the next call. The executor's results are its own, so an
array handed over is never changed while it waits."""

from __future__ import annotations

from collections import deque

from ..core.background import WRITE_BEHIND_BYTES, Job, Worker

write_worker = Worker("mapspec-write-behind")


class WriteBehind:
    def __init__(self, sink, worker: Worker = write_worker):
        self.sink = sink
        self.worker = worker
        self.pending: deque[tuple[Job, int]] = deque()  # queued writes and their bytes, oldest first
        self.held = 0

    def write(self, name: str, array) -> None:
        self._queue(array, lambda a: self.sink.write(name, a))

    def write_rows(self, name: str, start: int, array) -> None:
        self._queue(array, lambda a: self.sink.write_rows(name, start, a))

    def write_region(self, name: str, extent) -> bool:
        self.drain()
        return self.sink.write_region(name, extent)

    def _queue(self, array, write) -> None:
        nbytes = array.nbytes
        while self.pending and (self.pending[0][0].done() or self.held + nbytes > WRITE_BEHIND_BYTES):
            self._finish_oldest()
        box = [array]  # the job lets go of the array once it is written
        del array
        job = self.worker.submit(Job(lambda job: write(box.pop())))
        self.pending.append((job, nbytes))
        self.held += nbytes
        if nbytes > WRITE_BEHIND_BYTES:  # too large to keep beside the next step
            self.drain()

    def _finish_oldest(self) -> None:
        job, nbytes = self.pending.popleft()
        self.held -= nbytes
        job.result()  # a failed write raises here

    def drain(self) -> None:
        """Wait for every queued write; the first failure is raised."""
        while self.pending:
            self._finish_oldest()

    def cancel(self) -> None:
        """Drop the writes not started and wait for a running one (after a failure, before
        the sink removes its files)."""
        self.worker.cancel([job for job, _ in self.pending])
        self.pending.clear()
        self.held = 0

    def __getattr__(self, name: str):  # takes_rows and the like: questions, not writes
        return getattr(self.sink, name)
