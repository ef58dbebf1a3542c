"""The canonical layout of a ``.moa`` file, as written by ``moac fmt``.

Contract, for every module ``m`` the parser can produce and every text ``t`` that parses:

* ``parse(format_module(m)) == m`` (equality ignores spans and comments): formatting never
  changes what a file means;
* ``format_source(format_source(t)) == format_source(t)``: formatting is idempotent;
* no comment is dropped or altered: the output has the same comment texts, in the same order.

Layout: items apart by one blank line (consecutive imports stay together); blocks indented two
spaces, one statement a line, ``{}`` for an empty one (a model with no settings has no
braces, unless a comment sits inside them); in a pipeline, one blank line between
the leading settings and the first other stage. A line over ``WIDTH`` characters breaks its
bracketed lists (agents, options, list values) one element a line with a trailing comma.
A string with a newline is written as an indented long string when that reads back exactly.

Comments: an own-line comment leads the next statement at its level; a comment after code stays
at the end of that line; comments after a block's last statement stay before its ``}``; those
after the last item stay at the end of the file; comments inside a multi-line statement lead
that statement. Outside blocks, a blank line the source had inside a run of comments, or
between the run and its item, is kept (so a file's header comment stays apart).
"""

from __future__ import annotations

import re
from bisect import bisect_right
from dataclasses import dataclass, field

from moac.lang import ast
from moac.lang.parser import parse, possessive
from moac.lang.tree_to_ast import unquote

WIDTH = 100
STEP = "  "
# The long alternative of the grammar's STRING terminal: a candidate must lex as one token.
_LONG_STRING = re.compile(possessive(r'"""[^"\\]*+(?:(?:\\[\s\S]|"(?!""))[^"\\]*+)*+"""'))
_QUOTE_RUN = re.compile('"{3,}')


def format_source(text: str, path: str = "<string>") -> str:
    """Parse ``text`` and format it; a :class:`MoaSyntaxError` propagates unchanged."""
    return format_module(parse(text, path))


def format_module(module: ast.Module) -> str:
    """The canonical text of ``module``, comments placed from their spans in its source."""
    notes = _attach(module)
    out: list[str] = []
    previous = None
    for item in module.items:
        if previous is not None and not (isinstance(previous, ast.Import)
                                         and isinstance(item, ast.Import)):
            out.append("")
        _comment_run(out, notes.leading.get(id(item), []), notes, first_blank=False)
        if notes.leading.get(id(item)) and id(item) in notes.blank_above:
            out.append("")
        _item(out, item, notes)
        previous = item
    _comment_run(out, notes.end, notes, first_blank=bool(out))
    return "\n".join(out) + "\n" if out else ""


# --- strings and values --------------------------------------------------------------------


def string_literal(value: str, indent: str = "") -> str:
    """``value`` as a literal on a line indented ``indent``: long form if it has a newline and
    reads back exactly (``unquote`` drops common indentation and blank-line whitespace), else
    the short form with escapes."""
    if "\n" in value:
        lines = _long_body(value).split("\n")
        inner = indent + STEP
        candidate = ('"""\n' + "\n".join(inner + line if line else "" for line in lines)
                     + "\n" + indent + '"""')
        if _LONG_STRING.fullmatch(candidate) and unquote(candidate) == (value, None):
            return candidate
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return '"' + escaped.replace("\t", "\\t").replace("\r", "\\r") + '"'


