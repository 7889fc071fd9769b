"""Outputs on object storage: each file is uploaded as soon as it is written, but nothing is
visible under the output until every file of it is complete; then they appear, the index
last.

On S3 an object is a multipart upload (parts of `part_size()` bytes, `concurrency()` in
flight) whose completion is deferred: the parts are on the server, the object is not, until
`ObjectOutput.commit` completes them all. A failed or interrupted run aborts its uploads
(S3 keeps no parts of an aborted upload), so it leaves no object and no billed parts. On
any other fsspec file system a file is uploaded under a hidden temporary name beside its
final one and moved into place on commit, removed on abort.

A pending upload is a small picklable record, so a Ray worker can upload a shard and hand
the record to the driver, which completes it with the others."""

from __future__ import annotations

import os
import secrets
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

from ..errors import OutputError
from .fetching import _in_order, _pool, remote_error, retrying
from .remote import URLPath, filesystem

MIN_PART = 8 << 20  # bytes; S3 wants parts of 5 MiB or more, except the last
MAX_PARTS = 10_000  # S3's limit of parts per upload


def part_size(nbytes: int) -> int:
    """The part size for an object of `nbytes`: MIN_PART, or larger so that it fits in
    MAX_PARTS parts (a 5 TB object: 500 MiB parts)."""
    size = MIN_PART
    while size * MAX_PARTS < nbytes:
        size *= 2
    return size


def _s3(fs) -> bool:
    return type(fs).__name__ == "S3FileSystem"


@dataclass
class Pending:
    """An uploaded file not yet visible under its final name."""

    url: str
    size: int
    upload_id: str | None = None  # S3: the multipart upload to complete
    parts: list = field(default_factory=list)
    temp: str | None = None  # other stores: the hidden temporary object to move


def upload(local: Path, url: URLPath, started=None) -> Pending:
    """Send the local file to `url`, leaving it invisible (see the module doc). `started`
    hears the pending upload before any byte is sent (so whoever must clean up knows it)."""
    fs = url.fs
    size = os.path.getsize(local)
    if _s3(fs):
        return _upload_s3(local, url, size, started)
    temp = url.with_name(f".{url.name}.{secrets.token_hex(4)}.part")
    pending = Pending(url.url, size, temp=temp.url)
    if started is not None:
        started(pending)
    try:
        retrying(lambda: fs.put_file(str(local), temp.path), url, "")
    except BaseException:
        abort(pending)
        raise
    return pending


