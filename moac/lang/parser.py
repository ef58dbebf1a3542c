"""Text to :class:`moac.lang.ast.Module`: read, decode, lex, parse, build the tree.

With :mod:`moac.lang.syntax_errors` and :mod:`moac.lang.tree_to_ast`, the only modules that
import lark. The LALR parser is built once per process, from a cache file under the user
cache directory when one can be written (building it costs about 200 ms; loading it about
2 ms). Every failure becomes a :class:`MoaSyntaxError` whose diagnostics name what was
expected in the words a user types.

Cost: every step is linear in the text, in time and memory. lark's LALR parser costs a few
microseconds a token, so besides :data:`~moac.constants.MAX_SOURCE_BYTES` a file is held to
:data:`~moac.constants.MAX_SOURCE_TOKENS` tokens (E003 at the token past the limit): 4 MiB of
one-letter names would otherwise take a quarter of a minute. Only regular files are read,
and never more than the byte limit and one byte.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import os
import re
import stat
import sys
import tempfile
import threading
from bisect import bisect_right
from pathlib import Path
from typing import Iterator

import lark
from lark import Lark, Token
from lark.exceptions import UnexpectedInput

from moac.lang import ast
from moac.constants import MAX_SOURCE_BYTES, MAX_SOURCE_TOKENS
from moac.lang.diagnostics import Diagnostic, MoaSyntaxError, Span
from moac.lang.syntax_errors import syntax_diagnostic, token_span
from moac.lang.tree_to_ast import AstBuilder
from moac.text import from_bytes

_OPENERS = {"LPAR", "LSQB"}
_CLOSERS = {"RPAR", "RSQB"}


def grammar_path() -> Path:
    """The shipped grammar: inside the package when installed, ``grammar/`` in a checkout."""
    package = Path(__file__).resolve().parents[1]         # moac/
    installed = package / "grammar" / "moa.lark"
    if installed.is_file():
        return installed
    return package.parent / "grammar" / "moa.lark"


def possessive(pattern: str) -> str:
    """``pattern`` as this Python's ``re`` takes it: possessive quantifiers (``*+``, 3.11 and
    later) are made greedy before 3.11, which matches the same texts (every possessive loop
    here is followed by a character it cannot take) with more memory."""
    if sys.version_info >= (3, 11):
        return pattern
    return pattern.replace("*+", "*")


class TooManyTokens(Exception):
    """Raised by the post-lexer at the first token past :data:`MAX_SOURCE_TOKENS`."""

    def __init__(self, token: Token):
        super().__init__(token)
        self.token = token


class _Newlines:
    """Post-lexer: newlines end statements, except inside ``[]``/``()`` or after a comma.

    A run of newlines (blank lines, comment lines) is one token already, and one that
    follows another or a comma is dropped, so the grammar never needs ``_NL+``. Counts the
    tokens, and stops the parse past :data:`MAX_SOURCE_TOKENS`.
    """

    # NAME in every state keeps keywords whole words: `fallbackb` lexes as one name (and
    # is then rejected), never as `fallback` followed by `b`.
    always_accept = ("_NL", "NAME")

    def process(self, stream: Iterator[Token]) -> Iterator[Token]:
        depth = 0
        previous_type = None
        for count, token in enumerate(stream, 1):
            if count > MAX_SOURCE_TOKENS:
                raise TooManyTokens(token)
            kind = token.type
            if kind == "_NL":
                if depth > 0 or previous_type in ("_NL", "COMMA", None):
                    # A newline at the very start still separates nothing: keep the first one
                    # only so the grammar's leading `_NL?` sees it.
                    if previous_type is None and depth == 0:
                        previous_type = "_NL"
                        yield token
                    continue
            elif kind in _OPENERS:
                depth += 1
            elif kind in _CLOSERS:
                depth = max(depth - 1, 0)
            previous_type = kind
            yield token


# What every parser is built with; part of the cache file's name, so that two versions of
# moac sharing a cache directory never load each other's parser.
_OPTIONS = dict(parser="lalr", lexer="contextual", propagate_positions=False,
                keep_all_tokens=True, maybe_placeholders=False, start="start")


def _cache_file(grammar_text: str) -> str | None:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    key = grammar_text + repr(sorted(_OPTIONS.items()))
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    directory = os.path.join(base, "moac")
    try:
        os.makedirs(directory, exist_ok=True)
        probe = tempfile.NamedTemporaryFile(dir=directory, delete=True)
        probe.close()
    except OSError:
        return None
    return os.path.join(directory, f"parser-lark{lark.__version__}-{digest}.pickle")


def build_parser(*, cache: bool = True, strict: bool = False) -> Lark:
    """Build the LALR parser; with ``cache`` load or store it in the user cache directory.

    Its ``parse`` gives the module's items as AST nodes (see :class:`AstBuilder`); use
    :func:`parse`, which also reports bad escapes, comments and the limits.
    """
    text = _grammar_text()
    cache_file = _cache_file(text) if cache and not strict else None
    options = dict(_OPTIONS, postlex=_Newlines(), transformer=AstBuilder())
    if strict:
        options["strict"] = True
    if cache_file:
        try:
            return Lark(text, cache=cache_file, **options)
        except OSError:
            pass
    return Lark(text, **options)


def _grammar_text() -> str:
    lines = grammar_path().read_text(encoding="utf-8").split("\n")
    return "\n".join(possessive(line) if line.startswith(("STRING:", "_NL:")) else line
                     for line in lines)


@functools.lru_cache(maxsize=1)
def get_parser() -> Lark:
    """The process-wide parser, built on first use."""
    return build_parser(cache=True)


# --- reading -----------------------------------------------------------------------------


def decode_source(data: bytes, path: str, size: int | None = None) -> str:
    """Bytes to text, or a :class:`MoaSyntaxError` that says which byte is wrong.

    ``size`` is the whole file's size when ``data`` may be only its start (a file is read
    up to the limit and one byte); None: ``data`` is all of it, unless it passes the limit.
    """
    if len(data) > MAX_SOURCE_BYTES:
        said = f"{size:,} bytes" if size is not None else f"more than {MAX_SOURCE_BYTES:,} bytes"
        raise MoaSyntaxError([_byte_diagnostic(
            data, MAX_SOURCE_BYTES, path, f"file is {said}; .moa files are limited to "
            f"{MAX_SOURCE_BYTES:,} bytes (the limit is passed here)", code="E003",
            hint="split the file and use `import`")])
    nul = data.find(b"\x00")
    if nul >= 0:
        raise MoaSyntaxError([_byte_diagnostic(data, nul, path, "file contains a NUL byte: "
                                               "this looks like a binary file, not .moa text")])
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise MoaSyntaxError([_byte_diagnostic(
            data, error.start, path, f"invalid UTF-8 byte 0x{data[error.start]:02x}")]) from None
    return text[1:] if text.startswith("\ufeff") else text


def _byte_diagnostic(data: bytes, offset: int, path: str, message: str, *, code: str = "E002",
                     hint: str = "save the file as UTF-8 text") -> Diagnostic:
    """A diagnostic at byte ``offset`` of ``data``, which need not decode: its source is the
    line it is on (decoded with U+FFFD for what does not), at that line's number."""
    line = data.count(b"\n", 0, offset) + 1
    line_start = data.rfind(b"\n", 0, offset) + 1
    line_end = data.find(b"\n", offset)
    column = len(from_bytes(data[line_start:offset])) + 1
    shown = from_bytes(data[line_start:line_end if line_end >= 0 else len(data)])
    source = "\n" * (line - 1) + shown.replace("\x00", " ")
    return Diagnostic(code, message, path, Span.point(line, column, offset), hint=hint,
                      source=source)


