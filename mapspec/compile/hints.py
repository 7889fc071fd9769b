"""What a key should have been: name similarity that respects segments, globs that fold many
keys into one line, and pairing of names that differ only where a rule went wrong.

Names are compared as token sequences (split at `.`, `:` and `_`), never as raw strings:
`features.4.0.body.0.bias` is one token away from `features.{s}.{b}.body.{i}.weight` and far
from `features.0.weight`, however many characters the two happen to share."""

from __future__ import annotations

import os
import re
from difflib import SequenceMatcher
from typing import Callable, Iterable, Sequence, TypeVar

from .matcher import capture_regex
from ..lang.rules import Capture, Pattern

_SEP = re.compile(r"([.:_])")
T = TypeVar("T")


def tokens(name: str) -> list[str]:
    """`arg:stage1_conv0.weight` -> ['arg', 'stage1', 'conv0', 'weight']."""
    return [t for t in _SEP.split(name)[::2]]


def name_similarity(a: str, b: str) -> float:
    """0..1: how many tokens the two names share, in order."""
    return SequenceMatcher(None, tokens(a), tokens(b), autojunk=False).ratio()


def _spans(name: str) -> list[tuple[str, int, int]]:
    out, pos = [], 0
    for t in _SEP.split(name)[::2]:
        out.append((t, pos, pos + len(t)))
        pos += len(t) + 1
    return out


def replacements(a: str, b: str) -> tuple[tuple[str, str], ...]:
    """The token edits that turn name `a` into name `b`: (('bn', '1'),) for
    layer1.0.downsample.bn.weight -> layer1.0.downsample.1.weight."""
    sa, sb = _spans(a), _spans(b)
    out = []
    matcher = SequenceMatcher(None, [t for t, _, _ in sa], [t for t, _, _ in sb], autojunk=False)
    for op, i1, i2, j1, j2 in matcher.get_opcodes():
        if op != "equal":
            ta = a[sa[i1][1]:sa[i2 - 1][2]] if i2 > i1 else ""
            tb = b[sb[j1][1]:sb[j2 - 1][2]] if j2 > j1 else ""
            out.append((ta, tb))
    return tuple(out)


# ------------------------------------------------------------------ patterns

class _PatternTokens:
    """A source pattern as token regexes, so a key can be aligned with it token by token."""

    MULTI = object()

    def __init__(self, pattern: Pattern, tables: dict[str, tuple[str, ...]], seps: str = ".:_"):
        self.pattern = pattern
        self.seps = seps
        self.items: list = []  # compiled regex per token, or MULTI for `**`
        self.texts: list[str] = []  # the pattern text of each token
        self.weights: list[float] = []
        cur, text, lit = "", "", False
        for part in pattern.parts:
            if isinstance(part, Capture):
                if part.type == "multi":
                    if cur:
                        self._push(cur, text, lit)
                    self.items.append(self.MULTI)
                    self.texts.append("**")
                    self.weights.append(0.25)
                    cur, text, lit = "", "", False
                    continue
                cur += capture_regex(part, tables)
                text += _capture_text(part)
                continue
            for ch in part.text:
                if ch in seps:
                    self._push(cur, text, lit)
                    cur, text, lit = "", "", False
                else:
                    cur += re.escape(ch)
                    text += ch
                    lit = True
        self._push(cur, text, lit)

    def _push(self, regex: str, text: str, literal: bool) -> None:
        if regex or text:
            self.items.append(re.compile(regex))
            self.texts.append(text)
            self.weights.append(1.0 if literal else 0.5)

    def align(self, key: str) -> tuple[float, list[tuple[str, str]]]:
        """Similarity with `key` (0..1) and the (key token, pattern token) pairs that differ
        where the two have the same number of tokens."""
        kt = tokens(key) if self.seps == ".:_" else key.split(".")
        n, m = len(self.items), len(kt)
        # LCS where a token regex matches a key token and `**` absorbs any run of them; a
        # token with literal text counts 1, a bare capture (which matches almost anything) 1/2.
        dp = [[0.0] * (m + 1) for _ in range(n + 1)]
        for i in range(1, n + 1):
            item, weight = self.items[i - 1], self.weights[i - 1]
            for j in range(1, m + 1):
                best = max(dp[i - 1][j], dp[i][j - 1])
                if item is self.MULTI:
                    best = max(best, dp[i][j - 1] + weight, dp[i - 1][j - 1] + weight)
                elif item.fullmatch(kt[j - 1]):
                    best = max(best, dp[i - 1][j - 1] + weight)
                dp[i][j] = best
        score = dp[n][m] / max(n, m) if n and m else 0.0
        diffs = []
        if n == m and self.MULTI not in self.items:
            diffs = [(k, t) for k, t, it in zip(kt, self.texts, self.items) if not it.fullmatch(k)]
        return score, diffs


