"""Every path mapspec is given (a checkpoint, an output, a spec, an `include`, a --config,
a --target, a shard named by an index) is checked here before it is used, so a path that
cannot be resolved is one `error:` line (exit 2) naming the path and what is wrong with
it, never an OSError, ValueError or RuntimeError from the standard library: a NUL byte, a
symlink loop, a name longer than the file system allows, a folder where a file is
expected (or the other way round), a missing folder, no permission.

`existing(path, role)` checks a path to read; `writable(path, role)` one to write, before
anything is written: its folder (or the nearest one that exists, for an output whose
missing folders are created) must be a folder mapspec may write in, and its name, with
the temporary name written first, must fit the file system. `resolve(path)` is
`Path.resolve` that never raises. The caller chooses the error class (a checkpoint's is a
CheckpointError, a spec's a SpecError, an option's a UsageError): all exit 2."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path
from typing import Callable

from ..errors import UsageError
from .quoting import shown_path

# A temporary output is named `.NAME.xxxxxxxx.part` (formats/atomic.AtomicPath): 15 bytes
# more than NAME, which must fit the file system's name limit too.
TEMP_EXTRA = len("..12345678.part")

_REASONS = {
    errno.ENOENT: "no such file or folder",
    errno.ELOOP: "a symbolic link loop (too many levels of symbolic links)",
    errno.ENAMETOOLONG: "a name longer than the file system allows",
    errno.ENOTDIR: "a part of the path is a file, not a folder",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EROFS: "a read-only file system",
}


def reason(exc: OSError) -> str:
    """What an OSError about a path means, in words (never its repr)."""
    return _REASONS.get(exc.errno, exc.strerror or str(exc) or type(exc).__name__)


def plain(path: object, role: str, error: Callable[[str], Exception] = UsageError) -> str:
    """`path` as text, refused when it holds a NUL byte (no file name can) or is empty."""
    try:
        text = os.fspath(path)
    except TypeError:
        raise error(f"{role}: not a path ({type(path).__name__})") from None
    if isinstance(text, bytes):
        try:
            text = os.fsdecode(text)
        except UnicodeDecodeError:  # pragma: no cover - fsdecode escapes undecodable bytes
            raise error(f"{role}: a path that cannot be decoded") from None
    if "\0" in text:
        raise error(f"{role} {shown_path(text)}: the path holds a NUL byte, which no file name can")
    if not text:
        raise error(f"{role}: an empty path")
    return text


def _problem(role: str, text: str, why: str) -> str:
    return f"{role} {shown_path(text)}: {why}"


def _missing(text: str) -> str:
    """Why a path that does not exist cannot be found: its folder is missing, or it is."""
    parent = os.path.dirname(text)
    if parent and not os.path.isdir(parent):
        return f"the folder {shown_path(parent)} does not exist"
    return "no such file or folder"


def existing(path: object, role: str, *, kind: str = "any",
             error: Callable[[str], Exception] = UsageError) -> Path:
    """`path`, which must exist: `kind` 'file' (a regular file, symlinks followed), 'dir',
    or 'any'. Raises `error(message)` otherwise."""
    text = plain(path, role, error)
    try:
        st = os.stat(text)
    except FileNotFoundError:
        raise error(_problem(role, text, _missing(text))) from None
    except OSError as exc:
        raise error(_problem(role, text, reason(exc))) from None
    except ValueError as exc:  # pragma: no cover - NUL is caught above; nothing else raises it
        raise error(_problem(role, text, str(exc))) from None
    if kind == "file" and stat.S_ISDIR(st.st_mode):
        raise error(_problem(role, text, "a folder, not a file"))
    if kind == "dir" and not stat.S_ISDIR(st.st_mode):
        raise error(_problem(role, text, "not a folder"))
    if not os.access(text, os.R_OK):
        raise error(_problem(role, text, "permission denied (not readable)"))
    return Path(text)


def name_max(folder: str) -> int:
    try:
        return os.pathconf(folder, "PC_NAME_MAX")
    except (OSError, ValueError):
        return 255


def writable(path: object, role: str, *, directory: bool | None = False, make_folders: bool = True,
             error: Callable[[str], Exception] = UsageError) -> Path:
    """`path`, to be written (replaced if it exists): it is not a folder (a file, with
    `directory`; either, with None); its nearest existing folder is a folder this process may write in; its
    missing folders may be made (`make_folders`, else their absence is the error); and every
    name along it, the temporary one included, fits the file system. Nothing is created."""
    text = plain(path, role, error)
    try:
        st = os.stat(text)
    except FileNotFoundError:
        st = None
    except OSError as exc:
        raise error(_problem(role, text, reason(exc))) from None
    if st is not None and directory is not None:
        if stat.S_ISDIR(st.st_mode) and not directory:
            raise error(_problem(role, text, "a folder, not a file"))
        if directory and not stat.S_ISDIR(st.st_mode):
            raise error(_problem(role, text, "a file, not a folder"))
    absolute = os.path.abspath(text)
    folder, missing = os.path.dirname(absolute), []
    while True:
        try:
            fst = os.stat(folder)
            break
        except FileNotFoundError:
            missing.append(os.path.basename(folder))
            parent = os.path.dirname(folder)
            if parent == folder:  # pragma: no cover - the root always exists
                break
            folder = parent
        except OSError as exc:
            raise error(_problem(role, text, f"its folder {shown_path(folder)}: {reason(exc)}")) from None
    if not stat.S_ISDIR(fst.st_mode):
        raise error(_problem(role, text, f"{shown_path(folder)} is a file, not a folder"))
    if missing and not make_folders:
        raise error(_problem(role, text, f"the folder {shown_path(os.path.dirname(absolute))} does not exist"))
    if not os.access(folder, os.W_OK | os.X_OK):
        raise error(_problem(role, text, f"permission denied: cannot write in {shown_path(folder)}"))
    limit = name_max(folder)
    for name in [*missing, os.path.basename(absolute)]:
        size = len(os.fsencode(name))
        if size > limit:
            raise error(_problem(role, text, f"a name of {size} bytes, longer than the file system allows "
                                             f"({limit})"))
    if len(os.fsencode(os.path.basename(absolute))) + TEMP_EXTRA > limit:
        raise error(_problem(role, text, f"the name is too long for the temporary name written first "
                                         f"(at most {limit - TEMP_EXTRA} bytes)"))
    return Path(text)


def resolve(path: object, role: str = "path", error: Callable[[str], Exception] = UsageError) -> Path:
    """`Path(path).resolve()`, or `error` for a path that cannot be resolved (a loop)."""
    text = plain(path, role, error)
    try:
        return Path(text).resolve()
    except (OSError, RuntimeError) as exc:  # RuntimeError: a symlink loop (Python < 3.13)
        why = reason(exc) if isinstance(exc, OSError) else _REASONS[errno.ELOOP]
        raise error(_problem(role, text, why)) from None


def replace_text(path: Path, text: str, role: str = "output") -> None:
    """Write `text` to `path` whole or not at all: into a temporary file beside it, renamed
    over it at the end (a symlink's target is replaced, the link kept). `path` was checked
    with `writable`; what still fails (a full disk) is an OutputError, nothing left behind."""
    import secrets

    from ..errors import OutputError

    final = Path(os.path.realpath(path)) if os.path.islink(path) else Path(path)
    tmp = final.with_name(f".{final.name}.{secrets.token_hex(4)}.part")
    try:
        with open(tmp, "x", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, final)
    except OSError as exc:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise OutputError(_problem(role, str(path), f"cannot write: {reason(exc)}")) from None
