"""Quantized checkpoints at disk speed: mapspec's shipped specs against `cp` of a file of the
output's size and against the reference way (per shard: safetensors `load_file`, transformers'
own torch math, `save_file`), each in its own child process, in paired runs. Prints per case
the medians of the paired time ratios and every command's peak RSS:

- FP8 -> BF16: a `--gb` GB FP8 block-scaled sharded model directory (DeepSeek-style
  128x128 blocks, float32 `weight_scale_inv`) with `specs/fp8_block_dequant.map`;
  reference: `_dequantize_fp8_weight(w, s, block, float32).to(bfloat16)`.
- BF16 -> FP8: that output back with `specs/fp8_block_quantize.map`; reference: transformers'
  `Fp8Quantize` (the shapes are multiples of the block, which it needs).
- MXFP4 -> BF16: gpt-oss-style experts (`*_blocks` + `*_scales`) with
  `specs/gpt_oss_mxfp4_dequant.map`; reference: `convert_moe_packed_tensors`.

    python bench/quant_bench.py [--dir DIR] [--gb 2] [--repeat 3] [--shard 500MB]

Goals (issue 17): mapspec at most 0.5x the reference's time and at most 3x `cp` of the output
bytes; peak RSS at most the largest rule group's inputs and outputs + 150 MiB (the reference
holds whole shards). Not part of CI: the numbers depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from convert_bench import as_installed, clean, mapspec, run  # noqa: E402

from mapspec import TensorInfo  # noqa: E402
from mapspec.formats import open_sink  # noqa: E402

SPECS = REPO / "specs"
SHARD = "500MB"

# Both dequantizing references: the shards and which shard holds each tensor (a weight's
# scale may be in the next shard, as in DeepSeek's checkpoints).
INDEX = """
import json, sys, torch
from pathlib import Path
from safetensors import safe_open
from safetensors.torch import load_file, save_file
src, out = Path(sys.argv[1]), Path(sys.argv[2])
out.mkdir()
if (src / "model.safetensors.index.json").exists():
    index = json.loads((src / "model.safetensors.index.json").read_text())["weight_map"]
else:
    with safe_open(src / "model.safetensors", "pt") as f:
        index = {k: "model.safetensors" for k in f.keys()}


def other(key, state):
    if key in state:
        return state[key]
    with safe_open(src / index[key], "pt") as f:
        return f.get_tensor(key)
"""

REF_FP8_DEQUANT = INDEX + """
from transformers.integrations.finegrained_fp8 import _dequantize_fp8_weight
block = json.loads((src / "config.json").read_text())["quantization_config"]["weight_block_size"]
for shard in sorted(set(index.values())):
    state = load_file(src / shard)
    new = {}
    for k, v in state.items():
        if k.endswith("_scale_inv"):
            continue
        if k + "_scale_inv" in index:
            new[k] = _dequantize_fp8_weight(v, other(k + "_scale_inv", state), block, torch.float32).to(torch.bfloat16)
        else:
            new[k] = v
    save_file(new, out / shard, metadata={"format": "pt"})
"""

REF_FP8_QUANTIZE = """
import sys
from pathlib import Path
from safetensors.torch import load_file, save_file
from transformers import FineGrainedFP8Config
from transformers.integrations.finegrained_fp8 import Fp8Quantize
class Quantizer:
    quantization_config = FineGrainedFP8Config(weight_block_size=[128, 128])
op = Fp8Quantize(Quantizer())
src, out = Path(sys.argv[1]), Path(sys.argv[2])
out.mkdir()
for shard in sorted(src.glob("*.safetensors")):
    new = {}
    for k, v in load_file(shard).items():
        new.update(op.convert({k: v}) if k.endswith("_proj.weight") else {k: v})
    save_file(new, out / shard.name, metadata={"format": "pt"})
"""

REF_MXFP4 = INDEX + """
from transformers.integrations.mxfp4 import convert_moe_packed_tensors
for shard in sorted(set(index.values())):
    state = load_file(src / shard)
    new = {}
    for k, v in state.items():
        if k.endswith("_blocks"):
            name = k[: -len("_blocks")]
            new[name] = convert_moe_packed_tensors(v, other(name + "_scales", state))
        elif not k.endswith("_scales"):
            new[k] = v
    save_file(new, out / shard, metadata={"format": "pt"})
