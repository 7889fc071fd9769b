"""Numbers in keys that move together: pairing whole numbered families at once.

A family is every module (or tensor) of one side whose name is the same once its digit runs
are read as numbers (`layer#.#.conv#.`), and whose tensors have the same number of dims: its
members are told apart only by their number tuples. Two families correspond when they have
as many members and, matched in increasing number order (the one monotone bijection between
them), every matched pair has compatible shapes and agrees with every pair already made by
stronger evidence. The number tuples may differ by an offset (`stage{s}` -> `layer{s-1}`) or
in depth (flat `blocks.7` -> `stages.1.blocks.3`): rank order reads the per-stage counts off
the other side's keys, so no offset or table has to be guessed.

Which family corresponds to which is decided, surest first, by a pair already made inside
both (an anchor), by being the only candidate, or by names that differ in the same letters
(`q_proj`/`k_proj` against `wq`/`wk`: `q`, `k`). Families of several members that still have
several candidates are returned as undecided: the caller writes them as suggestions rather
than letting a per-tensor round guess member by member."""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Callable, Sequence

from .keys import is_number, shared_ends, tokens

SEPARATORS = re.compile(r"[^A-Za-z0-9#]+")


def skeleton(name: str) -> tuple[str, tuple[int, ...]]:
    """`layer2.1.conv1.` -> (`layer#.#.conv#.`, (2, 1, 1))."""
    toks = tokens(name)
    return "".join("#" if is_number(t) else t for t in toks), tuple(int(t) for t in toks if is_number(t))


@dataclass
class Family:
    skel: str
    kind: tuple[int, ...]
    members: list = field(default_factory=list)      # units, in increasing number order
    nums: list[tuple[int, ...]] = field(default_factory=list)

    @property
    def label(self) -> str:
        return self.skel.rstrip("._:/")


@dataclass
class Link:
    """Two families paired member by member in number order."""
    fs: Family
    ft: Family
    how: str

    def detail(self, prefix_s: str = "", prefix_t: str = "") -> str:
        return (f"{prefix_s}{self.fs.label} -> {prefix_t}{self.ft.label}, {_numbers(self.fs.nums, self.ft.nums)}; "
                f"{self.how}")


def families(units: Sequence, name: Callable[[object], str]) -> list[Family]:
    """Numbered families, each in increasing number order."""
    groups: dict[tuple, Family] = {}
    for u in units:
        skel, nums = skeleton(name(u))
        key = (skel, tuple(sorted(len(s) for s in u.sig)))
        fam = groups.setdefault(key, Family(skel, key[1]))
        fam.members.append(u)
        fam.nums.append(nums)
    return _ordered(list(groups.values()))


def split(fams: list[Family]) -> list[Family]:
    """Sub-families where a number acts as a name: in `ffn.fc#` the shapes of fc1 and fc2
    differ, and the number says which is which, so `ffn.fc1` and `ffn.fc2` are families of
    their own (as `mlp.c_fc` and `mlp.c_proj` are on the other side)."""
    out = []
    for fam in fams:
        if len({u.shapes for u in fam.members}) < 2:
            continue
        for p in range(len(fam.nums[0])):
            sig_of: dict[int, set] = defaultdict(set)
            for u, n in zip(fam.members, fam.nums):
                sig_of[n[p]].add(u.shapes)
            if len(sig_of) < 2 or any(len(v) != 1 for v in sig_of.values()):
                continue
            hashes = [i for i, c in enumerate(fam.skel) if c == "#"]
            for v in sorted(sig_of):
                skel = fam.skel[:hashes[p]] + str(v) + fam.skel[hashes[p] + 1:]
                sub = Family(skel, fam.kind)
                for u, n in zip(fam.members, fam.nums):
                    if n[p] == v:
                        sub.members.append(u)
                        sub.nums.append(n[:p] + n[p + 1:])
                out.append(sub)
    return _ordered(out)


