"""The adapter protocol: a lazy `Source` of named tensors and a `Sink` that writes them
atomically. Arrays travel as numpy arrays with a dtype name beside them (bf16 as raw bits)."""

from __future__ import annotations

import errno
import os
import secrets
import shutil
import signal
import tempfile
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, NamedTuple, Protocol

from ..core.lazy import numpy as np

from ..errors import CheckpointError, Interrupted, OutputError, UsageError
from ..core.tensorinfo import TensorInfo

if TYPE_CHECKING:
    from .reading import RegularFile


class Extent(NamedTuple):
    """A tensor's bytes exactly as a sink would store them (C order, little-endian), lying in
    one range of a file: sinks copy them file-to-file (`copy_extent`), never through Python."""

    file: "RegularFile"
    offset: int
    nbytes: int
    # The CRC-32 of these bytes when the source states it (a whole torch zip record): a zip
    # sink copies it instead of reading the copied bytes back. A wrong stated CRC is carried
    # over, so a corrupt record stays detectably corrupt rather than getting a fresh CRC.
    crc32: int | None = None


class Source(Protocol):
    """Everything the executor, `inspect` and selection ask of a checkpoint reader."""

    path: Path
    metadata: Mapping[str, str]  # free-form file metadata (safetensors `__metadata__`), else {}
    object: Any                  # the unpickled tree for pickle formats (training checkpoints), else None
    shards: tuple[Path, ...]     # the files behind a sharded checkpoint, else ()
    auto: bool                   # a sub-tree mapspec selected by itself (see auto_select)

    def infos(self) -> Mapping[str, TensorInfo]:
        """Every tensor's name, shape and dtype, in file order; no tensor data is read."""

    def read(self, key: str) -> np.ndarray:
        """One tensor, read now into a fresh buffer (bf16 as uint16 bits)."""

    def extent(self, key: str) -> Extent | None:
        """Where `key`'s bytes lie as stored, C-order and little-endian, in one range of a
        file, if they do (so they can be copied without decoding)."""

    def release(self, key: str) -> None:
        """`key`'s bytes are consumed: hand their pages back, so memory stays near one step."""

    def auto_select(self) -> str | None:
        """The sub-tree to convert when the caller did not say (a training checkpoint's model)."""

    def close(self) -> None: ...


class SourceBase:
    """What a source without the feature answers; sources override what they support."""

    metadata: Mapping[str, str] = {}
    object: Any = None
    shards: tuple[Path, ...] = ()
    auto = False

    def extent(self, key: str) -> Extent | None:
        return None

    def release(self, key: str) -> None:
        pass

    def auto_select(self) -> str | None:
        return None


class Sink(Protocol):
    def write(self, name: str, array: np.ndarray) -> None: ...

    def write_region(self, name: str, extent: Extent) -> bool:
        """Write `name` by copying its stored bytes file-to-file; False: not supported here,
        `write` it instead."""

    def commit(self) -> None:
        """Make the output appear, whole, under its final name."""

    def abort(self) -> None:
        """Remove everything written so far."""


class SinkBase:
    def write_region(self, name: str, extent: Extent) -> bool:
        return False


COPY_CHUNK = 1 << 30  # bytes per copy_file_range call (a tensor may take several)
# The kernel copies a range file-to-file fastest when source and destination offsets agree
# modulo the page cache's large folios: whole folios then move as they are, instead of each
# being stitched from two. Measured here (2 GB, copy_file_range, paired medians vs equal
# offsets): 184 bytes apart 1.40x, 4 KiB apart 1.31x, 64 KiB apart 1.01x, 1 MiB apart 1.03x.
# Sinks whose format has room for padding (`Format.places_copies`) place copied tensors
# that way: safetensors pads its header with spaces, a torch record its padding field.
GRANULE = 64 << 10
# Placing costs up to GRANULE - 1 bytes of padding: only for copies this large (<= 1.6%).
PLACE_FROM = 64 * GRANULE


def copy_residue(copied_from: Mapping[str, int], offsets: Mapping[str, int], sizes: Mapping[str, int],
                 multiple: int) -> int | None:
    """Where a contiguous data block should start, modulo GRANULE, so that the most copied
    bytes land at their source offset modulo GRANULE: each copied tensor votes, with its
    size, for (source offset - its offset in the block) mod GRANULE. Only starts that are
    multiples of `multiple` count (the format's own alignment). None when no start wins
    PLACE_FROM bytes (a small file is not padded for nothing)."""
    votes: dict[int, int] = {}
    for name, src in copied_from.items():
        r = (src - offsets[name]) % GRANULE
        if r % multiple == 0:
            votes[r] = votes.get(r, 0) + sizes[name]
    best = max(sorted(votes), key=votes.__getitem__, default=None)
    return best if best is not None and votes[best] >= PLACE_FROM else None


