"""Per-provider limits (with a fake clock), connection-pool sizing and per-attempt timeouts."""

from __future__ import annotations

import asyncio

import pytest

from moac.providers import DeadlineExceeded, ProviderLimiter, attempt_timeout, make_session
from moac.ir.spec import ProviderSpec


class FakeTime:
    """A clock that only moves when someone sleeps on it."""

    def __init__(self) -> None:
        self.now = 100.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(round(seconds, 9))
        self.now += seconds


def provider(**fields) -> ProviderSpec:
    values = dict(name="p", kind="openai", base_url="http://127.0.0.1:9/v1", parallel=4,
                  timeout_s=120, connect_timeout_s=5, read_timeout_s=60, max_retries=2)
    values.update(fields)
    return ProviderSpec(**values)


def test_rpm_pacing_allows_a_burst_then_spaces_starts():
    async def main():
        t = FakeTime()
        limiter = ProviderLimiter("p", parallel=3, rpm=60, clock=t.clock, sleep=t.sleep)
        starts = []
        for _ in range(6):
            async with limiter.slot():
                starts.append(t.now)
        return starts, t.sleeps
    starts, sleeps = asyncio.run(main())
    # A burst of `parallel` (3) starts, then one a second.
    assert starts == [100.0, 100.0, 100.0, 101.0, 102.0, 103.0]
    assert sleeps == [1.0, 1.0, 1.0]


def test_concurrent_waiters_start_spaced_one_at_a_time():
    async def main():
        t = FakeTime()
        limiter = ProviderLimiter("p", parallel=10, rpm=120, clock=t.clock, sleep=t.sleep)
        limiter.pacer.requests.burst = 1.0  # no burst: every start half a second apart
        starts = []

        async def one():
            async with limiter.slot() as waited:  # the seconds it waited for its turn
                starts.append(100.0 + waited)
        await asyncio.gather(*(one() for _ in range(4)))
        return sorted(starts)
    assert asyncio.run(main()) == [100.0, 100.5, 101.0, 101.5]


def test_the_best_waiter_goes_first_when_a_slot_frees():
    """Later stages (lower priority values) and older queries first, whatever the order of
    arrival; ties in arrival order."""
    async def main():
        limiter = ProviderLimiter("p", parallel=1)
        order = []
        gate = asyncio.Event()

        async def holder():
            async with limiter.slot():
                await gate.wait()

        async def one(name, priority):
            async with limiter.slot(priority=priority):
                order.append(name)
        first = asyncio.create_task(holder())
        await asyncio.sleep(0)
        tasks = [asyncio.create_task(one(n, p)) for n, p in
                 [("new proposer", (-1, 5.0)), ("aggregator", (-2, 3.0)),
                  ("old proposer", (-1, 1.0)), ("old proposer 2", (-1, 1.0))]]
        await asyncio.sleep(0)
        gate.set()
        await asyncio.gather(first, *tasks)
        return order
    assert asyncio.run(main()) == ["aggregator", "old proposer", "old proposer 2",
                                   "new proposer"]


def test_a_cooling_model_does_not_hold_up_the_providers_other_models():
    async def main():
        t = FakeTime()
        limiter = ProviderLimiter("p", parallel=4, clock=t.clock, sleep=t.sleep,
                                  cooldown_after=3, cooldown_s=5.0)
        for _ in range(3):
            limiter.record(False, overload=True, model="bad")
        async with limiter.slot(model="good"):
            good_at = t.now
        async with limiter.slot(model="bad"):
            bad_at = t.now
        return good_at, bad_at
    assert asyncio.run(main()) == (100.0, 105.0)


def test_a_429_pauses_the_key_and_is_not_a_models_failure():
    async def main():
        t = FakeTime()
        limiter = ProviderLimiter("p", parallel=4, clock=t.clock, sleep=t.sleep,
                                  cooldown_after=1, cooldown_s=50.0)
        limiter.rate_limited(2.0)
        async with limiter.slot(model="m"):
            first = t.now
        async with limiter.slot(model="m"):  # no cool-down came of it
            second = t.now
        return first, second, limiter.cooling("m")
    first, second, cooling = asyncio.run(main())
    assert first == 102.0 and second - first < 5 and cooling == 0


