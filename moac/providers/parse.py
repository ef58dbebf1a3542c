"""Reading OpenAI-compatible responses: error statuses, whole bodies and stream chunks.

Contract: every function here either returns parsed values or raises a
:class:`~moac.providers.errors.ProviderError` subclass built with the call's secrets, so
nothing raw escapes unredacted. Exceptions are raised *outside* ``except`` blocks: a
``json.JSONDecodeError`` keeps the whole body in ``.doc``, and an implicit ``__context__``
would carry it along with our error.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Mapping

from moac.providers.errors import (
    AuthError, BadRequest, ContentFiltered, ContextLengthExceeded, EmptyAnswer,
    MalformedResponse, ProviderError, RateLimited, ServerError, UnsupportedParameter, redact,
)
from moac.providers.retry import parse_retry_after, parse_should_retry
from moac.providers.thinking import InlineSplitter, split_inline
from moac.text import valid_json

# Phrases providers use for "prompt + max_tokens > context window" (OpenAI, vLLM, TGI,
# Together, Anthropic-compatible gateways).
_CONTEXT_LENGTH = re.compile(
    r"(?i)context[_ ]length|maximum context|context window|prompt is too long|"
    r"too many tokens|max_tokens.{0,40}(?:exceed|too large)|reduce the length")
_BAD = object()
_SURROGATE_ESCAPES = {False: ("\\ud", "\\uD"), True: (b"\\ud", b"\\uD")}


@dataclass(frozen=True, slots=True)
class Where:
    """Who is being called, for building errors: names and the secrets to scrub."""
    provider: str
    model: str
    secrets: tuple[str, ...] = ()

    def fields(self, **more: Any) -> dict[str, Any]:
        return dict(provider=self.provider, model=self.model, secrets=self.secrets, **more)

    def detail(self, body: str) -> str:
        """A body's error message for our own message: redacted *before* it is cut, so no
        part of a key survives at the cut."""
        return redact(error_message(body), self.secrets)[:300]


def loads(text: str | bytes) -> Any:
    """JSON or the sentinel ``_BAD``; never raises (see the module docstring). Strings in it
    that JSON escapes made invalid (a lone ``"\\ud800"``) are repaired: text from a
    provider must be encodable wherever it goes next (a request, a trace, a cache)."""
    try:
        obj = json.loads(text)
    except (ValueError, RecursionError):  # JSONDecodeError, UnicodeDecodeError, deep nesting
        return _BAD
    # Only a \uD800-\uDFFF escape can put a surrogate in a parsed string (escaped emoji,
    # valid pairs, match too: repairing those changes nothing).
    escapes = _SURROGATE_ESCAPES[isinstance(text, bytes)]
    if escapes[0] in text or escapes[1] in text:
        obj = valid_json(obj)
    return obj


def error_message(body: str) -> str:
    """The human part of an error body: ``error.message`` when the body is JSON."""
    obj = loads(body)
    if isinstance(obj, dict):
        err = obj.get("error", obj)
        if isinstance(err, dict) and isinstance(err.get("message"), str):
            return err["message"]
        if isinstance(err, str):
            return err
    return body.strip().splitlines()[0] if body.strip() else ""


def http_error(status: int, headers: Mapping[str, str], body: str, where: Where, *,
               now_wall: float) -> ProviderError:
    """The error a non-2xx response stands for (returned, for the caller to raise)."""
    detail = where.detail(body) or f"HTTP {status}"
    fields = where.fields(status=status, body=body,
                          retry_after=parse_retry_after(headers, now_wall=now_wall),
                          should_retry=parse_should_retry(headers))
    if status in (401, 403):
        return AuthError(f"authentication failed: {detail}", **fields)
    if status == 429:
        return RateLimited(f"rate limited: {detail}", **fields)
    if status in (408, 409) or status >= 500:
        return ServerError(f"server error: {detail}", **fields)
    unsupported = unsupported_parameter(body) if status == 400 else None
    if unsupported is not None:
        fields["should_retry"] = False  # whatever a header says: it is refused again
        return UnsupportedParameter(_unsupported_message(*unsupported, where, detail),
                                    param=unsupported[0], **fields)
    if 400 <= status < 500 and _CONTEXT_LENGTH.search(body):
        return ContextLengthExceeded(f"context length exceeded: {detail}", **fields)
    return BadRequest(f"request refused: {detail}", **fields)


_UNSUPPORTED_CODES = ("unsupported_parameter", "unsupported_value")
_QUOTED_PARAM = re.compile(r"^Unsupported (?:parameter|value): '([A-Za-z_][A-Za-z0-9_.]*)'")
# What to declare on a model whose API refused a parameter moac sends.
_DECLARE = {"max_tokens": "token_param = max_completion_tokens",
            "max_completion_tokens": "token_param = max_tokens",
            "temperature": "temperature = fixed", "top_p": "temperature = fixed",
            "reasoning_effort": "reasoning = false"}


def unsupported_parameter(body: str) -> tuple[str, bool] | None:
    """``(parameter, only its value)`` when a 400 body says the model does not take a
    parameter, or that value of it (OpenAI's wording: ``code`` ``unsupported_parameter`` or
    ``unsupported_value``, ``param`` naming it), else None."""
    obj = loads(body)
    err = obj.get("error") if isinstance(obj, dict) else None
    if not isinstance(err, dict):
        return None
    message = err.get("message") if isinstance(err.get("message"), str) else ""
    quoted = _QUOTED_PARAM.match(message)
    if err.get("code") not in _UNSUPPORTED_CODES and quoted is None:
        return None
    value = err.get("code") == "unsupported_value" or message.startswith("Unsupported value")
    param = err.get("param")
    if isinstance(param, str) and param:
        return param, value
    return (quoted.group(1), value) if quoted else None


def _unsupported_message(param: str, value: bool, where: Where, detail: str) -> str:
    fix = _DECLARE.get(param)
    if value and param == "reasoning_effort":
        what = "give its agents another reasoning_effort"
    elif fix:
        what = f"declare `{fix}` on its model"
    else:
        what = f"leave '{param}' out of its agents' settings"
    taken = f"this value of '{param}'" if value else f"'{param}'"
    return f"model {where.model!r} does not take {taken}: {what} ({detail})"


def too_large(limit: int, max_tokens: int | None, where: Where, *,
              declared: int | None = None) -> MalformedResponse:
    """The error for a response past its byte bound (not retried: a server that ignores
    ``max_tokens`` will do it again)."""
    size = f"declared {declared:,} bytes" if declared is not None else \
        f"passed {limit:,} bytes"
    asked = f" for max_tokens {max_tokens:,}" if max_tokens is not None else ""
    return MalformedResponse(f"the response {size}, more than any answer{asked} can take: "
                             "stopped reading", what="too_large", retryable=False,
                             **where.fields(status=200))


def too_long(text_bytes: int, max_tokens: int, where: Where) -> MalformedResponse:
    """The error for an answer longer than ``max_tokens`` can be (not retried)."""
    return MalformedResponse(f"the answer holds {text_bytes:,} bytes, more than an answer of "
                             f"max_tokens {max_tokens:,} can: the server ignored max_tokens",
                             what="too_large", retryable=False, **where.fields(status=200))


_TITLE = re.compile(rb"(?is)<title[^>]*>(.*?)</title>")


def unexpected_body(content_type: str, raw: bytes, where: Where) -> MalformedResponse:
    """The error for a 2xx whose body is not an answer (an HTML page...): what came back."""
    title = _TITLE.search(raw)
    text = (title.group(1) if title else raw).decode("utf-8", "replace")
    first = " ".join(text.split())[:160]
    shown = f": {where.detail(first)!r}" if first else " (empty)"
    return MalformedResponse(f"expected JSON or server-sent events, got {content_type}{shown}",
                             what="not_an_answer", **where.fields(status=200, body=raw))


def _error_object(obj: Any) -> Any:
    return obj.get("error") if isinstance(obj, dict) else None


def parse_completion(body: bytes, where: Where) -> tuple[str, str | None, dict | None, str]:
    """A non-streamed 200 body: ``(answer, finish_reason, usage or None, thinking)``, the
    thinking from the message's reasoning field and an inline ``<think>`` block
    (:mod:`moac.providers.thinking`)."""
    obj = loads(body)
    if obj is _BAD or not isinstance(obj, dict):
        raise MalformedResponse("the response body is not a JSON object", what="non_json",
                                **where.fields(status=200, body=body))
    if _error_object(obj):
        raise MalformedResponse(f"error inside a 200 response: {where.detail(body.decode('utf-8', 'replace'))}",
                                what="error_object", **where.fields(status=200, body=body))
    choices = obj.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise MalformedResponse("the response has no choices", what="no_choices",
                                **where.fields(status=200, body=body))
    choice = choices[0]
    finish_reason = choice.get("finish_reason")
    message = choice.get("message") if isinstance(choice.get("message"), dict) else {}
    content = message.get("content")
    field = reasoning_field(message)
    if content is None and field:
        content = ""  # it thought, and answered nothing (cut by its limit, say)
    if finish_reason == "content_filter" or (content is None and message.get("refusal")):
        raise ContentFiltered("the provider's content filter stopped the answer",
                              **where.fields(status=200, body=body))
    if not isinstance(content, str):
        raise MalformedResponse("the response's message content is null", what="null_content",
                                **where.fields(status=200, body=body))
    usage = obj.get("usage")
    thought, content = split_inline(content)
    thinking = "\n\n".join(part for part in (field.strip(), thought) if part)
    return content, finish_reason, usage if isinstance(usage, dict) else None, thinking


def reasoning_field(message: dict) -> str:
    """The thinking a message or a stream delta carries beside its content
    (``reasoning_content``, DeepSeek's and vLLM's name, or ``reasoning``, OpenRouter's)."""
    value = message.get("reasoning_content") or message.get("reasoning")
    return value if isinstance(value, str) else ""


def reasoning_tokens(usage: dict | None) -> int | None:
    """The thinking tokens ``usage`` reports (``completion_tokens_details.reasoning_tokens``,
    or a top-level ``reasoning_tokens``), or None."""
    if not isinstance(usage, dict):
        return None
    details = usage.get("completion_tokens_details")
    value = details.get("reasoning_tokens") if isinstance(details, dict) else None
    if value is None:
        value = usage.get("reasoning_tokens")
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        return None
    return value


class StreamState:
    """What a streamed answer has said so far. :meth:`event` takes one SSE data payload and
    returns its answer delta (its thinking delta, from a reasoning field or an inline
    ``<think>`` block, goes to :meth:`take_reasoning`); :meth:`flush` gives out what the
    inline split held back at the end; :meth:`finish` checks how the stream ended."""

    __slots__ = ("where", "parts", "finish_reason", "usage", "saw_content", "refusal",
                 "events", "reasoning_parts", "_splitter", "_new_reasoning")

    def __init__(self, where: Where) -> None:
        self.where = where
        self.parts: list[str] = []
        self.finish_reason: str | None = None
        self.usage: dict | None = None
        self.saw_content = False
        self.refusal = False
        self.events = 0  # events seen (a body with none was no stream)
        self.reasoning_parts: list[str] = []
        self._splitter = InlineSplitter()
        self._new_reasoning: list[str] = []

    @property
    def text(self) -> str:
        return "".join(self.parts)

    @property
    def reasoning(self) -> str:
        return "".join(self.reasoning_parts).strip()

    def take_reasoning(self) -> str:
        """The thinking that arrived since the last call."""
        new, self._new_reasoning = "".join(self._new_reasoning), []
        return new

    def _reason(self, text: str) -> None:
        if text:
            self.saw_content = True
            self.reasoning_parts.append(text)
            self._new_reasoning.append(text)

    def flush(self) -> str:
        """The end of the content: the answer delta the inline split held back (the
        thinking goes to :meth:`take_reasoning`)."""
        thought, answer = self._splitter.close()
        self._reason(thought)
        if answer:
            self.parts.append(answer)
        return answer

    def event(self, data: str) -> str:
        self.events += 1
        obj = loads(data)
        if obj is _BAD or not isinstance(obj, dict):
            raise MalformedResponse("a stream event is not a JSON object", what="non_json",
                                    **self.where.fields(status=200, body=data))
        if _error_object(obj):
            raise MalformedResponse(f"error in the middle of the stream: {self.where.detail(data)}",
                                    what="error_object", **self.where.fields(status=200, body=data))
        usage = obj.get("usage")
        if isinstance(usage, dict):
            self.usage = usage
        choices = obj.get("choices")
        # The final usage chunk legitimately has `choices: []`.
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
            return ""
        choice = choices[0]
        if choice.get("finish_reason") is not None:
            self.finish_reason = choice["finish_reason"]
        delta = choice.get("delta")
        if not isinstance(delta, dict):
            return ""
        if delta.get("refusal"):
            self.refusal = True
        thought = reasoning_field(delta)
        if thought:
            self._reason(thought)
        content = delta.get("content")
        if isinstance(content, str):
            self.saw_content = True
            thought, content = self._splitter.feed(content)
            if thought:
                self._reason(thought)
            if content:
                self.parts.append(content)
                return content
        return ""

    def finish(self, saw_done: bool, head: bytes = b"") -> None:
        """Raise if the stream did not end as a complete answer; ``head`` (the first bytes
        of the body) says what came back when it was no stream at all."""
        fields = self.where.fields(status=200)
        if not saw_done and not self.events:
            shown = " ".join(head.decode("utf-8", "replace").split())[:160]
            raise MalformedResponse(
                "the response held no server-sent events" +
                (f"; it began {self.where.detail(shown)!r}" if shown else " (the body was empty)"),
                what="truncated", **self.where.fields(status=200, body=head))
        if self.finish_reason == "content_filter" or (self.refusal and not self.parts):
            raise ContentFiltered("the provider's content filter stopped the answer", **fields)
        if not saw_done and self.finish_reason is None:
            raise MalformedResponse("the stream ended with neither [DONE] nor a finish_reason",
                                    what="truncated", **fields)
        if not self.saw_content:
            raise MalformedResponse("the stream's content was null throughout",
                                    what="null_content", **fields)


def require_answer(text: str, finish_reason: str | None, where: Where, *,
                   max_tokens: int | None = None) -> None:
    """Raise :class:`~moac.providers.errors.EmptyAnswer` when a 2xx's answer holds no text
    (empty, or whitespace only): such an answer is a failed attempt, never a success. moac
    sends no tools, so an answer of tool calls alone has no text to use either. Give it the
    answer as the caller will use it (after any reasoning is split off)."""
    if text.strip():
        return
    if finish_reason == "length":
        limit = f" {max_tokens:,}" if max_tokens is not None else ""
        why = f"max_tokens{limit} ran out before any text (finish_reason length)"
    elif text:
        why = f"the provider sent only whitespace ({len(text):,} characters, finish_reason " \
              f"{finish_reason or 'none'})"
    else:
        why = f"the provider sent no text (finish_reason {finish_reason or 'none'})"
    raise EmptyAnswer(f"empty answer: {why}", finish_reason=finish_reason,
                      **where.fields(status=200))
