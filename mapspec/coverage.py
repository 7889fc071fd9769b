"""Why source keys went unmatched, and what to write instead: one line per kind of problem.

Each unmatched key gets a finding: a rule that would match it with another `arg:`/`aux:`
prefix; a rule that differs from it in a few tokens (segment-aware, see `hints`); a last
segment no rule takes (BatchNorm counters, a table entry short). Keys with the same finding
fold into one line with a count, a glob and one suggestion."""

from __future__ import annotations

import re
from collections import Counter
from typing import TYPE_CHECKING, Mapping

from .hints import PatternIndex, fold, glob_of, pair_by_name, plural
from .matcher import Ambiguous, Matcher
from .rules import RenameRule, Spec

if TYPE_CHECKING:
    from .plan import TensorInfo

MAX_LINES = 20
PREFIXES = ("arg:", "aux:")


def _patterns(rule):
    return rule.sources if isinstance(rule, RenameRule) else rule.patterns


def _prefix_variants(key: str):
    """(variant, what changed) for a key whose MXNet prefix may be wrong or missing."""
    for p in PREFIXES:
        if key.startswith(p):
            other = PREFIXES[1 - PREFIXES.index(p)]
            yield other + key[len(p):], (p, other)
            yield key[len(p):], (p, "")
            return
    for p in PREFIXES:
        yield p + key, ("", p)


def _match(matcher: Matcher, key: str):
    try:
        return matcher.match(key)
    except Ambiguous as amb:
        return amb.first, {}


def _finding(key: str, spec: Spec, matcher: Matcher, index: PatternIndex):
    """(fold key, description of one) for an unmatched key."""
    for variant, (old, new) in _prefix_variants(key):
        hit = _match(matcher, variant)
        if hit is not None:
            entry = hit[0]
            rule = spec.rules[entry.rule]
            if old and new:
                what = (f"the rule at line {rule.span.line} ({entry.pattern.text}) matches with "
                        f"'{new}', not '{old}': write '{{x:arg|aux}}:' to take both")
            elif old:
                what = (f"the rule at line {rule.span.line} ({entry.pattern.text}) matches without "
                        f"the '{old}' prefix: add it to the pattern")
            else:
                what = (f"the rule at line {rule.span.line} ({entry.pattern.text}) expects a '{new}' prefix "
                        "the key does not have: remove it from the pattern")
            return ("prefix", entry.rule, old, new), what
    last = key.rsplit(".", 1)[-1]
    close = index.closest(key)
    if close is not None:
        score, pattern, rule, diffs = close
        where = f"line {rule.span.line} ({pattern.text})"
        if len(diffs) == 1 and diffs[0][0] == last:
            return ("last", last), f"{_widen(where, diffs[0][1], last)}, or add 'drop @DROP@'"
        if diffs:
            edits = ", ".join(f"'{t}' in place of '{k}'" for k, t in diffs)
            return ("close", rule.span, pattern.text, tuple(t for _, t in diffs)), f"closest rule: {where} has {edits}"
        return ("near", rule.span, pattern.text), f"closest rule: {where}"
    return ("last", last), "no rule comes close: add a rule, or add 'drop @DROP@'"


def _widen(where: str, segment: str, last: str) -> str:
    """How to make the closest rule take a last segment it does not."""
    table = re.fullmatch(r"\{\w* in (\w+)\}", segment)
    if table:
        return f"closest rule: {where}; '{last}' is not in table {table[1]}: add it there"
    alt = re.fullmatch(r"\{(\w*):?([^{}]*\|[^{}]*)\}", segment)
    if alt:
        return f"closest rule: {where}; '{last}' is not one of {alt[2]}: add it there"
    return (f"closest rule: {where} has '{segment}' in place of '{last}': widen it "
            f"(e.g. {{p:{segment}|{last}}} with {{p}} in the target)")


def unmatched_lines(unmatched: list[str], spec: Spec, matcher: Matcher, tables: dict[str, tuple[str, ...]],
                    keys: Mapping[str, TensorInfo] | None = None,
                    missing: Mapping[str, TensorInfo] | None = None) -> list[str]:
    """One line per kind of problem; with a target, the target key no output produces that
    each (first) key most likely is (same shape, similar name)."""
    index = PatternIndex(((p, r) for r in spec.rules for p in _patterns(r)), tables)
    findings = [(key,) + _finding(key, spec, matcher, index) for key in unmatched]
    counterpart = {}
    if keys and missing:
        left = [(k, keys[k]) for k in unmatched]
        right = list(missing.items())
        for i, j in pair_by_name(left, right, lambda a, b: tuple(a.shape) == tuple(b.shape)):
            counterpart[left[i][0]] = right[j][0]
    lines = []
    groups = fold(findings, lambda f: f[1])
    for group in groups[:MAX_LINES]:
        names = [g[0] for g in group]
        what = Counter(g[2] for g in group).most_common(1)[0][0]
        pair = next(((k, counterpart[k]) for k in names if k in counterpart), None)
        if pair is not None:
            what += (f"; the target's {pair[1]}, which no rule produces, has the shape and a similar name"
                     + (f" of {pair[0]}" if len(names) > 1 else ""))
        if len(names) == 1:
            lines.append(f"{names[0]}: {what.replace('@DROP@', names[0])}")
        else:
            what = what.replace("@DROP@", glob_of(names))
            lines.append(f"{plural(len(names), 'key')} like {glob_of(names)}: {what}")
    rest = groups[MAX_LINES:]
    if rest:
        lines.append(f"... and {sum(len(g) for g in rest)} more keys in {len(rest)} more groups "
                     "(`mapspec check --non-strict` then `mapspec explain` shows the plan without them)")
    return lines