def worth_placing(nbytes: int) -> bool:
    return nbytes >= PLACE_FROM


def padding(position: int, multiple: int, near: int | None = None) -> int:
    """Bytes to add after `position` to reach a multiple of `multiple`, and also `near`
    modulo GRANULE when `near` is a multiple itself (data copied from there; see GRANULE)."""
    if near is not None and near % multiple == 0:
        return (near - position) % GRANULE
    return -position % multiple


def copy_extent(extent: Extent, fd_out: int, offset_out: int) -> None:
    """Copy `extent` to `fd_out` at `offset_out` inside the kernel (copy_file_range), so the
    bytes never pass through Python or page faults; falls back to pread/pwrite in chunks."""
    file, pos, left = extent.file, extent.offset, extent.nbytes
    fd_in, out = file.fd, offset_out
    fast = hasattr(os, "copy_file_range")
    # The first call stops at the source's next GRANULE boundary, so the others start on
    # one: with offsets placed equal modulo GRANULE, only then do whole folios move (the
    # same 2 GB: 1.45x the time when every call starts 6896 bytes past a boundary).
    head = -pos % GRANULE
    while left:
        n = 0
        if fast:
            try:
                n = os.copy_file_range(fd_in, fd_out, min(left, head or COPY_CHUNK), pos, out)
                head = 0
            except OSError:  # EXDEV on old kernels, EINVAL on some file systems
                fast = False
        if not fast:
            chunk = os.pread(fd_in, min(left, COPY_CHUNK, 8 << 20), pos)
            n = os.pwrite(fd_out, chunk, out) if chunk else 0
        if n <= 0:
            raise CheckpointError(f"{file.path}: ends before byte {pos + left} (truncated while reading?)")
        pos, out, left = pos + n, out + n, left - n


