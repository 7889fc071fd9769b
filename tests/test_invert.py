"""Inversion: the inverse of a spec is derived (golden inverse specs and golden errors), runs
back to the original bit for bit, and refuses what it cannot undo at the forward rule."""

import json
import re
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from mapspec import MapspecError, invert_spec, parse_spec
from mapspec.cli import app
from mapspec.formats import open_sink, open_source
from mapspec.lang.formatter import format_text
from mapspec.tools.verify import verify_roundtrip

from conftest import DATA, golden, load_keys, shipped_config

REPO = Path(__file__).resolve().parent.parent
INVERT = DATA / "specs" / "invert"
OK = DATA / "specs" / "ok"
# the invert suite's own specs (with a forward key list or without) and the golden ok specs
SPECS = sorted(INVERT.glob("*.map")) + sorted(OK.glob("*.map"))
SHIPPED = sorted((REPO / "specs").glob("*.map"))
runner = CliRunner()


def given(spec: Path) -> dict:
    """A spec's parameters beside it, as test_golden reads them: {"params": ..., "config": ...}."""
    file = spec.with_suffix(".params.json")
    return json.loads(file.read_text()) if file.exists() else {}


def outcome(spec: Path, keys, params=None, config=None) -> str:
    """The inverse spec text, or the rendered errors with the exit code."""
    try:
        return invert_spec(spec, keys, params=params, config=config).text
    except MapspecError as exc:
        return f"exit {exc.exit_code}\n{exc.render()}\n"


def golden_name(spec: Path, text: str, where: Path) -> Path:
    return where / (spec.stem + (".invert.err" if text.startswith("exit ") else ".inverse.map"))


@pytest.mark.parametrize("spec", SPECS, ids=lambda p: p.name)
def test_inverse_is_golden(spec, monkeypatch):
    """Against the forward keys where the spec has a key list, from the spec alone otherwise."""
    monkeypatch.chdir(spec.parent)
    keys = None
    if spec.with_suffix(".keys.json").exists():
        stored = load_keys(spec.with_suffix(".keys.json"))
        keys = {k: stored[v] for k, v in parse_keys_selected(spec, stored).items()}
    values = given(spec)
    text = outcome(Path(spec.name), keys, values.get("params"), values.get("config"))
    golden(golden_name(spec, text, INVERT / "golden"), text)


@pytest.mark.parametrize("spec", SHIPPED, ids=lambda p: p.name)
def test_shipped_spec_inverse_without_a_checkpoint_is_golden(spec, monkeypatch):
    """Each shipped spec is either inverted or its non-invertible rules are listed exactly."""
    monkeypatch.chdir(REPO)
    text = outcome(spec.relative_to(REPO), None, config=shipped_config(spec))
    golden(golden_name(spec, text, INVERT / "shipped"), text)


def test_the_inverse_text_is_formatted_and_parses():
    inv = invert_spec(INVERT / "constructs.map", load_keys(INVERT / "constructs.keys.json"))
    assert format_text(inv.text) == inv.text
    assert inv.spec.header.source == "b" and inv.spec.header.target == "a"


def random_checkpoint(keys, path: Path, seed: int = 0, fmt: str = "safetensors") -> None:
    rng = np.random.default_rng(seed)
    sink = open_sink(path, fmt, keys)
    for k, info in keys.items():
        if info.dtype == "bfloat16":
            a = rng.integers(0, 1 << 16, info.shape, dtype=np.uint16)
        elif info.dtype.startswith("int"):
            a = rng.integers(-100, 100, info.shape).astype(info.dtype)
        else:
            a = rng.standard_normal(info.shape).astype(info.dtype)
        sink.write(k, a)
    sink.commit()


INVERTIBLE = [p for p in SPECS if (INVERT / "golden" / (p.stem + ".inverse.map")).exists()
              and p.with_suffix(".keys.json").exists()]


