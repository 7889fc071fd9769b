"""GGUF (llama.cpp, version 3): typed metadata, then tensor infos, then aligned tensor data.

Layout (little-endian): magic `GGUF`, u32 version, u64 tensor count, u64 key/value count;
each key/value: a string key, a u32 value type, the value; each tensor info: a string name,
u32 n_dims, n_dims u64 sizes in ggml order (fastest-varying first, the reverse of numpy's),
u32 ggml type, u64 offset into the data section. The data section starts at the next
multiple of `general.alignment` (u32; 32 when absent) and each tensor starts at a multiple of
it, zero-padded. A string is a u64 byte count and its bytes.

The API beyond the Source/Sink protocol (`formats.protocol`):

- `Value(type, value, item=None)`: one typed metadata value. `type` is a value type name
  (uint8, int8, uint16, int16, uint32, int32, uint64, int64, float32, float64, bool, string,
  array); an array gives its element type in `item` and its elements in `value` (a tuple of
  Python values; for `item="array"`, a tuple of array Values: arrays of arrays). Python
  values: int, float (float32 values exactly as stored), bool, str (bytes that are not UTF-8
  survive a round trip as surrogate escapes). `typed(x)` makes a Value the way llama.cpp's
  converter types plain Python values (int -> uint32 or int64, float -> float32, ...).
- `GGUFSource.kv`: the file's metadata as {key: Value}, in file order (for split files, the
  first part's, without the `split.*` keys). `GGUFSource.ggml_types` names each tensor's
  ggml type.
- `GGUFSink(path, outputs, metadata=None, copied_from=None, kv=None)`: `kv` is the file-level
  metadata to write, {key: Value} in order; `general.alignment` in it sets the alignment.
  The executor passes a GGUF source's `kv` (carried through GGUF -> GGUF) merged with what
  the caller states (`formats.open_sink(..., kv=...)`). `metadata` is mapspec's provenance
  record, written as JSON text under the one key `general.mapspec`: every other key is
  exactly what the caller gave.
- `GGUFSplitSink(path, outputs, max_bytes, ...)`: `--max-shard-size` output, a directory
  `path` holding `<stem>-00001-of-0000N.gguf`... as llama.cpp's gguf-split writes them (the
  stem is the directory's name without `.gguf`): the metadata in the first part, `split.no`
  (u16, from 0), `split.count` (u16) and `split.tensors.count` (i32, all parts) in every part,
  and a new part when the next tensor's padded bytes would pass the bound.

Tensor dtypes: F32, F16, BF16, F64, I8..I64 are mapspec's float32 ... int64 (bf16 as its
bits); every ggml block type (Q8_0, Q4_K, IQ2_XS, MXFP4 ...) is a block dtype named in lower
case (`dtypes.BLOCKS`), carried as its raw blocks: a GGUF -> GGUF rename copies them as they
are; `cast()` to or from a block type quantizes or dequantizes (`ops/cast.py`, `ops/ggml.py`).

Reading is restricted for hostile files: every count, length, offset and size is checked
against the file's size before anything is allocated or looped over; value types, ggml types,
nesting depth (arrays of arrays), dimensions (at most 4, as ggml), alignment (a power of two),
duplicate keys and names, and tensor data outside the data section or overlapping another
tensor are refused with one `CheckpointError`. Writing streams tensor by tensor: the header
(whose offsets follow from the planned sizes) is written first, each tensor goes straight to
its offset, and the file appears under its name only when complete."""

from __future__ import annotations

import json
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from ..core.lazy import numpy as np

from ..core import dtypes
from ..errors import CheckpointError, UsageError
from ..core.tensorinfo import TensorInfo
from .atomic import AtomicPath
from .placement import OffsetSink, copy_residue, padding
from .protocol import Extent, SinkBase, SourceBase
from .reading import RegularFile, shown
from .registry import Format

