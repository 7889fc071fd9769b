"""mapspec's per-user cache directory: things that are slow to compute and keyed by exactly
what they depend on (the spec parser's tables, a source file's sha256).

`$XDG_CACHE_HOME/mapspec` (default ~/.cache/mapspec). Its contents decide what mapspec
trusts (a pickled parser, a recorded digest), so it is used only when it is a directory
private to this user; otherwise, or with MAPSPEC_NO_CACHE=1, nothing is cached."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def cache_dir(*parts: str) -> Path | None:
    """The private cache directory (made 0700 if missing), or None where there is none."""
    if os.environ.get("MAPSPEC_NO_CACHE"):
        return None
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    root = Path(base) / "mapspec"
    folder = root.joinpath(*parts)
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        for d in {root, folder}:
            st = d.stat()
            if st.st_uid != os.getuid() or st.st_mode & 0o022:
                return None
    except (OSError, AttributeError):  # AttributeError: no os.getuid (Windows)
        return None
    return folder


def write_atomically(path: Path, data: bytes) -> None:
    """Replace `path` with `data` so a concurrent reader sees the old file or the new one,
    never half of one. A failure (full disk, read-only home) leaves the cache as it was."""
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        except BaseException:
            os.unlink(tmp)
            raise
    except OSError:
        pass