@pytest.mark.parametrize("spec", INVERTIBLE, ids=lambda p: p.name)
def test_forward_then_inverse_is_bit_exact(spec, tmp_path, monkeypatch):
    monkeypatch.chdir(spec.parent)
    keys = load_keys(spec.with_suffix(".keys.json"))
    random_checkpoint(keys, tmp_path / "in.safetensors")
    values = given(spec)
    result, inverse = verify_roundtrip(spec.name, tmp_path / "in.safetensors", params=values.get("params"),
                                       config=values.get("config"))
    assert result.ok and not result.missing and not result.extra
    assert {c.name for c in result.checks} == set(parse_keys_selected(spec, keys))
    assert all(c.exact for c in result.checks)
    # every tensor's row names the forward rule it went through
    assert {c.rule.file for c in result.checks} <= {spec.name, str(Path("common") / "bn.map")}


def parse_keys_selected(spec: Path, keys):
    from mapspec.formats.selection import select

    return select(keys, parse_spec(spec.name).header.select, spec)


def test_a_plan_that_would_differ_is_caught_by_verify(tmp_path, monkeypatch):
    """`reverse ->` is trusted as written; verify proves it: a wrong one is a difference."""
    monkeypatch.chdir(tmp_path)
    Path("s.map").write_text("mapspec 1\nw.{i:int} -> v.{i}\n    reverse -> w.{i} then view(-1)\n")
    random_checkpoint({"w.0": load_keys_one((2, 3))}, tmp_path / "in.safetensors")
    r = runner.invoke(app, ["verify", "s.map", "in.safetensors"])
    assert r.exit_code == 1
    assert "DIFFERS: w.0 (s.map:2): shape (6,) vs (2, 3)" in r.output


def load_keys_one(shape):
    from mapspec.compile.plan import TensorInfo

    return TensorInfo(shape, "float32")


def test_lossy_cast_inverts_only_with_lossy_and_says_so(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("s.map").write_text("mapspec 1\nw.{i:int} -> v.{i} then cast(float16)\n")
    random_checkpoint({"w.0": load_keys_one((4,))}, tmp_path / "in.safetensors")
    r = runner.invoke(app, ["invert", "s.map", "in.safetensors"])
    assert r.exit_code == 2 and "loses precision" in r.output
    r = runner.invoke(app, ["invert", "s.map", "in.safetensors", "--lossy"])
    assert r.exit_code == 0, r.output
    assert "warning: s.map:2: cast(float16) of float32 tensors loses precision" in r.output
    assert "v.{i:int} -> w.{i} then cast(float32)" in r.output
    r = runner.invoke(app, ["verify", "s.map", "in.safetensors", "--lossy"])
    assert r.exit_code == 1 and "DIFFERS: w.0 (s.map:2): max abs diff" in r.output


def test_invert_cli_writes_a_spec_that_apply_runs(tmp_path):
    keys = load_keys(INVERT / "constructs.keys.json")
    random_checkpoint(keys, tmp_path / "in.safetensors")
    spec = INVERT / "constructs.map"
    r = runner.invoke(app, ["invert", str(spec), str(tmp_path / "in.safetensors"), "-o", str(tmp_path / "inv.map")])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["invert", str(spec), str(tmp_path / "in.safetensors"), "-o", str(tmp_path / "inv.map")])
    assert r.exit_code == 2 and "exists" in r.output
    assert runner.invoke(app, ["apply", str(spec), str(tmp_path / "in.safetensors"), "-o",
                               str(tmp_path / "fwd.safetensors")]).exit_code == 0
    r = runner.invoke(app, ["apply", str(tmp_path / "inv.map"), str(tmp_path / "fwd.safetensors"), "-o",
                            str(tmp_path / "back.npz")])
    assert r.exit_code == 0, r.output
    assert_same(tmp_path / "in.safetensors", tmp_path / "back.npz")


def assert_same(a: Path, b: Path) -> None:
    sa, sb = open_source(a), open_source(b)
    try:
        assert dict(sa.infos()) == dict(sb.infos())
        for k in sa.infos():
            assert np.asarray(sa.read(k)).tobytes() == np.asarray(sb.read(k)).tobytes(), k
    finally:
        sa.close()
        sb.close()


