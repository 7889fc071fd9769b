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
    target = _save_state(resnet(layers, 9), tmp / f"resnet{depth}-torch.pt")
    if form == "save_parameters":
        source, epoch = tmp / f"gluon{depth}.params", None
        net.save_parameters(str(source))
    else:
        source, epoch = tmp / f"gluon{depth}", 0
        net.export(str(source), 0)
    return Case(f"gluon resnet{depth} {form} -> torch", source, str(target), SPECS / "gluon_resnet.map", epoch)


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


CASES: dict[str, Callable[[Path], Case]] = {
    "dpn68": dpn,
    "gluon18-params": lambda tmp: gluon_resnet(tmp, 18, "save_parameters"),
    "gluon18-export": lambda tmp: gluon_resnet(tmp, 18, "export"),
    "gluon34-params": lambda tmp: gluon_resnet(tmp, 34, "save_parameters"),
    "gluon34-export": lambda tmp: gluon_resnet(tmp, 34, "export"),
    "dataparallel-fp16": dataparallel,
    "encoder-qkv": encoder,
    "synthetic-1000": synthetic,
}
