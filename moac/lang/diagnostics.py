"""Source spans, diagnostics and the two compile-error classes.

A :class:`Diagnostic` is what the user sees: ``path:line:col: error[CODE]: message``, then
the source line with a caret under the span, then an optional hint. Syntax errors (the text
does not parse) and semantic errors (it parses but means something wrong) are separate
exception classes, as in Jinja2, and both carry every diagnostic found, never just the first.
"""

from __future__ import annotations

import functools
import re
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
        bounds = _line_bounds(self.source, self.span.line)
        if bounds is None:
            return []
        line_start, line_end = bounds
        while line_end > line_start and self.source[line_end - 1] == "\r":
            line_end -= 1
        length = line_end - line_start
        gutter = f"{self.span.line:>4} | "
        start = max(self.span.column - 1, 0)
        if self.span.end_line == self.span.line:
            width = max(self.span.end_column - self.span.column, 1)
        else:
            width = max(length - start, 1)
        width = min(width, max(length - start, 1))
        mask = (start, self.span.end_column - 1) \
            if self.redact and self.span.end_line == self.span.line else None
        if length > 200:
            # A megabyte on one line is no help to anyone: show a window around the span,
            # cut from the source directly, so that a thousand diagnostics on that line
            # cost no more than the line.
            lo = max(start - 60, 0)
            text = self.source[line_start + lo : line_start + min(lo + 120, length)]
            if mask:
                text = _masked(text, mask[0] - lo, mask[1] - lo)
            text = ("..." if lo else "") + text.replace("\t", " ") + "..."
            shift = start - lo + (3 if lo else 0)
            width = min(width, 60)
        else:
            text = self.source[line_start:line_end]
            if mask:
                text = _masked(text, *mask)
            # Tabs would shift the caret; show them as single spaces.
            text = text.replace("\t", " ")
            shift = start
        caret = " " * (len(gutter) - 2) + "| " + " " * shift + "^" + "~" * (width - 1)
        return [gutter + text, caret]


def _masked(text: str, start: int, end: int) -> str:
    start = max(start, 0)
    end = min(max(end, start), len(text))
    return text[:start] + "*" * (end - start) + text[end:]


@functools.lru_cache(maxsize=8)
def _line_starts(source: str) -> tuple[int, ...]:
    """Where each line of ``source`` starts. Cached: the diagnostics of one file share its
    text, so rendering a thousand of them scans it once (a string's hash is cached too)."""
    return (0, *(match.end() for match in re.finditer("\n", source)))


def _line_bounds(source: str, line: int) -> tuple[int, int] | None:
    """Where line ``line`` (from 1) of ``source`` starts and ends (before its newline);
    None if there is no such line."""
    if line < 1:
        return None
    starts = _line_starts(source)
    if line > len(starts):
        return None
    return starts[line - 1], starts[line] - 1 if line < len(starts) else len(source)


def sort_key(diagnostic: Diagnostic) -> tuple:
    span = diagnostic.span
    return (diagnostic.path, span.line if span else 0, span.column if span else 0, diagnostic.code)


class MoaError(Exception):
    """Base of every error moac reports about a ``.moa`` source. Carries its diagnostics."""

    def __init__(self, diagnostics: Iterable[Diagnostic]):
        self.diagnostics: tuple[Diagnostic, ...] = tuple(sorted(diagnostics, key=sort_key))
        super().__init__()

    def __str__(self) -> str:
        # Rendered when asked for, not when raised: `moac check` renders each diagnostic
        # itself, and a hundred thousand of them are worth rendering once.
        return self.render()

    def __reduce__(self):
        return type(self), (self.diagnostics,)

    def render(self) -> str:
        return "\n".join(d.render() for d in self.diagnostics)

    @property
    def errors(self) -> tuple[Diagnostic, ...]:
        return tuple(d for d in self.diagnostics if d.severity == "error")


class MoaSyntaxError(MoaError):
    """The text is not a ``.moa`` file: it cannot be read, decoded, lexed or parsed."""


class MoaSemanticError(MoaError):
    """The text parses but says something wrong: unknown names, bad units, impossible layers."""
