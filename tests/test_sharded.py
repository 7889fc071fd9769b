"""Sharded checkpoints in and out: HF index files, model directories, globs and lists of
shards as one source; `--max-shard-size` output that transformers loads back."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from mapspec import CheckpointError, TensorInfo, UsageError, apply, inspect_checkpoint, open_source
from mapspec.cli import app
from mapspec.formats import open_sink
from mapspec.formats.sharded import assign_shards, parse_size, shard_names

runner = CliRunner()

FUSE = """mapspec 1
from pytorch to pytorch
model.layers.{i:int}.self_attn.{p:q|k|v}_proj.weight -> model.layers.{i}.self_attn.qkv_proj.weight then concat(0)
keep model.layers.{i:int}.self_attn.o_proj.weight | model.layers.{i:int}.mlp.{m}.weight
keep model.layers.{i:int}.{n:input_layernorm|post_attention_layernorm}.weight
keep model.embed_tokens.weight | model.norm.weight | lm_head.weight
"""

SPLIT = """mapspec 1
from pytorch to pytorch
model.layers.{i:int}.self_attn.qkv_proj.weight -> model.layers.{i}.self_attn.{p:q|k|v}_proj.weight then chunk(3, 0)
keep model.layers.{i:int}.self_attn.o_proj.weight | model.layers.{i:int}.mlp.{m}.weight
keep model.layers.{i:int}.{n:input_layernorm|post_attention_layernorm}.weight
keep model.embed_tokens.weight | model.norm.weight | lm_head.weight
"""


def write(path: Path, tensors: dict, fmt: str = "safetensors") -> None:
    sink = open_sink(path, fmt, {k: TensorInfo(a.shape, str(a.dtype)) for k, a in tensors.items()})
    for k, a in tensors.items():
        sink.write(k, a)
    sink.commit()


def tensors_of(path) -> dict:
    source = open_source(path)
    try:
        return {k: np.array(source.read(k)) for k in source.infos()}
    finally:
        source.close()


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    """A tiny Llama saved by transformers in 12 shards, q/k/v of a layer in different shards."""
    transformers = pytest.importorskip("transformers")
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=64)
    model = transformers.LlamaForCausalLM(config).eval()
    root = tmp_path_factory.mktemp("llama")
    model.save_pretrained(root / "hf", max_shard_size="40KB")
    ids = torch.arange(12).reshape(1, 12)
    with torch.no_grad():
        logits = model(ids).logits
    return root, ids, logits


def _logits(transformers, torch, path, ids):
    model = transformers.LlamaForCausalLM.from_pretrained(path).eval()
    with torch.no_grad():
        return model(ids).logits


@pytest.mark.parametrize("to", ["safetensors", "torch"])
def test_cross_shard_merge_and_split_round_trip_loads_in_transformers(llama, tmp_path, to):
    transformers = pytest.importorskip("transformers")
    torch = pytest.importorskip("torch")
    root, ids, logits = llama
    index = json.loads((root / "hf" / "model.safetensors.index.json").read_text())["weight_map"]
    q, v = (index[f"model.layers.0.self_attn.{p}_proj.weight"] for p in "qv")
    assert q != v  # the merge below really crosses shards
    (tmp_path / "fuse.map").write_text(FUSE)
    (tmp_path / "split.map").write_text(SPLIT)

    fused = apply(tmp_path / "fuse.map", root / "hf", tmp_path / "fused", max_shard_size="30KB")
    assert fused.written == len(index) - 4
    got = tensors_of(tmp_path / "fused")
    orig = tensors_of(root / "hf")
    np.testing.assert_array_equal(got["model.layers.1.self_attn.qkv_proj.weight"], np.concatenate(
        [orig[f"model.layers.1.self_attn.{p}_proj.weight"] for p in "qkv"]))

    apply(tmp_path / "split.map", tmp_path / "fused" / "model.safetensors.index.json", tmp_path / "back",
          max_shard_size="50KB", to=to)
    files = sorted(p.name for p in (tmp_path / "back").iterdir())
    stem, ext = ("model", "safetensors") if to == "safetensors" else ("pytorch_model", "bin")
    n = len(files) - 1
    assert n > 1 and files == sorted([f"{stem}.{ext}.index.json"] +
                                     [f"{stem}-{i:05d}-of-{n:05d}.{ext}" for i in range(1, n + 1)])
    written = json.loads((tmp_path / "back" / f"{stem}.{ext}.index.json").read_text())
    assert set(written["weight_map"]) == set(index)
    assert written["metadata"]["total_size"] == sum(a.nbytes for a in orig.values())
    shutil.copy(root / "hf" / "config.json", tmp_path / "back" / "config.json")
    torch.testing.assert_close(_logits(transformers, torch, tmp_path / "back", ids), logits, rtol=0, atol=0)


def test_torch_bin_shards_with_index_are_one_source(tmp_path, torch):
    """pytorch_model-0000K-of-0000N.bin + index, each shard written by torch.save."""
    torch.manual_seed(1)
    state = {f"l{i}.weight": torch.randn(4, 4) for i in range(4)}
    names = shard_names("torch", 2)
    for name, keys in zip(names, (["l0.weight", "l1.weight"], ["l2.weight", "l3.weight"])):
        torch.save({k: state[k] for k in keys}, tmp_path / name)
    weight_map = {k: names[i // 2] for i, k in enumerate(state)}
    (tmp_path / "pytorch_model.bin.index.json").write_text(
        json.dumps({"metadata": {"total_size": 256}, "weight_map": weight_map}))
    got = tensors_of(tmp_path)
    assert list(got) == list(state)
    for k, t in state.items():
        np.testing.assert_array_equal(got[k], t.numpy())
    info = inspect_checkpoint(tmp_path)
    assert info["format"] == "torch"
    assert info["shards"] == [{"file": names[0], "tensors": 2, "bytes": 128}, {"file": names[1], "tensors": 2, "bytes": 128}]


def test_glob_and_list_of_shards_and_single_file_directory(tmp_path):
    a = {"a": np.arange(4, dtype=np.float32)}
    b = {"b": np.ones((2, 2), np.float16)}
    (tmp_path / "s").mkdir()
    write(tmp_path / "s" / "part-1.safetensors", a)
    write(tmp_path / "s" / "part-2.safetensors", b)
    for source in (str(tmp_path / "s" / "part-*.safetensors"),
                   [tmp_path / "s" / "part-1.safetensors", tmp_path / "s" / "part-2.safetensors"]):
        got = tensors_of(source)
        assert list(got) == ["a", "b"]
    (tmp_path / "one").mkdir()
    write(tmp_path / "one" / "model.safetensors", a)
    assert list(tensors_of(tmp_path / "one")) == ["a"]


def test_cli_takes_several_shard_files_as_the_shell_expands_a_glob(tmp_path):
    """`mapspec apply spec.map model-*.safetensors -o out` unquoted: the shell passes every shard."""
    write(tmp_path / "part-1.safetensors", {"model.a": np.arange(4, dtype=np.float32)})
    write(tmp_path / "part-2.safetensors", {"model.b": np.ones((2, 2), np.float16)})
    (tmp_path / "r.map").write_text("mapspec 1\nmodel.{x} -> net.{x}\n")
    shards = [str(tmp_path / "part-1.safetensors"), str(tmp_path / "part-2.safetensors")]
    r = runner.invoke(app, ["apply", str(tmp_path / "r.map"), *shards, "-o", str(tmp_path / "out.safetensors")])
    assert r.exit_code == 0, r.output
    got = tensors_of(tmp_path / "out.safetensors")
    assert list(got) == ["net.a", "net.b"] and got["net.b"].dtype == np.float16
    r = runner.invoke(app, ["explain", str(tmp_path / "r.map"), *shards])
    assert r.exit_code == 0 and "model.{x} -> net.{x}  2 " in r.output, r.output
    r = runner.invoke(app, ["apply", str(tmp_path / "r.map"), *shards, "-o", str(tmp_path / "o2.safetensors"),
                            "--epoch", "1"])
    assert r.exit_code == 2 and r.output.strip() == "error: --epoch reads one MXNet prefix, not several checkpoints"
    assert not (tmp_path / "o2.safetensors").exists()


def test_missing_shard_and_lying_index_fail_before_writing(tmp_path):
    (tmp_path / "m").mkdir()
    write(tmp_path / "m" / "model-00001-of-00002.safetensors", {"a": np.zeros(2, np.float32)})
    index = tmp_path / "m" / "model.safetensors.index.json"
    index.write_text(json.dumps({"metadata": {}, "weight_map": {"a": "model-00001-of-00002.safetensors",
                                                                "b": "model-00002-of-00002.safetensors"}}))
    (tmp_path / "k.map").write_text("mapspec 1\nkeep *\n")
    with pytest.raises(CheckpointError, match="shard model-00002-of-00002.safetensors is missing"):
        apply(tmp_path / "k.map", tmp_path / "m", tmp_path / "out", max_shard_size="1GB")
    index.write_text(json.dumps({"metadata": {}, "weight_map": {"a": "model-00001-of-00002.safetensors",
                                                                "b": "model-00001-of-00002.safetensors"}}))
    with pytest.raises(CheckpointError, match="puts tensor 'b' in model-00001-of-00002.safetensors, but no shard holds it"):
        apply(tmp_path / "k.map", index, tmp_path / "out.safetensors")
    index.write_text(json.dumps({"weight_map": {"a": "../elsewhere.safetensors"}}))
    with pytest.raises(CheckpointError, match="not a file name beside the index"):
        open_source(index)
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.safetensors").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["k.map", "m"]


def test_shard_assignment_is_deterministic_and_bounded():
    infos = {f"t{i}": TensorInfo((n,), "float32") for i, n in enumerate([10, 10, 30, 5, 5, 5])}
    # 40-byte tensors fill 100-byte shards in order; a 120-byte tensor gets a shard of its own
    assert assign_shards(infos, 100) == [["t0", "t1"], ["t2"], ["t3", "t4", "t5"]]
    assert assign_shards(infos, 60) == [["t0"], ["t1"], ["t2"], ["t3", "t4", "t5"]]
    assert assign_shards(infos, 10_000) == [list(infos)]
    assert shard_names("safetensors", 1) == ["model.safetensors"]
    assert shard_names("torch", 3)[1] == "pytorch_model-00002-of-00003.bin"
    assert parse_size("5GB") == 5 * 10**9 and parse_size("2GiB") == 2 * 2**30 and parse_size("100KB") == 10**5
    with pytest.raises(UsageError, match="expected a size"):
        parse_size("5 parsecs")


def test_sharded_output_is_atomic_and_kept_unless_force(tmp_path):
    write(tmp_path / "in.safetensors", {f"t{i}": np.full(100, i, np.float32) for i in range(5)})
    (tmp_path / "k.map").write_text("mapspec 1\nkeep *\n")
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.txt").write_text("keep me")
    r = runner.invoke(app, ["apply", str(tmp_path / "k.map"), str(tmp_path / "in.safetensors"), "-o", str(out),
                            "--max-shard-size", "1KB"])
    assert r.exit_code == 2 and "exists" in r.output and (out / "mine.txt").exists()
    r = runner.invoke(app, ["apply", str(tmp_path / "k.map"), str(tmp_path / "in.safetensors"), "-o", str(out),
                            "--max-shard-size", "1KB", "--force"])
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in out.iterdir()) == ["model-00001-of-00003.safetensors", "model-00002-of-00003.safetensors",
                                                     "model-00003-of-00003.safetensors", "model.safetensors.index.json"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.safetensors", "k.map", "out"]  # no temp dirs left
    got = tensors_of(out)
    assert [float(got[f"t{i}"][0]) for i in range(5)] == [0, 1, 2, 3, 4]
    r = runner.invoke(app, ["apply", str(tmp_path / "k.map"), str(tmp_path / "in.safetensors"), "-o",
                            str(tmp_path / "w"), "--max-shard-size", "1KB", "--to", "npz"])
    assert r.exit_code == 2 and "--max-shard-size writes safetensors, torch shards, not npz" in r.output
    assert not (tmp_path / "w").exists()


def test_inspect_cli_shows_the_shards(tmp_path):
    (tmp_path / "m").mkdir()
    write(tmp_path / "m" / "model-00001-of-00002.safetensors", {"a.w": np.zeros(2, np.float32)})
    write(tmp_path / "m" / "model-00002-of-00002.safetensors", {"b.w": np.zeros(3, np.float32)})
    (tmp_path / "m" / "model.safetensors.index.json").write_text(json.dumps({"metadata": {"total_size": 20}, "weight_map": {
        "a.w": "model-00001-of-00002.safetensors", "b.w": "model-00002-of-00002.safetensors"}}))
    r = runner.invoke(app, ["inspect", str(tmp_path / "m")])
    assert r.exit_code == 0, r.output
    assert "2 shards" in r.output and "model-00002-of-00002.safetensors: 1 tensors, 12 bytes" in r.output
