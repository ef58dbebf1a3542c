"""Source spans, diagnostics and the two compile-error classes.

A :class:`Diagnostic` is what the user sees: ``path:line:col: error[CODE]: message``, then
the source line with a caret under the span, then an optional hint. Syntax errors (the text
does not parse) and semantic errors (it parses but means something wrong) are separate
exception classes, as in Jinja2, and both carry every diagnostic found, never just the first.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Literal

Severity = Literal["error", "warning"]


@dataclass(frozen=True)
class Span:
    """A region of one source text. Lines and columns count from 1; offsets from 0.

    ``end_column`` is exclusive, so a one-character span has ``end_column == column + 1``.
    """

    line: int
    column: int
    end_line: int
    end_column: int
    start: int = 0
    end: int = 0

    @classmethod
    def point(cls, line: int, column: int, offset: int = 0) -> "Span":
        return cls(line, column, line, column + 1, offset, offset + 1)

    def contains(self, other: "Span") -> bool:
        return self.start <= other.start and other.end <= self.end


@dataclass(frozen=True)
class Diagnostic:
    code: str
    message: str
    path: str
    span: Span | None
    hint: str | None = None
    severity: Severity = "error"
    # The text the span points into; kept so that rendering needs no file access.
    source: str | None = field(default=None, repr=False, compare=False)
    # The span may hold a secret (a key pasted where an env var belongs): never print it.
    redact: bool = False

    def headline(self) -> str:
        where = self.path
        if self.span is not None:
            where = f"{self.path}:{self.span.line}:{self.span.column}"
        return f"{where}: {self.severity}[{self.code}]: {self.message}"

    def render(self) -> str:
        """The diagnostic as printed by ``moac check``: headline, source line, caret, hint."""
        lines = [self.headline()]
        excerpt = self._excerpt()
        if excerpt:
            lines.extend(excerpt)
        if self.hint:
            lines.append(f"  = hint: {self.hint}")
        return "\n".join(lines)

    def _excerpt(self) -> list[str]:
        if self.span is None or self.source is None:
            return []
        source_lines = self.source.split("\n")
        if not 1 <= self.span.line <= len(source_lines):
            return []
        text = source_lines[self.span.line - 1].rstrip("\r")
        if self.redact and self.span.end_line == self.span.line:
            start, end = self.span.column - 1, self.span.end_column - 1
            text = text[:start] + "*" * (end - start) + text[end:]
        # Tabs would shift the caret; show them as single spaces.
        text = text.replace("\t", " ")
        gutter = f"{self.span.line:>4} | "
        start = max(self.span.column - 1, 0)
        if self.span.end_line == self.span.line:
            width = max(self.span.end_column - self.span.column, 1)
        else:
            width = max(len(text) - start, 1)
        width = min(width, max(len(text) - start, 1))
        caret = " " * (len(gutter) - 2) + "| " + " " * start + "^" + "~" * (width - 1)
        if len(text) > 200:
            # A megabyte on one line is no help to anyone: show a window around the span.
            lo = max(start - 60, 0)
            text = ("..." if lo else "") + text[lo : lo + 120] + "..."
            shift = start - lo + (3 if lo else 0)
            caret = " " * (len(gutter) - 2) + "| " + " " * shift + "^" + "~" * (min(width, 60) - 1)
        return [gutter + text, caret]


def sort_key(diagnostic: Diagnostic) -> tuple:
    span = diagnostic.span
    return (diagnostic.path, span.line if span else 0, span.column if span else 0, diagnostic.code)


class MoaError(Exception):
    """Base of every error moac reports about a ``.moa`` source. Carries its diagnostics."""

    def __init__(self, diagnostics: Iterable[Diagnostic]):
        self.diagnostics: tuple[Diagnostic, ...] = tuple(sorted(diagnostics, key=sort_key))
        super().__init__(self.render())

    def render(self) -> str:
        return "\n".join(d.render() for d in self.diagnostics)

    @property
    def errors(self) -> tuple[Diagnostic, ...]:
        return tuple(d for d in self.diagnostics if d.severity == "error")


class MoaSyntaxError(MoaError):
    """The text is not a ``.moa`` file: it cannot be read, decoded, lexed or parsed."""


class MoaSemanticError(MoaError):
    """The text parses but says something wrong: unknown names, bad units, impossible layers."""