def read_source_bytes(path: str | os.PathLike) -> tuple[bytes, int]:
    """The start of a file (up to the limit and one byte) and its size, or a
    :class:`MoaSyntaxError` (E006) saying why it cannot be read. Only a regular file is
    opened: a directory, a device (``/dev/zero``), a pipe or a socket is refused."""
    shown = str(path)
    try:
        info = os.stat(path)
        if stat.S_ISDIR(info.st_mode):
            raise IsADirectoryError
        if not stat.S_ISREG(info.st_mode):
            raise MoaSyntaxError([Diagnostic(
                "E006", f"is {_kind_of(info.st_mode)}, not a .moa file", shown, None)])
        with open(path, "rb") as handle:
            data = handle.read(MAX_SOURCE_BYTES + 1)
    except FileNotFoundError:
        raise MoaSyntaxError([Diagnostic("E006", "no such file", shown, None)]) from None
    except IsADirectoryError:
        raise MoaSyntaxError([Diagnostic("E006", "is a directory, not a .moa file",
                                         shown, None)]) from None
    except OSError as error:
        raise MoaSyntaxError([Diagnostic("E006", f"cannot read: {error.strerror or error}",
                                         shown, None)]) from None
    except ValueError:  # a NUL in the path
        raise MoaSyntaxError([Diagnostic("E006", "cannot read: the path holds a NUL character",
                                         shown.replace("\x00", "\\0"), None)]) from None
    return data, max(info.st_size, len(data))


