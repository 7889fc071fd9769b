"""Every output records what made it (spec, its sha256, parameters, source and its sha256,
mapspec version), where its format has room, and `inspect` shows it for every format."""

import hashlib
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

import mapspec
from mapspec.cli import app
from mapspec.formats import open_source
from mapspec.formats.provenance import sha256_path

from conftest import write_safetensors

SPEC = """mapspec 1
from pytorch to pytorch
include "bn.map"
m.{i:int}.bn_{p in bn} -> layers.{i}.norm.{bn[p]}
fc.weight -> head.weight then view(+(1, 1))
"""
BN = "table bn {\n  gamma = weight\n  beta = bias\n}\n"
TENSORS = {
    "m.0.bn_gamma": np.arange(3, dtype=np.float32),
    "m.0.bn_beta": np.arange(3, 6, dtype=np.float32),
    "fc.weight": np.arange(12, dtype=np.float32).reshape(4, 3),
}
EXPECTED = {
    "layers.0.norm.weight": TENSORS["m.0.bn_gamma"],
    "layers.0.norm.bias": TENSORS["m.0.bn_beta"],
    "head.weight": TENSORS["fc.weight"].reshape(4, 3, 1, 1),
}


@pytest.fixture
def setup(tmp_path):
    src = write_safetensors(tmp_path / "in.safetensors", TENSORS)
    (tmp_path / "spec.map").write_text(SPEC)
    (tmp_path / "bn.map").write_text(BN)
    return tmp_path, src


def sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def check_record(record: dict, tmp_path: Path, src: Path) -> None:
    assert record == {
        "version": mapspec.__version__,
        "spec": "spec.map",
        "spec_sha256": sha(tmp_path / "spec.map"),
        "includes": {"bn.map": sha(tmp_path / "bn.map")},
        "params": {},
        "direction": "forward",
        "source": "in.safetensors",
        "source_sha256": sha(src),
    }


def native(path: Path, fmt: str) -> dict[str, np.ndarray]:
    """The output as the format's own library reads it (unchanged by the provenance)."""
    if fmt == "safetensors":
        from safetensors.numpy import load_file

        return load_file(str(path))
    if fmt == "pt":
        torch = pytest.importorskip("torch")
        return {k: v.numpy() for k, v in torch.load(path, weights_only=True).items()}
    if fmt == "npz":
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    source = open_source(path)
    try:
        return {k: np.array(source.read(k)).reshape(EXPECTED[k].shape) for k in source.infos()}
    finally:
        source.close()


@pytest.mark.parametrize("fmt", ["safetensors", "pt", "npz", "params", "wts", "oneflow"])
def test_every_format_records_provenance(setup, fmt):
    tmp_path, src = setup
    out = tmp_path / f"out.{fmt}"
    mapspec.apply(tmp_path / "spec.map", src, out)
    check_record(mapspec.inspect_checkpoint(out)["provenance"], tmp_path, src)
    got = native(out, fmt)
    assert sorted(got) == sorted(EXPECTED)  # no extra key in the state dict
    for k, v in EXPECTED.items():
        np.testing.assert_array_equal(got[k], v)
    sidecar = out.with_name(out.name + ".mapspec.json")
    assert sidecar.exists() == (fmt in ("params", "wts"))


def test_safetensors_metadata_is_strings_read_by_the_library(setup):
    from safetensors import safe_open

    tmp_path, src = setup
    out = tmp_path / "out.safetensors"
    mapspec.apply(tmp_path / "spec.map", src, out)
    with safe_open(str(out), "np") as f:
        meta = f.metadata()
    assert meta["format"] == "pt"
    assert meta["mapspec.source_sha256"] == sha(src)
    assert json.loads(meta["mapspec.params"]) == {}
    assert all(isinstance(v, str) for v in meta.values())


def test_pt_record_is_beside_the_pickle(setup):
    tmp_path, src = setup
    out = tmp_path / "out.pt"
    mapspec.apply(tmp_path / "spec.map", src, out)
    with zipfile.ZipFile(out) as z:
        names = z.namelist()
    archive = names[0].split("/")[0]  # torch names the folder after the file it wrote
    assert [n for n in names if n.endswith("mapspec.json")] == [f"{archive}/mapspec.json"]


def test_npz_keeps_it_in_the_archive_comment(setup):
    tmp_path, src = setup
    out = tmp_path / "out.npz"
    mapspec.apply(tmp_path / "spec.map", src, out)
    with zipfile.ZipFile(out) as z:
        assert json.loads(z.comment)["source_sha256"] == sha(src)


