"""Checkpoints on object storage and conversion on Ray, against the plain parallel copy.

    /work/venv/bin/python bench/remote_bench.py [--dir DIR] [--gb 2] [--shard 500MB] [--repeat 3]
        [--concurrency 8] [--ray-gb 13.5] [--no-ray]

Part 1: a sharded fp32 safetensors model of --gb GB (bench/convert_bench.layers shapes) is put
on a local S3 server (moto's, started here on 127.0.0.1, the same server the tests use) and
converted rename-only by `mapspec apply` S3 -> local and S3 -> S3, each paired with s3fs's
own parallel transfer of the same objects (`get` for S3 -> local; `get` then `put` through
this machine for S3 -> S3, the path mapspec's bytes take; the server-side `copy` is shown
beside it for reference). Medians of the paired ratios, and every command's peak RSS.
Goal: mapspec within 1.3x the plain copy; peak RSS bounded (not growing with the model).

Part 2: --ray-gb GB of Llama-shaped fp16 shards (13.5 GB: Llama-7B, as in convert_bench
--big; smaller values keep the shapes and take fewer layers) converted local -> local, rename
plus a cast to float32, by one process and by `--ray` on a local Ray cluster of two worker
processes (`ray start --head --num-cpus 2`, started and killed here). Goal: Ray on one
machine no slower than one process (its gain is across machines: docs/scale-out.md).

Not part of CI: numbers depend on the machine. moto keeps objects in memory and is a Python
server: it is the bottleneck of part 1, for the copy and for mapspec alike.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))
sys.path.insert(0, str(REPO / "tests"))

from convert_bench import as_installed, fill, layers, llama7b, run  # noqa: E402
from mapspec import TensorInfo  # noqa: E402
from servers import moto_server, ray_cluster  # noqa: E402

MAPSPEC = ["-c", "import sys; from mapspec.cli import main; sys.argv[0] = 'mapspec'; main()"]
RENAME = "mapspec 1\nmodel.{rest:**} -> net.{rest}\n"
CAST = "mapspec 1\n{k:**} -> net.{k} then cast(float32)\n"
S3FS = """
import sys, fsspec
fs = fsspec.filesystem("s3")
what, a, b = sys.argv[1:4]
if what == "get":
    fs.get(a, b, recursive=True)
elif what == "getput":
    fs.get(a, b, recursive=True)
    fs.put(b, sys.argv[4], recursive=True)
else:
    fs.copy(a, b, recursive=True)
