"""Text to :class:`moac.ast.Module`: read, decode, lex, parse, build the tree.

The only module that imports lark. The LALR parser is built once per process, from a cache
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
from lark import Lark, Token, Transformer, v_args
from lark.exceptions import UnexpectedCharacters, UnexpectedInput, UnexpectedToken, VisitError

from moac import ast
from moac.constants import MAX_SOURCE_BYTES
from moac.diagnostics import Diagnostic, MoaSyntaxError, Span

_OPENERS = {"LPAR", "LSQB"}
_CLOSERS = {"RPAR", "RSQB"}


def grammar_path() -> Path:
    """The shipped grammar: inside the package when installed, ``grammar/`` in a checkout."""
    installed = Path(__file__).parent / "grammar" / "moa.lark"
    if installed.is_file():
        return installed
    return Path(__file__).parent.parent / "grammar" / "moa.lark"


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
        raise MoaSyntaxError([_syntax_diagnostic(parser, error, text, path)]) from None
    builder = _Builder(path, text)
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


# --- errors --------------------------------------------------------------------------------

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


def _syntax_diagnostic(parser: Lark, error: UnexpectedInput, text: str, path: str) -> Diagnostic:
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
            span = _token_span(token)
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


_KEYWORDS = frozenset({"import", "provider", "model", "pipeline", "route", "budget", "from",
                       "layer", "aggregate", "fallback", "without"})


def _hint_for_token(token: Token, expected) -> str | None:
    # A keyword or a brace where a bracket should close: `[a, b` ran on to the next line.
    # (Keywords arrive as NAME where they are not expected: NAME is lexed everywhere.)
    if str(token) in _KEYWORDS or token.type in ("LBRACE", "RBRACE"):
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


def _token_span(token: Token) -> Span:
    end_line = token.end_line or token.line
    end_column = token.end_column or (token.column + max(len(token), 1))
    if token.type == "_NL":
        end_line, end_column = token.line, token.column + 1
    return Span(token.line, token.column, end_line, end_column,
                token.start_pos or 0, token.end_pos or 0)


# --- tree to AST -----------------------------------------------------------------------

_QUANTITY = re.compile(
    r"(?P<neg>-)?(?P<dollar>\$)?(?P<number>[0-9][0-9_]*(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?)"
    r"[ \t]*(?P<unit>.*)")
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", '"': '"', "\\": "\\"}


def _meta_span(meta) -> Span:
    if getattr(meta, "empty", True):
        return ast.NO_SPAN
    return Span(meta.line, meta.column, meta.end_line, meta.end_column,
                meta.start_pos, meta.end_pos)


def unquote(raw: str) -> tuple[str, int | None]:
    """The value of a string literal, and the offset of a bad escape in ``raw`` if any.

    Long strings (three quotes) drop one newline after the opening quotes and the common
    indentation of their lines, so prompts can be indented with the code around them.
    """
    long = raw.startswith('"""')
    body = raw[3:-3] if long else raw[1:-1]
    out: list[str] = []
    i = 0
    bad = None
    while i < len(body):
        char = body[i]
        if char == "\\" and i + 1 < len(body):
            nxt = body[i + 1]
            if nxt in _ESCAPES:
                out.append(_ESCAPES[nxt])
            elif long and nxt == "\n":
                pass  # a backslash at the end of a line joins it with the next
            elif long and nxt == "\r" and body.startswith("\n", i + 2):
                i += 3  # the same at the end of a CRLF line
                continue
            else:
                bad = bad if bad is not None else i + (3 if long else 1)
                out.append(nxt)
            i += 2
            continue
        out.append(char)
        i += 1
    value = "".join(out)
    if long:
        value = dedent_long_string(value)
    return value, bad


def dedent_long_string(value: str) -> str:
    if value.startswith("\n"):
        value = value[1:]
    elif value.startswith("\r\n"):
        value = value[2:]
    value = value.replace("\r\n", "\n")
    lines = value.split("\n")
    if len(lines) > 1 and lines[-1].strip(" \t") == "":
        lines = lines[:-1]
    indents = [len(line) - len(line.lstrip(" \t")) for line in lines if line.strip(" \t")]
    cut = min(indents) if indents else 0
    lines = [line[cut:] if line.strip(" \t") else line.lstrip(" \t") for line in lines]
    return "\n".join(lines)


