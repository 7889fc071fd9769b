"""The `mapspec` command: a thin layer over the library. Each command parses its options,
calls the library and prints what `render` makes of the result.

Exit codes: 0 success, 1 a conversion problem, 2 bad input, 3 an internal error (a bug:
please report it), 128+N killed by signal N (SIGINT 130, SIGTERM 143). Errors are printed as
one `error:` line (spec errors as `path:line:col: error: ...` with the line and a caret); a
usage error (an unknown option, a missing argument) is one `error:` line too; a Python
traceback is shown only for an internal error under `--debug` or MAPSPEC_DEBUG=1."""

from __future__ import annotations

import inspect as pyinspect
import json
import os
import sys
import traceback
from collections.abc import Iterator, MutableMapping
from contextlib import contextmanager
from enum import Enum
from functools import wraps
from pathlib import Path
from typing import Annotated, NoReturn, Optional

import typer
try:
    from typer._click import core as cx_core, exceptions as cx  # newer typer carries its own copy of click
except ImportError:  # pragma: no cover - older typer uses click itself
    from click import core as cx_core, exceptions as cx
from typer.core import TyperGroup
from typer.main import get_command_from_info, get_command_name
from typer.models import CommandInfo

from ..tools import present
from ..errors import Interrupted, MapspecError, SpecError, UsageError
from ..api import Options, apply as apply_spec, inverse_plan_for, plan_for
from ..formats import known_names
from ..core import paths
from ..core.quoting import shown_path
from ..lang.parser import parse_spec, read_spec, unreadable
from ..compile.checks import check_spec

PROGRESS_AFTER = 64 << 20  # bytes: smaller conversions finish before a bar is worth drawing


class _LazyCommands(MutableMapping):
    """The group's commands by name, each click command built from its function's signature
    on first lookup: typer builds every command before running one (~6 ms each, most of them
    `inspect.signature` and type hints), `mapspec apply` needs only its own. Names and order
    are known without building, so usage errors and suggestions are unchanged; `--help`
    of the group builds them all, as before."""

    def __init__(self, infos: dict[str, CommandInfo]):
        self._infos = infos
        self._built: dict[str, cx_core.Command] = {}

    def __getitem__(self, name: str) -> "cx_core.Command":
        if name not in self._built:
            info = self._infos[name]  # KeyError: no such command
            if hasattr(info.callback, "sign") and not hasattr(info.callback, "__signature__"):
                info.callback.sign()  # `takes`: the shared options join its parameters now
            self._built[name] = get_command_from_info(info,
                                                      pretty_exceptions_short=app.pretty_exceptions_short,
                                                      rich_markup_mode=app.rich_markup_mode)
        return self._built[name]

    def __setitem__(self, name: str, command: "cx_core.Command") -> None:
        self._built[name] = command

    def __delitem__(self, name: str) -> None:
        if name not in self._infos and name not in self._built:
            raise KeyError(name)
        self._infos.pop(name, None)
        self._built.pop(name, None)

    def __iter__(self) -> Iterator[str]:
        return iter({**dict.fromkeys(self._infos), **dict.fromkeys(self._built)})

    def __len__(self) -> int:
        return len({*self._infos, *self._built})


class _App(typer.Typer):
    """A Typer whose commands are kept aside (`lazy`) instead of in `registered_commands`, so
    that typer's group building skips them; `_Group` looks them up through `_LazyCommands`."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.lazy: dict[str, CommandInfo] = {}

    def command(self, *args, **kwargs):
        register = super().command(*args, **kwargs)

        def decorator(fn):
            register(fn)
            info = self.registered_commands.pop()
            self.lazy[info.name or get_command_name(fn.__name__)] = info
            return fn
        return decorator


class _Group(TyperGroup):
    """Commands built on first lookup (`_LazyCommands`); usage errors as one `error:` line
    (exit 2), like every other error, not a boxed panel."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        lazy = _LazyCommands(dict(app.lazy))
        lazy.update(self.commands)
        self.commands = lazy

    def list_commands(self, ctx) -> list[str]:
        return list(self.commands)  # names only: TyperGroup's `.items()` would build every command

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        try:
            args = _ray_flag(list(sys.argv[1:] if args is None else args))
            rv = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except cx.NoArgsIsHelpError as exc:
            sys.stdout.write(exc.ctx.get_help() + "\n")
            sys.exit(2)
        except cx.UsageError as exc:
            hint = f" (see '{exc.ctx.command_path} --help')" if exc.ctx is not None else ""
            warn(f"error: {exc.format_message()}{hint}")
            sys.exit(2)
        except cx.ClickException as exc:
            warn(f"error: {exc.format_message()}")
            sys.exit(exc.exit_code)
        except typer.Abort:
            warn("error: interrupted")
            sys.exit(130)
        sys.exit(rv if isinstance(rv, int) else 0)


