"""The shipped LLM specs inverted, against the real transformers library.

One spec, both directions: the inverse `mapspec` derives from a shipped spec gives, bit for
bit, what the hand-written spec for the other direction gives and what transformers' own
conversion gives (Llama's rotary permutation as convert_llama_weights_to_hf.py states it,
Mixtral's per-expert <-> stacked experts as from_pretrained/save_pretrained do it), and
`mapspec verify` runs each forward and back on checkpoints transformers wrote.
"""

import json
from pathlib import Path

import pytest

from conftest import DATA

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
from safetensors.torch import load_file, save_file  # noqa: E402  (after the skips)

from test_llm_specs import (COMMON, GPT2_SIZES, LLAMA_SIZES, MIXTRAL_SIZES, SPECS, assert_same_tensors,  # noqa: E402
                            build, convert, load_hf, logits, max_diff, meta_params, random_meta, runner,
                            same_sizes, script_meta_to_hf)
from mapspec.cli import app  # noqa: E402

SHIPPED = DATA / "specs" / "invert" / "shipped"


def run(*args) -> str:
    r = runner.invoke(app, [str(a) for a in args])
    assert r.exit_code == 0, r.output
    return r.output


def reverse(spec: str, ckpt: Path, config: Path, out: Path) -> dict:
    """`mapspec apply --reverse SPEC CKPT --config CONFIG -o OUT`: the derived inverse, run."""
    run("apply", "--reverse", SPECS / spec, ckpt, "--config", config, "-o", out)
    if out.is_dir():  # Meta's rank files: one rank here
        return torch.load(out / "consolidated.00.pth", weights_only=True)
    return torch.load(out, weights_only=True) if out.suffix == ".pth" else load_file(out)


def verified(spec: str, ckpt: Path, config: Path, n: int, *more: str) -> str:
    """`mapspec verify`: forward and back, every one of `n` tensors bit for bit, exit 0."""
    out = run("verify", SPECS / spec, ckpt, "--config", config, *more)
    assert f"ok: {n} tensors, {n} bit-exact" in out, out
    return out


# ---------------------------------------------------------------- Llama HF <-> Meta


@pytest.mark.parametrize("size", sorted(LLAMA_SIZES))
def test_inverted_hf_to_meta_is_the_meta_to_hf_spec_and_the_conversion_script(size, tmp_path):
    """invert(llama_hf_to_meta) on a Meta checkpoint == llama_meta_to_hf == the script, tied and
    untied heads; and the other way, invert(llama_meta_to_hf) == llama_hf_to_meta."""
    cfg = transformers.LlamaConfig(**COMMON, **LLAMA_SIZES[size])
    model = build(transformers.LlamaForCausalLM, cfg, seed=3, where=tmp_path / "hf")
    hf_config = tmp_path / "hf" / "config.json"
    meta, params = random_meta(cfg, seed=23), meta_params(cfg)
    torch.save(meta, tmp_path / "consolidated.00.pth")
    (tmp_path / "params.json").write_text(json.dumps(params))

    inverted = reverse("llama_hf_to_meta.map", tmp_path / "consolidated.00.pth", hf_config,
                       tmp_path / "inverted.safetensors")
    hand = convert("llama_meta_to_hf.map", tmp_path / "consolidated.00.pth", tmp_path / "params.json",
                   tmp_path / "hand.safetensors")
    reference = script_meta_to_hf(meta, params)
    assert_same_tensors(inverted, reference)
    assert_same_tensors(hand, reference)
    loaded = load_hf(transformers.LlamaForCausalLM, tmp_path / "hf", tmp_path / "inverted.safetensors")
    assert loaded.config.tie_word_embeddings == cfg.tie_word_embeddings

    # The other way: the inverse of the Meta -> HF spec needs the rank count, which only the
    # forward checkpoint tells (its merges over {rank}); from the spec alone it is refused
    # with that advice, and llama_hf_to_meta.map takes it as -p shards=N.
    r = runner.invoke(app, [str(a) for a in ("apply", "--reverse", SPECS / "llama_meta_to_hf.map",
                                              tmp_path / "hf" / "model.safetensors", "--config",
                                              tmp_path / "params.json", "-o", tmp_path / "inverted")])
    assert r.exit_code == 2 and "concat() inverts only knowing" in r.output and "forward checkpoint" in r.output
    assert not (tmp_path / "inverted").exists()

    # Forward and back on the files transformers and torch wrote, bit for bit. (A tied model's
    # head is the embedding copied to every rank, cut by rows where the embedding is cut by
    # columns: not a twin of a restored output, so not counted.)
    n = len(model.state_dict()) - cfg.tie_word_embeddings
    verified("llama_hf_to_meta.map", tmp_path / "hf" / "model.safetensors", hf_config, n)
    verified("llama_meta_to_hf.map", tmp_path / "consolidated.00.pth", tmp_path / "params.json", len(meta))


