"""Checkpoints on object storage (s3://, gs://, hf://, https://, memory://, any protocol
fsspec knows), read by byte range.

`URLPath` is the little of pathlib the readers use (name, suffix, parent, `/`, exists,
is_dir, iterdir, glob), over an fsspec file system. `RemoteFile` has the methods of
`reading.RegularFile` (size, read_into/read_range/read_bytes, copy_to, file()), so every
format's parser reads a remote object exactly as it reads a local file: headers with a few
small range requests, tensors with parallel range requests of `CHUNK` bytes, at most
`concurrency()` at once per transfer (on S3, copies as long streamed requests: `streams`).

Credentials are found by each protocol's own library (the AWS_* variables and profiles for
s3fs, gcloud's for gcsfs, the HF token for hf://); mapspec never reads, stores or prints them.
A failed request is retried when retrying can help (a reset connection, a timeout, a 5xx);
a missing object, a refused one (403) or one shorter than it was is one `CheckpointError`
naming the object. fsspec is imported only when a URL is met."""

from __future__ import annotations

import posixpath
import re
from types import SimpleNamespace
from typing import Iterator

from ..errors import CheckpointError, UsageError
from .byterange import ByteRange
from .fetching import _in_order, _pool, remote_error, retrying

CHUNK = 8 << 20  # bytes per range request of a large read
# The first request for a small range at the start of an object fetches this much and keeps
# it: a safetensors header's length and the header itself (or a file's magic) in one request.
HEAD = 256 << 10
_SCHEME = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*)://")



def is_url(value) -> bool:
    """A `scheme://...` location (not `file://`, which is a local path)."""
    if isinstance(value, URLPath):
        return True
    m = _SCHEME.match(str(value)) if isinstance(value, str) else None
    return bool(m) and m[1].lower() != "file"


def _fsspec():
    try:
        import fsspec
    except ImportError:
        raise UsageError("reading or writing URLs needs fsspec: pip install 'mapspec[remote]'") from None
    return fsspec


def filesystem(url: str):
    """(file system, path inside it) for `url`; an unknown protocol or a missing driver
    (s3fs for s3://) is a UsageError naming what to install."""
    fsspec = _fsspec()
    try:
        return fsspec.core.url_to_fs(url)
    except ImportError as exc:
        raise UsageError(f"{url}: {exc}".splitlines()[0]) from None
    except ValueError as exc:
        raise UsageError(f"{url}: {exc}".splitlines()[0]) from None