def _ordered(fams: list[Family]) -> list[Family]:
    out = []
    for fam in fams:
        if len(set(fam.nums)) != len(fam.nums):
            continue  # two members with the same numbers: number order does not tell them apart
        order = sorted(range(len(fam.members)), key=lambda i: fam.nums[i])
        fam.members = [fam.members[i] for i in order]
        fam.nums = [fam.nums[i] for i in order]
        out.append(fam)
    return out


def align(fam_s: list[Family], fam_t: list[Family], paired_s: dict, paired_t: dict
          ) -> tuple[list[Link], list[tuple[Family, list[Family]]]]:
    """Family links to apply, and undecided source families (of several members) with their
    candidate target families."""
    by_shape: dict[tuple, list[Family]] = defaultdict(list)   # matching in order needs these equal
    for ft in fam_t:
        by_shape[tuple(u.sig for u in ft.members)].append(ft)
    edges: list[tuple[Family, Family, bool]] = []    # (fs, ft, anchored)
    for fs in fam_s:
        if all(id(u) in paired_s for u in fs.members):
            continue
        found = []
        for ft in by_shape.get(tuple(u.sig for u in fs.members), ()):
            verdict = _consistent(fs, ft, paired_s, paired_t)
            if verdict is not None:
                found.append((fs, ft, verdict))
        # shapes equal as stored beat shapes equal up to a transpose (w1 (48, 32) vs w2 (32, 48))
        exact = [e for e in found if all(a.shapes == b.shapes for a, b in zip(fs.members, e[1].members))]
        edges += exact or found
    links: list[Link] = []
    used_s: set[int] = set()
    used_t: set[int] = set()
    units: set[int] = set()      # a family and its sub-family must not both be linked

    def accept(fs: Family, ft: Family, how: str) -> bool:
        mine = {id(u) for u in fs.members + ft.members}
        if mine & units:
            return False
        units.update(mine)
        links.append(Link(fs, ft, how))
        used_s.add(id(fs))
        used_t.add(id(ft))
        return True

    # 1. anchored: a pair made by stronger evidence lies inside both families
    anchored = [(fs, ft) for fs, ft, a in edges if a]
    n_s = _count(id(fs) for fs, _ in anchored)
    n_t = _count(id(ft) for _, ft in anchored)
    for fs, ft in anchored:
        if n_s[id(fs)] == 1 and n_t[id(ft)] == 1:
            accept(fs, ft, "anchored by a pair of stronger evidence")
    # 2. connected groups of candidates: a single edge, or names that differ in the same letters
    rest = [(fs, ft) for fs, ft, _ in edges if id(fs) not in used_s and id(ft) not in used_t]
    undecided: list[tuple[Family, list[Family]]] = []
    for comp_s, comp_t, comp_e in _components(rest):
        if len(comp_s) == 1 and len(comp_t) == 1:
            accept(comp_s[0], comp_t[0], "the only family of its size and shapes")
            continue
        res_s = _residues([f.skel for f in comp_s])
        res_t = _residues([f.skel for f in comp_t])
        by_res = defaultdict(list)
        for f, r in zip(comp_t, res_t):
            by_res[r].append(f)
        edge_set = {(id(a), id(b)) for a, b in comp_e}
        matched = set()
        if len(set(res_s)) == len(res_s):
            for f, r in zip(comp_s, res_s):
                hits = by_res.get(r, [])
                if r and len(hits) == 1 and (id(f), id(hits[0])) in edge_set and \
                        accept(f, hits[0], f"the names differ in the same letters ({r})"):
                    matched.add(id(f))
        for f in comp_s:
            if id(f) not in matched and len(f.members) > 1:
                cands = [b for a, b in comp_e if a is f and id(b) not in used_t]
                if cands:
                    undecided.append((f, cands))
    return links, undecided


