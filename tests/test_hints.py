"""What a wrong key should have been (issue 11.4): the closest rule by segments, wrong MXNet
prefixes, target mismatches paired, and repeated findings folded into one line."""

import pytest

from mapspec import ConversionError, TensorInfo, compile_spec, parse_spec
from mapspec.compile.hints import glob_of, name_similarity, replacements

F = TensorInfo((4,), "float32")


def spec(tmp_path, text):
    path = tmp_path / "s.map"
    path.write_text("mapspec 1\n" + text)
    return parse_spec(path)


def coverage_lines(tmp_path, text, keys):
    with pytest.raises(ConversionError) as info:
        compile_spec(spec(tmp_path, text), {k: F for k in keys})
    return info.value.details


def test_closest_rule_is_found_by_segments_not_characters(tmp_path):
    """The observation: difflib pointed features.4.0.body.0.bias at features.0.weight."""
    lines = coverage_lines(tmp_path, "features.0.weight -> conv1.weight\n"
                           "features.{s:int}.{b:int}.body.{i:0|3}.weight -> layer{s-3}.{b}.c{i}.weight\n",
                           ["features.0.weight", "features.4.0.body.0.weight", "features.4.0.body.0.bias"])
    assert lines == ["features.4.0.body.0.bias: closest rule: line 3 (features.{s:int}.{b:int}.body.{i:0|3}.weight) "
                     "has 'weight' in place of 'bias': widen it (e.g. {p:weight|bias} with {p} in the target), "
                     "or add 'drop features.4.0.body.0.bias'"]


def test_repeated_findings_fold_into_one_line_with_one_suggestion(tmp_path):
    keys = [f"layer{i}.{j}.bn{k}.{p}" for i in (1, 2) for j in (0, 1) for k in (1, 2)
            for p in ("weight", "bias", "num_batches_tracked")] + ["bn1.weight", "bn1.num_batches_tracked"]
    lines = coverage_lines(tmp_path, "table bn {\n  weight = weight\n  bias = bias\n}\n"
                           "layer{i:int}.{j:int}.bn{k:int}.{p in bn} -> l{i}.{j}.n{k}.{bn[p]}\n"
                           "bn1.{p in bn} -> n1.{bn[p]}\n", keys)
    assert lines == ["9 keys like **.num_batches_tracked: closest rule: line 6 (layer{i:int}.{j:int}.bn{k:int}.{p in bn}); "
                     "'num_batches_tracked' is not in table bn: add it there, or add 'drop **.num_batches_tracked'"]
    # and the suggestion is right: with it the spec compiles
    s = spec(tmp_path, "table bn {\n  weight = weight\n  bias = bias\n}\n"
             "layer{i:int}.{j:int}.bn{k:int}.{p in bn} -> l{i}.{j}.n{k}.{bn[p]}\n"
             "bn1.{p in bn} -> n1.{bn[p]}\ndrop **.num_batches_tracked\n")
    assert len(compile_spec(s, {k: F for k in keys}).dropped) == 9


def test_a_wrong_mxnet_prefix_is_named(tmp_path):
    keys = [f"{x}:net_bn{i}_{p}" for i in range(3) for x, p in
            (("arg", "gamma"), ("arg", "beta"), ("aux", "moving_mean"), ("aux", "moving_var"))]
    text = ("table bn {\n  gamma = weight\n  beta = bias\n  moving_mean = running_mean\n"
            "  moving_var = running_var\n}\narg:net_bn{i:int}_{p in bn} -> bn{i}.{bn[p]}\n")
    lines = coverage_lines(tmp_path, text, keys)
    assert lines == ["6 keys like aux:net_bn*_moving_*: the rule at line 8 (arg:net_bn{i:int}_{p in bn}) matches "
                     "with 'arg:', not 'aux:': write '{x:arg|aux}:' to take both"]
    fixed = spec(tmp_path, text.replace("arg:net_bn", "{x:arg|aux}:net_bn"))
    assert len(compile_spec(fixed, {k: F for k in keys}).steps) == 12
    lines = coverage_lines(tmp_path, "net_conv0_weight -> conv0.weight\n", ["arg:net_conv0_weight"])
    assert lines == ["arg:net_conv0_weight: the rule at line 2 (net_conv0_weight) matches without the 'arg:' prefix: "
                     "add it to the pattern"]


def test_with_a_target_an_unmatched_key_is_paired_with_the_target_key_it_most_likely_is(tmp_path):
    s = spec(tmp_path, "module.body.{i:int}.w -> body.{i}.w\n")
    keys = {"module.body.0.w": F, "module.body.1.w": F, "module.head.fc.weight": TensorInfo((3, 4), "float32")}
    target = {"body.0.w": F, "body.1.w": F, "head.fc.weight": TensorInfo((3, 4), "float32")}
    with pytest.raises(ConversionError) as info:
        compile_spec(s, keys, target=target)
    assert info.value.details == [
        "module.head.fc.weight: no rule comes close: add a rule, or add 'drop module.head.fc.weight'; the target's "
        "head.fc.weight, which no rule produces, has the shape and a similar name"]


