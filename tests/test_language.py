"""Spec language 2: parameters, multi-tensor chains, copies, the catch-all, keep with actions,
and every problem of a spec reported at once. The issue's two silent-wrong cases and its
crash are regression tests here."""

import json

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file
from typer.testing import CliRunner

from mapspec import MapspecError, PlanError, SpecError, TensorInfo, apply, compile_spec, parse_spec
from mapspec.cli import app
from mapspec.errors import SpecErrors
from mapspec.compile.params import bind

from test_shipped import _meaning


def spec(text: str, name: str = "s.map"):
    return parse_spec(text=text, name=name)


def infos(tensors: dict) -> dict:
    return {k: TensorInfo(v.shape, "float32") for k, v in tensors.items()}


def run(tmp_path, text: str, tensors: dict, **kw) -> dict:
    """Write `tensors`, convert them with spec `text`, read the result back."""
    (tmp_path / "s.map").write_text(text)
    save_file(tensors, tmp_path / "in.safetensors")
    out = tmp_path / "out.safetensors"
    if out.exists():
        out.unlink()
    apply(tmp_path / "s.map", tmp_path / "in.safetensors", out, **kw)
    return load_file(out)


def rand(seed: int, *shape):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


# ------------------------------------------------------------------ parameters

HEADS = """mapspec 1
param n_heads from "text_config.num_attention_heads"
param n_kv from "text_config.num_key_value_heads" = n_heads
param hidden from "text_config.hidden_size" = 64
param prefix: str = "model"
let head_dim = hidden // n_heads
assert hidden % n_heads == 0, "hidden_size must be a multiple of num_attention_heads"
{prefix}.layers.{i:int}.k.weight -> blocks.{i + 1}.{prefix}.k.weight
    then expect(n_kv * head_dim, hidden) then view(n_kv, head_dim, hidden)
"""


def test_parameter_values_come_from_p_then_config_then_default_and_are_recorded(tmp_path):
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps({"text_config": {"num_attention_heads": 8, "num_key_value_heads": 2}}))
    keys = {"model.layers.0.k.weight": TensorInfo((16, 64), "float32")}
    plan = compile_spec(spec(HEADS), keys, config=cfg)
    assert plan.to_json()["params"] == {
        "n_heads": {"value": 8, "from": "config text_config.num_attention_heads"},
        "n_kv": {"value": 2, "from": "config text_config.num_key_value_heads"},
        "hidden": {"value": 64, "from": "default"},
        "prefix": {"value": "model", "from": "default"},
        "head_dim": {"value": 8, "from": "let"},
    }
    assert plan.steps[0].output == "blocks.1.model.k.weight"
    assert plan.steps[0].info.shape == (2, 8, 64)
    # -p beats the config; a str parameter renames the keys it stands in
    keys = {"net.layers.0.k.weight": TensorInfo((32, 64), "float32")}
    plan = compile_spec(spec(HEADS), keys, config=cfg, params={"n_kv": "4", "prefix": "net"})
    assert plan.steps[0].output == "blocks.1.net.k.weight"
    assert {b.name: (b.value, b.origin) for b in plan.params}["n_kv"] == (4, "-p")


def test_a_parameter_without_a_value_is_an_error_at_its_declaration():
    with pytest.raises(SpecError) as info:
        compile_spec(spec(HEADS), {})
    assert info.value.render().splitlines()[0] == (
        "s.map:2:7: error: parameter 'n_heads' has no value: give -p n_heads=VALUE or --config with key "
        "'text_config.num_attention_heads'")


def test_a_failed_assertion_names_the_values():
    with pytest.raises(SpecError) as info:
        compile_spec(spec(HEADS), {}, params={"n_heads": 6})
    assert info.value.render().splitlines()[0] == (
        "s.map:7:1: error: hidden_size must be a multiple of num_attention_heads: hidden % n_heads == 0 "
        "is 4 == 0")


