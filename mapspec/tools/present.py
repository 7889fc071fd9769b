"""Everything mapspec shows a person, as text: plans (by rule or per tensor; plain table,
markdown, JSON), reports, warnings, checkpoint trees and key lists, spec diffs.

The CLI prints these strings and the Python API returns them (`Report.summary`), so a plan
reads the same wherever it is looked at. Tables are formatted here with plain string
operations, not rich tables: a 100,000-row plan renders in well under a second."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable, Mapping, Sequence

from ..ops.actions import REGISTRY, format_shape
from ..errors import Span
from ..compile.hints import fold, glob_of, plural, skeleton
from ..compile.plan import PlannedAction, Plan, Step, TensorInfo, copy_stand_ins
from ..formats import registry
from ..run import rows
from ..lang.rules import DropRule, Spec
from ..lang.text import rule_text

if TYPE_CHECKING:
    from .diff import PlanDiff


# ------------------------------------------------------------------ sizes, tables

def size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)  # pragma: no cover


def text_table(head: Sequence[str], rows: Iterable[Sequence[str]], title: str | None = None) -> str:
    """Columns padded to their widest cell; the last column is never padded or cut."""
    rows = list(rows)
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(head)]
    # one format string for every row: "{:<w0}  {:<w1}  ...  {}"
    row = "  ".join(f"{{:<{w}}}" for w in widths[:-1]) + ("  " if len(widths) > 1 else "") + "{}"
    lines = [title] if title else []
    lines.append(row.format(*head).rstrip())
    lines.append("  ".join("-" * w for w in widths))
    lines.extend(row.format(*r).rstrip() for r in rows)
    return "\n".join(lines) + "\n"


def markdown_table(head: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    cell = lambda c: str(c).replace("|", "\\|") or " "  # noqa: E731
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines.extend("| " + " | ".join(cell(c) for c in r) + " |" for r in rows)
    return "\n".join(lines) + "\n"


def where(span: Span) -> str:
    return f"{Path(span.file).name}:{span.line}"


# ------------------------------------------------------------------ actions as planned
# (rules as spec text: `lang.text.rule_text`, which the plan's JSON uses too)

def planned_text(a: PlannedAction, index: bool = True) -> str:
    """A planned action as explain shows it (`split[0]` names the piece a step takes;
    `index=False`: the split itself)."""
    return REGISTRY[a.name].display(a, index)


def _shapes_text(shapes: Sequence[tuple[int, ...]]) -> str:
    """`(16, 16) (8, 16) (8, 16)`; a run of one shape as `3 x (16, 16)`."""
    runs: list[list] = []
    for shape in shapes:
        if runs and runs[-1][0] == shape:
            runs[-1][1] += 1
        else:
            runs.append([shape, 1])
    return " ".join(format_shape(sh) if n == 1 else f"{n} x {format_shape(sh)}" for sh, n in runs)


def change_text(steps: Sequence[Step]) -> str:
    """What the steps from one set of inputs (one output, or the pieces a split makes) change
    besides names: shapes and dtypes that differ, and the actions where they change anything.
    A rotary permutation (view, transpose, reshape back) keeps the shape but moves every
    value: it is shown too."""
    first, parts = steps[0], []
    shapes_in = [i.shape for i in first.input_infos]
    shapes_out = [s.info.shape for s in steps]
    if set(shapes_in) != set(shapes_out) or len(shapes_in) != len(shapes_out):
        parts.append(_shapes_text(shapes_in) + " -> " + _shapes_text(shapes_out))
    dtypes_in = {i.dtype for i in first.input_infos}
    dtypes_out = {s.info.dtype for s in steps}
    if dtypes_in != dtypes_out:
        parts.append("/".join(sorted(dtypes_in)) + " -> " + "/".join(sorted(dtypes_out)))
    if first.actions and (parts or any(REGISTRY[a.name].reorders for a in first.actions)):
        parts.append(("by " if parts else "values reordered by ")
                     + " ".join(planned_text(a, index=False) for a in first.actions))
    return "; ".join(parts)


# ------------------------------------------------------------------ explain

RULE_HEAD = ["line", "rule", "keys", "example", "changes"]
TENSOR_HEAD = ["source", "target", "rule", "actions", "shape", "dtype"]


def rule_rows(plan: Plan, spec: Spec, origin: Callable[[Span], Span] = lambda span: span) -> list[list[str]]:
    """One row per rule (in spec order): how many keys it took, one example, what changes.
    `origin` gives the location a row points at (a derived inverse's rule: its forward rule)."""
    by_rule: dict[Span, list[Step]] = {}
    for s in plan.steps:
        by_rule.setdefault(s.rule, []).append(s)
    dropped: dict[Span, list[str]] = {}
    for k, span in plan.dropped:
        dropped.setdefault(span, []).append(k)
    stand_ins = copy_stand_ins(spec, plan.steps)
    rows = []
    for rule in spec.rules:
        text = rule_text(rule)
        steps = by_rule.get(rule.span, [])
        if isinstance(rule, DropRule):
            keys = dropped.get(rule.span, [])
            rows.append([where(origin(rule.span)), text, str(len(keys)), (keys[0] + " (dropped)") if keys else
                         "matches nothing", ""])
            continue
        if not steps:
            if rule.span in stand_ins:
                nothing = f"absent here; the copy at line {stand_ins[rule.span].line} writes its target"
            elif getattr(rule, "if_absent", False):
                nothing = "yields: other rules write every target it names"
            elif getattr(rule, "optional", False):
                nothing = "optional: matches nothing here"
            else:
                nothing = "matches nothing"
            rows.append([where(origin(rule.span)), text, "0", nothing, ""])
            continue
        sources = len({k for s in steps for k in s.inputs})
        count = str(sources) if sources == len(steps) else f"{sources} -> {len(steps)}"
        pieces = fold(steps, lambda s: s.inputs)  # one output each, or the pieces of a split
        changes = Counter(change_text(g) for g in pieces)
        change = changes.most_common(1)[0][0]
        if len(changes) > 1:
            change = (change + "; " if change else "") + f"and {plural(len(changes) - 1, 'other change')}"
        example = f"{_names(pieces[0][0].inputs, 'keys')} -> {_names([s.output for s in pieces[0]], 'outputs')}"
        rows.append([where(origin(rule.span)), text, count, example, change])
    if plan.unmatched:
        rows.append(["", "(no rule: left out by --non-strict)", str(len(plan.unmatched)), plan.unmatched[0], ""])
    return rows


def _names(names: Sequence[str], what: str) -> str:
    """Up to two names as they are; more as one glob with their count."""
    return ", ".join(names) if len(names) <= 2 else f"{glob_of(names)} ({len(names)} {what})"


def tensor_rows(plan: Plan, origin: Callable[[Span], Span] = lambda span: span) -> list[list[str]]:
    shapes: dict = {}  # the same few shapes and dtypes recur in every large plan
    dts: dict = {}

    def shape_text(s: Step) -> str:
        key = (tuple(i.shape for i in s.input_infos), s.info.shape)
        text = shapes.get(key)
        if text is None:
            text = shapes[key] = " ".join(map(format_shape, key[0])) + " -> " + format_shape(key[1])
        return text

    def dtype_text(s: Step) -> str:
        key = (tuple(i.dtype for i in s.input_infos), s.info.dtype)
        text = dts.get(key)
        if text is None:
            text = dts[key] = "/".join(sorted(set(key[0]))) + " -> " + key[1]
        return text

    return [[", ".join(s.inputs), s.output, str(origin(s.rule).line),
             " ".join(planned_text(a) for a in s.actions) if s.actions else "-", shape_text(s), dtype_text(s)]
            for s in plan.steps]


def plan_title(plan: Plan) -> str:
    extra = [f"{len(plan.dropped)} dropped"]
    if plan.unmatched:
        extra.append(f"{len(plan.unmatched)} unmatched")
    return (f"{Path(plan.spec_file).name}: {len(plan.steps)} outputs from {plan.source_count} "
            f"source tensors ({', '.join(extra)})")


def dropped_lines(plan: Plan) -> list[str]:
    """Dropped keys folded per rule: `line 9 drop **.num_batches_tracked: 53 keys like ...`."""
    out = []
    for group in fold(plan.dropped, lambda d: d[1]):
        keys = [k for k, _ in group]
        like = keys[0] if len(keys) == 1 else f"like {glob_of(keys)} (e.g. {keys[0]})"
        out.append(f"{where(group[0][1])}: {plural(len(keys), 'key')} {like}")
    return out


def plan_notes(plan: Plan) -> list[str]:
    """What a plan depends on besides the keys: parameter values, the catch-all rule."""
    notes = []
    if plan.params:
        notes.append("parameters: " + ", ".join(f"{b.name}={b.value} ({b.origin})" for b in plan.params))
    if plan.fallback is not None:
        n = sum(1 for s in plan.steps if s.rule == plan.fallback)
        n += sum(1 for _, span in plan.dropped if span == plan.fallback)
        notes.append(f"otherwise (line {plan.fallback.line}) caught {plural(n, 'key')}")
    return notes


def explain(plan: Plan, spec: Spec, fmt: str = "table", per_tensor: bool = False,
            origin: Callable[[Span], Span] = lambda span: span, notes: Sequence[str] = ()) -> str:
    """The plan for review: by rule (default) or per tensor; as a table, markdown or JSON.
    For a derived inverse, `origin` points each row at its forward rule and `notes` say what
    it was derived with."""
    if fmt == "json":
        return json.dumps(plan.to_json(), indent=2) + "\n"
    head, rows = (TENSOR_HEAD, tensor_rows(plan, origin)) if per_tensor else (RULE_HEAD, rule_rows(plan, spec, origin))
    notes = list(notes) + plan_notes(plan)
    if fmt == "markdown":
        if not per_tensor:
            rows = [[r[0], f"`{r[1]}`", r[2], f"`{r[3]}`" if "->" in r[3] or "(dropped)" in r[3] else r[3], r[4]]
                    for r in rows]
        text = f"**{plan_title(plan)}**\n\n" + markdown_table(head, rows)
        if per_tensor and plan.dropped:
            text += "\nDropped:\n\n" + "".join(f"- {line}\n" for line in dropped_lines(plan))
        return text + "".join(f"\n{n[0].upper()}{n[1:]}\n" for n in notes)
    text = text_table(head, rows, plan_title(plan))
    if per_tensor and plan.dropped:
        text += "dropped:\n" + "".join(f"  {line}\n" for line in dropped_lines(plan))
    return text + "".join(f"{n}\n" for n in notes)


# ------------------------------------------------------------------ errors, reports, warnings

def error_text(exc: BaseException) -> str:
    """An error as shown to a person: one `error:` line (spec errors with the line and a
    caret, conversion errors with their details below), printable whatever it quotes."""
    from ..core.paths import reason
    from ..core.quoting import printable, shown_path
    from ..errors import MapspecError, shorten

    if isinstance(exc, MapspecError):
        return exc.render()
    if isinstance(exc, OSError):  # no empty `error: : ...` when the error names no file
        return shorten(f"error: {shown_path(exc.filename)}: {reason(exc)}" if exc.filename else
                       f"error: {printable(reason(exc) if exc.errno else str(exc))}")
    return shorten(f"error: {printable(str(exc))}")


def report_summary(report) -> str:
    """The one-line summary of a conversion (`mapspec.api.Report`)."""
    p = report.plan
    where_to = f"-> {report.output} [{report.format}, {size(report.bytes)}]"
    if p.target_report is not None:  # loading into a target: count against what it holds
        r = p.target_report
        notes = [f"{len(r.missing)} missing", f"{len(r.unexpected)} unexpected", f"{len(r.mismatched)} shape-mismatched"]
        if r.filled:
            notes.append(f"{len(r.filled)} BatchNorm counters left to load_state_dict")
        return (f"Transferred {len(p.steps)}/{r.target_count} target tensors from {p.source_count} source tensors "
                f"({', '.join(notes)}) {where_to}")
    used = p.source_used()
    extra = [f"{len(p.dropped)} dropped"]
    if p.copied:
        extra.append(f"{len(p.copied)} copied")
    if report.selected:
        extra.append(f"selected '{report.selected}'")
    if p.unmatched:
        extra.append(f"{len(p.unmatched)} unmatched")
    into = f" into {plural(len(p.steps), 'output')}" if len(p.steps) != used else ""
    return f"Transferred {used}/{p.source_count} tensors{into} ({', '.join(extra)}) {where_to}"


def plan_warnings(plan: Plan, spec: Spec, origin: Callable[[Span], Span] | None = None) -> list[str]:
    """Rules that matched nothing (at their location) and keys left out by --non-strict. With
    `origin`, `spec` is a derived inverse: each warning is at the forward rule it undoes."""
    spans = {r.span for r in spec.rules}
    if origin is None:
        out = [f"{u.rule}: warning: this rule matches no key of this checkpoint ({u.text}): if it "
               "should, correct its pattern (`mapspec inspect --keys` lists the keys), else remove it; "
               "--strict-rules makes this an error"
               for u in plan.unused if u.rule in spans]
    else:
        out = [f"{origin(u.rule)}: warning: the inverse of this rule matches no key of this checkpoint ({u.text}): "
               "nothing is written back through it; --strict-rules makes this an error"
               for u in plan.unused if u.rule in spans]
    if plan.unmatched:
        n = len(plan.unmatched)
        out.append(f"warning: {plural(n, 'unmatched key')} left out: " + ", ".join(plan.unmatched[:5])
                   + (" ..." if n > 5 else ""))
    return out


def peak_line(plan: Plan) -> str:
    """What `apply` is expected to hold at most, before it runs (the plan knows every size).
    Steps that cast or (de)quantize row by row run in slices where the source is a local
    file and the output format writes rows: then a few slices, not the whole step."""
    whole, step = plan.peak_step()
    sliced, at = plan.peak_step(rows.held)
    where = f" (largest step: {step.output})" if step is not None else ""
    if sliced >= whole:
        return f"expected peak memory: {size(whole)} of tensors{where} + the interpreter"
    into = " or ".join(f.name for f in registry.formats() if registry.writes_rows(f))
    return (f"expected peak memory: {size(sliced)} of tensors (largest step: {at.output}, in row slices) + the "
            f"interpreter; {size(whole)}{where} where steps run whole (output other than {into}, or a remote source)")


def peak_bytes(plan: Plan) -> dict[str, int]:
    """`peak_line`'s figures for JSON: whole steps, and steps in row slices."""
    return {"expected_peak_bytes": plan.peak_step()[0], "expected_peak_bytes_in_slices": plan.peak_step(rows.held)[0]}


def config_line(plan: Plan) -> str | None:
    """What a model directory's config.json becomes in an output directory, if it changes."""
    patch = plan.config_patch()
    if not patch:
        return None
    return "config.json (model directory in and out): " + "; ".join(patch.describe())


def check_line(spec_path: Path | str, plan: Plan, with_target: bool) -> str:
    line = (f"{spec_path}: ok: {len(plan.steps)} outputs from {plan.source_count} tensors, "
            f"{len(plan.dropped)} dropped")
    if plan.unmatched:
        line += f", {len(plan.unmatched)} unmatched"
    if plan.unused:
        line += f", {plural(len(plan.unused), 'rule')} matching nothing"
    if with_target:
        r = plan.target_report
        filled = (f" ({len(r.filled)} BatchNorm counters left out, which load_state_dict fills in)"
                  if r.filled else "")
        line += (", matches the target" + filled if r.ok else
                 f", fits the target ({len(plan.steps)}/{r.target_count}; {len(r.missing)} missing, "
                 f"{len(r.mismatched)} shape-mismatched, {len(r.unexpected)} unexpected)")
    return line


# ------------------------------------------------------------------ inspect

def keys_text(infos: Mapping[str, TensorInfo], fmt: str = "text") -> str:
    """Every key, one per line: name, shape, dtype (tab-separated); or a JSON list."""
    if fmt == "json":
        return json.dumps([{"name": k, "shape": list(i.shape), "dtype": i.dtype} for k, i in infos.items()],
                          indent=1) + "\n"
    return "".join(f"{k}\t{format_shape(i.shape)}\t{i.dtype}\n" for k, i in infos.items())


def tensor_line(t: dict) -> str:
    dts = ", ".join(f"{k} x{v}" for k, v in t["dtypes"].items())
    return f"{t['count']} tensors, {t['elements']:,} elements, {t['bytes']:,} bytes ({dts})" if t["count"] else "no tensors"


def inspect_tree(info: dict) -> str:
    """The checkpoint's content as an indented tree; nothing cut, hidden entries counted."""
    lines = [f"{info['file']} [{info['format']}]: {tensor_line(info['tensors'])}"]
    if info.get("shards"):
        lines.append(f"  {len(info['shards'])} shards")
        lines += [f"    {sh['file']}: {sh['tensors']} tensors, {sh['bytes']:,} bytes" for sh in info["shards"]]
    _tree(lines, info["content"], "")
    if info.get("chunks"):  # a distributed checkpoint: how each tensor is cut over its files
        lines.append("chunks:")
        lines += [f"  {k}: {v}" for k, v in info["chunks"].items()]
    if info.get("auto_select"):
        lines.append(f"(apply converts '{info['auto_select']}' unless --select says otherwise)")
    if info.get("provenance"):
        lines.append("written by mapspec:")
        lines += [f"  {k}: {json.dumps(v, sort_keys=True) if isinstance(v, dict) else v}"
                  for k, v in info["provenance"].items()]
    lines.append("(`mapspec inspect --keys` lists every tensor: name, shape, dtype)")
    return "\n".join(lines) + "\n"


def _tree(lines: list[str], d: dict, indent: str) -> None:
    items = list((d.get("entries") or {}).items())
    more = d.get("more", 0)
    for n, (key, value) in enumerate(items):
        last = n == len(items) - 1 and not more
        branch, child = ("└── ", "    ") if last else ("├── ", "│   ")
        kind = value["type"]
        if kind == "dict":
            lines.append(f"{indent}{branch}{key}: dict" + (f" ({value['length']} entries)" if "length" in value else ""))
            _tree(lines, value, indent + child)
        elif kind == "value":
            lines.append(f"{indent}{branch}{key}: {value['value']!r}")
        elif kind == "module":
            lines.append(f"{indent}{branch}{key}: {value['class']} ({tensor_line(value)})")
        elif kind == "optimizer":
            groups = "; ".join(", ".join(f"{k}={v}" for k, v in g.items()) for g in value["param_groups"])
            lines.append(f"{indent}{branch}{key}: optimizer, {value['state_entries']} state entries, "
                         f"{len(value['param_groups'])} param groups ({groups}), {tensor_line(value)}")
        elif kind == "object":
            lines.append(f"{indent}{branch}{key}: {value['class']}")
            fields = {"entries": {f: {"type": "value", "value": v} for f, v in value["fields"].items()},
                      "more": value.get("more", 0)}
            _tree(lines, fields, indent + child)
        elif kind == "tensor":
            lines.append(f"{indent}{branch}{key}: tensor {value['shape']} {value['dtype']}")
        else:
            lines.append(f"{indent}{branch}{key}: {kind} ({tensor_line(value)})" if "count" in value
                         else f"{indent}{branch}{key}: {kind}")
    if more:
        lines.append(f"{indent}└── ... {more} more")


# ------------------------------------------------------------------ diff

def diff_text(d: "PlanDiff", fmt: str = "text") -> str:
    """Which outputs change between two versions of a spec, repeated changes folded."""
    if fmt == "json":
        return json.dumps(d.to_json(), indent=2) + "\n"
    also = ([f"{plural(len(d.rules), 'rule change')} no output shows"] if d.rules else []) + (
        [f"{plural(len(d.params), 'parameter')} changed"] if d.params else [])
    lines = [f"{d.old_name} -> {d.new_name}: {plural(len(d.changes), 'output change')} "
             f"({d.unchanged} outputs unchanged)" + "".join(f"; {a}" for a in also)]
    for group in fold(d.changes, lambda c: (c.kind, skeleton(c.old or ""), skeleton(c.new or ""), c.what)):
        c = group[0]
        if len(group) == 1:
            lines.append(f"  {c.line()}")
        else:
            olds = [g.old for g in group if g.old]
            news = [g.new for g in group if g.new]
            ex = c.line()
            name = glob_of(news) if c.kind == "changed" else " -> ".join(
                x for x in (glob_of(olds) if olds else "", glob_of(news) if news else "") if x)
            lines.append(f"  {c.kind} {len(group)} outputs like {name} (e.g. {ex})")
    lines += [f"  {c.line()}" for c in (*d.rules, *d.params)]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------ verification

def verification_text(result, title: str, worst: int = 10) -> str:
    """`mapspec verify`: a table per rule, the worst tensors, and the verdict line."""
    rows = []
    for rule, checks in result.by_rule():
        big = max(c.max_abs for c in checks)
        rows.append([where(rule) if rule else "-", str(len(checks)), f"{sum(c.nbytes for c in checks):,}",
                     f"{sum(c.exact for c in checks)}/{len(checks)}", "0" if big == 0 else f"{big:.6g}"])
    lines = [text_table(["rule", "tensors", "bytes", "exact", "max abs diff"], rows, title)]
    for c in result.worst(worst):
        at = f" ({where(c.rule)})" if c.rule else ""
        detail = c.note or f"max abs diff {c.max_abs:.6g}"
        lines.append(f"{'within tolerance' if c.ok else 'DIFFERS'}: {c.name}{at}: {detail}\n")
    lines += [f"MISSING: {k} is in the reference but not produced\n" for k in result.missing[:worst]]
    lines += [f"EXTRA: {k} is produced but not in the reference\n" for k in result.extra[:worst]]
    lines += [f"not restored: {k} (dropped by {where(span)}, marked `reverse none`)\n"
              for k, span in result.not_restored[:worst]]
    if len(result.not_restored) > worst:
        lines.append(f"not restored: {len(result.not_restored) - worst} more\n")
    if result.ok:
        n = len(result.checks)
        exact = sum(c.exact for c in result.checks)
        lines.append(f"ok: {n} tensors, {exact} bit-exact" + (f", {n - exact} within tolerance" if exact < n else "")
                     + (f", {len(result.not_restored)} not restored by design" if result.not_restored else "")
                     + "\n")
    return "".join(lines)
