"""NumPy `.npz`: a zip of `.npy` members, read one member at a time with pickles refused.

bf16 has no numpy dtype, so its bits are stored as uint16 and the real dtype names are kept
in a `__mapspec_dtypes__` member (a plain unicode array, not a pickle)."""

from __future__ import annotations

import json
import math
import zipfile
from pathlib import Path
from typing import Mapping

from ..core.lazy import numpy as np

from ..core import dtypes
from ..errors import CheckpointError
from ..core.tensorinfo import TensorInfo
from .atomic import AtomicPath
from .protocol import SinkBase, SourceBase
from .registry import Format
from .reading import location, open_bytes, ZipMembers, clip, shown

ZIP_STARTS = (b"PK\x03\x04", b"PK\x05\x06")  # what np.load checks

DTYPES_MEMBER = "__mapspec_dtypes__"


MAX_TAGS = 1 << 24  # bytes of the dtype-tag member


class NpzSource(SourceBase):
    def __init__(self, path: Path):
        self.path = location(path)
        self._file = open_bytes(self.path)
        try:
            # np.load takes a file for an archive only by its first bytes (a local header, or
            # the end record of an empty one); anything else it refuses as a pickle. zipfile
            # would read past data prepended to an archive: refuse what numpy refuses.
            if self._file.size < 4 or self._file.read_bytes(0, 4, "zip signature") not in ZIP_STARTS:
                raise CheckpointError(f"{self.path}: does not start with a zip header, so it is no .npz "
                                      "(np.load refuses it too)")
            self._members_ = ZipMembers(self._file)
            self._open()
        except BaseException:
            self.close()
            raise

    def _open(self) -> None:
        # key -> (member, header size, Fortran order, stored dtype)
        self._members: dict[str, tuple[zipfile.ZipInfo, int, bool, np.dtype]] = {}
        self._infos: dict[str, TensorInfo] = {}
        tagged: dict[str, str] = {}
        for info in self._members_.infos:
            member = info.filename
            if not member.endswith(".npy"):
                continue
            key = member[:-4]
            where = f"{self.path}: member {shown(member)}"
            if key in self._infos or (key == DTYPES_MEMBER and tagged):
                raise CheckpointError(f"{where} appears twice")
            shape, fortran, dt, header = self._header(info, where)
            if key == DTYPES_MEMBER:
                tagged = self._tags(info, shape, dt, header, where)
                continue
            try:
                name = dtypes.of_array(np.empty(0, dt))
            except TypeError:
                raise CheckpointError(f"{where} has unsupported dtype {clip(str(dt), 40)}") from None
            nbytes = math.prod(shape) * dt.itemsize
            if header + nbytes != info.file_size:  # before anything is allocated
                raise CheckpointError(f"{where} declares shape {shape} ({nbytes} bytes) but holds "
                                      f"{info.file_size - header} bytes of data")
            self._members[key] = (info, header, fortran, dt)
            self._infos[key] = TensorInfo(shape, name)
        for key, name in tagged.items():
            if key in self._infos:
                if name != "bfloat16" or self._infos[key].dtype != "uint16":
                    raise CheckpointError(f"{self.path}: {DTYPES_MEMBER} tags {shown(key)} as {shown(name)}, "
                                          f"which its stored dtype {self._infos[key].dtype} cannot hold")
                self._infos[key] = TensorInfo(self._infos[key].shape, name)

    def _header(self, info: zipfile.ZipInfo, where: str) -> tuple[tuple[int, ...], bool, np.dtype, int]:
        """A member's shape, order, dtype and header size, from its first bytes only."""
        with self._members_.open(info) as f:
            try:
                version = np.lib.format.read_magic(f)
                read_header = {(1, 0): np.lib.format.read_array_header_1_0,
                               (2, 0): np.lib.format.read_array_header_2_0}.get(version)
                if read_header is None:
                    raise CheckpointError(f"{where}: unsupported .npy version {version}")
                shape, fortran, dt = read_header(f)
            except (ValueError, SyntaxError, TypeError) as exc:
                raise CheckpointError(f"{where} is not a valid .npy ({clip(str(exc), 120)})") from None
            header = f.tell()
        if dt.hasobject:
            raise CheckpointError(f"{where} holds Python objects; refusing to unpickle")
        return dtypes.check_shape(shape, where), bool(fortran), dt, header

    def _tags(self, info, shape, dt, header, where) -> dict[str, str]:
        if shape != () or dt.kind != "U" or info.file_size > MAX_TAGS or header + dt.itemsize != info.file_size:
            raise CheckpointError(f"{where} is not mapspec's dtype table (a 0-d string of its member's size)")
        raw = self._data(info, header, dt.itemsize, where)
        try:
            tags = json.loads(raw.view(dt)[0])
        except ValueError:
            raise CheckpointError(f"{where} is not valid JSON") from None
        if not isinstance(tags, dict) or not all(isinstance(v, str) for v in tags.values()):
            raise CheckpointError(f"{where} is not a table of dtype names")
        return tags

    def _data(self, info: zipfile.ZipInfo, header: int, nbytes: int, where: str) -> np.ndarray:
        """`nbytes` of a member after its header, into a fresh buffer; the member must end
        there (zipfile checks its CRC at the end)."""
        buf = np.empty(nbytes, np.uint8)
        view = memoryview(buf)
        with self._members_.open(info) as f:
            f.seek(header)
            got = 0
            while got < nbytes:
                n = f.readinto(view[got:got + (1 << 24)])
                if not n:
                    raise CheckpointError(f"{where} ends after {got} of its {nbytes} data bytes")
                got += n
            if f.read(1):
                raise CheckpointError(f"{where} holds more data than its shape")
        return buf

    def infos(self) -> Mapping[str, TensorInfo]:
        return self._infos

    def read(self, key: str) -> np.ndarray:
        info, header, fortran, dt = self._members[key]
        raw = self._data(info, header, info.file_size - header, f"{self.path}: member {shown(info.filename)}")
        shape = self._infos[key].shape
        array = raw.view(dt)
        array = array.reshape(shape[::-1]).T if fortran else array.reshape(shape)
        if dt.byteorder == ">":  # stored big-endian: values in the native order
            array = array.astype(dt.newbyteorder("<"))
        return array.view(np.uint16) if self._infos[key].dtype == "bfloat16" else array

    def close(self) -> None:
        members = getattr(self, "_members_", None)
        if members is not None:
            members.close()
        self._file.close()


