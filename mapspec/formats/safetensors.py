"""safetensors: an 8-byte header length, a JSON header, then the data buffer.

Read: the header is parsed here and every tensor is a zero-copy slice of a memory map, because
the `safetensors` library's numpy API copies each tensor and cannot represent bf16. Write:
the plan knows every shape before a tensor is read, so the header is written first and each
tensor is written straight to its offset as it arrives; the library needs all tensors in
memory at once. Tests check both directions against the library."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Mapping

import numpy as np

from .. import dtypes
from ..errors import CheckpointError
from ..plan import TensorInfo
from .base import AtomicPath, MappedFile

NAMES = {
    "F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16",
    "I64": "int64", "I32": "int32", "I16": "int16", "I8": "int8",
    "U64": "uint64", "U32": "uint32", "U16": "uint16", "U8": "uint8", "BOOL": "bool",
}
CODES = {v: k for k, v in NAMES.items()}
MAX_HEADER = 100_000_000


class SafetensorsSource:
    def __init__(self, path: Path):
        self.path = Path(path)
        try:
            size = self.path.stat().st_size
            with open(self.path, "rb") as f:
                head = f.read(8)
                if len(head) < 8:
                    raise CheckpointError(f"{self.path}: truncated safetensors file (no header length)")
                (n,) = struct.unpack("<Q", head)
                if n > MAX_HEADER or 8 + n > size:
                    raise CheckpointError(f"{self.path}: safetensors header length {n} at byte 0 "
                                          f"does not fit a {size}-byte file")
                header = json.loads(f.read(n))
        except OSError as exc:
            raise CheckpointError(f"{self.path}: {exc.strerror}") from None
        except (ValueError, UnicodeDecodeError) as exc:
            raise CheckpointError(f"{self.path}: safetensors header is not valid JSON ({exc})") from None
        if not isinstance(header, dict):
            raise CheckpointError(f"{self.path}: safetensors header is not a JSON object")
        self.metadata = header.pop("__metadata__", None) or {}
        self._base = 8 + n
        buffer = size - self._base
        self._infos: dict[str, TensorInfo] = {}
        self._offsets: dict[str, tuple[int, int]] = {}
        for name, meta in header.items():
            try:
                dtype = NAMES[meta["dtype"]]
                shape = tuple(int(s) for s in meta["shape"])
                begin, end = (int(x) for x in meta["data_offsets"])
            except (KeyError, TypeError, ValueError):
                raise CheckpointError(f"{self.path}: tensor '{name}' has an unsupported or malformed "
                                      f"header entry {meta!r}") from None
            info = TensorInfo(shape, dtype)
            if not (0 <= begin <= end <= buffer) or end - begin != info.nbytes:
                raise CheckpointError(f"{self.path}: tensor '{name}' data [{begin}, {end}) does not fit "
                                      f"its shape {shape} or the {buffer}-byte buffer")
            self._infos[name] = info
            self._offsets[name] = (begin, end)
        self._file = MappedFile(self.path)
        self._map = self._file.array

    def infos(self) -> Mapping[str, TensorInfo]:
        return self._infos

    def read(self, key: str) -> np.ndarray:
        info = self._infos[key]
        begin, end = self._offsets[key]
        raw = self._map[self._base + begin:self._base + end]
        return raw.view(dtypes.STORAGE[info.dtype]).reshape(info.shape)

    def release(self, key: str) -> None:
        begin, end = self._offsets[key]
        self._file.release(self._base + begin, self._base + end)

    def close(self) -> None:
        self._file.close()
        self._map = None


class SafetensorsSink:
    def __init__(self, path: Path, outputs: Mapping[str, TensorInfo], metadata: dict[str, str] | None = None):
        self.atomic = AtomicPath(path)
        # Larger items first, then by name, as the library orders them: every tensor stays aligned.
        order = sorted(outputs, key=lambda k: (-dtypes.itemsize(outputs[k].dtype), k))
        header: dict = {"__metadata__": metadata or {"format": "pt"}}
        self.offsets: dict[str, int] = {}
        self.infos = dict(outputs)
        pos = 0
        for name in order:
            info = outputs[name]
            header[name] = {"dtype": CODES[info.dtype], "shape": list(info.shape),
                            "data_offsets": [pos, pos + info.nbytes]}
            self.offsets[name] = pos
            pos += info.nbytes
        blob = json.dumps(header, separators=(",", ":")).encode()
        blob += b" " * (-len(blob) % 8)
        self.base = 8 + len(blob)
        self.file = self.atomic.open("wb")
        self.file.write(struct.pack("<Q", len(blob)) + blob)
        self.file.truncate(self.base + pos)
        self.written: set[str] = set()

    def write(self, name: str, array: np.ndarray) -> None:
        self.file.seek(self.base + self.offsets[name])
        self.file.write(dtypes.raw(array, self.infos[name].dtype))
        self.written.add(name)

    def commit(self) -> None:
        missing = set(self.offsets) - self.written
        if missing:
            raise RuntimeError(f"safetensors sink closed with {len(missing)} tensors unwritten")
        self.file.close()
        self.atomic.commit()

    def abort(self) -> None:
        self.atomic.abort()