MAGIC = b"GGUF"
VERSION = 3
DEFAULT_ALIGNMENT = 32
ALIGNMENT_KEY = "general.alignment"
RECORD_KEY = "general.mapspec"  # mapspec's provenance record (JSON text)
SPLIT_KEYS = ("split.no", "split.count", "split.tensors.count")
MAX_DIMS = 4  # GGML_MAX_DIMS
MAX_DEPTH = 8  # arrays of arrays nested at most this deep
MAX_ALIGNMENT = 1 << 30

# value type name -> (id, struct code); string and array have no fixed size
VALUE_TYPES: dict[str, tuple[int, str]] = {
    "uint8": (0, "B"), "int8": (1, "b"), "uint16": (2, "H"), "int16": (3, "h"),
    "uint32": (4, "I"), "int32": (5, "i"), "float32": (6, "f"), "bool": (7, "?"),
    "string": (8, ""), "array": (9, ""), "uint64": (10, "Q"), "int64": (11, "q"), "float64": (12, "d"),
}
TYPE_NAMES = {i: name for name, (i, _) in VALUE_TYPES.items()}
INT_RANGES = {"uint8": (0, 1 << 8), "int8": (-(1 << 7), 1 << 7), "uint16": (0, 1 << 16),
              "int16": (-(1 << 15), 1 << 15), "uint32": (0, 1 << 32), "int32": (-(1 << 31), 1 << 31),
              "uint64": (0, 1 << 64), "int64": (-(1 << 63), 1 << 63)}

# ggml type id -> mapspec dtype name (element types by their numpy names, block types in lower case)
GGML_TYPES: dict[int, str] = {
    0: "float32", 1: "float16", 2: "q4_0", 3: "q4_1", 6: "q5_0", 7: "q5_1", 8: "q8_0", 9: "q8_1",
    10: "q2_k", 11: "q3_k", 12: "q4_k", 13: "q5_k", 14: "q6_k", 15: "q8_k",
    16: "iq2_xxs", 17: "iq2_xs", 18: "iq3_xxs", 19: "iq1_s", 20: "iq4_nl", 21: "iq3_s", 22: "iq2_s",
    23: "iq4_xs", 24: "int8", 25: "int16", 26: "int32", 27: "int64", 28: "float64", 29: "iq1_m",
    30: "bfloat16", 34: "tq1_0", 35: "tq2_0", 39: "mxfp4", 40: "nvfp4", 41: "q1_0",
}
GGML_IDS = {name: i for i, name in GGML_TYPES.items()}
DTYPES = frozenset(GGML_TYPES.values())


def ggml_name(dtype: str) -> str:
    """The ggml type name of a dtype, as llama.cpp prints it: float16 -> F16, q8_0 -> Q8_0."""
    plain = {"float32": "F32", "float16": "F16", "bfloat16": "BF16", "float64": "F64",
             "int8": "I8", "int16": "I16", "int32": "I32", "int64": "I64"}
    return plain.get(dtype, dtype.upper())


# ------------------------------------------------------------------ typed metadata values

@dataclass(frozen=True)
class Value:
    """One metadata value with its GGUF type (see the module doc)."""

    type: str
    value: Any
    item: str | None = None  # the element type of an array

    def __post_init__(self) -> None:
        if self.type not in VALUE_TYPES:
            raise ValueError(f"unknown GGUF value type {self.type!r}")
        if self.type == "array":
            if self.item not in VALUE_TYPES:
                raise ValueError(f"a GGUF array needs an element type, not {self.item!r}")
            if not isinstance(self.value, tuple):
                object.__setattr__(self, "value", tuple(self.value))
        elif self.item is not None:
            raise ValueError("only arrays have an element type")

    @property
    def plain(self) -> Any:
        """The Python value (lists for arrays), as gguf-py's reader gives `field.contents()`."""
        if self.type != "array":
            return self.value
        if self.item == "array":
            return [v.plain for v in self.value]
        return list(self.value)


