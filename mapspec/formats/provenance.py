"""Provenance: every output mapspec writes says what made it.

The record holds the mapspec version, the spec's file name and sha256 (and each included
file's), the parameters, the direction (forward, or reverse for `apply --reverse`), and the
source checkpoint's name and sha256. Where it is kept depends on what the format has room for:

    safetensors  `__metadata__` string values, keys `mapspec.*` (nested values as JSON text)
    .pt          an extra zip record `<archive>/mapspec.json`; torch.load ignores records its
                 pickle does not name, so the state dict is unchanged (tests load it with
                 weights_only=True)
    .npz         the zip archive comment (np.load ignores it; a member would become a key)
    OneFlow      `mapspec.json` inside the checkpoint directory (flow.load follows the pickle)
    .params      a sidecar `OUTPUT.mapspec.json`: the NDArray container has no free field
    .wts         a sidecar too: the tensorrtx loader reads every line as a weight
    GGUF         one metadata key `general.mapspec`, the record as JSON text (every other key is
                 the caller's; general.* is where llama.cpp keeps naming and provenance)

The source's sha256 (a single file's is the Hugging Face hub's LFS object id, so a source
can be checked against the hub) is computed off the critical path: on worker threads (other
cores: hashlib releases the GIL) while the conversion runs, in the order the conversion reads
the files, so its reads come from the page cache the copy fills anyway. A sharded source's
shards are hashed in parallel, each recorded under `source_files` (name: size and sha256,
each an LFS id) and `source_sha256` is the sha256 of the lines `name NUL size NUL sha256 LF`
of the shards in name order. Digests are remembered per user under each file's change stamps
(`cached_sha256`): converting the same source again, as one does while writing a spec, does
not hash it again. A source directory (OneFlow) is hashed as its files in sorted order, each
as `relative path NUL size NUL bytes`. `apply --no-hash` hashes nothing: the record holds
`source_files` with each file's size and modification time, `source_sha256` null and
`source_hash` saying so. The sha256s are the only values not known before the first tensor
is written, so a format that writes its metadata first (safetensors) reserves their 64
characters each and fills them in on commit.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from pathlib import Path
from typing import Any, Mapping

from ..core.cache import cache_dir, write_atomically
from ..version import __version__

SIDECAR = ".mapspec.json"
RECORD = "mapspec.json"  # the .pt zip record and the OneFlow file
PREFIX = "mapspec."  # safetensors metadata keys
_PLACEHOLDER = "0" * 64
_CHUNK = 1 << 22


def sha256_path(path: Path) -> str:
    """sha256 of a file, or of a directory's files in sorted order (see the module doc)."""
    h = hashlib.sha256()
    path = Path(path)
    if path.is_dir():
        for f in _files(path):
            rel = f.relative_to(path).as_posix()
            h.update(f"{rel}\0{f.stat().st_size}\0".encode())
            _feed(h, f)
    else:
        _feed(h, path)
    return h.hexdigest()


def _feed(h, path: Path) -> None:
    buf = bytearray(_CHUNK)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        while True:
            n = f.readinto(buf)
            if not n:
                break
            h.update(view[:n])  # hashlib releases the GIL for large buffers


def cached_sha256(path: Path) -> str:
    """`sha256_path`, remembered in the user cache (`mapspec.cache`) under the file's identity
    and change stamps: device, inode, size, mtime and ctime in nanoseconds, of every file for
    a directory. Any write to a file changes its ctime, which no user can set back, so a
    stamp that matches means the same bytes (the test git's index and rsync rely on). A
    source converted again (the usual loop while writing a spec) is not read twice; its
    first conversion pays the hash beside the copy as before. Sources under REMEMBER_FROM
    (64 MiB) hash in milliseconds and are not remembered."""
    path = Path(path)
    folder = cache_dir("sha256")
    stamp = _stamp(path) if folder is not None else None
    if stamp is None or _size(path) < REMEMBER_FROM:
        return sha256_path(path)
    entry = folder / stamp
    try:
        value = entry.read_text("ascii").strip()
        if len(value) == 64 and all(c in "0123456789abcdef" for c in value):
            return value
    except (OSError, UnicodeError):
        pass
    started = time.time_ns()
    value = sha256_path(path)
    # Remembered only if unchanged while it was read, and last changed well before: file
    # times come from a coarse clock, so a write in the same tick as the one before the
    # hash would leave the stamps equal ("racy git"); one after RACY_NS cannot.
    if _stamp(path) == stamp and started - _last_change(path) > RACY_NS:
        write_atomically(entry, value.encode())
    return value


