"""Per-provider admission: a concurrency cap, pacing at the key's rate limit, and a cool-down
for a failing model; waiters served best first.

Contract: :meth:`ProviderLimiter.slot` is entered *before* an attempt's clock starts and
left as soon as the attempt ends, before any backoff sleep, so a sleeping retry holds no
slot. Inside the slot at most ``parallel`` attempts run at once on the provider; starts
follow its :class:`~moac.providers.pacing.Pacer` (shared by every client of the same key);
after a burst of failures of one *model* (``cooldown_after`` 5xx, timeouts or dropped
connections in a row, never a single one, never a 429) that model's new attempts wait
``cooldown_s`` while the provider's other models go on.

Order: when more attempts wait than may start, the one with the lowest ``priority`` goes
first (the executor gives later stages and older queries lower values: answers come out
steadily, and a query under way is never starved by new ones), then the oldest. A slot is
never left idle while an admissible attempt waits.

Waiting is bounded by the caller's deadline: when a start cannot be had in time,
:class:`~moac.providers.errors.DeadlineExceeded` is raised and nothing is held. Clock and
sleep are injected for pacing and cool-downs; the wait for a free slot is bounded in real
seconds.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Awaitable, Callable, Iterable

from moac.providers.constants import COOLDOWN_AFTER_FAILURES, COOLDOWN_S
from moac.providers.errors import DeadlineExceeded
from moac.providers.pacing import Pacer
from moac.providers.ratelimits import RateLimits

INF = math.inf


@dataclass(order=True)
class _Waiter:
    priority: tuple
    seq: int
    model: str | None = field(compare=False)
    tokens: float = field(compare=False)
    deadline: float | None = field(compare=False)
    since: float = field(compare=False)
    future: asyncio.Future = field(compare=False)
    paused: bool = field(compare=False, default=True)  # False: a 429's retry


class ProviderLimiter:
    def __init__(self, name: str, parallel: int, rpm: float | None = None, *,
                 tpm: float | None = None, pacer: Pacer | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
                 cooldown_after: int = COOLDOWN_AFTER_FAILURES,
                 cooldown_s: float = COOLDOWN_S) -> None:
        if parallel < 1:
            raise ValueError(f"provider {name!r}: parallel must be at least 1, not {parallel}")
        self.name = name
        self.parallel = parallel
        # A catalog's rpm is a ceiling; a first burst of up to `parallel` starts is allowed
        # under it (MoA's first layer is a burst by nature).
        self.pacer = pacer or Pacer(name, rpm=rpm, tpm=tpm,
                                    burst=min(parallel, rpm) if rpm else None, clock=clock)
        self._clock = clock
        self._sleep = sleep
        self._cooldown_after = cooldown_after
        self._cooldown_s = cooldown_s
        self._failures: dict[str | None, int] = {}
        self._cooling: dict[str | None, float] = {}
        self._waiting: list[_Waiter] = []
        self._seq = itertools.count()
        self._timer: asyncio.Task | None = None
        self._timer_at = INF
        self.in_use = 0
        self.max_in_use = 0

    @asynccontextmanager
    async def slot(self, deadline: float | None = None, *, model: str | None = None,
                   priority: tuple = (), tokens: float = 0.0,
                   after_429: bool = False) -> AsyncIterator[float]:
        """Hold one of the provider's slots for one attempt; yields the seconds waited.
        ``after_429``: the retry of a refused request, which already slept what the server
        asked: the key's pause holds back the others, not it."""
        waited = await self._acquire(deadline, model, priority, tokens, after_429)
        try:
            yield waited
        finally:
            self.in_use -= 1
            self._dispatch()

    async def _acquire(self, deadline: float | None, model: str | None, priority: tuple,
                       tokens: float, after_429: bool = False) -> float:
        now = self._clock()
        if deadline is not None and deadline - now <= 0:
            raise self._late("no time left to wait for a free slot")
        future = asyncio.get_running_loop().create_future()
        waiter = _Waiter(tuple(priority), next(self._seq), model, tokens, deadline, now, future,
                         not after_429)
        self._waiting.append(waiter)
        self._dispatch()
        try:
            if deadline is None:
                await asyncio.shield(future)
            else:
                await asyncio.wait_for(asyncio.shield(future), timeout=max(deadline - now, 0))
        except asyncio.TimeoutError:
            timed_out = True
        except BaseException:
            self._withdraw(waiter)
            raise
        else:
            timed_out = False
        if timed_out:  # raised outside the except block: no chained context to carry
            self._withdraw(waiter)
            raise self._late(f"no free slot among {self.parallel} before the deadline")
        return future.result() - now  # raises the DeadlineExceeded _dispatch set

    def _withdraw(self, waiter: _Waiter) -> None:
        """A waiter that gave up: out of the queue, and its slot back if it was granted."""
        if waiter in self._waiting:
            self._waiting.remove(waiter)
        elif waiter.future.done() and not waiter.future.cancelled() and \
                waiter.future.exception() is None:
            self.in_use -= 1
            self._dispatch()
        if not waiter.future.done():
            waiter.future.cancel()

    def _dispatch(self) -> None:
        """Start every waiter that may start now, best first; arm a timer for the next."""
        now = self._clock()
        next_at = INF
        while self._waiting and self.in_use < self.parallel:
            ready = [w for w in self._waiting if self._cooling.get(w.model, -INF) <= now]
            for w in self._waiting:
                until = self._cooling.get(w.model, -INF)
                if until > now and w.deadline is not None and until >= w.deadline:
                    self._fail(w, f"model {w.model} cools down for {until - now:.3g}s after "
                                  "failing, past the deadline")
            if not ready:
                next_at = min(next_at, min(self._cooling.get(w.model, -INF)
                                           for w in self._waiting) if self._waiting else INF)
                break
            best = min(ready)
            wait = self.pacer.delay(now, best.tokens, paused=best.paused)
            if wait == INF:  # the key's first answer is awaited: observe() dispatches
                break
            if best.deadline is not None and now + wait >= best.deadline:
                self._fail(best, f"paced to start in {wait:.3g}s, after the deadline")
                continue
            if wait > 0:
                next_at = min(next_at, now + wait)
                break
            self._waiting.remove(best)
            self.pacer.take(now, best.tokens)
            self.in_use += 1
            self.max_in_use = max(self.max_in_use, self.in_use)
            best.future.set_result(now)
        if next_at < INF:
            self._arm(next_at - now)

    def _fail(self, waiter: _Waiter, why: str) -> None:
        self._waiting.remove(waiter)
        if not waiter.future.done():
            waiter.future.set_exception(self._late(why))

    def _arm(self, delay: float) -> None:
        at = self._clock() + delay
        if self._timer is not None and not self._timer.done() and self._timer_at <= at:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = at
        self._timer = asyncio.ensure_future(self._wake(delay))

    async def _wake(self, delay: float) -> None:
        await self._sleep(max(delay, 0.0))
        self._timer, self._timer_at = None, INF
        self._dispatch()

    def record(self, ok: bool, *, overload: bool = False, model: str | None = None) -> None:
        """Tell the limiter how an attempt of ``model`` ended. ``overload`` marks the
        failures that suggest the model is struggling (5xx, timeouts, dropped
        connections); a 429 is none of them (see :meth:`rate_limited`)."""
        if ok or not overload:
            self._failures.pop(model, None)
            if ok:
                self.pacer.succeeded()
            return
        failures = self._failures.get(model, 0) + 1
        if failures >= self._cooldown_after:
            self._cooling[model] = self._clock() + self._cooldown_s
            failures = 0
        self._failures[model] = failures

    def rate_limited(self, retry_after: float | None, started: float | None = None) -> None:
        """A 429 to an attempt ``started`` then: the key's pacer pauses and slows down."""
        self.pacer.refused(retry_after, started)
        self._dispatch()

    def observe(self, limits: RateLimits) -> None:
        """An answer's rate-limit headers (as soon as they arrive, before its body)."""
        was_waiting = not self.pacer.answered
        self.pacer.observe(limits)
        if was_waiting:
            self._dispatch()

    def cooling(self, model: str | None) -> float:
        """Seconds ``model`` still cools down for (0: it does not)."""
        return max(self._cooling.get(model, -INF) - self._clock(), 0.0)

    def _late(self, why: str) -> DeadlineExceeded:
        return DeadlineExceeded(f"{why} on provider {self.name!r}", provider=self.name)


def make_limiters(providers: Iterable[Any], *, clock: Callable[[], float] = time.monotonic,
                  sleep: Callable[[float], Awaitable[object]] = asyncio.sleep
                  ) -> dict[str, ProviderLimiter]:
    """One limiter per :class:`~moac.ir.spec.ProviderSpec`, keyed by provider name."""
    return {p.name: ProviderLimiter(p.name, p.parallel, p.rpm, clock=clock, sleep=sleep)
            for p in providers}
