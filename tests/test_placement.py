"""Copied tensors land at their source offset modulo GRANULE (64 KiB), where the format has
room for padding (safetensors: spaces after the header; torch zip: a record's padding
field), so the kernel moves whole page-cache folios. The files stay what the libraries read,
and small files are not padded at all."""

import json
import struct
import zipfile

import numpy as np
import pytest

from mapspec import TensorInfo, apply
from mapspec.formats import open_sink, open_source
from mapspec.formats import placement
from mapspec.formats.placement import GRANULE, PLACE_FROM, copy_residue


def write(path, fmt, tensors, **kw):
    sink = open_sink(path, fmt, {k: TensorInfo(a.shape, str(a.dtype)) for k, a in tensors.items()}, **kw)
    for k, a in tensors.items():
        sink.write(k, a)
    sink.commit()


def tensors(n=6, size=300_003, step=3):
    """fp32 tensors of sizes that are not multiples of a page, so offsets drift through residues."""
    rng = np.random.default_rng(0)
    return {f"model.layer{i}.weight": rng.standard_normal(size + step * i).astype(np.float32) for i in range(n)}


def safetensors_offsets(path):
    """name -> absolute file offset of its data, from the header as written."""
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    header.pop("__metadata__", None)
    return {k: 8 + n + v["data_offsets"][0] for k, v in header.items()}, 8 + n


def zip_data_offsets(path):
    """record name -> absolute file offset of its data (local header + name + extra)."""
    out = {}
    with zipfile.ZipFile(path) as z, open(path, "rb") as f:
        for info in z.infolist():
            f.seek(info.header_offset)
            head = f.read(30)
            name_len, extra_len = struct.unpack("<HH", head[26:30])
            out[info.filename] = info.header_offset + 30 + name_len + extra_len
    return out


def test_the_residue_most_copied_bytes_agree_on_wins(monkeypatch):
    monkeypatch.setattr(placement, "PLACE_FROM", 0)
    offsets = {"a": 0, "b": 100, "c": 200}
    sizes = {"a": 10, "b": 1000, "c": 10}
    # a and c vote for 4000; b, larger, for 4012 - 100 = 3912
    assert copy_residue({"a": 4000, "b": 4012, "c": 4200}, offsets, sizes, 8) == 3912
    assert copy_residue({"a": 4000, "c": 4200}, offsets, sizes, 8) == 4000
    assert copy_residue({"b": 4001}, offsets, sizes, 8) is None  # not 8-aligned: no vote
    assert copy_residue({}, offsets, sizes, 8) is None
    monkeypatch.setattr(placement, "PLACE_FROM", 1000)
    assert copy_residue({"a": 4000, "c": 4200}, offsets, sizes, 8) is None  # 20 bytes: not worth padding


def test_a_small_file_keeps_the_librarys_header_padding(tmp_path):
    src = tmp_path / "in.safetensors"
    write(src, "safetensors", {"a": np.arange(1000, dtype=np.float32)})
    (tmp_path / "r.map").write_text("mapspec 1\na -> bb\n")
    apply(tmp_path / "r.map", src, tmp_path / "out.safetensors")
    raw = (tmp_path / "out.safetensors").read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    assert n % 8 == 0 and len(raw[8:8 + n]) - len(raw[8:8 + n].rstrip(b" ")) < 8


def test_safetensors_rename_keeps_every_copied_offset_modulo_the_page(tmp_path, monkeypatch):
    src = tmp_path / "in.safetensors"
    write(src, "safetensors", tensors())
    (tmp_path / "r.map").write_text("mapspec 1\nmodel.{rest:**} -> transformer.{rest}\n")
    out = tmp_path / "out.safetensors"
    apply(tmp_path / "r.map", src, out)
    before, _ = safetensors_offsets(src)
    after, base = safetensors_offsets(out)
    assert base % 8 == 0  # the library's own alignment of the data block is kept
    for k, at in before.items():
        assert after["transformer." + k[len("model."):]] % GRANULE == at % GRANULE
    from safetensors.numpy import load_file  # the library reads the padded header

    got, want = load_file(out), load_file(src)
    assert list(got) == ["transformer." + k[len("model."):] for k in want]
    for k, a in want.items():
        np.testing.assert_array_equal(got["transformer." + k[len("model."):]], a)
    source = open_source(out)  # and so does mapspec
    try:
        np.testing.assert_array_equal(source.read("transformer.layer3.weight"), want["model.layer3.weight"])
    finally:
        source.close()


