"""The retry policy as a pure function: no clock, no sleep, no randomness of its own."""

from __future__ import annotations

import email.utils

import pytest
from hypothesis import given
from hypothesis import strategies as st

from moac.providers.constants import RATE_LIMIT_JITTER
from moac.providers.errors import (
    AuthError, BadRequest, ConnectionFailed, ContentFiltered, ContextLengthExceeded,
    DeadlineExceeded, MalformedResponse, MissingApiKey, ProviderTimeout, RateLimited, ServerError,
)
from moac.providers.parse import Where, http_error
from moac.providers.retry import RetryPolicy, backoff, decide, parse_retry_after, parse_should_retry

POLICY = RetryPolicy(max_retries=3, min_attempt_s=1.0)
NOW = 1000.0


def zero() -> float:
    return 0.0


def almost_one() -> float:
    return 0.999999


def status_error(status: int, body: str = "", **headers: str):
    return http_error(status, {k.replace("_", "-"): v for k, v in headers.items()}, body,
                      Where("p", "m"), now_wall=NOW)


@pytest.mark.parametrize("error", [
    ConnectionFailed("reset"), ProviderTimeout("stall", phase="stall"),
    MalformedResponse("cut", what="truncated"), status_error(408), status_error(409),
    status_error(429), status_error(500), status_error(502), status_error(503), status_error(599),
])
def test_retryable_errors_are_retried(error):
    decision = decide(POLICY, 1, error, now=NOW, deadline=None, random=zero)
    assert decision.retry and decision.delay_s == 0.5


@pytest.mark.parametrize("status", [400, 401, 403, 404, 413, 418, 422])
def test_client_errors_are_not_retried(status):
    decision = decide(POLICY, 1, status_error(status), now=NOW, deadline=None, random=zero)
    assert not decision.retry and "not retryable" in decision.reason


def test_status_classification():
    assert isinstance(status_error(401), AuthError) and isinstance(status_error(403), AuthError)
    assert isinstance(status_error(429), RateLimited)
    assert all(isinstance(status_error(s), ServerError) for s in (408, 409, 500, 504))
    assert isinstance(status_error(404), BadRequest)
    long = status_error(400, '{"error": {"message": "This model\'s maximum context length is '
                             '4096 tokens", "code": "context_length_exceeded"}}')
    assert isinstance(long, ContextLengthExceeded) and long.fallback and not long.retryable
    assert "maximum context length" in long.message


def test_final_errors_are_never_retried():
    for error in (ContextLengthExceeded("long"), ContentFiltered("no"),
                  MissingApiKey("KEY"), DeadlineExceeded("late"), ValueError("bug")):
        assert not decide(POLICY, 1, error, now=NOW, deadline=None, random=zero).retry


def test_x_should_retry_overrides_the_status():
    assert decide(POLICY, 1, status_error(400, x_should_retry="true"), now=NOW, deadline=None,
                  random=zero).retry
    no = decide(POLICY, 1, status_error(503, x_should_retry="false"), now=NOW, deadline=None,
                random=zero)
    assert not no.retry and "x-should-retry" in no.reason
    # Neither true nor false: ignored.
    assert decide(POLICY, 1, status_error(503, x_should_retry="maybe"), now=NOW, deadline=None,
                  random=zero).retry


def test_max_retries_counts_retries_not_attempts():
    error = status_error(500)
    assert [decide(POLICY, n, error, now=NOW, deadline=None, random=zero).retry
            for n in (1, 2, 3, 4)] == [True, True, True, False]
    assert not decide(RetryPolicy(max_retries=0), 1, error, now=NOW, deadline=None,
                      random=zero).retry


def test_backoff_doubles_up_to_the_cap_with_jitter_in_range():
    delays = [decide(RetryPolicy(max_retries=10), n, status_error(500), now=NOW, deadline=None,
                     random=zero).delay_s for n in range(1, 8)]
    assert delays == [0.5, 1.0, 2.0, 4.0, 8.0, 8.0, 8.0]
    assert backoff(POLICY, 0, almost_one) == pytest.approx(0.375, abs=1e-5)


@given(st.integers(0, 30), st.floats(0, 1, exclude_max=True))
def test_backoff_stays_in_its_band(n, r):
    base = min(0.5 * 2 ** n, 8.0)
    assert 0.75 * base <= backoff(POLICY, n, lambda: r) <= base


