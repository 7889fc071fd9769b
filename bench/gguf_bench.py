"""GGUF in and out at disk speed, against llama.cpp's own converter and `cp`, side by side in
one run: each command in its own child process, in paired runs (convert_bench's harness: per
repeat cp first, then every command of the case), medians of the paired time ratios and every
command's peak RSS (/usr/bin/time).

    python bench/gguf_bench.py [--dir DIR] [--gb 2] [--repeat 3] [--only WORD,WORD...]

(--only runs the cases whose title has one of the words, e.g. `--only "-> GGUF bf16,renamed"`.)

(docs/gguf.md quotes the full-size command: --gb 2 --repeat 5; it needs about 7 x --gb GB free.)

The source is a bf16 Hugging Face model directory of about --gb GB with Llama-7B's widths
(hidden 4096, intermediate 11008, 32 heads, 32 key/value heads) and as many layers as fit
(0.4 GB each), a sentencepiece tokenizer trained on the spot (384 tokens: the embeddings are
small), config.json, safetensors shards of at most 1 GB. The reference is convert_hf_to_gguf.py
with its gguf-py from the llama-cpp-python source archive (tests/llamacpp_ref.py fetches it
into ~/.cache/mapspec-tests once, as the tests do). Cases:
  HF bf16 -> GGUF f16     mapspec (specs/hf_to_gguf/llama.map -p outtype=f16, and the spec chosen
                          from config.json: `mapspec apply MODEL_DIR`) vs the reference vs cp
  HF bf16 -> GGUF q8_0    likewise
  HF bf16 -> GGUF bf16    the tensor type does not change (goal: within 1.5x cp)
  HF f16 -> GGUF f16      likewise, from an f16 copy of the model directory
  GGUF f16 -> HF          apply --reverse: safetensors + config.json (goal: within 1.5x cp)
  GGUF bf16 -> HF         likewise
  GGUF q8_0 -> GGUF       a rename: quantized blocks copied as they are
A summary table closes the run: time / cp, time / reference, peak RSS against the bound
(the largest source tensor + 150 MiB: every rule of these specs reads one tensor) and against
the reference's. Goals (issue 18): mapspec <= 0.3x the reference's time for f16 and q8_0,
<= 1.5x cp where the type does not change, peak RSS <= the bound and below the reference's.
Not part of CI: the numbers depend on the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import llamacpp_ref  # noqa: E402
from convert_bench import MAPSPEC, as_installed, case, mapspec  # noqa: E402
from gguf_models import write_spm_tokenizer  # noqa: E402

from mapspec.core import dtypes  # noqa: E402
from mapspec.core.tensorinfo import TensorInfo  # noqa: E402
from mapspec.formats import open_sink  # noqa: E402

HIDDEN, HEADS, KV, FF = 4096, 32, 32, 11008  # Llama-7B's widths
VOCAB = 384  # the sentencepiece tokenizer trained for the model
SPEC = REPO / "specs" / "hf_to_gguf" / "llama.map"
RENAME = "mapspec 1\nblk.{i:int}.{rest:**} -> blk.{i}.{rest}\n{name:token_embd|output_norm|output}.weight -> {name}.weight\n"
MiB = 1 << 20


def hf_infos(gb: float, vocab: int, dtype: str) -> dict[str, TensorInfo]:
    """A Llama-7B-wide model's tensors (HF names) adding up to about `gb` GB, at least one layer."""
    head = HIDDEN // HEADS
    infos = {"model.embed_tokens.weight": TensorInfo((vocab, HIDDEN), dtype),
             "model.norm.weight": TensorInfo((HIDDEN,), dtype),
             "lm_head.weight": TensorInfo((vocab, HIDDEN), dtype)}
    n = 0
    while n == 0 or sum(x.nbytes for x in infos.values()) < gb * 1e9:
        pre = f"model.layers.{n}."
        for name, shape in (("input_layernorm", (HIDDEN,)), ("post_attention_layernorm", (HIDDEN,)),
                            ("self_attn.q_proj", (HIDDEN, HIDDEN)), ("self_attn.k_proj", (KV * head, HIDDEN)),
                            ("self_attn.v_proj", (KV * head, HIDDEN)), ("self_attn.o_proj", (HIDDEN, HIDDEN)),
                            ("mlp.gate_proj", (FF, HIDDEN)), ("mlp.up_proj", (FF, HIDDEN)),
                            ("mlp.down_proj", (HIDDEN, FF))):
            infos[pre + name + ".weight"] = TensorInfo(shape, dtype)
        n += 1
    return infos


