"""Why source keys went unmatched, and what to write instead: one line per kind of problem.

Each unmatched key gets a finding: a rule that would match it with another `arg:`/`aux:`
prefix; a rule that differs from it in a few tokens (segment-aware, see `hints`); a last
segment no rule takes (BatchNorm counters, a table entry short). Keys with the same finding
fold into one line with a count, a glob and one suggestion."""

from __future__ import annotations

import re
from collections import Counter
from typing import TYPE_CHECKING, Mapping

from ..core.quoting import shown
from .hints import PatternIndex, fold, glob_of, pair_by_name, plural
from .matcher import Ambiguous, Entry, Matcher
from ..lang.rules import RenameRule, Spec

if TYPE_CHECKING:
    from ..core.tensorinfo import TensorInfo

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


def _finding(key: str, spec: Spec, matcher: Matcher, index: PatternIndex, copies: Matcher | None):
    """(fold key, description of one) for an unmatched key. A copy that reads the key is named
    (a copy never covers its key); the catch-all is never offered as the rule the key missed
    (it takes what no rule matches, however broad its pattern)."""
    found = _closest(key, spec, matcher, index)
    copy = _match(copies, key) if copies is not None else None
    if copy is not None:  # the key is known to the spec: say what is missing, then any near miss
        line = spec.rules[copy[0].rule].span.line
        what = (f"the copy at line {line} reads it, but a copy is one more output, not the key's own rule: "
                "add one (a rename, or 'keep @DROP@')")
        if found is not None and found[0][0] in ("prefix", "last"):
            return found[0] + ("copy", line), f"{what}; or {found[1]}"
        return ("copy", line, key.rsplit(".", 1)[-1]), what
    if found is not None:
        return found
    last = ("last", key.rsplit(".", 1)[-1])
    fallback = next((r for r in spec.rules if r.otherwise), None)  # (only one with a pattern leaves keys over)
    also = (f", and the catch-all at line {fallback.span.line} takes only "
            f"{' | '.join(p.text for p in _patterns(fallback))}") if fallback is not None else ""
    return last, f"no rule comes close{also}: add a rule, or add 'drop @DROP@'"


def _closest(key: str, spec: Spec, matcher: Matcher, index: PatternIndex):
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
            edits = ", ".join(f"{shown(t)} in place of {shown(k)}" for k, t in diffs)
            return ("close", rule.span, pattern.text, tuple(t for _, t in diffs)), f"closest rule: {where} has {edits}"
        return ("near", rule.span, pattern.text), f"closest rule: {where}"
    return None


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
    ordinary = [(ri, r) for ri, r in enumerate(spec.rules) if not r.otherwise and not getattr(r, "is_copy", False)]
    index = PatternIndex(((p, r) for _, r in ordinary for p in _patterns(r)), tables)
    copies = [Entry(ri, 0, r.sources[0]) for ri, r in enumerate(spec.rules) if getattr(r, "is_copy", False)]
    copy_matcher = Matcher(copies, tables) if copies else None
    findings = [(key,) + _finding(key, spec, matcher, index, copy_matcher) for key in unmatched]
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