@pytest.mark.parametrize("line, where, at", [
    ("a -> b then expect(n_experts(1), _)", "an action argument", "3:20"),   # found by the fuzz campaign
    ("a -> b then view(2 + uint32(x), -1)", "an action argument", "3:22"),
    ("a -> b then cast(1.5)", "an action argument", "3:18"),
    ("a.{i:int} -> b.{i + uint32(1)}", "a template", "3:21"),
    ("a.{i:int} -> b.{n=i + 1.5}", "a template", "3:16"),
    ("assert x == len(3)", "an assertion", "3:13"),
])
def test_typed_and_decimal_values_outside_metadata_are_spec_errors(line, where, at):
    """`uint32(n)` and `1.5` are for `meta` entries and parameters; elsewhere, where only
    integer arithmetic is evaluated, they are an error at their place, not an internal error."""
    with pytest.raises(SpecError) as info:
        compile_spec(spec(f"mapspec 1\nparam x = 3\n{line}\n" + ("a -> b\n" if line.startswith("assert") else "")),
                     {"a": TensorInfo((2, 2), "float32"), "a.0": TensorInfo((2, 2), "float32")})
    first = info.value.render().splitlines()[0]
    assert first.startswith(f"s.map:{at}: error: ") and f"is not allowed in {where}" in first, first


def test_every_problem_is_reported_at_once_in_file_order():
    text = ("mapspec 1\nparam a\nparam b: str = 3 + 1\nlet c = zz * 2\n"
            "x.{i:int} -> y then concat(0, over=j)\nz -> w then view(q)\notherwise keep\notherwise drop\n")
    with pytest.raises(SpecErrors) as info:
        compile_spec(spec(text), {}, params={"b": "x", "nope": 1})
    heads = [e.render().splitlines()[0] for e in info.value.errors]
    assert heads == [
        "error: -p nope: the spec has no parameter 'nope' (parameters: a, b, c)",
        "s.map:2:7: error: parameter 'a' has no value: give -p a=VALUE",
        "s.map:4:9: error: unknown name 'zz' (parameters: b)",
        "s.map:5:16: error: concat(over=j): {j} is not a capture of the source; the merge axes here are {i}",
        "s.map:6:18: error: view(): each dimension must be an integer; 'q' is not a parameter",
        "s.map:8:1: error: a spec has at most one otherwise rule (the first is at line 7)",
    ]
    assert info.value.exit_code == 2
    assert info.value.render().endswith("\n6 errors")


def test_cli_takes_p_and_config_on_apply_check_and_explain(tmp_path):
    (tmp_path / "s.map").write_text(HEADS)
    save_file({"model.layers.0.k.weight": rand(0, 16, 64)}, tmp_path / "in.safetensors")
    (tmp_path / "c.json").write_text(json.dumps({"text_config": {"num_attention_heads": 8}}))
    r = CliRunner()
    s, ck = str(tmp_path / "s.map"), str(tmp_path / "in.safetensors")
    res = r.invoke(app, ["check", s, ck, "--config", str(tmp_path / "c.json"), "-p", "n_kv=2"])
    assert res.exit_code == 0, res.output
    res = r.invoke(app, ["explain", s, ck, "--format", "json", "--config", str(tmp_path / "c.json"), "-p", "n_kv=2"])
    assert json.loads(res.stdout)["params"]["n_kv"] == {"value": 2, "from": "-p"}
    res = r.invoke(app, ["explain", s, ck, "--format", "markdown", "-p", "n_heads=8", "-p", "n_kv=2"])
    assert "Parameters: n_heads=8 (-p), n_kv=2 (-p), hidden=64 (default), prefix=model (default), " \
           "head_dim=8 (let)" in res.stdout
    res = r.invoke(app, ["apply", s, ck, "-o", str(tmp_path / "o.safetensors"), "-p", "n_heads=8", "-p", "n_kv=2"])
    assert res.exit_code == 0, res.output
    assert load_file(tmp_path / "o.safetensors")["blocks.1.model.k.weight"].shape == (2, 8, 64)
    for bad, message in [(["-p", "n_heads"], "error: -p n_heads: expected NAME=VALUE, e.g. -p n_heads=32"),
                         (["-p", "n_heads=eight"], "error: -p n_heads=eight: 'n_heads' is an integer parameter"),
                         (["--config", str(tmp_path / "none.json")], "none.json: no such file or folder"),
                         ([], "error: parameter 'n_heads' has no value")]:
        res = r.invoke(app, ["check", s, ck] + bad)
        assert res.exit_code == 2 and message in res.stderr, (bad, res.stderr)
        assert "Traceback" not in res.output


