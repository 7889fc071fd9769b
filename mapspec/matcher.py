"""One matcher for all of a spec's source patterns.

Every pattern becomes a path of regex tokens (each character of its literal prefix, then the
rest as one token) and the paths are merged into a trie, so a literal prefix shared by many
rules is matched once. The trie
is emitted as a single regex whose branches end in an empty named group; after a full match,
`lastgroup` names the pattern that matched. The same trie emitted with every branch list
reversed finds the *last* matching pattern in the same order: if the first and the last
differ, two patterns match the key. So each key costs two regex calls however many rules
there are, plus one for its captures.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Iterable, NamedTuple

import numpy as np

from .rules import Capture, Lit, Pattern

SEGMENT = r"[^.]+"
INTEGER = r"[0-9]+"
MULTI = r".+"


def capture_regex(cap: Capture, tables: dict[str, tuple[str, ...]]) -> str:
    if cap.type == "segment":
        return SEGMENT
    if cap.type == "int":
        return INTEGER
    if cap.type == "multi":
        return MULTI
    alts = cap.alternatives if cap.type == "alt" else tables.get(cap.table or "", ())
    if not alts:
        return r"(?!)"
    return "(?:" + "|".join(re.escape(a) for a in alts) + ")"


def _parts(pattern: Pattern) -> list:
    """The pattern's parts, with a leading unnamed `**.` turned into "any segments, or none"
    (so `**.anchors` also matches a top-level `anchors`, as in .gitignore)."""
    parts = list(pattern.parts)
    if (len(parts) > 1 and isinstance(parts[0], Capture) and parts[0].type == "multi" and parts[0].name is None
            and isinstance(parts[1], Lit) and parts[1].text.startswith(".")):
        rest = parts[1].text[1:]
        parts = [_ANY_PREFIX] + ([Lit(text=rest)] if rest else []) + parts[2:]
    return parts


class _AnyPrefix:
    regex = r"(?:.+\.)?"


_ANY_PREFIX = _AnyPrefix()


def pattern_tokens(pattern: Pattern, tables: dict[str, tuple[str, ...]]) -> list[str]:
    """Trie edges: one per character of the literal prefix, then the rest as one token.

    Only the literal prefix may be shared. A shared variable-length token (`**`) would let
    the regex engine try every length of it before moving to the next branch, and then the
    first branch to match would no longer be the first pattern in trie order."""
    tokens: list[str] = []
    parts = _parts(pattern)
    while parts and isinstance(parts[0], Lit):
        tokens.extend(re.escape(c) for c in parts.pop(0).text)
    if parts:
        tokens.append("".join(_part_regex(p, tables, named=False) for p in parts))
    return tokens


def _part_regex(part, tables: dict[str, tuple[str, ...]], named: bool) -> str:
    if isinstance(part, Lit):
        return re.escape(part.text)
    if isinstance(part, _AnyPrefix):
        return part.regex
    if named and part.name:
        return f"(?P<{part.name}>{capture_regex(part, tables)})"
    return capture_regex(part, tables)


def pattern_regex(pattern: Pattern, tables: dict[str, tuple[str, ...]]) -> re.Pattern:
    """The regex of one pattern, with a named group per named capture."""
    return re.compile("".join(_part_regex(p, tables, named=True) for p in _parts(pattern)), re.DOTALL)


@dataclass
class _Node:
    children: dict[str, "_Node"] = field(default_factory=dict)
    ends: list[int] = field(default_factory=list)


def _emit(node: _Node, reverse: bool) -> str:
    # Iterative descent along single-child chains keeps Python's recursion shallow for
    # long literal runs; recursion happens only at branch points.
    out: list[str] = []
    while not node.ends and len(node.children) == 1:
        tok, node = next(iter(node.children.items()))
        out.append(tok)
    branches = [f"(?P<m{i}>)" for i in node.ends]
    branches += [tok + _emit(child, reverse) for tok, child in node.children.items()]
    if reverse:
        branches.reverse()
    if len(branches) == 1:
        out.append(branches[0])
    elif branches:
        out.append("(?:" + "|".join(branches) + ")")
    return "".join(out)


def _literal_prefix(pattern: Pattern) -> str:
    parts = _parts(pattern)
    return parts[0].text if parts and isinstance(parts[0], Lit) else ""


def _trie_order(root: _Node, count: int) -> list[int]:
    """Each entry's rank in the order the forward regex tries them (depth first)."""
    order = [0] * count
    rank, stack = 0, [root]
    while stack:
        node = stack.pop()
        for i in node.ends:
            order[i] = rank
            rank += 1
        stack.extend(reversed(list(node.children.values())))
    return order


@dataclass(frozen=True)
class Entry:
    """One source pattern and who owns it."""

    rule: int
    alternative: int
    pattern: Pattern


