"""safetensors: an 8-byte header length, a JSON header, then the data buffer.

Read: the header is parsed and validated here as strictly as the library does, and each
tensor is read by position when asked for (the library's numpy API cannot represent bf16). Write:
the plan knows every shape before a tensor is read, so the header is written first and each
tensor is written straight to its offset as it arrives; the library needs all tensors in
memory at once. Tests check both directions against the library."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Mapping

from ..core.lazy import numpy as np

from ..core import dtypes
from ..errors import CheckpointError, UsageError
from ..core.tensorinfo import TensorInfo
from .atomic import AtomicPath
from .placement import OffsetSink, copy_residue, padding
from .protocol import Extent, SourceBase
from .registry import Format
from .reading import location, open_bytes, clip, shown

# Every dtype the format defines (safetensors 0.8's list). F4 and F6 are packed: the header's
# shape counts elements, the data holds 4 or 6 bits of each, and must end on a byte.
NAMES = {
    "F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16",
    "I64": "int64", "I32": "int32", "I16": "int16", "I8": "int8",
    "U64": "uint64", "U32": "uint32", "U16": "uint16", "U8": "uint8", "BOOL": "bool", "C64": "complex64",
    "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2", "F8_E8M0": "float8_e8m0fnu",
    "F8_E4M3FNUZ": "float8_e4m3fnuz", "F8_E5M2FNUZ": "float8_e5m2fnuz",
    "F4": "float4_e2m1fn", "F6_E2M3": "float6_e2m3fn", "F6_E3M2": "float6_e3m2fn",
}
CODES = {v: k for k, v in NAMES.items()}
MAX_HEADER = 100_000_000
_U64 = 2 ** 64


def _no_constant(name: str):
    raise ValueError(f"{name} is not JSON")


def _unsigned(text: str) -> int:
    if text.startswith("-"):  # "-0" too, which the library reads as a float
        raise ValueError(f"negative number {text[:40]}")
    return int(text)


def _pairs(pairs: list) -> dict:
    out = {}
    for k, v in pairs:
        if k in out:
            raise ValueError(f"key {shown(k)} appears twice")
        out[k] = v
    return out


def _usize(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < _U64


def _utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
        return True
    except UnicodeEncodeError:  # a lone surrogate escape such as "\\ud800"
        return False


def parse_header(blob: bytes, path: Path) -> tuple[dict, dict]:
    """The metadata and tensor entries of a header, validated as the safetensors library
    does: strict JSON (no NaN/Infinity, integers only where sizes go), known dtypes, string
    metadata. Duplicate keys are refused too (the library keeps the last one silently)."""
    try:
        text = blob.decode("utf-8")
        header = json.loads(text, parse_constant=_no_constant, parse_int=_unsigned,
                            parse_float=lambda t: float(t), object_pairs_hook=_pairs)
    except UnicodeDecodeError:
        raise CheckpointError(f"{path}: safetensors header is not UTF-8") from None
    except RecursionError:
        raise CheckpointError(f"{path}: safetensors header nests too deeply") from None
    except ValueError as exc:
        raise CheckpointError(f"{path}: safetensors header is not valid JSON ({clip(str(exc), 160)})") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: safetensors header is not a JSON object")
    metadata = header.pop("__metadata__", None)
    if metadata is None:
        metadata = {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) and _utf8(k) and _utf8(v)
                                                 for k, v in metadata.items()):
        raise CheckpointError(f"{path}: safetensors __metadata__ must map strings to strings")
    for name, meta in header.items():
        where = f"{path}: tensor {shown(name)}"
        if not _utf8(name):
            raise CheckpointError(f"{where}: the name is not valid Unicode")
        if not isinstance(meta, dict) or not {"dtype", "shape", "data_offsets"} <= set(meta):
            raise CheckpointError(f"{where}: header entry needs dtype, shape and data_offsets")
        dtype, shape, offsets = meta["dtype"], meta["shape"], meta["data_offsets"]
        if dtype not in NAMES:
            raise CheckpointError(f"{where}: unknown dtype {shown(dtype)}")
        if not isinstance(shape, list) or not all(_usize(d) for d in shape):
            raise CheckpointError(f"{where}: shape must be a list of non-negative integers, not {shown(shape)}")
        if not isinstance(offsets, list) or len(offsets) != 2 or not all(_usize(o) for o in offsets):
            raise CheckpointError(f"{where}: data_offsets must be two non-negative integers, not {shown(offsets)}")
    return metadata, header


class SafetensorsSource(SourceBase):
    def __init__(self, path: Path):
        self.path = location(path)
        self._file = open_bytes(self.path)
        try:
            self._open()
        except BaseException:
            self._file.close()
            raise

    def _open(self) -> None:
        size = self._file.size
        if size < 8:
            raise CheckpointError(f"{self.path}: truncated safetensors file (no header length)")
        n = int.from_bytes(self._file.read_bytes(0, 8, "the header length"), "little")
        if n > MAX_HEADER or 8 + n > size:
            raise CheckpointError(f"{self.path}: safetensors header length {n} at byte 0 "
                                  f"does not fit a {size}-byte file")
        self.metadata, header = parse_header(self._file.read_bytes(8, n, "the header"), self.path)
        self._base = 8 + n
        buffer = size - self._base
        # The library's rule: sorted by offsets, the tensors tile the buffer exactly.
        end = 0
        for name, meta in sorted(header.items(), key=lambda kv: tuple(kv[1]["data_offsets"])):
            begin, stop = meta["data_offsets"]
            if begin != end or stop < begin:
                raise CheckpointError(f"{self.path}: tensor {shown(name)} data [{begin}, {stop}) does not follow "
                                      f"the previous tensor, which ends at {end} (gap or overlap)")
            shape = dtypes.check_shape(tuple(meta["shape"]), f"{self.path}: tensor {shown(name)}")
            info = TensorInfo(shape, NAMES[meta["dtype"]])
            if not dtypes.fills_bytes(shape, info.dtype):
                raise CheckpointError(f"{self.path}: tensor {shown(name)} of shape {shape} in {meta['dtype']} "
                                      "does not end on a byte boundary")
            if stop - begin != info.nbytes:
                raise CheckpointError(f"{self.path}: tensor {shown(name)} data [{begin}, {stop}) does not fit "
                                      f"its shape {shape} ({info.nbytes} bytes)")
            end = stop
        if end > buffer:
            raise CheckpointError(f"{self.path}: truncated: the tensors need {end} bytes of data, "
                                  f"the file holds {buffer}")
        if end != buffer:
            raise CheckpointError(f"{self.path}: the tensors cover {end} bytes of a {buffer}-byte data buffer "
                                  "(trailing or missing bytes)")
        self._infos: dict[str, TensorInfo] = {}
        self._offsets: dict[str, tuple[int, int]] = {}
        for name, meta in header.items():  # file order, as the header lists them
            self._infos[name] = TensorInfo(tuple(meta["shape"]), NAMES[meta["dtype"]])
            self._offsets[name] = tuple(meta["data_offsets"])

    def infos(self) -> Mapping[str, TensorInfo]:
        return self._infos

    def extent(self, key: str) -> Extent:
        """Where a tensor's stored bytes are: (file, byte offset, byte count)."""
        begin, end = self._offsets[key]
        return Extent(self._file, self._base + begin, end - begin)

    def read(self, key: str) -> np.ndarray:
        info = self._infos[key]
        e = self.extent(key)
        dtypes.check_elements(info.dtype)
        raw = e.file.read_range(e.offset, e.nbytes, f"tensor {shown(key)}")
        return dtypes.from_raw(raw, info.shape, info.dtype)

    def release(self, key: str) -> None:
        e = self.extent(key)
        self._file.release(e.offset, e.nbytes)

    def close(self) -> None:
        self._file.close()


