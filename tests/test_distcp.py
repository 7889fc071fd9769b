"""PyTorch distributed checkpoints, read natively.

The checkpoint is written by the real `torch.distributed.checkpoint.save` from 2 gloo
processes (tests/dcp_writer.py): row-sharded, column-sharded and replicated DTensors in bf16
and fp32, an unevenly cut tensor, a plain tensor and a non-tensor entry. mapspec reads every
tensor equal, bit for bit and dtype for dtype, to torch's own `dcp_to_torch_save`, converts it,
and shows the chunking in `inspect`. Hostile metadata is refused with one line and nothing
written."""

import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("torch.distributed.checkpoint")
from safetensors.torch import load_file  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from mapspec.cli import app  # noqa: E402
from mapspec.formats import open_source  # noqa: E402

runner = CliRunner()
HERE = Path(__file__).resolve().parent
IDENTITY = "mapspec 1\n{name:**} -> {name}\n"


def run_gloo(script: str, where: Path, *args: str, cleanup: Path | None = None) -> None:
    """Runs a 2-process gloo helper script. torch's gloo teardown sometimes aborts a rank under
    load ("terminate called without an active exception", SIGABRT) after the work is done; such
    a signal death of the harness is retried with a fresh rendezvous file, while any Python
    error in a helper fails at once."""
    for attempt in range(3):
        if cleanup is not None and cleanup.exists():
            shutil.rmtree(cleanup) if cleanup.is_dir() else cleanup.unlink()
        r = subprocess.run([sys.executable, str(HERE / script), *args, str(where / f"init{attempt}")],
                           capture_output=True, text=True, timeout=300,
                           env={**os.environ, "PYTHONPATH": str(HERE)})
        if r.returncode == 0:
            return
        if "terminated with signal" not in r.stderr:
            break
    raise AssertionError(f"{script} failed (exit {r.returncode}):\n{r.stderr[-4000:]}")


@pytest.fixture(scope="module")
def dcp_dir(tmp_path_factory):
    where = tmp_path_factory.mktemp("dcp")
    out = where / "ckpt"
    run_gloo("dcp_writer.py", where, str(out), cleanup=out)
    return out


@pytest.fixture(scope="module")
def reference(dcp_dir, tmp_path_factory):
    """torch's own reading of the checkpoint: dcp_to_torch_save, then torch.load."""
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    out = tmp_path_factory.mktemp("ref") / "ref.pt"
    dcp_to_torch_save(dcp_dir, out)
    state = torch.load(out, weights_only=False)
    flat = {}
    for group, entries in state.items():
        for k, v in entries.items():
            flat[f"{group}.{k}"] = v
    return flat


def as_torch(array, dtype: str):
    import numpy as np

    if dtype == "bfloat16":
        return torch.from_numpy(np.ascontiguousarray(array).view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(np.ascontiguousarray(array))


def test_every_tensor_reads_back_equal_to_dcp_to_torch_save(dcp_dir, reference):
    source = open_source(dcp_dir)
    try:
        infos = dict(source.infos())
        tensors = {k: v for k, v in reference.items() if isinstance(v, torch.Tensor)}
        assert sorted(infos) == sorted(tensors)  # extra.step, not a tensor, is skipped
        assert "extra.step" in reference and "extra.step" not in infos
        for key, expected in tensors.items():
            got = as_torch(source.read(key), infos[key].dtype)
            assert got.dtype == expected.dtype and got.shape == expected.shape, key
            assert torch.equal(got.view(torch.uint8) if got.dtype == torch.bfloat16 else got,
                               expected.view(torch.uint8) if got.dtype == torch.bfloat16 else expected), key
    finally:
        source.close()


@pytest.fixture(scope="module")
def dcp_safetensors(tmp_path_factory):
    where = tmp_path_factory.mktemp("dcp-st")
    out = where / "ckpt"
    run_gloo("dcp_writer.py", where, str(out), "safetensors", cleanup=out)
    return out


def test_safetensors_serialized_chunks_read_back_equal_to_what_was_saved(dcp_safetensors):
    """SerializationFormat.SAFETENSORS: each rank's tensors follow its byte entries as one
    safetensors block. torch's own dcp_to_torch_save cannot read these (it torch.loads them), so
    the reference is the full tensors the processes cut their DTensors from."""
    sys.path.insert(0, str(HERE))
    from dcp_writer import full_tensors

    source = open_source(dcp_safetensors)
    try:
        infos = dict(source.infos())
        assert sorted(infos) == sorted(["model." + k for k in full_tensors()] + ["extra.plain"])
        for key, expected in full_tensors().items():
            got = as_torch(source.read("model." + key), infos["model." + key].dtype)
            assert got.dtype == expected.dtype and torch.equal(got, expected), key
        assert torch.equal(as_torch(source.read("extra.plain"), "int64"), torch.arange(5))
    finally:
        source.close()


def test_apply_converts_a_distributed_checkpoint(dcp_dir, reference, tmp_path):
    (tmp_path / "id.map").write_text(IDENTITY)
    r = runner.invoke(app, ["apply", str(tmp_path / "id.map"), str(dcp_dir), "-o", str(tmp_path / "out.safetensors")])
    assert r.exit_code == 0, r.output
    out = load_file(tmp_path / "out.safetensors")
    for key, value in out.items():
        assert value.dtype == reference[key].dtype and torch.equal(value, reference[key]), key
    assert len(out) == 8


def test_inspect_shows_the_tensors_and_their_chunks(dcp_dir):
    r = runner.invoke(app, ["inspect", str(dcp_dir)])
    assert r.exit_code == 0, r.output
    assert "[distcp]: 8 tensors" in r.output
    assert "model.rows_bf16: 2 chunks: [0:4, 0:6] in __0_0.distcp, [4:8, 0:6] in __1_0.distcp" in r.output
    assert "model.cols_fp32: 2 chunks: [0:6, 0:4] in __0_0.distcp, [0:6, 4:8] in __1_0.distcp" in r.output
    assert "model.uneven_fp32: 2 chunks: [0:4, 0:3] in __0_0.distcp, [4:7, 0:3] in __1_0.distcp" in r.output
    assert "model.replicated_fp32: 1 chunk: [0:10] in __1_0.distcp" in r.output


def test_a_written_distributed_checkpoint_loads_into_a_differently_sharded_model(dcp_dir, tmp_path):
    """`--to distcp`: torch.distributed.checkpoint.load, from 2 gloo processes, reads it into
    DTensors sharded otherwise than the source was (rows by columns, replicated as sharded)."""
    sys.path.insert(0, str(HERE))
    from dcp_writer import full_tensors

    (tmp_path / "id.map").write_text(IDENTITY)
    out = tmp_path / "written"
    r = runner.invoke(app, ["apply", str(tmp_path / "id.map"), str(dcp_dir), "-o", str(out), "--to", "distcp"])
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in out.iterdir()) == [".metadata", "__0_0.distcp", "mapspec-provenance.json"]
    run_gloo("dcp_loader.py", tmp_path, str(out), str(tmp_path / "loaded.pt"), cleanup=tmp_path / "loaded.pt")
    loaded = torch.load(tmp_path / "loaded.pt", weights_only=True)
    for key, expected in full_tensors().items():
        assert loaded["model"][key].dtype == expected.dtype and torch.equal(loaded["model"][key], expected), key
    assert torch.equal(loaded["extra"]["plain"], torch.arange(5))
    # and mapspec reads back what it wrote
    source = open_source(out)
    try:
        for key, expected in full_tensors().items():
            assert torch.equal(as_torch(source.read("model." + key), dict(source.infos())["model." + key].dtype),
                               expected), key
    finally:
        source.close()


