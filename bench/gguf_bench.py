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
With --hf, Hugging Face -> GGUF against llama.cpp's own converter (convert_hf_to_gguf.py from
the llama-cpp-python source archive, fetched into ~/.cache/mapspec-tests as the tests do), on a
bf16 Llama-shaped model directory of about --gb GB (safetensors, config.json, a sentencepiece
tokenizer trained on the spot):
  HF bf16 -> GGUF f16 / q8_0            mapspec (specs/hf_to_gguf/llama.map) vs the reference vs cp
  HF bf16 -> GGUF bf16                  the type does not change (goal: within 1.5x cp)
  GGUF f16 -> HF (apply --reverse)      a model directory back (goal: within 1.5x cp)
Each row gives time / cp and peak RSS; the mapspec / reference time ratio is printed under
the case (goal: at most 0.3).
Not part of CI: the numbers depend on the machine.
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


def hf_model(d: Path, gb: float) -> Path:
    """A bf16 Llama-shaped HF model directory of about `gb` GB (HF names, config.json, tokenizer)."""
    import json

    sys.path.insert(0, str(REPO / "tests"))
    from gguf_models import write_spm_tokenizer

    d.mkdir(parents=True, exist_ok=True)
    vocab = write_spm_tokenizer(d)
    head = HIDDEN // HEADS
    infos = {"model.embed_tokens.weight": TensorInfo((vocab, HIDDEN), "bfloat16"),
             "model.norm.weight": TensorInfo((HIDDEN,), "bfloat16"),
             "lm_head.weight": TensorInfo((vocab, HIDDEN), "bfloat16")}
    n = 0
    while sum(x.nbytes for x in infos.values()) < gb * 1e9:
        pre = f"model.layers.{n}."
        infos.update({
            pre + "input_layernorm.weight": TensorInfo((HIDDEN,), "bfloat16"),
            pre + "post_attention_layernorm.weight": TensorInfo((HIDDEN,), "bfloat16"),
            pre + "self_attn.q_proj.weight": TensorInfo((HIDDEN, HIDDEN), "bfloat16"),
            pre + "self_attn.k_proj.weight": TensorInfo((KV * head, HIDDEN), "bfloat16"),
            pre + "self_attn.v_proj.weight": TensorInfo((KV * head, HIDDEN), "bfloat16"),
            pre + "self_attn.o_proj.weight": TensorInfo((HIDDEN, HIDDEN), "bfloat16"),
            pre + "mlp.gate_proj.weight": TensorInfo((FF, HIDDEN), "bfloat16"),
            pre + "mlp.up_proj.weight": TensorInfo((FF, HIDDEN), "bfloat16"),
            pre + "mlp.down_proj.weight": TensorInfo((HIDDEN, FF), "bfloat16"),
        })
        n += 1
    from mapspec.core import dtypes

    block = np.random.default_rng(0).standard_normal(1 << 22).astype(np.float32) * 0.02
    sink = open_sink(d / "model.safetensors", "safetensors", infos)
    for k, info in infos.items():
        values = np.resize(block, int(np.prod(info.shape))).reshape(info.shape)
        sink.write(k, dtypes.cast(values, "float32", "bfloat16"))
    sink.commit()
    (d / "config.json").write_text(json.dumps({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "dtype": "bfloat16",
        "hidden_size": HIDDEN, "intermediate_size": FF, "num_hidden_layers": n, "num_attention_heads": HEADS,
        "num_key_value_heads": KV, "head_dim": head, "max_position_embeddings": 4096, "rms_norm_eps": 1e-5,
        "rope_parameters": {"rope_theta": 10000.0, "rope_type": "default"}, "vocab_size": vocab,
        "bos_token_id": 1, "eos_token_id": 2, "tie_word_embeddings": False}))
    return d


def hf_cases(d: Path, gb: float, repeat: int) -> None:
    import statistics

    sys.path.insert(0, str(REPO / "tests"))
    import llamacpp_ref

    root = llamacpp_ref.llama_cpp_dir()
    if root is None:
        raise SystemExit("llama.cpp's converter is not available (pip download llama-cpp-python failed)")
    model = d / f"hf-llama-{gb:g}gb"
    if not (model / "config.json").exists():
        hf_model(model, gb)
    spec = REPO / "specs" / "hf_to_gguf" / "llama.map"
    for outtype in ("f16", "q8_0", "bf16"):
        out, ref = d / "out.gguf", d / "ref.gguf"
        commands = {"mapspec": (mapspec(spec, model, out, "-p", f"outtype={outtype}"), out)}
        if outtype != "bf16":
            commands["convert_hf_to_gguf.py"] = ([sys.executable, str(root / "convert_hf_to_gguf.py"), str(model),
                                                  "--outtype", outtype, "--outfile", str(ref)], ref)
        times = case(f"HF bf16 -> GGUF {outtype}", model, commands, repeat)
        if times and "convert_hf_to_gguf.py" in times:
            ratio = statistics.median(a / b for a, b in zip(times["mapspec"], times["convert_hf_to_gguf.py"]))
            print(f"  mapspec / convert_hf_to_gguf.py time: {ratio:.2f}x (goal <= 0.30)")
    gguf = d / "hf-f16.gguf"
    if not gguf.exists():
        import subprocess

        subprocess.run(mapspec(spec, model, gguf, "-p", "outtype=f16"), check=True)
    back = d / "back"
    case("GGUF f16 -> HF model directory (apply --reverse, f16 kept)", gguf,
         {"mapspec": ([*mapspec(spec, gguf, back, "-p", "hf_dtype=float16"), "--reverse"], back)}, repeat)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", type=Path, default=Path("/tmp/mapspec-gguf-bench"))
    ap.add_argument("--gb", type=float, default=2.0)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--hf", action="store_true", help="Hugging Face -> GGUF against llama.cpp's converter")
    args = ap.parse_args()
    d = args.dir
    d.mkdir(parents=True, exist_ok=True)
    need = 6 * args.gb * 1e9
    if shutil.disk_usage(d).free < need:
        raise SystemExit(f"{d}: the benchmark needs about {need / 1e9:.0f} GB free")
    os.environ["PYTHONPATH"] = str(REPO)
    print(f"mapspec gguf_bench, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {os.cpu_count()} cores, "
          f"load average {os.getloadavg()[0]:.1f}; medians of {args.repeat} paired runs")
    if args.hf:
        hf_cases(d, args.gb, args.repeat)
        return
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
