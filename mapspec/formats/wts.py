"""TensorRT `.wts` text, as the tensorrtx `gen_wts.py` scripts write it.

    <entry count>\\n
    <name> <value count>  <8 hex digits of big-endian float32> <...>\\n   (one line per tensor)

Every value is written as float32 (integer buffers such as num_batches_tracked included) and
shapes are not kept: the C++ loader wants flat weights. Read back, each tensor is 1-d float32.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import numpy as np

from .. import dtypes
from ..errors import CheckpointError
from ..plan import TensorInfo
from .base import AtomicPath


class WtsSource:
    def __init__(self, path: Path):
        self.path = Path(path)
        self._lines: dict[str, tuple[int, int]] = {}  # name -> (byte offset of the values, count)
        try:
            with open(self.path, "rb") as f:
                head = f.readline()
                try:
                    n = int(head)
                except ValueError:
                    raise CheckpointError(f"{self.path}: not a .wts file (first line {head[:40]!r} is not a count)") from None
                for i in range(n):
                    at = f.tell()
                    line = f.readline()
                    if not line:
                        raise CheckpointError(f"{self.path}: {n} entries announced, the file ends after {i}")
                    parts = line.split(b" ", 2)
                    if len(parts) < 2:
                        raise CheckpointError(f"{self.path}: malformed entry at byte {at}")
                    name, count = parts[0].decode("utf-8"), int(parts[1])
                    values = (len(parts[2].split()) if len(parts) > 2 else 0)
                    if values != count:
                        raise CheckpointError(f"{self.path}: entry {name} at byte {at} announces {count} values, holds {values}")
                    self._lines[name] = (at + len(parts[0]) + len(parts[1]) + 2, count)
        except OSError as exc:
            raise CheckpointError(f"{self.path}: {exc.strerror}") from None

    def infos(self) -> Mapping[str, TensorInfo]:
        return {k: TensorInfo((n,), "float32") for k, (_, n) in self._lines.items()}

    def read(self, key: str) -> np.ndarray:
        at, count = self._lines[key]
        with open(self.path, "rb") as f:
            f.seek(at)
            text = f.readline().split()
        raw = bytes.fromhex("".join(t.decode() for t in text))
        return np.frombuffer(raw, ">f4").astype("<f4").reshape(count)

    def close(self) -> None:
        pass


class WtsSink:
    def __init__(self, path: Path, outputs: Mapping[str, TensorInfo], metadata=None):
        self.atomic = AtomicPath(path)
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
        self.atomic.commit()

    def abort(self) -> None:
        self.atomic.abort()