class SafetensorsSink(OffsetSink):
    def __init__(self, path: Path, outputs: Mapping[str, TensorInfo], metadata=None,
                 copied_from: Mapping[str, int] | None = None):
        self.atomic = AtomicPath(path)
        self.provenance = metadata
        # Larger items first, then by name, as the library orders them: every tensor stays aligned.
        unfilled = next((k for k, i in outputs.items() if not dtypes.fills_bytes(i.shape, i.dtype)), None)
        if unfilled is not None:
            i = outputs[unfilled]
            raise UsageError(f"safetensors cannot hold {shown(unfilled)}: {i.dtype} of shape {i.shape} "
                             "does not end on a byte boundary")
        order = sorted(outputs, key=lambda k: (-dtypes.bits(outputs[k].dtype), k))
        header: dict = {"__metadata__": self._metadata(final=False)}
        self.offsets: dict[str, int] = {}
        self.infos = dict(outputs)
        pos = 0
        for name in order:
            info = outputs[name]
            header[name] = {"dtype": CODES[info.dtype], "shape": list(info.shape),
                            "data_offsets": [pos, pos + info.nbytes]}
            self.offsets[name] = pos
            pos += info.nbytes
        self.header = header
        # The header is padded with spaces, as the library pads it to 8 bytes; here also so
        # that the data starts where most copied bytes keep their offset modulo GRANULE.
        end = 8 + len(json.dumps(header, separators=(",", ":")).encode())
        start = copy_residue(copied_from or {}, self.offsets, {k: i.nbytes for k, i in outputs.items()}, 8)
        self.base = end + padding(end, 8, start)
        blob = self._blob(self.base - 8)
        self.file = self.atomic.open("r+b")  # not "wb": truncating makes close() flush everything
        self.file.write(struct.pack("<Q", len(blob)) + blob)
        self.file.truncate(self.base + pos)
        self.written: set[str] = set()

    def _metadata(self, final: bool) -> dict[str, str]:
        meta = {"format": "pt"}
        if self.provenance is not None:
            meta.update(self.provenance.strings(final))
        return meta

    def _blob(self, size: int) -> bytes:
        """The header padded with spaces to `size` bytes."""
        blob = json.dumps(self.header, separators=(",", ":")).encode()
        return blob + b" " * (size - len(blob))

    def commit(self) -> None:
        missing = set(self.offsets) - self.written
        if missing:
            raise RuntimeError(f"safetensors sink closed with {len(missing)} tensors unwritten")
        if self.provenance is not None:
            # The header went out first with the source's sha256 as a same-length placeholder.
            self.header["__metadata__"] = self._metadata(final=True)
            blob = self._blob(self.base - 8)
            if 8 + len(blob) != self.base:  # pragma: no cover - the placeholder has the same length
                raise RuntimeError("safetensors metadata changed length")
            self.file.seek(8)
            self.file.write(blob)
        self.file.close()
        self.atomic.commit()

    def abort(self) -> None:
        self.atomic.abort()


FORMAT = Format(
    "safetensors", "safetensors (Hugging Face)", SafetensorsSource, SafetensorsSink,
    frozenset(NAMES.values()), sniff=lambda path, head: len(head) >= 9 and head[8:9] == b"{", hf_layout=("model.safetensors", "model", "model.safetensors.index.json"), places_copies=True)