class AtomicPath:
    """A temporary path beside `final`, moved to it on commit and removed on abort, so no
    half-written output is ever seen under the final name. Missing output folders are
    created, and removed again on abort.

    Inside `guarded_writes` it is registered with the run, which removes it on any failure
    or signal (even one raised while the sink was still being built) and decides whether
    commit may replace an existing output. Outside one, commit replaces, as os.replace does."""

    def __init__(self, final: Path, directory: bool = False):
        self.final = Path(final)
        parent = self.final.parent
        self.directory = directory
        self.replace = True
        self.tmp: Path | None = None
        self._files: list = []
        self._done = False
        self.created: list[Path] = []  # folders made for this output, deepest first
        run = getattr(_RUN, "current", None)
        if run is not None:  # registered before anything exists on disk: a signal at any point finds it
            run.adopt(self)
        missing = parent
        while not missing.exists():
            self.created.append(missing)
            missing = missing.parent
        if not missing.is_dir():
            raise UsageError(f"cannot create the output folder {parent}: {missing} is not a folder")
        try:
            parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UsageError(f"cannot create the output folder {parent}: {exc.strerror}") from None
        while True:
            # The name is known (and so removable) before the file exists; the mode is the
            # usual one for new files (the umask applies), not mkstemp's private 0600.
            self.tmp = parent / f".{self.final.name}.{secrets.token_hex(4)}.part"
            try:
                if directory:
                    os.mkdir(self.tmp, 0o777)
                else:
                    os.close(os.open(self.tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
                break
            except FileExistsError:
                continue

    def open(self, mode: str = "wb", **kwargs):
        """The temp file opened for writing; abort closes it (ignoring errors) before unlinking."""
        f = open(self.tmp, mode, **kwargs)
        self._files.append(f)
        return f

    def commit(self) -> None:
        for f in self._files:
            f.close()  # a failed flush (disk full) raises here, before anything is renamed
        if self.replace:
            if self.directory and self.final.is_dir():  # swap, then remove the old output
                old = Path(tempfile.mkdtemp(prefix=f".{self.final.name}.", suffix=".old", dir=self.final.parent))
                os.replace(self.final, old)
                os.replace(self.tmp, self.final)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(self.tmp, self.final)
        else:
            try:
                rename_noreplace(self.tmp, self.final)
            except FileExistsError:
                raise OutputError(f"{self.final} appeared while converting; nothing was replaced "
                                  "(use --force to overwrite it)") from None
        self.tmp = None
        self._done = True

    def abort(self) -> None:
        """Remove the temp output and the folders made for it; never raises, so cleanup
        always happens. Nothing after a commit."""
        if self._done:
            return
        self._done = True
        for f in self._files:
            try:
                f.close()
            except Exception:  # the flush failed (disk full): the data is going away anyway
                pass
        self._files = []
        tmp, self.tmp = self.tmp, None
        try:
            if tmp is None:
                pass
            elif tmp.is_dir() and not tmp.is_symlink():
                shutil.rmtree(tmp, ignore_errors=True)
            else:
                tmp.unlink()
        except OSError:
            pass
        for folder in self.created:
            try:
                folder.rmdir()
            except OSError:  # something else was put there meanwhile: leave it
                break


def rename_noreplace(src: Path, dst: Path) -> None:
    """Move `src` to `dst` in one step, failing with FileExistsError if `dst` exists: no
    check-then-rename window in which a concurrent writer's output could be replaced."""
    if _renameat2(src, dst):
        return
    if src.is_dir():
        # rename(2) replaces an empty directory, so reserve the name atomically first.
        os.mkdir(dst)
        try:
            os.rename(src, dst)
        except OSError:
            os.rmdir(dst)
            raise
    else:
        os.link(src, dst)  # fails if dst exists
        os.unlink(src)


def _renameat2(src: Path, dst: Path) -> bool:
    """renameat2(RENAME_NOREPLACE) where the C library and file system have it."""
    global _LIBC
    if _LIBC is None:
        import ctypes

        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.renameat2  # noqa: B018 - probe: glibc >= 2.28
            _LIBC = libc
        except (OSError, AttributeError):
            _LIBC = False
    if not _LIBC:
        return False
    import ctypes

    at_fdcwd, rename_noreplace_flag = -100, 1
    if _LIBC.renameat2(at_fdcwd, os.fsencode(src), at_fdcwd, os.fsencode(dst), rename_noreplace_flag) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):  # not here: use the fallback
        return False
    raise OSError(err, os.strerror(err), str(dst))


_LIBC = None
_RUN = threading.local()


class guarded_writes:
    """The scope of one conversion's writes. Every `AtomicPath` made inside is removed if
    the block fails, and on SIGTERM/SIGINT (handlers installed for the block in the main
    thread, restored after; the signal becomes `Interrupted`, so every abort runs);
    `replace=False` makes commit refuse to replace an output that exists by then."""

    SIGNALS = ("SIGTERM", "SIGINT")

    def __init__(self, replace: bool = False):
        self.replace = replace
        self.pending: list[AtomicPath] = []
        self._saved: dict = {}

    def adopt(self, atomic: AtomicPath) -> None:
        atomic.replace = self.replace
        self.pending.append(atomic)

    def __enter__(self) -> "guarded_writes":
        self._outer = getattr(_RUN, "current", None)
        _RUN.current = self
        if threading.current_thread() is threading.main_thread():
            for name in self.SIGNALS:
                sig = getattr(signal, name)
                self._saved[sig] = signal.signal(sig, self._interrupt)
        return self

    def _interrupt(self, signum, frame) -> None:
        for sig in self._saved:  # a second signal must not cut the cleanup short
            signal.signal(sig, signal.SIG_IGN)
        raise Interrupted(signum)

    def __exit__(self, kind, exc, tb) -> None:
        try:
            if kind is not None:
                for atomic in self.pending:
                    atomic.abort()
        finally:
            _RUN.current = self._outer
            for sig, handler in self._saved.items():
                signal.signal(sig, handler)
            self._saved = {}


def select(infos: Mapping[str, TensorInfo], prefix: str | None, path: Path) -> dict[str, str]:
    """Map selected names to stored names: the keys under `prefix.`, with it stripped."""
    if not prefix:
        return {k: k for k in infos}
    head = prefix + "."
    out = {k[len(head):]: k for k in infos if k.startswith(head)}
    if not out:
        tops = sorted({k.split(".", 1)[0] for k in infos})
        shown = ", ".join(tops[:12]) + (", ..." if len(tops) > 12 else "")
        raise CheckpointError(f"{path}: select {prefix}: no tensors under '{prefix}' (top level: {shown})")
    return out


class Selected(SourceBase):
    """A source seen through `select`: only the sub-tree, with names relative to it."""

    def __init__(self, inner: Source, prefix: str | None):
        self.inner = inner
        self.prefix = prefix
        self.path = inner.path
        self.metadata = inner.metadata
        self.object = inner.object
        self.shards = inner.shards
        all_infos = inner.infos()
        self._names = select(all_infos, prefix, inner.path)
        self._infos = {k: all_infos[v] for k, v in self._names.items()}

    def infos(self) -> Mapping[str, TensorInfo]:
        return self._infos

    def read(self, key: str) -> np.ndarray:
        return self.inner.read(self._names[key])

    def extent(self, key: str) -> Extent | None:
        return self.inner.extent(self._names[key])

    def release(self, key: str) -> None:
        self.inner.release(self._names[key])

    def close(self) -> None:
        self.inner.close()


def abort_parts(sinks, atomic: "AtomicPath") -> None:
    """Abort the sinks of a directory output (their errors ignored: cleanup never raises),
    then the directory."""
    for sink in sinks:
        try:
            sink.abort()
        except Exception:
            pass
    atomic.abort()
