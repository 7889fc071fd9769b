"""Loading `mapspec.lark` and turning lark's parse failures into `SpecSyntaxError`."""

from __future__ import annotations

import hashlib
import io
import sys
from functools import lru_cache
from importlib import resources
from pathlib import Path

import lark
from lark import Lark, Token, Tree
from lark.exceptions import UnexpectedCharacters, UnexpectedEOF, UnexpectedInput, UnexpectedToken

from ..core.cache import cache_dir, write_atomically
from ..errors import Span, SpecSyntaxError

# What each terminal is called in an error message.
_TERMINAL_NAMES = {
    "KEY": "a key pattern",
    "NAME": "a name",
    "STRING": 'a quoted string',
    "INT": "an integer",
    "LINE": "an expression",
    "COMPARE": "a comparison (==, !=, <, <=, >, >=)",
    "IF_ABSENT": "'if absent'",
    "LIT": "key text",
    "ALT": "an alternative",
    "QUOTED": "a quoted string",
    "__ANON": "",
    "$END": "end of input",
}


def grammar_text() -> str:
    """The grammar, from the installed package first, then from the source checkout."""
    try:
        return resources.files("mapspec").joinpath("_grammars/mapspec.lark").read_text("utf-8")
    except (FileNotFoundError, ModuleNotFoundError, OSError):
        here = Path(__file__).resolve().parents[2] / "grammars" / "mapspec.lark"
        return here.read_text("utf-8")


_OPTIONS = dict(parser="lalr", lexer="contextual", start=["spec", "pattern", "template", "expr_line", "assert_line"],
                propagate_positions=True, maybe_placeholders=False)


KEEP_BUILT = 4  # built parsers kept side by side (one per grammar: mapspec versions used in turn)


@lru_cache(maxsize=1)
def parser() -> Lark:
    """The LALR parser. Building its tables takes 0.15-0.25 s, most of a small `mapspec apply`,
    so the built parser is kept in the user's cache directory (`cache_path`), in a file named
    by its key (the grammar, the options, the lark and Python versions), which its first line
    repeats; a stale, truncated or unreadable file is rebuilt. Files of other keys stay (two
    mapspec versions used in turn each find their own), up to KEEP_BUILT."""
    text = grammar_text()
    key = _key(text)
    path = cache_path(key)
    if path is not None:
        try:
            with open(path, "rb") as f:
                if f.readline().rstrip(b"\n") == key.encode():
                    return Lark.load(f)
        except Exception:  # missing, truncated or from another version: build it again
            pass
    built = Lark(text, **_OPTIONS)
    if path is not None:
        saved = io.BytesIO()
        built.save(saved)
        write_atomically(path, key.encode() + b"\n" + saved.getvalue())
        _prune(path)
    return built


def _key(text: str) -> str:
    return hashlib.sha256(f"{text}\0{_OPTIONS!r}\0{lark.__version__}\0{sys.version_info[:2]}".encode()).hexdigest()


def cache_name(key: str | None = None) -> str:
    """The name of this grammar's (or `key`'s) built-parser file in the cache directory."""
    return f"grammar-{(key or _key(grammar_text()))[:16]}.lark-cache"


def cache_path(key: str | None = None) -> Path | None:
    """Where the built parser is kept (`mapspec.cache`), or None: the file holds a pickle, so
    it is only read from a directory nobody else can write to."""
    folder = cache_dir()
    return None if folder is None else folder / cache_name(key)


def _prune(kept: Path) -> None:
    """Remove built parsers beyond the KEEP_BUILT newest, and the one file of before they were
    named by key."""
    try:
        others = sorted((p for p in kept.parent.glob("grammar-*.lark-cache") if p != kept),
                        key=lambda p: p.stat().st_mtime, reverse=True)
        for old in [*others[KEEP_BUILT - 1:], kept.parent / "grammar.lark-cache"]:
            old.unlink(missing_ok=True)
    except OSError:  # a cache is best effort
        pass


def parse_statements(text: str, file: str) -> tuple[Tree, list[Token]]:
    """Parse a whole spec; returns the tree and its comments (which `fmt` keeps)."""
    try:
        tree = parser().parse(text, start="spec")
    except UnexpectedInput as exc:
        raise _syntax_error(exc, text, file, 1, 1, what="statement") from None
    return tree, _scan_comments(text)


