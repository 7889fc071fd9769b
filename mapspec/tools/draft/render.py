"""Spec text for a draft: header, tables, rules with their evidence, drops with their reason,
suggestions as comments. Keys and tables are written by the spec writer (`lang.text`); the
caller formats the whole with the project's formatter, which writes every statement again
through it."""

from __future__ import annotations

from collections import Counter

from ...lang import text as write
from .generalize import ALT, Rule
from .keys import Side
from .pairing import NO_PLACE, Pairing

INTS = "ijklmn"
VARS = "pquvwyz"

CANNOT_KNOW = """\
# What keys and shapes cannot reveal, this draft cannot know: a value-level permutation
# (the rotary q/k reordering between Llama layouts, a fused tensor whose parts come in another
# order than the target lists them, a square weight stored transposed) converts without an
# error and gives wrong numbers. Compare both models' outputs on one input before trusting it."""


class Tables:
    def __init__(self) -> None:
        self.by_entries: dict[tuple, str] = {}

    def name(self, entries: tuple[tuple[str, str], ...]) -> str:
        if entries not in self.by_entries:
            self.by_entries[entries] = f"t{len(self.by_entries) + 1}"
        return self.by_entries[entries]

    def text(self) -> list[str]:
        out = []
        for entries, name in self.by_entries.items():
            out += write.table_lines(name, [(write.key(k), write.key(v)) for k, v in entries]) + [""]
        return out


def rule_text(rule: Rule, side: Side, tables: Tables) -> str:
    names: dict[int, str] = {}
    var_names: dict[tuple, str] = {}
    src, tgt = [], []
    ints = iter(INTS)
    vars_ = iter(VARS)
    restricted: dict[int, tuple] = {}
    for p in rule.src:
        kind = p[0]
        if kind == "lit":
            src.append(write.quote(p[1]))
        elif kind == "glob":
            src.append("**")
        elif kind == "ns":
            spaces = sorted({side.namespace[k] for k in _source_keys(rule)})
            src.append(spaces[0] if len(spaces) == 1 else "{x:" + "|".join(spaces) + "}")
        elif kind == "int":
            n = names[p[1]] = next(ints)
            if p[2] is None:
                src.append(f"{{{n}:int}}")
            else:
                restricted[p[1]] = p[2]
                src.append(f"{{{n}:" + "|".join(map(str, p[2])) + "}")
        elif kind == "var":
            v = var_names[p] = next(vars_)
            entries, used = p[1], p[2]
            keys = [s for s, _ in entries]
            identity = all(s == t for s, t in entries)
            if all(ALT.match(s) for s in keys) and (not used or identity):
                src.append(f"{{{v}:" + "|".join(keys) + "}")
            else:
                table = tables.name(entries if used else tuple((s, s) for s in keys))
                src.append(f"{{{v} in {table}}}")
        elif kind == "rest":
            src.append("{r:**}" + ("" if p[1] is None else ".{p:" + "|".join(p[1]) + "}"))
    if rule.tgt is None:
        return "drop " + "".join(src)
    for p in rule.tgt:
        kind = p[0]
        if kind == "lit":
            tgt.append(write.quote(p[1]))
        elif kind == "var":
            v = var_names[p]
            identity = all(s == t for s, t in p[1])
            tgt.append(f"{{{v}}}" if identity and all(ALT.match(s) for s, _ in p[1]) else f"{{{tables.name(p[1])}[{v}]}}")
        elif kind == "fan":
            vals = p[1]
            tgt.append("{part:int}" if list(vals) == [str(i) for i in range(len(vals))]
                       else "{part:" + "|".join(vals) + "}")
        elif kind == "rest":
            leaves = next(x for x in rule.src if x[0] == "rest")[1]
            tgt.append("{r}" + ("" if leaves is None else ".{p}"))
        elif kind == "expr":
            tgt.append(_expr(p[1], names, restricted, tables))
    acts = "".join(f" then {a}" for a in rule.actions)
    return f"{''.join(src)} -> {''.join(tgt)}{acts}"


def _expr(sol: tuple, names: dict[int, str], restricted: dict[int, tuple], tables: Tables) -> str:
    op, i = sol[0], sol[1]
    n = names[i]
    if op == "table" or (i in restricted and not (op == "add" and sol[2] == 0)):
        if op == "table":
            mapping = dict(sol[2])
        else:
            mapping = {v: _apply(sol, v) for v in restricted[i]}
        return f"{{{tables.name(tuple((str(k), str(v)) for k, v in sorted(mapping.items())))}[{n}]}}"
    if op == "add":
        c = sol[2]
        return f"{{{n}}}" if c == 0 else f"{{{n}{'+' if c > 0 else '-'}{abs(c)}}}"
    m, c = sol[2], sol[3]
    body = f"{n}{op}{m}"
    return f"{{{body}}}" if c == 0 else f"{{{body}{'+' if c > 0 else '-'}{abs(c)}}}"