def test_a_rename_that_reorders_aligns_the_most_bytes(tmp_path):
    """Renames that reverse the order: one block start cannot suit every tensor, the largest wins."""
    src = tmp_path / "in.safetensors"
    data = {"a": np.ones(1_100_000, np.float32), "b": np.ones(10, np.float32), "c": np.ones(1_002, np.float32)}
    write(src, "safetensors", data)
    (tmp_path / "r.map").write_text("mapspec 1\na -> z\nb -> y\nc -> x\n")
    apply(tmp_path / "r.map", src, tmp_path / "out.safetensors")
    before, _ = safetensors_offsets(src)
    after, _ = safetensors_offsets(tmp_path / "out.safetensors")
    assert after["z"] % GRANULE == before["a"] % GRANULE


def test_torch_records_of_copied_tensors_keep_their_offset_and_load(tmp_path, torch):
    torch.manual_seed(0)
    state = {f"model.block{i}.weight": torch.randn(1000 + 7 * i, 1100) for i in range(4)}  # > 4 MiB each
    state["model.small"] = torch.randn(300, 17)  # under PLACE_FROM: padded only to torch's 64 bytes
    torch.save(state, tmp_path / "in.pt")
    (tmp_path / "r.map").write_text("mapspec 1\nmodel.{rest:**} -> net.{rest}\n")
    apply(tmp_path / "r.map", tmp_path / "in.pt", tmp_path / "out.pt")
    before, after = zip_data_offsets(tmp_path / "in.pt"), zip_data_offsets(tmp_path / "out.pt")
    src_data = {k.split("/", 1)[1]: v for k, v in before.items() if "/data/" in k}
    out_data = {k.split("/", 1)[1]: v for k, v in after.items() if "/data/" in k}
    src_keys = list(state)  # torch.save numbers storages in state-dict order, as the sink does
    for i, k in enumerate(src_keys):
        at, was = out_data[f"data/{i}"], src_data[f"data/{i}"]
        assert at % 64 == 0
        if state[k].numel() * 4 >= PLACE_FROM:
            assert at % GRANULE == was % GRANULE, k
    with zipfile.ZipFile(tmp_path / "out.pt") as z:
        assert z.testzip() is None
    for mmap in (False, True):
        got = torch.load(tmp_path / "out.pt", weights_only=True, mmap=mmap)
        for k, t in state.items():
            assert torch.equal(got["net." + k[len("model."):]], t)


@pytest.mark.parametrize("to", ["safetensors", "torch"])
def test_every_shard_places_its_copies(tmp_path, to, monkeypatch):
    monkeypatch.setattr(placement, "PLACE_FROM", 0)  # small shards, placed as large ones are
    src = tmp_path / "in.safetensors"
    data = tensors(n=8, size=30_000, step=2)  # 8-byte multiples: a shard may start anywhere 8-aligned
    write(src, "safetensors", data)
    (tmp_path / "k.map").write_text("mapspec 1\n{rest:**} -> {rest}\n")
    apply(tmp_path / "k.map", src, tmp_path / "out", max_shard_size="300KB", to=to)
    before, _ = safetensors_offsets(src)
    shards = sorted((tmp_path / "out").glob("*.safetensors" if to == "safetensors" else "*.bin"))
    assert len(shards) > 2
    seen = 0
    for shard in shards:
        if to == "safetensors":
            after, _ = safetensors_offsets(shard)
            for k, at in after.items():
                assert at % GRANULE == before[k] % GRANULE
                seen += 1
        else:
            records = open_source(shard)
            try:
                for k in records.infos():
                    e = records.extent(k)
                    assert e.offset % 64 == 0
                    if before[k] % 64 == 0:
                        assert e.offset % GRANULE == before[k] % GRANULE
                    seen += 1
            finally:
                records.close()
    assert seen == len(data)


# ------------------------------------------------- copies before slices

def test_a_step_whose_actions_move_no_byte_is_copied_even_where_it_could_run_in_slices(tmp_path, monkeypatch):
    """A 64 MiB tensor cast to the dtype it has: large enough to run in row slices
    (run/rows.py), yet a kernel copy, with the bytes it would have had."""
    real, seen = placement.copy_extent, []

    def spy(extent, fd_out, offset_out):
        real(extent, fd_out, offset_out)
        seen.append(extent.nbytes)

    monkeypatch.setattr(placement, "copy_extent", spy)
    src = tmp_path / "in.safetensors"
    big = np.arange(16 << 20, dtype=np.float32).reshape(4096, 4096)
    write(src, "safetensors", {"a.weight": big[:8] * 2, "b.weight": big})  # the big one is not the first step
    (tmp_path / "c.map").write_text("mapspec 1\n{k:*}.weight -> {k}.w then cast(float32)\n")
    apply(tmp_path / "c.map", src, tmp_path / "o.gguf")
    assert sorted(seen) == [8 * 4096 * 4, big.nbytes]
    out = open_source(tmp_path / "o.gguf")
    assert np.array_equal(out.read("a.w"), big[:8] * 2) and np.array_equal(out.read("b.w"), big)
    out.close()