def _upload_s3(local: Path, url: URLPath, size: int, started=None) -> Pending:
    fs = url.fs
    bucket, key, _ = fs.split_path(url.path)
    created = retrying(lambda: fs.call_s3("create_multipart_upload", Bucket=bucket, Key=key), url, "")
    pending = Pending(url.url, size, upload_id=created["UploadId"])
    if started is not None:
        started(pending)
    step = part_size(size)
    fd = os.open(local, os.O_RDONLY)

    def part(number: int) -> dict:
        start = (number - 1) * step
        body = os.pread(fd, min(step, size - start), start)
        answer = retrying(lambda: fs.call_s3("upload_part", Bucket=bucket, Key=key, UploadId=pending.upload_id,
                                             PartNumber=number, Body=body), url, f"part {number}")
        return {"PartNumber": number, "ETag": answer["ETag"]}

    try:
        count = max(1, -(-size // step))  # an empty file is one empty part
        pending.parts = list(_in_order(_pool(), part, range(1, count + 1)))
    except BaseException:
        abort(pending)
        raise
    finally:
        os.close(fd)
    return pending


def complete(pending: Pending) -> None:
    """Make the upload visible under its final name."""
    url = URLPath(pending.url)
    fs = url.fs
    if pending.upload_id is not None:
        bucket, key, _ = fs.split_path(url.path)
        retrying(lambda: fs.call_s3("complete_multipart_upload", Bucket=bucket, Key=key,
                                    UploadId=pending.upload_id, MultipartUpload={"Parts": pending.parts}), url, "")
        pending.upload_id = None
    elif pending.temp is not None:
        temp = URLPath(pending.temp)
        retrying(lambda: fs.mv(temp.path, url.path), url, "")
        pending.temp = None
    fs.invalidate_cache()


def abort(pending: Pending) -> None:
    """Drop an upload that was not completed; never raises (cleanup must finish)."""
    try:
        url = URLPath(pending.url)
        fs = url.fs
        if pending.upload_id is not None:
            bucket, key, _ = fs.split_path(url.path)
            fs.call_s3("abort_multipart_upload", Bucket=bucket, Key=key, UploadId=pending.upload_id)
            pending.upload_id = None
        elif pending.temp is not None:
            fs.rm(URLPath(pending.temp).path)
            pending.temp = None
    except Exception:  # noqa: BLE001 - an abort that fails leaves an invisible upload at worst
        pass


class ObjectOutput:
    """One output (a file, or a directory of shards) on object storage, published whole.

    `stage(name, local)` uploads a finished local file as `name` under the output (the
    output itself for a single file); `add` takes a pending upload made elsewhere (a Ray
    worker); `commit(index)` completes them all, the index last; `abort` drops them. It
    registers with the run's `guarded_writes`, which aborts it on any failure or signal and
    says whether an existing output may be replaced."""

    def __init__(self, url: URLPath, directory: bool):
        from .atomic import current_run

        self.url = url
        self.directory = directory
        self.replace = False
        self.pending: list[Pending] = []
        self.completed: list[str] = []
        self._lock = threading.Lock()
        self._done = False
        run = current_run()
        if run is not None:
            run.adopt(self)

    def target(self, name: str) -> URLPath:
        """Where file `name` goes: in the output folder, or the output itself (a sidecar
        beside it)."""
        if self.directory:
            return self.url / name
        return self.url if name == self.url.name else self.url.with_name(name)

    def stage(self, name: str, local: Path) -> Pending:
        pending = upload(local, self.target(name))
        self.add(pending)
        return pending

    def add(self, pending: Pending) -> None:
        with self._lock:
            if self._done:  # aborted meanwhile: this one goes too
                abort(pending)
                return
            self.pending.append(pending)

    def commit(self, index: tuple[str, bytes] | None = None, extra: Mapping[str, bytes | Path] | None = None) -> None:
        """Complete every upload, then write `extra` small files (bytes, or a local file's
        path: a model folder's `carried_files`) and the index, last."""
        if not self.replace and self.url.exists():
            raise OutputError(f"{self.url} appeared while converting; nothing was replaced (use --force to "
                              "overwrite it)")
        old = self._existing() if self.replace and self.directory else []
        fs = self.url.fs

        def finish(pending: Pending) -> None:
            complete(pending)
            self.completed.append(pending.url)  # at once: a failed commit removes what completed

        # Completions in parallel: one is a round trip of up to seconds for a large object,
        # a few hundred shards must not pay them one after another.
        for _ in _in_order(_pool(), finish, sorted(self.pending, key=lambda p: p.url)):
            pass
        for name, data in [*(extra or {}).items(), *([index] if index else [])]:
            data = data if isinstance(data, bytes) else data.read_bytes()
            target = self.target(name)
            retrying(lambda: fs.pipe_file(target.path, data), target, "")
            self.completed.append(target.url)
        self._done = True
        keep = set(self.completed)
        for stale in old:  # with --force: what the earlier output had and this one has not
            if stale.url not in keep:
                try:
                    fs.rm(stale.path)
                except Exception:  # noqa: BLE001 - a stale file left is not a failed conversion
                    pass
        fs.invalidate_cache()

    def _existing(self) -> list[URLPath]:
        try:
            return [p for p in self.url.iterdir()]
        except Exception:  # noqa: BLE001
            return []

    def abort(self) -> None:
        """Abort every upload not completed and remove what this run completed; never raises."""
        with self._lock:
            if self._done and not self.pending:
                return
            self._done = True
            pending, self.pending = self.pending, []
        for p in pending:
            abort(p)
        fs = self.url.fs
        for url in self.completed:  # a commit that failed half-way
            try:
                fs.rm(URLPath(url).path)
            except Exception:  # noqa: BLE001
                pass
        try:
            fs.invalidate_cache()
        except Exception:  # noqa: BLE001
            pass


def check_writable(url: URLPath, force: bool) -> None:
    """Refuse up front an output that exists (without --force) or a bucket that does not."""
    if url.exists() and not force:
        raise OutputError(f"{url} exists; use --force to overwrite it")
    fs = url.fs
    if _s3(fs):
        bucket = fs.split_path(url.path)[0]
        try:
            if not fs.exists(bucket):
                raise OutputError(f"{url}: the bucket '{bucket}' does not exist")
        except OutputError:
            raise
        except Exception as exc:  # noqa: BLE001
            raise remote_error(url, exc) from None


__all__ = ["ObjectOutput", "Pending", "abort", "check_writable", "complete", "filesystem", "part_size", "upload"]
