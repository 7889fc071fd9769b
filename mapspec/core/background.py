"""Work done on the second core: one thread per `Worker`, taking jobs in submission order,
and `in_parallel`, one piece of work split between this thread and a helper worker.

The jobs are the ones whose system calls and C loops release the GIL (reading a file range
with preadv, zlib.crc32 over it, the kernels' loops), so they run beside the main thread's
copying and writing rather than between them. A worker's thread starts when a job arrives
and ends LINGER seconds after the last one (a thread started for every step and every
kernel call cost a conversion of 400 steps half a second here), so no thread outlives a
conversion by more than that. A job's error is raised where its result is taken, on the
thread that takes it, so it follows the normal error path there."""

from __future__ import annotations

import os
import threading
from collections import deque
from typing import Any, Callable, Generic, Iterable, TypeVar

T = TypeVar("T")


class Job(Generic[T]):
    """`fn(job)` to be run by a worker; `fn` may look at `job.cancelled` to stop early."""

    def __init__(self, fn: Callable[["Job[T]"], T]):
        self.fn = fn
        self.cancelled = False
        self._value: Any = None
        self._error: BaseException | None = None
        self._done = threading.Event()

    def run(self) -> None:
        try:
            if not self.cancelled:
                self._value = self.fn(self)
        except BaseException as exc:  # handed to whoever takes the result
            self._error = exc
        finally:
            self._done.set()

    def done(self) -> bool:
        return self._done.is_set()

    def result(self) -> T:
        """The job's value once it has run (waiting for it); its error, raised here."""
        self._done.wait()
        if self._error is not None:
            raise self._error
        return self._value


THREADS = min(2, os.cpu_count() or 1)  # threads `in_parallel` computes on: the cores that pay
LINGER = 0.25  # seconds a worker's idle thread waits for the next job before it ends


class Worker:
    def __init__(self, name: str, linger: float = LINGER):
        self.name = name
        self.linger = linger
        self._lock = threading.Lock()
        self._arrived = threading.Condition(self._lock)
        self._queue: deque[Job] = deque()
        self._running = False

    def submit(self, job: Job) -> Job:
        with self._lock:
            self._queue.append(job)
            if not self._running:
                self._running = True
                threading.Thread(target=self._work, name=self.name, daemon=True).start()
            else:
                self._arrived.notify()
        return job

    def cancel(self, jobs: Iterable[Job]) -> None:
        """Drop `jobs`: those not started never run, a running one is asked to stop; returns
        once none of them is running (so the files they read may be closed)."""
        jobs = list(jobs)
        with self._lock:
            for job in jobs:
                job.cancelled = True
                try:
                    self._queue.remove(job)
                except ValueError:  # running, or done
                    continue
                job._done.set()
        for job in jobs:
            job._done.wait()

    def _work(self) -> None:
        while True:
            with self._lock:
                if not self._queue:
                    self._arrived.wait(self.linger)
                if not self._queue:
                    self._running = False
                    return
                job = self._queue.popleft()
            job.run()


_END = object()
_helpers: list[Worker] = []  # in_parallel's workers, made on first use
_lock = threading.Lock()


def in_parallel(jobs: Iterable[T], work: Callable[[T], Any]) -> None:
    """`work(job)` for every job, on this thread and up to THREADS - 1 helper workers, each
    taking the next job when it is free; once every thread has stopped, the error of the
    earliest failing job is raised here, the one a pass in order would meet (every job
    before it was taken, so ran). For work that releases the GIL (numpy's and the C
    kernels' loops, preadv), so two jobs run at once on two cores."""
    jobs = list(jobs)
    helpers = min(THREADS, len(jobs)) - 1
    if helpers <= 0:
        for job in jobs:
            work(job)
        return
    lock, queue = threading.Lock(), iter(enumerate(jobs))
    failed: list[tuple[int, BaseException]] = []

    def drain(_: Job | None = None) -> None:
        while not failed:
            with lock:
                taken = next(queue, _END)
            if taken is _END:
                return
            try:
                work(taken[1])
            except BaseException as exc:
                failed.append((taken[0], exc))

    with _lock:
        while len(_helpers) < helpers:
            _helpers.append(Worker(f"mapspec-helper-{len(_helpers) + 1}"))
    running = [_helpers[i].submit(Job(drain)) for i in range(helpers)]
    try:
        drain()
    finally:  # a helper's job still queued behind other work is dropped: nothing is left for it
        for worker, job in zip(_helpers, running):
            worker.cancel([job])
    if failed:
        raise min(failed, key=lambda f: f[0])[1]
