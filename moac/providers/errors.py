"""Typed errors of provider calls, and the redaction every stored text goes through.

Contract: a :class:`ProviderError` never holds a secret. Its message and its stored body are
passed through :func:`redact` with the call's key when it is built, so ``str()``, ``repr()``,
``.message`` and ``.body`` are safe to log and to put in a trace. ``.body`` is the provider's
raw body, redacted first and then cut to :data:`MAX_STORED_BODY_CHARS`.

``retryable`` is the error's own verdict; :func:`moac.providers.retry.decide` combines it with
the server's ``x-should-retry`` header, the attempt count and the deadline. After the retry
loop gives up, ``.attempts`` holds every attempt's record and ``.gave_up`` says why it stopped.
"""

from __future__ import annotations

import re
from typing import Any, Iterable

from pydantic import SecretStr

from moac.providers.constants import (
    MAX_STORED_BODY_CHARS, MIN_API_KEY_CHARS, MIN_SECRET_FRAGMENT, REDACTED,
)
from moac.text import from_bytes, valid_text

# "Authorization: Bearer <token>" echoed back, and key-shaped words (sk-..., possibly with the
# asterisks a provider puts in the middle of an echoed key).
_BEARER = re.compile(r"(?i)\b(bearer)\s+[^\s\"',;]+")
_KEY_LIKE = re.compile(r"\b(?:sk|pk|rk)-[A-Za-z0-9_\-*.]{5,}[A-Za-z0-9_\-*]")
# The tail of a masked key ("****wxyz", or "[REDACTED]****wxyz" once the head is gone).
_MASKED_TAIL = re.compile(rf"(?:{re.escape(REDACTED)})?\*{{3,}}[A-Za-z0-9_\-]{{1,8}}")


def _secret_values(secrets: Iterable[str | SecretStr | None]) -> list[str]:
    values = []
    for secret in secrets:
        if isinstance(secret, SecretStr):
            secret = secret.get_secret_value()
        if secret:
            values.append(secret)
    return values


def redact(text: str | None, secrets: Iterable[str | SecretStr | None] = ()) -> str:
    """``text`` with every secret, every run of :data:`MIN_SECRET_FRAGMENT` or more of a
    secret's characters, every ``Bearer <token>`` and every key-shaped word replaced by
    :data:`REDACTED`. Cheap on the short texts it is given (error bodies, messages)."""
    if not text:
        return ""
    covered = bytearray(len(text))  # 1 where a character belongs to a secret fragment
    for secret in _secret_values(secrets):
        start = text.find(secret)
        while start >= 0:
            covered[start:start + len(secret)] = b"\x01" * len(secret)
            start = text.find(secret, start + 1)
        k = MIN_SECRET_FRAGMENT
        if len(secret) > k:
            # Any window of k characters that occurs in the secret marks k characters.
            grams = {secret[i:i + k] for i in range(len(secret) - k + 1)}
            for i in range(len(text) - k + 1):
                if text[i:i + k] in grams:
                    covered[i:i + k] = b"\x01" * k
    if any(covered):
        out, i = [], 0
        while i < len(text):
            if covered[i]:
                while i < len(text) and covered[i]:
                    i += 1
                out.append(REDACTED)
            else:
                j = covered.find(1, i)
                j = len(text) if j < 0 else j
                out.append(text[i:j])
                i = j
        text = "".join(out)
    text = _BEARER.sub(lambda m: f"{m.group(1)} {REDACTED}", text)
    return _MASKED_TAIL.sub(REDACTED, _KEY_LIKE.sub(REDACTED, text))


def stored_body(body: str | bytes | None, secrets: Iterable[str | SecretStr | None] = ()) -> str | None:
    """A raw body as it may be kept: decoded leniently, redacted, then truncated."""
    if body is None:
        return None
    body = from_bytes(body) if isinstance(body, bytes) else valid_text(body)
    # Cut well past the stored length first (a 64 KiB HTML page need not be scanned), then
    # redact, then cut to length: a key straddling the first cut leaves a fragment the
    # fragment rule still catches, and one straddling the last cut is already gone.
    body = redact(body[:4 * MAX_STORED_BODY_CHARS], secrets)
    if len(body) > MAX_STORED_BODY_CHARS:
        body = body[:MAX_STORED_BODY_CHARS] + "…"
    return body


class ProviderError(Exception):
    """A call to a provider failed. Subclasses say how; ``retryable`` says whether trying
    again can help. Every text it holds is redacted (see the module docstring)."""

    retryable_default = False

    def __init__(self, message: str, *, provider: str | None = None, model: str | None = None,
                 status: int | None = None, retryable: bool | None = None,
                 body: str | bytes | None = None, retry_after: float | None = None,
                 should_retry: bool | None = None,
                 secrets: Iterable[str | SecretStr | None] = ()) -> None:
        secrets = _secret_values(secrets)
        self.message = valid_text(redact(message, secrets))
        self.provider = provider
        self.model = model
        self.status = status
        self.retryable = self.retryable_default if retryable is None else retryable
        self.body = stored_body(body, secrets)
        # Seconds the server asked us to wait (Retry-After / retry-after-ms), parsed.
        self.retry_after = retry_after
        # The server's x-should-retry header, when it sent one.
        self.should_retry = should_retry
        self.attempts: tuple[Any, ...] = ()
        self.gave_up: str | None = None
        super().__init__(self.message)

    @property
    def kind(self) -> str:
        return type(self).__name__

    def __str__(self) -> str:
        where = "/".join(p for p in (self.provider, self.model) if p)
        status = f" (HTTP {self.status})" if self.status is not None else ""
        return f"{where + ': ' if where else ''}{self.message}{status}"

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(provider={self.provider!r}, model={self.model!r}, "
                f"status={self.status!r}, retryable={self.retryable!r}, "
                f"message={self.message!r})")

    def __reduce__(self):  # keep pickling working despite keyword-only fields
        return (_rebuild, (type(self), self.__dict__.copy()))