def test_verify_reports_meta_rope_freqs_as_not_restored_not_missing(tmp_path):
    """Llama 1's consolidated.00.pth holds rope.freqs; llama_meta_to_hf drops it, marked
    `reverse none` (Meta's code recomputes it): the round trip says so and passes."""
    cfg = transformers.LlamaConfig(**COMMON, **LLAMA_SIZES["h6-kv1"])
    meta, params = random_meta(cfg, seed=4), meta_params(cfg)
    meta["rope.freqs"] = torch.arange(4, dtype=torch.float32)
    torch.save(meta, tmp_path / "consolidated.00.pth")
    (tmp_path / "params.json").write_text(json.dumps(params))
    r = runner.invoke(app, ["verify", str(SPECS / "llama_meta_to_hf.map"), str(tmp_path / "consolidated.00.pth"),
                            "--config", str(tmp_path / "params.json")])
    assert r.exit_code == 0, r.output
    assert "not restored: 0/rope.freqs (dropped by llama_meta_to_hf.map:43, marked `reverse none`)" in r.output
    n = len(meta) - 1
    assert f"ok: {n} tensors, {n} bit-exact, 1 not restored by design" in r.output
    assert "warning: llama_meta_to_hf.map:43: the inverse does not recreate the keys this drop removes " \
           "(marked `reverse none`): 0/rope.freqs" in r.output


# ---------------------------------------------------------------- Mixtral per-expert <-> stacked


@pytest.mark.parametrize("size", sorted(MIXTRAL_SIZES))
def test_mixtral_inverse_both_directions_match_transformers_own_conversion(size, tmp_path):
    """The spec's inverse (derived: the merge of equal-shaped w1/w3 undoes as two chunks) turns
    per-expert into stacked as from_pretrained does, and stacked into per-expert as
    save_pretrained does; verify round-trips both files."""
    cfg = transformers.MixtralConfig(**COMMON, **MIXTRAL_SIZES[size])
    model = build(transformers.MixtralForCausalLM, cfg, seed=5, where=tmp_path / "legacy")
    config = tmp_path / "legacy" / "config.json"
    legacy = load_file(tmp_path / "legacy" / "model.safetensors")
    save_file(dict(model.state_dict()), tmp_path / "in-memory.safetensors")
    loaded = transformers.MixtralForCausalLM.from_pretrained(tmp_path / "legacy")

    stacked = reverse("mixtral_fused_experts.map", tmp_path / "legacy" / "model.safetensors", config,
                      tmp_path / "stacked.safetensors")
    assert_same_tensors(stacked, dict(loaded.state_dict()))
    per_expert = reverse("mixtral_fused_experts.map", tmp_path / "in-memory.safetensors", config,
                         tmp_path / "per-expert.safetensors")
    assert_same_tensors(per_expert, legacy)
    back = load_hf(transformers.MixtralForCausalLM, tmp_path / "legacy", tmp_path / "per-expert.safetensors")
    assert max_diff(logits(back, cfg.vocab_size), logits(model, cfg.vocab_size)) == 0

    verified("mixtral_fused_experts.map", tmp_path / "legacy" / "model.safetensors", config, len(legacy))
    verified("mixtral_fused_experts.map", tmp_path / "in-memory.safetensors", config, len(model.state_dict()))


# ---------------------------------------------------------------- GPT-2 <-> separate q/k/v


def old_style_buffers(sd: dict, cfg) -> dict:
    """The causal-mask buffers older transformers versions saved with GPT-2 (attn.bias, the
    lower-triangular mask; attn.masked_bias, -1e4); transformers 5 rebuilds them."""
    out = dict(sd)
    n = cfg.n_positions
    for i in range(cfg.n_layer):
        out[f"transformer.h.{i}.attn.bias"] = torch.tril(torch.ones(n, n, dtype=torch.bool)).view(1, 1, n, n)
        out[f"transformer.h.{i}.attn.masked_bias"] = torch.tensor(-1e4)
    return out


