"""`apply --ray` on a real local Ray cluster started by the tests (`ray start --head
--num-cpus 2`, no dashboard: two worker processes run the shard tasks), killed by its process
group at the end, never with `ray stop`.

The output is byte-identical to a single-process run (a merge across source shards
included), to a local folder and to S3; a worker killed while it writes a shard is retried
and leaves no partial file; a failure retrying cannot cure stops the run with one error line
and removes everything."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("ray")

from mapspec import CheckpointError, apply, plan_for  # noqa: E402
from mapspec.core.tensorinfo import TensorInfo  # noqa: E402
from mapspec.formats import open_sink  # noqa: E402

from servers import ray_cluster  # noqa: E402

REPO = Path(__file__).resolve().parents[1]

# q/k/v of each layer lie in different source shards; the cast makes every task do numpy work.
FUSE = """mapspec 1
from pytorch to pytorch
model.layers.{i:int}.attn.{p:q|k|v}.weight -> layers.{i}.qkv.weight then concat(0)
model.layers.{i:int}.mlp.weight -> layers.{i}.mlp.weight then cast(float16)
"""


@pytest.fixture(scope="session")
def cluster(s3, tmp_path_factory):
    """One Ray cluster for the session. It starts after the S3 server so that its workers
    inherit the server's endpoint and keys, as a real node inherits its own credentials."""
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    import ray

    with ray_cluster(cpus=2) as address:
        try:
            yield address
        finally:
            ray.shutdown()


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory) -> Path:
    """Six layers, about 25 MB in 1.5 MB source shards."""
    root = tmp_path_factory.mktemp("ray-model")
    rng = np.random.default_rng(0)
    tensors = {}
    for i in range(6):
        for p in "qkv":
            tensors[f"model.layers.{i}.attn.{p}.weight"] = rng.standard_normal((256, 512), dtype=np.float32)
        tensors[f"model.layers.{i}.mlp.weight"] = rng.standard_normal((1024, 512), dtype=np.float32)
    sink = open_sink(root / "src", "safetensors", {k: TensorInfo(a.shape, str(a.dtype)) for k, a in tensors.items()},
                     max_shard_size="1500KB")
    for k, a in tensors.items():
        sink.write(k, a)
    sink.commit()
    # the model folder's other files: the driver writes them beside the shards, like one process
    (root / "src" / "config.json").write_text(json.dumps({"model_type": "llama", "torch_dtype": "float32"}))
    (root / "src" / "tokenizer.json").write_text('{"version": "1.0"}')
    (root / "fuse.map").write_text(FUSE)
    return root


def same_files(a: Path, b: Path) -> None:
    names = sorted(p.name for p in a.iterdir())
    assert names == sorted(p.name for p in b.iterdir())
    for name in names:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name


def test_ray_output_is_byte_identical_to_one_process(cluster, checkpoint, tmp_path):
    spec, src = checkpoint / "fuse.map", checkpoint / "src"
    apply(spec, src, tmp_path / "one", max_shard_size="3MB")
    seen, shards = [], []
    apply(spec, src, tmp_path / "ray", max_shard_size="3MB", ray=cluster,
          progress=lambda done, total: seen.append((done, total)), shards_progress=lambda d, n: shards.append((d, n)))
    same_files(tmp_path / "one", tmp_path / "ray")
    assert len(list((tmp_path / "one").iterdir())) >= 7  # several shards, the index, the model's files
    assert {"config.json", "tokenizer.json"} <= {p.name for p in (tmp_path / "ray").iterdir()}
    total = seen[-1][1]
    assert seen[-1] == (total, total) and shards[-1][0] == shards[-1][1] >= 4
    assert {p.name for p in tmp_path.iterdir()} == {"one", "ray"}  # no temporary folder left