def hf_model(d: Path, gb: float, dtype: str) -> dict[str, TensorInfo]:
    """A Llama-shaped HF model directory in `dtype`: safetensors shards of at most 1 GB and their
    index (written by mapspec's sink), config.json, a sentencepiece tokenizer. Values: a fixed
    random block (scale 0.02) tiled, so q8_0 has real work and writing GBs does not wait on a
    random generator."""
    infos = hf_infos(gb, VOCAB, dtype)
    block = np.random.default_rng(0).standard_normal(1 << 22).astype(np.float32) * np.float32(0.02)
    sink = open_sink(d, "safetensors", infos, max_shard_size="1GB")
    try:
        for k, info in infos.items():
            values = np.resize(block, int(np.prod(info.shape))).reshape(info.shape)
            sink.write(k, dtypes.cast(values, "float32", dtype))
        sink.commit()
    except BaseException:
        sink.abort()
        raise
    write_spm_tokenizer(d, VOCAB)  # after the sink's commit, which made the directory
    layers = sum(1 for k in infos if k.endswith("q_proj.weight"))
    (d / "config.json").write_text(json.dumps({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "dtype": dtype,
        "hidden_size": HIDDEN, "intermediate_size": FF, "num_hidden_layers": layers, "num_attention_heads": HEADS,
        "num_key_value_heads": KV, "head_dim": HIDDEN // HEADS, "max_position_embeddings": 4096,
        "rms_norm_eps": 1e-5, "rope_parameters": {"rope_theta": 10000.0, "rope_type": "default"},
        "vocab_size": VOCAB, "bos_token_id": 1, "eos_token_id": 2, "tie_word_embeddings": False}))
    return infos


def reference(root: Path, model: Path, out: Path, outtype: str) -> list[str]:
    return llamacpp_ref.command(model, out, outtype, root=root)


def auto(model: Path, out: Path, *extra: str) -> list[str]:
    """`mapspec apply MODEL_DIR -o OUT`: the spec chosen from config.json."""
    return [sys.executable, *MAPSPEC, "apply", str(model), "-o", str(out), *extra]


ROWS: list[tuple] = []  # (case, command, time / cp, time / reference, peak MiB, reference peak MiB, goal)


def record(title: str, times: dict, peaks: dict, bound: float, goal_cp: float | None, goal_ref: float | None) -> None:
    """The summary rows of a case, and its ratio to the reference printed under it."""
    ref = "convert_hf_to_gguf.py"
    for name in times:
        if name in ("cp", ref):
            continue
        to_cp = statistics.median(a / b for a, b in zip(times[name], times["cp"]))
        to_ref = statistics.median(a / b for a, b in zip(times[name], times[ref])) if ref in times else None
        peak = max(peaks[name])
        ref_peak = max(peaks[ref]) if ref in peaks else None
        met = []
        if goal_cp is not None:
            met.append(f"cp {'yes' if to_cp <= goal_cp else 'NO'}")
        if goal_ref is not None and to_ref is not None:
            met.append(f"ref {'yes' if to_ref <= goal_ref else 'NO'}")
        rss_ok = peak <= bound and (ref_peak is None or peak < ref_peak)
        met.append(f"RSS {'yes' if rss_ok else 'NO'}")
        ROWS.append((title, name, to_cp, to_ref, peak, ref_peak, ", ".join(met)))
        if to_ref is not None:
            goal = f" (goal <= {goal_ref:.2f})" if goal_ref is not None else ""
            print(f"  {name} / {ref} time: {to_ref:.2f}x{goal}")
    print(f"  peak RSS bound (largest source tensor + 150 MiB): {bound:.0f} MiB")


def summary() -> None:
    print("\n| case | command | time / cp | time / reference | peak RSS | reference peak RSS | goals met |")
    print("|---|---|---|---|---|---|---|")
    for title, name, to_cp, to_ref, peak, ref_peak, met in ROWS:
        r = f"{to_ref:.2f}x" if to_ref is not None else "-"
        rp = f"{ref_peak:.0f} MiB" if ref_peak is not None else "-"
        print(f"| {title} | {name} | {to_cp:.2f}x | {r} | {peak:.0f} MiB | {rp} | {met} |")


ONLY: list[str] = []  # --only: the cases whose title has one of these


