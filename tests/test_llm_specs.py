"""The shipped LLM specs against the real transformers library.

Each family is proven on tiny random models built from transformers' config classes (fixed
seeds, nothing downloaded) at several sizes with different head counts and grouped-query
ratios, through the CLI exactly as a user runs it (`apply SPEC model.safetensors --config
config.json -o OUT`). Every output tensor is compared with the library's own conversion (or,
where the library has none, the layout computed independently here) with max abs diff 0, and
the converted weights are loaded into the real models and their logits compared.
"""

import json
import os
import re
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tiny models come from config classes, never a hub
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
from safetensors.torch import load_file, save_file  # noqa: E402  (after the skips)
from typer.testing import CliRunner  # noqa: E402

from mapspec import ConversionError, TensorInfo, compile_spec, parse_spec  # noqa: E402
from mapspec.cli import app  # noqa: E402

SPECS = Path(__file__).resolve().parent.parent / "specs"
runner = CliRunner()

COMMON = dict(vocab_size=96, num_hidden_layers=2, max_position_embeddings=64, rms_norm_eps=1e-6,
              bos_token_id=0, eos_token_id=1, pad_token_id=None)
# Head counts and grouped-query ratios 2 (tied head), 6 (one key/value head) and 1 (plain
# multi-head attention, 8 heads: the issue's "identical shapes, other head count" case).
LLAMA_SIZES = {
    "h4-kv2-tied": dict(hidden_size=32, num_attention_heads=4, num_key_value_heads=2,
                        intermediate_size=48, tie_word_embeddings=True),
    "h6-kv1": dict(hidden_size=48, num_attention_heads=6, num_key_value_heads=1,
                   intermediate_size=40, tie_word_embeddings=False),
    "h8-kv8": dict(hidden_size=32, num_attention_heads=8, num_key_value_heads=8,
                   intermediate_size=48, tie_word_embeddings=False),
}


# ---------------------------------------------------------------- helpers


def apply_cli(spec: str, ckpt: Path, config: Path, out: Path, params: tuple[str, ...]):
    """`mapspec apply SPEC CKPT --config CONFIG -o OUT [-p NAME=VALUE]...`, in process."""
    args = ["apply", SPECS / spec, ckpt, "--config", config, "-o", out]
    for p in params:
        args += ["-p", p]
    return runner.invoke(app, [str(a) for a in args])


def convert(spec: str, ckpt: Path, config: Path, out: Path, *params: str) -> dict:
    """`mapspec apply` as a user runs it; returns the written tensors (.safetensors or .pth)."""
    r = apply_cli(spec, ckpt, config, out, params)
    assert r.exit_code == 0, r.output
    if (out / "latest_checkpointed_iteration.txt").exists():  # Megatron's rank files: one rank here
        return torch.load(out / "iter_0000001" / "mp_rank_00" / "model_optim_rng.pt", weights_only=True)["model"]
    if out.is_dir():  # Meta's rank files: one rank here
        return torch.load(out / "consolidated.00.pth", weights_only=True)
    return torch.load(out, weights_only=True) if out.suffix == ".pth" else load_file(out)


def refused(spec: str, ckpt: Path, config: Path, *params: str, code: int, rule: str | tuple[str, ...]) -> str:
    """`mapspec apply` that must fail at compile time with exit `code`, write nothing, and report
    an error (`file:line:col: error:`) inside the rule whose first line holds the text `rule`
    (or inside one of several such rules)."""
    out = ckpt.parent / "refused.safetensors"
    r = apply_cli(spec, ckpt, config, out, params)
    assert r.exit_code == code, r.output
    assert not out.exists()
    assert "Traceback" not in r.output
    reported = {int(n) for n in re.findall(rf"{re.escape(spec)}:(\d+):\d+: error:", r.output)}
    wanted = set()
    for text in (rule,) if isinstance(rule, str) else rule:
        wanted |= rule_lines(spec, text)
    assert reported & wanted, r.output
    return r.output


def rule_lines(spec: str, text: str) -> set[int]:
    """The line numbers of the rule that starts on the one line holding `text`, with its
    `then` continuation lines."""
    lines = (SPECS / spec).read_text().splitlines()
    starts = [n for n, line in enumerate(lines) if text in line and not line[:1].isspace()]
    assert len(starts) == 1, f"{text!r} starts rules on lines {[n + 1 for n in starts]} of {spec}"
    end = starts[0] + 1
    while end < len(lines) and lines[end].lstrip().startswith("then "):
        end += 1
    return set(range(starts[0] + 1, end + 1))


