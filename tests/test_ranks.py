"""Rank-sharded checkpoints: Meta's model-parallel consolidated.NN.pth files, both ways.

The rank files are made here from a real transformers Llama, cut as Meta's fairscale layers
cut them (ColumnParallelLinear by rows, RowParallelLinear by columns, the embedding by columns
before Llama 3 and by rows from it, norms on every rank), for 2 and 4 ranks. Merging them with
specs/llama_meta_to_hf.map gives exactly what transformers' convert_llama_weights_to_hf.py
writes for the unsplit checkpoint, and from_pretrained's logits; writing them with
specs/llama_hf_to_meta.map -p shards=N gives exactly the reference cut. Hostile rank sets are
refused with one error and nothing written."""

import json
import shutil
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
from safetensors.torch import load_file  # noqa: E402

from test_llm_specs import (COMMON, SPECS, assert_same_tensors, build, load_hf, logits, max_diff,  # noqa: E402
                            meta_forward, meta_names, permute, runner, tokens)
from mapspec.cli import app  # noqa: E402

# 8 heads over 4 key/value heads: 4 ranks hold one key/value head each, as Meta's 70B on 8.
SIZES = dict(hidden_size=64, num_attention_heads=8, num_key_value_heads=4, intermediate_size=128,
             tie_word_embeddings=False)
ROWS = ("attention.wq", "attention.wk", "attention.wv", "feed_forward.w1", "feed_forward.w3", "output")
COLUMNS = ("attention.wo", "feed_forward.w2")


def cut_dim(name: str, version: int) -> int | None:
    """The dimension Meta's fairscale layers cut `name` along on each rank; None: replicated."""
    if name.startswith("tok_embeddings"):
        return 1 if version < 3 else 0
    if any(name.startswith(p) or f".{p}." in name for p in ROWS):
        return 0
    if any(f".{p}." in name for p in COLUMNS):
        return 1
    return None


def fairscale_cut(full: dict, ranks: int, version: int) -> list[dict]:
    return [{k: (t if cut_dim(k, version) is None else t.chunk(ranks, cut_dim(k, version))[r]).clone()
             for k, t in full.items()} for r in range(ranks)]


