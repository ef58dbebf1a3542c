"""How fast to start requests on one provider key: learned from its rate-limit headers, else
found by AIMD on its 429s; shared by every client of that key in the process.

Contract of :class:`Pacer`:

- **When.** :meth:`Pacer.delay` says how long until a start of ``tokens`` is allowed;
  :meth:`Pacer.take` books it. Both are pure arithmetic on the injected clock's ``now``:
  the waiting (and the order of waiters) is the limiter's (:mod:`moac.providers.limits`).
  Requests and tokens are each paced by a GCRA (a virtual scheduling of starts at the rate,
  a burst of about :data:`BURST_S` of it allowed at once): the rate is spent smoothly, not
  in bursts the provider's per-second slices would refuse.
- **Learned from headers** (:meth:`Pacer.observe`, on every answer, 429s included): the
  rate is the limit's refill rate (what was used over the time until it is whole again, or
  the limit per minute), scaled down as the remaining share falls below half, so that
  several processes sharing one key settle below its limit without talking to each other
  (each at about limit / n, the remaining share at about 1 / 2n).
- **Without headers**, TCP's way: a slow start (:data:`SLOW_START_REQUESTS_PER_S`, doubled
  every second while nothing is refused), then at the first 429 half the rate starts were
  made at, and an additive increase with every answer (AIMD), up to the ceiling.
- **With headers and 429s all the same** (other programs on the key, a window the headers do
  not describe), a factor on the learned rate is halved by each 429 and grown back by each
  answer: the learned rate is a ceiling, not a promise.
- **Before the key's first answer** at most :data:`FIRST_STARTS_BEFORE_AN_ANSWER` start:
  its headers may tell the limits before a batch storms them.
- **A 429** (:meth:`Pacer.refused`) pauses every start for what ``Retry-After`` said (or
  :data:`DEFAULT_PAUSE_S`); it is a pacing signal, never a model's failure.
- **Ceilings.** A catalog's ``rpm``/``tpm`` are ceilings set on purpose (a key shared with
  other programs): the rate never goes above them.
- **Tokens** are booked with the request's worst case when it starts (its prompt's bound
  and ``max_tokens``, as providers count it) and corrected upward by the usage it reports
  (:meth:`Pacer.settle`).
"""

from __future__ import annotations

import collections
import hashlib
import math
import threading
from typing import Callable

from moac.providers.constants import (
    AIMD_DECREASE, AIMD_INCREASE, BURST_S, DEFAULT_PAUSE_S,
    FIRST_STARTS_BEFORE_AN_ANSWER,
    LEARNED_FACTOR_INCREASE, SLOW_START_REQUESTS_PER_S, SLOWDOWN_EVERY_S, LEARNED_FACTOR_MIN, LEARNED_RATE_MARGIN, MIN_REQUESTS_PER_S,
    SHARE_SLOWDOWN_BELOW,
)
from moac.providers.ratelimits import Limit, RateLimits

INF = math.inf


class _Gcra:
    """A virtual schedule of starts at ``rate`` per second with a burst of ``burst``."""

    __slots__ = ("rate", "burst", "tat")

    def __init__(self, rate: float | None = None, burst: float = 1.0) -> None:
        self.rate = rate
        self.burst = burst
        self.tat = -INF

    def delay(self, now: float, amount: float = 1.0) -> float:
        """Seconds until ``amount`` may start: when the schedule, with it booked, stays
        within the burst (an amount larger than the burst waits for the burst alone)."""
        if not self.rate:
            return 0.0
        amount = min(max(amount, 1.0), self.burst)
        return max(0.0, self.tat + (amount - self.burst) / self.rate - now)

    def take(self, now: float, amount: float = 1.0) -> None:
        if self.rate:
            self.tat = max(self.tat, now) + amount / self.rate

    def correct(self, amount: float) -> None:
        """Book ``amount`` more (or less, when negative) for a start already taken."""
        if self.rate and self.tat > -INF:
            self.tat += amount / self.rate