# ------------------------------------------------------------------ multi-tensor chains

MOE = """mapspec 1
model.layers.{i:int}.block_sparse_moe.experts.{e:int}.{w:w1|w3}.weight
    -> model.layers.{i}.mlp.experts.gate_up_proj then concat(0, over=w) then stack(0, over=e)
"""


def _experts(n: int, skip: tuple = ()) -> dict:
    return {f"model.layers.0.block_sparse_moe.experts.{e}.{w}.weight": rand(e * 10 + len(w), 6, 4)
            for e in range(n) for w in ("w1", "w3") if (e, w) not in skip}


def test_merge_over_two_captures_is_exact(tmp_path):
    t = _experts(3)
    out = run(tmp_path, MOE, t)["model.layers.0.mlp.experts.gate_up_proj"]
    ref = np.stack([np.concatenate([t[f"model.layers.0.block_sparse_moe.experts.{e}.{w}.weight"]
                                    for w in ("w1", "w3")]) for e in range(3)])
    assert np.array_equal(out, ref)
    # merged the other way round: one stack per w, then the two stacks side by side
    swapped = MOE.replace("concat(0, over=w) then stack(0, over=e)", "stack(0, over=e) then concat(1, over=w)")
    out = run(tmp_path, swapped, t)["model.layers.0.mlp.experts.gate_up_proj"]
    assert np.array_equal(out, ref)


def test_merge_over_two_captures_with_an_input_missing_is_a_compile_error_naming_it():
    """Issue 8, silent-wrong case 1: experts.2.w3 missing used to give a misaligned tensor."""
    with pytest.raises(PlanError) as info:
        compile_spec(spec(MOE), infos(_experts(4, skip=((2, "w3"),))))
    assert info.value.render().splitlines()[0] == (
        "s.map:2:1: error: 'model.layers.0.mlp.experts.gate_up_proj' merges {w} = w1, w3 with concat(), "
        "but model.layers.0.block_sparse_moe.experts.2.w3.weight is missing")
    # in the other order too, and a whole missing expert is named key by key
    swapped = MOE.replace("concat(0, over=w) then stack(0, over=e)", "stack(0, over=e) then concat(1, over=w)")
    with pytest.raises(PlanError) as info:
        compile_spec(spec(swapped), infos(_experts(4, skip=((1, "w1"), (1, "w3")))))
    assert ("but model.layers.0.block_sparse_moe.experts.1.w1.weight, "
            "model.layers.0.block_sparse_moe.experts.1.w3.weight are missing") in info.value.render()


def test_an_unmerged_extra_capture_is_an_error_not_a_silent_merge():
    text = "mapspec 1\nx.{e:int}.{w:a|b} -> y then stack(0, over=e)\n"
    with pytest.raises(SpecError, match=r"the source capture \{w\} is neither used by the target nor merged"):
        compile_spec(spec(text), {})


def test_unary_actions_before_a_merge_apply_to_every_input(tmp_path):
    """Issue 8, the crash: `then view(2, -1, 64) then concat(1)` raised a traceback."""
    t = {f"attn.{p}.weight": rand(n, 128 if p == "q" else 64, 64) for n, p in enumerate("qkv")}
    text = "mapspec 1\nattn.{p:q|k|v}.weight -> qkv.weight then view(2, -1, 64) then concat(1) then reshape(-1, 64)\n"
    out = run(tmp_path, text, t)["qkv.weight"]
    groups = [np.concatenate([t[f"attn.{p}.weight"].reshape(2, -1, 64)[g] for p in "qkv"]) for g in range(2)]
    assert np.array_equal(out, np.concatenate(groups))


