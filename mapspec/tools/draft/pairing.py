"""Which source tensor becomes which target tensor: evidence and a global assignment.

The assignment works on modules first (a BatchNorm's four tensors, a conv's weight and bias
travel together), then on single tensors, in rounds from the surest evidence to the weakest:

1. fused tensors: a source tensor no target shape matches, whose size is the sum of sibling
   target tensors (a fused qkv against query/key/value), or the reverse;
2. the same name (after the namespace and a prefix shared by every key);
3. the only module (or tensor) of its shapes on both sides;
4. neighbours of a pair already made, in both files' order (a BN next to its conv);
5. rank within a shape class, when both files keep a meaningful order and the class has as
   many members on each side;
6. name similarity with a clear margin, when the class sizes differ.

Inside a module pair, leaves (`gamma` -> `weight`) are paired by a table learned across the
whole checkpoint. What no round decides is left out as a suggestion, never guessed."""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Mapping

from ...compile.plan import TensorInfo
from .keys import Side, canonical, is_counter, relation, similarity, trigram_similarity, words as _words
from .numbering import against_number_order, align, families, split

# How sure each kind of evidence is; a rule reports its weakest.
STRENGTH = {"same name": 5, "sizes add up": 4, "only one of its shapes": 4, "numbers move together": 3,
            "next to a pair": 3, "order": 2, "name similarity": 2, "the last of its shapes": 2}
OPTIMIZER_WORDS = {"momentum", "exp", "avg", "sq", "optimizer", "optim", "adam", "step", "state"}


@dataclass(frozen=True)
class Evidence:
    kind: str
    detail: str

    @property
    def strength(self) -> int:
        return STRENGTH[self.kind]

    def __str__(self) -> str:
        return f"{self.kind} ({self.detail})" if self.detail else self.kind


@dataclass
class Pair:
    sources: tuple[str, ...]
    targets: tuple[str, ...]
    actions: tuple[str, ...]
    evidence: Evidence


@dataclass
class Suggestion:
    sources: tuple[str, ...]
    targets: tuple[str, ...]
    why: str


@dataclass
class Pairing:
    source: Side
    target: Side
    pairs: list[Pair] = field(default_factory=list)
    suggestions: list[Suggestion] = field(default_factory=list)
    dropped: dict[str, str] = field(default_factory=dict)     # source key -> why it has no counterpart
    unexplained: list[str] = field(default_factory=list)      # target keys nothing produces
    counters: list[str] = field(default_factory=list)         # target counters nothing produces
    target_only: list[tuple[str, list[str]]] = field(default_factory=list)  # (glob, keys) no source tensor can make

    def mapping(self) -> dict[str, tuple[str, ...]]:
        """target key -> the source keys it is made from."""
        return {t: p.sources for p in self.pairs for t in p.targets}


def pair(source: Mapping[str, TensorInfo], target: Mapping[str, TensorInfo]) -> Pairing:
    """Pair `source` tensors with `target` tensors (both name -> shape, dtype, in file order)."""
    S, T = Side(dict(source)), Side(dict(target))
    result = Pairing(S, T)
    free_s = [k for k in S.keys if not is_counter(k, S.infos[k])]
    free_t = [k for k in T.keys if not is_counter(k, T.infos[k])]
    state = _State(S, T, set(free_s), set(free_t), result)
    state.fused()
    state.modules()
    state.tensors()
    state.counters()
    state.leftovers()
    order = {k: i for i, k in enumerate(T.keys)}
    result.pairs.sort(key=lambda p: min(order[t] for t in p.targets))
    return result


def actions_for(src: TensorInfo, tgt: TensorInfo) -> tuple[str, ...] | None:
    rel = relation(src.shape, tgt.shape)
    if rel is None:
        return None
    return rel + ((f"cast({tgt.dtype})",) if src.dtype != tgt.dtype else ())


@dataclass
class _Unit:
    """A module (or a single tensor) as one thing to pair."""

    id: str
    keys: list[str]
    pos: int
    sig: tuple      # its shapes up to transposes and size-1 dims
    shapes: tuple   # its exact shapes


