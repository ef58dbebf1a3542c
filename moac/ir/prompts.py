"""Aggregate-and-synthesize templates, and the token counts of prompts.

Templates: their ``{responses}`` slot parsed and filled; shared by the checker (which
validates them) and the executor (which renders them). A literal brace is ``{{`` or ``}}``.

Token counts come in two kinds, never to be mixed: *estimates* (:func:`estimate_tokens`,
:func:`messages_tokens`, :func:`input_tokens`: four characters a token, for plans and
expected costs) and *upper bounds* (:func:`text_max_tokens`, :func:`messages_max_tokens`,
:func:`input_max_tokens`: a token a UTF-8 byte, for budget holds, which must hold whatever
the provider's tokeniser).
"""

from __future__ import annotations

import json
import math
import re
from typing import Any, Iterable, Mapping, Sequence

from moac.constants import (
    CHARS_PER_TOKEN, MAX_TEMPLATE_TOKENS_PER_MESSAGE, MAX_TEMPLATE_TOKENS_PER_REQUEST,
    TOKENS_PER_MESSAGE,
)

_PIECE = re.compile(r"\{\{|\}\}|\{([^{}]*)\}|\{|\}")
# "1. " before each answer and the blank line after it.
_TOKENS_PER_NUMBERED_ANSWER = 3
# ...and as bytes, with numbers up to five digits.
_NUMBERING_BYTES = 9


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


# Marks after an answer the aggregator should know was not whole (issue: answers cut by
# their max_tokens, or shortened here to fit a budget or a context window).
CUT_BY_LENGTH = "[this answer was cut off: it reached its length limit]"
SHORTENED = "[shortened to fit]"
# ...and the most bytes one takes with the space before it: an answer of max_tokens is the
# one that gets a mark, so a bound on what a layer reads counts it.
_NOTE_BYTES = 1 + max(len(CUT_BY_LENGTH.encode()), len(SHORTENED.encode()))


def render_template(text: str, responses: Sequence[str],
                    notes: Sequence[str | None] = ()) -> str:
    """Fill the template: answers numbered ``1. ...`` in the order given, each followed by
    its note (one of :data:`CUT_BY_LENGTH`, :data:`SHORTENED`), if any, on the answer's
    last line (its trailing whitespace dropped: the note must not read as a new paragraph)."""
    notes = list(notes) + [None] * (len(responses) - len(notes))
    numbered = "\n\n".join(f"{i}. {answer.rstrip()} {note}" if note else f"{i}. {answer}"
                             for i, (answer, note) in enumerate(zip(responses, notes), 1))

    def piece(match: re.Match) -> str:
        found = match.group()
        if found == "{{":
            return "{"
        if found == "}}":
            return "}"
        return numbered

    return _PIECE.sub(piece, text)


def shorten_evenly(texts: Sequence[str], allowance: int) -> list[tuple[str, bool]]:
    """``texts`` cut so that their UTF-8 bytes add up to at most ``allowance``, as evenly as
    can be: every text keeps up to the same number of bytes, those shorter than that stay
    whole (water-filling), and each cut text leaves room for the :data:`SHORTENED` note.
    Returns ``(text, was_cut)`` pairs in order; a text cut to nothing is ``("", True)``."""
    sizes = [text_max_tokens(t) for t in texts]
    if sum(sizes) <= allowance:
        return [(t, False) for t in texts]
    note = len(SHORTENED.encode()) + 1
    # The largest per-text cap whose total fits (cut texts pay for their note).
    low, high = 0, max(sizes)
    while low < high:
        cap = (low + high + 1) // 2
        total = sum(size if size <= cap else cap + note for size in sizes)
        if total <= allowance:
            low = cap
        else:
            high = cap - 1
    out = []
    for text, size in zip(texts, sizes):
        if size <= low:
            out.append((text, False))
        else:
            cut = text.encode("utf-8", "surrogatepass")[:low].decode("utf-8", "ignore")
            out.append((cut.rstrip(), True))
    return out


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


def text_max_tokens(text: str | None) -> int:
    """An upper bound of the tokens any tokeniser makes of ``text``: its UTF-8 bytes (see
    :data:`~moac.constants.MAX_TEMPLATE_TOKENS_PER_MESSAGE`)."""
    if not text:
        return 0
    return len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))


def messages_max_tokens(messages: Iterable[Mapping[str, Any]]) -> int:
    """An upper bound of the prompt tokens a provider can bill for ``messages``: every
    byte of their text a token, every message and the request at their template's most."""
    return MAX_TEMPLATE_TOKENS_PER_REQUEST + sum(
        text_max_tokens(c if isinstance(c := m.get("content"), str) else json.dumps(c))
        + MAX_TEMPLATE_TOKENS_PER_MESSAGE for m in messages)


def input_max_tokens(prompt_max: int, *, system: str | None = None,
                     template: str | None = None, answers: Iterable[int] = ()) -> int:
    """An upper bound of what an agent reads, before its messages exist (a query's worst
    case): ``prompt_max`` is :func:`messages_max_tokens` of the conversation, ``answers``
    the bounds of the answers fed in."""
    total = prompt_max
    if system or template:
        total += text_max_tokens(system) + text_max_tokens(template) + \
            MAX_TEMPLATE_TOKENS_PER_MESSAGE
    if template is not None:
        answers = list(answers)
        # "1. " before an answer, its note and the blank line after it: ASCII, a token a
        # byte at most
        total += sum(answers) + (_NUMBERING_BYTES + _NOTE_BYTES) * len(answers)
    return total


def messages_tokens(messages: Iterable[Mapping[str, Any]]) -> int:
    """A chat's tokens estimated from its text, with each message's template overhead.
    Non-text content (a list of parts) is counted as the JSON it is sent as."""
    return sum(estimate_tokens(c if isinstance(c := m.get("content"), str) else json.dumps(c))
               + TOKENS_PER_MESSAGE for m in messages)
