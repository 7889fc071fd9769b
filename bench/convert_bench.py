"""Conversion at disk speed: `mapspec apply` against `cp` of the same bytes and against the
classic way (torch.load + rename + torch.save; mx.nd.load + torch.save; the safetensors
library's load + save), each in its own child process, in paired runs. Prints, per case,
the median of the paired time ratios (run / cp) and every command's peak RSS.

    /work/main/.venv/bin/python bench/convert_bench.py [--dir DIR] [--gb 2] [--repeat 3] [--big | --big-only]
        [--big-gb GB] [--ranks | --ranks-only] [--ranks-gb 4] [--cold] [--mxnet-python /work/main/.venv-mxnet/bin/python]

--big adds (--big-only runs only) the 13.5 GB fp16 sharded HF-style directory (Llama-7B shapes): -> sharded
safetensors and -> sharded .bin. It needs about 3 x 13.5 GB free; the script checks first.
--ranks adds (--ranks-only runs only) an 8-rank Meta layout (consolidated.00.pth ..
consolidated.07.pth + params.json, fp16, about --ranks-gb GB) merged by specs/llama_meta_to_hf.map
into 5 GB safetensors shards, against cp of the rank files and the reference way (torch.load
every rank, torch.cat, save_file); it prints the largest merged tensor, the bound for mapspec's
peak RSS (the goal: at most that + 150 MiB).
--cold evicts the source from the page cache (posix_fadvise DONTNEED; dropping all caches
needs root) before every run, cp's included, so every command reads it from disk, as the
first conversion of a model larger than the free memory does.
Not part of CI: the numbers depend on the machine. Outputs are synced to disk (untimed)
between runs so every run starts with the same clean page cache state for writing.
"""

from __future__ import annotations

import argparse
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

from mapspec import TensorInfo  # noqa: E402
from mapspec.formats import open_sink  # noqa: E402

MAPSPEC = ["-c", "import sys; from mapspec.cli import main; sys.argv[0] = 'mapspec'; main()"]

RENAME = "mapspec 1\nmodel.{rest:**} -> net.{rest}\n"
# cast + transpose + split + concat, on every layer: qkv split into q/k/v (cast to fp16),
# up/gate concatenated into one tensor, down transposed.
ACTIONS = """mapspec 1
model.layers.{i:int}.qkv.weight -> net.layers.{i}.{p:q|k|v}.weight then chunk(3, 0) then cast(float16)
model.layers.{i:int}.mlp.{m:up|gate}.weight -> net.layers.{i}.mlp.up_gate.weight then concat(0)
model.layers.{i:int}.mlp.down.weight -> net.layers.{i}.mlp.down_t.weight then transpose()
model.layers.{i:int}.norm.weight -> net.layers.{i}.norm.weight
model.embed.weight -> net.embed.weight
"""

CLASSIC_TORCH = """
import sys, torch
src, out, actions = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
state = torch.load(src, map_location="cpu", weights_only=True)
new = {}
for k, v in state.items():
    name = "net." + k[len("model."):]
    if not actions:
        new[name] = v
    elif k.endswith(".qkv.weight"):
        for p, t in zip("qkv", v.chunk(3, 0)):
            new[name.replace("qkv", p)] = t.half().contiguous()
    elif k.endswith("mlp.up.weight"):
        new[name.replace("up.weight", "up_gate.weight")] = torch.cat([v, state[k.replace(".up.", ".gate.")]], 0)
    elif k.endswith("mlp.gate.weight"):
        pass
    elif k.endswith("mlp.down.weight"):
        new[name.replace("down", "down_t")] = v.t().contiguous()
    else:
        new[name] = v
del state
torch.save(new, out)
"""