def _segments(pattern: Pattern, tables: dict[str, tuple[str, ...]]) -> list[str | None] | None:
    """The pattern's dot-separated segments: the literal text of a segment made of literals
    only, None for a segment with a capture in it. None overall when the number of segments
    is not fixed (a `**`, or alternatives holding dots)."""
    segments: list[str | None] = [""]
    for part in pattern.parts:
        if isinstance(part, Lit):
            pieces = part.text.split(".")
            for n, piece in enumerate(pieces):
                if n:
                    segments.append("")
                if segments[-1] is not None:
                    segments[-1] += piece
            continue
        values = part.alternatives if part.type == "alt" else tables.get(part.table or "", ()) \
            if part.type == "table" else ()
        if part.type == "multi" or any("." in v for v in values):
            return None
        segments[-1] = None
    return segments


def _may_overlap(a: list[str | None] | None, b: list[str | None] | None) -> bool:
    """False only when no key can match both patterns (a conservative test)."""
    if a is None or b is None:
        return True
    return len(a) == len(b) and all(x is None or y is None or x == y for x, y in zip(a, b))


# Backtracking regexes cost up to len(key) ** (variable-length parts of a pattern) on a key
# that almost matches. Keys longer than BUDGET ** (1 / parts) go to `LinearPattern` instead.
BUDGET = 2_000_000


def _variable_parts(pattern: Pattern) -> int:
    return sum(1 for p in _parts(pattern)
               if isinstance(p, _AnyPrefix) or (isinstance(p, Capture) and p.type in ("segment", "int", "multi")))


class LinearPattern:
    """One pattern matched in time linear in the key (times its number of parts), with the
    captures Python's backtracking regex would give.

    can[i][p] says whether parts[i:] match key[p:]; it is computed from the last part back,
    each part in a few vectorised passes. The captures then follow left to right: a greedy
    part takes the longest end from which the rest can still match, an alternation its first
    such alternative, which is the choice backtracking settles on."""

    def __init__(self, pattern: Pattern, tables: dict[str, tuple[str, ...]]):
        self.parts = _parts(pattern)
        self.tables = tables

    def _alternatives(self, part) -> tuple[str, ...]:
        if isinstance(part, Lit):
            return (part.text,)
        return part.alternatives if part.type == "alt" else self.tables.get(part.table or "", ())

    def fullmatch(self, key: str) -> dict[str, str] | None:
        n = len(key)
        codes = np.frombuffer(key.encode("utf-32-le"), np.uint32)
        idx = np.arange(n + 1)

        def next_stop(stop: np.ndarray) -> np.ndarray:
            # nxt[p] = the first q >= p where stop[q] (n at the end)
            at = np.where(np.append(stop, True), idx, n)
            return np.minimum.accumulate(at[::-1])[::-1]

        dot = codes == ord(".")
        nextdot = next_stop(dot)
        nextnondigit = next_stop((codes < ord("0")) | (codes > ord("9")))

        def starts(text: str) -> np.ndarray:
            out = np.zeros(n + 1, bool)
            m = len(text)
            if m <= n:
                ok = np.ones(n - m + 1, bool)
                for j, c in enumerate(text):
                    ok &= codes[j:n - m + 1 + j] == ord(c)
                out[:n - m + 1] = ok
            return out

        def first_true(can: np.ndarray) -> np.ndarray:  # first e >= q with can[e], n+1 if none
            at = np.where(can, idx, n + 1)
            return np.minimum.accumulate(at[::-1])[::-1]

        def shifted(a: np.ndarray, k: int, fill=False) -> np.ndarray:  # a[p + k], `fill` past the end
            out = np.full(n + 1, fill, a.dtype)
            if k <= n:
                out[:n + 1 - k] = a[k:]
            return out

        cans = [None] * len(self.parts) + [idx == n]
        for i in range(len(self.parts) - 1, -1, -1):
            part, nxt = self.parts[i], cans[i + 1]
            if isinstance(part, _AnyPrefix):  # (?:.+\.)? : nothing, or anything ending in a dot
                ends = nxt & np.append(False, dot)
                can = nxt | shifted(first_true(ends) <= n, 2)
            elif isinstance(part, Lit) or part.type in ("alt", "table"):
                can = np.zeros(n + 1, bool)
                for a in self._alternatives(part):
                    can |= starts(a) & shifted(nxt, len(a))
            elif part.type == "multi":
                can = shifted(first_true(nxt) <= n, 1)
            else:  # segment or int: one or more characters before the next stop
                stop = nextdot if part.type == "segment" else nextnondigit
                can = (shifted(first_true(nxt), 1, n + 1) <= stop) & (stop > idx)
            cans[i] = can
        if not cans[0][0]:
            return None
        captures: dict[str, str] = {}
        p = 0
        for i, part in enumerate(self.parts):
            nxt = cans[i + 1]
            if isinstance(part, _AnyPrefix):
                ends = np.flatnonzero(nxt[p + 2:] & np.append(False, dot)[p + 2:])
                e = p + 2 + int(ends[-1]) if len(ends) else p
            elif isinstance(part, Lit) or part.type in ("alt", "table"):
                e = next(p + len(a) for a in self._alternatives(part)
                         if key.startswith(a, p) and p + len(a) <= n and nxt[p + len(a)])
            else:
                limit = n if part.type == "multi" else int((nextdot if part.type == "segment" else nextnondigit)[p])
                e = p + 1 + int(np.flatnonzero(nxt[p + 1:limit + 1])[-1])
            if isinstance(part, Capture) and part.name:
                captures[part.name] = key[p:e]
            p = e
        return captures