def test_target_mismatches_pair_missing_and_unexpected_and_name_the_rule(tmp_path):
    s = spec(tmp_path, "ds.{b:int}.{p:weight|bias} -> layer1.{b}.downsample.bn.{p}\nfc.weight -> fc.weight\n")
    keys = {f"ds.{b}.{p}": F for b in range(3) for p in ("weight", "bias")}
    keys["fc.weight"] = TensorInfo((10, 4), "float32")
    target = {f"layer1.{b}.downsample.1.{p}": F for b in range(3) for p in ("weight", "bias")}
    target["fc.weight"] = TensorInfo((5, 4), "float32")
    target["fc.bias"] = TensorInfo((5,), "float32")
    with pytest.raises(ConversionError) as info:
        compile_spec(s, keys, target=target)
    assert info.value.details == [
        "6 outputs like layer1.*.downsample.bn.* are not in the target; the target has layer1.*.downsample.1.* "
        "with the same shapes: the rule at line 2 writes 'bn' where the target has '1' "
        "(e.g. layer1.0.downsample.bn.weight -> layer1.0.downsample.1.weight)",
        "missing from the output: fc.bias (5,)",
        "shape mismatch: fc.weight produced (10, 4), target (5, 4) (rule at line 3)",
        "fix: correct the rules named above; leave them out: --fit drop --drop 'fc.*' (or --fit shape)",
    ]


def test_names_compare_by_tokens():
    assert name_similarity("layer1.0.downsample.bn.weight", "layer1.0.downsample.1.weight") == 0.8
    assert replacements("layer1.0.downsample.bn.weight", "layer1.0.downsample.1.weight") == (("bn", "1"),)
    assert replacements("a.running_mean", "a.moving_mean") == (("running", "moving"),)
    assert glob_of(["layer1.0.bn2.num_batches_tracked", "bn1.num_batches_tracked"]) == "**.num_batches_tracked"
    assert glob_of(["layer1.0.bn1.num_batches_tracked", "bn1.num_batches_tracked"]) == "**.bn1.num_batches_tracked"
    assert glob_of(["aux:s1_bn0_moving_mean", "aux:s2_bn3_moving_var"]) == "aux:s*_bn*_moving_*"
    assert glob_of(["x.gamma", "x.beta"]) == "x.*"


# ------------------------------------------------------------------ copies and the catch-all (language 2)

def test_a_key_only_a_copy_reads_is_told_it_needs_its_own_rule(tmp_path):
    """A copy never covers its key: the hint must not point at the copy as the rule it missed."""
    keys = ["model.embed_tokens.weight", "model.norm.weight", "model.embed_tokens.bias"]
    text = "copy model.embed_tokens.weight -> output.weight\nmodel.norm.weight -> norm.weight\n"
    lines = coverage_lines(tmp_path, text + "model.embed_tokens.bias -> tok.bias\n", keys)
    assert lines == ["model.embed_tokens.weight: the copy at line 2 reads it, but a copy is one more output, not the "
                     "key's own rule: add one (a rename, or 'keep model.embed_tokens.weight'); or closest rule: line 4 "
                     "(model.embed_tokens.bias) has 'bias' in place of 'weight': widen it (e.g. {p:bias|weight} with "
                     "{p} in the target), or add 'drop model.embed_tokens.weight'"]
    assert coverage_lines(tmp_path, text, keys[:2]) == [
        "model.embed_tokens.weight: the copy at line 2 reads it, but a copy is one more output, not the key's own "
        "rule: add one (a rename, or 'keep model.embed_tokens.weight')"]
    # and the suggestion is right
    fixed = spec(tmp_path, text + "keep model.embed_tokens.weight\n")
    assert sorted(s.output for s in compile_spec(fixed, {k: F for k in keys[:2]}).steps) == [
        "model.embed_tokens.weight", "norm.weight", "output.weight"]


def test_the_catch_all_is_not_offered_as_the_rule_a_key_missed_but_its_pattern_is_shown(tmp_path):
    keys = ["model.norm.weight", "model.extra.bias", "model.extras.scale"]
    lines = coverage_lines(tmp_path, "model.norm.weight -> norm.weight\notherwise model.extras.{r:**} -> {r}\n", keys)
    assert lines == ["model.extra.bias: no rule comes close, and the catch-all at line 3 takes only "
                     "model.extras.{r:**}: add a rule, or add 'drop model.extra.bias'"]


def test_a_misfit_from_a_copy_or_the_catch_all_is_fixed_where_it_was_made(tmp_path):
    """A drop rule does not remove what a copy writes; the catch-all's keys need rules of their own."""
    s = spec(tmp_path, "emb.weight -> tok.weight\ncopy emb.weight -> output.weight\notherwise {r:**} -> {r}\n")
    keys = {"emb.weight": TensorInfo((10, 4), "float32"), "extra.bias": F}
    target = {"tok.weight": TensorInfo((10, 4), "float32"), "extra_bias": F}
    with pytest.raises(ConversionError) as info:
        compile_spec(s, keys, target=target)
    assert info.value.details == [
        "not in the target: extra.bias (4,), most likely missing from the output: extra_bias (same shape): the "
        "catch-all at line 4 writes 'extra.bias' where the target has 'extra_bias'",
        "not in the target: output.weight (10, 4) (copy at line 3)",
        "fix: correct the rules named above (the catch-all's keys need a rule of their own); remove the copy at "
        "line 3 (what it writes is not in the target)",
    ]
    fixed = spec(tmp_path, "emb.weight -> tok.weight\nextra.bias -> extra_bias\notherwise {r:**} -> {r}\n")
    assert compile_spec(fixed, keys, target=target).target_report.ok