class Pacer:
    """See the module docstring. ``rpm``/``tpm``: the catalog's ceilings (None: none);
    ``burst``: requests allowed at once under the ceiling (default: a second's worth);
    ``discover``: find an unknown limit carefully (see the module docstring)."""

    def __init__(self, name: str, *, rpm: float | None = None, tpm: float | None = None,
                 burst: float | None = None, clock: Callable[[], float],
                 discover: bool = False) -> None:
        self.name = name
        # Finding an unknown limit (pacer_for's pacers): a few starts before the first
        # answer, and a slow start without headers. Off: unpaced until told otherwise.
        self.discover = discover
        self.first_starts = FIRST_STARTS_BEFORE_AN_ANSWER if discover else math.inf
        self.clock = clock
        self.ceiling_rps = rpm / 60 if rpm else None
        self.ceiling_tps = tpm / 60 if tpm else None
        self._ceiling_burst = burst
        self.requests = _Gcra(self.ceiling_rps, self._burst(self.ceiling_rps, burst))
        self.tokens = _Gcra(self.ceiling_tps, self._burst(self.ceiling_tps, None))
        self.limits = RateLimits()  # the latest the provider reported
        self.learned = False        # headers have been seen: rates come from them
        self.paused_until = -INF
        self.refusals = 0           # 429s seen
        self.factor = 1.0           # on learned rates: halved by a 429, grown by answers
        self.answered = False       # any answer (a 429 too) has come back from the key
        self._slowed_at = -INF      # the latest slow-down for a 429
        self._learned_at = -INF     # when headers first told the limits
        self.slow_start = False     # no headers yet, no 429 yet: doubling every second
        self._grew_at = -INF
        self.starts = 0
        self._recent: collections.deque[float] = collections.deque(maxlen=256)
        self._recent_tokens: collections.deque[tuple[float, float]] = \
            collections.deque(maxlen=256)

    def set_ceilings(self, rpm: float | None, tpm: float | None,
                     burst: float | None = None) -> None:
        """New ceilings (a later run of the process may declare others): rates above them
        come down; learned or found rates below them stay."""
        self.ceiling_rps = rpm / 60 if rpm else None
        self.ceiling_tps = tpm / 60 if tpm else None
        self._ceiling_burst = burst
        for gcra, ceiling, given in ((self.requests, self.ceiling_rps, burst),
                                     (self.tokens, self.ceiling_tps, None)):
            if ceiling is not None and (gcra.rate is None or gcra.rate > ceiling):
                gcra.rate, gcra.burst = ceiling, self._burst(ceiling, given)

    @staticmethod
    def _burst(rate: float | None, given: float | None) -> float:
        if given is not None:
            return max(1.0, given)
        return max(1.0, (rate or 0.0) * BURST_S)

    # --- admission -------------------------------------------------------------------------

    def delay(self, now: float, tokens: float = 0.0, *, paused: bool = True) -> float:
        """Seconds until a start of ``tokens`` is allowed (0: now). ``paused`` false: the
        retry of a refused request, which already waited out what the 429 asked."""
        if not self.answered and self.starts >= self.first_starts:
            return INF  # until observe() or refused(): the limiter is told then
        return max(self.paused_until - now if paused else 0.0, self.requests.delay(now),
                   self.tokens.delay(now, tokens), 0.0)

    def take(self, now: float, tokens: float = 0.0) -> None:
        self.requests.take(now)
        self.tokens.take(now, tokens)
        self.starts += 1
        self._recent.append(now)
        self._recent_tokens.append((now, tokens))

    def settle(self, estimated: float, actual: float) -> None:
        """A start's tokens as the provider counted them, when more than the estimate it was
        booked with. Never fewer: providers count ``max_tokens`` when a request starts
        (OpenAI does) and return nothing for a shorter answer; one that does refund shows it
        in its remaining-tokens header, which the learned rate follows."""
        if actual > estimated:
            self.tokens.correct(actual - estimated)

    # --- what the provider says ------------------------------------------------------------

    def observe(self, limits: RateLimits) -> None:
        first_answer, self.answered = not self.answered, True
        if not limits.known:
            if self.discover and first_answer and not self.learned and not self.refusals and \
                    self.requests.rate is None:
                # No headers: a slow start (TCP's) rather than every waiting call at once.
                self.slow_start = True
                self.requests.rate = self._capped(SLOW_START_REQUESTS_PER_S)
                self.requests.burst = max(1.0, self.requests.rate * BURST_S)
                self._grew_at = self.clock()
            return
        if not self.learned:
            self._learned_at = self.clock()
            self.slow_start = False
        self.learned = True
        self.limits = limits
        if limits.requests is not None:
            self._learn(self.requests, limits.requests, self.ceiling_rps)
        if limits.tokens is not None:
            self._learn(self.tokens, limits.tokens, self.ceiling_tps)

    def _learn(self, gcra: _Gcra, limit: Limit, ceiling: float | None) -> None:
        refill = limit.refill_per_s()
        base = refill if refill is not None else limit.limit / 60.0
        if refill is not None and gcra.rate:
            base = max(base, limit.limit / 3600.0)  # a stale, tiny sample is not the rate
        share = min(1.0, max(limit.fraction / SHARE_SLOWDOWN_BELOW, 0.05))
        rate = base * share * LEARNED_RATE_MARGIN * self.factor
        if ceiling is not None:
            rate = min(rate, ceiling)
        first = not gcra.rate
        gcra.rate = max(rate, MIN_REQUESTS_PER_S if gcra is self.requests else 1.0)
        gcra.burst = max(1.0, min(gcra.rate * BURST_S, limit.remaining or 1.0))
        if first:
            # What started before the rate was known counts against its first burst.
            now = self.clock()
            if gcra is self.requests:
                recent = sum(1 for t in self._recent if now - t < BURST_S)
            else:
                recent = sum(n for t, n in self._recent_tokens if now - t < BURST_S)
            gcra.tat = max(gcra.tat, now + recent / gcra.rate)

    def refused(self, retry_after: float | None, started: float | None = None) -> None:
        """A 429: pause every start for ``retry_after`` (or a default), and slow down: the
        rate without headers, the factor on the learned rate with them. Once per round
        trip: a 429 to a request ``started`` (on the clock) before the last slow-down says
        nothing new about the slower rate (TCP's rule), and neither does one within
        :data:`SLOWDOWN_EVERY_S` (or the Retry-After) of it: a burst of refusals halves
        once, not once each."""
        now = self.clock()
        self.answered = True
        self.refusals += 1
        self.paused_until = max(self.paused_until, now + (
            retry_after if retry_after is not None and retry_after > 0 else DEFAULT_PAUSE_S))
        if started is not None and started < max(self._slowed_at, self._learned_at):
            return  # started before the slower rate, or before the rate was known
        if self.slow_start:  # the first 429 ends it: from here on, AIMD
            self.slow_start = False
            # Halved below: what it was sending at, never below where slow start began.
            self.requests.rate = max(self._observed_rate(now) or 0.0, self.requests.rate or 0.0)
        if started is not None and started < self._slowed_at or \
                now - self._slowed_at < max(retry_after or 0.0, SLOWDOWN_EVERY_S):
            return
        self._slowed_at = now
        if self.learned:  # the next observe() applies it
            self.factor = max(self.factor * AIMD_DECREASE, LEARNED_FACTOR_MIN)
            self._scale(self.requests, AIMD_DECREASE, MIN_REQUESTS_PER_S)
            self._scale(self.tokens, AIMD_DECREASE, 1.0)
            return
        current = self.requests.rate or self._observed_rate(now)
        if current is None:  # too few starts to tell a rate: the pause alone
            return
        rate = max(current * AIMD_DECREASE, MIN_REQUESTS_PER_S)
        self.requests.rate = rate
        self.requests.burst = max(1.0, rate * BURST_S)

    def succeeded(self) -> None:
        """An answer: without headers, an additive increase (up to the ceiling)."""
        if self.learned:
            # LEARNED_FACTOR_INCREASE per second's worth of answers at the current rate:
            # several processes on one key then converge instead of see-sawing.
            per_second = max(1.0, (self.requests.rate or 1.0) * BURST_S)
            self.factor = min(1.0, self.factor + LEARNED_FACTOR_INCREASE / per_second)
            return
        if self.requests.rate is None:
            return
        if self.slow_start:
            now = self.clock()
            if now - self._grew_at >= BURST_S:
                self._grew_at = now
                self.requests.rate = self._capped(self.requests.rate * 2)
                self.requests.burst = max(1.0, self.requests.rate * BURST_S)
            return
        rate = self.requests.rate + AIMD_INCREASE
        if self.ceiling_rps is not None:
            rate = min(rate, self.ceiling_rps)
        self.requests.rate = rate
        self.requests.burst = self._burst(rate, self._ceiling_burst
                                          if rate == self.ceiling_rps else None)

    def _capped(self, rate: float) -> float:
        return min(rate, self.ceiling_rps) if self.ceiling_rps is not None else rate

    @staticmethod
    def _scale(gcra: _Gcra, by: float, floor: float) -> None:
        if gcra.rate:
            gcra.rate = max(gcra.rate * by, floor)
            gcra.burst = max(1.0, min(gcra.burst, gcra.rate * BURST_S))

    def _observed_rate(self, now: float) -> float | None:
        """Starts a second over the last two seconds (what a 429 answered); None with fewer
        than two starts in them."""
        window = [t for t in self._recent if now - t <= 2.0]
        return len(window) / 2.0 if len(window) >= 2 else None

    # --- for people ------------------------------------------------------------------------

    def describe(self) -> str:
        """One phrase for a progress line: where the key stands and the pace."""
        if not (self.learned or self.refusals or self.ceiling_rps or self.ceiling_tps):
            return ""
        parts = []
        requests = self.limits.requests
        if requests is not None:
            parts.append(f"{requests.remaining:,.0f}/{requests.limit:,.0f} requests left")
        if self.requests.rate:
            parts.append(f"{self.requests.rate * 60:,.0f} rpm")
        if self.refusals:
            parts.append(f"{self.refusals} refused")
        return f"{self.name}: " + ", ".join(parts) if parts else ""


# --- one pacer per provider key in the process ------------------------------------------------

_PACERS: dict[tuple[str, str], Pacer] = {}
_LOCK = threading.Lock()


def pacer_for(base_url: str | None, key: str | None, *, name: str, rpm: float | None = None,
              tpm: float | None = None, burst: float | None = None,
              clock: Callable[[], float]) -> Pacer:
    """The pacer shared by every client of this endpoint and key in the process (keyed by
    the URL and a hash of the key, which is never kept)."""
    digest = hashlib.sha256((key or "").encode()).hexdigest()[:16]
    identity = ((base_url or name).rstrip("/"), digest)
    with _LOCK:
        pacer = _PACERS.get(identity)
        if pacer is None or pacer.clock is not clock:
            pacer = _PACERS[identity] = Pacer(name, rpm=rpm, tpm=tpm, burst=burst, clock=clock,
                                              discover=True)
        else:
            pacer.set_ceilings(rpm, tpm, burst)
        return pacer