def _long_body(value: str) -> str:
    # Three raw quotes in a row would close the string: escape every third one. A raw CR
    # would be taken for part of a line ending, so it is escaped too.
    value = value.replace("\\", "\\\\").replace("\r", "\\r")
    if '"""' not in value:
        return value
    return _QUOTE_RUN.sub(lambda run: '""\\"' * (len(run.group()) // 3)
                          + '"' * (len(run.group()) % 3), value)


@dataclass(frozen=True)
class _Str:
    """A string literal, rendered late: its long form depends on the line's indent."""

    value: str


@dataclass(frozen=True)
class _Group:
    """A bracketed, comma-separated sequence: kept on one line, or one item a line."""

    open: str
    items: tuple
    close: str


def _scalar(value: ast.Value):
    if isinstance(value, ast.Quantity):
        return value.text() + (" " + value.tag.name if value.tag else "")
    if isinstance(value, ast.String):
        return _Str(value.value)
    if isinstance(value, ast.Name):
        return value.name
    if isinstance(value, ast.Env):
        return "env " + value.var.name
    return _Group("[", tuple([_scalar(item)] for item in value.items), "]")


def _setting(setting: ast.Setting) -> list:
    parts: list = [setting.key.name, " = "]
    for index, value in enumerate(setting.values):
        parts += [", ", _scalar(value)] if index else [_scalar(value)]
    return parts


def _options(options: tuple[ast.Setting, ...]) -> list:
    return [" ", _Group("(", tuple(_setting(o) for o in options), ")")] if options else []


def _agent(agent: ast.Agent) -> list:
    copies = [" x " + agent.copies.text()] if agent.copies is not None else []
    return [agent.model.name, *copies, *_options(agent.options)]


def _stage(stage: ast.Stage) -> list:
    if isinstance(stage, ast.Setting):
        return _setting(stage)
    if isinstance(stage, ast.Layer):
        head = ["layer ", stage.name.name, " = "]
        # Options after a bare agent belong to the agent, so the bare form is only for a
        # single agent with no layer options; everything else keeps its brackets.
        if len(stage.agents) == 1 and not stage.options:
            return head + _agent(stage.agents[0])
        agents = _Group("[", tuple(_agent(a) for a in stage.agents), "]")
        return head + [agents] + _options(stage.options)
    if isinstance(stage, ast.Aggregate):
        fallback = [" fallback ", *_agent(stage.fallback)] if stage.fallback else []
        return ["aggregate ", *_agent(stage.agent), *fallback]
    return ["without " + ", ".join(layer.name for layer in stage.layers)]


# --- line breaking -----------------------------------------------------------------------


def _flat(parts: list, indent: str) -> str:
    text = []
    for part in parts:
        if isinstance(part, str):
            text.append(part)
        elif isinstance(part, _Str):
            text.append(string_literal(part.value, indent))
        else:
            text.append(part.open + ", ".join(_flat(i, indent) for i in part.items) + part.close)
    return "".join(text)


def _layout(parts: list, indent: str) -> list[str]:
    """The lines of one statement starting at ``indent``."""
    lines = [indent]
    _place(parts, indent, lines)
    return lines


def _place(parts: list, indent: str, lines: list[str]) -> None:
    for index, part in enumerate(parts):
        text = _flat([part], indent)
        if isinstance(part, _Group) and part.items:
            # What must share the line with this group: the text up to the next group's
            # bracket, which could itself break.
            rest = []
            for after in parts[index + 1:]:
                if isinstance(after, _Group) and after.items:
                    rest.append(after.open)
                    break
                rest.append(after)
            tail = _flat(rest, indent).split("\n")[0]
            if "\n" in text or len(lines[-1]) + len(text) + len(tail) > WIDTH:
                lines[-1] += part.open
                for item in part.items:
                    lines.append(indent + STEP)
                    _place([*item, ","], indent + STEP, lines)
                lines.append(indent + part.close)
                continue
        first, *more = text.split("\n")
        lines[-1] += first
        lines.extend(more)


# --- comments --------------------------------------------------------------------------


@dataclass
class _Notes:
    """Comments by the node (``id``) they go with. See the module docstring for the rules."""

    leading: dict = field(default_factory=dict)
    trailing: dict = field(default_factory=dict)
    header: dict = field(default_factory=dict)  # after a block's `{`
    close: dict = field(default_factory=dict)  # before a block's `}`
    end: list = field(default_factory=list)
    blank_above: set = field(default_factory=set)  # top-level comments and items


def _inner(item: ast.Item) -> tuple:
    return item.stages if isinstance(item, ast.Pipeline) else getattr(item, "settings", ())


def _locate(nodes: tuple, starts: dict, offset: int):
    """The node whose span holds ``offset``, else ``(None, node before, node after)``.

    ``starts`` caches each tuple's start offsets, so placing every comment stays n log n.
    """
    if id(nodes) not in starts:
        starts[id(nodes)] = [n.span.start for n in nodes]
    index = bisect_right(starts[id(nodes)], offset) - 1
    if index >= 0 and offset < nodes[index].span.end:
        return nodes[index], None, None
    after = nodes[index + 1] if index + 1 < len(nodes) else None
    return None, nodes[index] if index >= 0 else None, after


def _attach(module: ast.Module) -> _Notes:
    notes = _Notes()
    source = module.source
    starts: dict = {}
    last_end = 0  # end of the previous comment or item, for blank lines at the top level
    for comment in module.comments:
        start = comment.span.start
        if source[start:start + len(comment.text)] != comment.text:
            notes.end.append(comment)  # no source to place it by: keep it, at the end
            continue
        code_before = source[source.rfind("\n", 0, start) + 1:start].strip(" \t\f\r") != ""
        item, before, after = _locate(module.items, starts, start)
        if item is None:
            if code_before and before is not None:
                notes.trailing[id(before)] = comment
            else:
                last_end = max(last_end, before.span.end if before else 0)
                if source[last_end:start].count("\n") >= 2:
                    notes.blank_above.add(id(comment))
                target = notes.leading.setdefault(id(after), []) if after else notes.end
                target.append(comment)
            last_end = comment.span.end
            continue
        statement, before, after = _locate(_inner(item), starts, start)
        if statement is not None:  # inside a multi-line statement
            notes.leading.setdefault(id(statement), []).append(comment)
        elif code_before and before is not None and "\n" not in source[before.span.end:start]:
            notes.trailing[id(before)] = comment
        elif isinstance(item, ast.Import):  # one line, so never; but never drop a comment
            notes.leading.setdefault(id(item), []).append(comment)
        elif code_before and before is None:
            notes.header[id(item)] = comment
        elif after is not None:
            notes.leading.setdefault(id(after), []).append(comment)
        else:
            notes.close.setdefault(id(item), []).append(comment)
    for item in module.items:
        leading = notes.leading.get(id(item))
        if leading and source[leading[-1].span.end:item.span.start].count("\n") >= 2:
            notes.blank_above.add(id(item))
    return notes


def _comment_run(out: list[str], comments: list, notes: _Notes, first_blank: bool) -> None:
    for index, comment in enumerate(comments):
        if (first_blank if index == 0 else id(comment) in notes.blank_above):
            out.append("")
        out.append(comment.text)


# --- statements and items ------------------------------------------------------------------


def _statement(out: list[str], node, parts: list, indent: str, notes: _Notes) -> None:
    """One statement and its trailing comment (its leading ones are the caller's)."""
    lines = _layout(parts, indent)
    if id(node) in notes.trailing:
        lines[-1] += "  " + notes.trailing[id(node)].text
    out.extend(lines)


def _item(out: list[str], item: ast.Item, notes: _Notes) -> None:
    if isinstance(item, ast.Import):
        return _statement(out, item, ["import ", _Str(item.path.value)], "", notes)
    if isinstance(item, ast.Provider):
        head = ["provider ", item.name.name]
    elif isinstance(item, ast.Model):
        head = ["model ", item.name.name, " = ", item.provider.name, " ",
                _Str(item.model_id.value)]
        if not (item.settings or id(item) in notes.header or id(item) in notes.close):
            return _statement(out, item, head, "", notes)  # `{}` and no block read the same
    elif isinstance(item, ast.Pipeline):
        head = ["pipeline ", item.name.name]
        head += [" from ", item.base.name] if item.base else []
    elif isinstance(item, ast.Route):
        head = ["route ", item.name.name]
    elif isinstance(item, ast.Judge):
        head = ["judge ", item.name.name]
    elif isinstance(item, ast.PlannerBlock):
        head = ["planner"]
    else:
        head = ["budget"]
    statements = _inner(item)
    close = notes.close.get(id(item), [])
    if not (statements or close or id(item) in notes.header):
        return _statement(out, item, head + [" {}"], "", notes)
    lines = _layout(head + [" {"], "")
    if id(item) in notes.header:
        lines[-1] += "  " + notes.header[id(item)].text
    out.extend(lines)
    kinds = [isinstance(s, ast.Setting) for s in statements]
    split = kinds.index(False) if isinstance(item, ast.Pipeline) and False in kinds else 0
    for index, statement in enumerate(statements):
        if index and index == split:
            out.append("")  # between a pipeline's leading settings and its first stage
        out.extend(STEP + c.text for c in notes.leading.get(id(statement), ()))
        _statement(out, statement, _stage(statement), STEP, notes)
    out.extend(STEP + c.text for c in close)
    out.append("}" + ("  " + notes.trailing[id(item)].text if id(item) in notes.trailing else ""))
