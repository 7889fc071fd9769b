"""Turn a list of pairs into few rules.

1. Whole sub-trees: pairs whose source and target share a tail below a prefix become
   `P{r:**} -> Q{r}` (optionally restricted to the leaves seen), when no other key has P.
2. The rest are tokenised (letters, digits, separators) and grouped by skeleton (digits
   replaced by #); inside a group every target number is solved as a function of a source
   number: equal, plus or minus a constant, `//` or `%` by a small constant, else a table.
   A group no function explains is split by the value of one source number.
3. Rules that differ in one literal stretch merge into one with an alternative (`{p:a|b}`)
   or a lookup table (`{p in t}` -> `{t[p]}`), repeatedly, largest merge first.

Drops go through the same steps with no target."""

from __future__ import annotations

import fnmatch
import re
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from .keys import Side, is_boundary, is_number, shared_ends, tokens
from .pairing import Pair, drop_kind

PLAIN = re.compile(r"^[A-Za-z0-9_./:()\-]+$")
SEGMENT = re.compile(r"[./]")
ALT = re.compile(r"^[A-Za-z0-9_./()\-]+$")

# Part kinds: ("lit", text) | ("int", ordinal, values or None) | ("var", entries, used, ordered)
#             | ("glob",) any keys (`**`, in a drop of one leaf) | ("ns",) the source namespace (arg:/aux:), its values read from the rule's keys | ("rest", leaves or None) for ** rules
# target:     ("lit", text) | ("expr", expr) | ("var", entries, used, ordered) | ("fan", values)
#             | ("rest",)


@dataclass
class Rule:
    src: tuple
    tgt: tuple | None            # None: a drop
    actions: tuple[str, ...]
    pairs: list = field(default_factory=list)   # Pair objects, or (source key, why) for drops
    why: str = ""                # drops: the reason


def generalize(pairs: list[Pair], drops: dict[str, str], source: Side, *, literal: bool = False,
               restrict: bool = False, literal_drops: bool = False) -> list[Rule]:
    """Rules reproducing exactly `pairs` and dropping exactly `drops`' keys.

    `restrict` limits every number capture to the values seen; `literal` writes one rule per
    pair, `literal_drops` one per dropped key (the fallbacks when a generalised draft does not
    reproduce its own pairs: unpaired keys are spelled out before the pairs lose their rules)."""
    rules: list[Rule] = []
    rest = list(pairs)
    if not literal:
        subtree, rest = _subtrees(rest, source)
        rules += subtree
    items = [(_src_parts(p.sources, source, literal), _tgt_parts(p.targets), p.actions, p) for p in rest]
    if not (literal or literal_drops):
        leafs, drops = _leaf_drops(drops, source)
        rules += leafs
    # drops of one kind generalise together: the reasons differ only in each key's shape
    for k, why in drops.items():
        items.append((_src_parts((k,), source, literal or literal_drops), None, ("drop", drop_kind(why)), (k, why)))
    if literal:
        return rules + [_literal_rule(s, t, a, x) for s, t, a, x in items]
    groups: dict[tuple, list] = defaultdict(list)
    for s, t, a, x in items:
        groups[(_skeleton(s), _skeleton(t) if t is not None else None, a)].append((s, t, x))
    shared = defaultdict(int)
    for (ss, _, _) in groups:
        shared[ss] += 1
    for (ss, _, a), members in groups.items():
        rules += _solve_group(members, a, restrict or shared[ss] > 1)
    return _merge(rules)


def _leaf_drops(drops: dict[str, str], side: Side) -> tuple[list[Rule], dict[str, str]]:
    """`drop **.LEAF` where every key of that leaf is dropped for one reason (BatchNorm
    counters in every module); the drops left over."""
    by_leaf: dict[str, list[str]] = defaultdict(list)
    for k in side.keys:
        by_leaf[k.rsplit(".", 1)[-1] if "." in k and not side.namespace[k] else ""].append(k)
    rules, left = [], dict(drops)
    for leaf, keys in by_leaf.items():
        kinds = {drop_kind(drops[k]) if k in drops else None for k in keys}
        if leaf and len(keys) > 1 and len(kinds) == 1 and None not in kinds and ALT.match(leaf):
            rules.append(Rule((("glob",), ("lit", "." + leaf)), None, (), [(k, drops[k]) for k in keys], kinds.pop()))
            for k in keys:
                del left[k]
    return rules, left


