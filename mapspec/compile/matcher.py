"""One matcher for all of a spec's source patterns, costing about the same per key whether
a spec has 20 rules or 2,000.

Most patterns have a fixed number of dot-separated segments and captures that are whole
segments (`model.layers.{i:int}.{p:weight|bias}`). Those are indexed by their literal
segments: per segment count and per set of literal positions, a dict from the literal
values to the patterns, so a key costs a split and a few dict lookups (one per distinct
literal-position set, a handful per spec), and its captures are its segments, checked
without a regex. Other patterns (a `**`, a capture sharing its segment with text as in
`conv{s:int}_x`, alternatives holding dots) go into a trie emitted as a single regex whose
branches end in an empty named group; `lastgroup` names the first matching pattern, and the
same trie with its branches reversed names the last one: if they differ, two patterns match
the key. Nothing is compared pattern against pattern, so compiling is linear in the rules.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from operator import itemgetter
from typing import Iterable, NamedTuple

from ..core.lazy import numpy as np

from ..lang.rules import Capture, Lit, Pattern

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


class Entry(NamedTuple):
    """One source pattern and who owns it. (A NamedTuple: one per pattern of a spec, and
    half the cost of a frozen dataclass to build.)"""

    rule: int
    alternative: int
    pattern: Pattern


def _plain_index(pattern: Pattern, tables: dict[str, tuple[str, ...]]):
    """For a pattern with a fixed number of dot-separated segments whose every capture is a
    whole segment (`a.{i:int}.{p:w|b}`): its segments (the literal text of each, None for a
    capture's) and [(segment position, capture name or None, test of the segment text)], so
    a key's captures are its segments, checked without a regex. None for any other pattern:
    a `**`, alternatives holding dots, a capture sharing its segment with other text
    (`conv{s:int}_x`). One pass over the parts: this runs once per pattern of a spec."""
    segments: list[str | None] = [""]
    captures = []
    for part in pattern.parts:
        if type(part) is Lit:  # (not isinstance: failing, on a pydantic node, it costs 4x)
            pieces = part.text.split(".")
            if segments[-1] is None:
                if pieces[0]:  # text right after a capture, in its segment
                    return None
            else:
                segments[-1] += pieces[0]
            segments += pieces[1:]
            continue
        if segments[-1] != "":  # text (or another capture) before it in its segment
            return None
        kind = part.type
        if kind == "segment":
            test = bool
        elif kind == "int":
            test = _is_int
        elif kind == "alt" or kind == "table":
            values = part.alternatives if kind == "alt" else tables.get(part.table or "", ())
            if "." in "".join(values):
                return None
            test = frozenset(values).__contains__
        else:
            return None
        segments[-1] = None
        captures.append((len(segments) - 1, part.name, test))
    return segments, captures


def _is_int(text: str) -> bool:
    return text.isdigit() and text.isascii()  # as [0-9]+: no other scripts' digits


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
        self._tables = tables
        self._compiled: dict[int, re.Pattern] = {}
        self._plain: list[list | None] = [None] * len(self.entries)  # see _plain_index
        # segment count -> [(literal positions, their values -> entry indices)]
        by_len: dict[int, dict[tuple[int, ...], dict[tuple[str, ...], list[int]]]] = {}
        root = _Node()
        free = 0
        for i, entry in enumerate(self.entries):
            indexed = _plain_index(entry.pattern, tables)
            if indexed is None:  # into the trie: its shared prefixes beat trying each pattern's regex
                free += 1
                node = root
                for tok in pattern_tokens(entry.pattern, tables):
                    node = node.children.setdefault(tok, _Node())
                node.ends.append(i)
                continue
            shape, self._plain[i] = indexed
            positions = tuple(n for n, seg in enumerate(shape) if seg is not None)
            index = by_len.setdefault(len(shape), {}).setdefault(positions, {})
            index.setdefault(tuple(shape[n] for n in positions), []).append(i)
        self._by_len = {n: [(_getter(pos), index) for pos, index in groups.items()]
                        for n, groups in by_len.items()}
        if free:
            self._forward = re.compile(_emit(root, reverse=False), re.DOTALL)
            self._backward = re.compile(_emit(root, reverse=True), re.DOTALL)
        else:
            self._forward = self._backward = None
        # Keys longer than this would let the trie's backtracking explode: `_match_long`.
        self._free = [i for i, plain in enumerate(self._plain) if plain is None]
        worst = max((_variable_parts(self.entries[i].pattern) for i in self._free), default=0)
        self.fast_limit = int(BUDGET ** (1 / worst)) if worst else None
        self._linear: dict[int, LinearPattern] = {}

    def _regex(self, i: int) -> re.Pattern:
        rx = self._compiled.get(i)
        if rx is None:  # compiled on first use: a 2,000-rule spec rarely needs them all
            rx = self._compiled[i] = pattern_regex(self.entries[i].pattern, self._tables)
        return rx

    def match(self, key: str) -> Hit | None:
        """The one pattern matching `key` with its captures, None if none; `Ambiguous` if the
        key is matched by patterns of two different rules."""
        found = []
        groups = self._by_len.get(key.count(".") + 1)
        if groups:
            segments = key.split(".")
            for get, index in groups:
                candidates = index.get(get(segments))
                if candidates:
                    for i in candidates:
                        caps = {}
                        for pos, name, test in self._plain[i]:
                            text = segments[pos]
                            if not test(text):
                                break
                            if name:
                                caps[name] = text
                        else:
                            found.append((i, caps))
        if self._forward is not None and self.fast_limit is not None and len(key) > self.fast_limit:
            found += self._match_long(key)
        elif self._forward is not None:
            m = self._forward.fullmatch(key)
            if m is not None:
                first = int(m.lastgroup[1:])
                last = int(self._backward.fullmatch(key).lastgroup[1:])
                for i in {first, last}:
                    found.append((i, self._regex(i).fullmatch(key).groupdict()))
        if len(found) == 1:  # the common case
            i, caps = found[0]
            return Hit(self.entries[i], caps)
        if not found:
            return None
        found.sort(key=lambda h: (self.entries[h[0]].rule, self.entries[h[0]].alternative))
        a, b = self.entries[found[0][0]], self.entries[found[-1][0]]
        if a.rule != b.rule:
            raise Ambiguous(key, a, b)
        return Hit(a, found[0][1])

    def _match_long(self, key: str) -> list[tuple[int, dict[str, str]]]:
        """Every trie pattern matching a key long enough to make backtracking explode, by
        `LinearPattern` (only those whose literal prefix fits are tried)."""
        found = []
        for i in self._free:
            parts = _parts(self.entries[i].pattern)
            if parts and isinstance(parts[0], Lit) and not key.startswith(parts[0].text):
                continue
            linear = self._linear.get(i)
            if linear is None:
                linear = self._linear[i] = LinearPattern(self.entries[i].pattern, self._tables)
            caps = linear.fullmatch(key)
            if caps is not None:
                found.append((i, caps))
        return found

    def naive_match(self, key: str) -> list[Entry]:
        """Every matching pattern, one regex at a time: the reference the tests and the
        benchmark compare against."""
        return [e for i, e in enumerate(self.entries) if self._regex(i).fullmatch(key)]


def _getter(positions: tuple[int, ...]):
    """segments -> the tuple of the segments at `positions` (itemgetter, always a tuple)."""
    if len(positions) == 1:
        (p,) = positions
        return lambda segments: (segments[p],)
    if not positions:
        return lambda segments: ()
    return itemgetter(*positions)