def test_retry_after_is_used_when_sensible():
    def delay(**headers):
        return decide(POLICY, 1, status_error(429, **headers), now=NOW, deadline=None,
                      random=zero).delay_s
    assert delay(retry_after="3") == 3.0
    assert delay(retry_after_ms="1500", retry_after="7") == 1.5       # -ms wins
    assert delay(retry_after_ms="junk", retry_after="7") == 7.0
    assert delay(retry_after="120") == 120.0
    assert delay(retry_after="121") == 0.5    # too long: backoff
    assert delay(retry_after="0") == 0.5      # not positive: backoff
    assert delay(retry_after="-4") == 0.5
    assert delay(retry_after="soon") == 0.5   # unparseable: backoff


def test_retry_after_as_http_date():
    headers = {"retry-after": email.utils.formatdate(NOW + 30, usegmt=True)}
    assert parse_retry_after(headers, now_wall=NOW) == pytest.approx(30.0)
    assert parse_retry_after({}, now_wall=NOW) is None
    assert parse_retry_after({"retry-after": "Tue, 99 Foo"}, now_wall=NOW) is None
    assert parse_retry_after({"retry-after": "nan"}, now_wall=NOW) is None
    assert parse_should_retry({"x-should-retry": " TRUE "}) is True
    assert parse_should_retry({}) is None


def test_retry_after_longer_than_the_time_left_is_final():
    decision = decide(POLICY, 1, status_error(429, retry_after="30"), now=NOW,
                      deadline=NOW + 10, random=zero)
    assert not decision.retry and "deadline" in decision.reason
    # Even one the policy would otherwise ignore as too long.
    assert not decide(POLICY, 1, status_error(429, retry_after="3600"), now=NOW,
                      deadline=NOW + 600, random=zero).retry
    # Without a deadline a long one falls back to the backoff.
    assert decide(POLICY, 1, status_error(429, retry_after="3600"), now=NOW, deadline=None,
                  random=zero).delay_s == 0.5


def test_no_retry_that_would_leave_less_than_the_minimum_attempt_time():
    error = status_error(500)
    assert decide(POLICY, 1, error, now=NOW, deadline=NOW + 1.5, random=zero).retry   # 0.5 + 1.0
    late = decide(POLICY, 1, error, now=NOW, deadline=NOW + 1.4, random=zero)
    assert not late.retry and "no time" in late.reason
    assert not decide(POLICY, 1, error, now=NOW, deadline=NOW - 1, random=zero).retry


_errors = st.sampled_from([status_error(500), status_error(429), status_error(429, retry_after="2"),
                           status_error(503, retry_after_ms="250"), ConnectionFailed("x"),
                           ProviderTimeout("t"), status_error(400), status_error(429, retry_after="90")])


@given(_errors, st.integers(1, 6), st.floats(0, 1e6), st.none() | st.floats(-10, 200),
       st.floats(0, 1, exclude_max=True), st.floats(0, 5))
def test_a_retry_never_sleeps_past_the_deadline(error, attempt, now, left, r, min_attempt):
    policy = RetryPolicy(max_retries=4, min_attempt_s=min_attempt)
    deadline = None if left is None else now + left
    decision = decide(policy, attempt, error, now=now, deadline=deadline, random=lambda: r)
    if decision.retry:
        # A 429 is retried whatever the count: a rate limit costs time, never the answer.
        assert attempt <= policy.max_retries or isinstance(error, RateLimited)
        assert decision.delay_s > 0
        assert decision.delay_s <= max(policy.max_delay_s,
                                       policy.max_retry_after_s * (1 + RATE_LIMIT_JITTER))
        if deadline is not None:
            assert now + decision.delay_s + min_attempt <= deadline + 1e-9
    else:
        assert decision.delay_s == 0.0 and decision.reason


def test_policy_from_provider():
    from moac.ir.spec import ProviderSpec
    provider = ProviderSpec(name="p", kind="openai", base_url="http://x/v1", parallel=1,
                            timeout_s=1, connect_timeout_s=1, read_timeout_s=1, max_retries=5)
    assert RetryPolicy.for_provider(provider).max_retries == 5
