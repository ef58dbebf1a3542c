"""The retry policy: a pure function from (attempt, error, time left) to a decision.

Nothing here reads a clock, sleeps or draws a random number by itself: ``now``, ``deadline``
and ``random`` are arguments, so the policy is tested without sleeping and the client's one
retry loop (:meth:`moac.providers.openai.OpenAICompatibleClient.chat`) stays trivial.

Rules (see ``shared/guides/executor-reliability.md``), in the order they are applied:

1. An error that is not an HTTP-level verdict on this request (missing key, deadline) is final.
2. The server's ``x-should-retry: true|false`` wins over the status code.
3. Otherwise the error's own ``retryable`` decides: connection errors, timeouts, disconnects,
   payload errors and malformed 200s, empty answers, 408, 409, 429 and >= 500 retry; 400,
   401, 403, 404, 422, other 4xx, context-length errors, content filters and an empty answer
   that ran out of ``max_tokens`` before any text do not.
4. A 429 is retried whatever the attempt count (its Retry-After jittered up by at most
   ``RATE_LIMIT_JITTER``), for as long as the deadline allows: a rate limit costs time,
   never the answer.
5. Otherwise at most ``max_retries`` retries (``max_retries + 1`` attempts).
6. A Retry-After the server sent that is longer than the time left is final: waiting it out
   would miss the deadline, and trying sooner would only be refused again.
7. The delay is the server's Retry-After when ``0 < v <= 120`` s, else
   ``min(0.5 * 2**n, 8) * uniform(0.75, 1.0)`` for the n-th retry (n from 0).
8. A retry is not scheduled if, after the delay, less than ``min_attempt_s`` would be left.
"""

from __future__ import annotations

import datetime
import email.utils
import math
from dataclasses import dataclass
from typing import Callable, Mapping

from moac.constants import DEFAULT_MAX_RETRIES
from moac.providers.constants import (
    INITIAL_RETRY_DELAY_S, JITTER_MIN, MAX_RETRY_AFTER_S, MAX_RETRY_DELAY_S, MIN_ATTEMPT_S,
    RATE_LIMIT_JITTER,
)
from moac.providers.errors import DeadlineExceeded, MissingApiKey, ProviderError, RateLimited


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How hard to try. ``max_retries`` counts retries, not attempts (openai-python's
    meaning); build it from a provider with :meth:`for_provider`."""

    max_retries: int = DEFAULT_MAX_RETRIES
    initial_delay_s: float = INITIAL_RETRY_DELAY_S
    max_delay_s: float = MAX_RETRY_DELAY_S
    jitter_min: float = JITTER_MIN
    max_retry_after_s: float = MAX_RETRY_AFTER_S
    min_attempt_s: float = MIN_ATTEMPT_S

    @classmethod
    def for_provider(cls, provider, **overrides) -> "RetryPolicy":
        return cls(max_retries=provider.max_retries, **overrides)


@dataclass(frozen=True, slots=True)
class Decision:
    retry: bool
    delay_s: float
    reason: str


def backoff(policy: RetryPolicy, retries_so_far: int, random: Callable[[], float]) -> float:
    """``min(initial * 2**n, cap)`` times a factor in ``[jitter_min, 1.0]``."""
    base = min(policy.initial_delay_s * 2.0 ** retries_so_far, policy.max_delay_s)
    return base * (1.0 - (1.0 - policy.jitter_min) * random())


def decide(policy: RetryPolicy, attempt: int, error: BaseException, *, now: float,
           deadline: float | None, random: Callable[[], float]) -> Decision:
    """Whether to try again after attempt number ``attempt`` (1-based) failed with
    ``error``, and after how long. ``now`` and ``deadline`` are on the same monotonic clock;
    ``deadline=None`` means no deadline. ``random()`` returns a float in [0, 1)."""
    if isinstance(error, (MissingApiKey, DeadlineExceeded)) or not isinstance(error, ProviderError):
        return Decision(False, 0.0, f"{type(error).__name__} is final")
    if error.should_retry is not None:
        retryable = error.should_retry
        why = f"server said x-should-retry: {str(retryable).lower()}"
    else:
        retryable = error.retryable
        why = f"{error.kind} is {'retryable' if retryable else 'not retryable'}"
    if not retryable:
        return Decision(False, 0.0, why)
    # A 429 costs time, never the answer: it is retried whatever the attempt count, until
    # the deadline cannot be met (the key's pacer paused every start meanwhile).
    limited = isinstance(error, RateLimited)
    if attempt > policy.max_retries and not limited:
        return Decision(False, 0.0, f"gave up after {attempt} attempts")
    left = math.inf if deadline is None else deadline - now
    server_wait = error.retry_after
    if server_wait is not None and server_wait > left:
        return Decision(False, 0.0, f"server asked to wait {server_wait:.3g}s, "
                                    f"only {max(left, 0.0):.3g}s left before the deadline")
    if server_wait is not None and 0 < server_wait <= policy.max_retry_after_s:
        delay, source = server_wait, "retry-after"
        if limited:  # calls refused together must not come back together
            delay *= 1.0 + RATE_LIMIT_JITTER * random()
    else:
        delay, source = backoff(policy, attempt - 1, random), "backoff"
    if left - delay < policy.min_attempt_s:
        return Decision(False, 0.0, f"no time for another attempt: {max(left, 0.0):.3g}s left, "
                                    f"{delay:.3g}s delay, {policy.min_attempt_s:.3g}s needed")
    return Decision(True, delay, f"{why}; retry {attempt} after {delay:.3g}s ({source})")


def parse_retry_after(headers: Mapping[str, str], *, now_wall: float) -> float | None:
    """Seconds to wait from ``retry-after-ms``, then ``Retry-After`` as seconds, then as an
    HTTP date (against the wall clock ``now_wall``). None when absent or unparseable.
    ``headers`` is case-insensitive (aiohttp's) or has lower-case keys.
    Whether the value is sensible (``0 < v <= 120``) is :func:`decide`'s business."""
    raw_ms = headers.get("retry-after-ms")
    if raw_ms is not None:
        value = _number(raw_ms)
        if value is not None:
            return value / 1000.0
    raw = headers.get("retry-after")
    if raw is None:
        return None
    value = _number(raw)
    if value is not None:
        return value
    try:
        when = email.utils.parsedate_to_datetime(raw.strip())
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    if when.tzinfo is None:  # an HTTP date is GMT even when written without a zone
        when = when.replace(tzinfo=datetime.timezone.utc)
    return when.timestamp() - now_wall


def parse_should_retry(headers: Mapping[str, str]) -> bool | None:
    raw = headers.get("x-should-retry")
    if raw is None:
        return None
    raw = raw.strip().lower()
    return True if raw == "true" else False if raw == "false" else None


def _number(raw: str) -> float | None:
    try:
        value = float(raw.strip())
    except ValueError:
        return None
    return value if math.isfinite(value) else None
