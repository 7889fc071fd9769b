"""The native torch.save writer: files torch.load(weights_only=True) reads, valid CRC-32s
for every entry, zip64 when sizes or offsets need it, and kernel copies for tensors that
pass through unchanged."""

import importlib
import errno
import zipfile
import zlib

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
    from mapspec.formats import placement

    tensors = {"a.w": (np.random.default_rng(0).standard_normal((8, 5)).astype(np.float32), "float32"),
               "a.b": (np.arange(3, dtype=np.int64), "int64")}
    fmt = {"pt": "torch", "params": "mxnet", "safetensors": "safetensors"}
    write(tmp_path / f"in.{src}", tensors, fmt[src])
    copies = []
    real = placement.copy_extent
    monkeypatch.setattr(placement, "copy_extent", lambda r, fd, at: (copies.append(r), real(r, fd, at)))
    for m in ("torch", "safetensors", "mxnet"):  # formats that import it by name (others call placement's)
        module = importlib.import_module(f"mapspec.formats.{m}")
        if hasattr(module, "copy_extent"):
            monkeypatch.setattr(module, "copy_extent", placement.copy_extent)
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


# ------------------------------------------------- CRCs taken by the worker thread

SUFFIX = {"safetensors": ".safetensors", "torch": ".pt", "mxnet": ".params", "npz": ".npz", "oneflow": ".oneflow",
          "wts": ".wts"}


def assert_crcs_right(path) -> None:
    """Every entry's CRC-32 matches its bytes, in the central directory (zipfile checks
    that) and in the local header too (which zipfile does not read, but other tools do)."""
    raw = path.read_bytes()
    with zipfile.ZipFile(path) as z:
        assert z.testzip() is None
        for info in z.infolist():
            assert raw[info.header_offset:info.header_offset + 4] == b"PK\x03\x04"
            local = int.from_bytes(raw[info.header_offset + 14:info.header_offset + 18], "little")
            assert local == info.CRC == zlib.crc32(z.read(info)), info.filename


@pytest.mark.parametrize("fmt", list(SUFFIX))
@pytest.mark.parametrize("spec", ["a.{p} -> b.{p}", "a.{p} -> b.{p} then cast(float64)"], ids=["copied", "cast"])
def test_a_pt_written_from_every_source_format_has_right_crcs(tmp_path, torch, fmt, spec):
    rng = np.random.default_rng(2)
    # flat: .wts keeps no shapes
    tensors = {f"a.t{i}": (rng.standard_normal(2000 + i).astype(np.float32), "float32") for i in range(5)}
    src = tmp_path / f"in{SUFFIX[fmt]}"
    write(src, tensors, fmt)
    (tmp_path / "k.map").write_text(f"mapspec 1\n{spec}\n")
    apply(tmp_path / "k.map", src, tmp_path / "out.pt")
    assert_crcs_right(tmp_path / "out.pt")
    state = torch.load(tmp_path / "out.pt", weights_only=True)
    for k, (a, _d) in tensors.items():
        np.testing.assert_array_equal(state[k.replace("a.", "b.")].numpy(), a.astype(state["b.t0"].numpy().dtype))


def test_a_tensor_copied_and_checksummed_in_many_chunks(tmp_path, monkeypatch, torch):
    """The kernel copy and the CRC read-back both walk a tensor in pieces (here 4 KiB and
    1000 bytes: a tensor far larger than either, ending mid-chunk); the CRC is of them all."""
    from mapspec.formats import placement

    monkeypatch.setattr(placement, "COPY_CHUNK", 4096)
    monkeypatch.setattr(torch_zip, "CHUNK", 1000)
    a = np.random.default_rng(3).standard_normal(25_013).astype(np.float32)
    write(tmp_path / "in.safetensors", {"a.w": (a, "float32")}, "safetensors")
    (tmp_path / "k.map").write_text("mapspec 1\na.{p} -> b.{p}\n")
    apply(tmp_path / "k.map", tmp_path / "in.safetensors", tmp_path / "out.pt")
    assert_crcs_right(tmp_path / "out.pt")
    np.testing.assert_array_equal(torch.load(tmp_path / "out.pt", weights_only=True)["b.w"].numpy(), a)


