"""Composition without dead ends (issue 21.4): a shipped spec can be included and extended,
`reverse none` works under `otherwise drop`, a parameter can be the length of a list in the
configuration."""

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mapspec.cli import app
from mapspec.errors import SpecError
from mapspec.lang.formatter import format_text
from mapspec.lang.parser import parse_spec

SPECS = Path(__file__).resolve().parent.parent / "specs"


def run(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


# ------------------------------------------------------------------ include a shipped spec

def test_a_shipped_spec_is_included_and_extended_by_one_bias_rule(tmp_path):
    """A Meta Llama with a bias on wv (as some fine-tunes add): the including spec states the
    same header as specs/llama_meta_to_hf.map (its rank files included) and adds one rule,
    the bias cut by rows across ranks like wv; the conversion is the shipped
    spec's (q/k permuted as transformers' script does) plus the bias."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from safetensors.torch import load_file

    import transformers

    from test_llm_specs import COMMON, LLAMA_SIZES, meta_params, random_meta, script_meta_to_hf

    cfg = transformers.LlamaConfig(**COMMON, **LLAMA_SIZES["h6-kv1"])
    meta = random_meta(cfg, seed=3)
    gen = torch.Generator().manual_seed(4)
    n_kv = cfg.num_key_value_heads * (cfg.hidden_size // cfg.num_attention_heads)
    for i in range(cfg.num_hidden_layers):
        meta[f"layers.{i}.attention.wv.bias"] = torch.randn(n_kv, generator=gen)
    torch.save(meta, tmp_path / "consolidated.00.pth")
    params = meta_params(cfg)
    (tmp_path / "params.json").write_text(json.dumps(params))
    spec = tmp_path / "llama_with_v_bias.map"
    spec.write_text(f'mapspec 1\nfrom meta to hf\nranks source "consolidated.{{rank:02}}.pth"\n'
                    f'include "{SPECS / "llama_meta_to_hf.map"}"\n\n'
                    "{rank:int}/layers.{i:int}.attention.wv.bias -> model.layers.{i}.self_attn.v_proj.bias\n"
                    "    then concat(0, over=rank)\n")
    r = run("apply", spec, tmp_path, "--config", tmp_path / "params.json",
            "-o", tmp_path / "hf.safetensors")
    assert r.exit_code == 0, r.output
    got = load_file(tmp_path / "hf.safetensors")
    want = script_meta_to_hf({k: v for k, v in meta.items() if not k.endswith(".bias")}, params)
    for i in range(cfg.num_hidden_layers):
        want[f"model.layers.{i}.self_attn.v_proj.bias"] = meta[f"layers.{i}.attention.wv.bias"]
    assert got.keys() == want.keys()
    assert all(torch.equal(got[k], want[k].contiguous()) for k in want)


def test_an_included_header_yields_to_the_includers_and_a_select_it_lacks_is_an_error(tmp_path):
    (tmp_path / "base.map").write_text("mapspec 1\nfrom a to b\nselect model\nx.{i:int} -> y.{i}\n")
    # the includer states another `from ... to` and its own select: its header stands
    (tmp_path / "over.map").write_text('mapspec 1\nfrom c to d\nselect ema\ninclude "base.map"\n')
    spec = parse_spec(tmp_path / "over.map")
    assert (spec.header.source, spec.header.target, spec.header.select) == ("c", "d", "ema")
    assert len(spec.rules) == 1
    # no select in the includer: the included file's rules are written for a sub-tree it would not select
    (tmp_path / "bare.map").write_text('mapspec 1\ninclude "base.map"\n')
    with pytest.raises(SpecError) as err:
        parse_spec(tmp_path / "bare.map")
    assert "base.map:3:1" in str(err.value).replace(str(tmp_path) + "/", "")
    assert "this included file selects 'model' but the including spec selects nothing; state 'select model'" \
        in str(err.value)


# ------------------------------------------------------------------ reverse none under otherwise drop

def test_reverse_none_under_otherwise_drop_parses_formats_and_inverts(tmp_path):
    text = "mapspec 1\na.{i:int} -> b.{i}\notherwise drop\n    reverse none\n"
    spec = parse_spec(text=text, name="od.map")
    assert spec.rules[-1].otherwise and spec.rules[-1].reverse_none
    assert format_text(text, "od.map") == text
    (tmp_path / "od.map").write_text(text)
    r = run("invert", tmp_path / "od.map")
    assert r.exit_code == 0, r.output
    assert "b.{i:int} -> a.{i}" in r.output and "the inverse does not recreate the keys this drop removes" in r.output
    # without it, the refusal's advice is this very clause
    (tmp_path / "od2.map").write_text(text.replace("    reverse none\n", ""))
    r = run("invert", tmp_path / "od2.map")
    assert r.exit_code == 2 and "mark it `reverse none`" in r.output


# ------------------------------------------------------------------ len() of a configuration list

def test_a_parameter_is_the_length_of_a_list_in_the_configuration(tmp_path):
    """diffusers' UNet numbers its levels by len(block_out_channels): down.{i} -> up.{levels-1-i}."""
    text = ('mapspec 1\nparam levels from len("block_out_channels")\nlet last = levels - 1\n'
            "down.{i:int}.w -> up.{last-i}.w\n")
    assert format_text(text, "len.map") == text
    (tmp_path / "len.map").write_text(text)
    (tmp_path / "config.json").write_text(json.dumps({"block_out_channels": [32, 64, 128, 128]}))
    from mapspec.compile.params import bind

    _, bindings = bind(parse_spec(tmp_path / "len.map"), config=tmp_path / "config.json")
    assert [(b.name, b.value, b.origin) for b in bindings] == [
        ("levels", 4, "config len(block_out_channels)"), ("last", 3, "let")]
    (tmp_path / "bad.json").write_text(json.dumps({"block_out_channels": 4}))
    r = run("check", tmp_path / "len.map", "--config", tmp_path / "bad.json")
    assert r.exit_code == 2
    assert "bad.json key 'block_out_channels' = 4 is not a list: 'levels' takes its length" in r.output
    r = run("check", tmp_path / "len.map")
    assert "give -p levels=VALUE or --config with a list at key 'block_out_channels'" in r.output


# ------------------------------------------------------------------ integer captures with a condition

def test_numeric_alternatives_are_an_integer_capture_with_a_condition(tmp_path):
    """`{i:1|2|3}` matches only those numbers (here: not block 0, which another rule takes)
    and takes part in arithmetic like `{i:int}`."""
    from mapspec.core.tensorinfo import TensorInfo
    from mapspec.compile.plan import compile_spec

    spec = parse_spec(text="mapspec 1\nblocks.0.w -> stem.w\nblocks.{i:1|2|3}.w -> layers.{(i-1)//2}.{(i-1)%2}.w\n",
                      name="cond.map")
    keys = {f"blocks.{i}.w": TensorInfo((2,), "float32") for i in range(4)}
    plan = compile_spec(spec, keys)
    assert {s.output: s.inputs[0] for s in plan.steps} == {
        "stem.w": "blocks.0.w", "layers.0.0.w": "blocks.1.w", "layers.0.1.w": "blocks.2.w", "layers.1.0.w": "blocks.3.w"}
    with pytest.raises(SpecError) as err:
        compile_spec(parse_spec(text="mapspec 1\nblocks.{i:a|b}.w -> layers.{i+1}.w\n", name="x.map"),
                     {"blocks.a.w": TensorInfo((2,), "float32")})
    assert "declare it as {i:int} (or list the numbers it may be, {i:0|1|2})" in str(err.value)


# ------------------------------------------------------------------ where: rules the keys choose

WHERE = """mapspec 1
blocks.{i:int}.norm.weight -> layers.{i}.ln.weight
blocks.{i:int}.norm.weight -> layers.{i}.pre_ln.weight
    where blocks.{i}.pre.weight
blocks.{i:int}.{m:pre|fc}.weight -> layers.{i}.{m}.weight
"""


def test_a_where_rule_takes_the_keys_its_condition_holds_for(tmp_path):
    """Two layouts in one spec: a block with `pre` has its norm renamed pre_ln, the others ln.
    The reverse is chosen by the keys the same way, with `reverse -> ... where ...`."""
    from mapspec.compile.plan import compile_spec
    from mapspec.core.tensorinfo import TensorInfo

    assert format_text(WHERE, "w.map") == WHERE
    i = TensorInfo((2,), "float32")
    keys = {k: i for k in ["blocks.0.norm.weight", "blocks.0.fc.weight", "blocks.1.norm.weight",
                           "blocks.1.pre.weight", "blocks.1.fc.weight"]}
    plan = compile_spec(parse_spec(text=WHERE, name="w.map"), keys)
    assert {s.output: s.inputs[0] for s in plan.steps} == {
        "layers.0.ln.weight": "blocks.0.norm.weight", "layers.0.fc.weight": "blocks.0.fc.weight",
        "layers.1.pre_ln.weight": "blocks.1.norm.weight", "layers.1.pre.weight": "blocks.1.pre.weight",
        "layers.1.fc.weight": "blocks.1.fc.weight"}
    # two conditions that both hold: the keys do not decide, and the error says so
    twice = WHERE + "blocks.{i:int}.norm.weight -> layers.{i}.other.weight\n    where blocks.{i}.fc.weight\n"
    from mapspec.errors import PlanError

    with pytest.raises(PlanError) as err:
        compile_spec(parse_spec(text=twice, name="w.map"), keys)
    assert "key 'blocks.1.norm.weight' is taken by this rule and by the rule at" in str(err.value)
    assert "the keys do not decide between them" in str(err.value)
    # a where naming a capture the source does not bind is a spec error
    with pytest.raises(SpecError) as err:
        compile_spec(parse_spec(text="mapspec 1\na.{i:int} -> b.{i}\n    where c.{j}\n", name="w.map"),
                     {"a.0": i})
    assert "capture {j} in the `where` key is not bound" in str(err.value)


def test_an_integer_capture_with_a_condition_takes_part_in_arithmetic():
    """`{i:int>0}`: block 0 is the stem (its own rule), the others are layers from 0; a rule
    that also matches what the condition lets through is the usual ambiguity error."""
    from mapspec.compile.plan import compile_spec
    from mapspec.core.tensorinfo import TensorInfo
    from mapspec.errors import PlanError

    text = "mapspec 1\nblocks.0.w -> stem.w\nblocks.{i:int>0}.w -> layers.{i-1}.w\n"
    assert format_text(text, "c.map") == text
    keys = {f"blocks.{n}.w": TensorInfo((2,), "float32") for n in range(3)}
    plan = compile_spec(parse_spec(text=text, name="c.map"), keys)
    assert {s.output: s.inputs[0] for s in plan.steps} == {
        "stem.w": "blocks.0.w", "layers.0.w": "blocks.1.w", "layers.1.w": "blocks.2.w"}
    overlapping = "mapspec 1\nblocks.{j:int}.w -> x.{j}.w\nblocks.{i:int>0}.w -> layers.{i-1}.w\n"
    with pytest.raises(PlanError) as err:
        compile_spec(parse_spec(text=overlapping, name="c.map"), keys)
    assert "key 'blocks.1.w' is matched by this rule and by the rule at c.map:2:1" in str(err.value)
    with pytest.raises(SpecError) as err:
        parse_spec(text="mapspec 1\nblocks.{i:a>0}.w -> x.w\n", name="c.map")
    assert "a condition goes with an integer capture" in str(err.value)


def test_two_layouts_written_back_the_keys_decide_with_where_else_an_error_names_both(tmp_path):
    """Two source layouts with one target name (a shared norm in `b` blocks, which have `c1`):
    without `where` the reverse cannot tell which to write back and says so, naming both rules
    and the clause that decides; with it, both layouts round-trip bit for bit."""
    import numpy as np

    from conftest import write_safetensors

    rng = np.random.default_rng(0)
    arrays = {"blk1_norm": rng.standard_normal(3).astype(np.float32),        # plain block
              "blk2_bnorm": rng.standard_normal(3).astype(np.float32),       # b block: its own norm name
              "blk2_c1": rng.standard_normal(3).astype(np.float32)}
    ckpt = write_safetensors(tmp_path / "mixed.safetensors", arrays)
    base = ("mapspec 1\nblk{b:int}_norm -> blocks.{b}.norm\nblk{b:int}_c1 -> blocks.{b}.c1\n"
            "optional blk{b:int}_bnorm -> blocks.{b}.norm\n")
    spec = tmp_path / "two.map"
    spec.write_text(base)
    r = run("verify", spec, ckpt)
    assert r.exit_code == 2
    assert "the inverse of this rule reads the same keys (blocks.{b:int}.norm) as the inverse of the rule at " \
           "line 2: the keys do not decide which to write back" in r.output
    assert "(`reverse -> ... where KEY`), or mark one `reverse none`" in r.output
    spec.write_text(base + "    reverse -> blk{b}_bnorm where blocks.{b}.c1\n")
    r = run("verify", spec, ckpt)
    assert r.exit_code == 0 and "ok: 3 tensors, 3 bit-exact" in r.output, r.output
    # patterns that overlap without being equal: found on the checkpoint, said the same way
    spec.write_text(base.replace("blk{b:int}_norm -> blocks.{b}.norm", "blk{b:int}_{m:norm|pre} -> blocks.{b}.{m}"))
    r = run("verify", spec, ckpt)
    assert r.exit_code == 1  # a problem of this checkpoint's keys
    assert "the inverses of this rule and of the rule at two.map:2 both read 'blocks.1.norm': the keys do not " \
           "decide which to write back. State the key that tells the layouts apart" in r.output


def test_including_a_rank_file_spec_without_its_ranks_line_is_an_error_at_that_line(tmp_path):
    spec = tmp_path / "partial.map"
    spec.write_text(f'mapspec 1\nfrom meta to hf\ninclude "{SPECS / "llama_meta_to_hf.map"}"\n')
    r = run("check", spec)
    assert r.exit_code == 2
    assert "llama_meta_to_hf.map:13:1: error: this included file reads or writes rank files" in r.output
