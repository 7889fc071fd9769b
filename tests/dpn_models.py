"""DPN in both frameworks, written here from the paper's architecture and the layout of the
original MXNet release (parameter names) and of the classic PyTorch port (module names).

Configurations keep each variant's block counts, `small` stem and `b` flag; widths are scaled
down so every variant builds, saves and runs in seconds on a CPU."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Config:
    small: bool
    init: int
    k_r: int
    groups: int
    k_sec: tuple[int, int, int, int]
    inc_sec: tuple[int, int, int, int]
    b: bool = False


# The real DPN-68 is Config(True, 10, 128, 32, (3, 4, 12, 3), (16, 32, 32, 64)); these keep the
# structure and shrink k_r, groups and the increments.
VARIANTS = {
    "dpn68": Config(True, 10, 16, 2, (3, 4, 12, 3), (4, 8, 8, 16)),
    "dpn68b": Config(True, 10, 16, 2, (3, 4, 12, 3), (4, 8, 8, 16), b=True),
    "dpn92": Config(False, 16, 12, 2, (3, 4, 20, 3), (4, 8, 6, 32)),
    "dpn98": Config(False, 24, 20, 2, (3, 6, 20, 3), (4, 8, 8, 32)),
    "dpn107": Config(False, 32, 24, 2, (4, 8, 20, 3), (5, 16, 16, 32)),
    "dpn131": Config(False, 32, 20, 2, (4, 8, 28, 3), (4, 8, 8, 32)),
}
NUM_CLASSES = 7


def _stages(cfg: Config):
    """(stage, block, in_chs, r, bw, inc, type) for every dual path block, and final channels."""
    bw_factor = 1 if cfg.small else 4
    in_chs = cfg.init
    out = []
    for si, (blocks, inc, width) in enumerate(zip(cfg.k_sec, cfg.inc_sec, (64, 128, 256, 512))):
        s = si + 2
        bw = width * bw_factor // 16  # widths scaled down 16x
        r = cfg.k_r * bw // (64 * bw_factor // 16)
        for b in range(1, blocks + 1):
            kind = ("proj" if s == 2 else "down") if b == 1 else "normal"
            out.append((s, b, in_chs, r, bw, inc, kind))
            in_chs = bw + 3 * inc if b == 1 else in_chs + inc
    return out, in_chs


# ---------------------------------------------------------------- PyTorch

def torch_dpn(cfg: Config):
    import torch
    from torch import nn

    class BnActConv(nn.Module):
        def __init__(self, cin, cout, k, stride=1, pad=0, groups=1):
            super().__init__()
            self.bn = nn.BatchNorm2d(cin, eps=0.001)
            self.act = nn.ReLU()
            self.conv = nn.Conv2d(cin, cout, k, stride, pad, groups=groups, bias=False)

        def forward(self, x):
            return self.conv(self.act(self.bn(x)))

    class CatBnAct(nn.Module):
        def __init__(self, c):
            super().__init__()
            self.bn = nn.BatchNorm2d(c, eps=0.001)
            self.act = nn.ReLU()

        def forward(self, x):
            x = torch.cat(x, 1) if isinstance(x, tuple) else x
            return self.act(self.bn(x))

    class InputBlock(nn.Module):
        def __init__(self, c, k, pad):
            super().__init__()
            self.conv = nn.Conv2d(3, c, k, 2, pad, bias=False)
            self.bn = nn.BatchNorm2d(c, eps=0.001)
            self.act = nn.ReLU()
            self.pool = nn.MaxPool2d(3, 2, 1)

        def forward(self, x):
            return self.pool(self.act(self.bn(self.conv(x))))

    class DualPath(nn.Module):
        def __init__(self, cin, r, bw, inc, kind, b):
            super().__init__()
            self.bw, self.b, self.proj = bw, b, kind != "normal"
            stride = 2 if kind == "down" else 1
            if kind == "down":
                self.c1x1_w_s2 = BnActConv(cin, bw + 2 * inc, 1, 2)
            elif kind == "proj":
                self.c1x1_w_s1 = BnActConv(cin, bw + 2 * inc, 1, 1)
            self.c1x1_a = BnActConv(cin, r, 1)
            self.c3x3_b = BnActConv(r, r, 3, stride, 1, cfg.groups)
            if b:
                self.c1x1_c = CatBnAct(r)
                self.c1x1_c1 = nn.Conv2d(r, bw, 1, bias=False)
                self.c1x1_c2 = nn.Conv2d(r, inc, 1, bias=False)
            else:
                self.c1x1_c = BnActConv(r, bw + inc, 1)

        def forward(self, x):
            x_in = torch.cat(x, 1) if isinstance(x, tuple) else x
            if self.proj:
                w = self.c1x1_w_s2 if hasattr(self, "c1x1_w_s2") else self.c1x1_w_s1
                xs = w(x_in)
                s1, s2 = xs[:, :self.bw], xs[:, self.bw:]
            else:
                s1, s2 = x
            y = self.c3x3_b(self.c1x1_a(x_in))
            if self.b:
                y = self.c1x1_c(y)
                o1, o2 = self.c1x1_c1(y), self.c1x1_c2(y)
            else:
                y = self.c1x1_c(y)
                o1, o2 = y[:, :self.bw], y[:, self.bw:]
            return s1 + o1, torch.cat([s2, o2], 1)

    class DPN(nn.Module):
        def __init__(self):
            super().__init__()
            blocks, out_chs = _stages(cfg)
            layers = {"conv1_1": InputBlock(cfg.init, 3 if cfg.small else 7, 1 if cfg.small else 3)}
            for s, b, cin, r, bw, inc, kind in blocks:
                layers[f"conv{s}_{b}"] = DualPath(cin, r, bw, inc, kind, cfg.b)
            layers["conv5_bn_ac"] = CatBnAct(out_chs)
            self.features = nn.Sequential(__import__("collections").OrderedDict(layers))
            self.classifier = nn.Conv2d(out_chs, NUM_CLASSES, 1, bias=True)

        def forward(self, x):
            x = self.features(x)
            x = x.mean((2, 3), keepdim=True)
            return self.classifier(x).flatten(1)

    return DPN().eval()


# ---------------------------------------------------------------- MXNet (symbol API)

def mxnet_dpn(cfg: Config, fc_name: str = "fc6"):
    import mxnet as mx

    sym = mx.sym

    def bn(x, name):
        return sym.BatchNorm(x, fix_gamma=False, eps=0.001, name=name)

    def bn_ac_conv(x, name, cout, k, stride=1, pad=0, groups=1):
        x = sym.Activation(bn(x, f"{name}__bn__bn"), act_type="relu")
        return sym.Convolution(x, num_filter=cout, kernel=(k, k), stride=(stride, stride), pad=(pad, pad),
                               num_group=groups, no_bias=True, name=f"{name}__conv")

    data = sym.Variable("data")
    k, pad = (3, 1) if cfg.small else (7, 3)
    x = sym.Convolution(data, num_filter=cfg.init, kernel=(k, k), stride=(2, 2), pad=(pad, pad), no_bias=True,
                        name="conv1_x_1__conv")
    x = sym.Activation(bn(x, "conv1_x_1__relu-sp__bn"), act_type="relu")
    x = sym.Pooling(x, kernel=(3, 3), stride=(2, 2), pad=(1, 1), pool_type="max")
    blocks, _ = _stages(cfg)
    state = x
    for s, b, cin, r, bw, inc, kind in blocks:
        name = f"conv{s}_x__{b}"
        x_in = sym.concat(*state, dim=1) if isinstance(state, tuple) else state
        if kind != "normal":
            stride = 2 if kind == "down" else 1
            xs = bn_ac_conv(x_in, f"{name}_c1x1-w(s/{stride})", bw + 2 * inc, 1, stride)
            s1 = sym.slice_axis(xs, axis=1, begin=0, end=bw)
            s2 = sym.slice_axis(xs, axis=1, begin=bw, end=None)
        else:
            s1, s2 = state
        y = bn_ac_conv(x_in, f"{name}_c1x1-a", r, 1)
        y = bn_ac_conv(y, f"{name}_c3x3-b", r, 3, 2 if kind == "down" else 1, 1, cfg.groups)
        if cfg.b:
            y = sym.Activation(bn(y, f"{name}_c1x1-c__bn"), act_type="relu")
            o1 = sym.Convolution(y, num_filter=bw, kernel=(1, 1), no_bias=True, name=f"{name}_c1x1-c1__conv")
            o2 = sym.Convolution(y, num_filter=inc, kernel=(1, 1), no_bias=True, name=f"{name}_c1x1-c2__conv")
        else:
            y = bn_ac_conv(y, f"{name}_c1x1-c", bw + inc, 1)
            o1 = sym.slice_axis(y, axis=1, begin=0, end=bw)
            o2 = sym.slice_axis(y, axis=1, begin=bw, end=None)
        state = (s1 + o1, sym.concat(s2, o2, dim=1))
    x = sym.concat(*state, dim=1)
    x = sym.Activation(bn(x, "conv5_x_x__relu-sp__bn"), act_type="relu")
    x = sym.Pooling(x, global_pool=True, kernel=(1, 1), pool_type="avg")
    x = sym.FullyConnected(sym.flatten(x), num_hidden=NUM_CLASSES, name=fc_name)
    return x
