"""Where a provider's rate limits stand, read from the headers it sends with every answer.

Pure functions: headers in, :class:`RateLimits` out (nothing here reads a clock; times are
arguments). Formats (``shared/guides/providers.md``):

- OpenAI and those copying it (Groq, Cerebras, OpenRouter, Fireworks):
  ``x-ratelimit-{limit,remaining,reset}-{requests,tokens}``, resets as durations such as
  ``12ms``, ``1s``, ``7.66s``, ``6m0s``, ``2m59.56s``.
- Together: ``x-ratelimit-{limit,remaining,reset}`` for requests, ``x-tokenlimit-{limit,
  remaining}`` for tokens; resets in seconds.
- Anthropic: ``anthropic-ratelimit-{requests,tokens}-{limit,remaining,reset}``, resets as
  RFC 3339 timestamps (its input- and output-token limits are folded into ``tokens`` by
  taking the tighter of the two).

A value that does not parse is absent, never a guess: a header set with no usable limit
gives ``RateLimits()`` (both None), which the pacer treats as "the provider says nothing".
"""

from __future__ import annotations

import datetime
import math
import re
from dataclasses import dataclass
from typing import Mapping

_DURATION = re.compile(
    r"^(?:(?P<h>\d+(?:\.\d+)?)h)?(?:(?P<m>\d+(?:\.\d+)?)m(?!s))?(?:(?P<s>\d+(?:\.\d+)?)s)?"
    r"(?:(?P<ms>\d+(?:\.\d+)?)ms)?$")


@dataclass(frozen=True, slots=True)
class Limit:
    """One limit: its size, what is left of it, and seconds until it is whole again (None
    when the provider did not say)."""
    limit: float
    remaining: float
    reset_s: float | None = None

    @property
    def fraction(self) -> float:
        """What is left, as a share of the limit (0..1)."""
        return min(max(self.remaining / self.limit, 0.0), 1.0) if self.limit > 0 else 0.0

    def refill_per_s(self) -> float | None:
        """The rate the limit refills at, when the headers say enough to tell: the part
        used over the time until it is whole; None when it is whole or no reset came."""
        used = self.limit - self.remaining
        if self.reset_s is None or self.reset_s <= 0 or used <= 0:
            return None
        return used / self.reset_s


@dataclass(frozen=True, slots=True)
class RateLimits:
    requests: Limit | None = None
    tokens: Limit | None = None

    @property
    def known(self) -> bool:
        return self.requests is not None or self.tokens is not None


def parse_duration(text: str | None) -> float | None:
    """Seconds of ``6m0s``, ``1s``, ``20ms``, ``2m59.56s``, ``1h2m``, or a bare number of
    seconds; None for anything else (negative, empty, words)."""
    if text is None:
        return None
    raw = text.strip().lower()
    if not raw:
        return None
    try:
        value = float(raw)
    except ValueError:
        pass
    else:
        return value if math.isfinite(value) and value >= 0 else None
    found = _DURATION.match(raw)
    if not found or not any(found.groupdict().values()):
        return None
    parts = {k: float(v) for k, v in found.groupdict().items() if v is not None}
    return parts.get("h", 0) * 3600 + parts.get("m", 0) * 60 + parts.get("s", 0) + \
        parts.get("ms", 0) / 1000


def parse_reset(text: str | None, *, now_wall: float) -> float | None:
    """A reset as seconds from now: a duration, or an RFC 3339 time (Anthropic's)."""
    seconds = parse_duration(text)
    if seconds is not None or text is None:
        return seconds
    raw = text.strip()
    try:
        when = datetime.datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.timezone.utc)
    return max(when.timestamp() - now_wall, 0.0)


def _number(text: str | None) -> float | None:
    if text is None:
        return None
    try:
        value = float(text.strip())
    except ValueError:
        return None
    return value if math.isfinite(value) and value >= 0 else None


def _limit(headers: Mapping[str, str], limit: str, remaining: str, reset: str | None,
           now_wall: float) -> Limit | None:
    size, left = _number(headers.get(limit)), _number(headers.get(remaining))
    if size is None or left is None or size <= 0:
        return None
    when = parse_reset(headers.get(reset), now_wall=now_wall) if reset else None
    return Limit(size, min(left, size), when)


def parse_rate_limits(headers: Mapping[str, str], *, now_wall: float) -> RateLimits:
    """The limits ``headers`` report (case-insensitive mapping, or lower-case keys)."""
    requests = _limit(headers, "x-ratelimit-limit-requests", "x-ratelimit-remaining-requests",
                      "x-ratelimit-reset-requests", now_wall) \
        or _limit(headers, "anthropic-ratelimit-requests-limit",
                  "anthropic-ratelimit-requests-remaining",
                  "anthropic-ratelimit-requests-reset", now_wall) \
        or _limit(headers, "x-ratelimit-limit", "x-ratelimit-remaining", "x-ratelimit-reset",
                  now_wall)
    candidates = [
        _limit(headers, "x-ratelimit-limit-tokens", "x-ratelimit-remaining-tokens",
               "x-ratelimit-reset-tokens", now_wall),
        _limit(headers, "anthropic-ratelimit-tokens-limit",
               "anthropic-ratelimit-tokens-remaining", "anthropic-ratelimit-tokens-reset",
               now_wall),
        _limit(headers, "anthropic-ratelimit-input-tokens-limit",
               "anthropic-ratelimit-input-tokens-remaining",
               "anthropic-ratelimit-input-tokens-reset", now_wall),
        _limit(headers, "anthropic-ratelimit-output-tokens-limit",
               "anthropic-ratelimit-output-tokens-remaining",
               "anthropic-ratelimit-output-tokens-reset", now_wall),
        _limit(headers, "x-tokenlimit-limit", "x-tokenlimit-remaining", None, now_wall),
    ]
    found = [c for c in candidates if c is not None]
    tokens = min(found, key=lambda c: c.fraction) if found else None
    return RateLimits(requests, tokens)