def run_case(title: str, src: Path, commands: dict, repeat: int, bound: float,
             goal_cp: float | None = None, goal_ref: float | None = None) -> None:
    if ONLY and not any(w in title for w in ONLY):
        return
    peaks: dict[str, list[float]] = {}
    times = case(title, src, commands, repeat, peaks=peaks)
    record(title, times, peaks, bound, goal_cp, goal_ref)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", type=Path, default=Path("/tmp/mapspec-gguf-bench"))
    ap.add_argument("--gb", type=float, default=2.0)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--only", default="", help="comma-separated words; run the cases whose title has one of them "
                                                 "(e.g. 'bf16 -> GGUF bf16,f16 -> GGUF f16,-> HF,renamed')")
    args = ap.parse_args()
    global ONLY
    ONLY = [w.strip() for w in args.only.split(",") if w.strip()]
    d = args.dir
    d.mkdir(parents=True, exist_ok=True)
    need = 7 * args.gb * 1e9
    if shutil.disk_usage(d).free < need:
        raise SystemExit(f"{d}: the benchmark needs about {need / 1e9:.0f} GB free")
    root = llamacpp_ref.llama_cpp_dir()
    if root is None:
        raise SystemExit(f"llama.cpp's converter is not available (pip download "
                         f"llama-cpp-python=={llamacpp_ref.VERSION} failed)")
    os.environ.clear()
    os.environ.update(llamacpp_ref.environment())
    os.environ["PYTHONPATH"] = str(REPO)
    as_installed()
    print(f"mapspec gguf_bench, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {os.cpu_count()} cores, "
          f"load average {os.getloadavg()[0]:.1f}; medians of {args.repeat} paired runs")

    bf16, f16 = d / f"hf-llama-{args.gb:g}gb-bf16", d / f"hf-llama-{args.gb:g}gb-f16"
    for model, dtype in ((bf16, "bfloat16"), (f16, "float16")):
        if not (model / "config.json").exists():
            shutil.rmtree(model, ignore_errors=True)
            hf_model(model, args.gb, dtype)
    infos = hf_infos(args.gb, VOCAB, "bfloat16")
    bound = max(x.nbytes for x in infos.values()) / MiB + 150
    print(f"model: {sum(1 for k in infos if k.endswith('q_proj.weight'))} layers, hidden {HIDDEN}, "
          f"intermediate {FF}, {sum(x.nbytes for x in infos.values()) / 1e9:.2f} GB in bf16")

    out, ref = d / "out.gguf", d / "ref.gguf"
    for outtype in ("f16", "q8_0"):
        run_case(f"HF bf16 -> GGUF {outtype}", bf16, {
            "mapspec (llama.map)": (mapspec(SPEC, bf16, out, "-p", f"outtype={outtype}"), out),
            "mapspec (spec from config.json)": (auto(bf16, out, "-p", f"outtype={outtype}"), out),
            "convert_hf_to_gguf.py": (reference(root, bf16, ref, outtype), ref)}, args.repeat, bound, goal_ref=0.3)
    run_case("HF bf16 -> GGUF bf16", bf16, {
        "mapspec (llama.map)": (mapspec(SPEC, bf16, out, "-p", "outtype=bf16"), out),
        "convert_hf_to_gguf.py": (reference(root, bf16, ref, "bf16"), ref)}, args.repeat, bound, goal_cp=1.5)
    run_case("HF f16 -> GGUF f16", f16, {
        "mapspec (llama.map)": (mapspec(SPEC, f16, out, "-p", "outtype=f16"), out),
        "convert_hf_to_gguf.py": (reference(root, f16, ref, "f16"), ref)}, args.repeat, bound, goal_cp=1.5)

    # GGUF sources, written once by mapspec (untimed)
    ggufs = {}
    for outtype, model in (("f16", f16), ("bf16", bf16), ("q8_0", bf16)):
        ggufs[outtype] = path = d / f"llama-{args.gb:g}gb-{outtype}.gguf"
        if not path.exists():
            subprocess.run(mapspec(SPEC, model, path, "-p", f"outtype={outtype}"), check=True)
    back = d / "back"
    for outtype, hf_dtype in (("f16", "float16"), ("bf16", "bfloat16")):
        run_case(f"GGUF {outtype} -> HF safetensors ({hf_dtype} kept)", ggufs[outtype], {
            "mapspec apply --reverse": ([*mapspec(SPEC, ggufs[outtype], back, "-p", f"hf_dtype={hf_dtype}"),
                                         "--reverse"], back)}, args.repeat, bound, goal_cp=1.5)
    (d / "rename.map").write_text(RENAME)
    run_case("GGUF q8_0 -> GGUF q8_0, renamed", ggufs["q8_0"], {
        "mapspec": (mapspec(d / "rename.map", ggufs["q8_0"], out), out)}, args.repeat, bound, goal_cp=1.5)
    summary()


if __name__ == "__main__":
    main()