class URLPath:
    """A location on an fsspec file system, with the pathlib methods the readers use."""

    def __init__(self, url: str):
        self.url = str(url).rstrip("/") if not str(url).endswith("://") else str(url)
        self._fs = None
        self._path: str | None = None

    @property
    def fs(self):
        if self._fs is None:
            self._fs, self._path = filesystem(self.url)
        return self._fs

    @property
    def path(self) -> str:
        if self._path is None:
            self._path = self.fs._strip_protocol(self.url)
        return self._path

    def __str__(self) -> str:
        return self.url

    def __repr__(self) -> str:
        return f"URLPath({self.url!r})"

    def __eq__(self, other) -> bool:
        return isinstance(other, URLPath) and other.url == self.url

    def __hash__(self) -> int:
        return hash(self.url)

    @property
    def name(self) -> str:
        """The last path segment, without a query (a presigned URL's signature is no name)."""
        return posixpath.basename(self.url.split("://", 1)[1].split("?", 1)[0])

    @property
    def suffix(self) -> str:
        return posixpath.splitext(self.name)[1]

    @property
    def stem(self) -> str:
        return posixpath.splitext(self.name)[0]

    @property
    def parent(self) -> "URLPath":
        scheme, rest = self.url.split("://", 1)
        head = posixpath.dirname(rest)
        return self._child(f"{scheme}://{head}") if head else self

    @property
    def parents(self) -> list["URLPath"]:
        out, p = [], self.parent
        while p != (out[-1] if out else self):
            out.append(p)
            p = p.parent
        return out

    def _child(self, url: str) -> "URLPath":
        child = URLPath(url)
        child._fs = self._fs  # same file system, options and credentials
        return child

    def __truediv__(self, name) -> "URLPath":
        return self._child(f"{self.url}/{name}")

    def with_name(self, name: str) -> "URLPath":
        return self.parent / name

    def resolve(self) -> "URLPath":
        return self

    def _info(self) -> dict | None:
        try:
            return self.fs.info(self.path)
        except FileNotFoundError:
            return None
        except Exception as exc:  # noqa: BLE001 - a refused or failed lookup is named, not a crash
            raise remote_error(self, exc) from None

    def exists(self) -> bool:
        return self._info() is not None

    def is_dir(self) -> bool:
        info = self._info()
        return info is not None and info.get("type") == "directory"

    def is_file(self) -> bool:
        info = self._info()
        return info is not None and info.get("type") != "directory"

    def stat(self):
        info = self._info()
        if info is None:
            raise CheckpointError(f"{self}: no such object")
        return SimpleNamespace(st_size=int(info.get("size") or 0), info=info)

    def iterdir(self) -> Iterator["URLPath"]:
        try:
            names = self.fs.ls(self.path, detail=False)
        except FileNotFoundError:
            names = []
        except Exception as exc:  # noqa: BLE001
            raise remote_error(self, exc) from None
        for n in sorted(names):
            base = posixpath.basename(str(n).rstrip("/"))
            if base:
                yield self / base

    def glob(self) -> list["URLPath"]:
        """The objects matching this location's wildcards."""
        scheme = self.url.split("://", 1)[0]
        try:
            found = self.fs.glob(self.path)
        except Exception as exc:  # noqa: BLE001
            raise remote_error(self, exc) from None
        out = []
        for p in sorted(found):
            full = self.fs.unstrip_protocol(p)
            out.append(self._child(full if full.startswith(scheme + "://") else f"{scheme}://{p}"))
        return out

    def read_bytes(self, limit: int | None = None) -> bytes:
        with RemoteFile(self) as f:
            if limit is not None and f.size > limit:
                raise CheckpointError(f"{self}: {f.size} bytes, more than it can be ({limit})")
            return f.read_bytes(0, f.size, "the object")

    def read_text(self, encoding: str = "utf-8") -> str:
        return self.read_bytes().decode(encoding)


