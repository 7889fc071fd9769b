"""The native torch.save writer: files torch.load(weights_only=True) reads, valid CRC-32s
for every entry, zip64 when sizes or offsets need it, and kernel copies for tensors that
pass through unchanged."""

import zipfile

import numpy as np
import pytest

from mapspec import TensorInfo, apply
from mapspec.formats import open_sink, open_source
from mapspec.formats import torch_zip


def write(path, tensors, fmt="torch"):
    infos = {k: TensorInfo(tuple(a.shape), d) for k, (a, d) in tensors.items()}
    sink = open_sink(path, fmt, infos)
    for k, (a, _d) in tensors.items():
        sink.write(k, a)
    sink.commit()


TENSORS = {
    "w": (np.arange(12, dtype=np.float32).reshape(3, 4), "float32"),
    "h": (np.linspace(-2, 2, 6, dtype=np.float16), "float16"),
    "bf": (np.array([0x3F80, 0xC000, 0x7F80], np.uint16), "bfloat16"),  # 1, -2, inf as bf16 bits
    "scalar": (np.array(7, np.int64), "int64"),
    "empty": (np.zeros((0, 3), np.float32), "float32"),
    "mask": (np.array([True, False, True]), "bool"),
    "i8": (np.array([-1, 2], np.int8), "int8"),
}


def test_torch_loads_every_dtype_with_weights_only(tmp_path, torch):
    write(tmp_path / "x.pt", TENSORS)
    state = torch.load(tmp_path / "x.pt", weights_only=True)
    assert list(state) == list(TENSORS)
    for k, (a, d) in TENSORS.items():
        t = state[k]
        assert str(t.dtype) == f"torch.{d}" and tuple(t.shape) == a.shape
        if d == "bfloat16":
            assert t.float().tolist() == [1.0, -2.0, float("inf")]
        else:
            np.testing.assert_array_equal(t.numpy(), a)
    mapped = torch.load(tmp_path / "x.pt", weights_only=True, mmap=True)  # needs the 64-byte alignment
    np.testing.assert_array_equal(mapped["w"].numpy(), TENSORS["w"][0])


def test_every_entry_has_a_valid_crc_and_the_torch_layout(tmp_path):
    write(tmp_path / "x.pt", TENSORS)
    with zipfile.ZipFile(tmp_path / "x.pt") as z:
        assert z.testzip() is None  # reads every entry and checks its CRC-32
        names = z.namelist()
        assert names[:4] == ["archive/data.pkl", "archive/.format_version", "archive/.storage_alignment",
                             "archive/byteorder"]
        assert names[4:-2] == [f"archive/data/{i}" for i in range(len(TENSORS))]
        assert names[-2:] == ["archive/version", "archive/.data/serialization_id"]
        raw = (tmp_path / "x.pt").read_bytes()
        for info in z.infolist():
            assert info.compress_type == zipfile.ZIP_STORED
            name_len, extra_len = np.frombuffer(raw[info.header_offset + 26:info.header_offset + 30], "<u2")
            assert (info.header_offset + 30 + int(name_len) + int(extra_len)) % 64 == 0  # torch's alignment
    # and mapspec's own reader takes it back
    source = open_source(tmp_path / "x.pt")
    np.testing.assert_array_equal(source.read("w"), TENSORS["w"][0])
    source.close()


def test_zip64_records_when_offsets_pass_the_32_bit_limit(tmp_path, torch, monkeypatch):
    monkeypatch.setattr(torch_zip, "ZIP64_LIMIT", 100)  # every size/offset past 100 bytes goes zip64
    big = {"a": (np.arange(64, dtype=np.float32), "float32"), "b": (np.ones(40, np.float64), "float64")}
    write(tmp_path / "x.pt", big)
    with zipfile.ZipFile(tmp_path / "x.pt") as z:
        assert z.testzip() is None
    state = torch.load(tmp_path / "x.pt", weights_only=True)
    np.testing.assert_array_equal(state["a"].numpy(), big["a"][0])
    np.testing.assert_array_equal(state["b"].numpy(), big["b"][0])


@pytest.mark.parametrize("src, dst", [("pt", "pt"), ("safetensors", "pt"), ("pt", "safetensors"),
                                      ("params", "safetensors"), ("safetensors", "params")])
def test_unchanged_tensors_are_copied_by_the_kernel_and_bit_identical(tmp_path, monkeypatch, src, dst):
    from mapspec.formats import base

    tensors = {"a.w": (np.random.default_rng(0).standard_normal((8, 5)).astype(np.float32), "float32"),
               "a.b": (np.arange(3, dtype=np.int64), "int64")}
    fmt = {"pt": "torch", "params": "mxnet", "safetensors": "safetensors"}
    write(tmp_path / f"in.{src}", tensors, fmt[src])
    copies = []
    real = base.copy_extent
    monkeypatch.setattr(base, "copy_extent", lambda r, fd, at: (copies.append(r), real(r, fd, at)))
    for m in ("torch", "safetensors", "mxnet"):
        monkeypatch.setattr(f"mapspec.formats.{m}.copy_extent", base.copy_extent)
    (tmp_path / "k.map").write_text("mapspec 1\na.{p} -> b.{p}\n")
    apply(tmp_path / "k.map", tmp_path / f"in.{src}", tmp_path / f"out.{dst}")
    assert len(copies) == 2
    source = open_source(tmp_path / f"out.{dst}")
    for k, (a, _d) in tensors.items():
        np.testing.assert_array_equal(source.read(k.replace("a.", "b.")), a)
    source.close()
    if dst == "pt":
        with zipfile.ZipFile(tmp_path / "out.pt") as z:
            assert z.testzip() is None


@pytest.mark.parametrize("src", ["pt", "safetensors"])
def test_a_whole_record_copied_from_a_pt_keeps_its_stated_crc_without_reading_back(tmp_path, monkeypatch, torch, src):
    """.pt -> .pt takes each record's CRC-32 from the source's zip directory (the bytes are
    the same bytes); from any other source the copied bytes are read back for it."""
    from mapspec.formats import torch_zip

    tensors = {"a.w": (np.random.default_rng(1).standard_normal((16, 3)).astype(np.float32), "float32")}
    write(tmp_path / f"in.{src}", tensors, {"pt": "torch", "safetensors": "safetensors"}[src])
    stated = []  # the CRC each copied record came with (None: read back for it)
    real = torch_zip.ZipWriter.copied
    monkeypatch.setattr(torch_zip.ZipWriter, "copied", lambda self, fd, start, n, crc32=None: (
        stated.append(crc32), real(self, fd, start, n, crc32))[1])
    (tmp_path / "k.map").write_text("mapspec 1\na.{p} -> b.{p}\n")
    apply(tmp_path / "k.map", tmp_path / f"in.{src}", tmp_path / "out.pt")
    assert len(stated) == 1 and (stated[0] is not None) == (src == "pt")
    with zipfile.ZipFile(tmp_path / "out.pt") as z:
        assert z.testzip() is None  # every CRC matches its bytes
    assert torch.load(tmp_path / "out.pt", weights_only=True)["b.w"].numpy().tobytes() == tensors["a.w"][0].tobytes()