def test_split_into_two_fan_out_captures_inverts_the_merge(tmp_path):
    t = _experts(3)
    fused = run(tmp_path, MOE, t)
    back = """mapspec 1
model.layers.{i:int}.mlp.experts.gate_up_proj
    -> model.layers.{i}.block_sparse_moe.experts.{e:int}.{w:w1|w3}.weight then unstack(0, into=e) then chunk(2, 0, into=w)
"""
    save_file(fused, tmp_path / "fused.safetensors")
    (tmp_path / "b.map").write_text(back)
    apply(tmp_path / "b.map", tmp_path / "fused.safetensors", tmp_path / "back.safetensors")
    got = load_file(tmp_path / "back.safetensors")
    assert got.keys() == t.keys() and all(np.array_equal(got[k], t[k]) for k in t)


def test_split_into_must_name_a_declared_fan_out():
    text = "mapspec 1\nx -> y.{a:int}.{b:p|q} then chunk(2, into=c) then chunk(2)\n"
    with pytest.raises(SpecError, match=r"chunk\(into=c\): \{c\} is not declared in the target"):
        compile_spec(spec(text), {})
    text = "mapspec 1\nx -> y.{a:int}.{b:p|q} then chunk(2) then chunk(2)\n"
    with pytest.raises(SpecError, match=r"chunk\(\) must say which target capture it makes: into=a or into=b"):
        compile_spec(spec(text), {})


# ------------------------------------------------------------------ copies, otherwise, keep

TIED = """mapspec 1
model.embed_tokens.weight -> tok_embeddings.weight
lm_head.weight -> output.weight
copy model.embed_tokens.weight -> output.weight if absent
"""


def test_copy_if_absent_writes_a_tied_head_only_when_the_checkpoint_has_none(tmp_path):
    emb, head = rand(0, 10, 4), rand(1, 10, 4)
    tied = run(tmp_path, TIED, {"model.embed_tokens.weight": emb})
    assert np.array_equal(tied["output.weight"], emb) and np.array_equal(tied["tok_embeddings.weight"], emb)
    untied = run(tmp_path, TIED, {"model.embed_tokens.weight": emb, "lm_head.weight": head})
    assert np.array_equal(untied["output.weight"], head)
    (tmp_path / "out.safetensors").unlink()
    report = apply(tmp_path / "s.map", tmp_path / "in.safetensors", tmp_path / "out.safetensors")
    assert report.plan.copied == () and "copied" not in report.summary()
    save_file({"model.embed_tokens.weight": emb}, tmp_path / "tied.safetensors")
    report = apply(tmp_path / "s.map", tmp_path / "tied.safetensors", tmp_path / "tied.out.safetensors")
    assert report.plan.copied == ("output.weight",)
    assert report.summary().startswith("Transferred 1/1 tensors into 2 outputs (0 dropped, 1 copied)")


def test_a_plain_copy_colliding_with_a_rule_and_a_copy_of_nothing_are_errors():
    with pytest.raises(PlanError, match="target 'output.weight' is produced twice"):
        compile_spec(spec(TIED.replace(" if absent", "")), {"model.embed_tokens.weight": TensorInfo((2,), "float32"),
                                                              "lm_head.weight": TensorInfo((2,), "float32")})
    with pytest.raises(PlanError, match="copy: no key of the checkpoint matches model.embed_tokens.weight"):
        compile_spec(spec(TIED), {"lm_head.weight": TensorInfo((2,), "float32")})
    with pytest.raises(PlanError, match="copy: 'a' is not matched by any other rule"):
        compile_spec(spec("mapspec 1\ncopy a -> b\n"), {"a": TensorInfo((2,), "float32")}, strict=False)