RACY_NS = 2_000_000_000
REMEMBER_FROM = 64 << 20  # bytes: smaller sources hash in milliseconds; no cache entry for them


def _size(path: Path) -> int:
    if hasattr(path, "url"):
        return int(path.fs.size(path.path))
    return sum(f.stat().st_size for f in _files(path))


def _unhashed(path: Path) -> dict[str, Any]:
    """What --no-hash records of a file: its size, and its modification time where local."""
    if hasattr(path, "url"):
        return {"size": _size(path)}
    return {"size": _size(path), "modified": _mtime(path)}


def _last_change(path: Path) -> int:
    return max((f.stat().st_ctime_ns for f in _files(path)), default=0)


def _files(path: Path) -> list[Path]:
    """A source's files: itself, or a directory's files in sorted order."""
    return sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]


def _stamp(path: Path) -> str | None:
    try:
        marks = [str(path.resolve())]
        for f in _files(path):
            st = f.stat()
            marks.append(f"{f.relative_to(path).as_posix() if f != path else ''}\0{st.st_dev}\0{st.st_ino}\0"
                         f"{st.st_size}\0{st.st_mtime_ns}\0{st.st_ctime_ns}")
    except OSError:
        return None
    return hashlib.sha256("\n".join(marks).encode()).hexdigest()


def remote_sha256(url) -> str:
    """sha256 of an object on a store, read once as a stream (S3) or in parallel ranged
    requests (used only when the store keeps no content hash of its own: see
    `remote.content_hash`)."""
    from .fetching import _in_order, _pool
    from .remote import CHUNK, RemoteFile
    from .streams import whole, supported

    h = hashlib.sha256()
    with RemoteFile(url) as f:
        if supported(f.path.fs):  # S3: one streamed request
            pieces = whole(f, "the object")
        else:
            parts = range(0, f.size, CHUNK)
            pieces = _in_order(_pool(), lambda at: f.read_bytes(at, min(CHUNK, f.size - at), "the object"), parts)
        for data in pieces:
            h.update(data)
    return h.hexdigest()


def _object_digest(url) -> tuple[str, str]:
    """A shard on a store: (algorithm, hex) of the checksum the store keeps of its bytes
    (sha256, or md5 for an S3 single-part ETag), read only when the store keeps none."""
    from .remote import content_hash

    return content_hash(url) or ("sha256", remote_sha256(url))


HASH_THREADS = max(1, os.cpu_count() or 1)  # files hashed at once, at most


class _Digests:
    """The sha256 of each of `files`, computed beside the conversion: up to HASH_THREADS
    daemon threads take the files in the given order (the order the conversion reads them)."""

    def __init__(self, files: list[Path]):
        self.files = files
        self.values: dict[Path, str] = {}
        self.error: BaseException | None = None
        self._next = iter(files)
        self._lock = threading.Lock()
        self.threads = [threading.Thread(target=self._run, name=f"mapspec-sha256-{i}", daemon=True)
                        for i in range(min(len(files), HASH_THREADS))]
        for t in self.threads:
            t.start()

    def _run(self) -> None:
        while True:
            with self._lock:
                path = next(self._next, None)
                if path is None or self.error is not None:
                    return
            try:
                value = _object_digest(path) if hasattr(path, "url") else ("sha256", cached_sha256(path))
            except BaseException as exc:  # reported by result(), in the caller's thread
                with self._lock:
                    self.error = exc
                return
            with self._lock:
                self.values[path] = value

    def result(self) -> dict[Path, tuple[str, str]]:
        for t in self.threads:
            t.join()
        if self.error is not None:
            raise self.error
        return self.values