def target_only(pairing) -> list[tuple[str, list[str]]]:
    """Target keys that no source tensor can make (not those a suggestion leaves open), as a
    few globs, each with its keys: generalised as drops over the target's names, each glob
    checked to match none of the target keys the draft does make (else its keys one by one)."""
    # a family's suggestion names its members with '#' for their numbers
    suggested = [re.compile(re.escape(t).replace("\\#", r"\d+")) for s in pairing.suggestions for t in s.targets]
    keys = [k for k in pairing.unexplained if not any(p.fullmatch(k) for p in suggested)]
    if not keys:
        return []
    side = pairing.target
    made = [t for p in pairing.pairs for t in p.targets]
    out = []
    for rule in generalize([], {k: "only in the target" for k in keys}, side):
        mine = [k for k, _ in rule.pairs]
        spaces = {side.namespace[k] for k in mine}
        glob = "".join(spaces.pop() if p[0] == "ns" and len(spaces) == 1 else
                       "*" if p[0] in ("int", "var", "ns", "glob") else p[1] for p in rule.src)
        if any(fnmatch.fnmatchcase(k, glob) for k in made):
            out += [(k, [k]) for k in mine]
        else:
            out.append((glob, mine))
    return out


# ------------------------------------------------------------------ parts

def _src_parts(keys: tuple[str, ...], side: Side, literal: bool) -> tuple:
    """Source parts of one key, or of several merged ones (their differing stretch becomes
    an ordered alternative: the inputs of a concat)."""
    if len(keys) > 1:
        return _fan_parts(keys, side, "var")
    k = keys[0]
    ns = side.namespace[k]
    head = (("ns",), ("lit", ":")) if ns and not literal else ((("lit", ns + ":"),) if ns else ())
    return head + tuple(("lit", t) if literal else _tok(t) for t in tokens(side.body[k]))


def _tgt_parts(keys: tuple[str, ...]) -> tuple:
    if len(keys) > 1:
        return _fan_parts(keys, None, "fan")
    return tuple(_tok(t) for t in tokens(keys[0]))


def _fan_parts(keys: tuple[str, ...], side: Side | None, kind: str) -> tuple:
    toks = [tokens(side.body[k] if side else k) for k in keys]
    if side is not None and side.namespace[keys[0]]:
        toks = [[side.namespace[k], ":"] + t for k, t in zip(keys, toks)]
    p, q = shared_ends(toks)
    while p > 0 and not is_boundary(toks[0][p - 1]):
        p -= 1
    while q > 0 and not is_boundary(toks[0][len(toks[0]) - q]):
        q -= 1
    values = tuple("".join(t[p:len(t) - q]) for t in toks)
    first = toks[0]
    mid = (("var", tuple((v, v) for v in values), False, True),) if kind == "var" else (("fan", values),)
    return tuple(_tok(t) for t in first[:p]) + mid + tuple(_tok(t) for t in first[len(first) - q:])


def _tok(t: str) -> tuple:
    return ("int", t) if is_number(t) else ("lit", t)


def _skeleton(parts: tuple) -> tuple:
    return tuple(("int",) if p[0] == "int" else p for p in parts)


def _literal_rule(s, t, a, x) -> Rule:
    s = tuple(("lit", p[1]) if p[0] == "int" else p for p in s)
    t = tuple(("lit", p[1]) if p[0] == "int" else p for p in t) if t is not None else None
    if a and a[0] == "drop":
        return Rule(s, None, (), [x], a[1])
    return Rule(s, t, a, [x])


# ------------------------------------------------------------------ whole sub-trees

