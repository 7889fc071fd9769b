"""The `mapspec` command: apply, check, explain, fmt.

Exit codes: 0 success, 1 a conversion problem, 2 bad input, 3 an internal error (a bug:
please report it), 128+N killed by signal N (SIGINT 130, SIGTERM 143). Errors are printed as
one `error:` line (spec errors as `path:line:col: error: ...` with the line and a caret); a
Python traceback is shown only under `--debug` or MAPSPEC_DEBUG=1."""

from __future__ import annotations

import json
import os
import sys
import traceback
from enum import Enum
from functools import wraps
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from . import actions as act
from .errors import Interrupted, MapspecError, SpecError, shorten
from .executor import apply as apply_spec, plan_for
from .formatter import format_text
from .parser import parse_spec, read_spec
from .checks import check_spec
from .plan import Plan

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Compile and apply checkpoint mapping specs.")
out = Console(highlight=False, soft_wrap=True, width=None if sys.stdout.isatty() else 200)
err = Console(stderr=True, highlight=False, soft_wrap=True)

PROGRESS_AFTER = 200  # steps: shorter runs finish before a bar is worth drawing


_DEBUG = False  # --debug, set for each invocation


def _debug() -> bool:
    return _DEBUG or os.environ.get("MAPSPEC_DEBUG", "") not in ("", "0")


@app.callback()
def _options(debug: bool = typer.Option(False, "--debug", help="Show a traceback for internal errors.")) -> None:
    global _DEBUG
    _DEBUG = debug


def _fail(message: str, code: int, exc: BaseException | None = None) -> typer.Exit:
    if exc is not None and _debug():
        err.print("".join(traceback.format_exception(exc)), markup=False, end="")
    err.print(shorten(message), markup=False)
    return typer.Exit(code)


def _guard(fn):
    """The one place an exception becomes an exit code and one `error:` line."""
    @wraps(fn)
    def run(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except MapspecError as exc:
            raise _fail(exc.render(), exc.exit_code, exc) from None
        except Interrupted as exc:
            raise _fail("error: interrupted; nothing was written", 128 + exc.signum, exc) from None
        except KeyboardInterrupt as exc:
            raise _fail("error: interrupted; nothing was written", 130, exc) from None
        except MemoryError as exc:  # bad input that asks for more memory than there is
            raise _fail("error: the input needs more memory than is available", 2, exc) from None
        except RecursionError as exc:
            raise _fail("error: the input nests too deeply", 2, exc) from None
        except OSError as exc:
            where = f"{exc.filename}: " if exc.filename else ""
            raise _fail(f"error: {where}{exc.strerror or exc}", 2, exc) from None
        except typer.Exit:
            raise
        except Exception as exc:  # a bug: say so briefly, traceback on request
            hint = "" if _debug() else "; rerun with --debug for the traceback"
            raise _fail(f"error: internal error ({type(exc).__name__}: {str(exc)[:200]}); please report it{hint}",
                        3, exc) from None
    return run


@app.command()
@_guard
def apply(
    spec: Path = typer.Argument(..., help="The .map spec."),
    checkpoint: Path = typer.Argument(..., help="The checkpoint to convert."),
    output: Path = typer.Option(..., "-o", "--output", help="Where to write; the format follows the suffix."),
    target: Optional[str] = typer.Option(None, "--target", help="A checkpoint with the target keys and shapes, "
                                         "or a model factory module:callable(args)."),
    to: Optional[str] = typer.Option(None, "--to", help="Output format: safetensors, pt, npz, mxnet."),
    select: Optional[str] = typer.Option(None, "--select", help="Convert only this sub-tree (e.g. model, ema)."),
    epoch: Optional[int] = typer.Option(None, "--epoch", help="MXNet: CHECKPOINT is a prefix; read PREFIX-EPOCH.params."),
    fit: str = typer.Option("strict", "--fit", help="With --target: strict, shape (keep what fits by name and "
                            "shape) or drop (leave out --drop patterns, the rest strictly)."),
    drop: list[str] = typer.Option([], "--drop", help="A glob of output names to leave out, e.g. 'fc.*' (repeatable)."),
    non_strict: bool = typer.Option(False, "--non-strict", help="Leave unmatched keys out instead of failing."),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing output."),
) -> None:
    """Convert CHECKPOINT with SPEC into OUTPUT."""
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=err, transient=True, disable=not err.is_terminal) as bar:
        task = None

        def progress(i: int, n: int) -> None:
            nonlocal task
            if n < PROGRESS_AFTER:
                return
            if task is None:
                task = bar.add_task("converting", total=n)
            bar.update(task, completed=i)

        report = apply_spec(spec, checkpoint, output, target=target, to=to, select=select,
                            epoch=epoch, strict=not non_strict, fit=fit, drop=tuple(drop), force=force,
                            progress=progress)
    if report.plan.unmatched:
        err.print(f"warning: {len(report.plan.unmatched)} unmatched keys left out: "
                  + ", ".join(report.plan.unmatched[:5]) + (" ..." if len(report.plan.unmatched) > 5 else ""),
                  markup=False)
    r = report.plan.target_report
    if r is not None and fit != "strict":
        for line in r.lines():
            err.print(f"note: {line}", markup=False)
    out.print(report.summary(), markup=False)


