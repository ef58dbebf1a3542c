"""A provider's rate limit as real ones enforce it, for the fake server (``FakeOpenAI``).

Enforcement: per-second token buckets (a request bucket of ``rpm / 60`` refilling at
``rpm / 60`` a second, and a token bucket likewise for ``tpm``, charged with the request's
prompt estimate plus its ``max_tokens`` as providers charge at the start): a client that
bursts past a second's worth is refused even when the minute as a whole would allow it.
A refusal is a 429 with ``Retry-After`` (whole seconds, rounded up) and ``retry-after-ms``.

Headers (``headers=True``), on every answer and every 429, in OpenAI's form: the limit per
minute, what is left of it and when it is whole again, from a per-minute bucket that every
admitted request drains (so several clients sharing the key all see its remaining share
fall): ``x-ratelimit-{limit,remaining,reset}-{requests,tokens}``, resets as ``1.2s`` or
``6m0s``. ``headers=False`` is a provider that says nothing until it refuses.

The clock is ``time.monotonic``: this models a real server, in real time.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field


class _Bucket:
    __slots__ = ("capacity", "rate", "level", "at")

    def __init__(self, capacity: float, rate: float, now: float) -> None:
        self.capacity, self.rate, self.level, self.at = capacity, rate, capacity, now

    def refill(self, now: float) -> None:
        self.level = min(self.capacity, self.level + (now - self.at) * self.rate)
        self.at = now

    def wait_for(self, amount: float) -> float:
        """Seconds until ``amount`` is in the bucket (0: now)."""
        amount = min(amount, self.capacity)
        return 0.0 if self.level >= amount else (amount - self.level) / self.rate


def _duration(seconds: float) -> str:
    """OpenAI's reset format: ``20ms``, ``1.5s``, ``6m0s``."""
    if seconds < 1:
        return f"{max(seconds * 1000, 0):.0f}ms"
    if seconds < 60:
        return f"{seconds:.3g}s"
    minutes, rest = divmod(seconds, 60)
    return f"{minutes:.0f}m{rest:.0f}s"


@dataclass
class RateLimit:
    rpm: float
    tpm: float | None = None
    headers: bool = True
    retry_after: bool = True   # False: a 429 says nothing of when to come back
    admitted: int = 0
    refused: int = 0
    _buckets: dict = field(default_factory=dict, repr=False)
    events: list = field(default_factory=list, repr=False)  # (time, admitted?) of each request

    def __post_init__(self) -> None:
        now = time.monotonic()
        per_s = self.rpm / 60
        self._buckets["requests"] = (_Bucket(max(1.0, per_s), per_s, now),
                                     _Bucket(self.rpm, per_s, now))
        if self.tpm:
            per_s = self.tpm / 60
            self._buckets["tokens"] = (_Bucket(max(1.0, per_s), per_s, now),
                                       _Bucket(self.tpm, per_s, now))

    def admit(self, tokens: float) -> tuple[float | None, dict[str, str]]:
        """(None, headers) when the request is admitted (and charged), else (seconds to
        wait, headers) for a 429."""
        now = time.monotonic()
        amounts = {"requests": 1.0, "tokens": tokens}
        wait = 0.0
        for name, (second, minute) in self._buckets.items():
            second.refill(now)
            minute.refill(now)
            wait = max(wait, second.wait_for(amounts[name]), minute.wait_for(amounts[name]))
        self.events.append((now, wait <= 0))
        if wait > 0:
            self.refused += 1
            headers = {"Retry-After": str(max(1, math.ceil(wait))),
                       "retry-after-ms": f"{wait * 1000:.0f}"} if self.retry_after else {}
        else:
            self.admitted += 1
            for name, buckets in self._buckets.items():
                for bucket in buckets:
                    bucket.level -= min(amounts[name], bucket.capacity)
            headers = {}
        if self.headers:
            for name, (_, minute) in self._buckets.items():
                headers[f"x-ratelimit-limit-{name}"] = f"{minute.capacity:.0f}"
                headers[f"x-ratelimit-remaining-{name}"] = f"{max(minute.level, 0):.0f}"
                headers[f"x-ratelimit-reset-{name}"] = _duration(
                    (minute.capacity - minute.level) / minute.rate)
        return (wait if wait > 0 else None), headers