def test_apply_reverse_without_the_forward_checkpoint(tmp_path, monkeypatch):
    """Inverses that need no shapes run straight from the spec: DPN's classifier view and
    BN tables; the output records that it went the reverse way."""
    monkeypatch.chdir(tmp_path)
    Path("s.map").write_text("mapspec 1\nfrom x to y\ntable bn {\n  gamma = weight\n}\n"
                             "arg:fc_weight -> fc.weight then view(+(1, 1))\n"
                             "arg:bn_{p in bn} -> bn.{bn[p]}\n")
    from mapspec.compile.plan import TensorInfo

    random_checkpoint({"fc.weight": TensorInfo((3, 2, 1, 1), "float32"), "bn.weight": TensorInfo((3,), "float32")},
                      tmp_path / "y.safetensors")
    r = runner.invoke(app, ["apply", "--reverse", "s.map", "y.safetensors", "-o", "x.safetensors"])
    assert r.exit_code == 0, r.output
    src = open_source(tmp_path / "x.safetensors")
    assert {k: i.shape for k, i in src.infos().items()} == {"arg:fc_weight": (3, 2), "arg:bn_gamma": (3,)}
    src.close()
    from mapspec.formats.provenance import read

    assert read(tmp_path / "x.safetensors")["direction"] == "reverse"


def test_an_error_in_the_inverse_plan_points_at_the_forward_rule(tmp_path, monkeypatch):
    """Two layouts mapping onto the same names: the inverse is ambiguous for a checkpoint
    holding those names, and says so at the forward rules."""
    monkeypatch.chdir(tmp_path)
    Path("s.map").write_text("mapspec 1\nold.{p:w|b} -> new.{p}\nnew.{p:w|b}.x -> new.{p}.x\n"
                             "legacy.{rest:**} -> {rest}\n")
    from mapspec.compile.plan import TensorInfo

    random_checkpoint({"new.w": TensorInfo((2,), "float32")}, tmp_path / "n.safetensors")
    r = runner.invoke(app, ["apply", "--reverse", "s.map", "n.safetensors", "-o", "o.safetensors"])
    assert r.exit_code == 1
    assert r.output.startswith("s.map:")
    assert ("s.map:4:1: error: the inverses of this rule and of the rule at s.map:2 both read 'new.w': the keys do "
            "not decide which to write back") in r.output