@app.command()
@_guard
def check(
    spec: Path = typer.Argument(..., help="The .map spec."),
    checkpoint: Optional[Path] = typer.Argument(None, help="Compile against this checkpoint's keys."),
    target: Optional[str] = typer.Option(None, "--target", help="A checkpoint with the target keys and shapes, "
                                         "or a model factory module:callable(args)."),
    select: Optional[str] = typer.Option(None, "--select"),
    epoch: Optional[int] = typer.Option(None, "--epoch"),
    fit: str = typer.Option("strict", "--fit", help="With --target: strict, shape or drop (see apply)."),
    drop: list[str] = typer.Option([], "--drop", help="A glob of output names to leave out (repeatable)."),
    non_strict: bool = typer.Option(False, "--non-strict"),
) -> None:
    """Compile only; exit 0 when SPEC (and its plan for CHECKPOINT) is clean."""
    parsed = parse_spec(spec)
    check_spec(parsed)
    if checkpoint is None:
        if target is not None:
            raise SpecError("--target needs a CHECKPOINT to compile against")
        out.print(f"{spec}: ok ({len(parsed.rules)} rules, {len(parsed.tables)} tables)", markup=False)
        return
    plan = plan_for(parsed, checkpoint, target=target, select=select, epoch=epoch, strict=not non_strict,
                    fit=fit, drop=tuple(drop))
    line = f"{spec}: ok: {len(plan.steps)} outputs from {plan.source_count} tensors, {len(plan.dropped)} dropped"
    if plan.unmatched:
        line += f", {len(plan.unmatched)} unmatched"
    if target is not None:
        r = plan.target_report
        line += (", matches the target" if r.ok else
                 f", fits the target ({len(plan.steps)}/{r.target_count}; {len(r.missing)} missing, "
                 f"{len(r.mismatched)} shape-mismatched, {len(r.unexpected)} unexpected)")
    out.print(line, markup=False)


class ExplainFormat(str, Enum):
    table = "table"
    markdown = "markdown"
    json = "json"


@app.command()
@_guard
def explain(
    spec: Path = typer.Argument(...),
    checkpoint: Path = typer.Argument(...),
    fmt: ExplainFormat = typer.Option(ExplainFormat.table, "--format"),
    target: Optional[str] = typer.Option(None, "--target"),
    select: Optional[str] = typer.Option(None, "--select"),
    epoch: Optional[int] = typer.Option(None, "--epoch"),
    fit: str = typer.Option("strict", "--fit"),
    drop: list[str] = typer.Option([], "--drop"),
    non_strict: bool = typer.Option(False, "--non-strict"),
) -> None:
    """Show the plan: one row per output tensor."""
    plan = plan_for(spec, checkpoint, target=target, select=select, epoch=epoch, strict=not non_strict,
                    fit=fit, drop=tuple(drop))
    if fmt is ExplainFormat.json:
        sys.stdout.write(json.dumps(plan.to_json(), indent=2) + "\n")
    elif fmt is ExplainFormat.markdown:
        sys.stdout.write(explain_markdown(plan))
    else:
        out.print(explain_table(plan))


def _row(step) -> list[str]:
    return [
        ", ".join(step.inputs),
        step.output,
        " ".join(_action_text(a) for a in step.actions) or "-",
        " ".join(act.format_shape(i.shape) for i in step.input_infos) + " -> " + act.format_shape(step.info.shape),
        "/".join(sorted({i.dtype for i in step.input_infos})) + " -> " + step.info.dtype,
    ]


