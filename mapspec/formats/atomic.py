"""Atomic output: every file or folder is written under a temporary name beside its final
one and renamed into place whole (`AtomicPath`); `guarded_writes` is one conversion's scope,
which removes what it wrote on any failure and on SIGTERM/SIGINT."""

from __future__ import annotations

import errno
import os
import secrets
import shutil
import signal
import tempfile
import threading
from pathlib import Path

from ..errors import Interrupted, OutputError, UsageError


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


def current_run() -> "guarded_writes | None":
    """The innermost `guarded_writes` active on this thread, if any (outputs register with it)."""
    return getattr(_RUN, "current", None)


def abort_parts(sinks, atomic: AtomicPath) -> None:
    """Abort the sinks of a directory output (their errors ignored: cleanup never raises),
    then the directory."""
    for sink in sinks:
        try:
            sink.abort()
        except Exception:
            pass
    atomic.abort()
