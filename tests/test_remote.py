"""Checkpoints on object storage: read from and written to a real S3 server (moto's, started
by the tests on 127.0.0.1 and reached through s3fs exactly as AWS would be), and memory://.

A sharded model directory converts S3 -> S3 into the same bytes as S3 -> local; outputs
appear only whole (no partial object, no incomplete multipart upload after a failure or a
signal); a missing or truncated object is one error line naming it."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

pytest.importorskip("fsspec")
pytest.importorskip("s3fs")
pytest.importorskip("moto")

from mapspec import CheckpointError, apply, open_source  # noqa: E402
from mapspec.errors import OutputError  # noqa: E402
from mapspec.cli import app  # noqa: E402
from mapspec.core.tensorinfo import TensorInfo  # noqa: E402
from mapspec.formats import open_sink  # noqa: E402
from mapspec.formats.remote import URLPath  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
runner = CliRunner()

# q/k/v of a layer land in different shards; the merge reads across them. The rest is cast.
FUSE = """mapspec 1
from pytorch to pytorch
model.layers.{i:int}.attn.{p:q|k|v}.weight -> layers.{i}.qkv.weight then concat(0)
model.layers.{i:int}.mlp.weight -> layers.{i}.mlp.weight then cast(float16)
model.embed.weight -> embed.weight
"""


def model_tensors() -> dict[str, np.ndarray]:
    """About 13 MB: the embedding alone is 10 MiB, so its shard goes up in two multipart parts."""
    rng = np.random.default_rng(0)
    out = {"model.embed.weight": rng.standard_normal((1280, 2048), dtype=np.float32)}
    for i in range(2):
        for p in "qkv":
            out[f"model.layers.{i}.attn.{p}.weight"] = rng.standard_normal((64, 256), dtype=np.float32)
        out[f"model.layers.{i}.mlp.weight"] = rng.standard_normal((256, 256), dtype=np.float32)
    return out


def write_local(path: Path, tensors: dict, max_shard_size=None) -> None:
    sink = open_sink(path, "safetensors", {k: TensorInfo(a.shape, str(a.dtype)) for k, a in tensors.items()},
                     max_shard_size=max_shard_size)
    for k, a in tensors.items():
        sink.write(k, a)
    sink.commit()


@pytest.fixture(scope="session")
def model(tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("remote-model")
    tensors = model_tensors()
    write_local(root / "src", tensors, max_shard_size="100KB")
    (root / "fuse.map").write_text(FUSE)
    return root, tensors


def upload(s3, local: Path, url: str) -> None:
    s3.put(str(local) + ("/" if local.is_dir() else ""), url, recursive=local.is_dir())
    s3.invalidate_cache()


def objects(s3, prefix: str) -> list[str]:
    s3.invalidate_cache()
    try:
        return sorted(s3.find(prefix))
    except FileNotFoundError:
        return []


def incomplete_uploads(s3, bucket: str) -> list:
    return s3.call_s3("list_multipart_uploads", Bucket=bucket).get("Uploads", [])


def tensors_at(where) -> dict:
    source = open_source(where, select="")
    try:
        return {k: np.array(source.read(k)) for k in source.infos()}
    finally:
        source.close()


def cli(*args: str) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1")
    env.pop("MAPSPEC_DEBUG", None)
    return subprocess.Popen([sys.executable, "-m", "mapspec.cli", *args], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def one_error_line(text: str, *needles: str) -> str:
    lines = text.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), text
    assert "Traceback" not in text
    for needle in needles:
        assert needle in lines[0], text
    return lines[0]


# ------------------------------------------------------------------ reading and writing


def test_sharded_directory_on_s3_converts_to_s3_as_it_converts_to_local(s3, bucket, model, tmp_path):
    root, tensors = model
    upload(s3, root / "src", f"{bucket}/src")
    spec = root / "fuse.map"

    apply(spec, f"s3://{bucket}/src", tmp_path / "local", max_shard_size="5MB")
    report = apply(spec, f"s3://{bucket}/src", f"s3://{bucket}/out", max_shard_size="5MB")

    local = sorted(p.name for p in (tmp_path / "local").iterdir())
    assert len(local) >= 3 and "model.safetensors.index.json" in local
    assert [o.rsplit("/", 1)[1] for o in objects(s3, f"{bucket}/out")] == local
    for name in local:  # the same bytes, file for file, the index included
        assert s3.cat_file(f"{bucket}/out/{name}") == (tmp_path / "local" / name).read_bytes(), name
    assert incomplete_uploads(s3, bucket) == []
    assert report.bytes > 10 << 20

    got = tensors_at(f"s3://{bucket}/out")  # read back through the remote reader itself
    for i in range(2):
        want = np.concatenate([tensors[f"model.layers.{i}.attn.{p}.weight"] for p in "qkv"])
        assert np.array_equal(got[f"layers.{i}.qkv.weight"], want)
        assert np.array_equal(got[f"layers.{i}.mlp.weight"], tensors[f"model.layers.{i}.mlp.weight"].astype(np.float16))
    assert np.array_equal(got["embed.weight"], tensors["model.embed.weight"])

    # Provenance: each shard's own MD5 (its single-part ETag), not a second read; no credentials.
    record = open_source(tmp_path / "local" / local[0], select="").metadata
    files = json.loads(record["mapspec.source_files"])
    shards = [o.rsplit("/", 1)[1] for o in objects(s3, f"{bucket}/src") if o.endswith(".safetensors")]
    assert sorted(files) == sorted(shards) and len(shards) > 1
    for name in shards:
        assert files[name]["md5"] == hashlib.md5(s3.cat_file(f"{bucket}/src/{name}")).hexdigest()
        assert "sha256" not in files[name]
    assert len(record["mapspec.source_sha256"]) == 64  # the combined digest over the shards' records
    for name in local:
        assert os.environ["AWS_SECRET_ACCESS_KEY"].encode() not in (tmp_path / "local" / name).read_bytes()


def test_a_model_directory_on_s3_brings_its_other_files_along(s3, bucket, model, tmp_path):
    """config.json (rewritten as the plan says), the tokenizer and the rest of a model folder go
    beside the shards, to a local folder and to S3 alike, from the API and from the CLI (which
    hands the API a URL object)."""
    root, _ = model
    src = tmp_path / "src"
    shutil.copytree(root / "src", src)
    (src / "config.json").write_text(json.dumps({"model_type": "llama", "torch_dtype": "float32"}))
    (src / "tokenizer.json").write_text('{"version": "1.0"}')
    upload(s3, src, f"{bucket}/with-files")
    cast = tmp_path / "cast.map"
    cast.write_text("mapspec 1\n{k:**} -> {k} then cast(float16)\n")

    apply(cast, f"s3://{bucket}/with-files", tmp_path / "api", max_shard_size="5MB")
    p = cli("apply", str(cast), f"s3://{bucket}/with-files", "-o", str(tmp_path / "cli"), "--max-shard-size", "5MB")
    out, err = p.communicate(timeout=300)
    assert p.returncode == 0, err
    apply(cast, f"s3://{bucket}/with-files", f"s3://{bucket}/with-files-out", max_shard_size="5MB")
    for where in (tmp_path / "api", tmp_path / "cli"):
        assert (where / "tokenizer.json").read_text() == '{"version": "1.0"}'
        assert json.loads((where / "config.json").read_text())["torch_dtype"] == "float16"
    remote = {o.rsplit("/", 1)[1] for o in objects(s3, f"{bucket}/with-files-out")}
    assert remote == {p.name for p in (tmp_path / "api").iterdir()}
    assert s3.cat_file(f"{bucket}/with-files-out/config.json") == (tmp_path / "api" / "config.json").read_bytes()


def test_a_store_sha256_checksum_is_recorded_as_the_source_sha256(s3, bucket, tmp_path):
    """An object stored with a full-object SHA256 checksum: provenance takes it from the store."""
    write_local(tmp_path / "one.safetensors", {"w": np.arange(12, dtype=np.float32)})
    blob = (tmp_path / "one.safetensors").read_bytes()
    s3.call_s3("put_object", Bucket=bucket, Key="one.safetensors", Body=blob, ChecksumAlgorithm="SHA256")
    (tmp_path / "id.map").write_text("mapspec 1\nw -> weight\n")
    apply(tmp_path / "id.map", f"s3://{bucket}/one.safetensors", tmp_path / "out.safetensors")
    meta = open_source(tmp_path / "out.safetensors").metadata
    assert meta["mapspec.source_sha256"] == hashlib.sha256(blob).hexdigest()
    assert meta["mapspec.source"] == "one.safetensors"


def test_single_file_and_shard_list_urls_and_torch_zip_headers(s3, bucket, model, tmp_path, torch):
    """A single object, a list of shard objects, and a .pt whose zip directory is read by range."""
    root, tensors = model
    upload(s3, root / "src", f"{bucket}/src")
    shards = sorted(f"s3://{o}" for o in objects(s3, f"{bucket}/src") if o.endswith(".safetensors"))
    assert tensors_at(shards).keys() == tensors.keys()
    torch.save({k: torch.from_numpy(v) for k, v in tensors.items()}, tmp_path / "m.pt")
    upload(s3, tmp_path / "m.pt", f"{bucket}/m.pt")
    got = tensors_at(f"s3://{bucket}/m.pt")
    assert all(np.array_equal(got[k], v) for k, v in tensors.items())


def test_memory_protocol_reads_and_writes(model, tmp_path):
    """Any registered fsspec protocol: memory:// has no multipart uploads (temp object, moved)."""
    import fsspec

    root, tensors = model
    mem = fsspec.filesystem("memory")
    base = f"memory://mapspec-{uuid.uuid4().hex[:8]}"
    mem.put(str(root / "src") + "/", f"{base}/src", recursive=True)
    apply(root / "fuse.map", f"{base}/src", f"{base}/out.safetensors")
    apply(root / "fuse.map", root / "src", tmp_path / "out.safetensors")
    assert tensors_at(f"{base}/out.safetensors").keys() == tensors_at(tmp_path / "out.safetensors").keys()
    assert not [p for p in mem.find(base) if p.endswith(".part")]