def _subtrees(pairs: list[Pair], side: Side) -> tuple[list[Rule], list[Pair]]:
    tails: dict[int, str] = {}
    family_segments: dict[tuple, int] = {}
    for p in pairs:
        if len(p.sources) != 1 or len(p.targets) != 1:
            continue
        s, t = p.sources[0], p.targets[0]
        n = 0
        while n < min(len(s), len(t)) and s[-1 - n] == t[-1 - n]:
            n += 1
        # the shared tail must start a segment on both sides and hold two segments at least
        while n > 0 and not ((n == len(s) or s[-n - 1] in "./") and (n == len(t) or t[-n - 1] in "./")):
            n -= 1
        tail = s[len(s) - n:]
        if n == 0 or "." not in tail.strip("."):
            continue
        tails[id(p)] = tail
        fam = (_skeleton(_tgt_parts((s,))), _skeleton(_tgt_parts((t,))))
        family_segments[fam] = min(family_segments.get(fam, 1 << 30), len(SEGMENT.split(tail)))
    # pairs that differ only in their numbers share as much tail as the least of them: in
    # `blocks.0.proj` -> `stages.0.blocks.0.proj` the tail `blocks.0.proj` is a coincidence of
    # numbers that `blocks.2.proj` -> `stages.1.blocks.0.proj` does not repeat
    groups: dict[tuple, list[tuple[Pair, str]]] = defaultdict(list)
    for p in pairs:
        if id(p) not in tails:
            continue
        s, t = p.sources[0], p.targets[0]
        fam = (_skeleton(_tgt_parts((s,))), _skeleton(_tgt_parts((t,))))
        tail = "".join(re.split(r"(?=[./])", tails[id(p)])[-family_segments[fam]:])
        tail = tail[1:] if tail[:1] in "./" else tail
        n = len(tail)
        if "." not in tail.strip("."):
            continue
        groups[(s[:len(s) - n], t[:len(t) - n], p.actions)].append((p, tail))
    found: list[tuple[str, str, tuple, tuple, list[Pair]]] = []
    keys = side.keys
    for (P, Q, acts), members in groups.items():
        if len(members) < 2:
            continue
        mine = {p.sources[0] for p, _ in members}
        under = [k for k in keys if k.startswith(P) and len(k) > len(P)]
        leaves = sorted({tail.rsplit(".", 1)[-1] for _, tail in members})
        if all(k in mine for k in under):
            rest = ("rest", None)
        elif all(k in mine for k in under if k.rsplit(".", 1)[-1] in leaves and "." in k[len(P):]) \
                and all(ALT.match(lf) for lf in leaves):
            rest = ("rest", tuple(leaves))
        else:
            continue
        found.append((P, Q, acts, rest, [p for p, _ in members]))
    # sub-trees whose prefixes differ only in their numbers (`layers.7.` -> `stages.1.blocks.3.`)
    # become one rule with the numbers solved, as for single keys
    by_skel: dict[tuple, list] = defaultdict(list)
    for P, Q, acts, rest, ps in found:
        by_skel[(_skeleton(_tgt_parts((P,))), _skeleton(_tgt_parts((Q,))), acts, rest)].append((P, Q, ps))
    rules, used = [], set()
    for (_, _, acts, rest), trees in by_skel.items():
        members = [(_tgt_parts((P,)), _tgt_parts((Q,)), ps) for P, Q, ps in trees]
        sols = _solve([_ints(m[0]) for m in members], [_ints(m[1]) for m in members]) if len(trees) > 1 else None
        if sols is None:
            built = [Rule((("lit", P), rest), (("lit", Q), ("rest",)), acts, ps) for P, Q, ps in trees]
        else:
            rule = _build(members, acts, sols, restrict=not _covers([P for P, _, _ in trees], keys))
            built = [Rule(rule.src + (rest,), rule.tgt + (("rest",),), acts, [p for ps in rule.pairs for p in ps])]
        rules += built
        used |= {id(p) for _, _, ps in trees for p in ps}
    return rules, [p for p in pairs if id(p) not in used]


def _covers(prefixes: list[str], keys: list[str]) -> bool:
    """Whether every key under a prefix of this numbered shape is under one of `prefixes`
    (then the rule's numbers need not be limited to the values seen)."""
    shape = re.compile("".join(r"\d+" if t.isdigit() else re.escape(t) for t in tokens(prefixes[0])))
    mine = set(prefixes)
    for k in keys:
        m = shape.match(k)
        if m and len(k) > m.end() and k[:m.end()] not in mine:
            return False
    return True


# ------------------------------------------------------------------ numbers

def _ints(parts: tuple) -> list[int]:
    return [int(p[1]) for p in parts if p[0] == "int"]