def _mtime(path: Path) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(path.stat().st_mtime))


def combined_sha256(files: Mapping[str, Mapping[str, Any]]) -> str:
    """A sharded source's one digest: sha256 of `name NUL size NUL sha256 LF` per shard, in
    name order (each shard's own sha256 is in `source_files`). A shard on a store that keeps
    only an md5 of it (an S3 single-part ETag) enters as `md5:HEX` instead of being read again."""
    h = hashlib.sha256()
    for name in sorted(files):
        entry = files[name]
        digest = entry["sha256"] if "sha256" in entry else f"md5:{entry['md5']}"
        h.update(f"{name}\0{entry['size']}\0{digest}\n".encode())
    return h.hexdigest()


class Provenance:
    """The record for one output; `record()` waits for the source's sha256."""

    def __init__(self, *, spec_file: str | None, includes: tuple[str, ...] = (), source: Path,
                 params: Mapping[str, Any] | None = None, direction: str = "forward",
                 select: str | None = None, shards: tuple[Path, ...] = (), hash: bool = True,
                 alternatives: Mapping[str, int] | None = None):
        """`shards`: the files of a sharded source (each hashed and recorded); `hash=False`
        (--no-hash): sizes and modification times only; `alternatives`: which alternative of
        each `reverse` choice the forward run matched (so the reverse can write it back)."""
        self.fields: dict[str, Any] = {"version": __version__}
        if spec_file is not None:
            self.fields["spec"] = Path(spec_file).name
            self.fields["spec_sha256"] = _file_sha(spec_file)
            if includes:
                root = Path(spec_file).resolve().parent
                self.fields["includes"] = {_rel(i, root): _file_sha(i) for i in includes}
        self.fields["params"] = dict(params or {})
        self.fields["direction"] = direction
        if alternatives:  # rule line -> the fallback alternative (A | B -> T) the conversion matched
            self.fields["alternatives"] = dict(alternatives)
        if select:
            self.fields["select"] = select
        remote = hasattr(source, "url")
        self.fields["source"] = source.name if remote else Path(source).name
        self._shards = [p if hasattr(p, "url") else Path(p) for p in shards]
        files = self._shards or [source if remote else Path(source)]
        self._final: dict[str, Any] | None = None  # the whole record, once known (see resolved)
        self._digests: _Digests | None = None
        if not hash:
            self.fields["source_files"] = {_name(f, source): _unhashed(f) for f in files}
            self.fields["source_sha256"] = None
            self.fields["source_hash"] = "none (--no-hash): the source is recorded by sizes and modification times only"
            return
        if remote and not self._shards:  # one object on a store: its own checksum if it keeps one
            from .remote import content_hash

            known = content_hash(source)
            if known is not None:
                algo, value = known
                self._final = {**self.fields, f"source_{algo}": value}
                return
        self._digests = _Digests(files)
        if self._shards:
            # Sizes taken once: for shards on a store each is a request, not a stat.
            self._sizes = {f: _size(f) for f in self._shards}
            self.fields["source_files"] = {f.name: {"size": self._sizes[f], "sha256": _PLACEHOLDER}
                                           for f in self._shards}

    def record(self, final: bool = True) -> dict[str, Any]:
        if self._final is not None:
            return dict(self._final)
        if self._digests is None:
            return dict(self.fields)
        if not final:
            return {**self.fields, "source_sha256": _PLACEHOLDER}
        values = self._digests.result()
        if not self._shards:
            return {**self.fields, "source_sha256": values[self._digests.files[0]][1]}
        files = {f.name: {"size": self._sizes[f], values[f][0]: values[f][1]} for f in self._shards}
        return {**self.fields, "source_files": files, "source_sha256": combined_sha256(files)}

    def resolved(self) -> "Provenance":
        """This record with the source's checksum waited for: picklable, to hand to workers
        (Ray), which then write exactly what one process would."""
        if self._final is None:
            self._final = self.record(final=True)
            self._digests = None
        return self

    def strings(self, final: bool = True) -> dict[str, str]:
        """The record as flat string values (safetensors metadata)."""
        return {PREFIX + k: v if isinstance(v, str) else json.dumps(v, sort_keys=True)
                for k, v in self.record(final).items()}

    def json(self) -> str:
        return json.dumps(self.record(), indent=2, sort_keys=True) + "\n"

    def write_sidecar(self, output: Path) -> None:
        """`OUTPUT.mapspec.json`, for formats with no room inside; written atomically."""
        final = sidecar(output)
        tmp = final.with_name(f".{final.name}.part")
        tmp.write_text(self.json(), encoding="utf-8")
        os.replace(tmp, final)