def typed(value: Any) -> Value:
    """A Value for a plain Python value, typed as llama.cpp's converter types them: bool ->
    bool, int -> uint32 (int64 if it does not fit, int32 if negative), float -> float32,
    str -> string, a list -> an array of its first element's type. A Value passes as it is."""
    if isinstance(value, Value):
        return value
    if isinstance(value, bool):
        return Value("bool", value)
    if isinstance(value, int):
        if 0 <= value < 1 << 32:
            return Value("uint32", value)
        return Value("int32" if -(1 << 31) <= value < 0 else "int64", value)
    if isinstance(value, float):
        return Value("float32", value)
    if isinstance(value, str):
        return Value("string", value)
    if isinstance(value, (list, tuple)):
        items = [typed(v) for v in value]
        item = items[0].type if items else "uint8"
        if any(v.type != item for v in items):
            raise ValueError("a GGUF array holds values of one type")
        return Value("array", tuple(v if item == "array" else v.value for v in items), item)
    raise ValueError(f"no GGUF type for a {type(value).__name__}")


def _check_value(v: Value, key: str, depth: int = 0) -> None:
    """Refuse (UsageError) a value that would not encode as its type says."""
    def bad(why: str):
        raise UsageError(f"GGUF metadata {key!r}: {why}")

    if depth > MAX_DEPTH:
        bad(f"arrays nested more than {MAX_DEPTH} deep")
    kind, items = (v.item, v.value) if v.type == "array" else (v.type, (v.value,))
    for x in items:
        if kind == "array":
            if not isinstance(x, Value) or x.type != "array":
                bad("an array of arrays holds array Values")
            _check_value(x, key, depth + 1)
        elif kind == "string":
            if not isinstance(x, str):
                bad(f"a string value, not {type(x).__name__}")
        elif kind == "bool":
            if not isinstance(x, bool):
                bad(f"a bool value, not {type(x).__name__}")
        elif kind in INT_RANGES:
            lo, hi = INT_RANGES[kind]
            if isinstance(x, bool) or not isinstance(x, int) or not lo <= x < hi:
                bad(f"{x!r} is not a {kind}")
        elif isinstance(x, bool) or not isinstance(x, (int, float)):
            bad(f"{x!r} is not a {kind}")


def _encode_string(text: str) -> bytes:
    raw = text.encode("utf-8", "surrogateescape")
    return struct.pack("<Q", len(raw)) + raw


def _encode_items(kind: str, items: Sequence) -> bytes:
    if kind == "string":
        return b"".join(_encode_string(s) for s in items)
    if kind == "array":
        return b"".join(struct.pack("<IQ", VALUE_TYPES[a.item][0], len(a.value)) + _encode_items(a.item, a.value)
                        for a in items)
    return struct.pack(f"<{len(items)}{VALUE_TYPES[kind][1]}", *items)


def encode_value(v: Value) -> bytes:
    """A value's type id and bytes, as they follow its key."""
    head = struct.pack("<I", VALUE_TYPES[v.type][0])
    if v.type == "array":
        return head + struct.pack("<IQ", VALUE_TYPES[v.item][0], len(v.value)) + _encode_items(v.item, v.value)
    return head + _encode_items(v.type, (v.value,))


# ------------------------------------------------------------------ reading

class _Cursor:
    """Reads the header sequentially from a RegularFile in windows of bytes, checking every
    length against what is left of the file before taking it."""

    WINDOW = 4 << 20

    def __init__(self, file: RegularFile):
        self.file = file
        self.size = file.size
        self.pos = 0
        self._buf = b""
        self._at = 0  # file offset of _buf[0]

    def left(self) -> int:
        return self.size - self.pos

    def take(self, n: int, what: str) -> memoryview:
        if n > self.left():
            raise CheckpointError(f"{self.file.path}: {what} at byte {self.pos} needs {n} bytes, "
                                  f"the {self.size}-byte file ends first (truncated or corrupt)")
        start = self.pos - self._at
        if start + n > len(self._buf):
            want = max(n, min(self.WINDOW, self.left()))
            self._buf = self.file.read_bytes(self.pos, want, what)
            self._at, start = self.pos, 0
        self.pos += n
        return memoryview(self._buf)[start:start + n]

    def unpack(self, fmt: str, what: str):
        return struct.unpack_from("<" + fmt, self.take(struct.calcsize("<" + fmt), what))

    def u32(self, what: str) -> int:
        return self.unpack("I", what)[0]

    def u64(self, what: str) -> int:
        return self.unpack("Q", what)[0]

    def string(self, what: str, strict: bool) -> str:
        n = self.u64(f"{what} length")
        raw = bytes(self.take(n, what))
        try:
            return raw.decode("utf-8", "strict" if strict else "surrogateescape")
        except UnicodeDecodeError:
            raise CheckpointError(f"{self.file.path}: {what} at byte {self.pos - n} is not UTF-8") from None


