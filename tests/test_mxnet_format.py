"""The native MXNet container, without mxnet: round trips, old layouts, damage."""

import struct

import numpy as np
import pytest

from mapspec.core.dtypes import STORAGE
from mapspec.errors import CheckpointError
from mapspec.formats import open_sink, open_source
from mapspec.formats.mxnet import FILE_MAGIC, FORMAT, V1
from mapspec.compile.plan import TensorInfo

RNG = np.random.default_rng(1)


def every_dtype() -> dict[str, tuple[np.ndarray, str]]:
    out = {}
    for name, dt in STORAGE.items():
        if name not in FORMAT.dtypes:  # the low-precision and ggml types MXNet cannot hold
            continue
        if name == "bool":
            a = RNG.random((2, 3)) > 0.5
        elif dt.kind == "f":
            a = RNG.standard_normal((2, 3)).astype(dt)
        else:
            a = RNG.integers(0, 100, (2, 3)).astype(dt)
        out[f"arg:{name}"] = (a, name)
    out["aux:scalar"] = (np.array(3.5, np.float32), "float32")
    out["aux:empty"] = (np.zeros((0, 4), np.float32), "float32")
    return out


def write(path, tensors):
    sink = open_sink(path, "mxnet", {k: TensorInfo(a.shape, d) for k, (a, d) in tensors.items()})
    for k, (a, _) in tensors.items():
        sink.write(k, a)
    sink.commit()


def test_round_trip_every_dtype_with_prefixes(tmp_path):
    tensors = every_dtype()
    write(tmp_path / "x.params", tensors)
    src = open_source(tmp_path / "x.params")
    assert list(src.infos()) == list(tensors)
    for k, (a, d) in tensors.items():
        assert src.infos()[k] == TensorInfo(a.shape, d)
        np.testing.assert_array_equal(src.read(k), a)
    a = src.read("arg:float32")
    before = a.copy()
    a[...] = 0  # a fresh buffer read by position, not a view of the file: the file is unchanged
    np.testing.assert_array_equal(src.read("arg:float32"), before)


def _old_record(a: np.ndarray, v1: bool) -> bytes:
    if v1:
        head = struct.pack("<Ii", V1, a.ndim) + struct.pack(f"<{a.ndim}q", *a.shape)
    else:  # oldest: u32 ndim + u32 dims, no magic
        head = struct.pack("<I", a.ndim) + struct.pack(f"<{a.ndim}I", *a.shape)
    return head + struct.pack("<iii", 1, 0, 0) + a.astype("<f4").tobytes()


@pytest.mark.parametrize("v1", [True, False], ids=["V1", "magic-less"])
def test_reads_old_layouts(tmp_path, v1):
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    name = b"arg:fc_weight"
    blob = struct.pack("<QQQ", FILE_MAGIC, 0, 1) + _old_record(a, v1) + struct.pack("<QQ", 1, len(name)) + name
    (tmp_path / "old.params").write_bytes(blob)
    src = open_source(tmp_path / "old.params")
    np.testing.assert_array_equal(src.read("arg:fc_weight"), a)


def test_checkpoint_prefix_and_epoch(tmp_path):
    write(tmp_path / "net-0007.params", {"arg:w": (np.ones(2, np.float32), "float32")})
    src = open_source(tmp_path / "net", epoch=7)
    assert list(src.infos()) == ["arg:w"]


@pytest.mark.parametrize("cut", [4, 20, 40, -3])
def test_truncated_files_name_the_byte_offset(tmp_path, cut):
    write(tmp_path / "x.params", {"arg:w": (np.ones((4, 4), np.float32), "float32")})
    data = (tmp_path / "x.params").read_bytes()
    (tmp_path / "cut.params").write_bytes(data[:cut])
    with pytest.raises(CheckpointError, match=r"cut.params: .*byte \d+"):
        open_source(tmp_path / "cut.params")


def test_corrupt_headers_are_refused(tmp_path):
    write(tmp_path / "x.params", {"arg:w": (np.ones((4, 4), np.float32), "float32")})
    data = bytearray((tmp_path / "x.params").read_bytes())
    bad = bytearray(data)
    bad[0] = 0x13
    (tmp_path / "magic.params").write_bytes(bad)
    with pytest.raises(CheckpointError, match="not an MXNet NDArray file"):
        open_source(tmp_path / "magic.params")
    huge = bytearray(data)
    huge[16:24] = struct.pack("<Q", 2**60)
    (tmp_path / "count.params").write_bytes(huge)
    with pytest.raises(CheckpointError, match="array count .* at byte 16"):
        open_source(tmp_path / "count.params")
    dims = bytearray(data)
    dims[32:36] = struct.pack("<i", 1000)
    (tmp_path / "ndim.params").write_bytes(dims)
    with pytest.raises(CheckpointError, match="1000 dimensions"):
        open_source(tmp_path / "ndim.params")