def test_zip64_entries_get_their_worker_crcs_too(tmp_path, monkeypatch, torch):
    """Sizes and offsets past the 32-bit limit (lowered here, as writing 4 GiB is not cheap)
    move into zip64 extra fields; the CRC the worker takes still lands in both headers."""
    monkeypatch.setattr(torch_zip, "ZIP64_LIMIT", 100)
    tensors = {"a.x": (np.arange(64, dtype=np.float32), "float32"), "a.y": (np.ones(40, np.float64), "float64")}
    write(tmp_path / "in.safetensors", tensors, "safetensors")
    (tmp_path / "k.map").write_text("mapspec 1\na.{p} -> b.{p}\n")
    apply(tmp_path / "k.map", tmp_path / "in.safetensors", tmp_path / "out.pt")
    assert_crcs_right(tmp_path / "out.pt")
    state = torch.load(tmp_path / "out.pt", weights_only=True)
    np.testing.assert_array_equal(state["b.x"].numpy(), tensors["a.x"][0])
    np.testing.assert_array_equal(state["b.y"].numpy(), tensors["a.y"][0])


def test_a_crc_worker_failure_is_the_normal_output_error(tmp_path, monkeypatch):
    """An error reading the output back (here EIO on the worker thread) ends the run as any
    write error does: one `error:` line naming the output, exit 2, nothing left behind."""
    from typer.testing import CliRunner

    from mapspec.cli import app

    def broken(fd, start, nbytes, crc=0, job=None):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(torch_zip, "crc_of_range", broken)
    write(tmp_path / "in.safetensors", {"a.w": (np.ones((8, 8), np.float32), "float32")}, "safetensors")
    (tmp_path / "k.map").write_text("mapspec 1\na.{p} -> b.{p}\n")
    (tmp_path / "out").mkdir()
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["apply", "k.map", "in.safetensors", "-o", "out/o.pt"])
    assert result.exit_code == 2, result.output
    assert result.output.strip() == "error: out/o.pt: cannot write: Input/output error"
    assert list((tmp_path / "out").iterdir()) == []


def test_a_failure_while_crcs_are_pending_cancels_them_and_leaves_nothing(tmp_path, monkeypatch):
    """The run fails after several records were copied, their CRCs queued behind one still
    running: abort stops the running one, drops the queued ones (they never read the file),
    and waits for the worker before the file is closed and removed; no thread lingers."""
    import threading

    from mapspec.formats import torch as torch_format

    started, ran = threading.Event(), []
    real = torch_zip.crc_of_range

    def slow(fd, start, nbytes, crc=0, job=None):
        if job is not None:
            ran.append(start)
            started.set()
            while not job.cancelled:  # held here until abort cancels it
                threading.Event().wait(0.005)
        return real(fd, start, nbytes, crc, job)

    def failing_write(self, name, array):
        assert started.wait(10)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch_zip, "crc_of_range", slow)
    monkeypatch.setattr(torch_format.TorchSink, "write", failing_write)
    tensors = {f"a.t{i}": (np.full((32, 32), i, np.float32), "float32") for i in range(4)}
    write(tmp_path / "in.safetensors", tensors, "safetensors")
    # Three records copied (their CRCs queued), then one cast, through write, which fails.
    (tmp_path / "k.map").write_text("mapspec 1\na.t{i:0|1|2} -> b.t{i}\na.t3 -> c.t3 then cast(float16)\n")
    (tmp_path / "out").mkdir()
    with pytest.raises(OSError):
        apply(tmp_path / "k.map", tmp_path / "in.safetensors", tmp_path / "out" / "o.pt")
    assert len(ran) == 1  # the queued two were dropped
    assert list((tmp_path / "out").iterdir()) == []
    for t in threading.enumerate():
        if t.name == "mapspec-crc32":
            t.join(10)
            assert not t.is_alive()
