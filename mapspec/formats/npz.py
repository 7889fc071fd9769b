"""NumPy `.npz`: a zip of `.npy` members, read one member at a time with pickles refused.

bf16 has no numpy dtype, so its bits are stored as uint16 and the real dtype names are kept
in a `__mapspec_dtypes__` member (a plain unicode array, not a pickle)."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Mapping

import numpy as np

from .. import dtypes
from ..errors import CheckpointError
from ..plan import TensorInfo
from .base import AtomicPath

DTYPES_MEMBER = "__mapspec_dtypes__"


class NpzSource:
    def __init__(self, path: Path):
        self.path = Path(path)
        try:
            self.zip = zipfile.ZipFile(self.path)
        except FileNotFoundError:
            raise CheckpointError(f"{self.path}: no such file") from None
        except (zipfile.BadZipFile, OSError) as exc:
            raise CheckpointError(f"{self.path}: not a readable .npz ({exc})") from None
        self._members: dict[str, str] = {}
        self._infos: dict[str, TensorInfo] = {}
        tagged: dict[str, str] = {}
        for member in self.zip.namelist():
            if not member.endswith(".npy"):
                continue
            key = member[:-4]
            if key == DTYPES_MEMBER:
                tagged = json.loads(str(self._load(member)))
                continue
            with self.zip.open(member) as f:
                try:
                    version = np.lib.format.read_magic(f)
                    read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                                   else np.lib.format.read_array_header_2_0)
                    shape, fortran, dt = read_header(f)
                except ValueError as exc:
                    raise CheckpointError(f"{self.path}: member {member} is not a valid .npy ({exc})") from None
            if dt.hasobject:
                raise CheckpointError(f"{self.path}: member {member} holds Python objects; refusing to unpickle")
            try:
                name = dtypes.of_array(np.empty(0, dt))
            except TypeError:
                raise CheckpointError(f"{self.path}: member {member} has unsupported dtype {dt}") from None
            self._members[key] = member
            self._infos[key] = TensorInfo(tuple(shape), name)
        for key, name in tagged.items():
            if key in self._infos:
                self._infos[key] = TensorInfo(self._infos[key].shape, name)

    def _load(self, member: str) -> np.ndarray:
        with self.zip.open(member) as f:
            try:
                return np.lib.format.read_array(f, allow_pickle=False)
            except ValueError as exc:
                raise CheckpointError(f"{self.path}: cannot read member {member} ({exc})") from None

    def infos(self) -> Mapping[str, TensorInfo]:
        return self._infos

    def read(self, key: str) -> np.ndarray:
        return self._load(self._members[key])

    def close(self) -> None:
        self.zip.close()


class NpzSink:
    """Each tensor is written as its own zip member as it arrives."""

    def __init__(self, path: Path, outputs: Mapping[str, TensorInfo], metadata=None):
        self.atomic = AtomicPath(path)
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
        self.zip.close()
        self.atomic.commit()

    def abort(self) -> None:
        self.atomic.abort()  # closing the zip would write its directory: just drop it
