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


def _may_overlap(a: list[str | None] | None, b: list[str | None] | None) -> bool:
    """False only when no key can match both patterns (a conservative test)."""
    if a is None or b is None:
        return True
    return len(a) == len(b) and all(x is None or y is None or x == y for x, y in zip(a, b))


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
        shapes = [_segments(e.pattern, tables) for e in self.entries]
        # Only a pattern that another rule's pattern could also match needs the reverse check.
        self._contested = [
            any(o.rule != e.rule and _may_overlap(shapes[i], shapes[j]) for j, o in enumerate(self.entries))
            for i, e in enumerate(self.entries)]

    def match(self, key: str) -> Hit | None:
        """The one pattern matching `key` with its captures, None if none; `Ambiguous` if the
        key is matched by patterns of two different rules."""
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

    def naive_match(self, key: str) -> list[Entry]:
        """Every matching pattern, one regex at a time: the reference the tests and the
        benchmark compare against."""
        return [e for e, rx in zip(self.entries, self._regexes) if rx.fullmatch(key)]