# The reference merge of Meta's rank files (what convert_llama_weights_to_hf.py does): every
# rank in memory, each tensor concatenated along its cut, q/k permuted, one save_file.
CLASSIC_RANKS = """
import json, sys, torch
from pathlib import Path
from safetensors.torch import save_file
src, out = Path(sys.argv[1]), sys.argv[2]
params = json.loads((src / "params.json").read_text())
ranks = [torch.load(p, map_location="cpu", weights_only=True) for p in sorted(src.glob("consolidated.*.pth"))]
dim, n_heads, n_kv = params["dim"], params["n_heads"], params["n_kv_heads"]
hd = dim // n_heads
def permute(w, n):
    rows, cols = w.shape
    return w.view(n, rows // n // 2, 2, cols).transpose(1, 2).reshape(rows, cols)
def cat(name, d):
    return torch.cat([r[name] for r in ranks], dim=d)
new = {"model.embed_tokens.weight": cat("tok_embeddings.weight", 1), "model.norm.weight": ranks[0]["norm.weight"],
       "lm_head.weight": cat("output.weight", 0)}
for i in range(params["n_layers"]):
    p, m = f"layers.{i}.", f"model.layers.{i}."
    new[m + "self_attn.q_proj.weight"] = permute(cat(p + "attention.wq.weight", 0), n_heads)
    new[m + "self_attn.k_proj.weight"] = permute(cat(p + "attention.wk.weight", 0), n_kv)
    new[m + "self_attn.v_proj.weight"] = cat(p + "attention.wv.weight", 0)
    new[m + "self_attn.o_proj.weight"] = cat(p + "attention.wo.weight", 1)
    new[m + "mlp.gate_proj.weight"] = cat(p + "feed_forward.w1.weight", 0)
    new[m + "mlp.down_proj.weight"] = cat(p + "feed_forward.w2.weight", 1)
    new[m + "mlp.up_proj.weight"] = cat(p + "feed_forward.w3.weight", 0)
    new[m + "input_layernorm.weight"] = ranks[0][p + "attention_norm.weight"]
    new[m + "post_attention_layernorm.weight"] = ranks[0][p + "ffn_norm.weight"]
save_file({k: v.contiguous() for k, v in new.items()}, out)
"""

CLASSIC_SAFETENSORS = """
import sys
from safetensors.numpy import load_file, save_file
src, out = sys.argv[1], sys.argv[2]
state = load_file(src)
save_file({"net." + k[len("model."):]: v for k, v in state.items()}, out)
"""

CLASSIC_MXNET = """
import sys, mxnet as mx, torch
src, out = sys.argv[1], sys.argv[2]
state = {"net." + k[len("model."):]: torch.from_numpy(v.asnumpy()) for k, v in mx.nd.load(src).items()}
torch.save(state, out)
"""


def layers(gb: float, hidden: int = 2048) -> dict[str, TensorInfo]:
    """fp32 transformer-ish layers (qkv, mlp up/gate/down, norms) adding up to about `gb` GB."""
    infos = {"model.embed.weight": TensorInfo((8192, hidden), "float32")}
    i = 0
    while sum(x.nbytes for x in infos.values()) < gb * 1e9:
        infos[f"model.layers.{i}.qkv.weight"] = TensorInfo((3 * hidden, hidden), "float32")
        for m in ("up", "gate"):
            infos[f"model.layers.{i}.mlp.{m}.weight"] = TensorInfo((2 * hidden, hidden), "float32")
        infos[f"model.layers.{i}.mlp.down.weight"] = TensorInfo((hidden, 2 * hidden), "float32")
        infos[f"model.layers.{i}.norm.weight"] = TensorInfo((hidden,), "float32")
        i += 1
    return infos


def llama7b(layers: int = 32) -> dict[str, TensorInfo]:
    """Llama-7B's tensors in fp16: 6.74 B parameters, 13.5 GB (with fewer `layers`, about
    0.52 GB + 0.405 GB a layer)."""
    h, f, v = 4096, 11008, 32000
    infos = {"model.embed_tokens.weight": TensorInfo((v, h), "float16")}
    for i in range(layers):
        for p in "qkvo":
            infos[f"model.layers.{i}.self_attn.{p}_proj.weight"] = TensorInfo((h, h), "float16")
        for m, shape in (("gate", (f, h)), ("up", (f, h)), ("down", (h, f))):
            infos[f"model.layers.{i}.mlp.{m}_proj.weight"] = TensorInfo(shape, "float16")
        for n in ("input_layernorm", "post_attention_layernorm"):
            infos[f"model.layers.{i}.{n}.weight"] = TensorInfo((h,), "float16")
    infos["model.norm.weight"] = TensorInfo((h,), "float16")
    infos["lm_head.weight"] = TensorInfo((v, h), "float16")
    return infos