# The fewest bytes an element of each type takes: a declared count is checked against the
# bytes left before any element is read.
_MIN_SIZE = {name: (struct.calcsize("<" + code) if code else 8) for name, (_, code) in VALUE_TYPES.items()}
_MIN_SIZE["array"] = 12


def _read_value(c: _Cursor, kind: str, key: str, depth: int) -> Value:
    path = c.file.path
    if kind == "string":
        return Value("string", c.string(f"the value of {shown(key)}", strict=False))
    if kind != "array":
        return Value(kind, c.unpack(VALUE_TYPES[kind][1], f"the value of {shown(key)}")[0])
    if depth >= MAX_DEPTH:
        raise CheckpointError(f"{path}: metadata {shown(key)}: arrays nested more than {MAX_DEPTH} deep")
    item_id, count = c.unpack("IQ", f"the array header of {shown(key)}")
    item = TYPE_NAMES.get(item_id)
    if item is None:
        raise CheckpointError(f"{path}: metadata {shown(key)}: unknown array element type {item_id}")
    if count * _MIN_SIZE[item] > c.left():
        raise CheckpointError(f"{path}: metadata {shown(key)}: an array of {count} {item} values does not fit "
                              f"the {c.left()} bytes left in the file")
    if item == "string":
        what = f"a string of {shown(key)}"
        values: tuple = tuple(c.string(what, strict=False) for _ in range(count))
    elif item == "array":
        values = tuple(_read_value(c, "array", key, depth + 1) for _ in range(count))
    else:
        code = VALUE_TYPES[item][1]
        values = struct.unpack(f"<{count}{code}", c.take(count * _MIN_SIZE[item], f"the array {shown(key)}"))
    return Value("array", values, item)


@dataclass(frozen=True)
class Header:
    version: int
    kv: dict[str, Value]
    tensors: dict[str, tuple[TensorInfo, int]]  # name -> (info, offset in the data section)
    alignment: int
    data_start: int


