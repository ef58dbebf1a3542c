"""Telling a model's thinking from its answer, in a whole text or as a stream arrives.

Providers show thinking in three ways: inline, as a ``<think>...</think>`` block at the start
of ``content`` (DeepSeek-R1 and Qwen3 served as they are); in a field of its own beside
``content`` (``reasoning_content`` or ``reasoning``: DeepSeek's API, vLLM's reasoning
parsers, OpenRouter), read in :mod:`moac.providers.parse`; or not at all (OpenAI's o-series
and GPT-5: only ``usage.completion_tokens_details.reasoning_tokens`` counts it).

Contract of the inline split: a block counts only where ``content`` opens with it (after
whitespace); the thinking is the text between the tags, stripped; the answer is what
follows the closing tag, its leading whitespace dropped. An opening tag never closed (the
limit cut the thinking) leaves all of it thinking and no answer. Content that does not open
with the tag is the answer, byte for byte. :class:`InlineSplitter` gives the same split fed
in any chunking (a test checks it), holding back only text that may still become a tag.
"""

from __future__ import annotations

OPEN, CLOSE = "<think>", "</think>"


def split_inline(content: str) -> tuple[str, str]:
    """``(thinking, answer)`` of a whole ``content`` (see the module docstring)."""
    splitter = InlineSplitter()
    thought, answer = splitter.feed(content)
    more_thought, more_answer = splitter.close()
    return (thought + more_thought).strip(), answer + more_answer


class InlineSplitter:
    """Feeds of ``content`` deltas in, ``(thinking, answer)`` deltas out. The thinking
    deltas joined, then stripped, are :func:`split_inline`'s thinking."""

    __slots__ = ("_state", "_held")

    def __init__(self) -> None:
        self._state = "start"  # start | thinking | after (tag closed) | answer
        self._held = ""        # text not yet given out: it may still be (part of) a tag

    def feed(self, text: str) -> tuple[str, str]:
        if self._state == "answer":
            return "", text
        text = self._held + text
        self._held = ""
        thought = ""
        if self._state == "start":
            body = text.lstrip()
            if body.startswith(OPEN):
                self._state, text = "thinking", body[len(OPEN):]
            elif OPEN.startswith(body):  # whitespace, or a tag not yet whole
                self._held = text
                return "", ""
            else:
                self._state = "answer"
                return "", text
        if self._state == "thinking":
            end = text.find(CLOSE)
            if end < 0:
                keep = _partial_tail(text, CLOSE)
                self._held = text[len(text) - keep:] if keep else ""
                return text[:len(text) - keep], ""
            thought, text = text[:end], text[end + len(CLOSE):]
            self._state = "after"
        if self._state == "after":
            text = text.lstrip()
            if not text:
                return thought, ""
            self._state = "answer"
        return thought, text

    def close(self) -> tuple[str, str]:
        """The end of the content: what was held back, as thinking or answer."""
        held, self._held = self._held, ""
        if self._state == "thinking":
            return held, ""
        if self._state == "start":
            self._state = "answer"
            return "", held
        return "", ""


def _partial_tail(text: str, tag: str) -> int:
    """The length of the longest end of ``text`` that begins ``tag``."""
    for size in range(min(len(tag) - 1, len(text)), 0, -1):
        if tag.startswith(text[-size:]):
            return size
    return 0
