"""Work done on the second core: one thread per `Worker`, taking jobs in submission order.

The jobs are the ones whose system calls and C loops release the GIL (reading a file range
with preadv, zlib.crc32 over it), so they run beside the main thread's copying and writing
rather than between them. A worker's thread starts when a job arrives and ends when none is
left, so no thread outlives a conversion. A job's error is raised where its result is taken,
on the thread that takes it, so it follows the normal error path there."""

from __future__ import annotations

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


class Worker:
    def __init__(self, name: str):
        self.name = name
        self._lock = threading.Lock()
        self._queue: deque[Job] = deque()
        self._running = False

    def submit(self, job: Job) -> Job:
        with self._lock:
            self._queue.append(job)
            if not self._running:
                self._running = True
                threading.Thread(target=self._work, name=self.name, daemon=True).start()
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
                    self._running = False
                    return
                job = self._queue.popleft()
            job.run()
