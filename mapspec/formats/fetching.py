"""Requests to object stores: how many at once (`--concurrency`, one thread pool per
width), which failures are worth sending again (resets, timeouts, 5xx, throttling; with
backoff), and the one-line error naming the object when retrying cannot help. Shared by the
readers (`remote`, `streams`) and the writer (`objects`)."""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from concurrent.futures import ThreadPoolExecutor

from ..errors import CheckpointError, UsageError

DEFAULT_CONCURRENCY = 8  # range requests in flight per transfer (`--concurrency`)
RETRIES = 4  # attempts after the first, for failures retrying can cure
BACKOFF = 0.25  # seconds before the first retry, doubling

_settings = {"concurrency": DEFAULT_CONCURRENCY}
_pools: dict[int, "ThreadPoolExecutor"] = {}  # concurrent.futures: imported on first use (start-up)
_pools_lock = threading.Lock()


def configure(concurrency: int | None = None) -> None:
    if concurrency is not None:
        if concurrency < 1:
            raise UsageError(f"--concurrency must be at least 1 (got {concurrency})")
        _settings["concurrency"] = concurrency


def concurrency() -> int:
    return _settings["concurrency"]


def _pool() -> "ThreadPoolExecutor":
    from concurrent.futures import ThreadPoolExecutor

    n = concurrency()
    with _pools_lock:
        if n not in _pools:
            _pools[n] = ThreadPoolExecutor(n, thread_name_prefix="mapspec-range")
        return _pools[n]


def remote_error(where, exc: BaseException, what: str = "") -> CheckpointError:
    """One line naming the object for a failed request."""
    doing = f" while reading {what}" if what else ""
    if isinstance(exc, FileNotFoundError):
        return CheckpointError(f"{where}: no such object{doing}")
    if isinstance(exc, PermissionError):
        return CheckpointError(f"{where}: access denied{doing} (check the credentials your environment gives "
                               "this protocol's library)")
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return CheckpointError(f"{where}: request failed{doing} ({type(exc).__name__}: {text[:200]})")


def transient(exc: BaseException) -> bool:
    """Would the same request, sent again, likely succeed? Resets, timeouts, 5xx and throttling."""
    if isinstance(exc, (FileNotFoundError, PermissionError, CheckpointError, UsageError, ValueError, TypeError)):
        return False
    if isinstance(exc, (ConnectionError, TimeoutError)):
        return True
    name = type(exc).__name__
    text = str(exc)
    return (any(w in name for w in ("Timeout", "Connection", "Disconnected", "Payload", "ServerError", "Throttl",
                                    "ResponseStreaming"))  # botocore: a response body cut off mid-read
            or any(w in text for w in ("Service Unavailable", "SlowDown", "InternalError", "Connection reset",
                                       "Connection closed", "500", "502", "503", "504")))


def retrying(call, where, what: str):
    """`call()`, retried with backoff while its failure is transient; else one CheckpointError."""
    for attempt in range(RETRIES + 1):
        try:
            return call()
        except CheckpointError:
            raise
        except Exception as exc:  # noqa: BLE001 - classified below
            retry_or_raise(exc, attempt, where, what)


def retry_or_raise(exc: BaseException, failures: int, where, what: str) -> None:
    """After the `failures`-th failed attempt (from 0): wait before the next one, or raise
    the one-line error when retrying cannot help or the attempts are spent."""
    if failures >= RETRIES or not transient(exc):
        raise remote_error(where, exc, what) from None
    time.sleep(BACKOFF * 2 ** failures)


def _in_order(pool: "ThreadPoolExecutor", fn, items):
    """fn(item) for each item on `pool`, at most the pool's width in flight, results in order.
    A failure cancels what is queued and is raised."""
    from collections import deque

    width = pool._max_workers
    pending: deque = deque()
    items = iter(items)
    try:
        for item in items:
            pending.append(pool.submit(fn, item))
            if len(pending) >= width:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        for f in pending:
            f.cancel()
        for f in pending:
            if not f.cancelled():
                try:
                    f.result()
                except BaseException:  # noqa: BLE001 - the first failure is the one raised
                    pass
