"""The spec language's file metadata (`meta`) and what it needs: float, bool and optional
parameters, config keys tried in order, table lookups by a parameter, typed values, and the
actions `add`, `expect(dtype=)` and `cast(..., unfit=)`; all written back by `fmt` as written."""
import numpy as np
import pytest

from conftest import write_safetensors
from mapspec import TensorInfo, apply, compile_spec, invert_spec, verify_roundtrip
from mapspec.compile.params import bind, bind_meta
from mapspec.errors import SpecError, SpecErrors
from mapspec.lang.formatter import format_text
from mapspec.lang.parser import parse_spec

SPEC = """mapspec 1
param outtype: str = "f16"
param n_layers from "num_hidden_layers"
param theta: float from "rope_parameters.rope_theta" | "rope_theta" = 10000.0
param eps: float from "rms_norm_eps" = 1e-6
param experts from "num_local_experts" | "num_experts" = none
param tied: bool from "tie_word_embeddings" = false
param arch: str from "architectures.0" = "LlamaForCausalLM"
table file_types {
  f32 = 0
  f16 = 1
}
let file_type = file_types[outtype]
meta general.architecture = "llama"
meta llama.block_count = uint32(n_layers)
meta llama.rope.freq_base = float32(theta)
meta llama.attention.layer_norm_rms_epsilon = float32(eps)
meta llama.expert_count = uint32(experts)
meta general.file_type = uint32(file_type)
meta example.tied = tied
meta example.half = n_layers * 0.5
meta from tokenizer("llama")
keep **
"""


def entries(text, config, **params):
    spec = parse_spec(text=text, name="<t>")
    _, bindings = bind(spec, params, config)
    out, errors = bind_meta(spec, bindings)
    if errors:
        raise errors[0]
    return {e[0]: e[1:] for e in out}


def test_entries_from_config_params_and_tables():
    config = {"num_hidden_layers": 4, "rope_parameters": {"rope_theta": 500000.0}, "architectures": ["X"]}
    got = entries(SPEC, config, outtype="f32")
    assert got["general.architecture"] == (None, "llama")  # untyped: the format types it
    assert got["llama.block_count"] == ("uint32", 4)
    assert got["llama.rope.freq_base"] == ("float32", 500000.0)  # the first config key present
    assert got["llama.attention.layer_norm_rms_epsilon"] == ("float32", 1e-6)  # the default
    assert "llama.expert_count" not in got  # none: left out
    assert got["general.file_type"] == ("uint32", 0)  # file_types[outtype], a number
    assert got["example.tied"] == (None, False) and got["example.half"] == (None, 2.0)
    assert got["tokenizer"] == (("llama",),)  # a provider, run where the model directory is known
    config["num_experts"] = 8  # the second key of the alternatives
    assert entries(SPEC, config)["llama.expert_count"] == ("uint32", 8)


def test_a_list_index_in_a_config_key():
    spec = parse_spec(text=SPEC, name="<t>")
    _, bindings = bind(spec, {}, {"num_hidden_layers": 1, "architectures": ["MixtralForCausalLM"]})
    assert {b.name: b.value for b in bindings}["arch"] == "MixtralForCausalLM"


@pytest.mark.parametrize("entry,message", [
    ("uint32(0 - 1)", "does not fit uint32"),
    ("uint8(300)", "does not fit uint8"),
    ("uint32(2.5)", "needs a whole number"),
    ("bool(1)", "needs true or false"),
    ("float32(\"x\")", None),  # a quoted string is not an expression inside a call: a syntax error
    ("int24(1)", "unknown metadata type 'int24'"),
    ("uint32(sizes[outtype])", "table 'sizes' has no entry 'f16'"),
])
def test_bad_values_are_errors_at_their_line(entry, message):
    text = 'param outtype: str = "f16"\ntable sizes {\n  f32 = 4\n}\nmeta k = ' + entry + "\nkeep **\n"
    with pytest.raises((SpecError, SpecErrors)) as exc:
        entries(text, {})
    if message:
        assert message in str(exc.value) and ":5:" in str(exc.value)