def against_number_order(pairs: list[tuple], fam_s: list[Family], fam_t: list[Family]) -> list[tuple]:
    """`pairs` (made by equal names) without those that contradict number order: once a prefix
    shared by every key is gone, `blocks.1.proj` and `layers.1.proj` read alike, but if
    `blocks.{1,2}` match `layers.{0,1}` in order with every shape compatible, the names only
    agree by accident and the numbers decide."""
    where_s = {id(u): (f, i) for f in fam_s for i, u in enumerate(f.members)}
    where_t = {id(u): (f, i) for f in fam_t for i, u in enumerate(f.members)}
    wrong: set[tuple[int, int]] = set()
    for a, b in pairs:
        (fs, i), (ft, j) = where_s.get(id(a), (None, 0)), where_t.get(id(b), (None, 0))
        if fs is not None and ft is not None and i != j and len(fs.members) == len(ft.members) and \
                all(x.sig == y.sig for x, y in zip(fs.members, ft.members)):
            wrong.add((id(fs), id(ft)))
    return [(a, b) for a, b in pairs
            if (id(where_s.get(id(a), (None,))[0]), id(where_t.get(id(b), (None,))[0])) not in wrong]


def _consistent(fs: Family, ft: Family, paired_s: dict, paired_t: dict) -> bool | None:
    """None if matching in number order breaks a shape or an earlier pair; else whether an
    earlier pair lies inside both families."""
    anchored = False
    for a, b in zip(fs.members, ft.members):
        if a.sig != b.sig:
            return None
        pa, pb = paired_s.get(id(a)), paired_t.get(id(b))
        if pa is not None or pb is not None:
            if pa is not b:
                return None
            anchored = True
    return anchored


def _count(ids) -> dict[int, int]:
    out: dict[int, int] = defaultdict(int)
    for i in ids:
        out[i] += 1
    return out


def _components(edges: list[tuple[Family, Family]]):
    """Connected groups of the bipartite candidate graph, in first-seen order."""
    parent: dict[tuple[str, int], tuple[str, int]] = {}

    def find(x):
        while parent.setdefault(x, x) != x:
            x = parent[x]
        return x

    for fs, ft in edges:
        parent[find(("s", id(fs)))] = find(("t", id(ft)))
    groups: dict = {}
    for fs, ft in edges:
        g = groups.setdefault(find(("s", id(fs))), ([], [], []))
        if fs not in g[0]:
            g[0].append(fs)
        if ft not in g[1]:
            g[1].append(ft)
        g[2].append((fs, ft))
    return list(groups.values())


def _residues(skels: list[str]) -> list[str]:
    """What tells a group of names apart: each name without the prefix and suffix all share,
    lower-cased and without separators (`self_attn.q_proj.` -> `q`, `attention.wq.` -> `q`)."""
    if len(skels) < 2:
        return [""] * len(skels)
    p, q = shared_ends(skels)
    return [SEPARATORS.sub("", s[p:len(s) - q]).lower() for s in skels]


def _numbers(src: list[tuple[int, ...]], tgt: list[tuple[int, ...]]) -> str:
    """How the numbers move: `(a, 0, 1) -> (a-1, 0)` when each target number is constant or a
    source number plus a constant; else `in rank order` (depths or counts differ)."""
    if not src or not src[0] and not tgt[0]:
        return "no numbers"
    if len(src) == 1:
        return f"numbers {src[0]} -> {tgt[0]}"
    letters = iter("abcdefghpqrstuvw")
    names: dict[int, str] = {}
    shown = []
    for i in range(len(src[0])):
        vals = {s[i] for s in src}
        if len(vals) == 1:
            shown.append(str(vals.pop()))
        else:
            names[i] = next(letters, "?")
            shown.append(names[i])
    out = []
    for j in range(len(tgt[0])):
        vals = {t[j] for t in tgt}
        if len(vals) == 1:
            out.append(str(vals.pop()))
            continue
        for i, v in names.items():
            d = {t[j] - s[i] for s, t in zip(src, tgt)}
            if len(d) == 1:
                c = d.pop()
                out.append(v if c == 0 else f"{v}{'+' if c > 0 else '-'}{abs(c)}")
                break
        else:
            return (f"numbers matched in rank order, {len(src)} of them: "
                    f"{src[0]} -> {tgt[0]} ... {src[-1]} -> {tgt[-1]}")
    return f"numbers ({', '.join(shown)}) -> ({', '.join(out)})"
