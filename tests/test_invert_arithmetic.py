"""Inversion without dead ends (issue 21.4): `{(n-1)//3}` with `{(n-1)%3}` invert together,
`{k - c}` is its own inverse, a `reverse ->` clause computes a source number from a named
target number, and each refusal's advice is something that then inverts."""

import json

import numpy as np
from typer.testing import CliRunner

from mapspec.cli import app

from conftest import write_safetensors

UNET = """mapspec 1
param levels from len("block_out_channels")
let last = levels - 1
conv_in.{p:weight|bias} -> conv_in.{p}
input_blocks.{n:int}.0.{p:weight|bias} -> down_blocks.{(n-1)//3}.resnets.{(n-1)%3}.{p}
output_blocks.{i:int}.conv.weight -> up_blocks.{last-i}.conv.weight
"""


def run(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def unet_checkpoint(tmp_path):
    """An LDM-style UNet's names (the numbering diffusers' conversion script reads), 3 levels."""
    rng = np.random.default_rng(0)
    arrays = {"conv_in.weight": rng.standard_normal((4, 3)).astype(np.float32),
              "conv_in.bias": rng.standard_normal(4).astype(np.float32)}
    for n in range(1, 10):
        for p in ("weight", "bias"):
            arrays[f"input_blocks.{n}.0.{p}"] = rng.standard_normal((n + 1,)).astype(np.float32)
    for i in range(3):
        arrays[f"output_blocks.{i}.conv.weight"] = rng.standard_normal((2, i + 1)).astype(np.float32)
    return write_safetensors(tmp_path / "unet.safetensors", arrays)


def test_a_unet_style_divmod_spec_inverts_and_round_trips(tmp_path):
    spec = tmp_path / "unet.map"
    spec.write_text(UNET)
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"block_out_channels": [32, 64, 64]}))
    r = run("invert", spec, "--config", config)
    assert r.exit_code == 0, r.output
    assert ("down_blocks.{n_div:int}.resnets.{n_mod:0|1|2}.{p:weight|bias} -> input_blocks.{n_div*3+n_mod+1}.0.{p}"
            in r.output)
    assert "up_blocks.{i:int}.conv.weight -> output_blocks.{2-i}.conv.weight" in r.output
    ckpt = unet_checkpoint(tmp_path)
    r = run("verify", spec, ckpt, "--config", config)
    assert r.exit_code == 0 and "ok: 23 tensors, 23 bit-exact" in r.output, r.output
    # forward, then back by apply --reverse: the original names and values
    run("apply", spec, ckpt, "--config", config, "-o", tmp_path / "diffusers.safetensors")
    r = run("apply", "--reverse", spec, tmp_path / "diffusers.safetensors", "--config", config,
            "-o", tmp_path / "back.safetensors")
    assert r.exit_code == 0, r.output
    from mapspec import read_infos

    assert set(read_infos(tmp_path / "back.safetensors")) == set(read_infos(ckpt))


def test_a_reverse_clause_computes_the_source_number_from_named_target_numbers(tmp_path):
    """`{s=n//4}` and `{b=n%4+n//4}` are not a divmod pair the inverse can read; named, the
    reverse clause writes n back as b + 3*s."""
    text = "mapspec 1\nblocks.{n:int}.w -> stage{s=n//4}.{b=n%4+n//4}.w\n    reverse -> blocks.{b+3*s}.w\n"
    spec = tmp_path / "named.map"
    spec.write_text(text)
    r = run("fmt", "--check", spec)
    assert r.exit_code == 0, r.output
    rng = np.random.default_rng(1)
    ckpt = write_safetensors(tmp_path / "b.safetensors",
                             {f"blocks.{n}.w": rng.standard_normal(n + 1).astype(np.float32) for n in range(10)})
    r = run("verify", spec, ckpt)
    assert r.exit_code == 0 and "ok: 10 tensors, 10 bit-exact" in r.output, r.output


def test_every_refusals_advice_inverts(tmp_path):
    """The refusal of `{n//2}` advises naming the number and a reverse clause; following the
    advice inverts. The advice for an unknown capture in a reverse clause says the same."""
    spec = tmp_path / "half.map"
    spec.write_text("mapspec 1\nblocks.{n:int}.w -> pairs.{n//2}.{n%2}.x.{n%2}.w\n")
    r = run("invert", spec)
    assert r.exit_code == 2
    assert "name the number in the target ({t=n//2}) and compute the source's from it in `reverse -> ...`" \
        in r.output
    spec.write_text("mapspec 1\nblocks.{n:int}.w -> pairs.{n//2}.{n%2}.x.{n%2}.w\n    reverse -> blocks.{n}.w\n")
    r = run("invert", spec)
    assert r.exit_code == 2 and "{n} is not known to the inverse" in r.output
    assert "name the target's number (`{t=EXPR}`) and compute {n} from t here" in r.output
    spec.write_text("mapspec 1\nblocks.{n:int}.w -> pairs.{q=n//2}.{r=n%2}.x.{n%2}.w\n    reverse -> blocks.{2*q+r}.w\n")
    r = run("invert", spec)
    assert r.exit_code == 0, r.output
    assert "pairs.{q:int}.{r:int}.x.{_5:int}.w -> blocks.{2*q+r}.w" in r.output
    rng = np.random.default_rng(2)
    ckpt = write_safetensors(tmp_path / "h.safetensors",
                             {f"blocks.{n}.w": rng.standard_normal(3).astype(np.float32) for n in range(6)})
    r = run("verify", spec, ckpt)
    assert r.exit_code == 0 and "ok: 6 tensors, 6 bit-exact" in r.output, r.output