def test_dataparallel_fp16_round_trips_a_real_torch_checkpoint(tmp_path, torch):
    """specs/dataparallel_fp16.map on a half-precision nn.DataParallel state dict saved by
    torch: forward to fp32 and back to fp16, every tensor bit for bit (fp16 -> fp32 is exact)."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Linear(5, 2)).half()
    torch.save(torch.nn.DataParallel(model).state_dict(), tmp_path / "dp.pt")
    spec = REPO / "specs" / "dataparallel_fp16.map"
    r = runner.invoke(app, ["verify", str(spec), str(tmp_path / "dp.pt")])
    assert r.exit_code == 0, r.output
    n = len(model.state_dict())
    assert f"ok: {n} tensors, {n} bit-exact" in r.output
    r = runner.invoke(app, ["invert", str(spec), str(tmp_path / "dp.pt")])
    assert "{rest:**}.{p:weight|bias|running_mean|running_var} -> module.{rest}.{p} then cast(float16)" in r.output


# ------------------------------------------------------------------ language 2 (own LLM-style spec)

LLAMA = INVERT / "llama_like.map"
CONFIGS = {"gqa": {"num_attention_heads": 4, "num_key_value_heads": 2, "hidden_size": 32},
           "mha": {"num_attention_heads": 8, "hidden_size": 64}}


def llama_checkpoint(path: Path, cfg: dict, tied: bool, seed: int = 0) -> dict:
    from mapspec.compile.plan import TensorInfo

    h, nh = cfg["hidden_size"], cfg["num_attention_heads"]
    kv = cfg.get("num_key_value_heads", nh) * (h // nh)
    keys = {"model.embed_tokens.weight": (50, h), "model.norm.weight": (h,)}
    if not tied:
        keys["lm_head.weight"] = (50, h)
    for i in range(2):
        pre = f"model.layers.{i}."
        keys.update({pre + "self_attn.q_proj.weight": (h, h), pre + "self_attn.k_proj.weight": (kv, h),
                     pre + "self_attn.v_proj.weight": (kv, h), pre + "self_attn.o_proj.weight": (h, h),
                     pre + "input_layernorm.weight": (h,)})
        for e in range(3):
            for w in ("w1", "w3"):
                keys[pre + f"block_sparse_moe.experts.{e}.{w}.weight"] = (16, h)
    infos = {k: TensorInfo(s, "bfloat16") for k, s in keys.items()}
    random_checkpoint(infos, path, seed)
    return infos


@pytest.mark.parametrize("tied", [False, True], ids=["untied", "tied"])
@pytest.mark.parametrize("name", list(CONFIGS))
def test_language2_spec_round_trips_bit_exact(tmp_path, name, tied):
    """Parameters from --config, rotary permutation with GQA, a fused MoE merge chain with a
    stated reverse, a tied-head copy and a catch-all: forward and back, bit for bit."""
    (tmp_path / "config.json").write_text(json.dumps(CONFIGS[name]))
    infos = llama_checkpoint(tmp_path / "hf.safetensors", CONFIGS[name], tied)
    r = runner.invoke(app, ["verify", str(LLAMA), str(tmp_path / "hf.safetensors"), "--config",
                            str(tmp_path / "config.json")])
    assert r.exit_code == 0, r.output
    n = len(infos) + tied  # a tied head's copy is checked equal to the embedding it copies
    assert f"ok: {n} tensors, {n} bit-exact" in r.output


def test_reverse_without_the_forward_checkpoint_matches_the_meta_to_hf_permutation(tmp_path):
    """apply --reverse on a Meta checkpoint: q/k come back through the permutation
    transformers' convert_llama_weights_to_hf.py applies (recomputed here in numpy)."""
    cfg = CONFIGS["gqa"]
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    llama_checkpoint(tmp_path / "hf.safetensors", cfg, tied=False)
    args = ["--config", str(tmp_path / "config.json")]
    assert runner.invoke(app, ["apply", str(LLAMA), str(tmp_path / "hf.safetensors"), "-o",
                               str(tmp_path / "meta.safetensors"), *args]).exit_code == 0
    r = runner.invoke(app, ["apply", "--reverse", str(LLAMA), str(tmp_path / "meta.safetensors"), "-o",
                            str(tmp_path / "back.safetensors"), *args])
    assert r.exit_code == 0, r.output
    assert_same(tmp_path / "hf.safetensors", tmp_path / "back.safetensors")
    from mapspec.formats.provenance import read

    values = {"n_heads": 4, "n_kv": 2, "hidden": 32, "head_dim": 8}
    assert read(tmp_path / "meta.safetensors")["params"] == values
    record = read(tmp_path / "back.safetensors")
    assert (record["params"], record["direction"], record["spec"]) == (values, "reverse", "llama_like.map")

    meta, back = open_source(tmp_path / "meta.safetensors"), open_source(tmp_path / "back.safetensors")
    try:
        for proj, heads in (("q", 4), ("k", 2)):
            w = np.asarray(meta.read(f"layers.0.attention.w{proj}.weight"))
            dim1, dim2 = w.shape
            hf = w.reshape(heads, dim1 // heads // 2, 2, dim2).transpose(0, 2, 1, 3).reshape(dim1, dim2)
            assert hf.tobytes() == np.asarray(back.read(f"model.layers.0.self_attn.{proj}_proj.weight")).tobytes()
    finally:
        meta.close()
        back.close()


def test_a_concat_without_a_stated_reverse_needs_the_forward_checkpoint(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("s.map").write_text("mapspec 1\nx.{e:int}.{w:w1|w3} -> fused then concat(0, over=w) then stack(0, over=e)\n")
    r = runner.invoke(app, ["invert", "s.map"])
    assert r.exit_code == 2
    assert "concat() inverts only knowing where the pieces it joins begin and end" in r.output


def test_a_catch_all_whose_inverse_another_rule_would_claim_is_refused(tmp_path, monkeypatch):
    """`b.1` reached the output through the catch-all; the inverse of `a.{x} -> b.{x}` would
    write it back as `a.1`. Refused with the forward checkpoint; from the spec alone too."""
    monkeypatch.chdir(tmp_path)
    Path("s.map").write_text("mapspec 1\na.{x} -> b.{x}\notherwise {rest:**} -> {rest}\n")
    from mapspec.compile.plan import TensorInfo

    random_checkpoint({"a.0": TensorInfo((2,), "float32"), "b.1": TensorInfo((2,), "float32")},
                      tmp_path / "in.safetensors")
    r = runner.invoke(app, ["invert", "s.map", "in.safetensors"])
    assert r.exit_code == 2
    assert "s.map:3:1: error: the inverse of this catch-all is ambiguous" in r.output and "b.1 -> b.1" in r.output
    r = runner.invoke(app, ["invert", "s.map"])
    assert r.exit_code == 2 and "a catch-all cannot be inverted from the spec alone" in r.output
    random_checkpoint({"a.0": TensorInfo((2,), "float32"), "c.1": TensorInfo((2,), "float32")},
                      tmp_path / "ok.safetensors")
    assert runner.invoke(app, ["verify", "s.map", "ok.safetensors"]).exit_code == 0


# ------------------------------------------------------------------ choosing a fallback alternative

FALLBACK = "mapspec 1\nfrom a to b\nold.{n:w|b} | new.{n:w|b} -> x.{n}\nlegacy.{n:w|b} | cur.{n:w|b} -> y.{n}\n"


def fallback_checkpoint(tmp_path, monkeypatch) -> None:
    from mapspec.compile.plan import TensorInfo

    monkeypatch.chdir(tmp_path)
    Path("s.map").write_text(FALLBACK)
    infos = {k: TensorInfo((2,), "float32") for k in ("old.w", "old.b", "cur.w", "cur.b")}
    random_checkpoint(infos, tmp_path / "in.safetensors")
    assert runner.invoke(app, ["apply", "s.map", "in.safetensors", "-o", "out.safetensors"]).exit_code == 0


def test_prefer_alternative_chooses_the_name_written_back(tmp_path, monkeypatch):
    """Without a checkpoint the inverse cannot tell `old` from `new`; --prefer-alternative N
    (every fallback rule) or LINE:N (one rule) says; it overrides what the checkpoint used."""
    fallback_checkpoint(tmp_path, monkeypatch)
    r = runner.invoke(app, ["invert", "s.map"])
    assert r.exit_code == 2 and "or choose with --prefer-alternative N" in r.output
    r = runner.invoke(app, ["invert", "s.map", "--prefer-alternative", "2"])
    assert r.exit_code == 0, r.output
    assert "x.{n:w|b} -> new.{n}" in r.output and "y.{n:w|b} -> cur.{n}" in r.output
    r = runner.invoke(app, ["invert", "s.map", "--prefer-alternative", "1", "--prefer-alternative", "4:2"])
    assert "x.{n:w|b} -> old.{n}" in r.output and "y.{n:w|b} -> cur.{n}" in r.output
    # the forward checkpoint used old and cur; the flag overrides it for line 3 only
    r = runner.invoke(app, ["invert", "s.map", "in.safetensors", "--prefer-alternative", "3:2"])
    assert "x.{n:w|b} -> new.{n}" in r.output and "y.{n:w|b} -> cur.{n}" in r.output
    r = runner.invoke(app, ["apply", "--reverse", "s.map", "out.safetensors", "-o", "back.safetensors",
                            "--prefer-alternative", "2"])
    assert r.exit_code == 0, r.output
    src = open_source(tmp_path / "back.safetensors")
    assert sorted(src.infos()) == ["cur.b", "cur.w", "new.b", "new.w"]
    src.close()
    # the round trip with the names the checkpoint used is exact; with others it says what differs
    assert runner.invoke(app, ["verify", "s.map", "in.safetensors", "--prefer-alternative", "1",
                               "--prefer-alternative", "4:2"]).exit_code == 0
    r = runner.invoke(app, ["verify", "s.map", "in.safetensors", "--prefer-alternative", "2"])
    assert r.exit_code == 1 and "MISSING: old.w" in r.output and "EXTRA: new.w" in r.output


def test_prefer_alternative_in_the_api(tmp_path):
    Path(tmp_path / "s.map").write_text(FALLBACK)
    inv = invert_spec(tmp_path / "s.map", prefer={None: 1, 4: 2})
    assert "x.{n:w|b} -> old.{n}" in inv.text and "y.{n:w|b} -> cur.{n}" in inv.text


@pytest.mark.parametrize("value, message", [
    ("3", "s.map:3:1: error: --prefer-alternative 3: this rule has only 2 alternatives"),
    ("2:1", "error: --prefer-alternative 2:1: no rule with alternatives (A | B -> T) starts on line 2 of s.map"),
    ("x", "error: --prefer-alternative 'x': expected N or LINE:N (N counts the alternatives from 1)"),
    ("0", "error: --prefer-alternative '0': expected N or LINE:N"),
])
def test_a_wrong_prefer_alternative_is_one_clear_error(tmp_path, monkeypatch, value, message):
    monkeypatch.chdir(tmp_path)
    Path("s.map").write_text(FALLBACK)
    r = runner.invoke(app, ["invert", "s.map", "--prefer-alternative", value])
    assert r.exit_code == 2 and message in r.output and "Traceback" not in r.output


# ------------------------------------------------------------------ explain --reverse

def meta_checkpoint(path: Path) -> None:
    """A Meta-layout Llama (4 heads, 2 key/value heads, hidden 32, 2 layers), random values."""
    from mapspec.compile.plan import TensorInfo

    t = {"tok_embeddings.weight": (40, 32), "norm.weight": (32,), "output.weight": (40, 32)}
    for i in range(2):
        p = f"layers.{i}."
        t.update({p + "attention.wq.weight": (32, 32), p + "attention.wk.weight": (16, 32),
                  p + "attention.wv.weight": (16, 32), p + "attention.wo.weight": (32, 32),
                  p + "feed_forward.w1.weight": (48, 32), p + "feed_forward.w2.weight": (32, 48),
                  p + "feed_forward.w3.weight": (48, 32), p + "attention_norm.weight": (32,),
                  p + "ffn_norm.weight": (32,)})
    path.mkdir()  # one rank file, as Meta ships its smallest models
    random_checkpoint({k: TensorInfo(s, "float32") for k, s in t.items()}, path / "consolidated.00.pth", fmt="torch")


EXPLAIN = INVERT / "explain"


@pytest.mark.parametrize("fmt", ["table", "per-tensor", "markdown"])
def test_explain_reverse_is_golden(tmp_path, monkeypatch, fmt):
    """`explain --reverse SPEC CKPT`: the derived inverse's plan, each row at the forward rule it
    undoes, with the inverse rule's text, the parameters it was derived with."""
    monkeypatch.chdir(REPO)
    meta_checkpoint(tmp_path / "meta")
    (tmp_path / "config.json").write_text(json.dumps({"num_attention_heads": 4, "num_key_value_heads": 2,
                                                      "hidden_size": 32, "num_hidden_layers": 2,
                                                      "vocab_size": 40, "intermediate_size": 48}))
    args = {"table": [], "per-tensor": ["--per-tensor"], "markdown": ["--format", "markdown"]}[fmt]
    r = runner.invoke(app, ["explain", "--reverse", "specs/llama_hf_to_meta.map", str(tmp_path / "meta"),
                            "--config", str(tmp_path / "config.json"), *args])
    assert r.exit_code == 0, r.output
    golden(EXPLAIN / f"llama_hf_to_meta.{fmt}.txt", r.output)


def test_explain_reverse_points_each_row_at_the_forward_rule(tmp_path, monkeypatch):
    """The rows name the forward spec's lines (those of the rules `invert` derived them from),
    and each shows the inverse rule as `mapspec invert` prints it."""
    monkeypatch.chdir(REPO)
    meta_checkpoint(tmp_path / "meta")
    params = ["-p", "n_heads=4", "-p", "n_kv=2", "-p", "hidden=32", "-p", "layers=2", "-p", "vocab=40", "-p", "inter=48"]
    r = runner.invoke(app, ["explain", "--reverse", "specs/llama_hf_to_meta.map", str(tmp_path / "meta"),
                            *params])
    assert r.exit_code == 0, r.output
    inverse = runner.invoke(app, ["invert", "specs/llama_hf_to_meta.map", *params]).output
    origins = re.findall(r"^# llama_hf_to_meta\.map:(\d+)\n(.*)$", inverse, re.M)
    rows = [line for line in r.output.splitlines() if line.startswith("llama_hf_to_meta.map:")]
    assert len(rows) == len(origins) == 11  # w2 is cut by columns, w1 and w3 by rows: two rules
    for row, (line, text) in zip(rows, origins):
        assert row.startswith(f"llama_hf_to_meta.map:{line} ") and text in row


# ------------------------------------------------------------------ drops the way back leaves out

DROPS = "mapspec 1\nw.{i:int} -> v.{i}\ndrop buf.*\n    reverse none\n"


def test_a_drop_marked_reverse_none_is_left_out_of_the_inverse_and_said_so(tmp_path, monkeypatch):
    from mapspec.compile.plan import TensorInfo

    monkeypatch.chdir(tmp_path)
    assert format_text(DROPS) == DROPS
    Path("s.map").write_text(DROPS)
    r = runner.invoke(app, ["invert", "s.map"])
    assert r.exit_code == 0, r.output
    warning = "s.map:3: the inverse does not recreate the keys this drop removes (marked `reverse none`)"
    assert f"# warning: {warning}: buf.*\n" in r.output and f"warning: {warning}: buf.*\n" in r.output
    random_checkpoint({"w.0": TensorInfo((2,), "float32"), "buf.mask": TensorInfo((3,), "float32")},
                      tmp_path / "in.safetensors")
    r = runner.invoke(app, ["verify", "s.map", "in.safetensors"])
    assert r.exit_code == 0, r.output
    assert "not restored: buf.mask (dropped by s.map:3, marked `reverse none`)" in r.output
    assert "ok: 1 tensors, 1 bit-exact, 1 not restored by design" in r.output
    assert f"warning: {warning}: buf.mask" in r.output
    assert runner.invoke(app, ["apply", "s.map", "in.safetensors", "-o", "out.safetensors"]).exit_code == 0
    r = runner.invoke(app, ["apply", "--reverse", "s.map", "out.safetensors", "-o", "back.safetensors"])
    assert r.exit_code == 0 and f"warning: {warning}: buf.*" in r.output


def test_an_unmarked_drop_inverts_only_with_lossy_and_verify_then_fails(tmp_path, monkeypatch):
    from mapspec.compile.plan import TensorInfo

    monkeypatch.chdir(tmp_path)
    Path("s.map").write_text(DROPS.replace("    reverse none\n", ""))
    r = runner.invoke(app, ["invert", "s.map"])
    assert r.exit_code == 2 and "mark it `reverse none` if the inverse may leave them out" in r.output
    r = runner.invoke(app, ["invert", "s.map", "--lossy"])
    assert r.exit_code == 0
    assert "warning: s.map:3: the inverse does not recreate the keys this drop removes (--lossy): buf.*" in r.output
    random_checkpoint({"w.0": TensorInfo((2,), "float32"), "buf.mask": TensorInfo((3,), "float32")},
                      tmp_path / "in.safetensors")
    r = runner.invoke(app, ["verify", "s.map", "in.safetensors", "--lossy"])
    assert r.exit_code == 1 and "MISSING: buf.mask is in the reference but not produced" in r.output


def test_an_inverse_rule_that_matches_nothing_is_warned_at_its_forward_rule(tmp_path, monkeypatch):
    """A tied checkpoint has no head: the inverse of `head -> out` writes nothing back, and
    apply --reverse and explain --reverse say so at the forward rule (--strict-rules: an error)."""
    from mapspec.compile.plan import TensorInfo

    monkeypatch.chdir(tmp_path)
    Path("s.map").write_text("mapspec 1\nw.{i:int} -> v.{i}\nhead -> out\n")
    random_checkpoint({"v.0": TensorInfo((2,), "float32")}, tmp_path / "tied.safetensors")
    warning = ("s.map:3:1: warning: the inverse of this rule matches no key of this checkpoint (out -> head): "
               "nothing is written back through it")
    r = runner.invoke(app, ["apply", "--reverse", "s.map", "tied.safetensors", "-o", "back.safetensors"])
    assert r.exit_code == 0 and warning in r.output
    r = runner.invoke(app, ["explain", "--reverse", "s.map", "tied.safetensors"])
    assert r.exit_code == 0 and warning in r.output and "s.map:3  out -> head         0     matches nothing" in r.output
    r = runner.invoke(app, ["apply", "--reverse", "--strict-rules", "s.map", "tied.safetensors", "-o", "b2.safetensors"])
    assert r.exit_code != 0 and r.output.startswith("s.map:3:1: error: in the inverse (")
    assert not (tmp_path / "b2.safetensors").exists()


def test_an_optional_drop_can_be_marked_reverse_none(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    text = DROPS.replace("drop buf.*", "optional drop buf.*")
    assert format_text(text) == text
    rule = parse_spec(text=text, name="s.map").rules[1]
    assert rule.optional and rule.reverse_none


@pytest.mark.parametrize("src,dst", [("int8", "float32"), ("uint8", "bfloat16"), ("int16", "float32"),
                                     ("bool", "int8"), ("int32", "float64")])
def test_an_exact_cast_of_integers_to_floats_inverts_and_round_trips(tmp_path, monkeypatch, src, dst):
    """Regression (issue 16): `cast(float32)` of int8 keeps every value, so invert undoes it
    (it used to refuse it as lossy: two tables of exact casts disagreed)."""
    from mapspec.compile.plan import TensorInfo

    monkeypatch.chdir(tmp_path)
    Path("s.map").write_text(f"mapspec 1\nw.{{i:int}} -> v.{{i}} then cast({dst})\n")
    rng = np.random.default_rng(3)
    sink = open_sink(tmp_path / "in.safetensors", "safetensors", {"w.0": TensorInfo((5, 7), src)})
    info = np.iinfo(src) if src != "bool" else None
    values = (rng.integers(0, 2, (5, 7)).astype(bool) if info is None else
              rng.integers(info.min, int(info.max) + 1, (5, 7)).astype(src))
    sink.write("w.0", values)
    sink.commit()
    r = runner.invoke(app, ["invert", "s.map", "in.safetensors"])
    assert r.exit_code == 0, r.output
    assert f"v.{{i:int}} -> w.{{i}} then cast({src})" in r.output
    result, _ = verify_roundtrip("s.map", tmp_path / "in.safetensors")
    assert result.ok and [c.exact for c in result.checks] == [True]


def test_a_narrowing_cast_between_floats_of_other_ranges_stays_refused(tmp_path, monkeypatch):
    """float16 -> bfloat16 keeps the range but not the precision; int64 -> float64 neither."""
    from mapspec.compile.plan import TensorInfo

    monkeypatch.chdir(tmp_path)
    Path("s.map").write_text("mapspec 1\nw -> v then cast(bfloat16)\nx -> y then cast(float64)\n")
    keys = {"w": TensorInfo((2,), "float16"), "x": TensorInfo((2,), "int64")}
    with pytest.raises(MapspecError) as err:
        invert_spec("s.map", keys)
    assert "cast(bfloat16) of float16 tensors loses precision" in err.value.render()
    assert "cast(float64) of int64 tensors loses precision" in err.value.render()