"""


def mapspec(*args: str) -> list[str]:
    return [sys.executable, *MAPSPEC, "apply", *args]


def s3fs(*args: str) -> list[str]:
    return [sys.executable, "-c", S3FS, *args]


def paired(title: str, commands: dict, repeat: int, cleanup) -> None:
    """Per repeat: each command once (the first is the baseline); ratios per pair."""
    times: dict[str, list[float]] = {k: [] for k in commands}
    rss: dict[str, float] = {k: 0.0 for k in commands}
    for _ in range(repeat):
        for name, argv in commands.items():
            cleanup()
            wall, peak = run(argv)
            times[name].append(wall)
            rss[name] = max(rss[name], peak)
    cleanup()
    base = next(iter(commands))
    print(f"\n{title}")
    for name in commands:
        ratios = [t / b for t, b in zip(times[name], times[base])]
        print(f"  {name:<34} median {statistics.median(times[name]):7.2f} s   x{statistics.median(ratios):.2f} "
              f"of {base}   peak RSS {rss[name]:6.0f} MiB", flush=True)


def s3_cases(d: Path, args) -> None:
    src = d / f"model-{args.gb}gb"
    if not src.exists():
        print(f"building {src} ({args.gb} GB) ...", flush=True)
        fill(src, "safetensors", layers(args.gb), max_shard_size=args.shard)
    (d / "rename.map").write_text(RENAME)
    with moto_server():
        import fsspec

        fs = fsspec.filesystem("s3", skip_instance_cache=True)
        fs.mkdir("bench-src")
        fs.mkdir("bench-out")
        t0 = time.perf_counter()
        fs.put(str(src) + "/", "bench-src/model", recursive=True)
        print(f"uploaded {args.gb} GB to the local S3 server in {time.perf_counter() - t0:.1f} s", flush=True)
        local = d / "out"

        def cleanup() -> None:
            shutil.rmtree(local, ignore_errors=True)
            fs.invalidate_cache()
            for o in fs.find("bench-out"):
                fs.rm(o)
            fs.invalidate_cache()

        conc = ["--concurrency", str(args.concurrency)]
        paired(f"{args.gb} GB sharded safetensors, S3 -> local, rename only", {
            "s3fs get (parallel)": s3fs("get", "s3://bench-src/model/", str(local) + "/"),
            "mapspec apply": mapspec(str(d / "rename.map"), "s3://bench-src/model", "-o", str(local),
                                     "--max-shard-size", args.shard, *conc),
        }, args.repeat, cleanup)
        paired(f"{args.gb} GB sharded safetensors, S3 -> S3, rename only", {
            "s3fs get + put (through here)": s3fs("getput", "s3://bench-src/model/", str(local) + "/",
                                                  "s3://bench-out/model/"),
            "s3fs copy (server side)": s3fs("copy", "s3://bench-src/model/", "s3://bench-out/model/"),
            "mapspec apply": mapspec(str(d / "rename.map"), "s3://bench-src/model", "-o", "s3://bench-out/model",
                                     "--max-shard-size", args.shard, *conc),
        }, args.repeat, cleanup)


def llama_part(gb: float) -> dict[str, TensorInfo]:
    """Llama-7B's tensors, the first layers only when `gb` is less than 13.5."""
    infos = llama7b()
    keep = max(1, round(32 * gb / 13.5))
    return {k: v for k, v in infos.items() if not k.startswith("model.layers.") or int(k.split(".")[2]) < keep}


def ray_cases(d: Path, args) -> None:
    src = d / f"llama-{args.ray_gb}gb"
    if not src.exists():
        print(f"building {src} ({args.ray_gb} GB) ...", flush=True)
        fill(src, "safetensors", llama_part(args.ray_gb), max_shard_size="2GB")
    (d / "cast.map").write_text(CAST)
    out = d / "ray-out"

    def cleanup() -> None:
        shutil.rmtree(out, ignore_errors=True)
        os.sync()

    env_path = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env_path]))
    as_installed()
    t0 = time.perf_counter()
    with ray_cluster(cpus=2) as address:
        print(f"Ray cluster (head, 2 worker processes) up in {time.perf_counter() - t0:.1f} s", flush=True)
        base = [str(d / "cast.map"), str(src), "-o", str(out), "--max-shard-size", "2GB"]
        paired(f"{args.ray_gb} GB fp16 Llama shards -> float32 shards (rename + cast), local -> local", {
            "one process": mapspec(*base),
            "--ray, 2 workers": mapspec(*base, "--ray", address),
        }, args.repeat, cleanup)
        print("  (the driver's RSS only; each Ray worker holds about one tensor plus its read-ahead)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dir", type=Path, default=Path("/tmp/mapspec-remote-bench"))
    ap.add_argument("--gb", type=float, default=2.0)
    ap.add_argument("--shard", default="500MB")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--ray-gb", type=float, default=13.5)
    ap.add_argument("--no-ray", action="store_true")
    args = ap.parse_args()
    args.dir.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(args.dir).free
    need = 4 * args.gb * 1e9 + (0 if args.no_ray else 3.5 * args.ray_gb * 1e9)
    if free < need:
        raise SystemExit(f"{args.dir}: {free / 1e9:.1f} GB free, the bench needs about {need / 1e9:.1f} GB")
    s3_cases(args.dir, args)
    if not args.no_ray:
        ray_cases(args.dir, args)


if __name__ == "__main__":
    main()