def _apply(sol: tuple, v: int) -> int:
    op = sol[0]
    if op == "add":
        return v + sol[2]
    return (v // sol[2] if op == "//" else v % sol[2]) + sol[3]


def _source_keys(rule: Rule) -> list[str]:
    if rule.tgt is None:
        return [k for k, _ in rule.pairs]
    return [k for p in rule.pairs for k in p.sources]


def rule_comment(rule: Rule) -> str:
    if rule.tgt is None:
        n = len(rule.pairs)
        line = f"# dropped ({n} tensor{'s' if n != 1 else ''}): {_drop_reasons(rule)}"
        if rule.why == NO_PLACE:  # weights the target model lacks: dropping them is not free
            line += ("\n# the target model has no place for them: unless they are zero (or folded into"
                     "\n# another tensor by hand), the converted model computes something else")
        return line
    weakest = min(rule.pairs, key=lambda p: p.evidence.strength).evidence
    n = sum(len(p.targets) for p in rule.pairs)
    kinds = Counter(p.evidence.kind for p in rule.pairs)
    mix = ", ".join(f"{k} x{c}" for k, c in kinds.most_common())
    return f"# {n} target tensor{'s' if n != 1 else ''} [{mix}]; weakest: {weakest}"


def _drop_reasons(rule: Rule) -> str:
    """A drop rule's reason: its kind, then what differs between its keys (their shapes, or
    one example of a name and shape)."""
    whys = Counter(why for _, why in rule.pairs)
    if set(whys) == {rule.why}:
        return rule.why
    if rule.why == NO_PLACE:
        shapes = Counter(why[len(NO_PLACE) + 2:] for _, why in rule.pairs)
        return f"{NO_PLACE} ({', '.join(f'{s} x{c}' if c > 1 else s for s, c in shapes.items())})"
    return f"{rule.why}; e.g. {rule.pairs[0][0]}: {rule.pairs[0][1]}"


def spec_text(pairing: Pairing, rules: list[Rule], source_name: str, target_name: str) -> str:
    S = pairing.source
    tables = Tables()
    body: list[str] = []
    renames = [r for r in rules if r.tgt is not None]
    drops = [r for r in rules if r.tgt is None]
    order = {k: i for i, k in enumerate(pairing.target.keys)}
    renames.sort(key=lambda r: min(order[t] for p in r.pairs for t in p.targets))
    for r in renames:
        body.append(rule_comment(r))
        body.append(rule_text(r, S, tables))
        body.append("")
    for r in drops:
        body.append(rule_comment(r))
        body.append(rule_text(r, S, tables))
        body.append("")
    if pairing.suggestions:
        body.append("# Undecided: these source tensors are dropped above; pick a target for each and")
        body.append("# replace their drop with a rule.")
        for s in pairing.suggestions:
            body.append(f"# ? {', '.join(s.sources)} -> {' | '.join(s.targets)}  ({s.why})")
    n_t = len(pairing.target.keys)
    made = sum(len(p.targets) for p in pairing.pairs)
    head = [
        f"# Draft by `mapspec draft`: {source_name} -> {target_name}.",
        f"# {made} of {n_t} target tensors paired, {len(pairing.dropped)} source tensors dropped, "
        f"{len(rules)} rules. Review every rule: its comment says how many tensors it covers and",
        "# its weakest evidence (`mapspec draft --explain` lists the evidence pair by pair).",
    ]
    if pairing.counters:
        head.append(f"# Not produced: {len(pairing.counters)} target counters (num_batches_tracked ...) no "
                    "source tensor holds;")
        head.append("# torch's load_state_dict fills them in; check with --fit drop --drop '*.num_batches_tracked'.")
    if pairing.unexplained:
        head.append(f"# INCOMPLETE: {len(pairing.unexplained)} target tensors are not explained by this draft.")
    if pairing.target_only:
        n = sum(len(keys) for _, keys in pairing.target_only)
        globs = [g for g, _ in pairing.target_only]
        head.append(f"# {n} of them no source tensor holds (the source model has no such parameter):")
        head += [f"#   {g}  ({len(keys)})" for g, keys in pairing.target_only]
        head.append("# The target model starts those from its own initialisation; if that is what you want, check")
        head.append("# with --fit drop " + " ".join(f"--drop '{g}'" for g in globs) + ".")
    head += CANNOT_KNOW.splitlines()
    head += ["mapspec 1", ""]
    return "\n".join(head + tables.text() + body).rstrip() + "\n"


def explain_lines(rules: list[Rule], side: Side) -> list[str]:
    tables = Tables()
    out = []
    for r in rules:
        out.append(rule_text(r, side, tables))
        if r.tgt is None:
            out += [f"    {k}: {why}" for k, why in r.pairs]
        else:
            for p in r.pairs:
                out.append(f"    {', '.join(p.sources)} -> {', '.join(p.targets)}: {p.evidence}")
    return out