@pytest.mark.parametrize("size", sorted(GPT2_SIZES))
def test_gpt2_inverse_gives_back_the_transformers_checkpoint(size, tmp_path):
    cfg = transformers.GPT2Config(vocab_size=96, n_positions=32, n_layer=2, bos_token_id=0, eos_token_id=1,
                                  **GPT2_SIZES[size])
    model = build(transformers.GPT2LMHeadModel, cfg, seed=11, where=tmp_path / "gpt2")
    src, config = tmp_path / "gpt2" / "model.safetensors", tmp_path / "gpt2" / "config.json"
    original = load_file(src)
    convert("gpt2_to_qkv.map", src, config, tmp_path / "qkv.safetensors")

    # Inverted against the forward checkpoint: the tied head the copy made is left out again,
    # so the result is save_pretrained's file, tensor for tensor.
    run("invert", SPECS / "gpt2_to_qkv.map", src, "--config", config, "-o", tmp_path / "inverse.map")
    run("apply", tmp_path / "inverse.map", tmp_path / "qkv.safetensors", "-o", tmp_path / "back.safetensors")
    assert_same_tensors(load_file(tmp_path / "back.safetensors"), original)

    # From the spec alone the inverse cannot know the head was tied: it writes it, equal to
    # the embedding, and transformers loads that file to the same logits.
    alone = reverse("gpt2_to_qkv.map", tmp_path / "qkv.safetensors", config, tmp_path / "alone.safetensors")
    assert_same_tensors(alone, dict(original, **{"lm_head.weight": original["transformer.wte.weight"]}))
    back = load_hf(transformers.GPT2LMHeadModel, tmp_path / "gpt2", tmp_path / "alone.safetensors")
    assert max_diff(logits(back, cfg.vocab_size), logits(model, cfg.vocab_size)) == 0

    verified("gpt2_to_qkv.map", src, config, len(original) + 1)  # + the tied head's copy


def test_gpt2_mask_buffers_are_left_out_on_the_way_back_and_said_so(tmp_path):
    """An older GPT-2 checkpoint with the mask buffers: the spec drops them marked `reverse
    none` (the model rebuilds them), so the round trip lists them as not restored and passes;
    each is named, nothing is silent."""
    cfg = transformers.GPT2Config(vocab_size=96, n_positions=32, n_layer=2, bos_token_id=0, eos_token_id=1,
                                  **GPT2_SIZES["e32-h4"])
    model = build(transformers.GPT2LMHeadModel, cfg, seed=11, where=tmp_path / "gpt2")
    save_file(old_style_buffers(load_file(tmp_path / "gpt2" / "model.safetensors"), cfg), tmp_path / "old.safetensors")
    r = runner.invoke(app, ["verify", str(SPECS / "gpt2_to_qkv.map"), str(tmp_path / "old.safetensors"),
                            "--config", str(tmp_path / "gpt2" / "config.json")])
    assert r.exit_code == 0, r.output
    for i in range(cfg.n_layer):
        for name in ("bias", "masked_bias"):
            assert (f"not restored: transformer.h.{i}.attn.{name} (dropped by gpt2_to_qkv.map:39, marked "
                    "`reverse none`)") in r.output
    n = len(model.state_dict()) - 1 + 1  # the head is not in the file; its copy is checked
    assert f"ok: {n} tensors, {n} bit-exact, 4 not restored by design" in r.output
    warning = next(line for line in r.output.splitlines() if line.startswith("warning: "))
    assert warning.startswith("warning: gpt2_to_qkv.map:39: the inverse does not recreate the keys this drop "
                              "removes (marked `reverse none`): ")
    assert sorted(warning.split(": ")[-1].split(", ")) == sorted(
        f"transformer.h.{i}.attn.{name}" for i in range(cfg.n_layer) for name in ("bias", "masked_bias"))


# ---------------------------------------------------------------- Llama <-> Phi-3 fused