def _capture_text(cap: Capture) -> str:
    name = cap.name or ""
    if cap.type == "int":
        return "{" + name + ":int" + ("".join(map(str, cap.condition)) if cap.condition else "") + "}"
    if cap.type == "alt":
        return "{" + (name + ":" if name else "") + "|".join(cap.alternatives) + "}"
    if cap.type == "table":
        return "{" + f"{name} in {cap.table}" + "}"
    return "{" + name + "}" if name else "*"


class PatternIndex:
    """Every source pattern of a spec, for "which rule did you mean" questions."""

    def __init__(self, entries: Iterable[tuple[Pattern, object]], tables: dict[str, tuple[str, ...]]):
        self.entries = [(_PatternTokens(p, tables), _PatternTokens(p, tables, "."), rule) for p, rule in entries]

    def closest(self, key: str, cutoff: float = 0.5):
        """(score, pattern, rule, differing segments) of the most similar pattern, or None.
        Similarity is the better of token-wise and segment-wise alignment (MXNet names are
        one long segment); the differences are whole dot-separated segments (key segment,
        pattern segment), when the two have as many segments."""
        best = None
        for fine, coarse, rule in self.entries:
            score = max(fine.align(key)[0], coarse.align(key)[0])
            if score >= cutoff and (best is None or score > best[0]):
                best = (score, coarse, rule)
        if best is None:
            return None
        score, coarse, rule = best
        return score, coarse.pattern, rule, coarse.align(key)[1]


# ------------------------------------------------------------------ folding

def glob_of(names: Sequence[str]) -> str:
    """One glob that covers all `names`: what they share kept, what differs as `*`
    (`layer*.0.downsample.bn.*`); `**.suffix` when they differ in depth."""
    if len(set(names)) == 1:
        return names[0]
    segs = [n.split(".") for n in names]
    if len({len(s) for s in segs}) == 1:
        return ".".join(col[0] if len(set(col)) == 1 else _segment_glob(col) for col in zip(*segs))
    suffix: list[str] = []
    for parts in zip(*(reversed(s) for s in segs)):
        if len(set(parts)) != 1:
            break
        suffix.insert(0, parts[0])
    if suffix:
        return "**." + ".".join(suffix)
    prefix: list[str] = []
    for parts in zip(*segs):
        if len(set(parts)) != 1:
            break
        prefix.append(parts[0])
    return ".".join(prefix) + ".**" if prefix else "**"


def _segment_glob(col: Sequence[str]) -> str:
    """`running_mean`, `running_var` -> `running_*`; `layer1`, `layer4` -> `layer*`."""
    split = [re.split(r"([:_])", c) for c in col]
    if len({len(s) for s in split}) != 1 or any(s[1::2] != split[0][1::2] for s in split):
        return _chars_glob(col)
    return "".join(t[0] if len(set(t)) == 1 else _chars_glob(t) for t in zip(*split))


def _chars_glob(col: Sequence[str]) -> str:
    head = os.path.commonprefix(list(col))
    rest = [c[len(head):] for c in col]
    tail = os.path.commonprefix([r[::-1] for r in rest])[::-1]
    # one shared final letter (gamm_a_, bet_a_) is chance, not structure
    return head + "*" + (tail if len(tail) > 1 else "")


