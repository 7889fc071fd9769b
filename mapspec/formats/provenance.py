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

The source's sha256 is computed in a background thread that reads the file once while the
conversion runs, so it costs no wall time on a machine with a spare core; its reads come from
the page cache the conversion fills anyway (bench/provenance_bench.py: hashing 1 GiB alone
0.8 s, beside a 4 s conversion no measurable difference). On a loaded machine there is no
spare core (sha256 runs at 0.75-1.5 GB/s here, slower than the copy), so the digest is also
remembered per user under the file's change stamps (`cached_sha256`): converting the same
source again, as one does while writing a spec, does not hash it again. A source
directory (OneFlow) is hashed as its files in sorted order, each as `relative path NUL size
NUL bytes`. The sha256 is the only value not known before the first tensor is written, so a
format that writes its metadata first (safetensors) reserves its 64 characters and fills them
in on commit.
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
    return sum(f.stat().st_size for f in _files(path))


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


class _Digest(threading.Thread):
    """The source's sha256, computed beside the conversion."""

    def __init__(self, path: Path):
        super().__init__(name="mapspec-sha256", daemon=True)
        self.path = path
        self.value: str | None = None
        self.error: BaseException | None = None
        self.start()

    def run(self) -> None:
        try:
            self.value = cached_sha256(self.path)
        except BaseException as exc:  # reported by result(), in the caller's thread
            self.error = exc

    def result(self) -> str:
        self.join()
        if self.error is not None:
            raise self.error
        return self.value


class Provenance:
    """The record for one output; `record()` waits for the source's sha256."""

    def __init__(self, *, spec_file: str | None, includes: tuple[str, ...] = (), source: Path,
                 params: Mapping[str, Any] | None = None, direction: str = "forward",
                 select: str | None = None, alternatives: Mapping[str, int] | None = None):
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
        self.fields["source"] = Path(source).name
        self._digest = _Digest(Path(source))

    def record(self, final: bool = True) -> dict[str, Any]:
        sha = self._digest.result() if final else _PLACEHOLDER
        return {**self.fields, "source_sha256": sha}

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
    output = Path(output)
    return output.with_name(output.name + SIDECAR)


def from_strings(meta: Mapping[str, str]) -> dict[str, Any] | None:
    """The record back from safetensors metadata, or None if mapspec did not write it."""
    out: dict[str, Any] = {}
    for k, v in meta.items():
        if not k.startswith(PREFIX):
            continue
        name = k[len(PREFIX):]
        if name in ("params", "includes", "alternatives"):
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
    from .reading import RegularFile, ZipMembers, read_small, reading

    path = Path(path)
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
        with RegularFile(path) as file:
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