def test_ray_to_s3_equals_one_process_to_local(cluster, checkpoint, s3, bucket, tmp_path):
    spec, src = checkpoint / "fuse.map", checkpoint / "src"
    apply(spec, src, tmp_path / "one", max_shard_size="3MB")
    apply(spec, src, f"s3://{bucket}/out", max_shard_size="3MB", ray=cluster)
    s3.invalidate_cache()
    names = sorted(p.name for p in (tmp_path / "one").iterdir())
    assert sorted(o.rsplit("/", 1)[1] for o in s3.find(f"{bucket}/out")) == names
    for name in names:
        assert s3.cat_file(f"{bucket}/out/{name}") == (tmp_path / "one" / name).read_bytes(), name
    assert s3.call_s3("list_multipart_uploads", Bucket=bucket).get("Uploads", []) == []


def _writer_of(folder: Path) -> tuple[int, Path] | None:
    """(pid, file) of a process holding a `.part` file under `folder` open for writing."""
    parts = {str(p) for p in folder.glob(".*.part/.*.part")}
    if not parts:
        return None
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target in parts:
                    return int(pid), Path(target)
        except OSError:
            continue
    return None


def test_a_worker_killed_while_writing_a_shard_is_retried_and_leaves_no_partial_file(cluster, checkpoint, tmp_path):
    import threading

    spec, src = checkpoint / "fuse.map", checkpoint / "src"
    apply(spec, src, tmp_path / "one", max_shard_size="3MB")
    killed: list = []
    stop = threading.Event()

    def killer() -> None:
        while not stop.is_set() and not killed:
            found = _writer_of(tmp_path)
            if found:
                os.kill(found[0], 9)
                killed.append(found)
            time.sleep(0.001)

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    try:
        apply(spec, src, tmp_path / "ray", max_shard_size="3MB", ray=cluster)
    finally:
        stop.set()
        thread.join()
    assert killed, "no worker was caught writing a shard"
    same_files(tmp_path / "one", tmp_path / "ray")  # the killed shard was written again, whole
    assert {p.name for p in tmp_path.iterdir()} == {"one", "ray"}  # no temporary folder left


def test_a_failure_retrying_cannot_cure_stops_the_run_and_removes_everything(cluster, checkpoint, tmp_path):
    """The workers open the source themselves: a shard truncated after the driver compiled
    the plan fails every task that reads it, with the reader's own one-line error."""
    from mapspec.formats import open_source
    from mapspec.formats.provenance import Provenance
    from mapspec.formats.atomic import guarded_writes
    from mapspec.run.cluster import apply_on_ray

    src = tmp_path / "src"
    src.mkdir()
    for f in (checkpoint / "src").iterdir():
        (src / f.name).write_bytes(f.read_bytes())
    plan = plan_for(checkpoint / "fuse.map", src)
    record = Provenance(spec_file=None, source=open_source(src).path).resolved()
    victim = sorted(src.glob("*.safetensors"))[-1]
    victim.write_bytes(victim.read_bytes()[:-1000])
    out = tmp_path / "out"
    with pytest.raises(CheckpointError) as err:
        with guarded_writes():
            apply_on_ray(plan, str(src), "", None, out, "safetensors", record, "3MB", cluster)
    assert victim.name in str(err.value) and "\n" not in str(err.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]


def test_cli_ray_flag_takes_an_optional_address():
    from mapspec.cli import _ray_flag

    assert _ray_flag(["apply", "s.map", "c", "-o", "o", "--ray"]) == ["apply", "s.map", "c", "-o", "o", "--ray=auto"]
    assert _ray_flag(["apply", "--ray", "s.map", "c"]) == ["apply", "--ray=auto", "s.map", "c"]
    assert _ray_flag(["apply", "--ray", "10.0.0.1:6379", "s.map"]) == ["apply", "--ray", "10.0.0.1:6379", "s.map"]
    assert _ray_flag(["apply", "--ray", "ray://head:10001"]) == ["apply", "--ray", "ray://head:10001"]
    assert _ray_flag(["apply", "--ray", "--force"]) == ["apply", "--ray=auto", "--force"]
