"""mapspec's fixed cost per run: whole-process wall time of small commands, this checkout
against a baseline checkout, as medians of paired runs (not part of CI).

    PYTHONPATH=. python bench/startup_bench.py --baseline /work/main [--pairs 7]

Each pair runs the baseline and this checkout back to back (which goes first alternates), so
both see the same load on a shared machine; the ratio per pair is this / baseline, and its
median is what to quote. The commands run as the `mapspec` console script does
(`mapspec.cli:main`), on a tiny checkpoint (66 float32 tensors, a rename-only spec), so the
time is start-up, compile and teardown, not copying. Then an import-time breakdown of this
checkout's `apply` (`python -X importtime`): the modules with the most time of their own."""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent
CONSOLE = "import sys; from mapspec.cli import main; sys.argv[0] = 'mapspec'; main()"
SPEC = "mapspec 1\nmodel.{rest:**} -> net.{rest}\n"


def write_tiny(path: Path, layers: int = 11) -> None:
    """A safetensors file of 66 8x8 float32 tensors, written by hand (no numpy needed)."""
    names = [f"model.layers.{i}.{n}.weight" for i in range(layers)
             for n in ("attn.q", "attn.k", "attn.v", "attn.o", "mlp.up", "mlp.down")]
    header, offset = {}, 0
    for name in names:
        header[name] = {"dtype": "F32", "shape": [8, 8], "data_offsets": [offset, offset + 256]}
        offset += 256
    head = json.dumps(header).encode()
    head += b" " * (-len(head) % 8)
    body = b"".join(struct.pack("<64f", *(float(j + i) for j in range(64))) for i in range(len(names)))
    path.write_bytes(struct.pack("<Q", len(head)) + head + body)


def commands(folder: Path) -> dict[str, list[str]]:
    spec, tiny = str(folder / "rename.map"), str(folder / "tiny.safetensors")
    return {
        "apply (66 tensors, rename)": ["apply", spec, tiny, "-o", str(folder / "out.safetensors"), "--force"],
        "check SPEC CHECKPOINT": ["check", spec, tiny],
        "--help": ["--help"],
    }


def environment(root: Path, folder: Path) -> dict[str, str]:
    """As a user runs it: bytecode cached (in a folder of the bench's own, so neither checkout
    is written to; PYTHONDONTWRITEBYTECODE would recompile every module on every run), and a
    user cache directory of each checkout's own: the two grammars differ, and one shared
    built-parser cache would be rebuilt on every run, by each checkout in turn."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONDONTWRITEBYTECODE", "MAPSPEC_NO_CACHE")}
    cache = folder / "cache" / hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:12]
    return {**env, "PYTHONPATH": str(root), "HF_HUB_OFFLINE": "1", "PYTHONPYCACHEPREFIX": str(folder / "pycache"),
            "XDG_CACHE_HOME": str(cache)}


def run(root: Path, python: str, args: list[str], folder: Path) -> float:
    env = environment(root, folder)
    start = time.perf_counter()
    done = subprocess.run([python, "-c", CONSOLE, *args], cwd=folder, env=env, capture_output=True)
    took = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"{root}: mapspec {' '.join(args)} failed ({done.returncode}):\n{done.stderr.decode()}")
    return took


def paired(base: Path, cand: Path, python: str, args: list[str], folder: Path, pairs: int) -> dict:
    for root in (base, cand):  # warm the page cache and the grammar cache; not measured
        run(root, python, args, folder)
    b, c = [], []
    for i in range(pairs):
        order = [(base, b), (cand, c)] if i % 2 == 0 else [(cand, c), (base, b)]
        for root, times in order:
            times.append(run(root, python, args, folder))
    return {"base": statistics.median(b), "cand": statistics.median(c),
            "ratio": statistics.median(x / y for x, y in zip(c, b))}


def import_breakdown(root: Path, python: str, args: list[str], folder: Path, top: int = 10) -> None:
    env = environment(root, folder)
    err = subprocess.run([python, "-X", "importtime", "-c", CONSOLE, *args], cwd=folder, env=env,
                         capture_output=True, text=True).stderr
    own: dict[str, int] = {}
    for line in err.splitlines():
        m = re.match(r"import time:\s+(\d+) \|\s+(\d+) \| (\s*)(\S+)", line)
        if m:
            own[m.group(4)] = int(m.group(1))
    by_package: dict[str, int] = defaultdict(int)
    for name, us in own.items():
        by_package[name.split(".")[0]] += us
    print(f"\nimports of `mapspec {args[0]}` ({root}): {len(own)} modules, {sum(own.values()) / 1e3:.0f} ms "
          "(one run; -X importtime inflates it)")
    print(f"  {'top modules, own time':<44} {'top packages, own time':<30}")
    mods = sorted(own.items(), key=lambda kv: -kv[1])[:top]
    pkgs = sorted(by_package.items(), key=lambda kv: -kv[1])[:top]
    for (m, mu), (p, pu) in zip(mods, pkgs):
        print(f"  {m:<36} {mu / 1e3:5.1f} ms  {p:<22} {pu / 1e3:5.1f} ms")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--baseline", type=Path, required=True, help="another checkout of mapspec (its root)")
    ap.add_argument("--candidate", type=Path, default=HERE, help="default: this checkout")
    ap.add_argument("--pairs", type=int, default=7)
    ap.add_argument("--python", default=sys.executable)
    a = ap.parse_args()
    if a.pairs < 5:
        ap.error("--pairs: at least 5 (one pair says nothing on a shared machine)")
    with tempfile.TemporaryDirectory(prefix="mapspec-startup-") as tmp:
        folder = Path(tmp)
        write_tiny(folder / "tiny.safetensors")
        (folder / "rename.map").write_text(SPEC)
        print(f"{a.pairs} pairs; baseline {a.baseline}, candidate {a.candidate}; "
              f"{os.cpu_count()} cores, load {os.getloadavg()[0]:.2f}")
        print(f"  {'command':<28} {'baseline':>9} {'candidate':>10} {'ratio (median of pairs)':>24}")
        cmds = commands(folder)
        for name, args in cmds.items():
            r = paired(a.baseline, a.candidate, a.python, args, folder, a.pairs)
            print(f"  {name:<28} {r['base']:8.3f}s {r['cand']:9.3f}s {r['ratio']:23.2f}x")
        import_breakdown(a.candidate, a.python, next(iter(cmds.values())), folder)


if __name__ == "__main__":
    main()
