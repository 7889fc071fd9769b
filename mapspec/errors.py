"""Error classes. Each carries the exit code the CLI uses for it.

Exit codes: 1 for a conversion problem (coverage, shapes, target mismatch), 2 for bad
input (spec syntax or semantics, unreadable or unsafe checkpoints, usage).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path



@dataclass(frozen=True)
class Span:
    """Where a node came from: 1-based line and column, end exclusive."""

    file: str
    line: int
    column: int
    end_line: int
    end_column: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.column}"

    def to_json(self) -> dict:
        return {"file": self.file, "line": self.line, "column": self.column}


MAX_LINE = 400  # characters of one rendered error line; longer ones are cut in the middle


def printable(text: str) -> str:
    """`text` with every non-printable character escaped as Python escapes it (\\n, \\x00,
    \\u2028), printable ones (any script) kept: what an error quotes stays one readable line."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def shorten(text: str, limit: int = MAX_LINE) -> str:
    """`text` with every line cut to `limit` characters, so an error never echoes a 1 MB key,
    and every unprintable character in it escaped (a tab, which aligns a caret, stays)."""
    head, tail = limit * 2 // 3, limit // 3 - 30
    lines = ["\t".join(printable(part) for part in line.split("\t")) for line in text.split("\n")]
    return "\n".join(line if len(line) <= limit else
                     f"{line[:head]} ...[{len(line) - head - tail:,} characters]... {line[-tail:]}"
                     for line in lines)


class MapspecError(Exception):
    """Base of every error mapspec raises on purpose."""

    exit_code = 2

    def render(self) -> str:
        return shorten(f"error: {printable(str(self))}")  # one line, whatever the message quotes


class SpecError(MapspecError):
    """A problem in a spec file, shown like a compiler error with the line and a caret."""

    exit_code = 2

    def __init__(self, message: str, span: Span | None = None, source: str | None = None):
        super().__init__(message)
        self.message = message
        self.span = span
        self._source = source

    def source_line(self) -> str | None:
        if self.span is None:
            return None
        text = self._source
        if text is None:
            try:
                text = Path(self.span.file).read_text(encoding="utf-8")
            except OSError:
                return None
        lines = text.split("\n")  # as the parser counts lines: U+2028 in a quoted key ends none
        if 1 <= self.span.line <= len(lines):
            return lines[self.span.line - 1].removesuffix("\r")
        return None

    def render(self) -> str:
        if self.span is None:
            return shorten(f"error: {printable(self.message)}")
        head = shorten(f"{printable(str(self.span))}: error: {printable(self.message)}")
        line = self.source_line()
        if line is None:
            return head
        column = self.span.column
        width = 1
        if self.span.end_line == self.span.line and self.span.end_column > self.span.column:
            width = self.span.end_column - self.span.column
        if len(line) > MAX_LINE:  # show a window around the caret, not a megabyte of spec
            start = max(0, column - 1 - MAX_LINE // 2)
            line = ("..." if start else "") + line[start:start + MAX_LINE] + (
                "..." if start + MAX_LINE < len(line) else "")
            column = column - start + (3 if start else 0)
            width = max(1, min(width, len(line) - column + 1, 80))
        # Tabs keep their width so the caret lines up under the offending text; an
        # unprintable character is shown escaped, and the caret moves by its escape's width.
        shown = ["\t" if c == "\t" else printable(c) for c in line]
        pad = "".join("\t" if c == "\t" else " " * len(c) for c in shown[: column - 1])
        width = sum(len(c) for c in shown[column - 1:column - 1 + width]) or 1
        return f"{head}\n    {''.join(shown)}\n    {pad}{'^' * width}"

    def __str__(self) -> str:
        return f"{self.span}: {self.message}" if self.span else self.message


class SpecErrors(SpecError):
    """Several problems found in one run, shown one after another in file order."""

    def __init__(self, errors: list[SpecError]):
        flat: list[SpecError] = []
        seen = set()
        for e in errors:
            for one in e.errors if isinstance(e, SpecErrors) else [e]:
                if (one.span, one.message) not in seen:  # the same fault met once per layer
                    seen.add((one.span, one.message))
                    flat.append(one)
        flat.sort(key=lambda e: (e.span is not None, e.span.file if e.span else "",
                                 e.span.line if e.span else 0, e.span.column if e.span else 0))
        super().__init__(f"{len(flat)} errors", flat[0].span if flat else None)
        self.errors = flat
        self.exit_code = max(e.exit_code for e in flat)

    SHOWN = 20  # errors rendered; a spec with thousands of faults does not print them all

    def render(self) -> str:
        more = len(self.errors) - self.SHOWN
        return ("\n".join(e.render() for e in self.errors[:self.SHOWN])
                + (f"\n... {more} more not shown" if more > 0 else "") + f"\n{len(self.errors)} errors")

    def __str__(self) -> str:
        return "\n".join(str(e) for e in self.errors)


class SpecSyntaxError(SpecError):
    """The spec text does not follow the grammar."""


class ConversionError(MapspecError):
    """The spec is valid but does not fit this checkpoint (coverage, shapes, target)."""

    exit_code = 1

    def __init__(self, message: str, details: list[str] | None = None, span: Span | None = None):
        super().__init__(message)
        self.message = message
        self.details = details or []
        self.span = span

    def render(self) -> str:
        where = f"{self.span}: " if self.span else ""
        out = printable(f"{where}error: {self.message}")
        if self.details:  # one line each
            out += "\n" + "\n".join(f"  {printable(str(d))}" for d in self.details)
        return shorten(out)

    def __str__(self) -> str:
        return self.render().removeprefix("error: ")


class CheckpointError(MapspecError):
    """A checkpoint that cannot be read safely: missing, truncated, corrupt or unsafe."""

    exit_code = 2


class OutputError(MapspecError, OSError):
    """The output cannot be written (disk full, file size limit, an output that appeared
    meanwhile): nothing is left under its name. An OSError too, for callers that catch those."""

    exit_code = 2


class Interrupted(BaseException):
    """SIGTERM or SIGINT arrived during a write; raised from the signal handler so every
    `finally` and abort on the way out runs. A BaseException, like KeyboardInterrupt."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


class UsageError(MapspecError):
    """The command line asks for something that cannot be done as asked."""

    exit_code = 2


class PlanError(SpecError):
    """A valid rule that does not fit this checkpoint (shapes, duplicates, ambiguity):
    shown at the rule like a spec error, but a conversion problem (exit 1)."""

    exit_code = 1
