"""Reading checkpoint files that may be hostile: the primitives every reader uses.

- Only regular files are opened (a FIFO or `/dev/zero` would hang or never end).
- Bytes are read by position into fresh buffers (`RegularFile.read_range`), never handed out
  as views of a memory map: a file truncated while it is read gives a short read, which is a
  `CheckpointError`, instead of a SIGBUS that kills the process.
- `reading(path)` is the one error discipline: whatever goes wrong while a file is parsed
  becomes a `CheckpointError` naming the file, its message clipped to a readable length.
- Zip members (`.npz`, torch's zip format) are read through `ZipMembers`, which refuses
  encryption and unknown compression and bounds every member's size before inflating it.
"""

from __future__ import annotations

import os
import stat
import zipfile
import zlib
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from ..core.background import THREADS, in_parallel
from ..core.paths import reason
from ..core.quoting import MAX_MESSAGE, MAX_NAME, MAX_QUOTE, brief, clip, shown, shown_path
from ..errors import CheckpointError, MapspecError
from .byterange import ByteRange

# The quoting helpers are core.quoting's, named here too for the readers that use them.
__all__ = ["MAX_MESSAGE", "MAX_NAME", "MAX_QUOTE", "MAX_EXPANDED_BYTES", "MAX_DEFLATE_RATIO", "brief", "clip",
           "shown", "shown_path", "open_regular", "read_small", "RegularFile", "reading", "ZipMembers"]

# Values a file holds without storing them (torch views with stride 0, MXNet sparse arrays
# read as dense) may expand, all together, to at most this many bytes per file.
MAX_EXPANDED_BYTES = 256 << 20
# Reads of at least this many bytes are split between the cores (`RegularFile.read_into`).
PARALLEL_BYTES = 4 << 20
PAGE = 4096
# Deflate cannot expand data more than 1032:1; a member claiming more is lying.
MAX_DEFLATE_RATIO = 1032


def _kind(mode: int) -> str:
    for test, kind in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return kind
    return "not a regular file"


