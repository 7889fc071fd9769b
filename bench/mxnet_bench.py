"""Wall time and peak RSS of converting a >= 1 GB MXNet checkpoint with `mapspec apply`
(-> safetensors and -> .pt) against the classic way (mx.nd.load + torch.save), each in its
own child process, run side by side. Run it in the mxnet environment:

    .venv-mxnet/bin/python bench/mxnet_bench.py [--gb 1.0] [--dir /tmp]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from convert_bench import as_installed  # noqa: E402
from mapspec.formats import open_sink  # noqa: E402
from mapspec.compile.plan import TensorInfo  # noqa: E402

SPEC = """mapspec 1
from mxnet to pytorch
include "{bn}"
arg:stage{{s:int}}_unit{{u:int}}_conv_weight -> layer{{s}}.{{u}}.conv.weight
{{x:arg|aux}}:stage{{s:int}}_unit{{u:int}}_bn_{{p in bn}} -> layer{{s}}.{{u}}.bn.{{bn[p]}}
arg:fc_weight -> fc.weight then view(+(1, 1))
"""

CLASSIC = """
import re, sys, mxnet as mx, torch
src, out = sys.argv[1], sys.argv[2]
bn = dict(gamma="weight", beta="bias", moving_mean="running_mean", moving_var="running_var")
state = {}
for k, v in mx.nd.load(src).items():
    name = k.split(":", 1)[1]
    m = re.fullmatch(r"stage(\\d+)_unit(\\d+)_(conv_weight|bn_(\\w+))", name)
    if m:
        key = f"layer{m[1]}.{m[2]}." + ("conv.weight" if m[3] == "conv_weight" else f"bn.{bn[m[4]]}")
        state[key] = torch.from_numpy(v.asnumpy())
    else:
        state["fc.weight"] = torch.from_numpy(v.asnumpy()).view(v.shape + (1, 1))
torch.save(state, out)
"""


def generate(path: Path, gb: float) -> int:
    """A ResNet-like MXNet checkpoint of about `gb` GB, written by the native writer."""
    rng = np.random.default_rng(0)
    infos: dict[str, TensorInfo] = {}
    total, s = 0, 0
    while total < gb * 1e9:
        s += 1
        for u in range(4):
            c = 512
            infos[f"arg:stage{s}_unit{u}_conv_weight"] = TensorInfo((c, c, 3, 3), "float32")
            for p in ("gamma", "beta"):
                infos[f"arg:stage{s}_unit{u}_bn_{p}"] = TensorInfo((c,), "float32")
            for p in ("moving_mean", "moving_var"):
                infos[f"aux:stage{s}_unit{u}_bn_{p}"] = TensorInfo((c,), "float32")
            total += c * c * 9 * 4 + 4 * c * 4
    infos["arg:fc_weight"] = TensorInfo((1000, 512), "float32")
    sink = open_sink(path, "mxnet", infos)
    block = rng.standard_normal(512 * 512 * 9).astype(np.float32)
    for k, info in infos.items():
        n = int(np.prod(info.shape))
        sink.write(k, block[:n].reshape(info.shape) if n <= block.size else rng.standard_normal(info.shape))
    sink.commit()
    return path.stat().st_size


def run(cmd: list[str]) -> tuple[float, int]:
    """Wall seconds and the child's own peak RSS in bytes."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr.read().decode()}")
    return wall, usage.ru_maxrss * 1024


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--gb", type=float, default=1.0)
    ap.add_argument("--dir", default=None)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    as_installed()
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        tmp = Path(tmp)
        ckpt = tmp / "net-0000.params"
        size = generate(ckpt, args.gb)
        bn = Path(__file__).resolve().parent.parent / "specs" / "common" / "bn.map"
        (tmp / "net.map").write_text(SPEC.format(bn=bn))
        mapspec = [sys.executable, "-m", "mapspec.cli", "apply", str(tmp / "net.map"), str(ckpt), "--force"]
        jobs = {
            "mapspec -> safetensors": mapspec + ["-o", str(tmp / "out.safetensors")],
            "mapspec -> .pt": mapspec + ["-o", str(tmp / "out.pt")],
            "classic mx.nd.load + torch.save": [sys.executable, "-c", CLASSIC, str(ckpt), str(tmp / "classic.pt")],
            # a fixed cost any .pt writer pays, shown so the .pt row can be read against it
            "(baseline: python -c 'import torch')": [sys.executable, "-c", "import torch"],
        }
        subprocess.run(["cat", str(ckpt)], stdout=subprocess.DEVNULL, check=True)  # same warm cache for all
        best: dict[str, tuple[float, int]] = {}
        for _ in range(args.rounds):  # interleaved, so drift on a noisy machine hits all alike
            for name, cmd in jobs.items():
                wall, rss = run(cmd)
                old = best.get(name)
                best[name] = (min(wall, old[0]) if old else wall, min(rss, old[1]) if old else rss)
        print(f"checkpoint: {size / 1e9:.2f} GB ({ckpt.name}), best of {args.rounds}")
        base_wall, base_rss = best["classic mx.nd.load + torch.save"]
        print(f"{'':34} {'wall s':>8} {'peak RSS':>10} {'RSS/ckpt':>9} {'time vs classic':>16}")
        for name, (wall, rss) in best.items():
            print(f"{name:34} {wall:8.2f} {rss / 2**20:8.0f} MB {rss / size:8.0%} {base_wall / wall:15.2f}x")
        print("goal: faster than classic, peak RSS under 25% of the checkpoint size")


if __name__ == "__main__":
    main()