def test_otherwise_takes_only_what_no_other_rule_matched(tmp_path):
    text = ("mapspec 1\nmodel.layers.{i:int}.w -> blocks.{i}.w\ndrop **.num_batches_tracked\n"
            "otherwise {rest:**} -> net.{rest} then cast(float16)\n")
    keys = {"model.layers.0.w": TensorInfo((2,), "float32"), "bn.num_batches_tracked": TensorInfo((), "int64"),
            "head.bias": TensorInfo((3,), "float32")}
    plan = compile_spec(spec(text), keys)
    assert [(s.output, s.info.dtype) for s in plan.steps] == [("blocks.0.w", "float32"), ("net.head.bias", "float16")]
    assert plan.to_json()["otherwise"] == "s.map:4:1"
    # ordinary rules are still never first-match-wins
    with pytest.raises(PlanError, match="is matched by this rule and by the rule at"):
        compile_spec(spec(text + "keep head.*\nkeep *.bias\n"), keys)


def test_keep_takes_unary_actions_only(tmp_path):
    out = run(tmp_path, "mapspec 1\nkeep ** then cast(float16)\n", {"a.b": rand(0, 3)})
    assert out["a.b"].dtype == np.float16
    with pytest.raises(SpecError, match=r"keep takes actions on one tensor; concat\(\) needs a rule of its own"):
        compile_spec(spec("mapspec 1\nkeep ** then concat(0)\n"), {})


def test_bad_input_is_never_a_traceback(tmp_path):
    bad = ["mapspec 1\nlet = 3\n", "mapspec 1\nparam a: float\n", "mapspec 1\nassert 1 =< 2\n",
           "mapspec 1\nparam a = 1 //\n", "mapspec 1\nlet a = 1 // 0\n", "mapspec 1\nx -> y then view((a))\n",
           "mapspec 1\nlet a = " + " + ".join(["1"] * 5000) + "\n",
           "mapspec 1\nx -> y then view(" + "-" * 5000 + "1)\n"]
    for text in bad:
        with pytest.raises(MapspecError):
            compile_spec(spec(text), {"x": TensorInfo((2,), "float32")})


def test_fmt_writes_every_new_construct_canonically():
    from mapspec.lang.formatter import format_text

    messy = ('mapspec 1\nparam   n_heads   from "num_attention_heads"\nparam prefix : str = "model"\n'
             "let head_dim = hidden//n_heads  # derived\nassert hidden%n_heads==0 , \"must divide\"\n"
             "{prefix}.{i:int}.q -> l.{i+1}.q then expect( n_heads*head_dim , _ ) then view(-1,head_dim//2, 2)\n"
             "x.{e:int}.{w:a|b} -> y then concat(0,over=w) then stack( 0, over = e )\n"
             "y -> x.{e:int}.{w:a|b} then unstack(0,into=e) then chunk(2,into=w)\n"
             "copy   a -> b   if    absent then cast(f16)\nkeep  c.* then cast(float32)\n"
             "otherwise   {rest:**} -> {rest}\n")
    tidy = format_text(messy)
    assert tidy == (
        'mapspec 1\nparam n_heads from "num_attention_heads"\nparam prefix: str = "model"\n'
        "let head_dim = hidden // n_heads  # derived\nassert hidden % n_heads == 0, \"must divide\"\n"
        "{prefix}.{i:int}.q -> l.{i+1}.q then expect(n_heads * head_dim, _) then view(-1, head_dim // 2, 2)\n"
        "x.{e:int}.{w:a|b} -> y then concat(0, over=w) then stack(0, over=e)\n"
        "y -> x.{e:int}.{w:a|b} then unstack(0, into=e) then chunk(2, into=w)\n"
        "copy a -> b if absent then cast(f16)\nkeep c.* then cast(float32)\n"
        "otherwise {rest:**} -> {rest}\n")
    assert format_text(tidy) == tidy

    assert _meaning(spec(tidy)) == _meaning(spec(messy))


def test_every_example_in_the_language_doc_parses():
    import re
    from pathlib import Path

    doc = (Path(__file__).parent.parent / "docs" / "spec-language.md").read_text()
    blocks = [b for b in re.findall(r"```\n(.*?)```", doc, re.S) if "SOURCE" not in b and "include" not in b]
    assert len(blocks) >= 7
    for block in blocks:
        parse_spec(text=block, name="doc")