def read_header(file: RegularFile) -> Header:
    """Parse and validate a GGUF file's header and tensor infos (see the module doc)."""
    path = file.path
    c = _Cursor(file)
    if file.size < 24 or bytes(c.take(4, "the magic")) != MAGIC:
        raise CheckpointError(f"{path}: not a GGUF file (no 'GGUF' magic and header)")
    version = c.u32("the version")
    if version not in (2, 3):
        if version & 0xFFFF == 0 and version >> 16:
            raise CheckpointError(f"{path}: a big-endian GGUF file; mapspec reads little-endian GGUF only")
        raise CheckpointError(f"{path}: GGUF version {version}; mapspec reads versions 2 and 3")
    n_tensors, n_kv = c.unpack("QQ", "the counts")
    # A key/value takes at least 13 bytes (a 1-byte key, a type, a 1-byte value), a tensor
    # info at least 24: counts that cannot fit the file are refused before any loop.
    if n_kv * 13 > c.left() or n_tensors * 24 > c.left():
        raise CheckpointError(f"{path}: header declares {n_tensors} tensors and {n_kv} metadata entries, "
                              f"more than its {file.size} bytes can hold")
    kv: dict[str, Value] = {}
    for _ in range(n_kv):
        key = c.string("a metadata key", strict=True)
        type_id = c.u32(f"the type of {shown(key)}")
        kind = TYPE_NAMES.get(type_id)
        if kind is None:
            raise CheckpointError(f"{path}: metadata {shown(key)} has unknown value type {type_id}")
        if key in kv:
            raise CheckpointError(f"{path}: metadata key {shown(key)} appears twice")
        kv[key] = _read_value(c, kind, key, 0)
    alignment = DEFAULT_ALIGNMENT
    if ALIGNMENT_KEY in kv:
        a = kv[ALIGNMENT_KEY]
        if a.type != "uint32" or not 0 < a.value <= MAX_ALIGNMENT or a.value & (a.value - 1):
            raise CheckpointError(f"{path}: {ALIGNMENT_KEY} must be a uint32 power of two, not "
                                  f"{a.type} {a.value if a.type != 'array' else '[...]'}")
        alignment = a.value
    entries: list[tuple[str, TensorInfo, int]] = []
    seen: set[str] = set()
    for _ in range(n_tensors):
        name = c.string("a tensor name", strict=True)
        where = f"{path}: tensor {shown(name)}"
        if name in seen:
            raise CheckpointError(f"{where} appears twice")
        seen.add(name)
        n_dims = c.u32(f"the dimensions of {shown(name)}")
        if n_dims > MAX_DIMS:
            raise CheckpointError(f"{where} has {n_dims} dimensions; ggml tensors have at most {MAX_DIMS}")
        dims = c.unpack(f"{n_dims}Q", f"the sizes of {shown(name)}")
        type_id, offset = c.unpack("IQ", f"the type and offset of {shown(name)}")
        dtype = GGML_TYPES.get(type_id)
        if dtype is None:
            raise CheckpointError(f"{where} has unknown ggml type {type_id}")
        shape = dtypes.check_shape(tuple(reversed(dims)), where)
        dtypes.check_blocks(shape, dtype, where)
        if offset % alignment:
            raise CheckpointError(f"{where}: data offset {offset} is not a multiple of the alignment {alignment}")
        entries.append((name, TensorInfo(shape, dtype), offset))
    data_start = c.pos + (-c.pos % alignment)
    data_size = file.size - data_start
    end = 0
    for name, info, offset in sorted(entries, key=lambda e: e[2]):
        n = info.nbytes
        if offset < end:
            raise CheckpointError(f"{path}: tensor {shown(name)} data at {offset} overlaps the tensor before it "
                                  f"(which ends at {end})")
        if offset + n > data_size:
            raise CheckpointError(f"{path}: tensor {shown(name)} needs data bytes [{offset}, {offset + n}), the "
                                  f"data section holds {max(data_size, 0)} (truncated?)")
        end = offset + n
    return Header(version, kv, {name: (info, offset) for name, info, offset in entries}, alignment, data_start)


SPLIT_NAME = re.compile(r"(?P<stem>.*)-(?P<no>[0-9]{5})-of-(?P<count>[0-9]{5})\.gguf", re.IGNORECASE)


def split_path(stem: str | Path, no: int, count: int) -> Path:
    """The file of part `no` (from 0) of `count`, as llama.cpp's llama_split_path names it."""
    return Path(f"{stem}-{no + 1:05d}-of-{count:05d}.gguf")