class _Builder(Transformer):
    """Lark tree to frozen AST nodes. Records bad escapes instead of raising."""

    def __init__(self, path: str, text: str):
        super().__init__()
        self.path = path
        self.text = text
        self.diagnostics: list[Diagnostic] = []

    # tokens and values

    def _ident(self, token: Token) -> ast.Ident:
        return ast.Ident(str(token), _token_span(token))

    @v_args(meta=True)
    def quantity(self, meta, children):
        token = children[0]
        match = _QUANTITY.fullmatch(str(token))
        assert match is not None  # the terminal's pattern guarantees it
        tag = self._ident(children[1]) if len(children) > 1 else None
        return ast.Quantity(match["number"], match["unit"], bool(match["dollar"]),
                            bool(match["neg"]), tag, _meta_span(meta))

    @v_args(meta=True)
    def string(self, meta, children):
        return self._string(children[0])

    def _string(self, token: Token) -> ast.String:
        value, bad = unquote(str(token))
        if bad is not None:
            offset = token.start_pos + bad
            line = self.text.count("\n", 0, offset) + 1
            column = offset - (self.text.rfind("\n", 0, offset) + 1) + 1
            self.diagnostics.append(Diagnostic(
                "E004", f"unknown escape '\\{self.text[offset + 1]}' in a string", self.path,
                Span(line, column, line, column + 2, offset, offset + 2), source=self.text,
                hint='write "\\\\" for a backslash; known escapes: \\n \\t \\r \\" \\\\'))
        return ast.String(value, _token_span(token))

    @v_args(meta=True)
    def name(self, meta, children):
        return ast.Name(str(children[0]), _token_span(children[0]))

    @v_args(meta=True)
    def env(self, meta, children):
        return ast.Env(self._ident(children[0]), _meta_span(meta))

    @v_args(meta=True)
    def list(self, meta, children):
        return ast.ListValue(tuple(children), _meta_span(meta))

    @v_args(meta=True)
    def setting(self, meta, children):
        return ast.Setting(self._ident(children[0]), tuple(children[1:]), _meta_span(meta))

    option = setting

    @v_args(meta=True)
    def block(self, meta, children):
        return tuple(children)

    @v_args(meta=True)
    def options(self, meta, children):
        return tuple(children)

    # pipelines

    @v_args(meta=True)
    def copies(self, meta, children):
        return children[0] if isinstance(children[0], ast.Quantity) else self.quantity(
            meta, children)

    @v_args(meta=True)
    def agent(self, meta, children):
        model = self._ident(children[0])
        copies = None
        options: tuple = ()
        for child in children[1:]:
            if isinstance(child, ast.Quantity):
                copies = child
            elif isinstance(child, tuple):
                options = child
        return ast.Agent(model, copies, options, _meta_span(meta))

    @v_args(meta=True)
    def agent_list(self, meta, children):
        return (tuple(children), _meta_span(meta))

    @v_args(meta=True)
    def layer(self, meta, children):
        if isinstance(children[1], ast.Agent):
            agents, agents_span = (children[1],), children[1].span
        else:
            agents, agents_span = children[1]
        options = children[2] if len(children) > 2 else ()
        return ast.Layer(self._ident(children[0]), agents, options, _meta_span(meta),
                         agents_span)

    @v_args(meta=True)
    def fallback(self, meta, children):
        return ("fallback", children[0])

    @v_args(meta=True)
    def aggregate(self, meta, children):
        fallback = children[1][1] if len(children) > 1 else None
        return ast.Aggregate(children[0], fallback, _meta_span(meta))

    @v_args(meta=True)
    def without(self, meta, children):
        return ast.Without(tuple(self._ident(t) for t in children), _meta_span(meta))

    @v_args(meta=True)
    def base(self, meta, children):
        return ("base", self._ident(children[0]))

    @v_args(meta=True)
    def pipeline_decl(self, meta, children):
        base = None
        stages = []
        for child in children[1:]:
            if isinstance(child, tuple) and child and child[0] == "base":
                base = child[1]
            else:
                stages.append(child)
        return ast.Pipeline(self._ident(children[0]), base, tuple(stages), _meta_span(meta))

    # top-level declarations

    @v_args(meta=True)
    def import_decl(self, meta, children):
        return ast.Import(self._string(children[0]), _meta_span(meta))

    @v_args(meta=True)
    def provider_decl(self, meta, children):
        return ast.Provider(self._ident(children[0]), children[1], _meta_span(meta))

    @v_args(meta=True)
    def model_decl(self, meta, children):
        settings = children[3] if len(children) > 3 else ()
        return ast.Model(self._ident(children[0]), self._ident(children[1]),
                         self._string(children[2]), settings, _meta_span(meta))

    @v_args(meta=True)
    def route_decl(self, meta, children):
        return ast.Route(self._ident(children[0]), children[1], _meta_span(meta))

    @v_args(meta=True)
    def budget_decl(self, meta, children):
        return ast.Budget(children[0], _meta_span(meta))

    def start(self, children):
        return children
