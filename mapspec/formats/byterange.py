"""The byte-range reader every format's parser reads through: `reading.RegularFile` for a
local file, `remote.RemoteFile` for an object on a store. Both have `path`, `size`, `fd`
(-1 without a descriptor), `read_into(buffer, offset)`, `copy_to(fd, at, offset, n)`,
`release`, `willneed`, `file()` (a seekable file object, for zipfile) and `close`; this base
gives them the range check and the fresh-buffer reads built on `read_into`."""

from __future__ import annotations

from ..core.lazy import numpy as np

from ..errors import CheckpointError


class ByteRange:
    path: object
    size: int
    kind = "file"  # in messages: "the 100-byte file ends first"

    def _check_range(self, offset: int, nbytes: int, what: str) -> None:
        if offset < 0 or nbytes < 0 or offset + nbytes > self.size:  # before allocating anything
            raise CheckpointError(f"{self.path}: {what} at byte {offset} needs {nbytes} bytes, "
                                  f"the {self.size}-byte {self.kind} ends first (truncated?)")

    def read_into(self, buffer: memoryview, offset: int, what: str = "data") -> None:
        raise NotImplementedError

    def read_range(self, offset: int, nbytes: int, what: str = "data") -> np.ndarray:
        """Bytes [offset, offset + nbytes) as a fresh, writable uint8 array."""
        self._check_range(offset, nbytes, what)
        buf = np.empty(nbytes, np.uint8)
        self.read_into(memoryview(buf), offset, what)
        return buf

    def read_bytes(self, offset: int, nbytes: int, what: str = "data") -> bytes:
        """The same bytes as `bytes` (headers, metadata: no numpy needed)."""
        self._check_range(offset, nbytes, what)
        buf = bytearray(nbytes)
        if nbytes:
            self.read_into(memoryview(buf), offset, what)
        return bytes(buf)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        pass
