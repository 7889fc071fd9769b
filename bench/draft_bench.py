"""`mapspec draft` on the test pairs: pairing accuracy against the hand-written spec's plan
(right/all, and how many pairs are wrong: the goal is none), how many target tensors it left
open as suggestions, rule counts (the draft's vs the hand-written spec's rules that this pair
uses; goal <= 1.5x), and the time to draft (goal < 2 s for 1,000 keys).

    PYTHONPATH=.:tests python bench/draft_bench.py            # pairs whose libraries import
    PYTHONPATH=.:tests .venv-mxnet/bin/python bench/draft_bench.py   # adds the Gluon ResNets

Pairs without a hand-written spec file (the synthetic ones, numbers-decide) carry the text of
one for the rule count; their right mapping is known from how they are built (equal values
under both names)."""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from mapspec import parse_spec, plan_for  # noqa: E402
from mapspec.tools.draft import draft  # noqa: E402
from mapspec.run.executor import open_for  # noqa: E402
from mapspec.tools.load import target_infos  # noqa: E402

from draft_pairs import CASES  # noqa: E402


def hand_rules(case) -> int:
    """Rules of the hand-written spec that match at least one key of this source."""
    plan = plan_for(case.spec, case.source, epoch=case.epoch)
    spans = {(s.rule.file, s.rule.line) for s in plan.steps} | {(sp.file, sp.line) for _, sp in plan.dropped}
    return len(spans)


def truth_by_value(case) -> dict:
    """The right mapping of a pair built by renaming: every tensor holds distinct values."""
    a, b = _load(case.source), _load(case.target)
    by_value = {}
    for k, v in a.items():
        by_value.setdefault(v.numpy().tobytes(), []).append(k)
    return {t: tuple(by_value[v.numpy().tobytes()]) for t, v in b.items()}


def main() -> None:
    print(f"{'pair':46} {'keys':>5} {'accuracy':>14} {'open':>5} {'rules':>6} {'hand':>5} {'ratio':>6} {'time':>8}  fits")
    with tempfile.TemporaryDirectory() as tmp:
        for name, make in CASES.items():
            try:
                case = make(Path(tmp))
                target = target_infos(case.target)
            except ImportError as exc:
                print(f"{name:46} skipped ({exc.name} not importable)")
                continue
            src = open_for(None, case.source, None, case.epoch)
            infos = dict(src.infos())
            src.close()
            t0 = time.perf_counter()
            d = draft(infos, target)
            dt = time.perf_counter() - t0
            got = d.pairing.mapping()
            if case.spec is not None:
                truth = {s.output: s.inputs for s in plan_for(case.spec, case.source, epoch=case.epoch).steps}
                hand = hand_rules(case)
            else:
                truth = truth_by_value(case)
                hand = len(parse_spec(text=case.hand or SYNTHETIC_HAND).rules)
            right = sum(got.get(k) == v for k, v in truth.items())
            wrong = sum(1 for k, v in truth.items() if k in got and got[k] != v)
            rules = len(parse_spec(text=d.text).rules)
            acc = f"{right}/{len(truth)}" + (f" ({wrong} wrong)" if wrong else "")
            undecided = sum(1 for k in truth if k not in got)
            print(f"{case.name[:46]:46} {len(infos):5} {acc:>14} {undecided:5} {rules:6} {hand:5} {rules / hand:6.2f} "
                  f"{dt:7.2f}s  {'yes' if d.ok else 'NO: ' + str(len(d.problems))}")


def _load(path) -> dict:
    import torch

    if str(path).endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(str(path))
    return torch.load(path, weights_only=True)


SYNTHETIC_HAND = """
arg:stage{s:int}_unit{u:int}_conv{c:int}_weight -> stages.{s-1}.blocks.{u}.conv{c}.weight
{x:arg|aux}:stage{s:int}_unit{u:int}_bn{c:int}_{p in bn} -> stages.{s-1}.blocks.{u}.bn{c}.{bn[p]}
table bn { gamma = weight beta = bias moving_mean = running_mean moving_var = running_var }
"""


if __name__ == "__main__":
    main()