def lines(text: str) -> list[str]:
    """The lines of spec text as the parser counts them: ended by a newline only (not by the
    other characters `str.splitlines` ends lines at, such as U+0085 or U+2028 in a quoted
    key), a carriage return before the newline left out."""
    return [line[:-1] if line.endswith("\r") else line for line in text.split("\n")]


def _scan_comments(text: str) -> list[Token]:
    """Comments by a lexer pass of their own: `#` outside quotes runs to the end of line."""
    out: list[Token] = []
    for lineno, line in enumerate(lines(text), 1):
        in_quote = False
        escaped = False
        for col, ch in enumerate(line):
            if in_quote:
                if escaped:
                    escaped = False
                elif ch == "\\":
                    escaped = True
                elif ch == '"':
                    in_quote = False
            elif ch == '"':
                in_quote = True
            elif ch == "#":
                tok = Token("COMMENT", line[col:].rstrip())
                tok.line, tok.column = lineno, col + 1
                out.append(tok)
                break
    return out


def parse_fragment(token: Token, start: str, file: str, source: str) -> Tree:
    """Parse the text of a KEY token as a pattern or a template, keeping real positions."""
    try:
        return parser().parse(str(token), start=start)
    except UnexpectedInput as exc:
        raise _syntax_error(exc, source, file, token.line, token.column, what=start) from None


def shift(tok: Token, base: Token) -> tuple[int, int]:
    """Line and column of a token found inside `base`'s text."""
    return base.line, base.column + tok.column - 1


def _syntax_error(
    exc: UnexpectedInput, source: str, file: str, line0: int, col0: int, what: str
) -> SpecSyntaxError:
    line = line0 + (exc.line - 1 if exc.line and exc.line > 0 else 0)
    col = (col0 + exc.column - 1) if (exc.line in (1, -1, None) and exc.column and exc.column > 0) else (exc.column or 1)
    width = 1
    if isinstance(exc, UnexpectedToken):
        tok = exc.token
        if tok.type == "$END":
            msg = f"unexpected end of {what}"
            line, col = _end_position(source, line0, col0, what)
        elif (str(tok) == "{" or tok.type == "LINE" and str(tok).startswith("{")) and what == "statement":
            msg = "unclosed '{' in a key (a capture is written {name} with no line break inside)"
        else:
            msg = f"unexpected {_describe_token(tok, what)}"
            width = max(1, len(str(tok)))
        expected = _expected(exc.expected)
        if expected and not msg.startswith("unclosed"):
            msg += f"; expected {expected}"
    elif isinstance(exc, UnexpectedCharacters):
        ch = source_char(source, line, col)
        msg = f"unexpected character {ch!r}" if ch else "unexpected character"
        if what == "statement" and ch and ch not in "{}":
            msg += " (quote key text with other characters, e.g. \"a b\")"
    elif isinstance(exc, UnexpectedEOF):
        msg = f"unexpected end of {what}"
        line, col = _end_position(source, line0, col0, what)
    else:  # pragma: no cover - lark has no other UnexpectedInput kinds
        msg = str(exc)
    return SpecSyntaxError(msg, Span(file, line, col, line, col + width), source)


def _end_position(source: str, line0: int, col0: int, what: str) -> tuple[int, int]:
    if what != "statement":
        return line0, col0
    rows = lines(source.rstrip("\n"))
    return len(rows), len(rows[-1]) + 1


def source_char(source: str, line: int, col: int) -> str:
    rows = lines(source)
    if 1 <= line <= len(rows) and 1 <= col <= len(rows[line - 1]):
        return rows[line - 1][col - 1]
    return ""


def _describe_token(tok: Token, what: str) -> str:
    if tok.type == "KEY" and what == "statement":
        return f"key {tok!s}"
    return repr(str(tok))


def _expected(names) -> str:
    words = []
    for n in sorted(names):
        if n in _TERMINAL_NAMES:
            w = _TERMINAL_NAMES[n]
        else:
            w = _literal_of(n)
        if w and w not in words:
            words.append(w)
    if not words:
        return ""
    if len(words) == 1:
        return words[0]
    return ", ".join(words[:-1]) + " or " + words[-1]


def _literal_of(terminal: str) -> str:
    for term in parser().terminals:
        if term.name == terminal:
            if term.pattern.type == "str":
                return repr(term.pattern.value)
            return _TERMINAL_NAMES.get(terminal, terminal.lower())
    return terminal.lower()