class Hit(NamedTuple):
    entry: Entry
    captures: dict[str, str]


class Ambiguous(Exception):
    def __init__(self, key: str, first: Entry, second: Entry):
        super().__init__(key)
        self.key, self.first, self.second = key, first, second


class Matcher:
    def __init__(self, entries: Iterable[Entry], tables: dict[str, tuple[str, ...]]):
        self.entries = list(entries)
        root = _Node()
        for i, entry in enumerate(self.entries):
            node = root
            for tok in pattern_tokens(entry.pattern, tables):
                node = node.children.setdefault(tok, _Node())
            node.ends.append(i)
        if self.entries:
            self._forward = re.compile(_emit(root, reverse=False), re.DOTALL)
            self._backward = re.compile(_emit(root, reverse=True), re.DOTALL)
        else:
            self._forward = self._backward = re.compile(r"(?!)")
        self._regexes = [pattern_regex(e.pattern, tables) for e in self.entries]
        worst = max((_variable_parts(e.pattern) for e in self.entries), default=0)
        self.fast_limit = int(BUDGET ** (1 / worst)) if worst else None  # longer keys: `_match_long`
        self._linear = [LinearPattern(e.pattern, tables) for e in self.entries]
        self._prefixes = [_literal_prefix(e.pattern) for e in self.entries]
        self._order = _trie_order(root, len(self.entries))
        shapes = [_segments(e.pattern, tables) for e in self.entries]
        # Only a pattern that another rule's pattern could also match needs the reverse check.
        self._contested = [
            any(o.rule != e.rule and _may_overlap(shapes[i], shapes[j]) for j, o in enumerate(self.entries))
            for i, e in enumerate(self.entries)]

    def match(self, key: str) -> Hit | None:
        """The one pattern matching `key` with its captures, None if none; `Ambiguous` if the
        key is matched by patterns of two different rules."""
        if self.fast_limit is not None and len(key) > self.fast_limit:
            return self._match_long(key)
        m = self._forward.fullmatch(key)
        if m is None:
            return None
        first = int(m.lastgroup[1:])
        if not self._contested[first]:
            return Hit(self.entries[first], self._regexes[first].fullmatch(key).groupdict())
        last = int(self._backward.fullmatch(key).lastgroup[1:])
        a, b = self.entries[first], self.entries[last]
        if a.rule != b.rule:
            if (a.rule, a.alternative) > (b.rule, b.alternative):
                a, b = b, a
            raise Ambiguous(key, a, b)
        if (a.rule, a.alternative) > (b.rule, b.alternative):
            first, a = last, b
        return Hit(a, self._regexes[first].fullmatch(key).groupdict())

    def _match_long(self, key: str) -> Hit | None:
        """`match` for a key long enough to make backtracking regexes explode: every
        pattern whose literal prefix fits is matched by `LinearPattern`, and the winner is
        chosen as `match` chooses it."""
        hits = {}
        for i, prefix in enumerate(self._prefixes):
            if key.startswith(prefix):
                found = self._linear[i].fullmatch(key)
                if found is not None:
                    hits[i] = found
        if not hits:
            return None
        first = min(hits, key=self._order.__getitem__)
        if not self._contested[first]:
            return Hit(self.entries[first], hits[first])
        rules = sorted(hits, key=lambda i: (self.entries[i].rule, self.entries[i].alternative))
        a, b = self.entries[rules[0]], self.entries[rules[-1]]
        if a.rule != b.rule:
            second = next(self.entries[i] for i in rules if self.entries[i].rule != a.rule)
            raise Ambiguous(key, a, second)
        return Hit(a, hits[rules[0]])

    def naive_match(self, key: str) -> list[Entry]:
        """Every matching pattern, one regex at a time: the reference the tests and the
        benchmark compare against."""
        return [e for e, rx in zip(self.entries, self._regexes) if rx.fullmatch(key)]
