"""How the draft reads a key: tokens, a namespace prefix (MXNet's `arg:`/`aux:`), the leaf
(`weight`, `running_mean`) and the module that owns it, and shape compatibility.

Everything here is learned from the key list itself; nothing names a framework's layers."""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Mapping

from ...core import dtypes
from ...compile.plan import TensorInfo

TOKEN = re.compile(r"[A-Za-z]+|[0-9]+|[^A-Za-z0-9]+")
BOUNDARY = set("._:/")  # characters that end a word; `-` and `()` stay inside one (c1x1-w(s/2))
WORD_SPLIT = re.compile(r"[._:/]+")
INT_DTYPES = {"int64", "int32", "int16", "int8", "uint8", "uint16", "uint32", "uint64", "bool"}


MAX_DIGITS = 18  # a longer run of digits in a key is a name, not a number to count with


def is_number(token: str) -> bool:
    """A token the draft counts with (a layer index): digits, at most MAX_DIGITS of them."""
    return token.isdigit() and len(token) <= MAX_DIGITS


def tokens(key: str) -> list[str]:
    """`conv2_x__1_c1x1-a` -> conv 2 _x__ ... : letters, digits and separator runs."""
    return TOKEN.findall(key)


def shared_ends(seqs: list) -> tuple[int, int]:
    """Lengths of the prefix and of the (non-overlapping) suffix every sequence shares."""
    p = 0
    while all(len(t) > p for t in seqs) and len({t[p] for t in seqs}) == 1:
        p += 1
    q = 0
    while all(len(t) > p + q for t in seqs) and len({t[-1 - q] for t in seqs}) == 1:
        q += 1
    return p, q


def is_boundary(tok: str) -> bool:
    return not tok[0].isalnum() and any(c in BOUNDARY for c in tok)


def words(key: str) -> list[str]:
    return [w.lower() for w in re.findall(r"[A-Za-z]+|[0-9]+", key)]


def is_counter(key: str, info: TensorInfo) -> bool:
    """A step counter such as BatchNorm's num_batches_tracked: an integer scalar."""
    return info.dtype in INT_DTYPES and len(info.shape) == 0


# ------------------------------------------------------------------ shapes

def relation(src: tuple[int, ...], tgt: tuple[int, ...]) -> tuple[str, ...] | None:
    """The actions that turn a source shape into a target shape, or None if none of the
    ones a draft proposes does (equal, appended or removed size-1 dims, 2-d transpose)."""
    src, tgt = tuple(src), tuple(tgt)
    if src == tgt:
        return ()
    if len(tgt) > len(src) and tgt[:len(src)] == src and all(d == 1 for d in tgt[len(src):]):
        return (f"view(+({', '.join('1' for _ in tgt[len(src):])}))",)
    if len(src) > len(tgt) and src[:len(tgt)] == tgt and all(d == 1 for d in src[len(tgt):]):
        return tuple("squeeze(-1)" for _ in src[len(tgt):])
    if len(src) == 2 and src == tgt[::-1]:
        return ("transpose()",)
    return None


def canonical(shape: tuple[int, ...]) -> tuple[int, ...]:
    """A shape class that groups shapes `relation` can connect."""
    s = tuple(shape)
    while s and s[-1] == 1 and len(s) > 1:
        s = s[:-1]
    return tuple(sorted(s)) if len(s) == 2 else s


# ------------------------------------------------------------------ one side of the draft