def _name(path: Path, source: Path) -> str:
    return path.name if path != Path(source) else Path(source).name


def _file_sha(path: str) -> str | None:
    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()
    except OSError:
        return None  # a spec given as text has no file


def _rel(path: str, root: Path) -> str:
    p = Path(path).resolve()
    try:
        return p.relative_to(root).as_posix()
    except ValueError:
        return p.as_posix()


def sidecar(output: Path) -> Path:
    output = output if hasattr(output, "url") else Path(output)
    return output.with_name(output.name + SIDECAR)


def from_strings(meta: Mapping[str, str]) -> dict[str, Any] | None:
    """The record back from safetensors metadata, or None if mapspec did not write it."""
    out: dict[str, Any] = {}
    for k, v in meta.items():
        if not k.startswith(PREFIX):
            continue
        name = k[len(PREFIX):]
        if name in ("params", "includes", "source_files", "alternatives") or (name == "source_sha256" and v == "null"):
            try:
                v = json.loads(v)
            except ValueError:
                pass
        out[name] = v
    return out or None


MAX_RECORD = 1 << 20  # bytes of a provenance record read back; real ones are a few KiB


def read(path: str | Path) -> dict[str, Any] | None:
    """The provenance stored in or beside a checkpoint, or None. Reads only the few bytes
    that hold it (a header, a zip directory, a small file), through the hostile-input
    readers: regular files only, sizes bounded, any failure one CheckpointError."""
    from .reading import ZipMembers, location, open_bytes, read_small, reading

    path = location(path)
    with reading(path):
        side = sidecar(path)
        if side.is_file():
            return _json(read_small(side, MAX_RECORD, "provenance record"))
        if path.is_dir():
            f = path / RECORD
            if not f.is_file() or path.resolve() not in f.resolve().parents:
                return None  # none, or one that leads outside the checkpoint
            return _json(read_small(f, MAX_RECORD, "provenance record"))
        if path.suffix.lower() == ".safetensors":
            from .safetensors import SafetensorsSource

            source = SafetensorsSource(path)
            source.close()
            return from_strings(source.metadata)
        if str(path).lower().endswith(".gguf"):
            from .gguf import RECORD_KEY, read_kv

            value = read_kv(path).get(RECORD_KEY)
            return _json(value.value.encode("utf-8", "surrogateescape")) if value is not None and value.type == "string" else None
        with open_bytes(path) as file:
            if file.read_bytes(0, min(2, file.size), "the file header") != b"PK":
                return None
            members = ZipMembers(file)
            try:
                for info in members.infos:
                    if info.filename.endswith("/" + RECORD) and info.filename.count("/") == 1:
                        return _json(members.read(info, MAX_RECORD))
                return _json(members.zip.comment) if members.zip.comment else None
            finally:
                members.close()


def _json(raw: bytes) -> dict[str, Any] | None:
    try:
        value = json.loads(raw, parse_constant=_no_constant)
    except (ValueError, RecursionError):
        return None
    return value if isinstance(value, dict) and "version" in value else None


def _no_constant(name: str):
    raise ValueError(f"{name} is not JSON")