def skeleton(name: str) -> str:
    """A name with its numbers blanked: the keys of repeated layers share one skeleton."""
    return re.sub(r"[0-9]+", "#", name)


def fold(items: Iterable[T], key: Callable[[T], object]) -> list[list[T]]:
    """Group items by `key`, groups in order of first appearance."""
    groups: dict = {}
    for it in items:
        groups.setdefault(key(it), []).append(it)
    return list(groups.values())


def plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def pair_by_name(left: Sequence[tuple[str, object]], right: Sequence[tuple[str, object]],
                 same: Callable[[object, object], bool], cutoff: float = 0.5) -> list[tuple[int, int]]:
    """Pair items of `left` with items of `right` whose value is `same` where the names decide
    (see `match_by_name`). Returns index pairs."""
    return match_by_name(left, right, same, cutoff)[0]


def match_by_name(left: Sequence[tuple[str, object]], right: Sequence[tuple[str, object]],
                  same: Callable[[object, object], bool], cutoff: float = 0.5
                  ) -> tuple[list[tuple[int, int]], list[tuple[tuple[int, ...], tuple[int, ...]]]]:
    """Pairs of a `left` and a `right` item whose values are `same`, made only where the names
    decide: the pair's name similarity is at least `cutoff` and strictly above that of every
    other candidate of either item still unpaired (pairs made free their items' rivals, so
    `layer1.0.downsample.bn` finds `layer1.0.downsample.1` beside three other stages). Where
    several candidates of one shape are equally close (`attention.query` against `q_proj`,
    `k_proj`, `v_proj` and `o_proj`), nothing is paired: a same-shape guess would move
    weights to the wrong place without an error. Returns the index pairs and the undecided
    groups: left items with the right items closest to them, that the names do not tell apart."""
    by_value: dict = {}
    for j, (_, v) in enumerate(right):
        by_value.setdefault(_value_key(v), []).append(j)
    scores: dict[tuple[int, int], float] = {}
    for i, (name, v) in enumerate(left):
        for j in by_value.get(_value_key(v), ()):
            if same(v, right[j][1]):
                scores[(i, j)] = name_similarity(name, right[j][0])
    rows: dict[int, list[int]] = {}
    for i, j in scores:
        rows.setdefault(i, []).append(j)
    used_l: set[int] = set()
    used_r: set[int] = set()
    out: list[tuple[int, int]] = []
    while True:
        # the two best free scores of every row and column: a pair is made where it is the
        # best of both and strictly better than the runner-up of each
        top_row: dict[int, list[float]] = {}
        top_col: dict[int, list[float]] = {}
        for (i, j), s in scores.items():
            if i not in used_l and j not in used_r:
                for top, k in ((top_row, i), (top_col, j)):
                    t = top.setdefault(k, [-1.0, -1.0])
                    if s > t[0]:
                        t[0], t[1] = s, t[0]
                    elif s > t[1]:
                        t[1] = s
        new = [(i, j) for (i, j), s in scores.items()
               if i not in used_l and j not in used_r and s >= cutoff
               and s == top_row[i][0] > top_row[i][1] and s == top_col[j][0] > top_col[j][1]]
        if not new:
            break
        for i, j in new:
            used_l.add(i)
            used_r.add(j)
        out += new
    # undecided: each left item's closest free candidates; items sharing one make a group
    groups: list[tuple[set[int], set[int]]] = []
    for i in sorted(rows):
        free = [(scores[(i, j)], j) for j in rows[i] if i not in used_l and j not in used_r]
        if not free or max(s for s, _ in free) < cutoff:
            continue
        best = max(s for s, _ in free)
        lefts, rights = {i}, {j for s, j in free if s == best}
        for g in [g for g in groups if g[1] & rights]:
            groups.remove(g)
            lefts |= g[0]
            rights |= g[1]
        groups.append((lefts, rights))
    undecided = sorted((tuple(sorted(a)), tuple(sorted(b))) for a, b in groups)
    return sorted(out), undecided


def _value_key(v) -> object:
    return getattr(v, "shape", v)