def test_directory_hash_is_defined_over_sorted_files(tmp_path):
    d = tmp_path / "d"
    (d / "b").mkdir(parents=True)
    (d / "a").write_bytes(b"xy")
    (d / "b" / "c").write_bytes(b"z")
    expected = hashlib.sha256(b"a\x002\x00xy" + b"b/c\x001\x00z").hexdigest()
    assert sha256_path(d) == expected


def test_inspect_shows_provenance_in_tree_and_json(setup):
    tmp_path, src = setup
    out = tmp_path / "out.params"
    mapspec.apply(tmp_path / "spec.map", src, out)
    runner = CliRunner()
    r = runner.invoke(app, ["inspect", str(out)])
    assert r.exit_code == 0, r.output
    assert "written by mapspec" in r.output and f"source_sha256: {sha(src)}" in r.output
    r = runner.invoke(app, ["inspect", str(out), "--format", "json"])
    assert json.loads(r.output)["provenance"]["spec"] == "spec.map"


def test_a_file_mapspec_did_not_write_has_none(setup):
    tmp_path, src = setup
    assert "provenance" not in mapspec.inspect_checkpoint(src)


# ------------------------------------------------------------------ the source hash, off the critical path

def _sharded_source(folder: Path) -> Path:
    """Three shards and their index, written by mapspec's sharded sink."""
    from mapspec import TensorInfo
    from mapspec.formats import open_sink

    rng = np.random.default_rng(0)
    arrays = {f"m.{i}.w": rng.standard_normal((64, 64)).astype(np.float32) for i in range(6)}
    sink = open_sink(folder / "src", "safetensors", {k: TensorInfo(v.shape, "float32") for k, v in arrays.items()},
                     max_shard_size=40_000)
    for k, v in arrays.items():
        sink.write(k, v)
    sink.commit()
    return folder / "src"


@pytest.mark.parametrize("out", ["o.safetensors", "o.npz", "sharded"])
def test_a_sharded_source_records_every_shards_sha256_the_hubs_lfs_ids(tmp_path, out):
    """Each shard's sha256 is what the hub lists as its LFS object id; the one source_sha256
    is over `name NUL size NUL sha256 LF` of the shards in name order."""
    from mapspec.formats.provenance import read

    src = _sharded_source(tmp_path)
    shards = sorted(p for p in src.iterdir() if p.suffix == ".safetensors")
    assert len(shards) == 3
    (tmp_path / "keep.map").write_text("mapspec 1\n{k:**} -> {k}\n")
    mapspec.apply(tmp_path / "keep.map", src, tmp_path / out, **({"max_shard_size": 40_000} if out == "sharded" else {}))
    where = tmp_path / out
    record = read(sorted(where.glob("*.safetensors"))[0] if where.is_dir() else where)
    files = {p.name: {"size": p.stat().st_size, "sha256": sha(p)} for p in shards}
    assert record["source_files"] == files
    lines = "".join(f"{n}\0{f['size']}\0{f['sha256']}\n" for n, f in sorted(files.items()))
    assert record["source_sha256"] == hashlib.sha256(lines.encode()).hexdigest()
    assert record["source"] == "model.safetensors.index.json"


def test_shards_are_hashed_on_several_threads_in_the_order_they_are_read(tmp_path):
    from mapspec.formats import provenance

    src = _sharded_source(tmp_path)
    shards = sorted(p for p in src.iterdir() if p.suffix == ".safetensors")
    digests = provenance._Digests(shards)
    assert len(digests.threads) == min(3, provenance.HASH_THREADS)
    assert digests.result() == {p: ("sha256", sha(p)) for p in shards}


def test_no_hash_records_sizes_and_times_and_says_so(setup):
    tmp_path, src = setup
    result = CliRunner().invoke(app, ["apply", str(tmp_path / "spec.map"), str(src), "-o",
                                      str(tmp_path / "o.safetensors"), "--no-hash"])
    assert result.exit_code == 0, result.output
    from mapspec.formats.provenance import read

    record = read(tmp_path / "o.safetensors")
    import time

    assert record["source_sha256"] is None
    assert "--no-hash" in record["source_hash"] and "sizes and modification times only" in record["source_hash"]
    assert record["source_files"] == {"in.safetensors": {
        "size": src.stat().st_size,
        "modified": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(src.stat().st_mtime))}}
    inspected = CliRunner().invoke(app, ["inspect", str(tmp_path / "o.safetensors")])
    assert "--no-hash" in inspected.output