@dataclass
class Side:
    """A checkpoint's keys as the draft sees them (in file order)."""

    infos: dict[str, TensorInfo]
    keys: list[str] = field(init=False)
    order: dict[str, int] = field(init=False)
    ordered: bool = field(init=False)        # the file order says something (it is not just sorted)
    namespace: dict[str, str] = field(init=False)   # key -> 'arg'/'aux' ... or ''
    body: dict[str, str] = field(init=False)        # key without the namespace
    leaf: dict[str, str] = field(init=False)
    module: dict[str, str] = field(init=False)      # body minus leaf
    common: str = field(init=False)                 # a prefix every key shares (module.)

    def __post_init__(self) -> None:
        self.keys = list(self.infos)
        self.order = {k: i for i, k in enumerate(self.keys)}
        self.ordered = len(self.keys) > 2 and not _sorted(self.keys, self.infos)
        self.namespace, self.body = _namespaces(self.keys)
        self.leaf, self.module = _leaves(self.body)
        self.common = _common_prefix(list(self.body.values()))

    def name(self, key: str) -> str:
        """The key as compared by name: no namespace, no shared prefix."""
        return self.body[key][len(self.common):]

    def modules(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = defaultdict(list)
        for k in self.keys:
            out[self.module[k]].append(k)
        return dict(out)


def _sorted(keys: list[str], infos: Mapping[str, TensorInfo]) -> bool:
    """Whether the file order is only a sort: by name, or by item size then name as the
    safetensors library writes its header (int64 counters first, then float32 ...)."""
    if keys == sorted(keys):
        return True
    try:
        by_size = sorted(keys, key=lambda k: (-dtypes.bits(infos[k].dtype), k))
    except KeyError:  # a dtype the table does not know: no safetensors file
        return False
    return keys == by_size


def _namespaces(keys: list[str]) -> tuple[dict[str, str], dict[str, str]]:
    """MXNet's save_checkpoint writes `arg:` and `aux:` before every name: a namespace
    carrying no information for the target when every key has one, there are few of them,
    and the names stay unique without it."""
    m = [re.match(r"^([A-Za-z]+):(.+)$", k) for k in keys]
    if keys and all(m) and len({x[1] for x in m}) <= 4:
        bodies = [x[2] for x in m]
        if len(set(bodies)) == len(bodies):
            return {k: x[1] for k, x in zip(keys, m)}, {k: x[2] for k, x in zip(keys, m)}
    return {k: "" for k in keys}, {k: k for k in keys}


def _leaves(body: Mapping[str, str]) -> tuple[dict[str, str], dict[str, str]]:
    """The leaf is the last word, extended over `_`-joined words that always precede it
    (`running_mean`, `moving_var`); the module is what comes before."""
    parts = {k: re.split(r"([._:/])", b) for k, b in body.items()}
    leaf = {k: p[-1] for k, p in parts.items()}
    for _ in range(3):
        before: dict[str, set] = defaultdict(set)
        for k, b in body.items():
            head = b[: len(b) - len(leaf[k])]
            if head.endswith("_"):
                w = re.split(r"[._:/]", head[:-1])[-1]
                before[leaf[k]].add(w if w.isalpha() else None)
            else:
                before[leaf[k]].add(None)
        grow = {lf: next(iter(ws)) for lf, ws in before.items() if len(ws) == 1 and None not in ws}
        if not grow:
            break
        leaf = {k: (grow[lf] + "_" + lf if lf in grow else lf) for k, lf in leaf.items()}
    module = {k: b[: len(b) - len(leaf[k])] for k, b in body.items()}
    return leaf, module


def _common_prefix(names: list[str]) -> str:
    if not names:
        return ""
    lo, hi = min(names), max(names)
    n = 0
    while n < len(lo) and n < len(hi) and lo[n] == hi[n]:
        n += 1
    prefix = lo[:n]
    cut = max(prefix.rfind(c) for c in ".:/")
    return prefix[: cut + 1] if cut >= 0 else ""


def similarity(a: str, b: str, subst: Mapping[str, str] | None = None) -> float:
    """Token overlap of two names (Dice), after learned word substitutions on `a`."""
    wa = [subst.get(w, w) if subst else w for w in words(a)]
    wb = words(b)
    if not wa or not wb:
        return 0.0
    ca, cb = Counter(wa), Counter(wb)
    return 2 * sum((ca & cb).values()) / (len(wa) + len(wb))


def trigram_similarity(a: str, b: str) -> float:
    """Dice overlap of the letter trigrams of two names, separators ignored."""
    ta, tb = _trigrams(a), _trigrams(b)
    if not ta or not tb:
        return 0.0
    return 2 * sum((ta & tb).values()) / (sum(ta.values()) + sum(tb.values()))


def _trigrams(name: str) -> Counter:
    letters = re.sub(r"[^a-z]", "", name.lower())
    return Counter(letters[i:i + 3] for i in range(len(letters) - 2))