def _rebuild(cls: type, state: dict) -> ProviderError:
    error = cls.__new__(cls)
    Exception.__init__(error, state.get("message", ""))
    error.__dict__.update(state)
    return error


class AuthError(ProviderError):
    """401 or 403: the key is wrong, missing or not allowed this model."""


class RateLimited(ProviderError):
    """429. ``retry_after`` is the server's requested wait in seconds, if it gave one."""
    retryable_default = True


class ProviderTimeout(ProviderError):
    """No connection in time (``phase="connect"``), no bytes for the read timeout
    (``"stall"``), or the attempt's total time ran out (``"total"``)."""
    retryable_default = True

    def __init__(self, message: str, *, phase: str = "total", **fields: Any) -> None:
        self.phase = phase
        super().__init__(message, **fields)


class ServerError(ProviderError):
    """5xx, 408 (request timeout) or 409 (conflict): the server's trouble, worth retrying."""
    retryable_default = True


class ConnectionFailed(ProviderError):
    """The connection could not be made or was dropped before a response."""
    retryable_default = True


class MalformedResponse(ProviderError):
    """A 2xx whose content is unusable. ``what`` is one of ``non_json``, ``no_choices``,
    ``null_content``, ``error_object`` (an ``error`` in a 200 body or mid-stream),
    ``truncated`` (a stream ended with neither ``[DONE]`` nor a ``finish_reason``, the body
    was cut, or it held no events), ``not_an_answer`` (an HTML page or other non-answer
    content type) and ``too_large`` (past the bytes any answer to its ``max_tokens`` takes:
    not retried). Retried like a payload error otherwise: these are proxies' and gateways'
    hiccups."""
    retryable_default = True

    def __init__(self, message: str, *, what: str, **fields: Any) -> None:
        self.what = what
        super().__init__(message, **fields)


class ContextLengthExceeded(ProviderError):
    """A 4xx saying the prompt plus ``max_tokens`` exceed the model's context. Retrying the
    same model cannot help; a declared fallback (a longer-context model) can."""
    fallback = True


class BadRequest(ProviderError):
    """Any other 4xx (400, 404, 422, ...): the request itself is wrong."""


class ContentFiltered(ProviderError):
    """``finish_reason == "content_filter"`` (or a refusal in place of content): whatever
    text came with it is no answer. Not retried: the same prompt meets the same filter; a
    declared fallback (another provider's model) may answer."""


class EmptyAnswer(ProviderError):
    """A 2xx whose answer holds no text: empty, or only whitespace (a filter that says
    nothing, a broken deployment). Its reason is named ``empty answer``. Retried as a
    provider's hiccup, except when it ran out of ``max_tokens`` before any text
    (``finish_reason`` ``"length"``, as a reasoning model that spent them thinking): the
    same request runs out the same way, and a fallback is what can help."""
    retryable_default = True

    def __init__(self, message: str, *, finish_reason: str | None = None,
                 **fields: Any) -> None:
        self.finish_reason = finish_reason
        if finish_reason == "length":
            fields.setdefault("retryable", False)
        super().__init__(message, **fields)


class MissingApiKey(ProviderError):
    """The environment variable a provider names holds no key, or one that cannot be a key
    (shorter than :data:`~moac.providers.constants.MIN_API_KEY_CHARS`: it would also be
    redacted from every message, mangling them). Names the variable, never a value.
    ``missing``: every (variable, provider); ``short``: those of them that hold a value."""

    def __init__(self, variable: str, *, provider: str | None = None,
                 more: tuple[tuple[str, str | None], ...] = (),
                 short: frozenset[str] = frozenset()) -> None:
        self.variable = variable
        self.missing = ((variable, provider),) + tuple(more)  # every (variable, provider)
        self.short = frozenset(short)
        if not more:
            text = f"environment variable {variable} {self._problem(variable)} (the API key " \
                   f"of provider {provider!r})"
        else:
            what = "are not usable" if self.short else "are not set"
            text = (f"{len(self.missing)} environment variables {what}: "
                    + ", ".join(f"{v}{' ' + self._problem(v) if self.short else ''} (the API "
                                f"key of provider {p!r})" for v, p in self.missing))
        super().__init__(text, provider=provider)

    def _problem(self, variable: str) -> str:
        if variable in self.short:
            return (f"holds fewer than {MIN_API_KEY_CHARS} characters, which cannot be an "
                    "API key (is it set to a placeholder?)")
        return "is not set"

    @classmethod
    def every(cls, missing: list[tuple[str, str | None]],
              short: frozenset[str] = frozenset()) -> "MissingApiKey":
        """One error naming every missing (or too short) variable (in order, each once)."""
        unique = list(dict.fromkeys(missing))
        (variable, provider), rest = unique[0], tuple(unique[1:])
        return cls(variable, provider=provider, more=rest, short=short)


class DeadlineExceeded(ProviderError):
    """The query's deadline left too little time to start or finish an attempt."""


class UnsupportedParameter(BadRequest):
    """A 400 saying the model does not take a parameter moac sent, or not its value
    (OpenAI's ``unsupported_parameter`` and ``unsupported_value``). ``param`` names it, and
    the message says what to declare on the model. Never retried: the same request is
    refused again."""

    def __init__(self, message: str, *, param: str | None = None, **fields: Any) -> None:
        self.param = param
        super().__init__(message, **fields)