def _ray_flag(args: list[str]) -> list[str]:
    """`--ray` takes an optional ADDRESS: a plain `--ray` (last, or before another option or
    an argument that is no address) becomes `--ray=auto`; `--ray HOST:PORT`, `--ray
    ray://HOST:PORT`, `--ray auto` keep theirs."""
    out = []
    for i, arg in enumerate(args):
        if arg == "--":
            return out + args[i:]
        if arg == "--ray":
            nxt = args[i + 1] if i + 1 < len(args) else None
            if nxt is None or not (nxt in ("auto", "local") or nxt.startswith("ray://")
                                   or (":" in nxt and "://" not in nxt)):
                out.append("--ray=auto")
                continue
        out.append(arg)
    return out


app = _App(cls=_Group, add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Compile and apply checkpoint mapping specs.")


def say(text: str) -> None:
    sys.stdout.write(text if text.endswith("\n") else text + "\n")


def warn(text: str) -> None:
    sys.stderr.write(text + "\n")

PARAM_HELP = "Set a spec parameter: NAME=VALUE (repeatable; overrides --config)."
CONFIG_HELP = "A model configuration JSON the spec's parameters read (param ... from \"key\")."


def _params(pairs: list[str]) -> dict[str, str]:
    """-p NAME=VALUE options as a mapping; the spec decides each value's type."""
    out: dict[str, str] = {}
    for pair in pairs:
        name, eq, value = pair.partition("=")
        name = name.strip()
        if not eq or not name.isidentifier():
            raise UsageError(f"-p {pair}: expected NAME=VALUE, e.g. -p n_heads=32")
        if name in out:
            raise UsageError(f"-p {name} is given twice")
        out[name] = value
    return out


_DEBUG = False  # --debug, set for each invocation


def _debug() -> bool:
    return _DEBUG or os.environ.get("MAPSPEC_DEBUG", "") not in ("", "0")


@app.callback()
def _global_options(debug: Annotated[bool, typer.Option("--debug", help="Show the traceback of an internal error.")]
             = False) -> None:
    global _DEBUG
    _DEBUG = debug


def _fail(message: str, code: int, exc: BaseException) -> typer.Exit:
    if _debug():
        sys.stderr.write("".join(traceback.format_exception(exc)))
    warn(message)
    return typer.Exit(code)


def _guard(fn):
    """The one place an exception becomes an exit code and one `error:` line."""
    @wraps(fn)
    def run(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (MapspecError, OSError) as exc:
            raise _fail(present.error_text(exc), getattr(exc, "exit_code", 2), exc) from None
        except Interrupted as exc:
            raise _fail("error: interrupted (no partial output is left behind)", 128 + exc.signum, exc) from None
        except KeyboardInterrupt as exc:
            raise _fail("error: interrupted (no partial output is left behind)", 130, exc) from None
        except MemoryError as exc:  # bad input that asks for more memory than there is
            raise _fail("error: the input needs more memory than is available", 2, exc) from None
        except RecursionError as exc:
            raise _fail("error: the input nests too deeply", 2, exc) from None
        except (typer.Exit, cx.ClickException, typer.Abort):
            raise
        except Exception as exc:  # a bug: say so briefly, the traceback on request
            hint = "" if _debug() else "; rerun with --debug for the traceback"
            raise _fail(present.error_text(f"internal error ({type(exc).__name__}: {str(exc)[:200]}); "
                                          f"please report it{hint}"), 3, exc) from None
    return run


# ------------------------------------------------------------------ options, declared once

def _formats_help() -> str:
    return known_names()  # from the format registry


class Fit(str, Enum):
    strict = "strict"
    shape = "shape"
    drop = "drop"


class Look(str, Enum):
    table = "table"
    markdown = "markdown"
    json = "json"


class TreeFormat(str, Enum):
    tree = "tree"
    json = "json"


class DiffFormat(str, Enum):
    text = "text"
    json = "json"


SpecArg = Annotated[Path, typer.Argument(help="The .map spec.", show_default=False, metavar="SPEC")]
# Checkpoints and outputs are text, not Path (which would make `s3://b/k` `s3:/b/k`): `_at`
# turns each into a local Path or, for a URL, a location on object storage.
CheckpointArg = Annotated[str, typer.Argument(help="The checkpoint (an MXNet prefix with --epoch; or a URL: "
                                              "s3://, gs://, hf://, https://...).",
                                              show_default=False, metavar="CHECKPOINT")]
# apply, explain and inspect also take several shard files: what the shell makes of an unquoted
# `model-*.safetensors` (a quoted glob, a directory or an index stay one CHECKPOINT).
ShardsArg = Annotated[list[str], typer.Argument(
    help="The checkpoint: a file, a model directory, a shard index or glob, or several shard files "
    "(an MXNet prefix with --epoch); any of them may be a URL (s3://, gs://, hf://, https://...).",
    show_default=False, metavar="CHECKPOINT")]


def _at(value: str | None):
    """A CHECKPOINT or OUTPUT argument: a local Path, or a URL's location (formats.remote)."""
    from ..formats.reading import location

    return None if value is None else location(value)


def _shards(paths: list[str], epoch: int | None):
    """One CHECKPOINT as given; several as the shards of one checkpoint."""
    if len(paths) == 1:
        return _at(paths[0])
    if epoch is not None:
        raise UsageError("--epoch reads one MXNet prefix, not several checkpoints")
    return [_at(p) for p in paths]


TargetOpt = Annotated[Optional[str], typer.Option(
    "--target", help="What the output must fit: a checkpoint with the target keys and shapes, or a model "
    "factory module:callable(args).")]
SelectOpt = Annotated[Optional[str], typer.Option(
    "--select", help="Convert only this sub-tree (e.g. model, ema); '' for the whole file.")]
EpochOpt = Annotated[Optional[int], typer.Option(
    "--epoch", min=0, help="MXNet: CHECKPOINT is a prefix; read PREFIX-EPOCH.params (epoch 0: PREFIX-0000.params).")]
FitOpt = Annotated[Fit, typer.Option(
    "--fit", help="With --target: strict (same keys and shapes), shape (keep what fits by name and shape) "
    "or drop (leave out --drop patterns, fit the rest strictly).")]
DropOpt = Annotated[Optional[list[str]], typer.Option(
    "--drop", help="With --fit drop: a glob of output names to leave out, e.g. 'fc.*' (repeatable).")]
NonStrictOpt = Annotated[bool, typer.Option(
    "--non-strict", help="Leave keys no rule matches out (with a warning) instead of failing.")]
StrictRulesOpt = Annotated[bool, typer.Option(
    "--strict-rules", help="A rule that matches no key is an error, not a warning.")]
ParamOpt = Annotated[Optional[list[str]], typer.Option("-p", "--param", help=PARAM_HELP)]
ConfigOpt = Annotated[Optional[Path], typer.Option("--config", help=CONFIG_HELP)]
PreferOpt = Annotated[Optional[list[str]], typer.Option(
    "--prefer-alternative", metavar="[LINE:]N", help="The inverse writes fallback alternatives (A | B -> T) back "
    "as the N-th, counted from 1: N for every such rule, LINE:N for the rule on that line (repeatable).")]


def _prefer(values: list[str] | None) -> dict[int | None, int]:
    """--prefer-alternative values; `invert` (the inverse machinery) is imported only when given."""
    if not values:
        return {}
    from ..tools.invert import parse_prefer

    return parse_prefer(values)


def _check_output(output: Path, force: bool) -> None:
    """-o of a spec-writing command (invert, draft): writable, and new unless --force."""
    paths.writable(output, "-o", make_folders=False)
    if os.path.lexists(output) and not force:
        raise UsageError(f"{shown_path(output)} exists; use --force to overwrite it")


def _check_fit(target, fit: Fit, drop) -> None:
    """--fit and --drop only mean something with --target: never ignore them silently."""
    if target is None and (fit is not Fit.strict or drop):
        raise UsageError(f"{'--drop' if drop else '--fit ' + fit.value} says how the output meets --target; "
                         "give --target too")


# The options of the commands that compile a spec against a checkpoint, declared once:
# `@takes(name, ...)` adds those options to a command's parameters and hands it one `Options`
# (`opts`) built from them, the object `mapspec.apply` and `plan_for` take too.
_SHARED: dict[str, tuple[object, object]] = {
    "target": (TargetOpt, None), "select": (SelectOpt, None), "epoch": (EpochOpt, None),
    "fit": (FitOpt, Fit.strict), "drop": (DropOpt, None), "non_strict": (NonStrictOpt, False),
    "strict_rules": (StrictRulesOpt, False), "param": (ParamOpt, None), "config": (ConfigOpt, None),
}
COMPILING = tuple(_SHARED)  # all of them: check, explain and apply


def takes(*names: str):
    def decorate(fn):
        @wraps(fn)
        def run(*args, **kwargs):
            return fn(*args, opts=_options({n: kwargs.pop(n) for n in names}), **kwargs)

        def sign() -> None:
            # Evaluating a command's annotations (typer.Option objects) costs about 2 ms per
            # command, so it is done when the command is built (`_LazyCommands`), for the
            # one command a run uses, not for every command at import.
            sig = pyinspect.signature(fn, eval_str=True)
            own = [p for p in sig.parameters.values() if p.name != "opts"]
            added = [pyinspect.Parameter(n, pyinspect.Parameter.KEYWORD_ONLY, annotation=_SHARED[n][0],
                                         default=_SHARED[n][1]) for n in names]
            run.__signature__ = sig.replace(parameters=own + added)
            run.__annotations__ = {p.name: p.annotation for p in own + added}

        run.sign = sign
        return run
    return decorate


def _options(given: dict) -> Options:
    """The shared options' values as one `Options`; --fit and --drop only with --target."""
    fit, drop = given.get("fit", Fit.strict), tuple(given.get("drop") or ())
    _check_fit(given.get("target"), fit, drop)
    return Options(target=given.get("target"), select=given.get("select"), epoch=given.get("epoch"),
                   strict=not given.get("non_strict", False), fit=fit.value, drop=drop,
                   strict_rules=given.get("strict_rules", False), params=_params(given.get("param") or []),
                   config=given.get("config"))


def _warn_plan(plan, spec, inverse=None) -> None:
    """`inverse`: the plan is of this derived inverse of `spec` (apply/explain --reverse)."""
    lines = (present.plan_warnings(plan, spec) if inverse is None else
             present.plan_warnings(plan, inverse.spec, inverse.forward_rule))
    for line in lines:
        warn(line)


# ------------------------------------------------------------------ commands

@contextmanager
def _progress_bar():
    """A `progress(done, total)` drawing a bar on a terminal's stderr for conversions over
    PROGRESS_AFTER bytes; None (and rich not even imported: 0.05 s of start-up) otherwise."""
    if not sys.stderr.isatty():
        yield None
        return
    from rich.console import Console
    from rich.progress import (BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn,
                               TransferSpeedColumn)

    with Progress(TextColumn("converting"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                  TimeRemainingColumn(), console=Console(stderr=True), transient=True) as bar:
        task = None

        def progress(done: int, total: int) -> None:
            nonlocal task
            if total < PROGRESS_AFTER:
                return
            if task is None:
                task = bar.add_task("converting", total=total)
            bar.update(task, completed=done)

        yield progress


@app.command()
@_guard
@takes(*COMPILING)
def apply(
    output: Annotated[str, typer.Option("-o", "--output", help="Where to write; the format follows the suffix "
                                        "(or --to). Missing folders are created. A URL (s3://...) writes to "
                                        "object storage: nothing appears there until all of it is complete.",
                                        show_default=False)],
    spec: Annotated[Path, typer.Argument(
        help="The .map spec; or, with no CHECKPOINT, a Hugging Face model directory whose config.json names an "
        "architecture a shipped specs/hf_to_gguf spec converts (that spec is used).", show_default=False,
        metavar="SPEC")],
    checkpoint: Annotated[Optional[list[str]], typer.Argument(
        help="The checkpoint: a file, a model directory, a shard index or glob, or several shard files "
        "(an MXNet prefix with --epoch); any of them may be a URL (s3://, gs://, hf://, https://...).",
        show_default=False, metavar="CHECKPOINT")] = None,
    to: Annotated[Optional[str], typer.Option("--to", help="Output format: " + _formats_help() + ".")] = None,
    max_shard_size: Annotated[Optional[str], typer.Option(
        "--max-shard-size", help="Write OUTPUT as a directory of HF-style shards of at most this size (5GB, 500MB) "
        "plus an index; --to safetensors (default) or torch; an OUTPUT named *.gguf gets GGUF split parts as "
        "gguf-split writes them.", show_default=False)] = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing output.")] = False,
    reverse: Annotated[bool, typer.Option("--reverse", help="Run SPEC's derived inverse (see `mapspec invert`).")] = False,
    lossy: Annotated[bool, typer.Option("--lossy", help="With --reverse: undo lossy casts and drops anyway, "
                                        "reporting the loss.")] = False,
    prefer: PreferOpt = None,
    concurrency: Annotated[Optional[int], typer.Option(
        "--concurrency", min=1, help="Range requests in flight per transfer for URLs (default 8).",
        show_default=False)] = None,
    ray: Annotated[Optional[str], typer.Option(
        "--ray", help="Convert on a Ray cluster, one task per output shard: --ray joins the local cluster (or "
        "starts one), --ray HOST:PORT that one. Needs mapspec[ray].", show_default=False,
        metavar="[ADDRESS]")] = None,
    no_hash: Annotated[bool, typer.Option("--no-hash", help="Record the source by file sizes and modification "
                                          "times only, not by sha256 (the record says so).")] = False,
    opts: Options = Options(),
) -> None:
    """Convert CHECKPOINT (or the shards given) with SPEC into OUTPUT; `apply MODEL_DIR -o out.gguf`
    picks the spec from the directory's config.json."""
    if not checkpoint:
        if not spec.is_dir():
            raise UsageError("apply needs SPEC and CHECKPOINT (or a model directory alone, converted to GGUF)")
        from ..tools.hf_gguf import spec_for

        checkpoint, spec = [spec], spec_for(spec)
    checkpoint = _shards(checkpoint, opts.epoch)
    if lossy and not reverse:
        raise UsageError("--lossy goes with --reverse (a forward conversion casts as the spec says)")
    parsed = parse_spec(spec)
    with _progress_bar() as progress:
        report = apply_spec(parsed, checkpoint, _at(output), opts, to=to, force=force, progress=progress,
                            reverse=reverse, lossy=lossy, max_shard_size=max_shard_size, prefer=_prefer(prefer),
                            concurrency=concurrency, ray=ray, hash=not no_hash)
    for loss in report.losses:
        warn(f"warning: {loss}")
    _warn_plan(report.plan, parsed, report.inverse)
    r = report.plan.target_report
    if r is not None and opts.fit != Fit.strict.value:
        for line in r.lines():
            warn(f"note: {line}")
    say(report.summary())


@app.command()
@_guard
@takes(*COMPILING)
def check(
    spec: SpecArg,
    checkpoint: Annotated[Optional[list[str]], typer.Argument(
        help="Compile against this checkpoint's keys too. (Several .map files instead: check each spec on "
        "its own, as the pre-commit hook does.)", show_default=False, metavar="CHECKPOINT")] = None,
    opts: Options = Options(),
) -> None:
    """Compile only; exit 0 when SPEC (and its plan for CHECKPOINT) is clean."""
    rest = [_at(p) for p in checkpoint or []]
    if all(p.suffix == ".map" for p in rest):  # specs only: each on its own
        if opts.target is not None:
            raise UsageError("--target needs a CHECKPOINT to compile against")
        for path in [spec, *rest]:
            parsed = parse_spec(path)
            check_spec(parsed, params=opts.params, config=opts.config)
            say(f"{path}: ok ({len(parsed.rules)} rules, {len(parsed.tables)} tables)")
        return
    if len(rest) > 1:
        raise UsageError(f"check takes one SPEC and one CHECKPOINT, or only specs; got {len(rest) + 1} paths")
    parsed = parse_spec(spec)
    plan = plan_for(parsed, rest[0], opts)
    _warn_plan(plan, parsed)
    say(present.check_line(spec, plan, opts.target is not None))
    say(present.peak_line(plan))


@app.command()
@_guard
@takes(*COMPILING)
def explain(
    spec: SpecArg,
    checkpoint: ShardsArg,
    fmt: Annotated[Look, typer.Option("--format", help="table (plain text), markdown (for a pull request) "
                                      "or json (the whole plan).")] = Look.table,
    per_tensor: Annotated[bool, typer.Option("--per-tensor", help="One row per output tensor instead of one "
                                             "per rule.")] = False,
    reverse: Annotated[bool, typer.Option("--reverse", help="Explain SPEC's derived inverse on CHECKPOINT (of "
                                          "SPEC's target layout); rows point at the forward rules.")] = False,
    prefer: PreferOpt = None,
    opts: Options = Options(),
) -> None:
    """Show the plan for review: one row per rule (key count, an example, what changes)."""
    checkpoint = _shards(checkpoint, opts.epoch)
    parsed = parse_spec(spec)
    if not reverse:
        plan = plan_for(parsed, checkpoint, opts)
        _warn_plan(plan, parsed)
        text = present.explain(plan, parsed, fmt.value, per_tensor)
    else:
        inverse, plan = inverse_plan_for(parsed, checkpoint, opts, prefer=_prefer(prefer))
        for loss in inverse.losses:
            warn(f"warning: {loss}")
        _warn_plan(plan, parsed, inverse)
        values = ", ".join(f"{k}={v}" for k, v in inverse.params.items())
        notes = [f"derived inverse of {spec.name}" + (f" with {values}" if values else "")
                 + "; line: the forward rule each inverse rule undoes (`mapspec invert` prints the inverse)"]
        text = present.explain(plan, inverse.spec, fmt.value, per_tensor, origin=inverse.forward_rule, notes=notes)
    patch = plan.config_patch()
    if fmt is Look.json:  # the expected peak, beside the plan's own summary
        data = json.loads(text)
        data["summary"].update(present.peak_bytes(plan))
        if patch:
            data["config_json"] = {"set": dict(patch.set), "remove": sorted(patch.remove), "dtype": patch.dtype}
        text = json.dumps(data, indent=2) + "\n"
    else:
        text += present.peak_line(plan) + "\n"
        line = present.config_line(plan)
        text += line + "\n" if line else ""
    sys.stdout.write(text)


@app.command()
@_guard
@takes("select", "epoch", "non_strict", "config")
def diff(
    old: Annotated[Path, typer.Argument(help="The spec as it was.", show_default=False, metavar="OLD")],
    new: Annotated[Path, typer.Argument(help="The spec as it is now.", show_default=False, metavar="NEW")],
    checkpoint: CheckpointArg,
    fmt: Annotated[DiffFormat, typer.Option("--format", help="text or json.")] = DiffFormat.text,
    exit_code: Annotated[bool, typer.Option("--exit-code", help="Exit 1 when an output changes (rule and "
                                            "parameter changes no output shows do not count).")] = False,
    param: Annotated[Optional[list[str]], typer.Option("-p", "--param", help=PARAM_HELP + " Each spec takes the "
                                                       "parameters it declares.")] = None,
    opts: Options = Options(),
) -> None:
    """Show which outputs change (names, shapes, actions, sources) between two versions of a spec,
    then the rule and parameter changes that change no output."""
    from ..tools.diff import diff_plans

    specs = [parse_spec(p) for p in (old, new)]
    given = _params(param or [])
    declared = [{d.name for d in s.definitions} for s in specs]
    # a parameter only one version declares goes to that one; a name neither declares, to NEW (its error)
    values = [{k: v for k, v in given.items() if k in declared[0]},
              {k: v for k, v in given.items() if k in declared[1] or k not in declared[0]}]
    plans = [plan_for(s, checkpoint, opts, params=v) for s, v in zip(specs, values)]
    d = diff_plans(*plans, *specs)
    sys.stdout.write(present.diff_text(d, fmt.value))
    if exit_code and d.changes:
        raise typer.Exit(1)


@app.command()
@_guard
def inspect(
    checkpoint: Annotated[str, typer.Argument(help="Any supported checkpoint (or its URL).", show_default=False,
                                              metavar="CHECKPOINT")],
    keys: Annotated[bool, typer.Option("--keys", help="List every tensor, one per line: name, shape, dtype "
                                       "(tab-separated; --format json for a JSON list).")] = False,
    fmt: Annotated[TreeFormat, typer.Option("--format", help="tree or json.")] = TreeFormat.tree,
    select: Annotated[Optional[str], typer.Option("--select", help="With --keys: list this sub-tree "
                                                  "('' for the whole file; default: what apply converts).")] = None,
    epoch: EpochOpt = None,
) -> None:
    """Show what a checkpoint holds, without running any code from it."""
    import json

    checkpoint = _at(checkpoint)
    if keys:
        from ..formats import open_source

        source = open_source(checkpoint, select=select, epoch=epoch)
        try:
            infos = dict(source.infos())
            if source.auto:
                warn(f"note: the keys under '{source.prefix}', which apply converts (--select '' lists the whole file)")
        finally:
            source.close()
        sys.stdout.write(present.keys_text(infos, "json" if fmt is TreeFormat.json else "text"))
        return
    from ..tools.inspect import inspect_checkpoint

    info = inspect_checkpoint(checkpoint, epoch)
    sys.stdout.write(json.dumps(info, indent=2) + "\n" if fmt is TreeFormat.json else present.inspect_tree(info))


@app.command()
@_guard
def fmt(
    specs: Annotated[list[Path], typer.Argument(help="Spec files to rewrite in place.", show_default=False,
                                                metavar="SPEC...")],
    check: Annotated[bool, typer.Option("--check", help="Change nothing; list the files that would change and "
                                        "exit 1 if there are any.")] = False,
) -> None:
    """Rewrite specs in place in canonical form (it prints only the names of files it changes)."""
    from ..lang.formatter import format_text

    changed = []
    for path in specs:
        try:
            text = read_spec(path)
        except (OSError, UnicodeDecodeError) as exc:
            raise SpecError(f"cannot read spec {shown_path(path)}: {unreadable(exc)}") from None
        new = format_text(text, str(path))
        if new != text:
            changed.append(path)
            if not check:
                paths.writable(path, "spec")
                paths.replace_text(path, new, "spec")
    for path in changed:
        say(f"{'would reformat' if check else 'reformatted'} {path}")
    if check and changed:
        raise typer.Exit(1)


@app.command()
@_guard
@takes("select", "epoch", "param", "config")
def invert(
    spec: SpecArg,
    checkpoint: Annotated[Optional[str], typer.Argument(
        help="A checkpoint SPEC converts: supplies the shapes and dtypes some inverses need, and limits the "
        "inverse to the rules it uses.", show_default=False, metavar="CHECKPOINT")] = None,
    output: Annotated[Optional[Path], typer.Option("-o", "--output", help="Write the inverse spec here "
                                                   "(default: stdout).", show_default=False)] = None,
    lossy: Annotated[bool, typer.Option("--lossy", help="Invert lossy casts and drops anyway, reporting the "
                                        "loss.")] = False,
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing OUTPUT.")] = False,
    prefer: PreferOpt = None,
    opts: Options = Options(),
) -> None:
    """Print the inverse of SPEC as ordinary spec text, from/to swapped."""
    from ..tools.invert import invert_spec

    if output is not None:
        _check_output(output, force)
    parsed = parse_spec(spec)
    forward = plan_for(parsed, _at(checkpoint), opts) if checkpoint is not None else None
    inverse = invert_spec(parsed, forward, params=opts.params, config=opts.config, lossy=lossy,
                          prefer=_prefer(prefer))
    for loss in inverse.losses:
        warn(f"warning: {loss}")
    if output is None:
        sys.stdout.write(inverse.text)
        return
    paths.replace_text(output, inverse.text)
    say(f"wrote {output} ({len(inverse.spec.rules)} rules)")


@app.command()
@_guard
@takes("select", "epoch", "param", "config")
def verify(
    spec: SpecArg,
    checkpoint: CheckpointArg,
    against: Annotated[Optional[str], typer.Option(
        "--against", help="Compare with this checkpoint (or URL), converted another way. Without it: convert forward, "
        "then back, and compare with CHECKPOINT.", show_default=False)] = None,
    atol: Annotated[float, typer.Option("--atol", min=0.0, help="With --against: absolute tolerance.")] = 0.0,
    rtol: Annotated[float, typer.Option("--rtol", min=0.0, help="With --against: relative tolerance (of the "
                                        "reference).")] = 0.0,
    lossy: Annotated[bool, typer.Option("--lossy", help="Round trip: invert lossy casts and drops anyway "
                                        "(they will differ).")] = False,
    worst: Annotated[int, typer.Option("--worst", min=0, help="How many of the worst tensors to list.")] = 10,
    prefer: PreferOpt = None,
    opts: Options = Options(),
) -> None:
    """Check a conversion numerically: exit 0 only if every tensor matches."""
    from ..tools.verify import verify_against, verify_roundtrip

    select, epoch, params, config = opts.select, opts.epoch, opts.params, opts.config
    checkpoint, against = _at(checkpoint), _at(against)
    if against is not None:
        result = verify_against(spec, checkpoint, against, atol=atol, rtol=rtol, select=select, epoch=epoch,
                                params=params, config=config)
        title = f"{spec.name}: {checkpoint.name} against {against.name}"
    else:
        if atol or rtol:
            raise UsageError("--atol/--rtol go with --against; a round trip must be bit-exact")
        result, inverse = verify_roundtrip(spec, checkpoint, select=select, epoch=epoch, lossy=lossy,
                                           params=params, config=config, prefer=_prefer(prefer))
        for loss in inverse.losses:
            warn(f"warning: {loss}")
        title = f"{spec.name}: {checkpoint.name} forward and back"
    sys.stdout.write(present.verification_text(result, title, worst))
    if not result.ok:
        bad = sum(not c.ok for c in result.checks)
        warn(f"error: {bad} tensors differ, {len(result.missing)} missing, {len(result.extra)} extra")
        raise typer.Exit(1)


@app.command()
@_guard
def draft(
    source: Annotated[str, typer.Argument(help="The checkpoint to convert from (or its URL).",
                                          show_default=False, metavar="SOURCE")],
    target: Annotated[str, typer.Argument(help="A checkpoint with the target keys and shapes, "
                                          "or a model factory module:callable(args).", show_default=False,
                                          metavar="TARGET")],
    output: Annotated[Optional[Path], typer.Option("-o", "--output", help="Write the draft here "
                                                   "(default: stdout).")] = None,
    explain_: Annotated[bool, typer.Option("--explain", help="Print the evidence for every rule on stderr.")] = False,
    select: SelectOpt = None,
    epoch: EpochOpt = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing output.")] = False,
) -> None:
    """Infer a reviewable spec converting SOURCE into TARGET (exit 1: target keys left unexplained)."""
    from ..tools.draft import draft as make_draft
    from ..run.executor import open_for
    from ..tools.load import target_infos

    if output is not None:
        _check_output(output, force)
    source = _at(source)
    src = open_for(None, source, select, epoch, role="source")
    try:
        infos = dict(src.infos())
    finally:
        src.close()
    result = make_draft(infos, target_infos(target), source_name=source.name, target_name=Path(target).name,
                        file=str(output or "draft.map"))
    if explain_:
        for line in result.explain():
            warn(line)
    if output is None:
        sys.stdout.write(result.text)
    else:
        paths.replace_text(output, result.text)
    p = result.pairing
    summary = (f"draft: {len(result.rules)} rules, {sum(len(x.targets) for x in p.pairs)}/{len(p.target.keys)} "
               f"target tensors, {len(p.dropped)} source tensors dropped, {len(p.suggestions)} suggestions")
    warn(summary + (f" -> {output}" if output else ""))
    if not result.ok:
        warn(f"error: the draft leaves {len(p.unexplained) or len(result.problems)} target keys unexplained:")
        for line in result.problems:
            warn(f"  {line}")
        raise typer.Exit(1)


def main() -> NoReturn:
    """The console entry point (`mapspec`): runs the command, then ends the process without
    interpreter teardown. Freeing every module and object at exit took ~75 ms, a fifth of a
    small conversion; by then the output is renamed into place and the report printed. What
    must still run does: non-daemon threads are waited for (else the normal exit does it),
    atexit handlers run, stdout and stderr are flushed (a failing flush, e.g. a closed pipe,
    falls back to the normal exit and its usual message and status).
    Never returns, so code that needs control back (tests, a fork server) calls `app()`."""
    # pydantic looks for plugins (observers of validation, e.g. logfire) when it builds the
    # first validator of a run: a scan of every installed package's entry points, 20-60 ms
    # with torch and transformers installed, a tenth of a small `apply`. The validators here
    # check mapspec's own rule nodes, which no plugin has a use for; a user's own setting wins.
    os.environ.setdefault("PYDANTIC_DISABLE_PLUGINS", "__all__")
    # numpy's OpenBLAS starts a thread per core when numpy loads, and each spins waiting for
    # work before it sleeps: ~0.1 s of CPU here, on the core the read-ahead thread and the
    # kernels' helper need. mapspec does no linear algebra (no BLAS call anywhere), so the
    # command's own process asks for none of those threads; a thread count the user set wins.
    if not any(k in os.environ for k in ("OPENBLAS_NUM_THREADS", "GOTO_NUM_THREADS", "OMP_NUM_THREADS")):
        os.environ["OPENBLAS_NUM_THREADS"] = "1"
    try:
        app()
        code = 0
    except SystemExit as exc:
        code = exc.code
    _exit_now(code)


def _exit_now(code: object) -> NoReturn:
    import atexit
    import threading

    if code is None:
        code = 0
    elif not isinstance(code, int):  # sys.exit("message"): what the interpreter would do
        sys.stderr.write(f"{code}\n")
        code = 1
    if any(t.is_alive() and not t.daemon for t in threading.enumerate() if t is not threading.main_thread()):
        sys.exit(code)  # the interpreter joins them, as it always did
    atexit._run_exitfuncs()  # runs and clears them: the fallback below does not repeat them
    for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
        try:
            if stream is not None:
                stream.flush()
        except Exception:
            sys.exit(code)  # the interpreter's own handling of an unflushable stream
    os._exit(code)


if __name__ == "__main__":  # pragma: no cover
    main()
