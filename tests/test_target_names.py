"""Advice that cannot scramble weights: a transformers model as `--target` is compared by the
names its checkpoint files use, and where same-shape candidates are not told apart by their
names, the message says so instead of suggesting a pairing (issue 21.5)."""

from pathlib import Path

import pytest
from typer.testing import CliRunner

from mapspec.cli import app
from mapspec.compile.hints import match_by_name
from mapspec.core.tensorinfo import TensorInfo

IDENTITY = "mapspec 1\n{r:**} -> {r}\n"


def run(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def saved(model, tmp_path: Path) -> Path:
    """The model as save_pretrained writes it (file names), one safetensors file."""
    model.save_pretrained(tmp_path / "saved")
    return tmp_path / "saved" / "model.safetensors"


# ------------------------------------------------------------------ names that decide

def test_equally_close_same_shape_names_are_not_paired():
    """query/key/value/dense against q_proj/k_proj/v_proj/o_proj: every pairing scores alike,
    so none is made; the four are one undecided group."""
    w = TensorInfo((32, 32), "float32")
    left = [(f"enc.layer.0.attention.{n}.weight", w) for n in ("query", "key", "value", "output_dense")]
    right = [(f"layers.0.attention.{n}.weight", w) for n in ("q_proj", "k_proj", "v_proj", "o_proj")]
    pairs, undecided = match_by_name(left, right, lambda a, b: a.shape == b.shape, cutoff=0.3)
    assert pairs == [] and undecided == [((0, 1, 2, 3), (0, 1, 2, 3))]


def test_names_decide_where_one_candidate_is_closest_and_pairs_made_free_the_rest():
    """Four stages' downsample BatchNorms, same shape: each output's own stage is the closest
    name, and a rival that another output already took does not count."""
    w = TensorInfo((8,), "float32")
    left = [(f"layer{s}.0.downsample.bn.weight", w) for s in range(1, 5)]
    right = [(f"layer{s}.0.downsample.1.weight", w) for s in (4, 3, 2, 1)]
    pairs, undecided = match_by_name(left, right, lambda a, b: a.shape == b.shape)
    assert pairs == [(0, 3), (1, 2), (2, 1), (3, 0)] and undecided == []
    # one output, two equally close targets: a rival in the column keeps it undecided too
    left = [("a.x.weight", w), ("a.y.weight", w)]
    right = [("a.z.weight", w)]
    pairs, undecided = match_by_name(left, right, lambda a, b: a.shape == b.shape)
    assert pairs == [] and undecided == [((0, 1), (0,))]


# ------------------------------------------------------------------ transformers models

def test_vit_target_is_compared_by_the_names_its_files_use(tmp_path):
    """transformers 5's ViT holds `vit.layers.N.attention.q_proj` in memory and writes
    `vit.encoder.layer.N.attention.attention.query`: a checkpoint in the file names fits the
    model factory as a target, and the output loads with from_pretrained."""
    pytest.importorskip("transformers")
    torch = pytest.importorskip("torch")
    from hf_models import vit

    model = vit()
    assert "vit.layers.0.attention.q_proj.weight" in model.state_dict()
    source = saved(model, tmp_path)
    spec = tmp_path / "id.map"
    spec.write_text(IDENTITY)
    r = run("check", spec, source, "--target", "hf_models:vit()")
    assert r.exit_code == 0 and "40 outputs from 40 tensors, 0 dropped, matches the target" in r.output, r.output
    out = tmp_path / "out"
    r = run("apply", spec, source, "-o", out / "model.safetensors", "--target", "hf_models:vit()")
    assert r.exit_code == 0, r.output
    (out / "config.json").write_text((tmp_path / "saved" / "config.json").read_text())
    from transformers import ViTForImageClassification

    loaded = ViTForImageClassification.from_pretrained(out)
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(loaded(x).logits, model(x).logits)


def test_in_memory_names_are_said_and_the_attention_projections_are_ambiguous_not_suggested(tmp_path):
    """load_into a live ViT takes its in-memory names. A file in the file names does not fit;
    the message says which names it compared, pairs what the names decide (the layer norms),
    and calls q/k/v/o ambiguous: no suggestion that would move `query` into `k_proj`."""
    pytest.importorskip("transformers")
    pytest.importorskip("torch")
    from hf_models import vit

    from mapspec.errors import ConversionError
    from mapspec.tools.load import load_into

    model = vit()
    source = saved(model, tmp_path)
    with pytest.raises(ConversionError) as err:
        load_into(model, source, mode="strict")
    text = str(err.value)
    assert "compared by the model's in-memory names (its state_dict(), which load_state_dict takes)" in text
    assert "from_pretrained" in text
    assert ("ambiguous: vit.encoder.layer.0.attention.{attention.key|attention.query|attention.value|output.dense}"
            ".weight are not in the target, which has vit.layers.0.attention.{q_proj|k_proj|v_proj|o_proj}.weight "
            "of the same shape (32, 32) (and 1 group like it); the names do not say which is which") in text
    assert "'encoder.layer' where the target has 'layers'" in text  # layernorm_before/after: names decide
    for proj in ("q_proj", "k_proj", "v_proj", "o_proj"):
        assert f"where the target has '{proj}'" not in text and f"has '{proj}'" not in text


def test_a_stacked_moe_model_and_a_tied_head_are_compared_by_their_file_tensors(tmp_path):
    """Mixtral stacks its experts in memory (`experts.gate_up_proj`) and writes one w1/w2/w3
    per expert; a tied Llama writes no `lm_head.weight` (from_pretrained ties it back). A
    checkpoint as save_pretrained wrote it fits both factories as targets."""
    pytest.importorskip("transformers")
    pytest.importorskip("torch")
    from hf_models import llama_tied, mixtral

    from mapspec.tools.load import target_infos

    target = target_infos("hf_models:mixtral()")
    assert "model.layers.0.block_sparse_moe.experts.2.w1.weight" in target
    assert not any("gate_up_proj" in k for k in target)
    assert "file" in target.names
    spec = tmp_path / "id.map"
    spec.write_text(IDENTITY)
    for name, make in (("mixtral", mixtral), ("llama_tied", llama_tied)):
        source = saved(make(), tmp_path / name)
        r = run("check", spec, source, "--target", f"hf_models:{name}()")
        assert r.exit_code == 0 and "matches the target" in r.output, (name, r.output)
    tied = target_infos("hf_models:llama_tied()")
    assert "lm_head.weight" in tied and "lm_head.weight" in tied.filled
