"""Fitting converted tensors to a target: one implementation for `--target` (a template
checkpoint or a model factory) and for `load_into` (a live model).

Three modes: "strict" (every name and shape, both ways), "shape" (keep what the target has
by name and shape), "drop" (leave out outputs matching `drop` globs, fit the rest strictly;
what the target then misses must match the globs too).

BatchNorm counters follow torch's own rule. `load_state_dict(strict=True)` fills in a missing
`P.num_batches_tracked` itself when the norm layer at `P` tracks running stats and the state
dict carries no version metadata (`_NormBase._load_from_state_dict`, torch 2.x): every plain
dict does, and so does every file mapspec writes. Such keys are not "missing" here either.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterable, Mapping

from ..ops.actions import format_shape
from ..errors import ConversionError, Span
from .hints import fold, glob_of, match_by_name, plural, replacements, skeleton

if TYPE_CHECKING:
    from ..core.tensorinfo import TensorInfo

MODES = ("strict", "shape", "drop")
COUNTER = "num_batches_tracked"


@dataclass(frozen=True)
class Target(Mapping):
    """What the output must fit: names, shapes, dtypes, and the keys torch fills in itself.
    It reads as the mapping of its infos, so code that wants only names and shapes takes it."""

    infos: Mapping[str, "TensorInfo"]
    filled: frozenset[str] = frozenset()
    names: str = ""  # which names these are, where a model's names differ by where they are read

    def __getitem__(self, key: str) -> "TensorInfo":
        return self.infos[key]

    def __iter__(self):
        return iter(self.infos)

    def __len__(self) -> int:
        return len(self.infos)


def torch_fills(keys: Iterable[str]) -> frozenset[str]:
    """The BatchNorm counters among `keys` that `load_state_dict` fills in when absent: a
    `P.num_batches_tracked` beside `P.running_mean` and `P.running_var` (a norm layer that
    tracks running stats; with `track_running_stats=False` all three are absent)."""
    keys = set(keys)
    out = set()
    for k in keys:
        if k == COUNTER or k.endswith("." + COUNTER):
            prefix = k[: -len(COUNTER)]
            if prefix + "running_mean" in keys and prefix + "running_var" in keys:
                out.add(k)
    return frozenset(out)


def as_target(target: "Target | Mapping[str, TensorInfo]") -> Target:
    if isinstance(target, Target):
        return target
    return Target(target, torch_fills(target))


def model_target(model: Any, names: str = "memory") -> Target:
    """A live torch module as a target; its norm layers say exactly which counters torch fills.

    `names="memory"`: the names of `model.state_dict()`, which `load_state_dict` takes (a
    misfit's message then says so where the files differ: `memory_names_note`).
    `names="file"`: for a transformers model, the names its checkpoint files use, which
    `save_pretrained` writes and `from_pretrained` reads; transformers 5 renames (and may
    merge) tensors between the two (`conversion_mapping.py`, `core_model_loading.py`): ViT's
    `vit.layers.N.attention.q_proj` in memory is `vit.encoder.layer.N.attention.attention.query`
    in a file. The tied tensors save_pretrained leaves out may be absent, as from_pretrained
    ties them back. Where the two kinds of names differ, the target says which it is."""
    from torch.nn.modules.batchnorm import _NormBase

    state = model.state_dict()
    infos = _infos(state)
    filled = {f"{name}.{COUNTER}" if name else COUNTER for name, m in model.named_modules()
              if isinstance(m, _NormBase) and m.track_running_stats and m.num_batches_tracked is not None}
    filled &= set(infos)
    files = transformers_file_names(model, state) if names == "file" else None
    if files is None:
        return Target(infos, frozenset(filled))
    file_infos, tied = files
    if set(file_infos) == set(infos):
        return Target(infos, frozenset(filled | tied))
    return Target(file_infos, torch_fills(file_infos) | tied,
                  "the names the model's checkpoint files use (as save_pretrained writes them; "
                  "its in-memory names differ)")


def memory_names_note(model: Any) -> str | None:
    """For a model whose checkpoint files name tensors otherwise than its state_dict() (a
    transformers 5 model): which names a live load compared, and what the files use. Only
    computed when a load does not fit (it runs transformers' conversion over the state)."""
    state = model.state_dict()
    files = transformers_file_names(model, state)
    if files is None or set(files[0]) == set(state):
        return None
    file_only = sorted(set(files[0]) - set(state))
    memory_only = sorted(set(state) - set(files[0]))
    return ("compared by the model's in-memory names (its state_dict(), which load_state_dict takes); its "
            f"checkpoint files use other names for {plural(len(memory_only), 'tensor')} (files: e.g. "
            f"{file_only[0]}; memory: e.g. {memory_only[0]}): a file saved with save_pretrained loads with "
            "from_pretrained")


def _infos(state: Mapping[str, Any]) -> dict[str, "TensorInfo"]:
    from ..core.dtypes import of_torch
    from ..core.tensorinfo import TensorInfo

    infos = {}
    for k, v in state.items():
        found = of_torch(str(v.dtype).removeprefix("torch."), tuple(v.shape))
        if found is None:
            from ..errors import UsageError

            raise UsageError(f"the model's {k} is a {v.dtype} tensor, which mapspec does not hold")
        infos[k] = TensorInfo(*found)
    return infos


def transformers_file_names(model: Any, state: Mapping[str, Any]
                            ) -> tuple[dict[str, "TensorInfo"], frozenset[str]] | None:
    """For a transformers model: the tensors its checkpoint files hold (name, shape, dtype),
    as `save_pretrained` makes them from the in-memory state (transformers' own
    `revert_weight_conversion`), and the tied ones among them that it leaves out. None for
    any other module, or a transformers without a conversion mapping (before 5: the names
    are the same)."""
    import sys

    if "transformers" not in sys.modules:  # a model of it would have imported it
        return None
    try:
        from transformers import PreTrainedModel
        from transformers.core_model_loading import revert_weight_conversion
        from transformers.modeling_utils import remove_tied_weights_from_state_dict
    except ImportError:
        return None
    if not isinstance(model, PreTrainedModel):
        return None
    full = revert_weight_conversion(model, dict(state))
    try:
        kept = revert_weight_conversion(model, remove_tied_weights_from_state_dict(dict(state), model))
    except (RuntimeError, ValueError):  # ties transformers itself cannot sort out: none may be left out
        kept = full
    return _infos(full), frozenset(set(full) - set(kept))


@dataclass(frozen=True)
class TargetReport:
    missing: tuple[tuple[str, "TensorInfo"], ...] = ()
    unexpected: tuple[tuple[str, "TensorInfo"], ...] = ()
    mismatched: tuple[tuple[str, "TensorInfo", "TensorInfo"], ...] = ()
    target_count: int = 0
    filled: tuple[str, ...] = ()  # target keys left out, which load_state_dict fills itself
    names: str = ""  # which of the target's names were compared, when that is not obvious

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    def lines(self) -> list[str]:
        out = [f"missing from the output: {k} {format_shape(i.shape)}" for k, i in self.missing]
        out += [f"not in the target: {k} {format_shape(i.shape)}" for k, i in self.unexpected]
        out += [f"shape mismatch: {k} produced {format_shape(p.shape)}, target {format_shape(t.shape)}"
                for k, p, t in self.mismatched]
        return out


def compare(produced: Mapping[str, "TensorInfo"], target: Target | Mapping) -> TargetReport:
    target = as_target(target)
    t = target.infos
    missing = tuple((k, i) for k, i in t.items() if k not in produced and k not in target.filled)
    filled = tuple(k for k in t if k not in produced and k in target.filled)
    unexpected = tuple((k, i) for k, i in produced.items() if k not in t)
    mismatched = tuple((k, i, t[k]) for k, i in produced.items() if k in t and tuple(t[k].shape) != tuple(i.shape))
    return TargetReport(missing, unexpected, mismatched, len(t), filled, target.names)


def fit(produced: Mapping[str, "TensorInfo"], target: Target | Mapping, mode: str = "strict",
        drop: Iterable[str] = (), origin: Mapping[str, Span] | None = None,
        api: bool = False, roles: Mapping[Span, str] | None = None) -> tuple[list[str], TargetReport]:
    """The outputs to keep and how they meet the target; raises ConversionError (with what
    each problem most likely should have been, and how to fix it) when they do not fit.
    `origin` names the rule of each output; `roles` marks the rules that are a "copy" or the
    catch-all ("otherwise"), whose fixes differ."""
    drop = tuple(drop)
    if mode not in MODES:
        raise ConversionError(f"unknown fit '{mode}' ({', '.join(MODES)})")
    if mode == "drop" and not drop:
        raise ConversionError("mode 'drop' needs drop patterns, e.g. drop=['fc.*']" if api else
                              "--fit drop needs --drop patterns, e.g. --drop 'fc.*'")
    hit = lambda k: any(fnmatch.fnmatchcase(k, p) for p in drop)  # noqa: E731
    kept = [k for k in produced if not (mode == "drop" and hit(k))]
    report = compare({k: produced[k] for k in kept}, target)
    if mode == "shape":
        bad = {k for k, _ in report.unexpected} | {k for k, _, _ in report.mismatched}
        return [k for k in kept if k not in bad], report
    problems = report if mode == "strict" else TargetReport(
        tuple((k, i) for k, i in report.missing if not hit(k)), report.unexpected, report.mismatched,
        report.target_count, report.filled, report.names)
    if not problems.ok:
        raise ConversionError("the output does not match the target" if not api else
                              "the checkpoint does not fit the model", explain(problems, origin or {}, api, roles or {}))
    return kept, report


# ------------------------------------------------------------------ explaining a misfit

ROLE_NAMES = {"copy": "copy", "otherwise": "catch-all"}


def _rule(origin: Mapping[str, Span], key: str, roles: Mapping[Span, str]) -> str:
    span = origin.get(key)
    return f" ({ROLE_NAMES.get(roles.get(span), 'rule')} at line {span.line})" if span else ""


def _listed(what: str, group: list, noun: str, rule: str = "") -> str:
    """One line for a group of (key, info) alike: the key itself, or a glob of them and an example."""
    k, i = group[0]
    if len(group) == 1:
        return f"{what}: {k} {format_shape(i.shape)}{rule}"
    return (f"{what}: {plural(len(group), noun)} like {glob_of([k for k, _ in group])}{rule} "
            f"(e.g. {k} {format_shape(i.shape)})")


def explain(report: TargetReport, origin: Mapping[str, Span], api: bool = False,
            roles: Mapping[Span, str] | None = None) -> list[str]:
    """Lines pairing each unexpected output with the missing target key it most likely
    should have been (same shape, most similar name), repeated findings folded into one.
    An output a copy wrote is fixed in the copy (a drop rule would not remove it); one the
    catch-all wrote, by a rule of its own for those keys."""
    roles = roles or {}
    out: list[str] = []
    if report.names:
        out.append(f"compared by {report.names}")
    pairs, undecided = match_by_name(report.unexpected, report.missing,
                                     lambda a, b: tuple(a.shape) == tuple(b.shape))
    paired_u = {i for i, _ in pairs}
    paired_m = {j for _, j in pairs}
    found = [(report.unexpected[i][0], report.missing[j][0], report.unexpected[i][1]) for i, j in pairs]
    for group in fold(found, lambda f: (origin.get(f[0]), replacements(f[0], f[1]))):
        produced, wanted, info = group[0]
        span = origin.get(produced)
        edits = (", ".join(f"'{a}' where the target has '{b}'" for a, b in replacements(produced, wanted))
                 or f"'{produced}' where the target has '{wanted}'")  # (they differ only in separators)
        who = f"the {ROLE_NAMES.get(roles.get(span), 'rule')} at line {span.line} writes" if span else "the output has"
        if len(group) == 1:
            out.append(f"not in the target: {produced} {format_shape(info.shape)}, most likely "
                       f"missing from the output: {wanted} (same shape): {who} {edits}")
        else:
            out.append(f"{plural(len(group), 'output')} like {glob_of([g[0] for g in group])} are not in the target; "
                       f"the target has {glob_of([g[1] for g in group])} with the same shapes: {who} {edits} "
                       f"(e.g. {produced} -> {wanted})")
    # same shapes, names that do not decide: named as ambiguous, never paired by a guess
    for group in fold(undecided, lambda g: (skeleton(" ".join(report.unexpected[i][0] for i in g[0])),
                                            skeleton(" ".join(report.missing[j][0] for j in g[1])))):
        us, ms = group[0]
        outs, cands = [report.unexpected[i][0] for i in us], [report.missing[j][0] for j in ms]
        where = f" (and {plural(len(group) - 1, 'group')} like it)" if len(group) > 1 else ""
        out.append(f"ambiguous: {_names(outs)} {'are' if len(outs) > 1 else 'is'} not in the target, which has "
                   f"{_names(cands)} of the same shape {format_shape(report.missing[ms[0]][1].shape)}{where}; "
                   "the names do not say which is which: write these rules from the models' code, not by shape")
        paired_u |= {i for g in group for i in g[0]}
        paired_m |= {j for g in group for j in g[1]}
    missing = [m for j, m in enumerate(report.missing) if j not in paired_m]
    for group in fold(missing, lambda m: skeleton(m[0])):
        out.append(_listed("missing from the output", group, "key"))
    unexpected = [u for i, u in enumerate(report.unexpected) if i not in paired_u]
    for group in fold(unexpected, lambda u: origin.get(u[0])):
        out.append(_listed("not in the target", group, "output", _rule(origin, group[0][0], roles)))
    for k, p, t in report.mismatched:
        out.append(f"shape mismatch: {k} produced {format_shape(p.shape)}, target {format_shape(t.shape)}"
                   f"{_rule(origin, k, roles)}")
    fixed_by = lambda k: roles.get(origin.get(k))  # noqa: E731
    out.append(_how_to_fix(report, [fixed_by(report.unexpected[i][0]) for i in paired_u],
                           missing, [(u, fixed_by(u[0])) for u in unexpected], api, origin))
    return out


def _names(names: list[str]) -> str:
    """A few names with what they share written once (`a.{x|y}.b`); many as a count and a glob."""
    if len(names) > 6:
        return f"{len(names)} keys like {glob_of(names)}"
    segs = [n.split(".") for n in names]
    p = 0
    while all(len(x) > p + 1 for x in segs) and len({x[p] for x in segs}) == 1:
        p += 1
    q = 0
    while all(len(x) > p + q + 1 for x in segs) and len({x[-1 - q] for x in segs}) == 1:
        q += 1
    mids = [".".join(x[p:len(x) - q]) for x in segs]
    return ".".join(segs[0][:p] + ["{" + "|".join(mids) + "}"] + (segs[0][len(segs[0]) - q:] if q else []))


def _how_to_fix(report: TargetReport, paired: list, missing, unexpected, api: bool, origin) -> str:
    tips = []
    if paired:
        tips.append("correct the rules named above" + (" (the catch-all's keys need a rule of their own)"
                                                        if "otherwise" in paired else ""))
    copies = sorted({origin[u[0]].line for u, role in unexpected if role == "copy"})
    if copies:
        tips.append(f"remove the copy at line{'s' if len(copies) > 1 else ''} {', '.join(map(str, copies))} "
                    "(what it writes is not in the target)")
    if any(role != "copy" for _, role in unexpected):
        tips.append("drop what the target does not hold (a 'drop' rule)")
    left_out = [k for k, _ in missing] + [k for k, _, _ in report.mismatched]
    if left_out:
        globs = sorted({glob_of([k]) if "." not in k else k.rsplit(".", 1)[0] + ".*" for k in left_out})
        if len(globs) > 3:
            globs = [glob_of(left_out)]
        if api:
            tips.append(f"leave them out: mode='drop', drop={globs!r} (or mode='shape')")
        else:
            tips.append("leave them out: --fit drop " + " ".join(f"--drop '{g}'" for g in globs)
                        + " (or --fit shape)")
    return "fix: " + "; ".join(tips)
