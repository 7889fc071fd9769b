"""Checkpoint pairs for `mapspec draft`, written by the real libraries with fixed seeds, each
with the hand-written spec that says what the right mapping is. Used by tests/test_draft.py
and bench/draft_bench.py."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

REPO = Path(__file__).resolve().parent.parent
SPECS = REPO / "specs"
HERE = Path(__file__).resolve().parent


@dataclass
class Case:
    name: str
    source: Path
    target: str            # a checkpoint path or a model factory
    spec: Path | None      # the hand-written spec: its plan is the right mapping
    epoch: int | None = None
    hand: str | None = None  # without `spec`: a hand-written spec's text, to count its rules


def _save_state(model, path: Path) -> Path:
    import torch

    torch.save(model.state_dict(), path)
    return path


def dpn(tmp: Path) -> Case:
    from dpn_models import VARIANTS, torch_dpn

    target = _save_state(torch_dpn(VARIANTS["dpn68"]), tmp / "dpn68-torch.pt")
    return Case("mxnet dpn68 -> torch", REPO / "examples" / "dpn68-tiny", str(target), SPECS / "dpn.map", 0)


def gluon_resnet(tmp: Path, depth: int, form: str) -> Case:
    import mxnet as mx
    from mxnet.gluon.model_zoo import vision

    from models import resnet

    net = getattr(vision, f"resnet{depth}_v1")(classes=9)
    net.initialize(mx.init.Xavier())
    mx.random.seed(depth)
    net.hybridize()
    net(mx.nd.zeros((1, 3, 64, 64)))
    layers = (2, 2, 2, 2) if depth == 18 else (3, 4, 6, 3)
    # Gluon's BottleneckV1 strides in its first 1x1 conv, and that conv and the last carry a
    # bias torchvision's lack: 32 source tensors with no partner at ResNet-50
    target = _save_state(resnet(layers, 9, bottleneck=depth >= 50, stride_in_1x1=True),
                         tmp / f"resnet{depth}-torch.pt")
    spec = SPECS / "gluon_resnet.map" if depth < 50 else HERE / "data" / "draft" / "gluon_resnet50_to_torch.map"
    if form == "save_parameters":
        source, epoch = tmp / f"gluon{depth}.params", None
        net.save_parameters(str(source))
    else:
        source, epoch = tmp / f"gluon{depth}", 0
        net.export(str(source), 0)
    return Case(f"gluon resnet{depth} {form} -> torch", source, str(target), spec, epoch)


def resnet50_biases(tmp: Path) -> Case:
    """torchvision's ResNet-50 with a bias on each bottleneck's first and last conv (as Gluon's
    has; random values) -> the timm-like layout without them, both sorted: 32 source tensors
    have no partner."""
    import torch

    from models import resnet

    state = resnet((3, 4, 6, 3), 10, bottleneck=True).state_dict()
    g = torch.Generator().manual_seed(5)
    src = dict(state)
    for k, v in state.items():
        if k.startswith("layer") and k.endswith(("conv1.weight", "conv3.weight")):
            src[k[:-len("weight")] + "bias"] = torch.randn(v.shape[0], generator=g)
    source = _save_sorted(src, tmp / "resnet50-biases.safetensors")
    target = _save_sorted({timm_names(k): v for k, v in state.items()}, tmp / "resnet50-timm.safetensors")
    return Case("resnet50 + conv biases -> timm-like, sorted", source, str(target),
                HERE / "data" / "draft" / "resnet50_biases_to_timm.map")


def dataparallel(tmp: Path) -> Case:
    import torch

    from models import resnet

    model = resnet((2, 1, 1, 1), 10)
    dp = torch.nn.DataParallel(model).half()
    source = tmp / "dp-fp16.pt"
    torch.save(dp.state_dict(), source)
    target = _save_state(resnet((2, 1, 1, 1), 10), tmp / "bare.pt")
    return Case("DataParallel fp16 -> bare fp32", source, str(target), SPECS / "dataparallel_fp16.map")


def encoder(tmp: Path) -> Case:
    """torch's TransformerEncoder (one fused in_proj for q, k, v) -> BERT's encoder (separate
    query/key/value)."""
    from draft_models import torch_encoder

    source = _save_state(torch_encoder(), tmp / "torch-encoder.pt")
    return Case("torch encoder (fused qkv) -> BERT encoder", source, "draft_models:bert_encoder()",
                HERE / "data" / "draft" / "torch_encoder_to_bert.map")


def synthetic(tmp: Path, blocks: int = 67) -> Case:
    """About 1,000 keys: MXNet-style names (arg:/aux:, stage numbers from 1) -> a torch layout
    (stages from 0), with BN groups; both written by torch.save, which keeps their order."""
    rng = np.random.default_rng(0)
    src: dict[str, np.ndarray] = {}
    tgt: dict[str, np.ndarray] = {}

    def t(shape):
        return rng.standard_normal(shape).astype(np.float32)

    cin = 8
    for b in range(blocks):
        s, i = 1 + b // 16, b % 16
        c = 8 + 4 * s
        for u, (o, k) in enumerate(((c, 1), (c, 3), (cin + 2, 1))):
            w = t((o, cin if u == 0 else c, k, k))
            src[f"arg:stage{s}_unit{i}_conv{u}_weight"] = w
            tgt[f"stages.{s - 1}.blocks.{i}.conv{u}.weight"] = w
            for pm, pt in (("gamma", "weight"), ("beta", "bias")):
                v = t((o,))
                src[f"arg:stage{s}_unit{i}_bn{u}_{pm}"] = v
                tgt[f"stages.{s - 1}.blocks.{i}.bn{u}.{pt}"] = v
        cin += 2
        for u, (o, k) in enumerate(((c, 1), (c, 3), (cin, 1))):
            for pm, pt in (("moving_mean", "running_mean"), ("moving_var", "running_var")):
                v = t((o,))
                src[f"aux:stage{s}_unit{i}_bn{u}_{pm}"] = v
                tgt[f"stages.{s - 1}.blocks.{i}.bn{u}.{pt}"] = v
    import torch

    paths = []
    for name, data in (("synthetic-src.pt", src), ("synthetic-tgt.pt", tgt)):
        torch.save({k: torch.from_numpy(a) for k, a in data.items()}, tmp / name)
        paths.append(tmp / name)
    return Case(f"synthetic ({len(src)} keys)", paths[0], str(paths[1]), None)


def _save_sorted(state: dict, path: Path) -> Path:
    """safetensors, as save_pretrained writes it: the header lists tensors sorted by name."""
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    return path


def timm_names(key: str) -> str:
    """torchvision ResNet names -> a timm-like layout: a stem, stages from 0 holding blocks,
    each conv with its BatchNorm as one conv-norm unit, the classifier under a head."""
    import re

    key = re.sub(r"^conv1\.", "stem.conv.", key)
    key = re.sub(r"^bn1\.", "stem.bn.", key)
    key = re.sub(r"^fc\.", "head.fc.", key)
    m = re.match(r"^layer(\d+)\.(\d+)\.(.*)$", key)
    if m:
        rest = m[3]
        rest = re.sub(r"^conv(\d)\.", r"conv\1.conv.", rest)
        rest = re.sub(r"^bn(\d)\.", r"conv\1.bn.", rest)
        rest = rest.replace("downsample.0.", "downsample.conv.").replace("downsample.1.", "downsample.bn.")
        key = f"stages.{int(m[1]) - 1}.blocks.{m[2]}.{rest}"
    return key


def resnet_timm(tmp: Path) -> Case:
    """torchvision-layout ResNet-18 -> the timm-like layout, both sorted (safetensors): stage
    and block numbers are what tells same-shape convs and BatchNorms apart."""
    from models import resnet

    state = resnet((2, 2, 2, 2), 10).state_dict()
    source = _save_sorted(state, tmp / "resnet18-tv.safetensors")
    target = _save_sorted({timm_names(k): v for k, v in state.items()}, tmp / "resnet18-timm.safetensors")
    return Case("resnet18 torchvision -> timm-like, sorted", source, str(target), HERE / "data" / "draft" /
                "resnet_to_timm.map")


def gpt2_names(key: str) -> str:
    """transformers' GPT-2 names -> another scheme: blocks counted from 1, norm1/norm2,
    attention.qkv/out, ffn.fc1/fc2, embed.tokens/positions, final_norm."""
    import re

    key = key.replace("transformer.wte.", "embed.tokens.").replace("transformer.wpe.", "embed.positions.")
    key = key.replace("transformer.ln_f.", "final_norm.")
    m = re.match(r"^transformer\.h\.(\d+)\.(.*)$", key)
    if m:
        rest = re.sub(r"^ln_(\d)\.", r"norm\1.", m[2])
        for a, b in (("attn.c_attn.", "attention.qkv."), ("attn.c_proj.", "attention.out."),
                     ("mlp.c_fc.", "ffn.fc1."), ("mlp.c_proj.", "ffn.fc2.")):
            rest = rest.replace(a, b)
        key = f"blocks.{int(m[1]) + 1}.{rest}"
    return key


def gpt2(tmp: Path) -> Case:
    import torch
    from safetensors.torch import load_file
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=4, n_head=4, n_positions=40, vocab_size=64,
                                       bos_token_id=0, eos_token_id=0))
    model.save_pretrained(tmp / "gpt2")
    source = tmp / "gpt2" / "model.safetensors"
    state = load_file(str(source))
    target = _save_sorted({gpt2_names(k): v for k, v in state.items()}, tmp / "gpt2-renamed.safetensors")
    return Case("gpt2 (save_pretrained) -> renamed, blocks +1", source, str(target),
                HERE / "data" / "draft" / "gpt2_renamed.map")


LLAMA = dict(hidden_size=32, intermediate_size=48, num_hidden_layers=3, num_attention_heads=4,
             num_key_value_heads=2, vocab_size=64, tie_word_embeddings=False)


def meta_llama_state(hf: dict) -> dict:
    """The Meta layout (tok_embeddings, layers.N.attention.wq/wk/wv/wo, feed_forward.w1/w2/w3,
    attention_norm, ffn_norm, norm, output) in its module order, holding the HF tensors by
    name (the rotary q/k permutation a real conversion applies is left out: no key shows it)."""
    out = {"tok_embeddings.weight": hf["model.embed_tokens.weight"]}
    for i in range(LLAMA["num_hidden_layers"]):
        h = f"model.layers.{i}."
        for m in "qkvo":
            out[f"layers.{i}.attention.w{m}.weight"] = hf[h + f"self_attn.{m}_proj.weight"]
        for w, m in (("w1", "gate_proj"), ("w2", "down_proj"), ("w3", "up_proj")):
            out[f"layers.{i}.feed_forward.{w}.weight"] = hf[h + f"mlp.{m}.weight"]
        out[f"layers.{i}.attention_norm.weight"] = hf[h + "input_layernorm.weight"]
        out[f"layers.{i}.ffn_norm.weight"] = hf[h + "post_attention_layernorm.weight"]
    out["norm.weight"] = hf["model.norm.weight"]
    out["output.weight"] = hf["lm_head.weight"]
    return out


def llama(tmp: Path) -> Case:
    import torch
    from safetensors.torch import load_file
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(**LLAMA)).save_pretrained(tmp / "llama-hf")
    source = tmp / "llama-hf" / "model.safetensors"
    target = tmp / "consolidated.00.pth"
    torch.save(meta_llama_state(load_file(str(source))), target)
    return Case("llama HF (save_pretrained) -> Meta layout", source, str(target),
                HERE / "data" / "draft" / "llama_hf_to_meta.map")


def numbers_decide(tmp: Path) -> Case:
    """Two same-shape projections on each side, sorted, names alike but for the block numbers
    (1 and 2 against 0 and 1): only numbers tell them apart."""
    import torch

    g = torch.Generator().manual_seed(0)
    src = {f"blocks.{n}.{m}.weight": torch.randn(4, 4, generator=g) for n in (1, 2) for m in ("proj", "gate")}
    src["blocks.1.norm.weight"] = torch.randn(4, generator=g)
    src["blocks.2.norm.weight"] = torch.randn(4, generator=g)
    tgt = {f"layers.{int(k.split('.')[1]) - 1}.{k.split('.', 2)[2]}": v for k, v in src.items()}
    return Case("two same-shape candidates, numbers decide", _save_sorted(src, tmp / "nd-src.safetensors"),
                str(_save_sorted(tgt, tmp / "nd-tgt.safetensors")), None,
                hand="blocks.{n:int}.{r:**} -> layers.{n-1}.{r}")


STAGES = (20, 30, 24, 10)   # 84 blocks of 12 tensors, plus a stem and a head: 1,012 keys


def synthetic_sorted(tmp: Path) -> Case:
    """About 1,000 keys, both sorted: flat `layers.N` counting from 1 -> nested
    `stages.S.blocks.B`; the per-stage counts are readable only from the target's keys."""
    rng = np.random.default_rng(1)
    src: dict[str, np.ndarray] = {}
    tgt: dict[str, np.ndarray] = {}

    def t(*shape):
        return rng.standard_normal(shape).astype(np.float32)

    src["embed.weight"] = tgt["stem.embed.weight"] = t(50, 8)
    n = 0
    for s, count in enumerate(STAGES):
        w = 8 * (s + 1)
        for b in range(count):
            n += 1
            for m, shape in (("norm1", (w,)), ("attn.qkv", (3 * w, w)), ("attn.proj", (w, w)), ("norm2", (w,)),
                             ("mlp.fc1", (2 * w, w)), ("mlp.fc2", (w, 2 * w))):
                for leaf in ("weight", "bias"):
                    v = t(*(shape if leaf == "weight" else shape[:1]))
                    src[f"layers.{n}.{m}.{leaf}"] = v
                    tgt[f"stages.{s}.blocks.{b}.{m}.{leaf}"] = v
    src["head.weight"] = tgt["head.fc.weight"] = t(10, 8 * len(STAGES))
    import torch

    paths = [_save_sorted({k: torch.from_numpy(a) for k, a in d.items()}, tmp / name)
             for name, d in (("sorted-src.safetensors", src), ("sorted-tgt.safetensors", tgt))]
    stage = " ".join(f"{i + 1} = {s}" for i, s in enumerate(s for s, c in enumerate(STAGES) for _ in range(c)))
    block = " ".join(f"{i + 1} = {b}" for i, b in enumerate(b for c in STAGES for b in range(c)))
    hand = (f"embed.weight -> stem.embed.weight\nhead.weight -> head.fc.weight\n"
            f"layers.{{n in stage}}.{{r:**}} -> stages.{{stage[n]}}.blocks.{{block[n]}}.{{r}}\n"
            f"table stage {{ {stage} }}\ntable block {{ {block} }}\n")
    return Case(f"synthetic sorted, flat -> nested ({len(src)} keys)", paths[0], str(paths[1]), None, hand=hand)


CASES: dict[str, Callable[[Path], Case]] = {
    "dpn68": dpn,
    "gluon18-params": lambda tmp: gluon_resnet(tmp, 18, "save_parameters"),
    "gluon18-export": lambda tmp: gluon_resnet(tmp, 18, "export"),
    "gluon34-params": lambda tmp: gluon_resnet(tmp, 34, "save_parameters"),
    "gluon34-export": lambda tmp: gluon_resnet(tmp, 34, "export"),
    "gluon50-params": lambda tmp: gluon_resnet(tmp, 50, "save_parameters"),
    "resnet50-biases-timm": resnet50_biases,
    "dataparallel-fp16": dataparallel,
    "encoder-qkv": encoder,
    "synthetic-1000": synthetic,
    "resnet-timm-sorted": resnet_timm,
    "gpt2-renamed": gpt2,
    "llama-hf-meta": llama,
    "numbers-decide": numbers_decide,
    "synthetic-sorted-1000": synthetic_sorted,
}
