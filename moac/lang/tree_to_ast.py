"""The lark parse tree to :mod:`moac.lang.ast` nodes, and string-literal semantics.

Part of the parser stage. :class:`TreeToAst` records bad escapes as diagnostics instead of
raising, so one run reports all of them.
"""

from __future__ import annotations

import re

from lark import Token, Transformer, v_args

from moac.lang import ast
from moac.lang.diagnostics import Diagnostic, Span
from moac.lang.syntax_errors import token_span

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


class TreeToAst(Transformer):
    """Lark tree to frozen AST nodes. Records bad escapes instead of raising."""

    def __init__(self, path: str, text: str):
        super().__init__()
        self.path = path
        self.text = text
        self.diagnostics: list[Diagnostic] = []

    # tokens and values

    def _ident(self, token: Token) -> ast.Ident:
        return ast.Ident(str(token), token_span(token))

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
        return ast.String(value, token_span(token))

    @v_args(meta=True)
    def name(self, meta, children):
        return ast.Name(str(children[0]), token_span(children[0]))

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
    def judge_decl(self, meta, children):
        return ast.Judge(self._ident(children[0]), children[1], _meta_span(meta))

    @v_args(meta=True)
    def budget_decl(self, meta, children):
        return ast.Budget(children[0], _meta_span(meta))

    @v_args(meta=True)
    def planner_decl(self, meta, children):
        return ast.PlannerBlock(children[0], _meta_span(meta))

    def start(self, children):
        return children
