"""Where copied bytes go: tensors copied file-to-file by the kernel (`copy_extent`), and
the padding that places them at their source offset modulo GRANULE, where the kernel
copies them fastest."""

from __future__ import annotations

import os
from typing import Any, Mapping

from ..core.lazy import numpy as np
from ..errors import CheckpointError
from .protocol import Extent, SinkBase, row_bytes

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
    if file.fd < 0:  # not a local file (an object on a store): its own ranged copy
        file.copy_to(fd_out, offset_out, pos, left)
        return
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


class OffsetSink(SinkBase):
    """A single-file sink whose header fixed every tensor's place first: `file` (open), the
    data start `base`, `offsets` and `infos` by name. Each tensor goes straight to its place,
    from memory or copied file to file; `written` records which are done."""

    file: Any
    base: int
    offsets: dict
    infos: dict
    written: set

    def write(self, name: str, array: "np.ndarray") -> None:
        from ..core import dtypes

        self.file.seek(self.base + self.offsets[name])
        self.file.write(dtypes.raw(array, self.infos[name].dtype))
        self.written.add(name)

    def write_region(self, name: str, extent: Extent) -> bool:
        self.file.flush()
        copy_extent(extent, self.file.fileno(), self.base + self.offsets[name])
        self.written.add(name)
        return True

    def takes_rows(self, name: str) -> bool:
        return row_bytes(self.infos[name]) is not None

    def write_rows(self, name: str, start: int, array: "np.ndarray") -> None:
        from ..core import dtypes

        info = self.infos[name]
        self.file.seek(self.base + self.offsets[name] + start * row_bytes(info))
        self.file.write(dtypes.raw(array, info.dtype))
        if start + array.shape[0] == info.shape[0]:  # the last rows: the tensor is whole
            self.written.add(name)