def _action_text(a) -> str:
    p = a.params
    if a.name in ("view", "reshape", "squeeze", "unsqueeze"):
        return f"{a.name}{act.format_shape(tuple(p['shape']))}"
    if a.name == "cast":
        return f"cast({p['to']})"
    if a.name in ("split", "chunk"):
        return f"{a.name}[{p['index']}]"
    return f"{a.name}({', '.join(str(v) for v in p.values())})"


HEAD = ["source", "target", "actions", "shape", "dtype"]


def explain_table(plan: Plan) -> Table:
    t = Table(title=f"{Path(plan.spec_file).name}: {len(plan.steps)} outputs, {len(plan.dropped)} dropped")
    for h in HEAD:
        t.add_column(h, overflow="fold")
    for s in plan.steps:
        t.add_row(*_row(s))
    return t


def explain_markdown(plan: Plan) -> str:
    lines = ["| " + " | ".join(HEAD) + " |", "|" + "---|" * len(HEAD)]
    for s in plan.steps:
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in _row(s)) + " |")
    if plan.dropped:
        lines.append("")
        lines.append(f"Dropped: {', '.join(k for k, _ in plan.dropped)}")
    return "\n".join(lines) + "\n"


class InspectFormat(str, Enum):
    tree = "tree"
    json = "json"


@app.command()
@_guard
def inspect(
    checkpoint: Path = typer.Argument(..., help="Any supported checkpoint."),
    fmt: InspectFormat = typer.Option(InspectFormat.tree, "--format"),
    epoch: Optional[int] = typer.Option(None, "--epoch"),
) -> None:
    """Show what a checkpoint holds, without running any code from it."""
    from .inspect import inspect_checkpoint

    info = inspect_checkpoint(checkpoint, epoch)
    if fmt is InspectFormat.json:
        sys.stdout.write(json.dumps(info, indent=2) + "\n")
        return
    from rich.tree import Tree

    t = info["tensors"]
    from rich.markup import escape

    root = Tree(escape(f"{info['file']} [{info['format']}]: {_tensor_line(t)}"))
    _tree(root, info["content"])
    if info.get("auto_select"):
        root.add(f"(apply converts '{info['auto_select']}' unless --select says otherwise)")
    out.print(root, crop=False, overflow="fold")


def _tensor_line(t: dict) -> str:
    dts = ", ".join(f"{k} x{v}" for k, v in t["dtypes"].items())
    return f"{t['count']} tensors, {t['elements']:,} elements, {t['bytes']:,} bytes ({dts})" if t["count"] else "no tensors"


def _tree(node, d: dict) -> None:
    from rich.markup import escape

    for key, value in (d.get("entries") or {}).items():
        kind = value["type"]
        if kind in ("dict",):
            child = node.add(escape(f"{key}: dict"))
            _tree(child, value)
        elif kind == "value":
            node.add(escape(f"{key}: {value['value']!r}"))
        elif kind == "module":
            node.add(escape(f"{key}: {value['class']} ({_tensor_line(value)})"))
        elif kind == "optimizer":
            groups = "; ".join(", ".join(f"{k}={v}" for k, v in list(g.items())[:6]) for g in value["param_groups"])
            node.add(escape(f"{key}: optimizer, {value['state_entries']} state entries, "
                            f"{len(value['param_groups'])} param groups ({groups}), {_tensor_line(value)}"))
        elif kind == "object":
            child = node.add(escape(f"{key}: {value['class']}"))
            for f, v in value["fields"].items():
                child.add(escape(f"{f}: {v!r}"))
        elif kind == "tensor":
            node.add(escape(f"{key}: tensor {value['shape']} {value['dtype']}"))
        else:
            node.add(escape(f"{key}: {kind} ({_tensor_line(value)})" if "count" in value else f"{key}: {kind}"))


@app.command()
@_guard
def fmt(
    specs: list[Path] = typer.Argument(..., help="Spec files to format in place."),
    check: bool = typer.Option(False, "--check", help="Change nothing; exit 1 if a file would change."),
) -> None:
    """Rewrite specs in canonical form."""
    changed = []
    for path in specs:
        try:
            text = read_spec(path)
        except (OSError, UnicodeDecodeError) as exc:
            raise SpecError(f"cannot read spec {path}: {getattr(exc, 'strerror', None) or exc}") from None
        new = format_text(text, str(path))
        if new != text:
            changed.append(path)
            if not check:
                path.write_text(new, encoding="utf-8")
    for path in changed:
        out.print(f"{'would reformat' if check else 'reformatted'} {path}", markup=False)
    if check and changed:
        raise typer.Exit(1)


def main() -> None:
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
