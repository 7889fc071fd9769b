"""The long fuzz campaign: `python -m tests.fuzz.run --cases 5000 --seed 1`.

Runs every hostile pickle in every container, then `--cases` seeded mutations of valid files
of every format, `--cases // 5` mutated specs, `--cases // 10` unresolvable paths and as many
huge numbers, and `--cases // 50` huge or deeply nested specs, and prints each finding and a summary; exit 1
if any case was not clean. `--keep DIR` keeps the cases' folders for reproduction. Run it
with the interpreter of the environment to fuzz (the MXNet one adds mx.nd.save seeds)."""

from __future__ import annotations

import argparse
import itertools
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from .campaign import huge_spec_cases, mutation_cases, number_cases, path_cases, pickle_cases, spec_cases
from .harness import Runner


def run(cases, runner: Runner, notes: Counter, batch: int = 50) -> tuple[int, list]:
    findings, total = [], 0
    cases = iter(cases)
    while chunk := list(itertools.islice(cases, batch)):
        for verdict in runner.run_all(chunk):
            total += 1
            notes.update(verdict.notes)
            if not verdict.clean:
                findings.append(verdict)
                print(verdict, flush=True)
    return total, findings


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.fuzz.run", description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=1000, help="mutations of valid files (specs: a fifth as many)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-pickles", action="store_true", help="skip the hostile pickle corpus")
    ap.add_argument("--keep", type=Path, help="keep case folders here")
    ap.add_argument("--workers", type=int, default=2, help="cases run at once")
    args = ap.parse_args(argv)
    base = args.keep or Path(tempfile.mkdtemp(prefix="mapspec-fuzz-"))
    base.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    groups = []
    with Runner(args.workers) as runner:
        if not args.no_pickles:
            groups.append(("hostile pickles", pickle_cases(base / "pickles")))
        groups.append(("file mutations", mutation_cases(base / "files", args.seed, args.cases)))
        groups.append(("spec mutations", spec_cases(base / "specs", args.seed, max(1, args.cases // 5))))
        groups.append(("unresolvable paths", path_cases(base / "paths", args.seed, max(1, args.cases // 10))))
        groups.append(("huge numbers", number_cases(base / "numbers", args.seed, max(1, args.cases // 10))))
        groups.append(("huge specs", huge_spec_cases(base / "huge", args.seed, max(1, args.cases // 50))))
        summary = []
        all_findings = []
        notes: Counter = Counter()
        for name, cases in groups:
            total, findings = run(cases, runner, notes)
            summary.append(f"{name}: {total} cases, {total - len(findings)} clean")
            all_findings += findings
    print("\n".join(summary))
    kinds = Counter(p for v in all_findings for p in v.problems)
    for problem, n in kinds.most_common():
        print(f"  {n:5d}  {problem}")
    for note, n in notes.most_common():  # divergences from a non-reference library: not failures
        print(f"  note: {n} x {note}")
    print(f"{time.monotonic() - start:.0f} s" + (f"; cases kept in {base}" if args.keep else ""))
    if not args.keep:
        import shutil

        shutil.rmtree(base, ignore_errors=True)
    return 1 if all_findings else 0


if __name__ == "__main__":
    sys.exit(main())