class RemoteFile(ByteRange):
    """An object read by byte range: the `RegularFile` methods over fsspec. Every read is a
    fresh buffer of exactly the bytes asked for; an object shorter than it was when opened
    is a CheckpointError naming the byte offset, never short data."""

    fd = -1  # no descriptor: sinks copy through `copy_to`
    kind = "object"

    def __init__(self, path: URLPath | str):
        self.path = path if isinstance(path, URLPath) else URLPath(path)
        info = retrying(lambda: self.path.fs.info(self.path.path), self.path, "its size")
        if info.get("type") == "directory":
            raise CheckpointError(f"{self.path}: a directory (prefix), not a checkpoint object")
        self.size = int(info.get("size") or 0)
        self.info = info
        self._head: bytes | None = None

    def _fetch(self, offset: int, nbytes: int, what: str) -> bytes:
        fs, path = self.path.fs, self.path.path
        from .streams import fetch, supported

        if supported(fs):  # one request, checked against the object's ETag
            return fetch(self, offset, nbytes, what)

        def call() -> bytes:
            data = fs.cat_file(path, start=offset, end=offset + nbytes)
            if len(data) != nbytes:
                raise CheckpointError(f"{self.path}: the object ended at byte {offset + len(data)} while "
                                      f"reading {what} (it is shorter than the {self.size} bytes it had: "
                                      "truncated or replaced while being read)")
            return data

        return retrying(call, self.path, what)

    def read_into(self, buffer: memoryview, offset: int, what: str = "data") -> None:
        """Fill `buffer` from `offset`: one request, or CHUNK-sized ones in parallel."""
        nbytes = len(buffer)
        self._check_range(offset, nbytes, what)
        if offset + nbytes <= HEAD:
            if self._head is None:
                self._head = self._fetch(0, min(HEAD, self.size), "the header")
            buffer[:] = self._head[offset:offset + nbytes]
            return
        if nbytes <= CHUNK:
            buffer[:] = self._fetch(offset, nbytes, what)
            return

        def part(start: int) -> None:
            n = min(CHUNK, nbytes - start)
            buffer[start:start + n] = self._fetch(offset + start, n, what)

        for _ in _in_order(_pool(), part, range(0, nbytes, CHUNK)):
            pass

    def copy_to(self, fd_out: int, offset_out: int, offset: int, nbytes: int) -> None:
        """Bytes [offset, offset + nbytes) written to `fd_out` at `offset_out`: on S3 a few
        long requests read as streams (`streams`); elsewhere CHUNK-sized range requests,
        `concurrency()` in flight, written in order as they arrive; memory held is at most
        that many chunks."""
        import os

        self._check_range(offset, nbytes, "a tensor")
        if nbytes == 0:
            return
        from .streams import copy, supported

        if supported(self.path.fs):
            copy(self, fd_out, offset_out, offset, nbytes)
            return

        def part(start: int) -> tuple[int, bytes]:
            return start, self._fetch(offset + start, min(CHUNK, nbytes - start), "a tensor")

        for start, data in _in_order(_pool(), part, range(0, nbytes, CHUNK)):
            view = memoryview(data)
            while view:
                n = os.pwrite(fd_out, view, offset_out + start)
                start += n
                view = view[n:]

    def release(self, offset: int, nbytes: int) -> None:
        pass  # nothing cached here

    def close(self) -> None:
        from .streams import close_all

        close_all(self)

    def willneed(self, offset: int, nbytes: int) -> None:
        pass  # reads start when asked, in parallel

    def file(self):
        """A seekable file object (for zipfile: its central directory is read by a few
        ranged requests at the end of the object, not the whole object)."""
        return retrying(lambda: self.path.fs.open(self.path.path, "rb", block_size=1 << 16, cache_type="bytes"),
                        self.path, "the object")



def content_hash(path: URLPath) -> tuple[str, str] | None:
    """The object's own content checksum, when its store keeps one that is a hash of the
    bytes: ("sha256", hex) for a Hugging Face LFS file or an S3 object stored with a
    full-object SHA256 checksum; ("md5", hex) for an S3 single-part ETag or a GCS md5Hash.
    None when the store has none (a multipart ETag is a hash of hashes, not of the bytes)."""
    import base64

    try:
        info = path.fs.info(path.path)
    except Exception:  # noqa: BLE001 - no checksum then; the bytes are hashed instead
        return None
    lfs = info.get("lfs")
    if isinstance(lfs, dict) and isinstance(lfs.get("sha256"), str):
        return "sha256", lfs["sha256"]
    if type(path.fs).__name__ == "S3FileSystem":
        try:
            bucket, key, _ = path.fs.split_path(path.path)
            head = path.fs.call_s3("head_object", Bucket=bucket, Key=key, ChecksumMode="ENABLED")
        except Exception:  # noqa: BLE001
            head = {}
        sha = head.get("ChecksumSHA256")
        if sha and head.get("ChecksumType", "FULL_OBJECT") == "FULL_OBJECT" and "-" not in sha:
            return "sha256", base64.b64decode(sha).hex()
        etag = str(head.get("ETag") or info.get("ETag") or "").strip('"')
        encrypted = head.get("SSEKMSKeyId") or head.get("SSECustomerAlgorithm")
        if re.fullmatch(r"[0-9a-f]{32}", etag) and not encrypted:
            return "md5", etag
        return None
    md5 = info.get("md5Hash")  # gcsfs
    if isinstance(md5, str):
        try:
            return "md5", base64.b64decode(md5).hex()
        except ValueError:
            return None
    return None
