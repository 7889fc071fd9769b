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


def _whole_segment_captures(pattern: Pattern, tables: dict[str, tuple[str, ...]]):
    """For a fixed-shape pattern whose every capture is a whole segment (`a.{i:int}.{p:w|b}`):
    [(segment position, capture name or None, test of the segment text)], so a key's captures
    are its segments, checked without a regex. None when a capture shares its segment with
    other text (`conv{s:int}_x`)."""
    out = []
    pos = 0
    parts = pattern.parts
    for n, part in enumerate(parts):
        if isinstance(part, Lit):
            pos += part.text.count(".")
            continue
        before = parts[n - 1] if n else None
        after = parts[n + 1] if n + 1 < len(parts) else None
        if (before is not None and not (isinstance(before, Lit) and before.text.endswith("."))) or \
                (after is not None and not (isinstance(after, Lit) and after.text.startswith("."))):
            return None
        if part.type == "segment":
            test = bool
        elif part.type == "int":
            test = _is_int
        elif part.type in ("alt", "table"):
            values = frozenset(part.alternatives if part.type == "alt" else tables.get(part.table or "", ()))
            test = values.__contains__
        else:
            return None
        out.append((pos, part.name, test))
    return out


def _is_int(text: str) -> bool:
    return text.isdigit() and text.isascii()  # as [0-9]+: no other scripts' digits


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
        self._plain: list[list | None] = [None] * len(self.entries)  # see _whole_segment_captures
        # segment count -> [(literal positions, their values -> entry indices)]
        by_len: dict[int, dict[tuple[int, ...], dict[tuple[str, ...], list[int]]]] = {}
        root = _Node()
        free = 0
        for i, entry in enumerate(self.entries):
            shape = _segments(entry.pattern, tables)
            plain = _whole_segment_captures(entry.pattern, tables) if shape is not None else None
            if plain is None:  # into the trie: its shared prefixes beat trying each pattern's regex
                free += 1
                node = root
                for tok in pattern_tokens(entry.pattern, tables):
                    node = node.children.setdefault(tok, _Node())
                node.ends.append(i)
                continue
            self._plain[i] = plain
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
        if self._forward is not None:
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
