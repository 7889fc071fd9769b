"""Compile+plan of a 100,000-key checkpoint listing against a 200-rule spec, side by side
with a naive matcher (every key against every rule with re.fullmatch) in one process; then
the scaling goals: 1,000,000 keys x 200 rules under 10 s, and 2,000 rules costing at most
2x what 200 do (same keys).

    python bench/plan_bench.py [--keys 100000] [--rules 200] [--repeat 3] [--no-scaling]
"""

from __future__ import annotations

import argparse
import re
import time

from mapspec import TensorInfo, compile_spec, parse_spec
from mapspec.compile.matcher import pattern_regex

KINDS = ["attn_q", "attn_k", "attn_v", "attn_o", "mlp_up", "mlp_down", "mlp_gate", "norm1", "norm2", "adapter"]


def build(n_rules: int, n_keys: int) -> tuple[str, dict[str, TensorInfo]]:
    """A spec with n_rules rules over stacked blocks, and keys that each match one rule."""
    rules = []
    per_block = n_rules // 20
    for b in range(20):  # 20 block families x per_block parameter kinds
        for k in range(per_block):
            rules.append(f"model.family{b}.layers.{{i:int}}.{KINDS[k % 10]}_{k}.{{p:weight|bias}} "
                         f"-> net.f{b}.blocks.{{i+1}}.{KINDS[k % 10]}{k}.{{p}}")
    spec = "mapspec 1\n" + "\n".join(rules) + "\n"
    keys: dict[str, TensorInfo] = {}
    i = 0
    while len(keys) < n_keys:
        for b in range(20):
            for k in range(per_block):
                for p in ("weight", "bias"):
                    keys[f"model.family{b}.layers.{i}.{KINDS[k % 10]}_{k}.{p}"] = TensorInfo((64, 64), "float32")
                    if len(keys) >= n_keys:
                        return spec, keys
        i += 1
    return spec, keys


def naive(spec, keys) -> dict[str, str]:
    """The throwaway-script way, implementing the same spec: every key against every rule
    with `re.fullmatch` (all rules, so a key matched twice is caught as mapspec catches it),
    then the matched rule's target rendered with str.format and the arithmetic done inline."""
    rules = []
    for rule in spec.rules:
        (pat,) = rule.sources
        rules.append((pattern_regex(pat, {}).pattern, rule.target.text.replace("{i+1}", "{i1}")))
    out: dict[str, str] = {}
    for key in keys:
        hits = [(m, tmpl) for rx, tmpl in rules if (m := re.fullmatch(rx, key))]
        if len(hits) != 1:
            raise SystemExit(f"naive: {key} matched {len(hits)} rules")
        m, tmpl = hits[0]
        caps = m.groupdict()
        target = tmpl.format(i1=int(caps["i"]) + 1, **caps)
        if target in out:
            raise SystemExit(f"naive: {target} produced twice")
        out[target] = key
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--keys", type=int, default=100_000)
    ap.add_argument("--rules", type=int, default=200)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--no-scaling", action="store_true", help="skip the 1M-key and 2,000-rule runs")
    args = ap.parse_args()
    text, keys = build(args.rules, args.keys)
    spec = parse_spec(text=text, name="bench.map")
    print(f"{len(keys)} keys, {len(spec.rules)} rules")
    best_plan = best_naive = float("inf")
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        plan = compile_spec(spec, keys)
        t1 = time.perf_counter()
        expected = naive(spec, keys)
        t2 = time.perf_counter()
        best_plan, best_naive = min(best_plan, t1 - t0), min(best_naive, t2 - t1)
    assert {s.output: s.inputs[0] for s in plan.steps} == expected, "mapspec and naive disagree"
    print(f"compile+plan (mapspec):   {best_plan:8.3f} s")
    print(f"naive per-key x per-rule: {best_naive:8.3f} s")
    print(f"speed-up: {best_naive / best_plan:.1f}x   (goal: >= 10x, and compile+plan < 1 s)")
    if not args.no_scaling:
        scaling(args.repeat)


def timed(n_rules: int, n_keys: int, repeat: int) -> tuple[float, float]:
    """Best of `repeat`: (parsing the spec, compile+plan)."""
    text, keys = build(n_rules, n_keys)
    parse = plan = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        spec = parse_spec(text=text, name="bench.map")
        t1 = time.perf_counter()
        compile_spec(spec, keys)
        t2 = time.perf_counter()
        parse, plan = min(parse, t1 - t0), min(plan, t2 - t1)
    return parse, plan


def scaling(repeat: int) -> None:
    parse, plan = timed(200, 1_000_000, 1)
    print(f"1,000,000 keys x 200 rules: compile+plan {plan:7.3f} s   (goal: < 10 s; parsing {parse:.3f} s)")
    at = {}
    for n_keys in (1_000, 100_000):
        (p1, few), (p2, many) = at[n_keys] = timed(200, n_keys, repeat), timed(2000, n_keys, repeat)
        print(f"{n_keys:>9,} keys: compile+plan 200 rules {few:7.3f} s, 2,000 rules {many:7.3f} s: "
              f"{many / few:.2f}x   (goal: <= 2x; parsing {p1:.3f} s vs {p2:.3f} s)")
    (p1, few), (p2, many) = at[1_000]
    print(f"per rule: parsing {p1 / 200 * 1e3:.3f} ms (200 rules), {p2 / 2000 * 1e3:.3f} ms (2,000 rules); "
          f"compile+plan of each rule past 200, at 1,000 keys: {(many - few) / 1800 * 1e6:.1f} us")


if __name__ == "__main__":
    main()
