"""The second core: a worker takes jobs in order on one thread that lives only while there
is work; errors are raised where results are taken; cancelled jobs never run."""

from __future__ import annotations

import threading

import pytest

from mapspec.background import Job, Worker
from mapspec.errors import CheckpointError


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