"""


def fp8_model(d: Path, gb: float, hidden: int = 2048) -> Path:
    """A DeepSeek-style FP8 model directory of about `gb` GB: per layer q/k/v/o and
    gate/up/down `_proj` weights in float8_e4m3fn with 128x128-block float32 scales, norms in
    bf16; embeddings and lm_head bf16. Random bytes (no NaN codes) and scales near 1e-3."""
    inter = 2 * hidden  # multiples of the block: Fp8Quantize, the reference, leaves other shapes alone
    infos: dict[str, TensorInfo] = {"model.embed_tokens.weight": TensorInfo((8192, hidden), "bfloat16")}
    i = 0
    while sum(x.nbytes for x in infos.values()) < gb * 1e9:
        shapes = {f"self_attn.{p}_proj": (hidden, hidden) for p in "qkvo"}
        shapes.update({"mlp.gate_proj": (inter, hidden), "mlp.up_proj": (inter, hidden), "mlp.down_proj": (hidden, inter)})
        for name, shape in shapes.items():
            infos[f"model.layers.{i}.{name}.weight"] = TensorInfo(shape, "float8_e4m3fn")
            infos[f"model.layers.{i}.{name}.weight_scale_inv"] = TensorInfo((-(-shape[0] // 128), -(-shape[1] // 128)),
                                                                             "float32")
        for n in ("input_layernorm", "post_attention_layernorm"):
            infos[f"model.layers.{i}.{n}.weight"] = TensorInfo((hidden,), "bfloat16")
        i += 1
    infos["model.norm.weight"] = TensorInfo((hidden,), "bfloat16")
    infos["lm_head.weight"] = TensorInfo((8192, hidden), "bfloat16")
    path = d / "fp8-model"
    rng = np.random.default_rng(0)
    block = rng.integers(0, 256, 1 << 22, dtype=np.uint8)
    block[(block & 0x7F) == 0x7F] = 0x38
    _fill(path, infos, lambda info: np.resize(block, int(np.prod(info.shape))).reshape(info.shape)
          if info.dtype == "float8_e4m3fn" else
          np.full(info.shape, 1e-3, np.float32) if info.dtype == "float32" else
          np.full(info.shape, 0x3F80, np.uint16))
    config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": hidden,
              "intermediate_size": inter, "num_hidden_layers": i, "num_attention_heads": hidden // 128,
              "num_key_value_heads": hidden // 128, "vocab_size": 8192, "dtype": "bfloat16",
              "quantization_config": {"activation_scheme": "dynamic", "fmt": "e4m3", "quant_method": "fp8",
                                      "weight_block_size": [128, 128]}}
    (path / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    return path


def mxfp4_model(d: Path, gb: float, hidden: int = 2880) -> Path:
    """gpt-oss-style MXFP4 experts of about `gb` GB (gate_up (E, 2H, H/32, 16), down
    (E, H, H/32, 16), their scales near 2**-3; 32 experts, fewer for small sizes), plus a
    bf16 router per layer."""
    per_expert = 3 * hidden * (hidden // 32) * 17  # gate_up and down blocks and scales
    experts = max(2, min(32, int(gb * 1e9 / per_expert / 4)))
    infos: dict[str, TensorInfo] = {}
    g = hidden // 32
    i = 0
    while sum(x.nbytes for x in infos.values()) < gb * 1e9:
        for p, n in (("gate_up_proj", 2 * hidden), ("down_proj", hidden)):
            infos[f"model.layers.{i}.mlp.experts.{p}_blocks"] = TensorInfo((experts, n, g, 16), "uint8")
            infos[f"model.layers.{i}.mlp.experts.{p}_scales"] = TensorInfo((experts, n, g), "uint8")
        infos[f"model.layers.{i}.mlp.router.weight"] = TensorInfo((experts, hidden), "bfloat16")
        i += 1
    path = d / "mxfp4-model"
    block = np.random.default_rng(1).integers(0, 256, 1 << 22, dtype=np.uint8)
    _fill(path, infos, lambda info: np.full(info.shape, 124, np.uint8) if info.name.endswith("_scales") else
          np.resize(block, int(np.prod(info.shape))).reshape(info.shape) if info.dtype == "uint8" else
          np.full(info.shape, 0x3F80, np.uint16))
    (path / "config.json").write_text(json.dumps({"model_type": "gpt_oss", "dtype": "bfloat16",
                                                  "quantization_config": {"quant_method": "mxfp4"}}) + "\n")
    return path


def _fill(path: Path, infos: dict[str, TensorInfo], make) -> None:
    if path.exists():
        shutil.rmtree(path)
    sink = open_sink(path, "safetensors", infos, max_shard_size=SHARD)
    try:
        for k, info in infos.items():
            view = type("Info", (), {"shape": info.shape, "dtype": info.dtype, "name": k})()
            sink.write(k, make(view))
        sink.commit()
    except BaseException:
        sink.abort()
        raise


def size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*")) if path.is_dir() else path.stat().st_size


def case(title: str, src: Path, out: Path, mine: list[str], reference: list[str], repeat: int) -> Path:
    """Paired runs: cp of an output-sized file, mapspec, the reference way; the last mapspec
    output is kept (the next case reads it)."""
    probe = out.parent / f"{out.name}.probe"  # a first run, untimed: how large the output is
    clean(probe)
    at = mine.index("-o") + 1
    run([*mine[:at], str(probe), *mine[at + 1:]])
    out_bytes = size(probe)
    clean(probe)
    blob, copy = out.parent / "cp-source.bin", out.parent / "cp-copy.bin"
    with open(blob, "wb") as f:
        f.truncate(0)
        chunk = np.random.default_rng(2).integers(0, 256, 1 << 24, dtype=np.uint8).tobytes()
        left = out_bytes
        while left > 0:
            f.write(chunk[:left])
            left -= len(chunk)
    rows: dict[str, tuple[list[float], list[float]]] = {"cp": ([], []), "mapspec": ([], []), "reference": ([], [])}
    vs_cp, vs_ref = [], []
    for _ in range(repeat):
        clean(copy)
        t_cp, r_cp = run(["cp", str(blob), str(copy)])
        clean(copy, out)
        t_me, r_me = run(mine)
        keep = out.parent / f"{out.name}.kept"
        clean(keep)
        out.rename(keep)
        ref_out = out.parent / f"{out.name}.reference"
        clean(ref_out)
        t_ref, r_ref = run(reference)
        clean(ref_out)
        keep.rename(out)
        for name, t, r in (("cp", t_cp, r_cp), ("mapspec", t_me, r_me), ("reference", t_ref, r_ref)):
            rows[name][0].append(t)
            rows[name][1].append(r)
        vs_cp.append(t_me / t_cp)
        vs_ref.append(t_me / t_ref)
    clean(blob, copy)
    print(f"\n{title}  (source {size(src) / 1e9:.2f} GB, output {out_bytes / 1e9:.2f} GB)")
    print(f"  {'command':<12} {'median s':>9} {'peak RSS':>10}")
    for name, (times, rss) in rows.items():
        print(f"  {name:<12} {statistics.median(times):>9.2f} {max(rss):>6.0f} MiB")
    print(f"  mapspec / cp of the output bytes: {statistics.median(vs_cp):.2f}x (goal <= 3x); "
          f"mapspec / reference: {statistics.median(vs_ref):.2f}x (goal <= 0.5x)")
    sys.stdout.flush()
    return out


def main() -> None:
    global SHARD
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", type=Path, default=Path("/tmp/mapspec-quant-bench"))
    ap.add_argument("--gb", type=float, default=2.0, help="size of the FP8 and MXFP4 sources")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--shard", default=SHARD, help="--max-shard-size of the sources and outputs")
    args = ap.parse_args()
    SHARD = args.shard
    d = args.dir
    d.mkdir(parents=True, exist_ok=True)
    need = 12 * args.gb * 1e9  # sources, a bf16 output twice their size, its copies, the references
    if shutil.disk_usage(d).free < need:
        raise SystemExit(f"{d}: {shutil.disk_usage(d).free / 1e9:.1f} GB free, the benchmark needs about "
                         f"{need / 1e9:.0f} GB")
    os.environ["PYTHONPATH"] = str(REPO)
    os.environ["HF_HUB_OFFLINE"] = "1"
    as_installed()
    print(f"mapspec quant_bench, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {os.cpu_count()} cores, "
          f"load average {os.getloadavg()[0]:.1f}; medians of {args.repeat} paired runs")
    fp8 = fp8_model(d, args.gb)
    bf16 = d / "bf16-model"
    case("FP8 -> BF16 (specs/fp8_block_dequant.map)", fp8, bf16,
         mapspec(SPECS / "fp8_block_dequant.map", fp8, bf16, "--config", str(fp8 / "config.json"),
                 "--max-shard-size", SHARD),
         [sys.executable, "-c", REF_FP8_DEQUANT, str(fp8), str(d / "bf16-model.reference")], args.repeat)
    back = d / "fp8-again"
    case("BF16 -> FP8 (specs/fp8_block_quantize.map)", bf16, back,
         mapspec(SPECS / "fp8_block_quantize.map", bf16, back, "--max-shard-size", SHARD),
         [sys.executable, "-c", REF_FP8_QUANTIZE, str(bf16), str(d / "fp8-again.reference")], args.repeat)
    clean(back, fp8)
    mx = mxfp4_model(d, args.gb / 2)
    mx_out = d / "mxfp4-bf16"
    case("MXFP4 -> BF16 (specs/gpt_oss_mxfp4_dequant.map)", mx, mx_out,
         mapspec(SPECS / "gpt_oss_mxfp4_dequant.map", mx, mx_out, "--max-shard-size", SHARD),
         [sys.executable, "-c", REF_MXFP4, str(mx), str(d / "mxfp4-bf16.reference")], args.repeat)
    clean(mx, mx_out, bf16)


if __name__ == "__main__":
    main()