def test_cli_commands_take_urls(s3, bucket, model, tmp_path):
    root, tensors = model
    upload(s3, root / "src", f"{bucket}/src")
    src, spec = f"s3://{bucket}/src", str(root / "fuse.map")

    r = runner.invoke(app, ["inspect", src])
    assert r.exit_code == 0 and "9 shards" in r.output and f"{src} [safetensors]" in r.output, r.output
    r = runner.invoke(app, ["inspect", "--keys", src])
    assert r.exit_code == 0 and "model.embed.weight" in r.output
    r = runner.invoke(app, ["check", spec, src])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["explain", spec, src])
    assert r.exit_code == 0 and "concat" in r.output
    r = runner.invoke(app, ["apply", spec, src, "-o", f"s3://{bucket}/conv", "--max-shard-size", "5MB",
                            "--concurrency", "3"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["verify", spec, src, "--against", f"s3://{bucket}/conv"])
    assert r.exit_code == 0, r.output
    write_local(tmp_path / "target.safetensors", {k.replace("model.", "", 1): v for k, v in tensors.items()})
    r = runner.invoke(app, ["draft", src, str(tmp_path / "target.safetensors")])
    assert r.exit_code == 0 and "->" in r.stdout, r.output


# ------------------------------------------------------------------ failures


def test_missing_object_missing_shard_and_missing_bucket_are_one_line(s3, bucket, model):
    root, _ = model
    upload(s3, root / "src", f"{bucket}/src")
    spec = str(root / "fuse.map")
    r = runner.invoke(app, ["apply", spec, f"s3://{bucket}/nope.safetensors", "-o", f"s3://{bucket}/o.safetensors"])
    assert r.exit_code == 2
    one_error_line(r.output, f"s3://{bucket}/nope.safetensors", "no such")

    first = sorted(o for o in objects(s3, f"{bucket}/src") if o.endswith(".safetensors"))[0]
    s3.rm(first)
    r = runner.invoke(app, ["apply", spec, f"s3://{bucket}/src", "-o", f"s3://{bucket}/out", "--max-shard-size", "5MB"])
    assert r.exit_code == 2
    one_error_line(r.output, first.rsplit("/", 1)[1], "missing")

    r = runner.invoke(app, ["apply", spec, str(root / "src"), "-o", "s3://no-such-bucket-here/out.safetensors"])
    assert r.exit_code != 0
    one_error_line(r.output, "no-such-bucket-here")
    assert objects(s3, f"{bucket}/out") == [] and incomplete_uploads(s3, bucket) == []


def test_truncated_object_is_refused_before_writing(s3, bucket, model):
    root, _ = model
    first = sorted(p for p in (root / "src").iterdir() if p.suffix == ".safetensors")[0]
    blob = first.read_bytes()
    s3.pipe(f"{bucket}/cut.safetensors", blob[:-100])
    r = runner.invoke(app, ["apply", str(root / "fuse.map"), f"s3://{bucket}/cut.safetensors", "--non-strict",
                            "-o", f"s3://{bucket}/out.safetensors"])
    assert r.exit_code == 2
    one_error_line(r.output, f"s3://{bucket}/cut.safetensors")
    assert objects(s3, f"{bucket}/out.safetensors") == [] and incomplete_uploads(s3, bucket) == []


@pytest.mark.parametrize("replaced_by", ["its first half", "other bytes of the same size"])
def test_object_replaced_mid_run_ends_the_run_naming_it_and_leaves_nothing(s3, bucket, model, replaced_by):
    """The shards' headers were read (the plan compiled) before; after the first tensor is
    written, every shard is replaced. A range read would return the new bytes as if they
    were the old tensors (the same-size case: silently wrong); S3 requests name the ETag the
    plan was compiled against, so the run stops naming the object, every upload aborted."""
    root, _ = model
    upload(s3, root / "src", f"{bucket}/src")
    shards = [o for o in objects(s3, f"{bucket}/src") if o.endswith(".safetensors")]
    done = []

    def progress(written: int, total: int) -> None:
        if not done:
            done.append(written)
            for name in shards:
                blob = s3.cat_file(name)
                half = blob[:len(blob) // 2]
                s3.pipe(name, half if replaced_by == "its first half" else half + bytes(len(blob) - len(half)))

    with pytest.raises(CheckpointError, match="changed while .* was read") as err:
        apply(root / "fuse.map", f"s3://{bucket}/src", f"s3://{bucket}/out", max_shard_size="5MB", progress=progress)
    assert any(f"s3://{name}: " in str(err.value) for name in shards) and "\n" not in str(err.value)
    assert objects(s3, f"{bucket}/out") == [] and incomplete_uploads(s3, bucket) == []


def test_existing_output_is_kept_unless_force(s3, bucket, model):
    root, _ = model
    s3.pipe(f"{bucket}/out.safetensors", b"precious")
    with pytest.raises(OutputError, match="exists"):
        apply(root / "fuse.map", root / "src", f"s3://{bucket}/out.safetensors")
    assert s3.cat_file(f"{bucket}/out.safetensors") == b"precious"
    apply(root / "fuse.map", root / "src", f"s3://{bucket}/out.safetensors", force=True)
    s3.invalidate_cache()
    assert s3.cat_file(f"{bucket}/out.safetensors", start=0, end=8) != b"precious"


def test_sigterm_during_upload_leaves_no_object_and_no_upload(s3, bucket, tmp_path):
    """A conversion to S3 is stopped by SIGTERM once its first multipart upload has begun:
    exit 143, one error line, nothing under the output, every upload aborted."""
    rng = np.random.default_rng(1)
    write_local(tmp_path / "big", {f"w{i}": rng.standard_normal((1024, 2560), dtype=np.float32) for i in range(8)},
                max_shard_size="11MB")
    (tmp_path / "id.map").write_text("mapspec 1\nw{i:int} -> layer.{i}.weight\n")
    proc = cli("apply", str(tmp_path / "id.map"), str(tmp_path / "big"), "-o", f"s3://{bucket}/out",
               "--max-shard-size", "11MB", "--concurrency", "2")
    try:
        end = time.monotonic() + 120
        while proc.poll() is None and not incomplete_uploads(s3, bucket) and time.monotonic() < end:
            time.sleep(0.02)
        assert proc.poll() is None, proc.communicate()
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143, err
    one_error_line(err, "interrupted")
    assert objects(s3, f"{bucket}/out") == []
    assert incomplete_uploads(s3, bucket) == []


def test_outputs_appear_only_when_complete_with_the_index_last(s3, bucket, model, monkeypatch):
    """While shards are being uploaded nothing is listed under the output; completion makes
    the shards visible, then the index."""
    from mapspec.formats import objects as objs

    root, _ = model
    seen: list[list[str]] = []
    real_complete, real_upload = objs.complete, objs.upload

    def spy_upload(local, url, started=None):
        pending = real_upload(local, url, started)
        seen.append(objects(s3, f"{bucket}/out"))  # uploaded, not completed: invisible
        return pending

    def spy_complete(pending):
        real_complete(pending)
        seen.append(objects(s3, f"{bucket}/out"))

    monkeypatch.setattr(objs, "upload", spy_upload)
    monkeypatch.setattr(objs, "complete", spy_complete)
    apply(root / "fuse.map", root / "src", f"s3://{bucket}/out", max_shard_size="5MB")
    shards = [s for s in seen if s]
    assert all(s == [] for s in seen[:len(seen) - len(shards)])  # nothing before the first completion
    final = objects(s3, f"{bucket}/out")
    assert final[-1].endswith("model.safetensors.index.json")
    assert all(not s[-1].endswith(".index.json") for s in shards)  # the index comes after every shard
    assert json.loads(s3.cat_file(final[-1]))["weight_map"]


def test_url_location_behaves_like_a_path(s3, bucket):
    s3.pipe(f"{bucket}/d/a.safetensors", b"x")
    d = URLPath(f"s3://{bucket}/d")
    assert d.is_dir() and not d.is_file()
    assert [p.name for p in d.iterdir()] == ["a.safetensors"]
    assert (d / "a.safetensors").suffix == ".safetensors" and (d / "a.safetensors").parent == d
    assert [p.url for p in URLPath(f"s3://{bucket}/d/*.safetensors").glob()] == [f"s3://{bucket}/d/a.safetensors"]


def test_plain_https_style_urls_read_by_range(s3, bucket, model, tmp_path):
    """http(s):// through fsspec's HTTP file system: moto serves the objects anonymously, with
    Range support, as any static web server or presigned URL would."""
    pytest.importorskip("aiohttp")
    root, tensors = model
    single = tmp_path / "m.safetensors"
    write_local(single, tensors)
    s3.call_s3("put_object", Bucket=bucket, Key="m.safetensors", Body=single.read_bytes(), ACL="public-read")
    url = f"{os.environ['AWS_ENDPOINT_URL']}/{bucket}/m.safetensors"
    got = tensors_at(url)
    assert all(np.array_equal(got[k], v) for k, v in tensors.items())
    apply(root / "fuse.map", url, tmp_path / "out.safetensors")
    apply(root / "fuse.map", single, tmp_path / "ref.safetensors")
    assert tensors_at(tmp_path / "out.safetensors").keys() == tensors_at(tmp_path / "ref.safetensors").keys()


def test_a_presigned_url_reads_and_its_signature_is_not_recorded(s3, bucket, model, tmp_path):
    pytest.importorskip("aiohttp")
    root, tensors = model
    single = tmp_path / "m.safetensors"
    write_local(single, tensors)
    upload(s3, single, f"{bucket}/private.safetensors")
    url = s3.url(f"{bucket}/private.safetensors", expires=600)
    assert "Signature" in url
    apply(root / "fuse.map", url, tmp_path / "out.safetensors")
    meta = open_source(tmp_path / "out.safetensors").metadata
    assert meta["mapspec.source"] == "private.safetensors"
    assert not any("Signature" in v or "Credential" in v for v in meta.values())


def test_a_server_gone_mid_run_ends_the_read_with_one_line_naming_the_object(tmp_path, monkeypatch):
    """Its own S3 server, stopped after the plan is compiled: the reads are retried (with
    backoff) and then end the run with one line naming the object; nothing is written."""
    import fsspec
    from mapspec.formats import fetching
    from servers import moto_server

    monkeypatch.setattr(fetching, "RETRIES", 1)
    monkeypatch.setattr(fetching, "BACKOFF", 0.01)
    monkeypatch.setattr(__import__("s3fs").S3FileSystem, "retries", 1)  # s3fs's and botocore's own
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")  # retries: one attempt each, so the test is quick
    write_local(tmp_path / "m.safetensors", {"w": np.arange(1 << 16, dtype=np.float32)})
    (tmp_path / "id.map").write_text("mapspec 1\nw -> weight then cast(float16)\n")
    s3fs = __import__("s3fs").S3FileSystem
    s3fs.clear_instance_cache()  # file systems are cached per options, not per endpoint
    with moto_server():
        fs = fsspec.filesystem("s3", skip_instance_cache=True)
        fs.mkdir("gone")
        fs.put(str(tmp_path / "m.safetensors"), "gone/m.safetensors")
        source = open_source("s3://gone/m.safetensors")
    try:  # the server is stopped now; the header was read while it ran
        with pytest.raises(CheckpointError) as err:
            source.read("w")
    finally:
        source.close()
        s3fs.clear_instance_cache()
    assert str(err.value).startswith("s3://gone/m.safetensors: request failed") and "\n" not in str(err.value)


# ------------------------------------------------------------------ streamed copies (formats/streams.py)


def big_model(tmp_path: Path) -> dict:
    """Two shards: a 3 MiB tensor (copied in parallel parts) and runs of small ones."""
    rng = np.random.default_rng(1)
    tensors = {"big": rng.standard_normal((768, 1024), dtype=np.float32)}
    tensors.update({f"small.{i:02d}": rng.standard_normal((64, 64), dtype=np.float32) for i in range(20)})
    write_local(tmp_path / "src", tensors, max_shard_size="2MB")
    (tmp_path / "rename.map").write_text("mapspec 1\n{k:**} -> net.{k}\n")
    return tensors


def same_tensors(a: Path, b: Path) -> bool:
    """The same names, dtypes, shapes and bytes (the headers differ: provenance names the source)."""
    ta, tb = tensors_at(a), tensors_at(b)
    return ta.keys() == tb.keys() and all(ta[k].dtype == tb[k].dtype and ta[k].shape == tb[k].shape
                                          and ta[k].tobytes() == tb[k].tobytes() for k in ta)


def counting_gets(monkeypatch) -> list:
    """Every get_object request s3fs sends, as its Range header (the real client, counted)."""
    import s3fs

    sent: list = []
    call = s3fs.S3FileSystem._call_s3

    async def counted(self, method, *args, **kwargs):
        if method == "get_object":
            sent.append(kwargs.get("Range"))
        return await call(self, method, *args, **kwargs)

    monkeypatch.setattr(s3fs.S3FileSystem, "_call_s3", counted)
    return sent


def test_s3_copies_are_a_few_streamed_requests_with_the_same_bytes(s3, bucket, tmp_path, monkeypatch):
    """A rename-only conversion from S3 reads each shard as a stream that the next tensor's
    copy continues; a large copy is cut into parts streamed in parallel. The output is the
    local conversion's, byte for byte, with far fewer requests than tensors."""
    from mapspec.formats import streams

    monkeypatch.setattr(streams, "PART", 1 << 20)  # the 3 MiB tensor: three parallel parts
    monkeypatch.setattr(streams, "PIECE", 64 << 10)  # many pieces per request
    tensors = big_model(tmp_path)
    upload(s3, tmp_path / "src", f"{bucket}/src")
    apply(tmp_path / "rename.map", tmp_path / "src", tmp_path / "local", max_shard_size="2MB")
    sent = counting_gets(monkeypatch)
    apply(tmp_path / "rename.map", f"s3://{bucket}/src", tmp_path / "remote", max_shard_size="2MB")
    assert same_tensors(tmp_path / "remote", tmp_path / "local")
    assert tensors_at(tmp_path / "remote")["net.big"].tobytes() == tensors["big"].tobytes()
    data = [r for r in sent if not r.startswith("bytes=0-")]  # not the header reads
    assert 3 <= len(data) <= 6, sent  # 21 tensors: 3 parts for the big one, a stream per run of small ones


def test_an_object_without_a_store_checksum_is_hashed_from_one_stream(s3, bucket, tmp_path, monkeypatch):
    """The provenance sha256 of an object whose store keeps no content hash is read as one
    streamed request (many small pieces), equal to hashlib's over the bytes."""
    import hashlib

    from mapspec.formats import provenance, streams

    monkeypatch.setattr(streams, "PIECE", 64 << 10)
    blob = np.random.default_rng(2).bytes(3 << 20)
    s3.pipe(f"{bucket}/blob.bin", blob)
    sent = counting_gets(monkeypatch)
    assert provenance.remote_sha256(f"s3://{bucket}/blob.bin") == hashlib.sha256(blob).hexdigest()
    assert sent == [f"bytes=0-{len(blob) - 1}"]


def test_a_stream_whose_connection_drops_reopens_where_it_stopped(s3, bucket, tmp_path, monkeypatch):
    """A stream left open between copies loses its connection (as a server closing an idle
    one does): the next copy reopens the range at the byte it stopped at; the bytes are the
    same as from a local copy."""
    from mapspec.formats import fetching, streams

    monkeypatch.setattr(streams, "PIECE", 4 << 10)
    monkeypatch.setattr(fetching, "BACKOFF", 0.001)
    big_model(tmp_path)
    upload(s3, tmp_path / "src", f"{bucket}/src")
    apply(tmp_path / "rename.map", tmp_path / "src", tmp_path / "local", max_shard_size="2MB")
    dropped = []
    keep = streams._keep

    def keep_then_drop(cursor):
        keep(cursor)
        if cursor.body is not None:
            cursor.body.close()  # the connection goes; the cursor still thinks it is open
            dropped.append(cursor.pos)

    monkeypatch.setattr(streams, "_keep", keep_then_drop)
    apply(tmp_path / "rename.map", f"s3://{bucket}/src", tmp_path / "remote", max_shard_size="2MB")
    assert len(dropped) >= 10
    assert same_tensors(tmp_path / "remote", tmp_path / "local")