class _State:
    def __init__(self, S: Side, T: Side, free_s: set, free_t: set, result: Pairing):
        self.S, self.T, self.free_s, self.free_t, self.r = S, T, free_s, free_t, result
        self.ordered = S.ordered and T.ordered
        self.subst: dict[str, str] = {}
        self.withheld_t: set[str] = set()   # candidates of an open family: no single tensor may take them

    # -------------------------------------------------------------- fused tensors
    def fused(self) -> None:
        self._fused(self.S, self.T, self.free_s, self.free_t, split=True)
        self._fused(self.T, self.S, self.free_t, self.free_s, split=False)

    def _fused(self, A: Side, B: Side, free_a: set, free_b: set, split: bool) -> None:
        """A tensor of A no B shape matches, whose size is the sum of sibling B tensors."""
        b_classes = {canonical(B.infos[k].shape) for k in free_b}
        lonely = [k for k in A.keys if k in free_a and canonical(A.infos[k].shape) not in b_classes]
        if not lonely:
            return
        groups: dict[tuple, list[str]] = defaultdict(list)
        for k in B.keys:
            if k in free_b:
                mod = B.module[k]
                parent = mod[: mod.rstrip("._:/").rfind(".") + 1] if "." in mod.rstrip(".") else ""
                groups[(B.namespace[k], parent, B.leaf[k])].append(k)
        candidates: dict[str, list[tuple[list[str], int]]] = {}
        for k in lonely:
            shape = A.infos[k].shape
            found = []
            for members in groups.values():
                if len(members) < 2:
                    continue
                d = _sum_dim(shape, [B.infos[m].shape for m in members])
                if d is not None:
                    found.append((members, d))
            if found:
                candidates[k] = found
        claimed = Counter(tuple(m) for found in candidates.values() for m, _ in found)
        ambiguous: list[str] = []
        for k, found in candidates.items():
            if len(found) == 1 and claimed[tuple(found[0][0])] == 1:
                self._add_fused(A, B, k, found[0][0], found[0][1], split, "")
            else:
                ambiguous.append(k)
        # several same-shape fused tensors and as many groups: by order, if both files keep one
        by_class: dict[tuple, list[str]] = defaultdict(list)
        for k in ambiguous:
            by_class[(A.infos[k].shape, A.leaf[k])].append(k)
        for ks in by_class.values():
            options = []
            for k in ks:
                options += [tuple(m) for m, _ in candidates[k] if all(x in free_b for x in m)]
            groups_here = sorted(set(options), key=lambda m: B.order[m[0]])
            if self.ordered and len(groups_here) == len(ks) and all(
                    any(tuple(m) == g for m, _ in candidates[k]) for k, g in zip(ks, groups_here)):
                for k, g in zip(ks, groups_here):
                    d = next(d for m, d in candidates[k] if tuple(m) == g)
                    self._add_fused(A, B, k, list(g), d, split, f"{ks.index(k) + 1} of {len(ks)} in file order")
            else:
                for k in ks:
                    for m, _ in candidates[k]:
                        s, t = ((k,), tuple(m)) if split else (tuple(m), (k,))
                        self.r.suggestions.append(Suggestion(s, t, "sizes add up, but so do other groups"))

    def _add_fused(self, A: Side, B: Side, k: str, members: list[str], d: int, split: bool, order: str) -> None:
        sizes = [B.infos[m].shape[d] for m in members]
        total = A.infos[k].shape[d]
        detail = f"{total} = {' + '.join(map(str, sizes))} along dim {d}" + (f"; {order}" if order else "")
        if split:
            act = f"chunk({len(sizes)}, {d})" if len(set(sizes)) == 1 else \
                f"split(({', '.join(map(str, sizes))}), {d})"
            cast = ((f"cast({B.infos[members[0]].dtype})",) if A.infos[k].dtype != B.infos[members[0]].dtype else ())
            self.r.pairs.append(Pair((k,), tuple(members), (act,) + cast, Evidence("sizes add up", detail)))
        else:
            cast = ((f"cast({A.infos[k].dtype})",) if B.infos[members[0]].dtype != A.infos[k].dtype else ())
            self.r.pairs.append(Pair(tuple(members), (k,), (f"concat({d})",) + cast,
                                     Evidence("sizes add up", detail)))
        self.free_a_b(A, k, members)

    def free_a_b(self, A: Side, k: str, members: list[str]) -> None:
        if A is self.S:
            self.free_s.discard(k)
            self.free_t.difference_update(members)
        else:
            self.free_t.discard(k)
            self.free_s.difference_update(members)

    # -------------------------------------------------------------- modules
    def modules(self) -> None:
        su = self._units(self.S, self.free_s, by_module=True)
        tu = self._units(self.T, self.free_t, by_module=True)
        unit_pairs = self._assign(su, tu, module_level=True)
        table = self._leaf_table(unit_pairs)
        for a, b, ev in unit_pairs:
            leaves = self._leaf_pairs(a, b, table)
            if leaves is None:
                continue
            for sk, tk in leaves:
                acts = actions_for(self.S.infos[sk], self.T.infos[tk])
                self._add((sk,), (tk,), acts, ev)

    def tensors(self) -> None:
        su = self._units(self.S, self.free_s, by_module=False)
        tu = self._units(self.T, self.free_t - self.withheld_t, by_module=False)
        for a, b, ev in self._assign(su, tu, module_level=False):
            sk, tk = a.keys[0], b.keys[0]
            self._add((sk,), (tk,), actions_for(self.S.infos[sk], self.T.infos[tk]), ev)

    def _add(self, sources, targets, acts, ev: Evidence) -> None:
        self.r.pairs.append(Pair(tuple(sources), tuple(targets), acts, ev))
        self.free_s.difference_update(sources)
        self.free_t.difference_update(targets)

    def _units(self, side: Side, free: set, by_module: bool) -> list[_Unit]:
        if by_module:
            groups: dict[str, list[str]] = defaultdict(list)
            for k in side.keys:
                if k in free:
                    groups[side.module[k]].append(k)
            items = list(groups.items())
        else:
            items = [(side.name(k), [k]) for k in side.keys if k in free]
        return [_Unit(i, ks, side.order[ks[0]], tuple(sorted(canonical(side.infos[k].shape) for k in ks)),
                      tuple(sorted(tuple(side.infos[k].shape) for k in ks)))
                for i, ks in items]

    def _norm(self, side: Side, text: str) -> str:
        text = text[len(side.common):] if text.startswith(side.common) else text
        return ".".join(w for w in _words(text))

    def _assign(self, su: list[_Unit], tu: list[_Unit], module_level: bool):
        """Pair units of equal signatures, surest evidence first."""
        out: list[tuple[_Unit, _Unit, Evidence]] = []
        classes: dict[tuple, tuple[list[_Unit], list[_Unit]]] = defaultdict(lambda: ([], []))
        for u in su:
            classes[u.sig][0].append(u)
        for u in tu:
            classes[u.sig][1].append(u)
        paired_s: dict[int, _Unit] = {}
        paired_t: dict[int, _Unit] = {}

        def take(a: _Unit, b: _Unit, ev: Evidence) -> None:
            paired_s[id(a)] = b
            paired_t[id(b)] = a
            out.append((a, b, ev))

        what = "module" if module_level else "tensor"
        fam_s, fam_t = families(su, self._namer(self.S)), families(tu, self._namer(self.T))
        # same name, unless the numbers in it say otherwise
        same = []
        for sig, (ss, ts) in classes.items():
            by_name = defaultdict(list)
            for b in ts:
                by_name[self._norm(self.T, b.id)].append(b)
            seen = Counter(self._norm(self.S, a.id) for a in ss)
            for a in ss:
                n = self._norm(self.S, a.id)
                if n and seen[n] == 1 and len(by_name.get(n, ())) == 1:
                    same.append((a, by_name[n][0]))
        for a, b in against_number_order(same, fam_s, fam_t):
            take(a, b, Evidence("same name", ""))
        # the only one of its shapes
        for sig, (ss, ts) in classes.items():
            fs = [a for a in ss if id(a) not in paired_s]
            ft = [b for b in ts if id(b) not in paired_t]
            if len(fs) == 1 and len(ft) == 1 and len(ss) == len(ts):
                take(fs[0], ft[0], Evidence("only one of its shapes", f"{what} {_sig_text(sig)}"))
        # neighbours in file order
        if self.ordered:
            seq_s = sorted(su, key=lambda u: u.pos)
            seq_t = sorted(tu, key=lambda u: u.pos)
            idx_s = {id(u): i for i, u in enumerate(seq_s)}
            idx_t = {id(u): i for i, u in enumerate(seq_t)}
            changed = True
            while changed:
                changed = False
                proposals: dict[tuple[int, int], tuple[_Unit, _Unit, _Unit]] = {}
                for a, b, _ in list(out):
                    if id(a) not in idx_s or id(b) not in idx_t:
                        continue
                    for d in (1, -1):
                        i, j = idx_s[id(a)] + d, idx_t[id(b)] + d
                        if 0 <= i < len(seq_s) and 0 <= j < len(seq_t):
                            x, y = seq_s[i], seq_t[j]
                            if id(x) in paired_s or id(y) in paired_t or x.sig != y.sig:
                                continue
                            if len(classes[x.sig][0]) == 1 and len(classes[x.sig][1]) == 1:
                                continue
                            proposals[(id(x), id(y))] = (x, y, a)
                count_s = Counter(k[0] for k in proposals)
                count_t = Counter(k[1] for k in proposals)
                for (ix, iy), (x, y, a) in proposals.items():
                    if count_s[ix] == 1 and count_t[iy] == 1:
                        take(x, y, Evidence("next to a pair", f"beside {a.id}"))
                        changed = True
        # numbered families: numbers that move together, in any file order (after neighbours,
        # which see the order both files agree on inside a block, as numbers cannot)
        self._numbered(fam_s, fam_t, paired_s, paired_t, take, what)
        # rank within a class; name similarity when the counts differ
        for sig, (ss, ts) in classes.items():
            fs = sorted((a for a in ss if id(a) not in paired_s), key=lambda u: u.pos)
            ft = sorted((b for b in ts if id(b) not in paired_t), key=lambda u: u.pos)
            if not fs or not ft:
                continue
            if self.ordered and len(fs) == len(ft) and len(ss) == len(ts):
                for n, (a, b) in enumerate(zip(fs, ft), 1):
                    take(a, b, Evidence("order", f"{n} of {len(fs)} {what}s {_sig_text(sig)} in file order"))
                continue
            sims = {(id(a), id(b)): self._similarity(a, b) for a in fs for b in ft}
            for a in fs:
                ranked = sorted(ft, key=lambda b: -sims[(id(a), id(b))])
                best = ranked[0]
                s1 = sims[(id(a), id(best))]
                s2 = sims[(id(a), id(ranked[1]))] if len(ranked) > 1 else 0.0
                back = max(sims[(id(x), id(best))] for x in fs if x is not a) if len(fs) > 1 else 0.0
                if id(best) not in paired_t and s1 >= 0.5 and s1 - s2 >= 0.2 and s1 - back >= 0.2:
                    take(a, best, Evidence("name similarity", f"{s1:.2f}, next best {max(s2, back):.2f}"))
            fs = [a for a in fs if id(a) not in paired_s]
            ft = [b for b in ft if id(b) not in paired_t]
            if len(fs) == 1 and len(ft) == 1 and len(ss) == len(ts) and \
                    all(id(a) in paired_s and paired_s[id(a)] is not None for a in ss if a is not fs[0]):
                take(fs[0], ft[0], Evidence("the last of its shapes", f"every other {what} {_sig_text(sig)} is paired"))
                continue
            if module_level:
                continue  # single tensors get another chance
            if fs and ft:
                why = (f"{len(fs)} source and {len(ft)} target tensors of shape {_sig_text(sig)}; "
                       + ("no name or order tells them apart" if not self.ordered
                          else "names do not tell them apart"))
                for a in fs:
                    self.r.suggestions.append(Suggestion(tuple(a.keys), tuple(k for b in ft for k in b.keys), why))
                    self.free_s.difference_update(a.keys)
                    self.r.dropped[a.keys[0]] = "undecided: see the suggestion below"
        return out

    @staticmethod
    def _pattern(side: Side, fam, key: str) -> str:
        """A family's key as a suggestion shows it: `layers.#.feed_forward.w1.weight`."""
        name = side.name(key)
        leaf = side.leaf[key] if name.endswith(side.leaf[key]) and not fam.skel.endswith(side.leaf[key]) else ""
        return side.common + fam.skel + leaf

    @staticmethod
    def _namer(side: Side):
        return lambda u: u.id[len(side.common):] if u.id.startswith(side.common) else u.id

    def _numbered(self, fam_s, fam_t, paired_s: dict, paired_t: dict, take, what: str) -> None:
        """Pair numbered families member by member (numbering.py); hold back the families
        whose counterpart names and shapes leave open, as one suggestion each."""
        # whole families first, then with the sub-families where a number acts as a name; what
        # the second pass leaves open is open for good
        for fs_, ft_ in ((fam_s, fam_t), (fam_s + split(fam_s), fam_t + split(fam_t))):
            links, undecided = align(fs_, ft_, paired_s, paired_t)
            for link in links:
                ev = Evidence("numbers move together", link.detail(self.S.common, self.T.common))
                for a, b in zip(link.fs.members, link.ft.members):
                    if id(a) not in paired_s:
                        take(a, b, ev)
        for fs, cands in undecided:
            free = [a for a in fs.members if id(a) not in paired_s]
            cands = [ft for ft in cands if not any(paired_t.get(id(b)) is not None for b in ft.members)]
            if not free or len(cands) < 2:
                continue
            sources = tuple(self._pattern(self.S, fs, k) for k in free[0].keys)
            targets = tuple(self._pattern(self.T, ft, k) for ft in cands for k in ft.members[0].keys)
            why = (f"{len(fs.members)} {what}s each, numbered alike; names and shapes do not tell "
                   f"{len(cands)} families apart")
            self.r.suggestions.append(Suggestion(sources, targets, why))
            for a in free:
                paired_s[id(a)] = None
                self.free_s.difference_update(a.keys)
                for k in a.keys:
                    self.r.dropped[k] = "undecided: see the suggestion below"
            for ft in cands:
                for b in ft.members:
                    paired_t.setdefault(id(b), None)
                    self.withheld_t.update(b.keys)

    def _similarity(self, a: _Unit, b: _Unit) -> float:
        """Word overlap; for names without numbers (embeddings, heads) also letter trigrams,
        which see `embed_tokens` in `tok_embeddings`. Numbered names are left to the numbers."""
        na, nb = self._norm(self.S, a.id), self._norm(self.T, b.id)
        sim = similarity(na, nb, self.subst)
        if not any(c.isdigit() for c in na + nb):
            sim = max(sim, trigram_similarity(na, nb))
        return sim

    # -------------------------------------------------------------- leaves inside a module pair
    def _local_leaves(self, a: _Unit, b: _Unit) -> list[tuple[str, str]] | None:
        S, T = self.S, self.T
        if len(a.keys) != len(b.keys):
            return None
        names_t = {T.leaf[k]: k for k in b.keys}
        if all(S.leaf[k] in names_t for k in a.keys):
            out = [(k, names_t[S.leaf[k]]) for k in a.keys]
        else:
            # same shape class in file order (a BN's four vectors: gamma, beta, mean, var)
            out = []
            by_s: dict[tuple, list[str]] = defaultdict(list)
            by_t: dict[tuple, list[str]] = defaultdict(list)
            for k in a.keys:
                by_s[canonical(S.infos[k].shape)].append(k)
            for k in b.keys:
                by_t[canonical(T.infos[k].shape)].append(k)
            for c, ks in by_s.items():
                kt = by_t.get(c, [])
                if len(kt) != len(ks) or (len(ks) > 1 and not self.ordered):
                    return None
                out += list(zip(sorted(ks, key=S.order.get), sorted(kt, key=T.order.get)))
        if any(actions_for(S.infos[s], T.infos[t]) is None for s, t in out):
            return None
        return out

    def _leaf_table(self, unit_pairs) -> dict[tuple[str, frozenset], str]:
        votes: dict[tuple[str, frozenset], Counter] = defaultdict(Counter)
        for a, b, _ in unit_pairs:
            local = self._local_leaves(a, b)
            if local is None:
                continue
            tset = frozenset(self.T.leaf[k] for k in b.keys)
            for s, t in local:
                votes[(self.S.leaf[s], tset)][self.T.leaf[t]] += 1
        # also a word table for name similarity later: gamma -> weight ...
        for (sl, _), c in votes.items():
            tl = c.most_common(1)[0][0]
            for ws, wt in zip(_words(sl)[::-1], _words(tl)[::-1]):
                if ws != wt:
                    self.subst.setdefault(ws, wt)
        return {k: c.most_common(1)[0][0] for k, c in votes.items()}

    def _leaf_pairs(self, a: _Unit, b: _Unit, table) -> list[tuple[str, str]] | None:
        S, T = self.S, self.T
        tset = frozenset(T.leaf[k] for k in b.keys)
        names_t = {T.leaf[k]: k for k in b.keys}
        wanted = [table.get((S.leaf[k], tset)) for k in a.keys]
        if len(a.keys) == len(b.keys) and all(w in names_t for w in wanted) and len(set(wanted)) == len(wanted):
            out = [(k, names_t[w]) for k, w in zip(a.keys, wanted)]
            if all(actions_for(S.infos[s], T.infos[t]) is not None for s, t in out):
                return out
        return self._local_leaves(a, b)

    # -------------------------------------------------------------- counters, leftovers
    def counters(self) -> None:
        """Integer scalars (BN's num_batches_tracked) follow their module's pairing."""
        S, T = self.S, self.T
        mod_pairs: dict[str, str] = {}
        for p in self.r.pairs:
            for s, t in zip(p.sources, p.targets):
                mod_pairs.setdefault(S.module[s], T.module[t])
        by_mod_t = {(T.module[k], T.leaf[k]): k for k in T.keys if is_counter(k, T.infos[k])}
        taken = set()
        for k in S.keys:
            if not is_counter(k, S.infos[k]):
                continue
            t = by_mod_t.get((mod_pairs.get(S.module[k]), S.leaf[k]))
            if t is not None and t not in taken:
                taken.add(t)
                self.r.pairs.append(Pair((k,), (t,), actions_for(S.infos[k], T.infos[t]),
                                         Evidence("same name", "a counter of a paired module")))
            else:
                self.r.dropped[k] = "a counter (an integer scalar) the target has no place for"
        self.r.counters = [k for k in T.keys if is_counter(k, T.infos[k]) and k not in taken]

    def leftovers(self) -> None:
        S, T = self.S, self.T
        for k in S.keys:
            if k in self.free_s and k not in self.r.dropped:
                self.r.dropped[k] = self._why(k)
        suggested = {t for s in self.r.suggestions for t in s.targets}
        self.r.unexplained = [k for k in T.keys if k in self.free_t or (k in suggested and k in self.free_t)]

    def _why(self, k: str) -> str:
        S, T = self.S, self.T
        ws = set(_words(S.body[k]))
        if ws & OPTIMIZER_WORDS and not ws & {"weight", "bias"}:
            return "optimizer state"
        name = self._norm(S, S.name(k))
        best, score = None, 0.0
        for t in T.keys:
            if t in self.free_t and not is_counter(t, T.infos[t]):
                s = similarity(name, self._norm(T, T.name(t)), self.subst)
                if s > score:
                    best, score = t, s
        shape = S.infos[k].shape
        if best is not None and score >= 0.5:
            return (f"shape {_shape(shape)} differs from the target's closest name, {best} "
                    f"{_shape(T.infos[best].shape)} (a different head?)")
        return f"{NO_PLACE}: {_shape(shape)}"


