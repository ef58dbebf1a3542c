"""Per-provider admission: a concurrency cap, requests-per-minute pacing and a cool-down.

Contract: :meth:`ProviderLimiter.slot` is entered *before* an attempt's clock starts and
left as soon as the attempt ends, before any backoff sleep, so a sleeping retry holds no
slot. Inside the slot at most ``parallel`` attempts run at once on that provider, attempt
starts are spaced to honour ``rpm``, and after a burst of failures (``cooldown_after`` 429s,
5xx or timeouts in a row, never a single one) new attempts wait ``cooldown_s``.

Waiting is bounded by the caller's deadline: when a slot cannot be had in time,
:class:`~moac.providers.errors.DeadlineExceeded` is raised and nothing is held.
Clock and sleep are injected for the pacing and the cool-down; the wait for a free slot is
an ordinary ``asyncio.Semaphore`` wait, bounded in real seconds.
"""

from __future__ import annotations

import asyncio
import time
from contextlib import asynccontextmanager
from typing import AsyncIterator, Awaitable, Callable, Iterable

from moac.providers.constants import COOLDOWN_AFTER_FAILURES, COOLDOWN_S
from moac.providers.errors import DeadlineExceeded


class ProviderLimiter:
    def __init__(self, name: str, parallel: int, rpm: float | None = None, *,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
                 cooldown_after: int = COOLDOWN_AFTER_FAILURES,
                 cooldown_s: float = COOLDOWN_S) -> None:
        if parallel < 1:
            raise ValueError(f"provider {name!r}: parallel must be at least 1, not {parallel}")
        self.name = name
        self.parallel = parallel
        self._semaphore = asyncio.Semaphore(parallel)
        # Pacing (GCRA): starts are `interval` apart on average, with a first burst of up to
        # `parallel` starts allowed at once: providers count per minute, and MoA's first
        # layer is a burst by nature.
        self.interval = 60.0 / rpm if rpm else 0.0
        self._tolerance = self.interval * (max(1, min(parallel, int(rpm))) - 1) if rpm else 0.0
        self._tat = -float("inf")  # the theoretical arrival time of the next start
        self._clock = clock
        self._sleep = sleep
        self._cooldown_after = cooldown_after
        self._cooldown_s = cooldown_s
        self._failures_in_a_row = 0
        self._cooldown_until = -float("inf")
        self.in_use = 0
        self.max_in_use = 0

    @asynccontextmanager
    async def slot(self, deadline: float | None = None) -> AsyncIterator[None]:
        """Hold one of the provider's slots for one attempt."""
        await self._acquire(deadline)
        self.in_use += 1
        self.max_in_use = max(self.max_in_use, self.in_use)
        try:
            yield
        finally:
            self.in_use -= 1
            self._semaphore.release()

    async def _acquire(self, deadline: float | None) -> None:
        if deadline is None:
            await self._semaphore.acquire()
        else:
            left = deadline - self._clock()
            if left <= 0:
                raise self._late("no time left to wait for a free slot")
            try:
                await asyncio.wait_for(self._semaphore.acquire(), timeout=left)
            except asyncio.TimeoutError:
                timed_out = True
            else:
                timed_out = False
            if timed_out:  # raised outside the except block: no chained context to carry
                raise self._late(f"no free slot among {self.parallel} before the deadline")
        try:
            await self._wait_turn(deadline)
        except BaseException:
            self._semaphore.release()
            raise

    async def _wait_turn(self, deadline: float | None) -> None:
        now = self._clock()
        start = max(now, self._cooldown_until)
        if self.interval:
            # The reservation is made before sleeping, so concurrent waiters are spaced.
            tat = max(self._tat, start)
            start = max(start, tat - self._tolerance)
            self._tat = tat + self.interval
        if start <= now:
            return
        if deadline is not None and start >= deadline:
            raise self._late(f"paced to start in {start - now:.3g}s, after the deadline")
        await self._sleep(start - now)

    def record(self, ok: bool, *, overload: bool = False) -> None:
        """Tell the limiter how an attempt ended. ``overload`` marks the failures that
        suggest the provider is struggling (429, 5xx, timeouts)."""
        if ok or not overload:
            self._failures_in_a_row = 0
            return
        self._failures_in_a_row += 1
        if self._failures_in_a_row >= self._cooldown_after:
            self._cooldown_until = self._clock() + self._cooldown_s
            self._failures_in_a_row = 0

    def _late(self, why: str) -> DeadlineExceeded:
        return DeadlineExceeded(f"{why} on provider {self.name!r}", provider=self.name)


def make_limiters(providers: Iterable, *, clock: Callable[[], float] = time.monotonic,
                  sleep: Callable[[float], Awaitable[object]] = asyncio.sleep
                  ) -> dict[str, ProviderLimiter]:
    """One limiter per :class:`~moac.ir.spec.ProviderSpec`, keyed by provider name."""
    return {p.name: ProviderLimiter(p.name, p.parallel, p.rpm, clock=clock, sleep=sleep)
            for p in providers}