def randomize(model: "torch.nn.Module", seed: int) -> "torch.nn.Module":
    """Distinct values everywhere: norms that all equal 1 would let a swapped norm pass."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            p.copy_(1 + 0.1 * noise if p.ndim == 1 and "bias" not in name else 0.2 * noise)
    return model.eval()


def build(cls, config, seed: int, where: Path):
    """A random model of `cls` saved with save_pretrained into `where`."""
    torch.manual_seed(seed)
    model = randomize(cls(config), seed)
    model.save_pretrained(where)
    return model


def tokens(vocab: int) -> "torch.Tensor":
    return torch.randint(0, vocab, (2, 9), generator=torch.Generator().manual_seed(7))


def logits(model, vocab: int) -> "torch.Tensor":
    with torch.no_grad():
        return model(tokens(vocab)).logits


def load_hf(cls, config_dir: Path, weights: Path):
    """Load converted weights the way a user would: from_pretrained on a directory holding the
    model's config.json and the converted model.safetensors; no key may be missing or left over."""
    where = weights.parent / (weights.stem + "-hf")
    where.mkdir()
    (where / "config.json").write_text((config_dir / "config.json").read_text())
    (where / "model.safetensors").write_bytes(weights.read_bytes())
    model, info = cls.from_pretrained(where, output_loading_info=True)
    assert not any(info.values()), info
    return model.eval()


def assert_same_tensors(actual: dict, expected: dict) -> None:
    assert sorted(actual) == sorted(expected)
    for k, v in expected.items():
        assert actual[k].shape == v.shape, k
        assert actual[k].dtype == v.dtype, k
        assert torch.equal(actual[k], v), f"{k}: max abs diff {(actual[k] - v).abs().max()}"


def max_diff(a: "torch.Tensor", b: "torch.Tensor") -> float:
    return (a - b).abs().max().item()


# ---------------------------------------------------------------- Llama: HF <-> Meta