NO_PLACE = "no target tensor of a compatible shape is left"
DIFFERENT_HEAD = "differs from the target's closest name"


def drop_kind(why: str) -> str:
    """The kind of a drop reason, without the key's own shape or name: drops of one kind are
    generalised together (a conv bias per block is one rule, whatever the block's width)."""
    if why.startswith(NO_PLACE):
        return NO_PLACE
    if DIFFERENT_HEAD in why:
        return f"its shape {DIFFERENT_HEAD} (a different head?)"
    return why


def _sum_dim(shape: tuple[int, ...], parts: list[tuple[int, ...]]) -> int | None:
    """The one dim along which `parts` add up to `shape`, the others equal; or None."""
    if any(len(p) != len(shape) for p in parts):
        return None
    for d in range(len(shape)):
        if all(p[:d] + p[d + 1:] == shape[:d] + shape[d + 1:] for p in parts) and \
                sum(p[d] for p in parts) == shape[d]:
            return d
    return None




def _shape(shape) -> str:
    return "(" + ", ".join(map(str, shape)) + ("," if len(shape) == 1 else "") + ")"


def _sig_text(sig: tuple) -> str:
    c = Counter(sig)
    return " + ".join(_shape(s) + (f"x{n}" if n > 1 else "") for s, n in c.items())

