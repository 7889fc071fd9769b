"""GGUF at disk speed: `mapspec apply` on GGUF sources and outputs against `cp` of the same
bytes, each command in its own child process, in paired runs (convert_bench's harness):
medians of the paired time ratios (run / cp) and every command's peak RSS.

    python bench/gguf_bench.py [--dir DIR] [--gb 2] [--repeat 3]

Cases, on a Llama-shaped model (hidden 2048, GQA 4:1, llama.cpp's tensor names and
metadata) of about --gb GB:
  f16 GGUF -> f16 GGUF, renamed           the tensors are copied file to file (goal: within 1.5x cp)
  f16 GGUF -> safetensors, HF names       likewise, into safetensors (goal: within 1.5x cp)
  q8_0 GGUF -> f16 GGUF, renamed           quantized blocks copied untouched
  q8_0 GGUF -> safetensors f16            every block dequantized by mapspec (numpy), for scale
Not part of CI: the numbers depend on the machine. The HF -> GGUF comparison with llama.cpp's
converter lives beside these cases (see docs/gguf.md).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from convert_bench import case, mapspec  # noqa: E402

from mapspec.core.tensorinfo import TensorInfo  # noqa: E402
from mapspec.formats import open_sink  # noqa: E402
from mapspec.formats.gguf import Value  # noqa: E402
from mapspec.ops import ggml  # noqa: E402

HIDDEN, HEADS, KV, FF, VOCAB = 2048, 16, 4, 5632, 32000

RENAME = "mapspec 1\nblk.{i:int}.{rest:**} -> blk.{i}.{rest}\n{name:token_embd|output_norm|output}.weight -> {name}.weight\n"
TO_HF = """mapspec 1
token_embd.weight -> model.embed_tokens.weight
output_norm.weight -> model.norm.weight
output.weight -> lm_head.weight
blk.{i:int}.attn_norm.weight -> model.layers.{i}.input_layernorm.weight
blk.{i:int}.ffn_norm.weight -> model.layers.{i}.post_attention_layernorm.weight
blk.{i:int}.attn_{p:q|k|v}.weight -> model.layers.{i}.self_attn.{p}_proj.weight
blk.{i:int}.attn_output.weight -> model.layers.{i}.self_attn.o_proj.weight
blk.{i:int}.ffn_{p:gate|up|down}.weight -> model.layers.{i}.mlp.{p}_proj.weight
"""
DEQUANTIZE = TO_HF.replace(".weight\n", ".weight then cast(float16)\n")


def llama(gb: float, dtype: str) -> dict[str, TensorInfo]:
    """llama.cpp's tensors of a Llama-shaped model of about `gb` GB: matrices in `dtype`, norms F32."""
    head = HIDDEN // HEADS
    infos = {"token_embd.weight": TensorInfo((VOCAB, HIDDEN), dtype)}
    i = 0
    while sum(x.nbytes for x in infos.values()) < gb * 1e9:
        for name, shape in (("attn_q", (HIDDEN, HIDDEN)), ("attn_k", (KV * head, HIDDEN)), ("attn_v", (KV * head, HIDDEN)),
                            ("attn_output", (HIDDEN, HIDDEN)), ("ffn_gate", (FF, HIDDEN)), ("ffn_up", (FF, HIDDEN)),
                            ("ffn_down", (HIDDEN, FF))):
            infos[f"blk.{i}.{name}.weight"] = TensorInfo(shape, dtype)
        for name in ("attn_norm", "ffn_norm"):
            infos[f"blk.{i}.{name}.weight"] = TensorInfo((HIDDEN,), "float32")
        i += 1
    infos["output_norm.weight"] = TensorInfo((HIDDEN,), "float32")
    infos["output.weight"] = TensorInfo((VOCAB, HIDDEN), dtype)
    return infos


def metadata(infos: dict[str, TensorInfo], file_type: int) -> dict[str, Value]:
    layers = sum(1 for k in infos if k.endswith("attn_q.weight"))
    return {"general.architecture": Value("string", "llama"), "general.name": Value("string", "bench"),
            "llama.block_count": Value("uint32", layers), "llama.context_length": Value("uint32", 4096),
            "llama.embedding_length": Value("uint32", HIDDEN), "llama.feed_forward_length": Value("uint32", FF),
            "llama.attention.head_count": Value("uint32", HEADS), "llama.attention.head_count_kv": Value("uint32", KV),
            "llama.rope.freq_base": Value("float32", 10000.0),
            "llama.attention.layer_norm_rms_epsilon": Value("float32", 1e-5),
            "general.file_type": Value("uint32", file_type), "general.quantization_version": Value("uint32", 2)}


def fill(path: Path, infos: dict[str, TensorInfo], file_type: int) -> None:
    """Written by mapspec's GGUF sink (tested against gguf-py): a fixed random block tiled."""
    block = np.random.default_rng(0).standard_normal(1 << 22).astype(np.float32) * 0.02
    sink = open_sink(path, "gguf", infos, kv=metadata(infos, file_type))
    try:
        for k, info in infos.items():
            values = np.resize(block, int(np.prod(info.shape))).reshape(info.shape)
            if info.dtype in ggml.QUANTIZERS:
                sink.write(k, ggml.quantize(values, "float32", info.dtype))
            else:
                sink.write(k, values.astype(info.dtype))
        sink.commit()
    except BaseException:
        sink.abort()
        raise


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", type=Path, default=Path("/tmp/mapspec-gguf-bench"))
    ap.add_argument("--gb", type=float, default=2.0)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    d = args.dir
    d.mkdir(parents=True, exist_ok=True)
    need = 6 * args.gb * 1e9
    if shutil.disk_usage(d).free < need:
        raise SystemExit(f"{d}: the benchmark needs about {need / 1e9:.0f} GB free")
    os.environ["PYTHONPATH"] = str(REPO)
    print(f"mapspec gguf_bench, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {os.cpu_count()} cores, "
          f"load average {os.getloadavg()[0]:.1f}; medians of {args.repeat} paired runs")
    for name, text in (("rename.map", RENAME), ("to_hf.map", TO_HF), ("dequantize.map", DEQUANTIZE)):
        (d / name).write_text(text)
    f16, q8 = d / f"llama-{args.gb:g}gb-f16.gguf", d / f"llama-{args.gb:g}gb-q8_0.gguf"
    if not f16.exists():
        fill(f16, llama(args.gb, "float16"), 1)
    if not q8.exists():
        fill(q8, llama(args.gb * 34 / 64, "q8_0"), 7)  # about the same parameter count
    case("f16 GGUF -> f16 GGUF, renamed", f16,
         {"mapspec": (mapspec(d / "rename.map", f16, d / "out.gguf"), d / "out.gguf")}, args.repeat)
    case("f16 GGUF -> safetensors, HF names", f16,
         {"mapspec": (mapspec(d / "to_hf.map", f16, d / "out.safetensors"), d / "out.safetensors")}, args.repeat)
    case("q8_0 GGUF -> q8_0 GGUF, renamed", q8,
         {"mapspec": (mapspec(d / "rename.map", q8, d / "out.gguf"), d / "out.gguf")}, args.repeat)
    case("q8_0 GGUF -> safetensors f16 (dequantized)", q8,
         {"mapspec": (mapspec(d / "dequantize.map", q8, d / "out.safetensors"), d / "out.safetensors")},
         args.repeat)


if __name__ == "__main__":
    main()
