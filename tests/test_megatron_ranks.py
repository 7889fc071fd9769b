"""Megatron-LM's tensor- and pipeline-parallel layout, written and read.

Megatron does not install here, so its saver is restated from its source (NVIDIA/Megatron-LM,
tools/checkpoint/saver_base.py receive_lm + utils.chunk_weight, and
megatron/training/checkpointing.py get_checkpoint_name / generate_state_dict) as
`megatron_saver` below: word embeddings and the output layer cut by rows over the tensor
ranks, linear_qkv by rows ("column" parallel), linear_proj and linear_fc2 by columns ("row"
parallel), linear_fc1 as cat(gate rows of the rank, up rows of the rank), norms on every rank;
consecutive layers per pipeline stage, numbered from 0 in each, the embedding on the first
stage, the final norm and output layer on the last; files
iter_{iteration:07d}/mp_rank_{tp:02d}[_{pp:03d}]/model_optim_rng.pt holding
{"model": ..., "checkpoint_version": 3.0, "iteration": N}, and latest_checkpointed_iteration.txt.
specs/llama_to_megatron.map writes exactly that, and specs/megatron_to_llama.map reads it back
to the original checkpoint bit for bit."""

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
from safetensors.torch import load_file  # noqa: E402

from test_llm_specs import (COMMON, SPECS, assert_same_tensors, build, load_hf, logits, max_diff,  # noqa: E402
                            megatron_qkv, runner)
from mapspec.cli import app  # noqa: E402

SIZES = dict(hidden_size=64, num_attention_heads=8, num_key_value_heads=4, intermediate_size=96,
             tie_word_embeddings=False, num_hidden_layers=4)


def megatron_saver(hf: dict, cfg, tp: int, pp: int, iteration: int = 1) -> dict:
    """{relative file: its state dict} as Megatron-LM's checkpoint saver lays them out."""
    def column(w):  # chunk_weight(w, "column", tp): (tp, out // tp, in)
        return w.reshape(tp, w.shape[0] // tp, w.shape[1])

    def row(w):  # chunk_weight(w, "row", tp): (tp, out, in // tp)
        return w.reshape(w.shape[0], tp, w.shape[1] // tp).permute(1, 0, 2)

    per_stage = cfg.num_hidden_layers // pp
    files = {}
    for s in range(pp):
        for t in range(tp):
            model = {}
            if s == 0:
                model["embedding.word_embeddings.weight"] = torch.chunk(hf["model.embed_tokens.weight"], tp, dim=0)[t]
            for local in range(per_stage):
                p, m = f"model.layers.{s * per_stage + local}.", f"decoder.layers.{local}."
                qkv = megatron_qkv(*(hf[f"{p}self_attn.{x}_proj.weight"] for x in "qkv"), cfg.num_attention_heads,
                                   cfg.num_key_value_heads)
                model[m + "self_attention.linear_qkv.layer_norm_weight"] = hf[p + "input_layernorm.weight"]
                model[m + "self_attention.linear_qkv.weight"] = column(qkv)[t]
                model[m + "self_attention.linear_proj.weight"] = row(hf[p + "self_attn.o_proj.weight"])[t]
                model[m + "mlp.linear_fc1.layer_norm_weight"] = hf[p + "post_attention_layernorm.weight"]
                model[m + "mlp.linear_fc1.weight"] = torch.cat((column(hf[p + "mlp.gate_proj.weight"]),
                                                                column(hf[p + "mlp.up_proj.weight"])), dim=-2)[t]
                model[m + "mlp.linear_fc2.weight"] = row(hf[p + "mlp.down_proj.weight"])[t]
            if s == pp - 1:
                model["decoder.final_layernorm.weight"] = hf["model.norm.weight"]
                model["output_layer.weight"] = torch.chunk(hf["lm_head.weight"], tp, dim=0)[t]
            name = f"mp_rank_{t:02d}" + (f"_{s:03d}" if pp > 1 else "")
            files[f"iter_{iteration:07d}/{name}/model_optim_rng.pt"] = {
                "model": {k: v.contiguous() for k, v in model.items()}, "checkpoint_version": 3.0,
                "iteration": iteration}
    return files


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    where = tmp_path_factory.mktemp("llama-megatron")
    cfg = transformers.LlamaConfig(**{**COMMON, **SIZES})
    return build(transformers.LlamaForCausalLM, cfg, seed=11, where=where), where


def cli(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.mark.parametrize("tp,pp", [(1, 1), (2, 1), (1, 2), (2, 2), (4, 2)])
def test_megatron_ranks_are_the_savers_layout_and_read_back_bit_for_bit(llama, tmp_path, tp, pp):
    model, src = llama
    cfg = model.config
    out = tmp_path / "mcore"
    r = cli("apply", SPECS / "llama_to_megatron.map", src, "-o", out, "--config", src / "config.json",
            "-p", f"tp={tp}", "-p", f"pp={pp}", "-p", "iteration=20")
    assert r.exit_code == 0, r.output
    expected = megatron_saver(load_file(src / "model.safetensors"), cfg, tp, pp, iteration=20)
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert written == sorted([*expected, "latest_checkpointed_iteration.txt"])
    assert (out / "latest_checkpointed_iteration.txt").read_text() == "20"
    for rel, state in expected.items():
        got = torch.load(out / rel, weights_only=True)
        assert {k: v for k, v in got.items() if k != "model"} == {"checkpoint_version": 3.0, "iteration": 20}
        assert_same_tensors(got["model"], state["model"])

    back = tmp_path / "back.safetensors"
    r = cli("apply", SPECS / "megatron_to_llama.map", out, "-o", back, "--config", src / "config.json",
            "-p", f"tp={tp}", "-p", f"pp={pp}", "-p", "iteration=20")
    assert r.exit_code == 0, r.output
    assert_same_tensors(load_file(back), load_file(src / "model.safetensors"))
    loaded = load_hf(transformers.LlamaForCausalLM, src, back)
    assert max_diff(logits(loaded, cfg.vocab_size), logits(model, cfg.vocab_size)) == 0


def test_reading_with_the_wrong_parallel_sizes_names_the_rank_file(llama, tmp_path):
    model, src = llama
    out = tmp_path / "mcore"
    assert cli("apply", SPECS / "llama_to_megatron.map", src, "-o", out, "--config", src / "config.json",
               "-p", "tp=2", "-p", "pp=2").exit_code == 0
    for params, needle in ((("tp=1", "pp=2"), "mp_rank_01_000/model_optim_rng.pt is one too many: the spec gives 1 "
                                              "value of t"),
                           (("tp=4", "pp=2"), "rank file iter_0000001/mp_rank_02_000/model_optim_rng.pt is missing"),
                           (("tp=2", "pp=1"), "one too many: the spec gives 1 value of s")):
        r = cli("apply", SPECS / "megatron_to_llama.map", out, "-o", tmp_path / "back.safetensors", "--config",
                src / "config.json", *(x for p in params for x in ("-p", p)))
        assert r.exit_code == 2 and needle in r.output, r.output
        assert len(r.output.strip().splitlines()) == 1 and not (tmp_path / "back.safetensors").exists()


def test_a_tensor_parallel_size_that_cuts_a_key_value_group_is_refused(llama, tmp_path):
    model, src = llama
    r = cli("apply", SPECS / "llama_to_megatron.map", src, "-o", tmp_path / "mcore", "--config", src / "config.json",
            "-p", "tp=8")
    assert r.exit_code == 2 and "num_key_value_heads must be a multiple of tp" in r.output
    assert not (tmp_path / "mcore").exists()
