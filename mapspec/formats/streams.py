"""Tensor copies from S3 objects as long streamed GETs, not many short ones.

A ranged GET costs a fixed time before its first byte (tens of milliseconds on S3; on the
test suite's moto server about 0.3 s, whatever the range's length) and then moves bytes at
the connection's speed. Cutting every copy into 8 MiB requests pays that fixed cost once per
8 MiB; here a copy is one request read piece by piece as it arrives (`PIECE` bytes held at
a time), and the request is left open (`Cursor`) so that the next copy, which in a
rename-only conversion usually starts where this one ended, reads on from the same response.
A copy of `2 * PART` bytes or more is also cut into up to `concurrency()` parts streamed in
parallel, the connection's speed being the limit there; its last part is the one left open.

Only s3fs exposes a response body to read incrementally (its `_call_s3`); other protocols
keep `RemoteFile`'s parallel ranged reads. A connection that fails mid-stream is reopened
where it stopped, as `retrying` retries a request; a response that ends before its range
does means the object is shorter than it was: the usual one-line error naming it."""

from __future__ import annotations

import os
import threading
from collections import OrderedDict

from ..errors import CheckpointError
from .byterange import ByteRange  # `remote.RemoteFile`, which uses this module
from .fetching import _pool, concurrency, retry_or_raise

PIECE = 2 << 20  # bytes read from a response body at a time: the memory a stream holds
PART = 64 << 20  # a copy of at least twice this is streamed as parallel parts of at least this
OPEN = 4  # streams left open for a next copy, across all objects (each holds a connection)

_open: "OrderedDict[int, Cursor]" = OrderedDict()  # id(cursor) -> cursor, least recently used first
_open_lock = threading.Lock()


def supported(fs) -> bool:
    """Can this file system's responses be read as streams (s3fs)?"""
    return hasattr(fs, "_call_s3") and hasattr(fs, "split_path") and getattr(fs, "loop", None) is not None


class Cursor:
    """One ranged GET of the object from `pos` up to `end`, read in order."""

    def __init__(self, file: ByteRange, start: int, end: int):
        self.file, self.pos, self.end = file, start, end
        self.body = None

    def _request(self):
        from fsspec.asyn import sync

        fs = self.file.path.fs
        bucket, key, version = fs.split_path(self.file.path.path)
        extra = {"VersionId": version} if version else {}
        if self.file.info.get("ETag"):  # the object read is the one whose header was read
            extra["IfMatch"] = self.file.info["ETag"]
        start, end = self.pos, self.end

        async def get():
            response = await fs._call_s3("get_object", Bucket=bucket, Key=key, Range=f"bytes={start}-{end - 1}",
                                         **extra)
            return response["Body"]

        self.body = sync(fs.loop, get)

    def _read(self, n: int) -> bytes:
        from fsspec.asyn import sync

        if self.body is None:
            self._request()
        return sync(self.file.path.fs.loop, self.body.read, n)

    def pieces(self, nbytes: int, what: str):
        """The next `nbytes` of the object, as pieces of at most PIECE bytes."""
        stop, failures = self.pos + nbytes, 0
        while self.pos < stop:
            try:
                data = self._read(min(PIECE, stop - self.pos))
            except Exception as exc:  # noqa: BLE001 - classified as `retrying` does
                self.close()
                if isinstance(exc, CheckpointError):
                    raise
                if "pre-condition" in str(exc) or "PreconditionFailed" in str(exc):
                    raise CheckpointError(f"{self.file.path}: the object changed while {what} was read from it "
                                          f"(replaced since its header was read)") from None
                retry_or_raise(exc, failures, self.file.path, what)
                failures += 1
                continue
            if not data:
                self.close()
                raise CheckpointError(f"{self.file.path}: the object ended at byte {self.pos} while reading {what} "
                                      f"(it is shorter than the {self.file.size} bytes it had: truncated or "
                                      "replaced while being read)")
            self.pos += len(data)
            yield data

    def write_to(self, fd_out: int, offset_out: int, nbytes: int, what: str = "a tensor") -> None:
        """The next `nbytes` of the object written to `fd_out` at `offset_out`."""
        at = offset_out
        for data in self.pieces(nbytes, what):
            view = memoryview(data)
            while view:
                n = os.pwrite(fd_out, view, at)
                at, view = at + n, view[n:]

    def close(self) -> None:
        body, self.body = self.body, None
        if body is not None:
            try:
                body.close()  # drops the connection: the rest of the range is not read
            except Exception:  # noqa: BLE001 - a connection already gone
                pass


def fetch(file: ByteRange, offset: int, nbytes: int, what: str) -> bytes:
    """Bytes [offset, offset + nbytes) of `file`, in one request."""
    cursor = Cursor(file, offset, offset + nbytes)
    try:
        return b"".join(cursor.pieces(nbytes, what)) if nbytes else b""
    finally:
        cursor.close()


def whole(file: ByteRange, what: str):
    """Every byte of `file` in order, as pieces of at most PIECE bytes, from one request."""
    cursor = Cursor(file, 0, file.size)
    try:
        yield from cursor.pieces(file.size, what)
    finally:
        cursor.close()


def copy(file: ByteRange, fd_out: int, offset_out: int, offset: int, nbytes: int) -> None:
    """Bytes [offset, offset + nbytes) of `file` written to `fd_out` at `offset_out`."""
    parts = min(concurrency(), nbytes // PART) if nbytes >= 2 * PART else 1
    size = -(-nbytes // parts)
    starts = list(range(0, nbytes, size))
    head, last = starts[:-1], starts[-1]

    def part(start: int) -> None:
        cursor = Cursor(file, offset + start, offset + start + size)
        try:
            cursor.write_to(fd_out, offset_out + start, size)
        finally:
            cursor.close()

    futures = [_pool().submit(part, start) for start in head]  # at most concurrency() of them
    try:
        cursor = _take(file, offset + last)
        try:
            cursor.write_to(fd_out, offset_out + last, nbytes - last)
        except BaseException:
            cursor.close()
            raise
        _keep(cursor)
        for f in futures:
            f.result()
    finally:
        for f in futures:
            f.cancel()
        for f in futures:  # none still writing to fd_out when this returns or raises
            if not f.cancelled():
                try:
                    f.result()
                except BaseException:  # noqa: BLE001 - the first failure is the one raised
                    pass


def _take(file: ByteRange, offset: int) -> Cursor:
    """The open stream of `file` positioned at `offset`, or a new one reading on to the end."""
    with _open_lock:
        for key, cursor in _open.items():
            if cursor.file is file and cursor.pos == offset:
                del _open[key]
                return cursor
    return Cursor(file, offset, file.size)


def _keep(cursor: Cursor) -> None:
    """Leave `cursor` open for a next copy; the least recently used beyond OPEN are closed."""
    if cursor.pos >= cursor.end:
        cursor.close()
        return
    with _open_lock:
        _open[id(cursor)] = cursor
        evicted = [_open.popitem(last=False)[1] for _ in range(len(_open) - OPEN)]
    for old in evicted:
        old.close()


def close_all(file: ByteRange) -> None:
    """Close the streams left open on `file` (the file is done with)."""
    with _open_lock:
        mine = [key for key, cursor in _open.items() if cursor.file is file]
        cursors = [_open.pop(key) for key in mine]
    for cursor in cursors:
        cursor.close()
