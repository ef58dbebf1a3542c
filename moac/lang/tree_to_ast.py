"""The parser's reductions to :mod:`moac.lang.ast` nodes, and string-literal semantics.

Part of the parser stage. :class:`AstBuilder` is lark's *inline* transformer: each grammar
rule's method runs as the LALR parser reduces it and returns the AST node at once, so no
lark tree is ever built and walked (that, and lark's position propagation, cost about two
thirds of parsing). The parser keeps every token (``keep_all_tokens``), so each method sees
the rule's keywords and brackets too and takes its node's span from its first and last
child. Bad escapes are recorded as diagnostics instead of raised, so one run reports all.
"""

from __future__ import annotations

import re

from lark import Token

from moac.lang import ast
from moac.lang.diagnostics import Diagnostic, Span
from moac.lang.syntax_errors import token_span

_QUANTITY = re.compile(
    r"(?P<neg>-)?(?P<dollar>\$)?(?P<number>[0-9][0-9_]*(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?)"
    r"[ \t]*(?P<unit>.*)")
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", '"': '"', "\\": "\\"}
# A backslash and what it escapes; in a long string, a CRLF after it is one line end.
_ESCAPE = re.compile(r"\\(\r\n|[\s\S])")


def unquote(raw: str) -> tuple[str, int | None]:
    """The value of a string literal, and the offset of its first bad escape in ``raw``.

    Long strings (three quotes) drop one newline after the opening quotes and the common
    indentation of their lines, so prompts can be indented with the code around them; a
    backslash at the end of one of their lines joins it with the next. Linear in ``raw``.
    """
    long = raw.startswith('"""')
    prefix = 3 if long else 1
    body = raw[prefix:-prefix]
    bad: list[int] = []
    if "\\" in body:
        def escape(match: re.Match) -> str:
            escaped = match.group(1)
            if escaped in _ESCAPES:
                return _ESCAPES[escaped]
            if long and escaped in ("\n", "\r\n"):
                return ""
            if not bad:
                bad.append(match.start() + prefix)
            # A bad escape keeps what follows the backslash (`\q` reads as `q`); a CRLF
            # after a backslash in a short string cannot occur (the lexer ends it there).
            return escaped
        value = _ESCAPE.sub(escape, body)
    else:
        value = body
    if long:
        value = dedent_long_string(value)
    return value, bad[0] if bad else None


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


class _Part:
    """What a rule that is no node of its own gives its parent: a block's or an option
    list's settings, a layer's agents, a ``from`` base, a ``fallback`` agent."""

    __slots__ = ("value", "span")

    def __init__(self, value, span: Span):
        self.value = value
        self.span = span


def _span(children: list) -> Span:
    """From the first child's start to the last one's end (each a token or has a span)."""
    first, last = children[0], children[-1]
    if isinstance(first, Token):
        line, column, start = first.line, first.column, first.start_pos
    else:
        span = first.span
        line, column, start = span.line, span.column, span.start
    if isinstance(last, Token):
        end_line, end_column, end = last.end_line, last.end_column, last.end_pos
    else:
        span = last.span
        end_line, end_column, end = span.end_line, span.end_column, span.end
    return Span(line, column, end_line, end_column, start, end)


def _nodes(children: list) -> list:
    return [child for child in children if not isinstance(child, Token)]


def _ident(token: Token) -> ast.Ident:
    return ast.Ident(str(token), token_span(token))


