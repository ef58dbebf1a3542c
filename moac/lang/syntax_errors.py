"""Lark's parse failures in the words a user types: `']'`, `a name`, `end of file`.

Part of the parser stage (it reads lark's exceptions); :mod:`moac.lang.parser` calls
:func:`syntax_diagnostic` and nothing else here.
"""

from __future__ import annotations

import lark
from lark import Lark, Token
from lark.exceptions import UnexpectedCharacters, UnexpectedInput, UnexpectedToken

from moac.lang.diagnostics import Diagnostic, Span

_WORDS = {
    "NAME": "a name",
    "QUANTITY": "a number",
    "STRING": "a quoted string",
    "_NL": "a new line",
    "$END": "end of file",
    "COMMENT": "a comment",
}


def _describe_terminal(parser: Lark, name: str) -> str:
    if name in _WORDS:
        return _WORDS[name]
    try:
        pattern = parser.get_terminal(name).pattern
    except KeyError:
        return name.lower()
    if isinstance(pattern, lark.lexer.PatternStr):
        return f"'{pattern.value}'"
    return name.lower()


def _describe_token(token: Token) -> str:
    if token.type == "$END":
        return "end of file"
    if token.type == "_NL":
        return "a new line"
    value = str(token)
    if len(value) > 30:
        value = value[:27] + "..."
    return f"'{value}'"


def _expected_words(parser: Lark, names) -> str:
    words = sorted({_describe_terminal(parser, n) for n in names if n not in ("COMMENT",)},
                   key=lambda w: (not w.startswith("'"), w))
    if not words:
        return "nothing more"
    if len(words) == 1:
        return words[0]
    return ", ".join(words[:-1]) + " or " + words[-1]


def syntax_diagnostic(parser: Lark, error: UnexpectedInput, text: str, path: str) -> Diagnostic:
    if isinstance(error, UnexpectedCharacters):
        offset = error.pos_in_stream
        char = text[offset] if offset < len(text) else ""
        span = Span(error.line, error.column, error.line, error.column + 1, offset, offset + 1)
        if char == '"':
            if offset >= 2 and text.startswith('"""', offset - 2):
                # `"""` never closed: the lexer took its first two quotes for an empty string.
                return _unterminated_long(text, offset - 2, path)
            return Diagnostic("E005", "unterminated string", path, span, source=text,
                              hint='close it with " on the same line, or use """ for text '
                                   "over several lines")
        shown = repr(char)[1:-1] if not char.isprintable() else char
        return Diagnostic("E001", f"unexpected character '{shown}'", path, span, source=text,
                          hint=_hint_for_character(char))
    if isinstance(error, UnexpectedToken):
        token = error.token
        if token.type == "STRING" and str(token) == '""' and \
                text.startswith('"', token.end_pos or 0):
            return _unterminated_long(text, token.start_pos or 0, path)
        expected = _accepted(error)
        if token.type == "$END":
            line = text.count("\n") + 1
            column = len(text) - (text.rfind("\n") + 1) + 1
            span = Span(line, column, line, column + 1, len(text), len(text) + 1)
        else:
            span = token_span(token)
        message = f"unexpected {_describe_token(token)}; expected {_expected_words(parser, expected)}"
        return Diagnostic("E001", message, path, span, source=text,
                          hint=_hint_for_token(token, expected))
    line = getattr(error, "line", 1) or 1
    column = getattr(error, "column", 1) or 1
    return Diagnostic("E001", "syntax error", path, Span.point(max(line, 1), max(column, 1)),
                      source=text)


def _unterminated_long(text: str, offset: int, path: str) -> Diagnostic:
    line = text.count("\n", 0, offset) + 1
    column = offset - (text.rfind("\n", 0, offset) + 1) + 1
    return Diagnostic("E005", "unterminated string", path,
                      Span(line, column, line, column + 3, offset, offset + 3), source=text,
                      hint='close it with """')


def _accepted(error: UnexpectedToken) -> set[str]:
    # LALR merges states, so `expected` can list tokens that would fail a step later;
    # asking the interactive parser what it really accepts gives the honest set.
    try:
        accepted = set(error.interactive_parser.accepts())
    except Exception:  # noqa: BLE001 - fall back to the coarser set lark computed
        accepted = set()
    return accepted or set(error.expected or ())


def _hint_for_character(char: str) -> str | None:
    if char in ";":
        return "statements end at the end of a line; no ';' is needed"
    if char in "'":
        return 'strings are written in double quotes: "like this"'
    if char == ":":
        return "settings are written `key = value`"
    return None


# The keywords that begin a declaration or a pipeline statement (not `x` or `env`, which
# sit inside one): meeting one where a bracket should close means the bracket never did.
_STATEMENT_KEYWORDS = frozenset({"import", "provider", "model", "pipeline", "route", "judge", "budget", "planner", "from",
                       "layer", "aggregate", "fallback", "without"})


def _hint_for_token(token: Token, expected) -> str | None:
    # A keyword or a brace where a bracket should close: `[a, b` ran on to the next line.
    # (Keywords arrive as NAME where they are not expected: NAME is lexed everywhere.)
    if str(token) in _STATEMENT_KEYWORDS or token.type in ("LBRACE", "RBRACE"):
        for closer, shown in (("RSQB", "]"), ("RPAR", ")")):
            if closer in expected:
                return f"is a '{shown}' missing before it?"
    if "COMMA" in expected and token.type in ("NAME", "QUANTITY", "STRING"):
        return "is a ',' missing before it?"
    if token.type == "$END":
        for closer, opener in (("RSQB", "["), ("RPAR", "("), ("RBRACE", "{")):
            if closer in expected:
                return f"a '{opener}' is never closed"
    if token.type == "_NL" and "EQUAL" in expected:
        return "settings are written `key = value` on one line"
    return None


def token_span(token: Token) -> Span:
    end_line = token.end_line or token.line
    end_column = token.end_column or (token.column + max(len(token), 1))
    end = token.end_pos or 0
    if token.type == "_NL":
        # The token holds the blank and comment lines after the newline too: the span is
        # the line end alone.
        end_line, end_column = token.line, token.column + 1
        end = (token.start_pos or 0) + (2 if token.startswith("\r") else 1)
    return Span(token.line, token.column, end_line, end_column, token.start_pos or 0, end)


