"""What recording the source's sha256 costs: the same conversion with and without provenance.

    python bench/provenance_bench.py [MiB]      (default 1024)

Prints wall time for apply with provenance (sha256 in a background thread), for the bare
conversion (plan + execute with no provenance), and for hashing the file alone."""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from mapspec.api import apply, plan_for
from mapspec.core.tensorinfo import TensorInfo
from mapspec.formats import open_sink, open_source
from mapspec.run.executor import execute
from mapspec.formats.provenance import sha256_path


def main(mib: int = 1024) -> None:
    with tempfile.TemporaryDirectory(dir=".") as d:
        d = Path(d)
        n = 64
        per = mib * (1 << 20) // n // 4
        src = d / "in.safetensors"
        sink = open_sink(src, "safetensors", {f"t.{i}": TensorInfo((per,), "float32") for i in range(n)})
        rng = np.random.default_rng(0)
        for i in range(n):
            sink.write(f"t.{i}", rng.standard_normal(per, dtype=np.float32))
        sink.commit()
        spec = d / "s.map"
        spec.write_text("mapspec 1\nt.{i:int} -> u.{i}\n")
        sha256_path(src)  # warm the page cache for all three runs alike

        t = time.perf_counter()
        apply(spec, src, d / "a.safetensors")
        with_prov = time.perf_counter() - t

        t = time.perf_counter()
        plan = plan_for(spec, src)
        source = open_source(src)
        sink = open_sink(d / "b.safetensors", "safetensors", plan.outputs())
        execute(plan, source, sink)
        sink.commit()
        source.close()
        bare = time.perf_counter() - t

        t = time.perf_counter()
        sha256_path(src)
        hash_only = time.perf_counter() - t
        print(f"{mib} MiB: apply with provenance {with_prov:.2f} s, without {bare:.2f} s, "
              f"sha256 alone {hash_only:.2f} s")


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:]))