def test_float_and_bool_parameters_from_p():
    text = "param theta: float = 1.0\nparam on: bool = false\nmeta a = float32(theta)\nmeta b = on\nkeep **\n"
    assert entries(text, None, theta="2.5", on="true") == {"a": ("float32", 2.5), "b": (None, True)}
    with pytest.raises(SpecError, match="number parameter"):
        entries(text, None, theta="fast")
    with pytest.raises(SpecError, match="true/false parameter"):
        entries(text, None, on="yes")


def test_fmt_keeps_meta_and_key_alternatives():
    canonical = format_text(SPEC)
    assert format_text(canonical) == canonical
    assert 'param theta: float from "rope_parameters.rope_theta" | "rope_theta" = 10000.0' in canonical
    assert "meta llama.block_count = uint32(n_layers)" in canonical
    assert 'meta from tokenizer("llama")' in canonical
    assert parse_spec(text=canonical, name="<t>").meta == parse_spec(text=SPEC, name="<t>").meta


def test_meta_in_a_format_without_metadata_is_refused(tmp_path):
    src = write_safetensors(tmp_path / "a.safetensors", {"w": np.ones((2, 2), np.float32)})
    (tmp_path / "s.map").write_text('mapspec 1\nmeta general.name = "x"\nkeep **\n')
    with pytest.raises(Exception, match="cannot hold"):
        apply(tmp_path / "s.map", src, tmp_path / "out.safetensors")
    assert not (tmp_path / "out.safetensors").exists()


def test_add_and_its_inverse(tmp_path):
    w = np.linspace(-0.5, 0.5, 64, dtype=np.float32).reshape(8, 8)
    src = write_safetensors(tmp_path / "a.safetensors", {"norm.weight": w})
    (tmp_path / "s.map").write_text("mapspec 1\nnorm.weight -> n.weight then add(1)\n")
    apply(tmp_path / "s.map", src, tmp_path / "out.safetensors")
    from safetensors.numpy import load_file

    np.testing.assert_array_equal(load_file(tmp_path / "out.safetensors")["n.weight"], w + np.float32(1))
    inverse = invert_spec(tmp_path / "s.map")
    assert "add(-1)" in inverse.text
    # w + 1 rounds away w's low bits where w is much finer than 1: verify says so, never silent
    result, _ = verify_roundtrip(tmp_path / "s.map", src)
    assert not result.ok and result.checks[0].max_abs < 1e-7
    # norm weights as bf16 checkpoints hold them (8 significant bits near 1) come back exactly
    exact = write_safetensors(tmp_path / "e.safetensors", {"norm.weight": (np.arange(64, dtype=np.float32) / 256
                                                                           ).reshape(8, 8)})
    assert verify_roundtrip(tmp_path / "s.map", exact)[0].ok
    with pytest.raises(Exception, match="cast first"):  # bf16 travels as bits: cast(float32) first
        compile_spec(parse_spec(tmp_path / "s.map"), {"norm.weight": TensorInfo((2,), "bfloat16")})


def test_expect_dtype_lets_a_cast_invert_from_the_spec(tmp_path):
    text = ("mapspec 1\nparam dt: str = \"bfloat16\"\n"
            "a.weight -> b.weight then expect(dtype=dt) then cast(float32)\n")
    (tmp_path / "s.map").write_text(text)
    inverse = invert_spec(tmp_path / "s.map")  # no forward checkpoint: the spec states the dtype
    assert "cast(bfloat16)" in inverse.text
    with pytest.raises(Exception, match="the tensor here is float32"):
        compile_spec(parse_spec(tmp_path / "s.map"), {"a.weight": TensorInfo((2,), "float32")})
    src = write_safetensors(tmp_path / "a.safetensors", {"a.weight": np.ones((4,), np.float32)})
    result, _ = verify_roundtrip(tmp_path / "s.map", src, params={"dt": "float32"})
    assert result.ok


def test_cast_unfit_decides_per_tensor():
    spec = parse_spec(text="mapspec 1\n{n}.weight -> {n}.weight then cast(q8_0, unfit=float16)\n", name="<t>")
    plan = compile_spec(spec, {"a.weight": TensorInfo((4, 64), "float32"), "b.weight": TensorInfo((4, 80), "float32")})
    assert {s.output: s.info.dtype for s in plan.steps} == {"a.weight": "q8_0", "b.weight": "float16"}