def _kind_of(mode: int) -> str:
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device, not a regular file"
    if stat.S_ISFIFO(mode):
        return "a named pipe, not a regular file"
    if stat.S_ISSOCK(mode):
        return "a socket, not a regular file"
    return "not a regular file"


def read_file(path: str | os.PathLike) -> str:
    data, size = read_source_bytes(path)
    return decode_source(data, str(path), size)


# --- parsing -----------------------------------------------------------------------------

# The parser's builder holds the diagnostics of the parse in progress: one parse at a time.
_PARSING = threading.Lock()


def parse(text: str, path: str = "<string>") -> ast.Module:
    """Parse ``text`` into a module; raise :class:`MoaSyntaxError` with every problem found."""
    if len(text) > MAX_SOURCE_BYTES or "\x00" in text:
        return parse_bytes(text.encode("utf-8", "replace"), path)
    if text.startswith("\ufeff"):
        text = text[1:]  # a byte-order mark, as decode_source drops it from bytes
    parser = get_parser()
    builder: AstBuilder = parser.options.transformer
    with _PARSING:
        builder.reset()
        try:
            items = parser.parse(text)
        except UnexpectedInput as error:
            raise MoaSyntaxError([syntax_diagnostic(parser, error, text, path)]) from None
        except TooManyTokens as error:
            raise MoaSyntaxError([too_many_tokens(error.token, text, path)]) from None
        bad_escapes = builder.diagnostics
    if bad_escapes:
        raise MoaSyntaxError([dataclasses.replace(d, path=path, source=text)
                              for d in bad_escapes])
    return ast.Module(path, tuple(items), tuple(scan_comments(text)), text)


def too_many_tokens(token: Token, text: str, path: str) -> Diagnostic:
    return Diagnostic(
        "E003", f"file has more than {MAX_SOURCE_TOKENS:,} tokens (names, numbers, strings "
        f"and symbols); .moa files are limited to {MAX_SOURCE_TOKENS:,} (the limit is passed "
        "here)", path, token_span(token), source=text, hint="split the file and use `import`")


def parse_bytes(data: bytes, path: str = "<bytes>") -> ast.Module:
    return parse(decode_source(data, path), path)


def parse_file(path: str | os.PathLike) -> ast.Module:
    return parse(read_file(path), str(path))


_COMMENT_OR_STRING = re.compile(possessive(
    r'"""[^"\\]*+(?:(?:\\[\s\S]|"(?!""))[^"\\]*+)*+"""|"[^"\\\n]*+(?:\\.[^"\\\n]*+)*+"'
    r"|#[^\n]*"))


def line_starts(text: str) -> list[int]:
    """The offset at which each line of ``text`` starts (line 1 at 0)."""
    starts = [0]
    starts.extend(match.end() for match in re.finditer("\n", text))
    return starts


def scan_comments(text: str) -> Iterator[ast.Comment]:
    """The comments of a text that parsed, skipping ``#`` inside strings.

    lark's lexer folds comment lines into newline tokens and drops the other comments, so
    they are found by a scan of their own, in one pass: each comment's line is looked up
    in a table of line starts.
    """
    starts: list[int] | None = None
    for match in _COMMENT_OR_STRING.finditer(text):
        found = match.group()
        if found.startswith("#"):
            if starts is None:
                starts = line_starts(text)
            start = match.start()
            line = bisect_right(starts, start)
            column = start - starts[line - 1] + 1
            yield ast.Comment(found.rstrip("\r"), Span(line, column, line,
                                                       column + len(found), start, match.end()))