# ---------------------------------------------------------------- hostile


def refused(ckpt: Path, tmp_path: Path, *needles: str) -> str:
    (tmp_path / "id.map").write_text(IDENTITY)
    out = tmp_path / "out.safetensors"
    r = runner.invoke(app, ["apply", str(tmp_path / "id.map"), str(ckpt), "-o", str(out)])
    assert r.exit_code == 2, r.output
    assert "Traceback" not in r.output and len(r.output.strip().splitlines()) == 1, r.output
    assert not out.exists() and not list(tmp_path.glob(".out*"))
    for n in needles:
        assert n in r.output, r.output
    return r.output


def edited(dcp_dir: Path, where: Path, change) -> Path:
    """A copy of the checkpoint whose Metadata `change(metadata)` edits (torch unpickles it:
    the test trusts its own file)."""
    copy = where / "edited"
    shutil.copytree(dcp_dir, copy)
    md = pickle.loads((copy / ".metadata").read_bytes())
    change(md)
    (copy / ".metadata").write_bytes(pickle.dumps(md))
    return copy


def test_a_missing_distcp_file_is_named(dcp_dir, tmp_path):
    copy = tmp_path / "ck"
    shutil.copytree(dcp_dir, copy)
    (copy / "__1_0.distcp").unlink()
    refused(copy, tmp_path, "names chunks in __1_0.distcp, which is not in")


def test_metadata_naming_a_file_that_is_not_there(dcp_dir, tmp_path):
    def change(md):
        for info in md.storage_data.values():
            info.relative_path = "__7_0.distcp"
    refused(edited(dcp_dir, tmp_path, change), tmp_path, "__7_0.distcp, which is not in")


def test_metadata_naming_a_chunk_without_storage(dcp_dir, tmp_path):
    def change(md):
        del md.storage_data[next(k for k in md.storage_data if k.fqn == "model.rows_fp32" and k.offset[0] == 4)]
    refused(edited(dcp_dir, tmp_path, change), tmp_path, "the chunk of 'model.rows_fp32' at [4, 0] has no storage entry")


def test_metadata_whose_chunks_overlap(dcp_dir, tmp_path):
    from torch.distributed.checkpoint.metadata import ChunkStorageMetadata

    def change(md):
        chunks = md.state_dict_metadata["model.cols_fp32"].chunks
        chunks[1] = ChunkStorageMetadata(offsets=torch.Size([0, 2]), sizes=torch.Size([6, 4]))
    refused(edited(dcp_dir, tmp_path, change), tmp_path, "model.cols_fp32")


def test_metadata_whose_chunk_lies_past_its_file(dcp_dir, tmp_path):
    def change(md):
        for info in md.storage_data.values():
            info.offset += 1 << 20
    refused(edited(dcp_dir, tmp_path, change), tmp_path, "lies past its end")


def test_a_pickle_payload_in_metadata_runs_nothing(dcp_dir, tmp_path):
    copy = tmp_path / "ck"
    shutil.copytree(dcp_dir, copy)
    marker = tmp_path / "pwned"
    (copy / ".metadata").write_bytes(b"cos\nsystem\n(S'touch " + str(marker).encode() + b"'\ntR.")
    refused(copy, tmp_path, "refusing to unpickle", "os.system")
    assert not marker.exists()


def test_other_torch_distributed_globals_are_refused(dcp_dir, tmp_path):
    copy = tmp_path / "ck"
    shutil.copytree(dcp_dir, copy)
    (copy / ".metadata").write_bytes(b"ctorch.distributed.checkpoint.state_dict_loader\nload\n(tR.")
    refused(copy, tmp_path, "refusing to unpickle")