@pytest.mark.parametrize("size", sorted(LLAMA_SIZES))
def test_phi3_inverse_with_its_stated_reverses_matches_the_forward_spec(size, tmp_path):
    """phi3_fused.map states how its joins undo (the split points are not derivable from the
    spec alone); its inverse turns a Llama checkpoint into the Phi-3 one the forward spec
    writes, a Phi-3 checkpoint (Phi-3's save_pretrained) into the Llama one, and verify
    round-trips both files transformers wrote."""
    cfg = transformers.LlamaConfig(**COMMON, **LLAMA_SIZES[size])
    build(transformers.LlamaForCausalLM, cfg, seed=8, where=tmp_path / "llama")
    llama_file, config = tmp_path / "llama" / "model.safetensors", tmp_path / "llama" / "config.json"
    fused = convert("phi3_fused.map", llama_file, config, tmp_path / "phi3.safetensors")
    assert_same_tensors(reverse("phi3_fused.map", llama_file, config, tmp_path / "phi3-inv.safetensors"), fused)

    phi3_dir = tmp_path / "phi3"
    same_sizes(transformers.Phi3Config, cfg).save_pretrained(phi3_dir)
    load_hf(transformers.Phi3ForCausalLM, phi3_dir, tmp_path / "phi3.safetensors").save_pretrained(phi3_dir)
    split = reverse("phi3_fused.map", phi3_dir / "model.safetensors", phi3_dir / "config.json",
                    tmp_path / "llama-inv.safetensors")
    assert_same_tensors(split, load_file(llama_file))

    verified("phi3_fused.map", llama_file, config, len(load_file(llama_file)))
    verified("phi3_fused.map", phi3_dir / "model.safetensors", phi3_dir / "config.json", len(fused))


# ---------------------------------------------------------------- Llama -> Megatron


@pytest.mark.parametrize("size", sorted(LLAMA_SIZES))
def test_megatron_back_to_llama_gives_back_the_llama_checkpoint(size, tmp_path):
    """Megatron's grouped linear_qkv back to Llama's q/k/v, tied and untied, with the reading
    spec (llama_to_megatron.map's layer numbers {i // per_stage}/{i % per_stage} are a divmod
    pair, which `invert` does not derive): the file save_pretrained wrote, bit for bit."""
    cfg = transformers.LlamaConfig(**COMMON, **LLAMA_SIZES[size])
    build(transformers.LlamaForCausalLM, cfg, seed=9, where=tmp_path / "llama")
    llama_file, config = tmp_path / "llama" / "model.safetensors", tmp_path / "llama" / "config.json"
    run("apply", SPECS / "llama_to_megatron.map", llama_file, "--config", config, "-o", tmp_path / "mcore")
    back = convert("megatron_to_llama.map", tmp_path / "mcore", config, tmp_path / "back.safetensors")
    assert_same_tensors(back, load_file(llama_file))


# ---------------------------------------------------------------- every shipped spec accounted for

ROUND_TRIPPED = {
    # spec: where its inverse is proven bit-exact on real files
    "dpn.map": "test_dpn_interop.py::test_dpn_reverse_gives_mxnet_params_mxnet_loads (mxnet venv)",
    "llama_hf_to_meta.map": "test_inverted_hf_to_meta_is_the_meta_to_hf_spec_and_the_conversion_script",
    "mixtral_fused_experts.map": "test_mixtral_inverse_both_directions_match_transformers_own_conversion",
    "gpt2_to_qkv.map": "test_gpt2_inverse_gives_back_the_transformers_checkpoint",
    "phi3_fused.map": "test_phi3_inverse_with_its_stated_reverses_matches_the_forward_spec",
}


def test_every_shipped_spec_is_inverted_and_round_tripped_or_its_refusal_is_golden():
    """Each specs/*.map has exactly one golden under invert/shipped: an inverse (and then a
    bit-exact round trip in the tests above) or the exact list of its non-invertible rules."""
    specs = {p.name for p in SPECS.glob("*.map")}
    inverses = {p.name.replace(".inverse.map", ".map") for p in SHIPPED.glob("*.inverse.map")}
    refusals = {p.name.replace(".invert.err", ".map") for p in SHIPPED.glob("*.invert.err")}
    assert not inverses & refusals
    assert inverses | refusals == specs
    assert inverses == set(ROUND_TRIPPED)
    assert all(t in globals() for t in ROUND_TRIPPED.values() if ".py" not in t)  # the tests above exist