class NpzSink(SinkBase):
    """Each tensor is written as its own zip member as it arrives."""

    def __init__(self, path: Path, outputs: Mapping[str, TensorInfo], metadata=None):
        self.atomic = AtomicPath(path)
        self.provenance = metadata
        self.infos = dict(outputs)
        self.zip = zipfile.ZipFile(self.atomic.open("wb"), "w", zipfile.ZIP_STORED, allowZip64=True)

    def write(self, name: str, array: np.ndarray) -> None:
        with self.zip.open(name + ".npy", "w", force_zip64=True) as f:
            np.lib.format.write_array(f, dtypes.stored(array, self.infos[name].dtype), allow_pickle=False)

    def commit(self) -> None:
        tagged = {k: i.dtype for k, i in self.infos.items() if i.dtype == "bfloat16"}
        if tagged:
            with self.zip.open(DTYPES_MEMBER + ".npy", "w") as f:
                np.lib.format.write_array(f, np.array(json.dumps(tagged)), allow_pickle=False)
        if self.provenance is not None:  # the archive comment: np.load lists members only
            self.zip.comment = self.provenance.json().encode()
        self.zip.close()
        self.atomic.commit()

    def abort(self) -> None:
        self.zip.fp = None  # closing the zip would write its directory (and fail again): drop it
        self.atomic.abort()


def _is_npz(path: Path, head: bytes) -> bool:
    from .torch import is_torch_zip

    return head[:4] == b"PK\x03\x04" and not is_torch_zip(path)


FORMAT = Format("npz", "NumPy .npz", NpzSource, NpzSink, frozenset(dtypes.NUMPY_NAMES) | {"complex64"},
                sniff=_is_npz)
