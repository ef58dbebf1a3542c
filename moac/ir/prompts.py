"""Aggregate-and-synthesize templates: parse their ``{responses}`` slot and fill it.

Shared by the checker (which validates templates) and the executor (which renders them).
A literal brace is written ``{{`` or ``}}``.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any, Iterable, Mapping

from moac.constants import CHARS_PER_TOKEN, TOKENS_PER_MESSAGE

_PIECE = re.compile(r"\{\{|\}\}|\{([^{}]*)\}|\{|\}")
# "1. " before each answer and the blank line after it.
_TOKENS_PER_NUMBERED_ANSWER = 3


def template_slots(text: str) -> tuple[list[str], list[str]]:
    """The slot names of a template and the stray braces in it (``{`` or ``}`` alone)."""
    slots: list[str] = []
    stray: list[str] = []
    for match in _PIECE.finditer(text):
        piece = match.group()
        if piece in ("{{", "}}"):
            continue
        if piece in ("{", "}"):
            stray.append(piece)
        else:
            slots.append(match.group(1).strip())
    return slots, stray


def render_template(text: str, responses: list[str]) -> str:
    """Fill the template: answers numbered ``1. ...`` in the order given."""
    numbered = "\n\n".join(f"{i}. {answer}" for i, answer in enumerate(responses, 1))

    def piece(match: re.Match) -> str:
        found = match.group()
        if found == "{{":
            return "{"
        if found == "}}":
            return "}"
        return numbered

    return _PIECE.sub(piece, text)


def estimate_tokens(text: str | None) -> int:
    """A compile-time token count: characters over :data:`CHARS_PER_TOKEN`, rounded up."""
    if not text:
        return 0
    return math.ceil(len(text) / CHARS_PER_TOKEN)


def input_tokens(prompt_tokens: int, *, system: str | None = None, template: str | None = None,
                 answers: list[int] | tuple[int, ...] = ()) -> int:
    """Tokens an agent reads: the user prompt, its system prompt, and when it aggregates,
    the template with the earlier answers (``answers`` are their token counts)."""
    total = prompt_tokens + TOKENS_PER_MESSAGE
    if system or template:
        total += estimate_tokens(system) + estimate_tokens(template) + TOKENS_PER_MESSAGE
    if template is not None:
        total += sum(answers) + _TOKENS_PER_NUMBERED_ANSWER * len(answers)
    return total


def messages_tokens(messages: Iterable[Mapping[str, Any]]) -> int:
    """A chat's tokens estimated from its text, with each message's template overhead.
    Non-text content (a list of parts) is counted as the JSON it is sent as."""
    return sum(estimate_tokens(c if isinstance(c := m.get("content"), str) else json.dumps(c))
               + TOKENS_PER_MESSAGE for m in messages)