def test_pacing_past_the_deadline_raises_and_holds_nothing():
    async def main():
        t = FakeTime()
        limiter = ProviderLimiter("p", parallel=1, rpm=1, clock=t.clock, sleep=t.sleep)
        async with limiter.slot(deadline=t.now + 100):
            pass
        with pytest.raises(DeadlineExceeded):
            async with limiter.slot(deadline=t.now + 30):  # next start in 60 s
                pass
        assert limiter.in_use == 0 and not limiter._waiting
    asyncio.run(main())


def test_slot_caps_concurrency_and_a_full_limiter_respects_the_deadline():
    async def main():
        limiter = ProviderLimiter("p", parallel=2)
        held = asyncio.Event()

        async def hold():
            async with limiter.slot():
                held.set()
                await asyncio.sleep(0.2)
        tasks = [asyncio.create_task(hold()) for _ in range(2)]
        await held.wait()
        loop = asyncio.get_running_loop()
        with pytest.raises(DeadlineExceeded, match="no free slot"):
            async with limiter.slot(deadline=loop.time() + 0.02):
                pass
        await asyncio.gather(*tasks)
        assert limiter.max_in_use == 2 and limiter.in_use == 0
    asyncio.run(main())


def test_cooldown_after_a_burst_of_overload_failures_not_after_one():
    async def main():
        t = FakeTime()
        limiter = ProviderLimiter("p", parallel=1, clock=t.clock, sleep=t.sleep,
                                  cooldown_after=3, cooldown_s=5.0)
        limiter.record(False, overload=True)
        async with limiter.slot():
            pass
        assert t.sleeps == []                        # one failure: no cool-down
        limiter.record(False, overload=False)        # a 400 breaks the streak
        limiter.record(False, overload=True)
        limiter.record(True)                         # so does a success
        for _ in range(3):
            limiter.record(False, overload=True)
        async with limiter.slot():
            pass
        assert t.sleeps == [5.0]
    asyncio.run(main())


def test_parallel_must_be_positive():
    with pytest.raises(ValueError):
        ProviderLimiter("p", parallel=0)


def test_attempt_timeout_sets_every_field():
    p = provider(timeout_s=120, connect_timeout_s=5, read_timeout_s=60)
    streamed = attempt_timeout(p, stream=True, left=None)
    assert (streamed.total, streamed.connect, streamed.sock_connect, streamed.sock_read) == \
        (120, 5, 5, 60)
    assert streamed.ceil_threshold == 5.0
    # A non-streamed answer is silent until complete: only the total bounds it.
    assert attempt_timeout(p, stream=False, left=None).sock_read == 120
    # The deadline shortens every limit.
    near = attempt_timeout(p, stream=True, left=3.0)
    assert (near.total, near.connect, near.sock_read) == (3.0, 3.0, 3.0)
    assert all(getattr(near, f) is not None for f in ("total", "connect", "sock_connect",
                                                       "sock_read", "ceil_threshold"))


def test_make_session_sizes_the_pool_from_the_providers():
    async def main():
        providers = [provider(name="a", parallel=30, base_url="https://api.x.com/v1"),
                     provider(name="b", parallel=50, base_url="https://api.x.com/v1"),
                     provider(name="c", parallel=64, base_url="http://127.0.0.1:8000/v1"),
                     provider(name="d", parallel=40, base_url="http://127.0.0.1:8001/v1")]
        async with make_session(providers) as session:
            connector = session.connector
            assert connector.limit_per_host == 80      # a and b share a host
            assert connector.limit == 184
        async with make_session(providers[2:3]) as session:
            assert (session.connector.limit, session.connector.limit_per_host) == (100, 64)
            timeout = session.timeout
            assert None not in (timeout.total, timeout.connect, timeout.sock_connect,
                                timeout.sock_read)
    asyncio.run(main())