def open_regular(path: Path) -> int:
    """A read-only descriptor of `path`, which must be a regular file (symlinks followed).

    O_NONBLOCK keeps the open itself from waiting on a FIFO; the type is checked on the
    opened descriptor, so the file cannot be swapped between the check and the read."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise CheckpointError(f"{path}: {exc.strerror or exc}") from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise CheckpointError(f"{path}: {_kind(mode)}, not a checkpoint file; mapspec reads regular files only")
    os.set_blocking(fd, True)
    return fd


def location(path):
    """`path` as readers keep it: a `remote.URLPath` for a URL (s3://, hf://...), else a Path."""
    from .remote import URLPath, is_url

    if isinstance(path, URLPath):
        return path
    return URLPath(path) if is_url(path) else Path(path)


def open_bytes(path):
    """The byte-range reader for `path`: a `RegularFile`, or a `remote.RemoteFile` for a URL;
    both have size, read_into/read_range/read_bytes, copy_to, file() and close()."""
    path = location(path)
    if isinstance(path, Path):
        return RegularFile(path)
    from .remote import RemoteFile

    return RemoteFile(path)


def read_small(path: Path, limit: int, what: str = "file") -> bytes:
    """The whole of a small regular file (a pickle, a meta record), refusing one over `limit`."""
    with open_bytes(path) as f:
        if f.size > limit:
            raise CheckpointError(f"{path}: {f.size} bytes, more than a {what} can be ({limit})")
        return f.read_bytes(0, f.size, what)


class RegularFile(ByteRange):
    """A regular file read by position. Every read is a fresh buffer of exactly the bytes
    asked for; a range past the end, or a file that shrinks while it is read, is a
    `CheckpointError` naming the byte offset."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.fd = open_regular(self.path)
        self.size = os.fstat(self.fd).st_size

    def read_into(self, buffer: memoryview, offset: int, what: str = "data") -> None:
        """`buffer` filled from byte `offset`. A range of PARALLEL_BYTES or more is read in
        pieces on both cores (`in_parallel`): the copy out of the page cache is the kernel's
        work on the reading thread, 4-7 GB/s a core here, so two threads read it faster."""
        nbytes = len(buffer)
        self._check_range(offset, nbytes, what)
        if nbytes < PARALLEL_BYTES:
            self._read_part(buffer, offset, what)
            return
        step = (-(-nbytes // THREADS) + PAGE - 1) & ~(PAGE - 1)  # the pieces start on page boundaries
        in_parallel(range(0, nbytes, step), lambda at: self._read_part(buffer[at:at + step], offset + at, what))

    def _read_part(self, buffer: memoryview, offset: int, what: str) -> None:
        got, nbytes = 0, len(buffer)
        while got < nbytes:
            n = os.preadv(self.fd, [buffer[got:]], offset + got)
            if n <= 0:
                raise CheckpointError(f"{self.path}: the file ended at byte {offset + got} while reading "
                                      f"{what} (it was truncated while being read)")
            got += n

    def copy_to(self, fd_out: int, offset_out: int, offset: int, nbytes: int) -> None:
        """Bytes [offset, offset + nbytes) copied to `fd_out` at `offset_out` (see `copy_extent`)."""
        from .placement import copy_extent
        from .protocol import Extent

        copy_extent(Extent(self, offset, nbytes), fd_out, offset_out)

    def release(self, offset: int, nbytes: int) -> None:
        """Tell the kernel a range is consumed, so a long conversion does not crowd the page cache."""
        if hasattr(os, "posix_fadvise") and self.fd >= 0 and nbytes > 0:
            os.posix_fadvise(self.fd, offset, nbytes, os.POSIX_FADV_DONTNEED)

    def willneed(self, offset: int, nbytes: int) -> None:
        """Tell the kernel a range is wanted soon: its disk reads start now, in the background."""
        if hasattr(os, "posix_fadvise") and self.fd >= 0 and nbytes > 0:
            os.posix_fadvise(self.fd, offset, nbytes, os.POSIX_FADV_WILLNEED)

    def file(self):
        """A buffered file object over the same descriptor (for zipfile), position 0."""
        return os.fdopen(os.dup(self.fd), "rb")

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


@contextmanager
def reading(path: Path | str) -> Iterator[None]:
    """Turn any failure while `path` is parsed into one `CheckpointError` naming the file.

    Errors mapspec raises on purpose pass (clipped); MemoryError and RecursionError mean the
    file declares more than can be read; anything else is the file being malformed in a way
    no check caught, reported by type, never with a traceback."""
    try:
        yield
    except CheckpointError as exc:
        if clip(str(exc)) != str(exc):  # too long, or quoting unprintable bytes
            raise CheckpointError(clip(str(exc))) from None
        raise
    except MapspecError:
        raise
    except MemoryError:
        raise CheckpointError(f"{path}: not enough memory to read it (the file declares more data than it "
                              "holds, or more than fits)") from None
    except RecursionError:
        raise CheckpointError(f"{path}: nested too deeply to read") from None
    except OSError as exc:
        raise CheckpointError(f"{shown_path(path)}: {reason(exc)}") from None
    except zipfile.BadZipFile as exc:  # its message may quote the archive's raw bytes: a short excerpt
        raise CheckpointError(f"{shown_path(path)}: corrupt zip archive ({clip(exc, MAX_QUOTE)})") from None
    except Exception as exc:  # noqa: BLE001 - any parse failure is bad input, not a crash
        raise CheckpointError(f"{shown_path(path)}: unreadable ({type(exc).__name__}: {clip(exc, MAX_QUOTE)})") from None


class ZipMembers:
    """A zip archive's directory, with members read under bounds.

    Only stored and deflated members are read (the only methods numpy and torch write);
    encrypted members are refused; a member's declared size must be possible for its
    compressed size, and inflating stops at the declared size, so a zip bomb costs at most
    what its directory admits, and that is checked before anything is allocated."""

    def __init__(self, file: RegularFile):
        self.file = file
        self.path = file.path
        self._handle = file.file()
        try:
            self.zip = zipfile.ZipFile(self._handle)
        except BaseException:
            self._handle.close()
            raise
        self.infos = self.zip.infolist()
        self.by_name = {i.filename: i for i in self.infos}

    def check(self, info: zipfile.ZipInfo, limit: int | None = None) -> None:
        name = shown(info.filename)
        if info.flag_bits & 0x1:
            raise CheckpointError(f"{self.path}: member {name} is encrypted; mapspec reads unencrypted archives only")
        if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            raise CheckpointError(f"{self.path}: member {name} uses zip compression method {info.compress_type}; "
                                  "only stored and deflated members are supported")
        if info.compress_type == zipfile.ZIP_STORED and info.file_size != info.compress_size:
            raise CheckpointError(f"{self.path}: stored member {name} declares {info.file_size} bytes "
                                  f"but holds {info.compress_size}")
        if info.compress_type == zipfile.ZIP_DEFLATED and info.file_size > MAX_DEFLATE_RATIO * info.compress_size + 1024:
            raise CheckpointError(f"{self.path}: member {name} claims to inflate {info.compress_size} bytes to "
                                  f"{info.file_size}, more than deflate can (a zip bomb?)")
        if info.header_offset + info.compress_size > self.file.size:
            raise CheckpointError(f"{self.path}: member {name} at byte {info.header_offset} runs past the end "
                                  "of the file")
        if limit is not None and info.file_size > limit:
            raise CheckpointError(f"{self.path}: member {name} is {info.file_size} bytes, more than it can be "
                                  f"({limit})")

    def open(self, info: zipfile.ZipInfo, limit: int | None = None):
        """A stream of the member's bytes (CRC checked at its end by zipfile)."""
        self.check(info, limit)
        return self.zip.open(info)

    def read(self, info: zipfile.ZipInfo, limit: int) -> bytes:
        """A small member's bytes, whole. Its CRC-32 is checked unless it is 0, as torch
        writes it with `set_crc32_options(False)` (torch.load never checks it)."""
        name = shown(info.filename)
        raw = self.file.read_bytes(self.data_offset(info, limit), info.compress_size, f"member {name}")
        if info.compress_type == zipfile.ZIP_STORED:
            data = raw
        else:
            inflate = zlib.decompressobj(-15)
            try:
                data = inflate.decompress(raw, info.file_size + 1)
            except zlib.error as exc:
                raise CheckpointError(f"{self.path}: member {name} does not inflate ({clip(exc, MAX_QUOTE)})") from None
        if len(data) != info.file_size:
            raise CheckpointError(f"{self.path}: member {name} holds {len(data)} bytes, "
                                  f"its directory entry says {info.file_size}")
        if info.CRC and zlib.crc32(data) != info.CRC:
            raise CheckpointError(f"{self.path}: member {name} fails its CRC-32 check (corrupt)")
        return data

    def data_offset(self, info: zipfile.ZipInfo, limit: int | None = None) -> int:
        """Where a member's (stored or compressed) bytes start in the file, from its local header."""
        self.check(info, limit)
        at = info.header_offset
        head = self.file.read_bytes(at, 30, f"the local header of {shown(info.filename)}")
        if head[:4] != b"PK\x03\x04":
            raise CheckpointError(f"{self.path}: corrupt local header for {shown(info.filename)} at byte {at}")
        name_len = int.from_bytes(head[26:28], "little")
        extra_len = int.from_bytes(head[28:30], "little")
        start = at + 30 + name_len + extra_len
        if start + info.compress_size > self.file.size:
            raise CheckpointError(f"{self.path}: member {shown(info.filename)} at byte {start} runs past the end "
                                  "of the file")
        return start

    def close(self) -> None:
        self.zip.close()
        self._handle.close()
