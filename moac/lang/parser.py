"""Text to :class:`moac.lang.ast.Module`: read, decode, lex, parse, build the tree.

With :mod:`moac.lang.syntax_errors` and :mod:`moac.lang.tree_to_ast`, the only modules that import lark. The LALR parser is built once per process, from a cache
file under the user cache directory when one can be written (building it costs about 200 ms;
loading it about 2 ms). Every failure becomes a :class:`MoaSyntaxError` whose diagnostics
name what was expected in the words a user types.
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
import tempfile
from pathlib import Path
from typing import Iterator

import lark
from lark import Lark, Token
from lark.exceptions import UnexpectedInput, VisitError

from moac.lang import ast
from moac.constants import MAX_SOURCE_BYTES
from moac.lang.diagnostics import Diagnostic, MoaSyntaxError, Span
from moac.lang.syntax_errors import syntax_diagnostic
from moac.lang.tree_to_ast import TreeToAst

_OPENERS = {"LPAR", "LSQB"}
_CLOSERS = {"RPAR", "RSQB"}


def grammar_path() -> Path:
    """The shipped grammar: inside the package when installed, ``grammar/`` in a checkout."""
    package = Path(__file__).resolve().parents[1]         # moac/
    installed = package / "grammar" / "moa.lark"
    if installed.is_file():
        return installed
    return package.parent / "grammar" / "moa.lark"


class _Newlines:
    """Post-lexer: newlines end statements, except inside ``[]``/``()`` or after a comma.

    Runs of newlines (blank lines, comment lines) collapse into one token, so the grammar
    never needs ``_NL+``.
    """

    # NAME in every state keeps keywords whole words: `fallbackb` lexes as one name (and
    # is then rejected), never as `fallback` followed by `b`.
    always_accept = ("_NL", "NAME")

    def process(self, stream: Iterator[Token]) -> Iterator[Token]:
        depth = 0
        previous_type = None
        for token in stream:
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


def _cache_file(grammar_text: str) -> str | None:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    digest = hashlib.sha256(grammar_text.encode()).hexdigest()[:16]
    directory = os.path.join(base, "moac")
    try:
        os.makedirs(directory, exist_ok=True)
        probe = tempfile.NamedTemporaryFile(dir=directory, delete=True)
        probe.close()
    except OSError:
        return None
    return os.path.join(directory, f"parser-lark{lark.__version__}-{digest}.pickle")


def build_parser(*, cache: bool = True, strict: bool = False) -> Lark:
    """Build the LALR parser; with ``cache`` load or store it in the user cache directory."""
    text = grammar_path().read_text(encoding="utf-8")
    cache_file = _cache_file(text) if cache and not strict else None
    options = dict(
        parser="lalr",
        lexer="contextual",
        propagate_positions=True,
        maybe_placeholders=False,
        postlex=_Newlines(),
        start="start",
    )
    if strict:
        options["strict"] = True
    if cache_file:
        try:
            return Lark(text, cache=cache_file, **options)
        except OSError:
            pass
    return Lark(text, **options)


@functools.lru_cache(maxsize=1)
def get_parser() -> Lark:
    """The process-wide parser, built on first use."""
    return build_parser(cache=True)


# --- reading -----------------------------------------------------------------------------


def decode_source(data: bytes, path: str) -> str:
    """Bytes to text, or a :class:`MoaSyntaxError` that says which byte is wrong."""
    if len(data) > MAX_SOURCE_BYTES:
        raise MoaSyntaxError([Diagnostic(
            "E003", f"file is {len(data):,} bytes; .moa files are limited to "
            f"{MAX_SOURCE_BYTES:,} bytes", path, None,
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


def _byte_diagnostic(data: bytes, offset: int, path: str, message: str) -> Diagnostic:
    line = data.count(b"\n", 0, offset) + 1
    line_start = data.rfind(b"\n", 0, offset) + 1
    column = len(data[line_start:offset].decode("utf-8", "replace")) + 1
    shown = data[line_start:data.find(b"\n", offset) if b"\n" in data[offset:] else len(data)]
    source = "\n" * (line - 1) + shown.decode("utf-8", "replace").replace("\x00", " ")
    return Diagnostic("E002", message, path, Span.point(line, column, offset),
                      hint="save the file as UTF-8 text", source=source)


def read_file(path: str | os.PathLike) -> str:
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise MoaSyntaxError([Diagnostic("E006", "no such file", str(path), None)]) from None
    except IsADirectoryError:
        raise MoaSyntaxError([Diagnostic("E006", "is a directory, not a .moa file",
                                         str(path), None)]) from None
    except OSError as error:
        raise MoaSyntaxError([Diagnostic("E006", f"cannot read: {error.strerror}",
                                         str(path), None)]) from None
    return decode_source(data, str(path))


# --- parsing -----------------------------------------------------------------------------


def parse(text: str, path: str = "<string>") -> ast.Module:
    """Parse ``text`` into a module; raise :class:`MoaSyntaxError` with every problem found."""
    if len(text) > MAX_SOURCE_BYTES:
        return parse_bytes(text.encode("utf-8", "replace"), path)
    if "\x00" in text:
        return parse_bytes(text.encode("utf-8", "replace"), path)
    if text.startswith("\ufeff"):
        text = text[1:]  # a byte-order mark, as decode_source drops it from bytes
    parser = get_parser()
    try:
        tree = parser.parse(text)
    except UnexpectedInput as error:
        raise MoaSyntaxError([syntax_diagnostic(parser, error, text, path)]) from None
    builder = TreeToAst(path, text)
    try:
        items = builder.transform(tree)
    except VisitError as error:  # pragma: no cover - a bug in the builder, not the input
        raise error.orig_exc from None
    if builder.diagnostics:
        raise MoaSyntaxError(builder.diagnostics)
    module_comments = tuple(scan_comments(text))
    return ast.Module(path, tuple(items), module_comments, text)


def parse_bytes(data: bytes, path: str = "<bytes>") -> ast.Module:
    return parse(decode_source(data, path), path)


def parse_file(path: str | os.PathLike) -> ast.Module:
    return parse(read_file(path), str(path))


_COMMENT_OR_STRING = re.compile(
    r'"""(?:[^"\\]|\\[\s\S]|"(?!""))*"""|"(?:[^"\\\n]|\\.)*"|#[^\n]*')


def scan_comments(text: str) -> Iterator[ast.Comment]:
    """The comments of a text that parsed, skipping ``#`` inside strings.

    lark drops ignored tokens before the tree is built (and its lexer callbacks are fixed
    when the cached parser is built), so comments are found by a scan of their own.
    """
    for match in _COMMENT_OR_STRING.finditer(text):
        found = match.group()
        if found.startswith("#"):
            start = match.start()
            line = text.count("\n", 0, start) + 1
            column = start - (text.rfind("\n", 0, start) + 1) + 1
            yield ast.Comment(found.rstrip("\r"), Span(line, column, line,
                                                       column + len(found), start, match.end()))