def _solve_group(members: list, actions: tuple, restrict: bool) -> list[Rule]:
    sols = _solve([_ints(s) for s, _, _ in members], [_ints(t) if t is not None else [] for _, t, _ in members])
    if sols is not None:
        return [_build(members, actions, sols, restrict)]
    # split by the value of one source number, joining values whose pairs one rule explains
    n_src = len(_ints(members[0][0]))
    best = None
    for i in range(n_src):
        if len({_ints(s)[i] for s, _, _ in members}) < 2:
            continue
        parts: list[list] = []
        for v in sorted({_ints(s)[i] for s, _, _ in members}):
            ms = [m for m in members if _ints(m[0])[i] == v]
            for part in parts:
                trial = part + ms
                if _solve([_ints(s) for s, _, _ in trial], [_ints(t) if t is not None else [] for _, t, _ in trial]):
                    part.extend(ms)
                    break
            else:
                parts.append(ms)
        if best is None or len(parts) < len(best):
            best = parts
    out = []
    for part in best or [[m] for m in members]:
        sols = _solve([_ints(s) for s, _, _ in part], [_ints(t) if t is not None else [] for _, t, _ in part])
        if sols is None:
            out += [_build([m], actions, _solve([_ints(m[0])], [_ints(m[1]) if m[1] else []]), True) for m in part]
        else:
            out.append(_build(part, actions, sols, True))
    return out