class GGUFSource(SourceBase):
    """A GGUF file, or all the parts of a split one (any part's path opens the set)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._files: list[RegularFile] = []
        self._where: dict[str, tuple[RegularFile, int]] = {}  # name -> (file, absolute offset)
        self._infos: dict[str, TensorInfo] = {}
        self.kv: dict[str, Value] = {}
        self.ggml_types: dict[str, str] = {}
        try:
            self._open()
        except BaseException:
            self.close()
            raise

    def _open(self) -> None:
        first = RegularFile(self.path)
        self._files.append(first)
        header = read_header(first)
        split = _split_keys(header.kv, self.path)
        if split is None:
            self._add(first, header)
            self.kv = header.kv
            return
        no, count, total = split
        m = SPLIT_NAME.fullmatch(self.path.name)
        if m is None or int(m["no"]) != no + 1 or int(m["count"]) != count:
            raise CheckpointError(f"{self.path}: split part {no + 1} of {count}, but not named "
                                  f"<name>-{no + 1:05d}-of-{count:05d}.gguf as llama.cpp needs")
        stem = self.path.with_name(m["stem"])
        self.shards = tuple(split_path(stem, i, count) for i in range(count))
        headers = {no: (first, header)}
        for i, part in enumerate(self.shards):
            if i == no:
                continue
            if not part.is_file():
                raise CheckpointError(f"{self.path}: split part {part.name} is missing")
            f = RegularFile(part)
            self._files.append(f)
            h = read_header(f)
            if _split_keys(h.kv, part) != (i, count, total):
                raise CheckpointError(f"{part}: its split keys do not say part {i + 1} of {count} with "
                                      f"{total} tensors in all, as {self.path.name} does")
            headers[i] = (f, h)
        for i in range(count):
            self._add(*headers[i])
        if len(self._infos) != total:
            raise CheckpointError(f"{self.path}: the parts hold {len(self._infos)} tensors, "
                                  f"split.tensors.count says {total}")
        self.kv = {k: v for k, v in headers[0][1].kv.items() if k not in SPLIT_KEYS}

    def _add(self, file: RegularFile, header: Header) -> None:
        for name, (info, offset) in header.tensors.items():
            if name in self._infos:
                raise CheckpointError(f"{file.path}: tensor {shown(name)} is also in another split part")
            self._infos[name] = info
            self.ggml_types[name] = ggml_name(info.dtype)
            self._where[name] = (file, header.data_start + offset)

    def infos(self) -> Mapping[str, TensorInfo]:
        return self._infos

    def extent(self, key: str) -> Extent:
        file, offset = self._where[key]
        return Extent(file, offset, self._infos[key].nbytes)

    def read(self, key: str) -> np.ndarray:
        info = self._infos[key]
        e = self.extent(key)
        raw = e.file.read_range(e.offset, e.nbytes, f"tensor {shown(key)}")
        return raw.view(dtypes.STORAGE[info.dtype]).reshape(dtypes.stored_shape(info.shape, info.dtype))

    def release(self, key: str) -> None:
        e = self.extent(key)
        e.file.release(e.offset, e.nbytes)

    def shard_of(self, key: str) -> Path:
        """The split part holding `key` (inspect lists each part's tensors)."""
        return self._where[key][0].path

    def close(self) -> None:
        for f in self._files:
            f.close()


def _split_keys(kv: Mapping[str, Value], path: Path) -> tuple[int, int, int] | None:
    """(split.no, split.count, split.tensors.count) of a split part; None for a whole file."""
    present = [k for k in SPLIT_KEYS if k in kv]
    if not present:
        return None
    if len(present) != 3:
        raise CheckpointError(f"{path}: has {', '.join(present)} but not all of {', '.join(SPLIT_KEYS)}")
    values = []
    for k in SPLIT_KEYS:
        v = kv[k]
        if v.type not in INT_RANGES:
            raise CheckpointError(f"{path}: {k} must be an integer, not {v.type}")
        values.append(v.value)
    no, count, total = values
    if not 0 <= no < count or count > 99999 or total < 0:
        raise CheckpointError(f"{path}: split.no {no} of split.count {count} is not a split part")
    if count == 1:
        return None if no == 0 else (no, count, total)
    return no, count, total


def read_kv(path: str | Path) -> dict[str, Value]:
    """A GGUF file's metadata (a split file's: the first part's), read without its tensors."""
    with RegularFile(Path(path)) as f:
        return read_header(f).kv


# ------------------------------------------------------------------ writing

def _tensor_info(name: str, info: TensorInfo, offset: int) -> bytes:
    dims = tuple(reversed(info.shape))
    return (_encode_string(name) + struct.pack(f"<I{len(dims)}Q", len(dims), *dims)
            + struct.pack("<IQ", GGML_IDS[info.dtype], offset))


def _check_tensor(name: str, info: TensorInfo) -> None:
    if info.dtype not in GGML_IDS:
        raise UsageError(f"GGUF files cannot hold {info.dtype} tensors ({name!r}); cast them in the spec")
    if len(info.shape) > MAX_DIMS:
        raise UsageError(f"GGUF tensors have at most {MAX_DIMS} dimensions; {name!r} has shape {info.shape}")
    facts = dtypes.block(info.dtype)
    if facts is not None and (not info.shape or info.shape[-1] % facts[0]):
        raise UsageError(f"{name!r}: a {info.dtype} tensor's last dimension must hold whole blocks of "
                         f"{facts[0]}, shape {info.shape} does not")


def plan_layout(outputs: Mapping[str, TensorInfo], alignment: int) -> tuple[dict[str, int], int]:
    """Each tensor's offset in the data section, in order, and the section's padded size."""
    offsets, pos = {}, 0
    for name, info in outputs.items():
        offsets[name] = pos
        pos += info.nbytes
        pos += -pos % alignment
    return offsets, pos


class GGUFSink(OffsetSink):
    """One GGUF file: the header first, then each tensor written at its planned offset."""

    def __init__(self, path: Path, outputs: Mapping[str, TensorInfo], metadata=None,
                 copied_from: Mapping[str, int] | None = None, kv: Mapping[str, Value] | None = None,
                 extra_kv: Mapping[str, Value] | None = None):
        self.infos = dict(outputs)
        self.provenance = metadata
        kv = {k: typed(v) for k, v in (kv or {}).items() if k != RECORD_KEY}
        kv.update(extra_kv or {})
        for key, v in kv.items():
            _check_value(v, key)
        for name, info in self.infos.items():
            _check_tensor(name, info)
        self.alignment = DEFAULT_ALIGNMENT
        if ALIGNMENT_KEY in kv:
            a = kv[ALIGNMENT_KEY]
            if a.type != "uint32" or not 0 < a.value <= MAX_ALIGNMENT or a.value & (a.value - 1):
                raise UsageError(f"{ALIGNMENT_KEY} must be a uint32 power of two")
            self.alignment = a.value
        self.kv = kv
        self.offsets, data_size = plan_layout(self.infos, self.alignment)
        self._pad = 0
        if metadata is not None:  # placed last; filled in on commit (the source's sha256 comes last)
            kv[RECORD_KEY] = self._record(final=False)
            # llama.cpp wants each tensor right after the one before (padded to the alignment),
            # so only the data section's start can move: the record's JSON text takes trailing
            # spaces to put the most copied bytes at their source offset modulo GRANULE.
            end = len(self._header())
            start = copy_residue(copied_from or {}, self.offsets, {k: i.nbytes for k, i in self.infos.items()},
                                 self.alignment)
            self._pad = padding(end, self.alignment, start) if start is not None else 0
            kv[RECORD_KEY] = self._record(final=False)
        head = self._header()
        self.base = len(head) + (-len(head) % self.alignment)
        self.written: set[str] = set()
        self.atomic = AtomicPath(path)  # only now: nothing is created for metadata that is refused
        try:
            self.file = self.atomic.open("r+b")
            self.file.write(head)
            self.file.truncate(self.base + data_size)  # the padding between tensors stays zero
        except BaseException:
            self.atomic.abort()
            raise

    def _record(self, final: bool) -> Value:
        return Value("string", json.dumps(self.provenance.record(final), sort_keys=True) + " " * self._pad)

    def _header(self) -> bytes:
        parts = [MAGIC, struct.pack("<IQQ", VERSION, len(self.infos), len(self.kv))]
        for key, v in self.kv.items():
            parts.append(_encode_string(key) + encode_value(v))
        for name, info in self.infos.items():
            parts.append(_tensor_info(name, info, self.offsets[name]))
        return b"".join(parts)

    def commit(self) -> None:
        missing = set(self.infos) - self.written
        if missing:
            raise RuntimeError(f"GGUF sink closed with {len(missing)} tensors unwritten")
        if self.provenance is not None:
            # The record went out with a placeholder sha256 of the same length: rewrite the header.
            self.kv[RECORD_KEY] = self._record(final=True)
            head = self._header()
            if len(head) + (-len(head) % self.alignment) != self.base:  # pragma: no cover - same length
                raise RuntimeError("GGUF header changed length")
            self.file.seek(0)
            self.file.write(head)
        self.file.close()
        self.atomic.commit()

    def abort(self) -> None:
        self.atomic.abort()


def assign_parts(outputs: Mapping[str, TensorInfo], max_bytes: int) -> list[list[str]]:
    """gguf-split's rule: tensors in order; a new part when the next tensor's bytes, padded to
    32, would take the part's padded tensor bytes past `max_bytes` (never an empty part)."""
    parts: list[list[str]] = [[]]
    size = 0
    for name, info in outputs.items():
        n = info.nbytes + (-info.nbytes % DEFAULT_ALIGNMENT)
        if parts[-1] and size + n > max_bytes:
            parts.append([])
            size = 0
        parts[-1].append(name)
        size += n
    return parts


class GGUFSplitSink(SinkBase):
    """Split GGUF parts in a new directory, which appears whole or not at all."""

    def __init__(self, path: Path, outputs: Mapping[str, TensorInfo], max_bytes: int, metadata=None,
                 copied_from: Mapping[str, int] | None = None, kv: Mapping[str, Value] | None = None):
        self.final = Path(path)
        if self.final.exists() and not self.final.is_dir():
            raise UsageError(f"{self.final} is a file; split GGUF output goes to a directory")
        stem = self.final.name[:-5] if self.final.name.lower().endswith(".gguf") else self.final.name
        self.atomic = AtomicPath(self.final, directory=True)
        self.sinks: list[GGUFSink] = []
        self.route: dict[str, GGUFSink] = {}
        try:
            groups = assign_parts(outputs, max_bytes)
            if len(groups) > 99999:
                raise UsageError(f"--max-shard-size {max_bytes} bytes makes {len(groups)} GGUF parts, more than "
                                 "the 99999 split names allow")
            kv = {k: typed(v) for k, v in (kv or {}).items() if k not in SPLIT_KEYS}
            for i, group in enumerate(groups):
                split = {"split.no": Value("uint16", i), "split.count": Value("uint16", len(groups)),
                         "split.tensors.count": Value("int32", len(outputs))}
                if ALIGNMENT_KEY in kv and i:
                    split = {ALIGNMENT_KEY: kv[ALIGNMENT_KEY], **split}
                file = self.atomic.tmp / split_path(stem, i, len(groups)).name
                sink = GGUFSink(file, {k: outputs[k] for k in group}, metadata if i == 0 else None,
                                copied_from={k: copied_from[k] for k in group if k in (copied_from or {})},
                                kv=kv if i == 0 else None, extra_kv=split)
                self.sinks.append(sink)
                for k in group:
                    self.route[k] = sink
        except BaseException:
            self.abort()
            raise

    def write(self, name: str, array: np.ndarray) -> None:
        self.route[name].write(name, array)

    def write_region(self, name: str, extent: Extent) -> bool:
        return self.route[name].write_region(name, extent)

    def takes_rows(self, name: str) -> bool:
        return self.route[name].takes_rows(name)

    def write_rows(self, name: str, start: int, array: np.ndarray) -> None:
        self.route[name].write_rows(name, start, array)

    def commit(self) -> None:
        for sink in self.sinks:
            sink.commit()
        self.atomic.commit()

    def abort(self) -> None:
        for sink in self.sinks:
            sink.abort()
        self.atomic.abort()


def _sniff(path: Path, head: bytes) -> bool:
    return head[:4] == MAGIC


FORMAT = Format("gguf", "GGUF (llama.cpp)", GGUFSource, GGUFSink, DTYPES, sniff=_sniff,
                takes_kv=True, split_sink=GGUFSplitSink, places_copies=True)