class AstBuilder:
    """lark's inline transformer for the grammar: one method per rule, each given the
    rule's children (tokens included) and returning its node.

    One instance serves one parser; :meth:`reset` before each parse. ``diagnostics`` holds
    the bad escapes found, without path or source: the caller adds them.
    """

    def __init__(self) -> None:
        self.diagnostics: list[Diagnostic] = []

    def reset(self) -> None:
        self.diagnostics = []

    # tokens and values

    def _quantity(self, token: Token, tag: Token | None, span: Span) -> ast.Quantity:
        match = _QUANTITY.fullmatch(str(token))
        assert match is not None  # the terminal's pattern guarantees it
        return ast.Quantity(match["number"], match["unit"], bool(match["dollar"]),
                            bool(match["neg"]), _ident(tag) if tag is not None else None, span)

    def quantity(self, children):
        return self._quantity(children[0], children[1] if len(children) > 1 else None,
                              _span(children))

    def string(self, children):
        return self._string(children[0])

    def _string(self, token: Token) -> ast.String:
        raw = str(token)
        value, bad = unquote(raw)
        if bad is not None:
            # Where the escape is: counted inside the token only, so that a file of many
            # bad escapes costs no more than its length.
            newline = raw.rfind("\n", 0, bad)
            line = token.line + raw.count("\n", 0, bad)
            column = bad - newline if newline >= 0 else token.column + bad
            offset = token.start_pos + bad
            self.diagnostics.append(Diagnostic(
                "E004", f"unknown escape '\\{raw[bad + 1]}' in a string", "",
                Span(line, column, line, column + 2, offset, offset + 2),
                hint='write "\\\\" for a backslash; known escapes: \\n \\t \\r \\" \\\\'))
        return ast.String(value, token_span(token))

    def name(self, children):
        return ast.Name(str(children[0]), token_span(children[0]))

    def env(self, children):
        return ast.Env(_ident(children[1]), _span(children))

    def list(self, children):
        return ast.ListValue(tuple(_nodes(children)), _span(children))

    def setting(self, children):
        return ast.Setting(_ident(children[0]), tuple(children[2::2]), _span(children))

    option = setting

    def block(self, children):
        return _Part(tuple(_nodes(children)), _span(children))

    options = block

    # pipelines

    def copies(self, children):
        return self._quantity(children[1], None, _span(children))

    def agent(self, children):
        copies = None
        options: tuple = ()
        for child in children[1:]:
            if isinstance(child, ast.Quantity):
                copies = child
            else:
                options = child.value
        return ast.Agent(_ident(children[0]), copies, options, _span(children))

    agent_list = block

    def layer(self, children):
        agents = children[3]
        if isinstance(agents, ast.Agent):
            agents = _Part((agents,), agents.span)
        options = children[4].value if len(children) > 4 else ()
        return ast.Layer(_ident(children[1]), agents.value, options, _span(children),
                         agents.span)

    def fallback(self, children):
        return _Part(children[1], _span(children))

    def aggregate(self, children):
        fallback = children[2].value if len(children) > 2 else None
        return ast.Aggregate(children[1], fallback, _span(children))

    def without(self, children):
        return ast.Without(tuple(_ident(t) for t in children[1::2]), _span(children))

    def base(self, children):
        return _Part(_ident(children[1]), _span(children))

    def pipeline_decl(self, children):
        base = None
        stages = []
        for child in _nodes(children[2:]):
            if isinstance(child, _Part):
                base = child.value
            else:
                stages.append(child)
        return ast.Pipeline(_ident(children[1]), base, tuple(stages), _span(children))

    # top-level declarations

    def import_decl(self, children):
        return ast.Import(self._string(children[1]), _span(children))

    def provider_decl(self, children):
        return ast.Provider(_ident(children[1]), children[2].value, _span(children))

    def model_decl(self, children):
        settings = children[5].value if len(children) > 5 else ()
        return ast.Model(_ident(children[1]), _ident(children[3]), self._string(children[4]),
                         settings, _span(children))

    def route_decl(self, children):
        return ast.Route(_ident(children[1]), children[2].value, _span(children))

    def judge_decl(self, children):
        return ast.Judge(_ident(children[1]), children[2].value, _span(children))

    def budget_decl(self, children):
        return ast.Budget(children[1].value, _span(children))

    def planner_decl(self, children):
        return ast.PlannerBlock(children[1].value, _span(children))

    def start(self, children):
        return _nodes(children)