def _solve(src: list[list[int]], tgt: list[list[int]]) -> list | None:
    """For each target number: ("const", v) or an expression of one source number."""
    if not tgt or not tgt[0]:
        return []
    out = []
    varying = [i for i in range(len(src[0])) if len({s[i] for s in src}) > 1]
    for j in range(len(tgt[0])):
        ts = [t[j] for t in tgt]
        if len(set(ts)) == 1:
            out.append(("const", ts[0]))
            continue
        found = None
        adds = []
        for i in varying:
            diffs = {t - s[i] for s, t in zip(src, ts)}
            if len(diffs) == 1:
                c = diffs.pop()
                adds.append((abs(c), c < 0, i, c))
        if adds:
            _, _, i, c = min(adds)
            found = ("add", i, c)
        for i in varying if found is None else ():
            for m in range(2, 9):
                for op in ("//", "%"):
                    vals = {t - (s[i] // m if op == "//" else s[i] % m) for s, t in zip(src, ts)}
                    if len(vals) == 1 and found is None:
                        found = (op, i, m, vals.pop())
        for i in varying if found is None else ():
            table: dict[int, int] = {}
            if all(table.setdefault(s[i], t) == t for s, t in zip(src, ts)):
                found = ("table", i, tuple(sorted(table.items())))
                break
        if found is None:
            return None
        out.append(found)
    return out


def _build(members: list, actions: tuple, sols: list, restrict: bool) -> Rule:
    srcs = [_ints(s) for s, _, _ in members]
    used = {sol[1] for sol in sols if sol[0] != "const"}
    n = len(srcs[0])
    values = [sorted({s[i] for s in srcs}) for i in range(n)]
    s_parts, k = [], 0
    for p in members[0][0]:
        if p[0] == "int":
            vs = values[k]
            if len(vs) == 1 and k not in used:
                s_parts.append(("lit", p[1]))
            else:
                s_parts.append(("int", k, tuple(vs) if restrict else None))
            k += 1
        else:
            s_parts.append(p)
    t_parts = None
    if members[0][1] is not None:
        t_parts, j = [], 0
        for p in members[0][1]:
            if p[0] == "int":
                sol = sols[j]
                t_parts.append(("lit", str(sol[1])) if sol[0] == "const" else ("expr", sol))
                j += 1
            else:
                t_parts.append(p)
        t_parts = tuple(t_parts)
    xs = [x for _, _, x in members]
    if actions and actions[0] == "drop":
        return Rule(tuple(s_parts), None, (), xs, actions[1])
    return Rule(tuple(s_parts), t_parts, actions, xs)


# ------------------------------------------------------------------ merging literal stretches

def _merge(rules: list[Rule]) -> list[Rule]:
    while True:
        buckets: dict[tuple, list[int]] = defaultdict(list)
        for i, r in enumerate(rules):
            buckets[(r.actions, r.tgt is None, r.why)].append(i)
        contexts: dict[tuple, set[int]] = defaultdict(set)
        for ids in buckets.values():
            if len(ids) > 400:  # literal rules by the hundred: pairwise merging would be too slow
                continue
            for x in range(len(ids)):
                for y in range(x + 1, len(ids)):
                    key = _context(rules[ids[x]], rules[ids[y]])
                    if key is not None:
                        contexts[key] |= {ids[x], ids[y]}
        if not contexts:
            return rules
        done: set[int] = set()
        new: list[Rule] = []
        # narrow stretches first (a leaf, a unit name), then wide ones: a table of whole tails
        # would explain the same pairs but hide their structure from the reviewer
        for key, ids in sorted(contexts.items(), key=lambda kv: (_width(rules, kv), -len(kv[1]), min(kv[1]))):
            members = sorted(i for i in ids if i not in done and _fits(rules[i], key))
            if len(members) < 2:
                continue
            merged = _join([rules[i] for i in members], key)
            if merged is None:
                continue
            done |= set(members)
            new.append(merged)
        if not new:
            return rules
        rules = [r for i, r in enumerate(rules) if i not in done] + new


def _width(rules: list[Rule], item) -> int:
    """Path separators inside a context's stretches (0 within one segment)."""
    (sp, ss, tkey, _, _), ids = item
    widest = 0
    for i in ids:
        r = rules[i]
        mids = [r.src[len(sp):len(r.src) - len(ss)]]
        if tkey is not None:
            mids.append(r.tgt[len(tkey[0]):len(r.tgt) - len(tkey[1])])
        widest = max([widest] + [sum("".join(x[1] for x in m).count(c) for c in ".:/") for m in mids])
    return widest


def _affix(a: tuple, b: tuple) -> tuple[int, int] | None:
    p = 0
    while p < min(len(a), len(b)) and a[p] == b[p]:
        p += 1
    q = 0
    while q < min(len(a), len(b)) - p and a[-1 - q] == b[-1 - q]:
        q += 1
    # widen the stretch to whole words
    while p > 0 and a[p - 1][0] == "lit" and not is_boundary(a[p - 1][1]):
        p -= 1
    while q > 0 and a[len(a) - q][0] == "lit" and not is_boundary(a[len(a) - q][1]):
        q -= 1
    return p, q


def _context(A: Rule, B: Rule):
    if (A.tgt is None) != (B.tgt is None):
        return None
    p, q = _affix(A.src, B.src)
    if not _stretch(A.src, p, q) or not _stretch(B.src, p, q):
        return None
    if A.tgt is None:
        tp = tq = 0
        tkey = None
    else:
        tp, tq = _affix(A.tgt, B.tgt)
        if len(A.tgt) - tp - tq == 0 and len(B.tgt) - tp - tq == 0:
            tkey = (A.tgt[:tp], A.tgt[len(A.tgt) - tq:], True)
        elif not any(x[0] == "lit" for x in A.tgt[:tp] + A.tgt[len(A.tgt) - tq:]):
            return None  # nothing of the target name is left outside the table: no structure to show
        elif _stretch(A.tgt, tp, tq) and _stretch(B.tgt, tp, tq):
            tkey = (A.tgt[:tp], A.tgt[len(A.tgt) - tq:], False)
        else:
            return None
    return (A.src[:p], A.src[len(A.src) - q:], tkey, A.actions, A.why)


def _stretch(parts: tuple, p: int, q: int) -> bool:
    mid = parts[p:len(parts) - q]
    return bool(mid) and all(x[0] == "lit" for x in mid)


def _fits(r: Rule, key) -> bool:
    sp, ss, tkey, acts, why = key
    if r.actions != acts or r.why != why or (r.tgt is None) != (tkey is None):
        return False
    if r.src[:len(sp)] != sp or r.src[len(r.src) - len(ss):] != ss or not _stretch(r.src, len(sp), len(ss)):
        return False
    if tkey is None:
        return True
    tp, ts, empty = tkey
    if r.tgt[:len(tp)] != tp or r.tgt[len(r.tgt) - len(ts):] != ts:
        return False
    mid = len(r.tgt) - len(tp) - len(ts)
    return mid == 0 if empty else _stretch(r.tgt, len(tp), len(ts))


def _join(members: list[Rule], key) -> Rule | None:
    sp, ss, tkey, acts, why = key
    entries = []
    for r in members:
        s = "".join(x[1] for x in r.src[len(sp):len(r.src) - len(ss)])
        t = "".join(x[1] for x in r.tgt[len(tkey[0]):len(r.tgt) - len(tkey[1])]) if tkey is not None else ""
        if not PLAIN.match(s) or (t and not PLAIN.match(t)):
            return None
        entries.append((s, t))
    if len({s for s, _ in entries}) != len(entries):
        return None
    used = tkey is not None and not tkey[2]
    var = ("var", tuple(sorted(entries)), used, False)
    src = sp + (var,) + ss
    tgt = None if tkey is None else tkey[0] + ((var,) if used else ()) + tkey[1]
    pairs: list[Any] = [x for r in members for x in r.pairs]
    return Rule(src, tgt, acts, pairs, why)