def test_a_table_merge_axis_needs_every_table_key_in_table_order(tmp_path):
    text = "mapspec 1\ntable part { up = 0  gate = 1 }\nmlp.{p in part}.weight -> fc1.weight then concat(0)\n"
    t = {"mlp.gate.weight": rand(0, 2, 3), "mlp.up.weight": rand(1, 2, 3)}
    out = run(tmp_path, text, t)["fc1.weight"]
    assert np.array_equal(out, np.concatenate([t["mlp.up.weight"], t["mlp.gate.weight"]]))
    with pytest.raises(PlanError, match="merges {p} = up, gate with concat[(][)], but mlp.up.weight is missing"):
        compile_spec(spec(text), infos({"mlp.gate.weight": t["mlp.gate.weight"]}))


def test_integer_merge_axes_must_run_from_zero_with_the_same_values_everywhere():
    text = "mapspec 1\nx.{e:int}.{w:a|b} -> y then stack(0, over=e) then concat(0, over=w)\n"
    keys = {f"x.{e}.{w}": TensorInfo((2,), "float32") for e in (0, 1, 2) for w in "ab"}
    del keys["x.1.b"]
    with pytest.raises(PlanError, match="merges {e} = 0..2 with stack[(][)], but x.1.b is missing"):
        compile_spec(spec(text), keys)
    keys = {f"x.{e}.a": TensorInfo((2,), "float32") for e in (1, 2)} | {"x.0.b": TensorInfo((2,), "float32")}
    with pytest.raises(PlanError, match="but x.0.a, x.1.b, x.2.b are missing"):
        compile_spec(spec(text), keys)


def test_parameters_in_template_arithmetic_and_split_sizes():
    text = ("mapspec 1\nparam offset = 2\nparam q_rows\nlet kv_rows = q_rows // 4\n"
            "blocks.{i:int}.qkv -> layers.{i + offset}.{p:q|k|v} then split((q_rows, kv_rows, kv_rows), 0)\n")
    plan = compile_spec(spec(text), {"blocks.0.qkv": TensorInfo((12, 3), "float32")}, params={"q_rows": 8})
    assert [(s.output, s.info.shape) for s in plan.steps] == [
        ("layers.2.q", (8, 3)), ("layers.2.k", (2, 3)), ("layers.2.v", (2, 3))]
    with pytest.raises(PlanError, match=r"split\(8, 2, 2\): sizes add up to 12, but dim 0 of shape \(16, 3\) is 16"):
        compile_spec(spec(text), {"blocks.0.qkv": TensorInfo((16, 3), "float32")}, params={"q_rows": 8})


def test_binding_rewrites_the_rules_parameters_or_computed_arguments_change_and_no_other():
    text = ("mapspec 1\nparam n = 3\n"
            "a.{i:int}.w -> b.{i}.w\n"            # nothing to bind: the rule as written
            "c.{i:int}.w -> d.{i + n}.w\n"        # a parameter in the template
            "e.{n}.w -> f.w\n"                    # a parameter in the pattern
            "g.w -> h.w then reshape(2 * 3)\n")   # an argument computed when binding
    written = spec(text)
    bound, _ = bind(written)
    assert bound.rules[0] is written.rules[0]
    assert all(b is not w for b, w in zip(bound.rules[1:], written.rules[1:]))
    keys = {"a.1.w": TensorInfo((2,), "float32"), "c.2.w": TensorInfo((2,), "float32"),
            "e.3.w": TensorInfo((2,), "float32"), "g.w": TensorInfo((2, 3), "float32")}
    plan = compile_spec(written, keys)
    assert [(s.output, s.info.shape) for s in plan.steps] == [
        ("b.1.w", (2,)), ("d.5.w", (2,)), ("f.w", (2,)), ("h.w", (6,))]


