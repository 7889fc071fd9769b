"""TensorRT `.wts` text, as the tensorrtx `gen_wts.py` scripts write it.

    <entry count>\\n
    <name> <value count>  <8 hex digits of big-endian float32> <...>\\n   (one line per tensor)

Every value is written as float32 (integer buffers such as num_batches_tracked included) and
shapes are not kept: the C++ loader wants flat weights. Read back, each tensor is 1-d float32.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

from ..core.lazy import numpy as np

from ..core import dtypes
from ..errors import CheckpointError
from ..core.tensorinfo import TensorInfo
from .atomic import AtomicPath
from .protocol import SinkBase, SourceBase
from .registry import Format
from .reading import location, open_bytes, clip, shown


class WtsSource(SourceBase):
    def __init__(self, path: Path):
        self.path = location(path)
        self._file = open_bytes(self.path)
        try:
            self._lines = self._index()
        except BaseException:
            self._file.close()
            raise

    def _index(self) -> dict[str, tuple[int, int, int]]:
        """name -> (byte offset of its values, end of its line, value count)."""
        lines: dict[str, tuple[int, int, int]] = {}
        with self._file.file() as f:
            head = f.readline(64)
            try:
                n = _count(head)
            except ValueError:
                raise CheckpointError(f"{self.path}: not a .wts file (first line {clip(repr(head), 60)} is not "
                                      "a count)") from None
            if n > self._file.size // 4:
                raise CheckpointError(f"{self.path}: {n} entries announced, more than a {self._file.size}-byte "
                                      "file can hold")
            for i in range(n):
                at = f.tell()
                line = f.readline()
                if not line.strip():
                    raise CheckpointError(f"{self.path}: {n} entries announced, the file ends after {i} "
                                          f"(byte {at})")
                parts = line.split(None, 2)
                if len(parts) < 2:
                    raise CheckpointError(f"{self.path}: malformed entry at byte {at} (name and count expected)")
                try:
                    name = parts[0].decode("utf-8")
                    count = _count(parts[1])
                except UnicodeDecodeError:
                    raise CheckpointError(f"{self.path}: the name at byte {at} is not UTF-8") from None
                except ValueError:
                    raise CheckpointError(f"{self.path}: entry {shown(name)} at byte {at}: value count "
                                          f"{clip(repr(parts[1]), 40)} is not a number") from None
                if "\0" in name:  # C string readers cut a name there: no two readings would agree
                    raise CheckpointError(f"{self.path}: the name at byte {at} holds a NUL character")
                if name in lines:
                    raise CheckpointError(f"{self.path}: entry {shown(name)} at byte {at} appears twice")
                values = len(parts[2].split()) if len(parts) > 2 else 0
                if values != count:
                    raise CheckpointError(f"{self.path}: entry {shown(name)} at byte {at} announces {count} values, "
                                          f"holds {values}")
                name_at = line.index(parts[0])
                start = at + line.index(parts[1], name_at + len(parts[0])) + len(parts[1])
                lines[name] = (start, at + len(line), count)
            if f.read(1 << 16).strip():
                raise CheckpointError(f"{self.path}: more entries than the {n} announced (byte {f.tell()})")
        return lines

    def infos(self) -> Mapping[str, TensorInfo]:
        return {k: TensorInfo((n,), "float32") for k, (_, _, n) in self._lines.items()}

    def read(self, key: str) -> np.ndarray:
        start, end, count = self._lines[key]
        tokens = self._file.read_bytes(start, end - start, f"entry {shown(key)}").split()
        if any(len(t) != 8 for t in tokens):
            bad = next(t for t in tokens if len(t) != 8)
            raise CheckpointError(f"{self.path}: entry {shown(key)}: value {clip(repr(bad), 40)} is not 8 hex digits")
        try:
            raw = bytes.fromhex(b"".join(tokens).decode("ascii"))
        except (ValueError, UnicodeDecodeError):
            raise CheckpointError(f"{self.path}: entry {shown(key)} holds a value that is not hexadecimal") from None
        return np.frombuffer(raw, ">f4").astype("<f4").reshape(count)

    def close(self) -> None:
        self._file.close()


def _count(text: bytes) -> int:
    """A non-negative decimal count of at most 19 digits (ValueError otherwise)."""
    text = text.strip()
    if not text.isdigit() or len(text) > 19:
        raise ValueError(text)
    return int(text)


class WtsSink(SinkBase):
    def __init__(self, path: Path, outputs: Mapping[str, TensorInfo], metadata=None):
        self.atomic = AtomicPath(path)
        self.provenance = metadata
        self.infos = dict(outputs)
        self.file = self.atomic.open("w", encoding="ascii", newline="\n")
        self.file.write(f"{len(outputs)}\n")

    def write(self, name: str, array: np.ndarray) -> None:
        values = dtypes.cast(np.asarray(array), self.infos[name].dtype, "float32")
        raw = np.asarray(values, dtype=">f4").reshape(-1).tobytes()
        self.file.write(f"{name} {len(raw) // 4} ")
        if raw:
            self.file.write(" " + raw.hex(" ", -4))
        self.file.write("\n")

    def commit(self) -> None:
        self.file.close()
        if self.provenance is not None:  # every line of a .wts is a weight: a sidecar
            self.provenance.write_sidecar(self.atomic.final)
        self.atomic.commit()

    def abort(self) -> None:
        self.atomic.abort()


# Every dtype goes in: like tensorrtx's gen_wts.py, the writer stores each value as float32.
FORMAT = Format("wts", "TensorRT .wts (tensorrtx)", WtsSource, WtsSink, frozenset(dtypes.NUMPY_NAMES),
                sniff=lambda path, head: head.split(b"\n", 1)[0].strip().isdigit())