def hf_to_meta_reference(hf: dict, cfg) -> dict:
    """The unsplit Meta checkpoint of an HF state dict: renames, and the inverse of the
    conversion script's q/k permutation."""
    def unpermute(w, n):
        rows, cols = w.shape
        return w.view(n, 2, rows // n // 2, cols).transpose(1, 2).reshape(rows, cols)

    out = {}
    for hf_name, meta_name in meta_names(cfg.num_hidden_layers).items():
        w = hf[hf_name]
        if meta_name.endswith("wq.weight"):
            w = unpermute(w, cfg.num_attention_heads)
        elif meta_name.endswith("wk.weight"):
            w = unpermute(w, cfg.num_key_value_heads)
        out[meta_name] = w.contiguous()
    return out


def script_merge(ranks: list[dict], params: dict, version: int) -> dict:
    """convert_llama_weights_to_hf.py's multi-shard path: each tensor concatenated across the
    shards along its cut (the embedding along concat_dim: 0 for Llama 3, else 1), norms from
    shard 0, then q/k permuted per head."""
    dim, n_heads, n_kv = params["dim"], params["n_heads"], params["n_kv_heads"]
    hd = dim // n_heads
    hf = {}
    for hf_name, meta_name in meta_names(params["n_layers"]).items():
        d = cut_dim(meta_name, version)
        w = ranks[0][meta_name] if d is None else torch.cat([r[meta_name] for r in ranks], dim=d)
        if meta_name.endswith("wq.weight"):
            w = permute(w, n_heads, dim, dim)
        elif meta_name.endswith("wk.weight"):
            w = permute(w, n_kv, n_kv * hd, dim)
        hf[hf_name] = w
    return hf


def cli(*args) -> "object":
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    where = tmp_path_factory.mktemp("llama-ranks")
    cfg = transformers.LlamaConfig(**COMMON, **SIZES)
    return build(transformers.LlamaForCausalLM, cfg, seed=5, where=where), where


def meta_dir(where: Path, full: dict, cfg, ranks: int, version: int) -> Path:
    where.mkdir(parents=True)
    for r, sd in enumerate(fairscale_cut(full, ranks, version)):
        torch.save(sd, where / f"consolidated.{r:02d}.pth")
    params = {"dim": cfg.hidden_size, "n_layers": cfg.num_hidden_layers, "n_heads": cfg.num_attention_heads,
              "n_kv_heads": cfg.num_key_value_heads, "norm_eps": cfg.rms_norm_eps, "vocab_size": -1}
    (where / "params.json").write_text(json.dumps(params))
    return where


@pytest.mark.parametrize("ranks", [2, 4])
@pytest.mark.parametrize("version", [2, 3])
def test_merging_rank_files_gives_the_original_model_bit_for_bit(llama, tmp_path, ranks, version):
    model, src = llama
    cfg = model.config
    original = {k: v.contiguous() for k, v in model.state_dict().items()}
    full = hf_to_meta_reference(original, cfg)
    meta = meta_dir(tmp_path / "meta", full, cfg, ranks, version)

    # the command: a model directory out (safetensors shards + index when large)
    args = ["apply", SPECS / "llama_meta_to_hf.map", meta, "-o", tmp_path / "out",
            "--config", meta / "params.json"] + (["-p", "llama_version=3"] if version == 3 else [])
    r = cli(*args)
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["model.safetensors"]
    (tmp_path / "out" / "model.safetensors").rename(tmp_path / "model.safetensors")
    merged = load_file(tmp_path / "model.safetensors")
    # the original tensors, bit for bit, and what the conversion script makes of the same ranks
    assert_same_tensors(merged, original)
    assert_same_tensors(merged, script_merge([torch.load(p, weights_only=True) for p in
                                              sorted(meta.glob("consolidated.*.pth"))],
                                             json.loads((meta / "params.json").read_text()), version))
    loaded = load_hf(transformers.LlamaForCausalLM, src, tmp_path / "model.safetensors")
    assert max_diff(logits(loaded, cfg.vocab_size), logits(model, cfg.vocab_size)) == 0
    # and Meta's own forward on the unsplit checkpoint agrees (rotary computed its way)
    params = json.loads((meta / "params.json").read_text())
    assert max_diff(meta_forward(full, params, tokens(cfg.vocab_size)), logits(model, cfg.vocab_size)) < 1e-5


@pytest.mark.parametrize("version", [2, 3])
def test_ranks_merged_part_by_part_and_slice_by_slice_give_the_same_bytes(llama, tmp_path, monkeypatch, version):
    """With small slices, row-split ranks (wq/wk through the rotary permute, w1, w3, wv, output)
    are written rank by rank (`rows.parting`) and column-split ones (wo, w2, the Llama 2
    embedding) a few rows of every rank at a time (`concat(1)` works row by row): the bytes of
    merging whole tensors."""
    from mapspec.run import executor, rows

    model, _ = llama
    full = hf_to_meta_reference({k: v.contiguous() for k, v in model.state_dict().items()}, model.config)
    meta = meta_dir(tmp_path / "meta", full, model.config, 4, version)
    how = {}
    for name in ("run_parts", "run_sliced"):
        real = getattr(executor, name)
        monkeypatch.setattr(executor, name, lambda step, *a, real=real, name=name: (
            how.setdefault(step.output, name), real(step, *a))[1])
    args = ["apply", SPECS / "llama_meta_to_hf.map", meta, "--config", meta / "params.json",
            "--to", "safetensors"] + (["-p", "llama_version=3"] if version == 3 else [])
    monkeypatch.setattr(rows, "SLICE_BYTES", 2048)
    monkeypatch.setattr(rows, "MIN_BYTES", 3 * 2048)
    r = cli(*args, "-o", tmp_path / "parts.safetensors")
    assert r.exit_code == 0, r.output
    embed = "run_sliced" if version == 2 else "run_parts"
    assert how["model.embed_tokens.weight"] == embed
    assert how["model.layers.0.self_attn.q_proj.weight"] == how["model.layers.0.mlp.up_proj.weight"] == "run_parts"
    assert how["model.layers.0.self_attn.o_proj.weight"] == how["model.layers.0.mlp.down_proj.weight"] == "run_sliced"
    monkeypatch.setattr(rows, "MIN_BYTES", 1 << 62)
    how.clear()
    r = cli(*args, "-o", tmp_path / "whole.safetensors")
    assert r.exit_code == 0, r.output
    assert how == {}
    assert (tmp_path / "parts.safetensors").read_bytes() == (tmp_path / "whole.safetensors").read_bytes()


def test_the_wrong_embedding_split_is_refused_naming_llama_version(llama, tmp_path):
    """Llama 3 rank files read as Llama 2 (the default): the joined embedding is not (_, dim)."""
    model, _ = llama
    full = hf_to_meta_reference(dict(model.state_dict()), model.config)
    meta = meta_dir(tmp_path / "meta", full, model.config, 2, version=3)
    r = cli("apply", SPECS / "llama_meta_to_hf.map", meta, "-o", tmp_path / "out.safetensors",
            "--config", meta / "params.json")
    assert r.exit_code == 1 and "Traceback" not in r.output
    assert "expect(_, 64): the tensor here has shape (48, 128)" in r.output
    assert "emb_dim = 1 (derived)" in r.output and "llama_version = 2 (its default: not in the config)" in r.output
    assert not (tmp_path / "out.safetensors").exists()


@pytest.mark.parametrize("ranks", [2, 4])
@pytest.mark.parametrize("version", [2, 3])
def test_splitting_into_rank_files_gives_the_reference_cut(llama, tmp_path, ranks, version):
    model, src = llama
    cfg = model.config
    args = ["apply", SPECS / "llama_hf_to_meta.map", src, "-o", tmp_path / "meta", "--config", src / "config.json",
            "-p", f"shards={ranks}"] + (["-p", "llama_version=3"] if version == 3 else [])
    r = cli(*args)
    assert r.exit_code == 0, r.output
    files = sorted(p.name for p in (tmp_path / "meta").iterdir())
    assert files == [f"consolidated.{i:02d}.pth" for i in range(ranks)] + ["params.json"]
    reference = fairscale_cut(hf_to_meta_reference(dict(model.state_dict()), cfg), ranks, version)
    for i, expected in enumerate(reference):
        assert_same_tensors(torch.load(tmp_path / "meta" / f"consolidated.{i:02d}.pth", weights_only=True), expected)

    params = json.loads((tmp_path / "meta" / "params.json").read_text())
    assert {k: params[k] for k in ("dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "norm_eps")} == {
        "dim": 64, "n_layers": 2, "n_heads": 8, "n_kv_heads": 4, "vocab_size": 96, "norm_eps": cfg.rms_norm_eps}
    # Meta's ModelArgs sizes the feed-forward layer from multiple_of: it must give intermediate_size.
    hidden = int(2 * 4 * params["dim"] / 3)
    assert params["multiple_of"] * ((hidden + params["multiple_of"] - 1) // params["multiple_of"]) >= 128
    # and back: the rank files merge to the HF model bit for bit
    back = ["apply", SPECS / "llama_meta_to_hf.map", tmp_path / "meta", "-o", tmp_path / "back.safetensors",
            "--config", tmp_path / "meta" / "params.json"] + (["-p", "llama_version=3"] if version == 3 else [])
    assert cli(*back).exit_code == 0
    assert_same_tensors(load_file(tmp_path / "back.safetensors"), {k: v.contiguous() for k, v in model.state_dict().items()})


# ---------------------------------------------------------------- hostile rank sets


@pytest.fixture
def four(llama, tmp_path):
    model, _ = llama
    full = hf_to_meta_reference(dict(model.state_dict()), model.config)
    return meta_dir(tmp_path / "meta", full, model.config, 4, version=2), full


def refused(meta: Path, code: int) -> str:
    out = meta.parent / "out.safetensors"
    r = cli("apply", SPECS / "llama_meta_to_hf.map", meta, "-o", out, "--config", meta / "params.json")
    assert r.exit_code == code, r.output
    assert "Traceback" not in r.output
    assert not out.exists() and not list(meta.parent.glob(".out*"))
    return r.output


def test_a_missing_rank_is_named(four):
    meta, _ = four
    (meta / "consolidated.02.pth").unlink()
    out = refused(meta, 2)
    assert "rank file consolidated.02.pth is missing (rank runs 0..3)" in out
    assert len(out.strip().splitlines()) == 1


def test_a_missing_last_rank_is_refused_by_the_shapes(four):
    """Nothing names a fourth file, but the joined rows no longer make n_heads * head_dim."""
    meta, _ = four
    (meta / "consolidated.03.pth").unlink()
    out = refused(meta, 1)
    assert "n_heads = 8 (config key n_heads)" in out


def test_a_duplicated_rank_is_named(four):
    meta, _ = four
    shutil.copy(meta / "consolidated.01.pth", meta / "consolidated.1.pth")
    out = refused(meta, 2)
    assert "consolidated.01.pth and consolidated.1.pth both hold rank 1" in out
    assert len(out.strip().splitlines()) == 1


def test_ranks_of_different_models_are_refused_naming_both_files(four, llama):
    meta, full = four
    other = {k: v + 1 for k, v in full.items()}  # same sizes, other values
    torch.save(fairscale_cut(other, 4, 2)[2], meta / "consolidated.02.pth")
    out = refused(meta, 1)
    assert "the replicated copies differ:" in out
    assert "of consolidated.00.pth" in out and "of consolidated.02.pth" in out
    assert len(out.strip().splitlines()) == 1


def test_ranks_of_a_model_of_another_size_are_refused(four, tmp_path):
    meta, full = four
    sd = fairscale_cut(full, 4, 2)[1]
    sd["layers.0.attention.wq.weight"] = torch.zeros(24, 64)
    torch.save(sd, meta / "consolidated.01.pth")
    refused(meta, 1)


def test_a_rank_missing_a_key_is_named(four):
    meta, full = four
    sd = fairscale_cut(full, 4, 2)[3]
    del sd["layers.1.ffn_norm.weight"]
    torch.save(sd, meta / "consolidated.03.pth")
    out = refused(meta, 1)
    assert "3/layers.1.ffn_norm.weight is missing" in out


# ---------------------------------------------------------------- head_dim (Mistral-Nemo style)


NEMO = dict(hidden_size=80, num_attention_heads=4, num_key_value_heads=2, head_dim=16, intermediate_size=96,
            tie_word_embeddings=False)


def test_a_nemo_shaped_meta_checkpoint_converts_with_head_dim_from_params_json(tmp_path):
    """head_dim (16) is not dim // n_heads (20): q/k/v/o are n_heads * 16 wide. params.json says
    so; the spec honours it, and without it the error names head_dim and its default."""
    cfg = transformers.LlamaConfig(**COMMON, **NEMO)
    model = build(transformers.LlamaForCausalLM, cfg, seed=9, where=tmp_path / "hf")
    full = hf_to_meta_reference({k: v.contiguous() for k, v in model.state_dict().items()}, cfg)
    meta = meta_dir(tmp_path / "meta", full, cfg, 2, version=2)
    params = json.loads((meta / "params.json").read_text())
    bare = meta / "params.json"

    r = cli("apply", SPECS / "llama_meta_to_hf.map", meta, "-o", tmp_path / "out.safetensors", "--config", bare)
    assert r.exit_code == 1 and not (tmp_path / "out.safetensors").exists()
    assert "head_dim = 20 (its default: not in the config)" in r.output

    (meta / "params.json").write_text(json.dumps({**params, "head_dim": 16}))
    r = cli("apply", SPECS / "llama_meta_to_hf.map", meta, "-o", tmp_path / "out.safetensors",
            "--config", meta / "params.json")
    assert r.exit_code == 0, r.output
    assert_same_tensors(load_file(tmp_path / "out.safetensors"),
                        {k: v.contiguous() for k, v in model.state_dict().items()})
    loaded = load_hf(transformers.LlamaForCausalLM, tmp_path / "hf", tmp_path / "out.safetensors")
    assert max_diff(logits(loaded, cfg.vocab_size), logits(model, cfg.vocab_size)) == 0

    # and the other way, head_dim from config.json into params.json
    r = cli("apply", SPECS / "llama_hf_to_meta.map", tmp_path / "hf", "-o", tmp_path / "back",
            "--config", tmp_path / "hf" / "config.json", "-p", "shards=2")
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "back" / "params.json").read_text())["head_dim"] == 16
    for i, expected in enumerate(fairscale_cut(full, 2, 2)):
        assert_same_tensors(torch.load(tmp_path / "back" / f"consolidated.{i:02d}.pth", weights_only=True), expected)


def test_verify_round_trips_a_rank_set_bit_for_bit(four):
    """verify: merged forward, then split back into the 4 ranks (the inverse from the forward
    plan: the rank count and cuts it saw), every rank's tensors bit for bit."""
    meta, full = four
    r = cli("verify", SPECS / "llama_meta_to_hf.map", meta, "--config", meta / "params.json")
    assert r.exit_code == 0, r.output
    n = 4 * len(full)
    assert f"ok: {n} tensors, {n} bit-exact" in r.output