def test_inputs_of_different_dtypes_merge_after_a_cast_in_the_same_rule(tmp_path):
    t = {"attn.q.weight": rand(0, 2, 3).astype(np.float16), "attn.k.weight": rand(1, 2, 3)}
    keys = {"attn.q.weight": TensorInfo((2, 3), "float16"), "attn.k.weight": TensorInfo((2, 3), "float32")}
    text = "mapspec 1\nattn.{p:q|k}.weight -> qk.weight then concat(0)\n"
    with pytest.raises(PlanError, match=r"concat\(\) over \{p\} gets tensors of different dtypes \(float16, float32\)"):
        compile_spec(spec(text), keys)
    text = "mapspec 1\nattn.{p:q|k}.weight -> qk.weight then cast(float32) then concat(0)\n"
    (step,) = compile_spec(spec(text), keys).steps
    assert [(a.name, a.dtype) for a in step.actions] == [("cast", "float32"), ("concat", "float32")]
    assert step.actions[0].each == ({"from": "float16", "to": "float32"}, {"from": "float32", "to": "float32"})
    out = run(tmp_path, text, t)["qk.weight"]
    assert np.array_equal(out, np.concatenate([t["attn.q.weight"].astype(np.float32), t["attn.k.weight"]]))


@pytest.mark.parametrize("order", ["concat(0, over=w) then stack(0, over=e)",
                                   "stack(0, over=e) then concat(1, over=w)"])
def test_a_merge_over_two_axes_is_exact_or_names_exactly_what_is_missing(order):
    """Every subset of a 3-expert x 2-weight grid: the plan takes the inputs in order, or the
    error names precisely the keys absent below the largest expert present."""
    import itertools

    text = MOE.replace("concat(0, over=w) then stack(0, over=e)", order)
    cells = [(e, w) for e in range(3) for w in ("w1", "w3")]
    name = "model.layers.0.block_sparse_moe.experts.{}.{}.weight".format
    for mask in itertools.product([True, False], repeat=len(cells)):
        present = [c for c, keep in zip(cells, mask) if keep]
        if not present:
            continue
        top = max(e for e, _ in present)
        expected_missing = [name(e, w) for e in range(top + 1) for w in ("w1", "w3") if (e, w) not in present]
        keys = {name(e, w): TensorInfo((6, 4), "float32") for e, w in present}
        try:
            (step,) = compile_spec(spec(text), keys).steps
        except PlanError as exc:
            message = exc.message
            assert expected_missing, message
            reported = [k for k in keys.keys() | set(expected_missing) if k in message.split(" (found")[0]]
            assert sorted(reported) == sorted(expected_missing), message
            continue
        assert not expected_missing
        assert list(step.inputs) == [name(e, w) for e in range(top + 1) for w in ("w1", "w3")]
        assert step.info.shape == (top + 1, 12, 4)


def test_an_optional_rule_may_match_nothing_without_a_warning_or_strict_rules_error(tmp_path):
    """A spec covering two layouts of one family marks the other layout's rules `optional`."""
    spec = tmp_path / "two_layouts.map"
    spec.write_text("mapspec 1\n"
                    "a.{i:int}.w -> x.{i}.w\n"
                    "optional b.{i:int}.w -> x.{i}.w\n"
                    "optional drop c.**\n"
                    "d.w -> y.w\n")
    keys = {"a.0.w": TensorInfo((2,), "float32"), "a.1.w": TensorInfo((2,), "float32")}
    plan = compile_spec(parse_spec(spec), keys, strict_rules=False)
    assert [u.text for u in plan.unused] == ["d.w -> y.w"]  # only the ordinary rule is reported
    with pytest.raises(PlanError, match="matches no key"):
        compile_spec(parse_spec(spec), keys, strict_rules=True)
    spec.write_text(spec.read_text().replace("d.w -> y.w\n", ""))
    assert compile_spec(parse_spec(spec), keys, strict_rules=True).unused == ()
    # `optional` survives formatting, and a key named like the keyword is still a key
    from mapspec.lang.formatter import format_text

    text = spec.read_text() + "optional.w -> z.w\n"
    assert format_text(text) == text
    spec.write_text(text)
    rules = parse_spec(spec).rules
    assert [r.optional for r in rules] == [False, True, True, False]
    assert rules[3].sources[0].text == "optional.w"