def meta_ranks(gb: float, ranks: int = 8) -> tuple[list[dict[str, TensorInfo]], dict, int]:
    """An fp16 Llama in Meta's model-parallel layout of about `gb` GB: each rank's tensors (as
    fairscale cuts them), params.json, and the largest merged tensor in bytes."""
    h, f, v, heads, kv = (4096, 11008, 32000, 32, 8) if gb >= 2 else (1024, 2816, 32000, 16, 8)
    per_layer = (2 * h * h + 2 * h * (h // heads * kv) + 3 * h * f) * 2
    n_layers = max(1, round((gb * 1e9 - 2 * v * h * 2) / per_layer))
    full: dict[str, tuple[tuple[int, ...], int | None]] = {
        "tok_embeddings.weight": ((v, h), 1), "norm.weight": ((h,), None), "output.weight": ((v, h), 0)}
    for i in range(n_layers):
        p = f"layers.{i}."
        full.update({p + "attention.wq.weight": ((h, h), 0), p + "attention.wk.weight": ((h // heads * kv, h), 0),
                     p + "attention.wv.weight": ((h // heads * kv, h), 0), p + "attention.wo.weight": ((h, h), 1),
                     p + "feed_forward.w1.weight": ((f, h), 0), p + "feed_forward.w2.weight": ((h, f), 1),
                     p + "feed_forward.w3.weight": ((f, h), 0), p + "attention_norm.weight": ((h,), None),
                     p + "ffn_norm.weight": ((h,), None)})
    out = []
    for _ in range(ranks):
        rank = {}
        for k, (shape, d) in full.items():
            cut = list(shape)
            if d is not None:
                cut[d] //= ranks
            rank[k] = TensorInfo(tuple(cut), "float16")
        out.append(rank)
    params = {"dim": h, "n_layers": n_layers, "n_heads": heads, "n_kv_heads": kv, "vocab_size": v,
              "multiple_of": 256, "norm_eps": 1e-05}
    largest = max(int(np.prod(s)) * 2 for s, _ in full.values())
    return out, params, largest


def fill(path: Path, fmt: str, infos: dict[str, TensorInfo], max_shard_size: str | None = None) -> None:
    """Written by mapspec's own sinks (each tested against the real library); the values are
    a fixed random block tiled, so writing 13.5 GB does not wait on a random generator."""
    block = np.random.default_rng(0).standard_normal(1 << 22).astype(np.float32)
    sink = open_sink(path, fmt, infos, max_shard_size=max_shard_size)
    try:
        for k, info in infos.items():
            n = int(np.prod(info.shape))
            a = np.resize(block, n).astype(info.dtype).reshape(info.shape)
            sink.write(k, a)
        sink.commit()
    except BaseException:
        sink.abort()
        raise


def run(argv: list[str]) -> tuple[float, float]:
    """(wall seconds, peak RSS in MiB) of one child process. The RSS comes from /usr/bin/time:
    a child forked from this (large) process would report this process's size."""
    report = Path(os.environ.get("TMPDIR", "/tmp")) / f"convert_bench.{os.getpid()}.rss"
    t0 = time.perf_counter()
    proc = subprocess.run(["/usr/bin/time", "-f", "%M", "-o", str(report), *argv],
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode:
        raise SystemExit(f"failed ({proc.returncode}): {' '.join(argv)}\n{proc.stderr}")
    rss = int(report.read_text().split()[-1]) / 1024
    report.unlink()
    return wall, rss


def clean(*paths: Path) -> None:
    for p in paths:
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()
    os.sync()


def _files(path: Path) -> list[Path]:
    """A file, or a directory's files in name order."""
    return [f for f in (sorted(path.rglob("*")) if path.is_dir() else [path]) if f.is_file()]


def evict(path: Path) -> None:
    """Drop a file's (or a directory's files') clean pages from the page cache."""
    for f in _files(path):
        fd = os.open(f, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


COLD = False  # --cold: every run reads its source from disk


def warm(path: Path) -> None:
    """Read a file (or a directory's files) through, untimed, so a warm run finds all of it in
    the page cache: this VM's memory reclaim pages out cold page cache now and then, and a
    `cp` that found half its source evicted took 4 s where it takes 0.6 s."""
    for f in _files(path):
        with open(f, "rb", buffering=0) as r:
            while r.read(64 << 20):
                pass


def prepare(src: Path) -> None:
    """Before a timed run: the source out of the page cache (--cold) or all of it in."""
    evict(src) if COLD else warm(src)


def case(title: str, src: Path, commands: dict[str, tuple[list[str], Path]], repeat: int,
         peaks: dict[str, list[float]] | None = None) -> dict[str, list[float]]:
    """Paired runs: per repeat, cp then each command; ratios per pair, medians over repeats.
    Returns every command's times, in run order (and fills `peaks` with their peak RSS, MiB)."""
    copy = src.parent / f"cp-{src.name}"
    cp = ["cp", "-r", str(src), str(copy)]
    times: dict[str, list[float]] = {"cp": []}
    rss: dict[str, list[float]] = peaks if peaks is not None else {}
    rss["cp"] = []
    ratios: dict[str, list[float]] = {}
    for _ in range(repeat):
        clean(copy)
        prepare(src)
        t_cp, r = run(cp)
        times["cp"].append(t_cp)
        rss["cp"].append(r)
        clean(copy)
        for name, (argv, out) in commands.items():
            clean(out)
            prepare(src)
            t, r = run(argv)
            clean(out)
            times.setdefault(name, []).append(t)
            rss.setdefault(name, []).append(r)
            ratios.setdefault(name, []).append(t / t_cp)
    title += ", cold page cache" if COLD else ""
    print(f"\n{title}  ({size(src)}; cp median {statistics.median(times['cp']):.2f} s)")
    print(f"  {'command':<34} {'time / cp':>10} {'median s':>9} {'peak RSS':>10}")
    print(f"  {'cp':<34} {'1.00x':>10} {statistics.median(times['cp']):>9.2f} {max(rss['cp']):>7.0f} MiB")
    for name in commands:
        print(f"  {name:<34} {statistics.median(ratios[name]):>9.2f}x {statistics.median(times[name]):>9.2f} "
              f"{max(rss[name]):>7.0f} MiB")
    sys.stdout.flush()
    return times


def size(path: Path) -> str:
    n = sum(p.stat().st_size for p in path.rglob("*")) if path.is_dir() else path.stat().st_size
    return f"{n / 1e9:.2f} GB"


def as_installed() -> None:
    """Run the commands that follow as a user's install runs them: with bytecode cached.
    PYTHONDONTWRITEBYTECODE (set on some machines, this VM among them) makes every run of a
    source checkout compile each of mapspec's ~70 modules again, 0.13 s here, where a wheel
    install has them compiled by pip. The references' own modules are cached alike."""
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)


def mapspec(spec: Path, src: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, *MAPSPEC, "apply", str(spec), str(src), "-o", str(out), *extra]


def first_run(spec: Path, src: Path, out: Path, *extra: str) -> list[str]:
    """mapspec with its user cache off (MAPSPEC_NO_CACHE=1): the parser tables built and the
    source hashed in full, as on the first conversion of a checkpoint. The plain `mapspec`
    rows are the usual case of converting a source again (its sha256 remembered)."""
    return ["env", "MAPSPEC_NO_CACHE=1", *mapspec(spec, src, out, *extra)]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", type=Path, default=Path("/tmp/mapspec-bench"))
    ap.add_argument("--gb", type=float, default=2.0)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--big", action="store_true", help="also the 13.5 GB fp16 sharded directory")
    ap.add_argument("--big-only", action="store_true", help="only the 13.5 GB case")
    ap.add_argument("--big-gb", type=float, help="the sharded case at about this size (Llama-7B shapes, fewer "
                    "layers) instead of 13.5 GB")
    ap.add_argument("--ranks", action="store_true", help="also the 8-rank Meta layout merged into shards")
    ap.add_argument("--ranks-only", action="store_true", help="only the 8-rank case")
    ap.add_argument("--ranks-gb", type=float, default=4.0, help="size of the 8-rank model (default 4 GB)")
    ap.add_argument("--cold", action="store_true", help="evict the source from the page cache before every run")
    ap.add_argument("--mxnet-python", default="/work/main/.venv-mxnet/bin/python",
                    help="a Python with mxnet and torch, for the classic MXNet way (skipped if absent)")
    args = ap.parse_args()
    global COLD
    COLD = args.cold
    d = args.dir
    d.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(d).free
    only = args.big_only or args.ranks_only
    need = ((0 if only else 4 * 3 * args.gb * 1e9) + (3 * (args.big_gb or 13.5) * 1e9 if args.big or args.big_only else 0)
            + (4 * args.ranks_gb * 1e9 if args.ranks or args.ranks_only else 0))
    if free < need:
        raise SystemExit(f"{d}: {free / 1e9:.1f} GB free, the benchmark needs about {need / 1e9:.0f} GB")
    os.environ["PYTHONPATH"] = str(REPO)
    as_installed()
    print(f"mapspec convert_bench, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {os.uname().nodename}, "
          f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}; medians of {args.repeat} paired runs")
    (d / "rename.map").write_text(RENAME)
    (d / "actions.map").write_text(ACTIONS)
    if not only:
        small_cases(d, args)
    if args.big or args.big_only:
        big_cases(d, args)
    if args.ranks or args.ranks_only:
        rank_cases(d, args)


def small_cases(d: Path, args) -> None:
    """The 2 GB fp32 cases, rename only and with actions, in every source format."""
    infos = layers(args.gb)
    src = {"safetensors": d / "in.safetensors", "torch": d / "in.pt", "mxnet": d / "in.params"}
    for fmt, path in src.items():
        if not path.exists():
            print(f"building {path} ...", flush=True)
            fill(path, fmt, infos)
    torch_in = d / "in-torchsave.pt"  # the classic way reads what torch.save wrote
    if not torch_in.exists():
        subprocess.run([sys.executable, "-c", "import sys, torch; from safetensors.torch import load_file; "
                        "torch.save(load_file(sys.argv[1]), sys.argv[2])", str(src["safetensors"]), str(torch_in)],
                       check=True)
    rename, actions = d / "rename.map", d / "actions.map"
    py = sys.executable
    case("rename only: safetensors -> safetensors", src["safetensors"], {
        "mapspec": (mapspec(rename, src["safetensors"], d / "o.safetensors"), d / "o.safetensors"),
        "mapspec, nothing cached": (first_run(rename, src["safetensors"], d / "o.safetensors"), d / "o.safetensors"),
        "safetensors load_file + save_file": ([py, "-c", CLASSIC_SAFETENSORS, str(src["safetensors"]),
                                              str(d / "c.safetensors")], d / "c.safetensors"),
    }, args.repeat)
    case("rename only: .pt (torch.save) -> .pt", torch_in, {
        "mapspec": (mapspec(rename, torch_in, d / "o.pt"), d / "o.pt"),
        "mapspec, nothing cached": (first_run(rename, torch_in, d / "o.pt"), d / "o.pt"),
        "torch.load + torch.save": ([py, "-c", CLASSIC_TORCH, str(torch_in), str(d / "c.pt"), "0"], d / "c.pt"),
    }, args.repeat)
    case("rename only: .pt -> safetensors, safetensors -> .pt", torch_in, {
        "mapspec .pt -> safetensors": (mapspec(rename, torch_in, d / "o.safetensors"), d / "o.safetensors"),
        "mapspec safetensors -> .pt": (mapspec(rename, src["safetensors"], d / "o.pt"), d / "o.pt"),
    }, args.repeat)
    commands = {
        "mapspec .params -> safetensors": (mapspec(rename, src["mxnet"], d / "o.safetensors"), d / "o.safetensors"),
        "mapspec .params -> .pt": (mapspec(rename, src["mxnet"], d / "o.pt"), d / "o.pt"),
    }
    if Path(args.mxnet_python).exists():
        commands["mx.nd.load + torch.save"] = ([args.mxnet_python, "-c", CLASSIC_MXNET, str(src["mxnet"]),
                                               str(d / "c.pt")], d / "c.pt")
    case("rename only: MXNet .params ->", src["mxnet"], commands, args.repeat)
    case("cast + transpose + split + concat: .pt -> .pt", torch_in, {
        "mapspec": (mapspec(actions, torch_in, d / "o.pt"), d / "o.pt"),
        "torch.load + ops + torch.save": ([py, "-c", CLASSIC_TORCH, str(torch_in), str(d / "c.pt"), "1"], d / "c.pt"),
    }, args.repeat)
    case("cast + transpose + split + concat: safetensors -> safetensors", src["safetensors"], {
        "mapspec": (mapspec(actions, src["safetensors"], d / "o.safetensors"), d / "o.safetensors"),
    }, args.repeat)


def big_cases(d: Path, args) -> None:
    """The 13.5 GB fp16 sharded directory (Llama-7B shapes) into shards, rename only; with
    --big-gb, the same shapes with fewer layers (and shards of a third of the size). The
    first conversion (nothing cached: every shard hashed for the provenance record) is
    paired with a repeat (the shards' sha256 remembered): the goal is at most 1.3x."""
    layers = 32 if args.big_gb is None else max(1, round((args.big_gb * 1e9 - 0.524e9) / 0.405e9))
    infos = llama7b(layers)
    total = sum(i.nbytes for i in infos.values())
    shard = "5GB" if args.big_gb is None else f"{max(1, round(total / 3e6))}MB"
    big = d / ("llama7b" if args.big_gb is None else f"llama-{layers}layers")
    if not big.exists():
        print(f"building {big} ({total / 1e9:.1f} GB) ...", flush=True)
        fill(big, "safetensors", infos, max_shard_size=shard)
    (d / "keep.map").write_text("mapspec 1\n{rest:**} -> {rest}\n")
    keep = d / "keep.map"
    first = "mapspec -> sharded safetensors, nothing cached (first conversion)"
    repeat = "mapspec -> sharded safetensors (repeat)"
    times = case(f"{total / 1e9:.1f} GB fp16 sharded directory, rename only", big, {
        repeat: (mapspec(keep, big, d / "o7b", "--max-shard-size", shard), d / "o7b"),
        first: (first_run(keep, big, d / "o7b", "--max-shard-size", shard), d / "o7b"),
        "mapspec -> sharded .bin": (mapspec(keep, big, d / "o7b-bin", "--max-shard-size", shard, "--to", "torch"),
                                    d / "o7b-bin"),
    }, max(1, args.repeat - 1) if args.big_gb is None else args.repeat)
    pairs = [a / b for a, b in zip(times[first], times[repeat])]
    print(f"  first / repeat conversion: {statistics.median(pairs):.2f}x (paired median of {len(pairs)}; goal <= 1.3x)")


def rank_cases(d: Path, args) -> None:
    """An 8-rank Meta layout (fp16) merged into safetensors shards by llama_meta_to_hf.map."""
    import json

    infos, params, largest = meta_ranks(args.ranks_gb)
    src = d / f"meta8-{args.ranks_gb:g}gb"
    if not src.exists():
        print(f"building {src} ...", flush=True)
        tmp = src.with_name(src.name + ".part")
        clean(tmp)
        tmp.mkdir()
        for r, rank in enumerate(infos):
            fill(tmp / f"consolidated.{r:02d}.pth", "torch", rank)
        (tmp / "params.json").write_text(json.dumps(params))
        tmp.rename(src)
    spec = REPO / "specs" / "llama_meta_to_hf.map"
    print(f"\n8 ranks, {params['n_layers']} layers of dim {params['dim']}: largest merged tensor "
          f"{largest / 2**20:.0f} MiB; peak RSS goal {largest / 2**20 + 150:.0f} MiB")
    case("8-rank Meta layout -> safetensors shards", src, {
        "mapspec": (mapspec(spec, src, d / "o-meta", "--config", str(src / "params.json"),
                            "--max-shard-size", "5GB"), d / "o-meta"),
        "torch.load ranks + cat + save_file": ([sys.executable, "-c", CLASSIC_RANKS, str(src),
                                                str(d / "c-meta.safetensors")], d / "c-meta.safetensors"),
    }, args.repeat)


if __name__ == "__main__":
    main()