def permute(w: "torch.Tensor", n_heads: int, dim1: int, dim2: int) -> "torch.Tensor":
    """transformers' convert_llama_weights_to_hf.py `permute` (Meta rows -> HF rows), as the
    script defines it. The script is not part of the transformers wheel, so it is restated here."""
    return w.view(n_heads, dim1 // n_heads // 2, 2, dim2).transpose(1, 2).reshape(dim1, dim2)


META_MLP = {"gate_proj": "w1", "down_proj": "w2", "up_proj": "w3"}
META_ATTN = {"q_proj": "wq", "k_proj": "wk", "v_proj": "wv", "o_proj": "wo"}


def meta_names(n_layers: int) -> dict[str, str]:
    """Meta's name for each HF tensor name (convert_llama_weights_to_hf.py's table, inverted)."""
    names = {"model.embed_tokens.weight": "tok_embeddings.weight", "model.norm.weight": "norm.weight",
             "lm_head.weight": "output.weight"}
    for i in range(n_layers):
        p = f"model.layers.{i}."
        names.update({f"{p}self_attn.{k}.weight": f"layers.{i}.attention.{v}.weight" for k, v in META_ATTN.items()})
        names.update({f"{p}mlp.{k}.weight": f"layers.{i}.feed_forward.{v}.weight" for k, v in META_MLP.items()})
        names[p + "input_layernorm.weight"] = f"layers.{i}.attention_norm.weight"
        names[p + "post_attention_layernorm.weight"] = f"layers.{i}.ffn_norm.weight"
    return names


def script_meta_to_hf(meta: dict, params: dict) -> dict:
    """What convert_llama_weights_to_hf.py writes for a one-shard Meta checkpoint: renamed
    tensors, wq permuted with n_heads, wk with n_kv_heads (rows n_kv_heads * dim // n_heads)."""
    dim, n_heads = params["dim"], params["n_heads"]
    n_kv = params.get("n_kv_heads", n_heads)
    hf = {}
    for hf_name, meta_name in meta_names(params["n_layers"]).items():
        w = meta[meta_name]
        if meta_name.endswith("attention.wq.weight"):
            w = permute(w, n_heads, dim, dim)
        elif meta_name.endswith("attention.wk.weight"):
            w = permute(w, n_kv, n_kv * (dim // n_heads), dim)
        hf[hf_name] = w
    return hf


def random_meta(cfg, seed: int) -> dict:
    """A Meta checkpoint of `cfg`'s sizes with values of its own (a tied family, such as
    Llama 3.2 1B, stores the embedding again as output.weight)."""
    with torch.device("meta"):
        shaped = transformers.LlamaForCausalLM(cfg).state_dict()
    gen = torch.Generator().manual_seed(seed)
    meta = {}
    for hf_name, meta_name in meta_names(cfg.num_hidden_layers).items():
        noise = torch.randn(shaped[hf_name].shape, generator=gen)
        meta[meta_name] = 1 + 0.1 * noise if noise.ndim == 1 else 0.2 * noise
    if cfg.tie_word_embeddings:
        meta["output.weight"] = meta["tok_embeddings.weight"]
    return meta


def decoder_forward(ids, weights: dict, n_layers: int, n_heads: int, n_kv: int, eps: float,
                    interleaved: bool) -> "torch.Tensor":
    """A Llama-style decoder written out here, independently of transformers, on weights under
    neutral names (embed, norm, head; L.attn_norm, L.q, L.k, L.v, L.o, L.ffn_norm, L.gate, L.up,
    L.down as nn.Linear (out, in)). Rotary embeddings on interleaved pairs (Meta's complex
    numbers) or on the two halves of each head (rotate_half: transformers and Megatron)."""
    b, s = ids.shape
    hd = weights["0.q"].shape[0] // n_heads
    angles = torch.outer(torch.arange(s).float(), 1.0 / (10000.0 ** (torch.arange(0, hd, 2).float() / hd)))

    def norm(x, w):
        return w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))

    def rotary(x):
        if interleaved:
            z = torch.view_as_complex(x.reshape(*x.shape[:-1], -1, 2)) * torch.polar(torch.ones_like(angles), angles)[:, None]
            return torch.view_as_real(z).flatten(3)
        cos, sin = (torch.cat([f(angles)] * 2, dim=-1)[:, None] for f in (torch.cos, torch.sin))
        first, second = x.chunk(2, dim=-1)
        return x * cos + torch.cat([-second, first], dim=-1) * sin

    mask = torch.full((s, s), float("-inf")).triu(1)
    h = weights["embed"][ids]
    for i in range(n_layers):
        w = {k.split(".", 1)[1]: v for k, v in weights.items() if k.startswith(f"{i}.")}
        x = norm(h, w["attn_norm"])
        q = rotary((x @ w["q"].T).view(b, s, n_heads, hd))
        k = rotary((x @ w["k"].T).view(b, s, n_kv, hd))
        v = (x @ w["v"].T).view(b, s, n_kv, hd)
        k, v = (t.repeat_interleave(n_heads // n_kv, dim=2) for t in (k, v))
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))
        att = torch.softmax(q @ k.transpose(-1, -2) / hd ** 0.5 + mask, dim=-1) @ v
        h = h + att.transpose(1, 2).reshape(b, s, n_heads * hd) @ w["o"].T
        x = norm(h, w["ffn_norm"])
        h = h + (torch.nn.functional.silu(x @ w["gate"].T) * (x @ w["up"].T)) @ w["down"].T
    return norm(h, weights["norm"]) @ weights["head"].T


def meta_forward(sd: dict, params: dict, ids: "torch.Tensor") -> "torch.Tensor":
    """Meta's reference Llama forward (model.py: complex rotary on interleaved pairs) on a Meta
    checkpoint. Proves the permutation's meaning, not only that it repeats the conversion script."""
    names = {"tok_embeddings.weight": "embed", "norm.weight": "norm", "output.weight": "head"}
    per_layer = {"attention_norm": "attn_norm", "attention.wq": "q", "attention.wk": "k", "attention.wv": "v",
                 "attention.wo": "o", "ffn_norm": "ffn_norm", "feed_forward.w1": "gate",
                 "feed_forward.w3": "up", "feed_forward.w2": "down"}
    for i in range(params["n_layers"]):
        names.update({f"layers.{i}.{k}.weight": f"{i}.{v}" for k, v in per_layer.items()})
    return decoder_forward(ids, {v: sd[k] for k, v in names.items()}, params["n_layers"], params["n_heads"],
                           params.get("n_kv_heads", params["n_heads"]), params["norm_eps"], interleaved=True)


def meta_params(cfg) -> dict:
    """params.json as Meta ships it beside consolidated.00.pth (n_kv_heads only for GQA models)."""
    params = {"dim": cfg.hidden_size, "n_layers": cfg.num_hidden_layers, "n_heads": cfg.num_attention_heads,
              "norm_eps": cfg.rms_norm_eps, "vocab_size": cfg.vocab_size}
    if cfg.num_key_value_heads != cfg.num_attention_heads:
        params["n_kv_heads"] = cfg.num_key_value_heads
    return params


@pytest.fixture(params=sorted(LLAMA_SIZES), scope="module")
def llama(request, tmp_path_factory):
    """A saved random LlamaForCausalLM: (model, its directory)."""
    where = tmp_path_factory.mktemp(f"llama-{request.param}")
    cfg = transformers.LlamaConfig(**COMMON, **LLAMA_SIZES[request.param])
    return build(transformers.LlamaForCausalLM, cfg, seed=sorted(LLAMA_SIZES).index(request.param), where=where), where


def test_llama_hf_to_meta_inverts_the_conversion_script_and_keeps_logits(llama, tmp_path):
    model, src = llama
    cfg = model.config
    meta = convert("llama_hf_to_meta.map", src / "model.safetensors", src / "config.json", tmp_path / "meta")

    hf = load_file(src / "model.safetensors")
    assert ("lm_head.weight" in hf) == (not cfg.tie_word_embeddings)  # tied: the copy made the head
    # The conversion script turns the output back into exactly the HF checkpoint.
    params = meta_params(cfg)
    assert_same_tensors(script_meta_to_hf(meta, params), dict(model.state_dict()))
    # Meaning, not only layout: Meta's own forward on the converted weights gives HF's logits.
    # The two compute rotary differently (complex products vs rotate_half), hence the tolerance.
    assert max_diff(meta_forward(meta, params, tokens(cfg.vocab_size)), logits(model, cfg.vocab_size)) < 1e-5


def test_llama_meta_to_hf_matches_the_conversion_script_and_keeps_logits(llama, tmp_path):
    model, src = llama
    cfg = model.config
    # Meta's files: consolidated.00.pth (a torch zip) and params.json.
    meta, params = random_meta(cfg, seed=21), meta_params(cfg)
    torch.save(meta, tmp_path / "consolidated.00.pth")
    (tmp_path / "params.json").write_text(json.dumps(params))
    hf = convert("llama_meta_to_hf.map", tmp_path / "consolidated.00.pth", tmp_path / "params.json",
                 tmp_path / "model.safetensors")

    assert_same_tensors(hf, script_meta_to_hf(meta, params))
    converted = load_hf(transformers.LlamaForCausalLM, src, tmp_path / "model.safetensors")
    assert max_diff(logits(converted, cfg.vocab_size), meta_forward(meta, params, tokens(cfg.vocab_size))) < 1e-5


def test_llama_hf_to_meta_to_hf_is_exact(llama, tmp_path):
    """Both specs in a row, through Meta's own file format (a torch zip written by mapspec),
    give back every tensor bit for bit, the head included (a tied model gets its embedding back
    as head), and the same logits."""
    model, src = llama
    cfg = model.config
    convert("llama_hf_to_meta.map", src / "model.safetensors", src / "config.json", tmp_path / "meta")
    hf = convert("llama_meta_to_hf.map", tmp_path / "meta", tmp_path / "meta" / "params.json",
                 tmp_path / "model.safetensors")
    assert_same_tensors(hf, dict(model.state_dict()))
    back = load_hf(transformers.LlamaForCausalLM, src, tmp_path / "model.safetensors")
    assert max_diff(logits(back, cfg.vocab_size), logits(model, cfg.vocab_size)) == 0


def test_llama_meta_to_hf_drops_rope_freqs(tmp_path):
    cfg = transformers.LlamaConfig(**COMMON, **LLAMA_SIZES["h6-kv1"])
    meta = random_meta(cfg, seed=3)
    meta["rope.freqs"] = torch.ones(cfg.hidden_size // cfg.num_attention_heads // 2)
    torch.save(meta, tmp_path / "consolidated.00.pth")
    (tmp_path / "params.json").write_text(json.dumps(meta_params(cfg)))
    hf = convert("llama_meta_to_hf.map", tmp_path / "consolidated.00.pth", tmp_path / "params.json", tmp_path / "out.safetensors")
    assert "rope.freqs" not in hf and len(hf) == len(meta) - 1


# ---------------------------------------------------------------- the head-count bug


def test_wrong_head_count_fails_at_compile_time_where_shapes_can_tell(tmp_path):
    """The issue's silent-wrong case: q/k permuted with another model's head count. The config
    gives the right count; a wrong `-p` is refused before any tensor is read, whenever another
    size pins it: config.json's head_dim (q rows = heads * head_dim) or the key/value head
    count (k rows = kv heads * hidden // heads)."""
    cfg = transformers.LlamaConfig(**COMMON, **LLAMA_SIZES["h4-kv2-tied"])
    src = tmp_path / "src"
    build(transformers.LlamaForCausalLM, cfg, seed=0, where=src)
    ckpt, config = src / "model.safetensors", src / "config.json"
    refused("llama_hf_to_meta.map", ckpt, config, "n_heads=8", code=1,
            rule=("self_attn.q_proj.weight ->", "self_attn.o_proj.weight ->"))
    # Without head_dim in config.json, the key/value rows still tell: 2 * (32 // 8) != 16.
    bare = json.loads(config.read_text())
    del bare["head_dim"]
    (tmp_path / "bare.json").write_text(json.dumps(bare))
    refused("llama_hf_to_meta.map", ckpt, tmp_path / "bare.json", "n_heads=8", code=1,
            rule="self_attn.k_proj.weight ->")
    # The other direction: Meta's params.json has n_kv_heads for a GQA model.
    torch.save(random_meta(cfg, seed=4), tmp_path / "consolidated.00.pth")
    (tmp_path / "params.json").write_text(json.dumps(meta_params(cfg)))
    refused("llama_meta_to_hf.map", tmp_path / "consolidated.00.pth", tmp_path / "params.json", "n_heads=8",
            code=1, rule="attention.wk.weight ->")


def test_the_issues_case_four_heads_assumed_for_an_eight_head_model_is_refused(tmp_path):
    """An 8-head model whose shapes equal a 4-head one's: `-p n_heads=4` (what the old spec's
    `view(4, 2, 8, 64)` hard-coded) is refused before the checkpoint is looked at, since
    num_key_value_heads (8) still comes from config.json and 4 heads cannot share 8 key/value
    heads. Only overriding every size by hand (`-p n_heads=4 -p n_kv=4` with no head_dim
    anywhere) goes unnoticed: docs/llm-specs.md."""
    cfg = transformers.LlamaConfig(**COMMON, **LLAMA_SIZES["h8-kv8"])
    src = tmp_path / "src"
    build(transformers.LlamaForCausalLM, cfg, seed=2, where=src)
    msg = refused("llama_hf_to_meta.map", src / "model.safetensors", src / "config.json", "n_heads=4", code=2,
                  rule="assert n_heads % n_kv == 0")
    assert "num_attention_heads must be a multiple of num_key_value_heads" in msg


def test_a_missing_head_count_is_a_compile_error_naming_it(tmp_path):
    cfg = transformers.LlamaConfig(**COMMON, **LLAMA_SIZES["h4-kv2-tied"])
    src = tmp_path / "src"
    build(transformers.LlamaForCausalLM, cfg, seed=0, where=src)
    (tmp_path / "empty.json").write_text("{}")
    msg = refused("llama_hf_to_meta.map", src / "model.safetensors", tmp_path / "empty.json", code=2,
                  rule="param n_heads from")
    assert "n_heads" in msg


# ---------------------------------------------------------------- GPT-2 -> separate q/k/v Linear


class _FusedQKV(torch.nn.Module):
    """Stands where GPT2Attention calls c_attn: the three projections' outputs side by side."""

    def __init__(self, attn):
        super().__init__()
        self.__dict__["attn"] = attn  # not a submodule: the weights live in attn.{q,k,v}_proj

    def forward(self, x):
        a = self.attn
        return torch.cat([a.q_proj(x), a.k_proj(x), a.v_proj(x)], dim=-1)


def _linear(n_in: int, n_out: int) -> "torch.nn.Linear":
    return torch.nn.Linear(n_in, n_out)


def gpt2_qkv(config) -> "torch.nn.Module":
    """transformers' GPT2LMHeadModel with every Conv1D replaced by nn.Linear and c_attn by
    separate q/k/v projections; everything else (attention, norms, MLP, head) is GPT-2's own."""
    model = transformers.GPT2LMHeadModel(config)
    d = config.n_embd
    for block in model.transformer.h:
        attn, mlp = block.attn, block.mlp
        attn.q_proj, attn.k_proj, attn.v_proj = _linear(d, d), _linear(d, d), _linear(d, d)
        attn.c_attn = _FusedQKV(attn)
        attn.c_proj = _linear(d, d)
        mlp.c_fc = _linear(d, mlp.c_fc.nf)
        mlp.c_proj = _linear(mlp.c_proj.nx, d)
    return model.eval()


GPT2_SIZES = {"e32-h4": dict(n_embd=32, n_head=4), "e48-h6-inner80": dict(n_embd=48, n_head=6, n_inner=80)}


@pytest.mark.parametrize("size", sorted(GPT2_SIZES))
def test_gpt2_to_qkv(size, tmp_path):
    cfg = transformers.GPT2Config(vocab_size=96, n_positions=32, n_layer=2, bos_token_id=0, eos_token_id=1,
                                  **GPT2_SIZES[size])
    model = build(transformers.GPT2LMHeadModel, cfg, seed=11, where=tmp_path / "gpt2")
    src = load_file(tmp_path / "gpt2" / "model.safetensors")
    assert "lm_head.weight" not in src  # tied: save_pretrained leaves the head out
    out = convert("gpt2_to_qkv.map", tmp_path / "gpt2" / "model.safetensors", tmp_path / "gpt2" / "config.json",
                  tmp_path / "qkv.safetensors")

    expected = dict(src, **{"lm_head.weight": src["transformer.wte.weight"]})
    for i in range(cfg.n_layer):
        p = f"transformer.h.{i}."
        qkv_w = expected.pop(p + "attn.c_attn.weight").T.split(cfg.n_embd, dim=0)
        qkv_b = expected.pop(p + "attn.c_attn.bias").split(cfg.n_embd, dim=0)
        for name, w, b in zip(("q_proj", "k_proj", "v_proj"), qkv_w, qkv_b):
            expected[f"{p}attn.{name}.weight"], expected[f"{p}attn.{name}.bias"] = w.contiguous(), b
        for conv in ("attn.c_proj", "mlp.c_fc", "mlp.c_proj"):
            expected[f"{p}{conv}.weight"] = expected[f"{p}{conv}.weight"].T.contiguous()
    assert_same_tensors(out, expected)

    target = gpt2_qkv(cfg)
    target.load_state_dict(out, strict=True)
    assert target.lm_head.weight.data_ptr() == target.transformer.wte.weight.data_ptr()
    # Linear on the transposed weight and three projections instead of one fused Conv1D give
    # bit-identical logits on CPU (measured), so nothing looser is allowed.
    assert max_diff(logits(target, cfg.vocab_size), logits(model, cfg.vocab_size)) == 0


# ---------------------------------------------------------------- Llama <-> Phi-3 fused


def same_sizes(config_cls, cfg):
    """A configuration of another Llama-like family with the sizes of `cfg`."""
    keys = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
            "num_key_value_heads", "max_position_embeddings", "rms_norm_eps", "tie_word_embeddings",
            "bos_token_id", "eos_token_id", "pad_token_id")
    return config_cls(**{k: getattr(cfg, k) for k in keys})


def test_phi3_fuses_llama_and_splits_back(llama, tmp_path):
    model, src = llama
    cfg = model.config
    phi3 = convert("phi3_fused.map", src / "model.safetensors", src / "config.json", tmp_path / "phi3.safetensors")

    hf = load_file(src / "model.safetensors")
    expected = dict(hf)
    for i in range(cfg.num_hidden_layers):
        p = f"model.layers.{i}."
        expected[p + "self_attn.qkv_proj.weight"] = torch.cat(
            [expected.pop(f"{p}self_attn.{x}_proj.weight") for x in "qkv"], dim=0)
        expected[p + "mlp.gate_up_proj.weight"] = torch.cat(
            [expected.pop(f"{p}mlp.{x}_proj.weight") for x in ("gate", "up")], dim=0)
    assert_same_tensors(phi3, expected)

    # Phi-3 slices the fused outputs where Llama computes three products: same values,
    # different GEMM shapes, so float32 rounding may differ in the last bits.
    phi3_dir = tmp_path / "phi3"
    same_sizes(transformers.Phi3Config, cfg).save_pretrained(phi3_dir)
    fused = load_hf(transformers.Phi3ForCausalLM, phi3_dir, tmp_path / "phi3.safetensors")
    assert max_diff(logits(fused, cfg.vocab_size), logits(model, cfg.vocab_size)) < 1e-5

    # Back: the same spec splits a Phi-3 checkpoint (written by Phi-3's save_pretrained) into Llama's.
    fused.save_pretrained(phi3_dir)
    llama_again = convert("phi3_fused.map", phi3_dir / "model.safetensors", phi3_dir / "config.json",
                          tmp_path / "llama.safetensors")
    assert_same_tensors(llama_again, hf)
    back = load_hf(transformers.LlamaForCausalLM, src, tmp_path / "llama.safetensors")
    assert max_diff(logits(back, cfg.vocab_size), logits(model, cfg.vocab_size)) == 0


def test_phi3_refuses_a_llama_with_biases_phi3_has_no_place_for():
    cfg = transformers.LlamaConfig(**COMMON, **LLAMA_SIZES["h4-kv2-tied"], attention_bias=True)
    keys = shapes(transformers.LlamaForCausalLM, cfg)
    with pytest.raises(ConversionError, match="8 source keys are not matched") as refusal:
        compile_spec(parse_spec(SPECS / "phi3_fused.map"), keys, config=cfg.to_dict())
    assert "self_attn" in str(refusal.value) and "bias" in str(refusal.value)


def test_phi3_split_refuses_a_wrong_head_count(llama, tmp_path):
    model, src = llama
    cfg = model.config
    convert("phi3_fused.map", src / "model.safetensors", src / "config.json", tmp_path / "phi3.safetensors")
    wrong = f"n_kv={cfg.num_attention_heads // 2 if cfg.num_key_value_heads == 1 else 1}"
    refused("phi3_fused.map", tmp_path / "phi3.safetensors", src / "config.json", wrong, code=1,
            rule="self_attn.qkv_proj.weight ->")


# ---------------------------------------------------------------- Mixtral experts


MIXTRAL_SIZES = {
    "e3-h4-kv2": dict(hidden_size=32, intermediate_size=24, num_attention_heads=4, num_key_value_heads=2,
                      num_local_experts=3, num_experts_per_tok=2),
    "e4-h6-kv1": dict(hidden_size=48, intermediate_size=16, num_attention_heads=6, num_key_value_heads=1,
                      num_local_experts=4, num_experts_per_tok=2),
}


@pytest.mark.parametrize("size", sorted(MIXTRAL_SIZES))
def test_mixtral_experts_both_directions_match_transformers_own_conversion(size, tmp_path):
    cfg = transformers.MixtralConfig(**COMMON, **MIXTRAL_SIZES[size])
    model = build(transformers.MixtralForCausalLM, cfg, seed=5, where=tmp_path / "legacy")
    legacy = load_file(tmp_path / "legacy" / "model.safetensors")
    # transformers 5 keeps stacked experts in memory and writes per-expert ones.
    assert f"model.layers.0.block_sparse_moe.experts.{cfg.num_local_experts - 1}.w3.weight" in legacy
    assert "model.layers.0.mlp.experts.gate_up_proj" in model.state_dict()

    # Per-expert -> stacked equals what from_pretrained's own conversion builds in memory.
    stacked = convert("mixtral_fused_experts.map", tmp_path / "legacy" / "model.safetensors",
                      tmp_path / "legacy" / "config.json", tmp_path / "stacked.safetensors")
    loaded, info = transformers.MixtralForCausalLM.from_pretrained(tmp_path / "legacy", output_loading_info=True)
    assert not any(info.values()), info
    assert_same_tensors(stacked, dict(loaded.state_dict()))
    fresh = transformers.MixtralForCausalLM(cfg).eval()
    fresh.load_state_dict(stacked, strict=True)
    assert max_diff(logits(fresh, cfg.vocab_size), logits(model, cfg.vocab_size)) == 0

    # Stacked -> per-expert equals what save_pretrained's own reverse conversion writes.
    save_file(dict(model.state_dict()), tmp_path / "in-memory.safetensors")
    per_expert = convert("mixtral_fused_experts.map", tmp_path / "in-memory.safetensors",
                         tmp_path / "legacy" / "config.json", tmp_path / "per-expert.safetensors")
    assert_same_tensors(per_expert, legacy)
    back = load_hf(transformers.MixtralForCausalLM, tmp_path / "legacy", tmp_path / "per-expert.safetensors")
    assert max_diff(logits(back, cfg.vocab_size), logits(model, cfg.vocab_size)) == 0


def test_mixtral_missing_expert_is_a_compile_error_naming_it(tmp_path):
    cfg = transformers.MixtralConfig(**COMMON, **MIXTRAL_SIZES["e3-h4-kv2"])
    build(transformers.MixtralForCausalLM, cfg, seed=5, where=tmp_path / "legacy")
    legacy = load_file(tmp_path / "legacy" / "model.safetensors")
    del legacy["model.layers.1.block_sparse_moe.experts.2.w3.weight"]
    save_file(legacy, tmp_path / "holed.safetensors")
    msg = refused("mixtral_fused_experts.map", tmp_path / "holed.safetensors", tmp_path / "legacy" / "config.json",
                  code=1, rule="experts.{e:int}.{w:w1|w3}.weight ->")
    assert "model.layers.1.block_sparse_moe.experts.2.w3.weight" in msg
    # A wrong expert count from the command line is refused by the stacked shape.
    refused("mixtral_fused_experts.map", tmp_path / "legacy" / "model.safetensors", tmp_path / "legacy" / "config.json",
            "n_experts=4", code=1,
            rule=("experts.{e:int}.{w:w1|w3}.weight ->", "experts.{e:int}.w2.weight ->",
                  "block_sparse_moe.gate.weight ->"))


# ---------------------------------------------------------------- Llama -> Megatron-core


def megatron_qkv(q: "torch.Tensor", k: "torch.Tensor", v: "torch.Tensor", n_heads: int, n_kv: int) -> "torch.Tensor":
    """Megatron-core's linear_qkv rows, built head by head: for each key/value group g, its
    query heads g*r .. g*r+r-1, then key head g, then value head g (r = n_heads // n_kv)."""
    hd = q.shape[0] // n_heads
    head = lambda w, h: w[h * hd:(h + 1) * hd]  # noqa: E731
    r = n_heads // n_kv
    rows = []
    for g in range(n_kv):
        rows += [head(q, g * r + j) for j in range(r)] + [head(k, g), head(v, g)]
    return torch.cat(rows, dim=0)


def test_llama_to_megatron_groups_qkv_per_kv_head(llama, tmp_path):
    model, src = llama
    cfg = model.config
    out = convert("llama_to_megatron.map", src / "model.safetensors", src / "config.json", tmp_path / "mcore")
    hf = load_file(src / "model.safetensors")
    expected = {"embedding.word_embeddings.weight": hf["model.embed_tokens.weight"],
                "decoder.final_layernorm.weight": hf["model.norm.weight"]}
    if "lm_head.weight" in hf:  # a tied model shares the embedding: Megatron has no output_layer
        expected["output_layer.weight"] = hf["lm_head.weight"]
    for i in range(cfg.num_hidden_layers):
        p, m = f"model.layers.{i}.", f"decoder.layers.{i}."
        expected[m + "self_attention.linear_qkv.layer_norm_weight"] = hf[p + "input_layernorm.weight"]
        expected[m + "self_attention.linear_qkv.weight"] = megatron_qkv(
            *(hf[f"{p}self_attn.{x}_proj.weight"] for x in "qkv"), cfg.num_attention_heads, cfg.num_key_value_heads)
        expected[m + "self_attention.linear_proj.weight"] = hf[p + "self_attn.o_proj.weight"]
        expected[m + "mlp.linear_fc1.layer_norm_weight"] = hf[p + "post_attention_layernorm.weight"]
        expected[m + "mlp.linear_fc1.weight"] = torch.cat([hf[p + "mlp.gate_proj.weight"], hf[p + "mlp.up_proj.weight"]])
        expected[m + "mlp.linear_fc2.weight"] = hf[p + "mlp.down_proj.weight"]
    assert_same_tensors(out, expected)
    # Megatron's reading of its layout computes the same model (attention written out here, not
    # transformers' kernels: float32 rounding only).
    assert max_diff(megatron_forward(out, cfg, tokens(cfg.vocab_size)), logits(model, cfg.vocab_size)) < 1e-5


def megatron_forward(sd: dict, cfg, ids: "torch.Tensor") -> "torch.Tensor":
    """A Megatron-core GPT forward on its own checkpoint: linear_qkv's rows split as
    SelfAttention.get_query_key_value_tensors splits its output (per query group:
    [n_heads // n_kv query heads, key, value]), rotate_half rotary, swiglu chunking linear_fc1
    in two (gate first)."""
    nh, ng = cfg.num_attention_heads, cfg.num_key_value_heads
    hd = cfg.hidden_size // nh
    weights = {"embed": sd["embedding.word_embeddings.weight"], "norm": sd["decoder.final_layernorm.weight"],
               "head": sd.get("output_layer.weight", sd["embedding.word_embeddings.weight"])}
    for i in range(cfg.num_hidden_layers):
        m = f"decoder.layers.{i}."
        groups = sd[m + "self_attention.linear_qkv.weight"].view(ng, (nh // ng + 2) * hd, cfg.hidden_size)
        q, k, v = (t.reshape(-1, cfg.hidden_size) for t in groups.split([nh // ng * hd, hd, hd], dim=1))
        gate, up = sd[m + "mlp.linear_fc1.weight"].chunk(2, dim=0)
        weights.update({f"{i}.q": q, f"{i}.k": k, f"{i}.v": v, f"{i}.gate": gate, f"{i}.up": up,
                        f"{i}.o": sd[m + "self_attention.linear_proj.weight"],
                        f"{i}.down": sd[m + "mlp.linear_fc2.weight"],
                        f"{i}.attn_norm": sd[m + "self_attention.linear_qkv.layer_norm_weight"],
                        f"{i}.ffn_norm": sd[m + "mlp.linear_fc1.layer_norm_weight"]})
    return decoder_forward(ids, weights, cfg.num_hidden_layers, nh, ng, cfg.rms_norm_eps, interleaved=False)


def test_llama_to_megatron_refuses_a_wrong_group_count(tmp_path):
    cfg = transformers.LlamaConfig(**COMMON, **LLAMA_SIZES["h6-kv1"])
    build(transformers.LlamaForCausalLM, cfg, seed=1, where=tmp_path / "src")
    refused("llama_to_megatron.map", tmp_path / "src" / "model.safetensors", tmp_path / "src" / "config.json",
            "n_kv=3", code=1, rule="self_attn.{p:q_proj|k_proj|v_proj}.weight ->")


# ---------------------------------------------------------------- published sizes, no tensors


PUBLISHED = Path(__file__).resolve().parent / "data" / "configs"


def published(name: str) -> "transformers.PretrainedConfig":
    """A published model's configuration (tests/data/configs holds the sizes from its config.json)."""
    data = json.loads((PUBLISHED / name).read_text())
    data.pop("architectures")
    return transformers.AutoConfig.for_model(data.pop("model_type"), **data)


def shapes(make, cfg) -> dict:
    """The tensor names and shapes of `make(cfg)`, built by transformers on the meta device: no
    memory used, nothing downloaded."""
    with torch.device("meta"):
        model = make(cfg)
    return {k: TensorInfo(tuple(v.shape), "bfloat16") for k, v in model.state_dict().items()}


def plan(spec: str, keys: dict, config: Path, target: dict | None = None):
    result = compile_spec(parse_spec(SPECS / spec), keys, config=config, target=target)
    if target is not None:
        assert result.target_report.ok, result.target_report.lines()
    return result.outputs()


def test_llama_specs_compile_at_llama3_8b_sizes():
    hf = shapes(transformers.LlamaForCausalLM, published("llama3-8b.json"))
    meta = plan("llama_hf_to_meta.map", hf, PUBLISHED / "llama3-8b.json")
    assert meta["0/layers.31.attention.wq.weight"].shape == (4096, 4096)  # rank 0 of 1
    assert meta["0/layers.31.attention.wk.weight"].shape == (1024, 4096)
    assert len(meta) == len(hf) == 291
    # Back with Meta's params.json, checked against the real model's names and shapes.
    plan("llama_meta_to_hf.map", meta, PUBLISHED / "llama3-8b-params.json", target=hf)
    mcore = plan("llama_to_megatron.map", hf, PUBLISHED / "llama3-8b.json")
    assert mcore["0/0/decoder.layers.0.self_attention.linear_qkv.weight"].shape == ((32 + 2 * 8) * 128, 4096)
    assert mcore["0/0/decoder.layers.0.mlp.linear_fc1.weight"].shape == (2 * 14336, 4096)
    assert len(mcore) == 2 + 32 * 6 + 1


def test_phi3_spec_compiles_at_phi3_mini_sizes_both_ways():
    cfg = published("phi3-mini.json")
    phi3 = shapes(transformers.Phi3ForCausalLM, cfg)
    llama = shapes(transformers.LlamaForCausalLM, same_sizes(transformers.LlamaConfig, cfg))
    plan("phi3_fused.map", llama, PUBLISHED / "phi3-mini.json", target=phi3)
    plan("phi3_fused.map", phi3, PUBLISHED / "phi3-mini.json", target=llama)


def test_mixtral_spec_compiles_at_mixtral_8x7b_sizes_both_ways():
    stacked = shapes(transformers.MixtralForCausalLM, published("mixtral-8x7b.json"))
    per_expert = plan("mixtral_fused_experts.map", stacked, PUBLISHED / "mixtral-8x7b.json")
    assert per_expert["model.layers.31.block_sparse_moe.experts.7.w2.weight"].shape == (4096, 14336)
    assert sum(".experts." in k for k in per_expert) == 32 * 8 * 3
    plan("mixtral_fused_experts.map", per_expert, PUBLISHED / "mixtral-8x7b.json", target=stacked)


def test_gpt2_spec_compiles_at_gpt2_small_sizes():
    cfg = published("gpt2.json")
    source = shapes(transformers.GPT2LMHeadModel, cfg)
    del source["lm_head.weight"]  # tied: not in the checkpoint
    # Older transformers versions saved the causal-mask buffers too.
    for i in range(cfg.n_layer):
        source[f"transformer.h.{i}.attn.bias"] = TensorInfo((1, 1, 1024, 1024), "float32")
        source[f"transformer.h.{i}.attn.masked_bias"] = TensorInfo((), "float32")
    target = shapes(gpt2_qkv, cfg)
    plan("gpt2_to_qkv.map", source, PUBLISHED / "gpt2.json", target=target)
