"""The OpenAI-compatible client against a real local HTTP server: answers, faults, retries,
timeouts, the deadline and the concurrency cap. Never a patched client."""

from __future__ import annotations

import asyncio
import email.utils
import socket
import time

import pytest
from fake_openai import Behavior, FakeOpenAI, expected_text, fake_server, prompt_tokens  # noqa: F401
from pydantic import SecretStr

from moac.ir.prompts import estimate_tokens
from moac.providers import (
    BadRequest, CallResult, ChatRequest, ConnectionFailed, ContentFiltered, ContextLengthExceeded,
    DeadlineExceeded, MalformedResponse, OpenAICompatibleClient, ProviderTimeout, RateLimited,
    RetryPolicy, ServerError, make_session,
)
from moac.ir.spec import Sampling

KEY = "sk-test-0123456789abcdef"
SAMPLING = Sampling(temperature=0.7, max_tokens=64, seed=3)
MESSAGES = [{"role": "system", "content": "Be brief."},
            {"role": "user", "content": "What is a Mixture-of-Agents?"}]


def request(stream: bool = True, **fields) -> ChatRequest:
    return ChatRequest(fields.pop("model", "m"), fields.pop("messages", MESSAGES), SAMPLING,
                       stream=stream, **fields)


class Harness:
    def __init__(self, server: FakeOpenAI, client: OpenAICompatibleClient, sleeps: list[float]):
        self.server, self.client, self.sleeps = server, client, sleeps


def run(test, *, policy: RetryPolicy | None = None, clock=None, wall_clock=time.time,
        random=lambda: 0.0, server: FakeOpenAI | None = None, **provider_fields):
    """Start a fake server and a client on one loop, then ``await test(harness)``. Backoff
    sleeps are recorded, not slept (and advance ``clock`` if it has an ``advance``)."""
    async def main():
        async with (server or FakeOpenAI(api_key=KEY)) as srv:
            provider = srv.provider_spec(**provider_fields)
            sleeps: list[float] = []

            async def sleep(seconds: float) -> None:
                sleeps.append(seconds)
                if hasattr(clock, "advance"):
                    clock.advance(seconds)
            # A pool bigger than the provider's cap: the limiter, not the pool, must cap.
            async with make_session([provider.model_copy(update={"parallel": 64})]) as session:
                client = OpenAICompatibleClient(
                    session, provider, SecretStr(KEY), policy=policy, sleep=sleep, random=random,
                    clock=clock or time.monotonic, wall_clock=wall_clock)
                return await test(Harness(srv, client, sleeps))
    return asyncio.run(main())


class SkewedClock:
    """Real monotonic time plus whatever the fake sleeps added."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.monotonic() + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += seconds


# --- answers -------------------------------------------------------------------------------

@pytest.mark.parametrize("stream", [True, False])
def test_success(stream):
    async def test(h: Harness):
        deltas, ended = [], []
        result = await h.client.chat(request(stream), on_delta=deltas.append,
                                     on_attempt=ended.append)
        assert isinstance(result, CallResult)
        assert result.text == expected_text("m", MESSAGES) == "".join(deltas)
        assert len(deltas) == (8 if stream else 1)
        assert result.finish_reason == "stop" and not result.truncated
        assert (result.usage.prompt_tokens, result.usage.completion_tokens) == \
            (prompt_tokens(MESSAGES), 8)
        assert result.usage.reported
        (attempt,) = result.attempts
        assert ended == [attempt]
        assert attempt.status == "ok" and attempt.http_status == 200 and attempt.error_type is None
        assert 0 < attempt.ttft_s <= attempt.duration_s
        assert attempt.started_wall <= attempt.ended_wall
        (seen,) = h.server.requests
        assert seen.authorized and seen.headers["Authorization"] == "[REDACTED]"
        assert seen.body["model"] == "m" and seen.body["messages"] == MESSAGES
        assert (seen.body["temperature"], seen.body["max_tokens"], seen.body["seed"]) == (0.7, 64, 3)
        assert "top_p" not in seen.body
        if stream:
            assert seen.body["stream"] and seen.body["stream_options"] == {"include_usage": True}
        else:
            assert "stream" not in seen.body
    run(test)


@pytest.mark.parametrize("behavior", [
    Behavior(tiny_chunks=True),
    Behavior(keepalive=True, token_delay_s=0.001),
], ids=["awkward-byte-boundaries", "keepalives"])
def test_streams_split_anywhere_decode_the_same(behavior):
    async def test(h: Harness):
        h.server.set_default(behavior)
        result = await h.client.chat(request(messages=[{"role": "user", "content": "naïve ☃"}]))
        assert result.text == expected_text("m", [{"role": "user", "content": "naïve ☃"}])
        assert "\u2028" in result.text or "日本語" in result.text or "🙂" in result.text
        assert result.usage.reported
    run(test)


def test_a_json_answer_to_a_stream_request_is_accepted():
    async def test(h: Harness):
        h.server.set_default(Behavior(ignore_stream=True))
        deltas = []
        result = await h.client.chat(request(True), on_delta=deltas.append)
        assert result.text == expected_text("m", MESSAGES) == "".join(deltas)
        assert result.usage.reported
    run(test)


@pytest.mark.parametrize("stream", [True, False])
def test_length_is_a_success_flagged_truncated(stream):
    async def test(h: Harness):
        result = await h.client.chat(request(stream, max_tokens=3))
        assert result.truncated and result.finish_reason == "length"
        assert result.text == expected_text("m", MESSAGES, max_tokens=3)
        assert h.server.requests[0].body["max_tokens"] == 3
    run(test)


@pytest.mark.parametrize("stream", [True, False])
def test_missing_usage_is_counted_at_its_upper_bounds_and_flagged(stream):
    """With no usage, what the provider may have billed is not guessed low: the prompt at a
    token per UTF-8 byte (plus template overheads), the answer the same, up to max_tokens."""
    async def test(h: Harness):
        h.server.set_default(Behavior(missing_usage=True))
        req = request(stream)
        result = await h.client.chat(req)
        assert not result.usage.reported and not result.attempts[0].tokens_reported
        assert result.usage.prompt_tokens == req.max_prompt_tokens() > \
            len("".join(m["content"] for m in MESSAGES).encode())
        assert result.usage.completion_tokens == \
            min(len(result.text.encode()), req.answer_limit) > estimate_tokens(result.text)
    run(test)


# --- malformed answers -----------------------------------------------------------------------

@pytest.mark.parametrize("stream", [True, False])
@pytest.mark.parametrize("behavior, what", [
    (Behavior(malformed=True), "non_json"),
    (Behavior(error_in_200=True), "error_object"),
    (Behavior(null_content=True), "null_content"),
])
def test_malformed_responses(stream, behavior, what):
    async def test(h: Harness):
        h.server.set_default(behavior)
        with pytest.raises(MalformedResponse) as caught:
            await h.client.chat(request(stream))
        error = caught.value
        assert error.what == what and error.retryable and error.status == 200
        # Retried (a gateway's hiccup), each attempt recorded; then final.
        assert [a.error_type for a in error.attempts] == ["MalformedResponse"] * 2
        assert "gave up after 2 attempts" in error.gave_up
        assert h.sleeps == [0.5]
    run(test, max_retries=1)


def test_no_choices_is_malformed():
    async def test(h: Harness):
        h.server.set_default(Behavior(no_choices=True))
        with pytest.raises(MalformedResponse) as caught:
            await h.client.chat(request(False))
        assert caught.value.what == "no_choices" and caught.value.body.startswith("{")
    run(test)


def test_truncated_stream_is_malformed_and_its_tokens_count():
    async def test(h: Harness):
        h.server.set_default(Behavior(truncate_after=3))
        deltas = []
        with pytest.raises(MalformedResponse) as caught:
            await h.client.chat(request(), on_delta=deltas.append)
        assert caught.value.what == "truncated"
        (attempt,) = caught.value.attempts
        # The provider accepted the request and generated: it may bill the attempt.
        assert attempt.http_status == 200 and attempt.completion_tokens > 0
        assert attempt.prompt_tokens > 0 and not attempt.tokens_reported
        assert "".join(deltas) == expected_text("m", MESSAGES, max_tokens=3)
    run(test)


def test_dropped_connection_mid_stream_is_retried_and_the_answer_starts_over():
    async def test(h: Harness):
        h.server.script(Behavior(abort_after=2))
        deltas, ended = [], []
        result = await h.client.chat(request(), on_delta=deltas.append, on_attempt=ended.append)
        assert [a.status for a in result.attempts] == ["failed", "ok"]
        assert result.attempts[0].error_type in ("MalformedResponse", "ConnectionFailed")
        # The caller can tell the answer restarted: an attempt ended between the deltas.
        assert ended[0].status == "failed"
        assert "".join(deltas).endswith(result.text)
        assert result.text == expected_text("m", MESSAGES)
    run(test, max_retries=2)


@pytest.mark.parametrize("stream", [True, False])
def test_content_filter_fails_without_retry(stream):
    async def test(h: Harness):
        h.server.set_default(Behavior(finish_reason="content_filter"))
        with pytest.raises(ContentFiltered) as caught:
            await h.client.chat(request(stream))
        assert len(caught.value.attempts) == 1 and not caught.value.retryable
    run(test, max_retries=3)


def test_context_length_goes_to_the_fallback_not_a_retry():
    async def test(h: Harness):
        h.server.set_default(Behavior.context_length())
        with pytest.raises(ContextLengthExceeded) as caught:
            await h.client.chat(request())
        error = caught.value
        assert error.fallback and error.status == 400 and len(error.attempts) == 1
        assert "maximum context length" in str(error)
    run(test, max_retries=3)


@pytest.mark.parametrize("status", [400, 404, 422])
def test_other_client_errors_are_final(status):
    async def test(h: Harness):
        h.server.set_default(Behavior(status=status))
        with pytest.raises(BadRequest) as caught:
            await h.client.chat(request())
        assert caught.value.status == status and len(h.server.requests) == 1
        assert f"fake error {status}" in caught.value.message
    run(test, max_retries=3)


# --- retries -------------------------------------------------------------------------------

def test_429_then_success_honours_retry_after():
    async def test(h: Harness):
        h.server.script(Behavior.rate_limited(retry_after=2))
        result = await h.client.chat(request())
        assert h.sleeps == [2.0]
        first, second = result.attempts
        assert (first.status, first.error_type, first.http_status) == ("failed", "RateLimited", 429)
        assert (first.prompt_tokens, first.completion_tokens) == (0, 0)   # nothing billed
        assert second.status == "ok" and second.number == 2
    run(test, max_retries=2)


def test_retry_after_ms_and_http_date():
    async def test(h: Harness):
        h.server.script(Behavior.rate_limited(retry_after=7, retry_after_ms=1500),
                        Behavior.rate_limited(retry_after=email.utils.formatdate(1_000_030, usegmt=True)))
        await h.client.chat(request())
        assert h.sleeps == [1.5, 30.0]
    run(test, max_retries=2, wall_clock=lambda: 1_000_000.0)


def test_500s_exhaust_the_retries_with_backoff_and_every_attempt_recorded():
    async def test(h: Harness):
        h.server.set_default(Behavior.server_error(503))
        with pytest.raises(ServerError) as caught:
            await h.client.chat(request())
        error = caught.value
        assert error.status == 503 and len(h.server.requests) == 3
        assert [a.number for a in error.attempts] == [1, 2, 3]
        assert all(a.status == "failed" and a.http_status == 503 for a in error.attempts)
        assert h.sleeps == [0.5, 1.0]
        assert error.gave_up == "gave up after 3 attempts"
    run(test, max_retries=2)


def test_a_burst_of_failures_cools_the_provider_down():
    clock = SkewedClock()

    async def test(h: Harness):
        h.server.script(*[Behavior.server_error(500)] * 3)
        result = await h.client.chat(request())
        # Backoffs of 0.5 and 1 s, then the third failure in a row starts a 5 s cool-down
        # of which the 2 s backoff already spent 2.
        assert h.sleeps[:3] == [0.5, 1.0, 2.0]
        assert h.sleeps[3] == pytest.approx(3.0, abs=0.05) and len(h.sleeps) == 4
        assert [a.status for a in result.attempts] == ["failed"] * 3 + ["ok"]
    run(test, clock=clock, max_retries=3)


def test_x_should_retry_false_stops_a_500():
    async def test(h: Harness):
        h.server.set_default(Behavior.server_error(500, should_retry=False))
        with pytest.raises(ServerError) as caught:
            await h.client.chat(request())
        assert len(caught.value.attempts) == 1 and "x-should-retry" in caught.value.gave_up
    run(test, max_retries=3)


def test_connection_refused_is_retried_then_fails():
    with socket.socket() as sock:      # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]

    async def test(h: Harness):
        with pytest.raises(ConnectionFailed) as caught:
            await h.client.chat(request())
        assert len(caught.value.attempts) == 2 and caught.value.attempts[0].http_status is None
    run(test, max_retries=1, base_url=f"http://127.0.0.1:{port}/v1")


# --- timeouts and the deadline --------------------------------------------------------------

@pytest.mark.parametrize("stream, phase, limit", [(True, "stall", 0.3), (False, "total", 0.6)])
def test_a_hang_times_out_within_the_configured_time(stream, phase, limit):
    async def test(h: Harness):
        h.server.set_default(Behavior.hanging())
        start = time.monotonic()
        with pytest.raises(ProviderTimeout) as caught:
            await h.client.chat(request(stream))
        elapsed = time.monotonic() - start
        assert caught.value.phase == phase and caught.value.retryable
        assert limit - 0.05 <= elapsed <= limit + 0.4
        assert caught.value.attempts[0].error_type == "ProviderTimeout"
    run(test, timeout_s=0.6, read_timeout_s=0.3, connect_timeout_s=0.5)


def test_a_stall_mid_stream_is_a_timeout():
    async def test(h: Harness):
        h.server.set_default(Behavior(stall_after=2))
        with pytest.raises(ProviderTimeout) as caught:
            await h.client.chat(request())
        assert caught.value.phase == "stall"
        assert caught.value.attempts[0].completion_tokens > 0   # two tokens were sent
    run(test, timeout_s=2.0, read_timeout_s=0.2)


def test_no_attempt_starts_without_the_minimum_time_left():
    async def test(h: Harness):
        with pytest.raises(DeadlineExceeded) as caught:
            await h.client.chat(request(), deadline=time.monotonic() + 0.5)
        assert h.server.requests == [] and caught.value.attempts == ()
    run(test, policy=RetryPolicy(max_retries=2, min_attempt_s=1.0))


def test_retry_after_beyond_the_deadline_is_final():
    async def test(h: Harness):
        h.server.set_default(Behavior.rate_limited(retry_after=30))
        with pytest.raises(RateLimited) as caught:
            await h.client.chat(request(), deadline=time.monotonic() + 10)
        assert h.sleeps == [] and len(h.server.requests) == 1
        assert caught.value.retry_after == 30 and "deadline" in caught.value.gave_up
    run(test, max_retries=5)


def test_backoff_stops_when_the_next_attempt_could_not_finish():
    clock = SkewedClock()

    async def test(h: Harness):
        h.server.set_default(Behavior.server_error(500))
        with pytest.raises(ServerError) as caught:
            await h.client.chat(request(), deadline=clock() + 1.4)
        # 0.5 s backoff leaves ~0.9 s >= 0.5 s: retry; a 1 s backoff would leave < 0.5 s.
        assert h.sleeps == [0.5] and len(caught.value.attempts) == 2
        assert "no time for another attempt" in caught.value.gave_up
    run(test, clock=clock, policy=RetryPolicy(max_retries=5, min_attempt_s=0.5))


def test_the_deadline_cuts_a_hanging_attempt():
    async def test(h: Harness):
        h.server.set_default(Behavior.hanging())
        start = time.monotonic()
        with pytest.raises(DeadlineExceeded) as caught:
            await h.client.chat(request(), deadline=start + 0.4)
        assert 0.35 <= time.monotonic() - start <= 0.8
        assert [a.error_type for a in caught.value.attempts] == ["DeadlineExceeded"]
    run(test, timeout_s=5.0, read_timeout_s=5.0, max_retries=3,
        policy=RetryPolicy(max_retries=3, min_attempt_s=0.1))


def test_cancellation_is_recorded_and_reraised():
    async def test(h: Harness):
        h.server.set_default(Behavior(latency_s=5.0))
        ended = []
        task = asyncio.create_task(h.client.chat(request(), on_attempt=ended.append))
        while not h.server.requests:
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert [a.status for a in ended] == ["cancelled"]
        assert h.client.limiter.in_use == 0
    run(test)


# --- concurrency ---------------------------------------------------------------------------

def test_the_limiter_caps_requests_in_flight_at_parallel():
    async def test(h: Harness):
        h.server.set_default(Behavior(latency_s=0.05))
        results = await asyncio.gather(*(h.client.chat(request(model=f"m{i}")) for i in range(7)))
        assert [r.text for r in results] == [expected_text(f"m{i}", MESSAGES) for i in range(7)]
        assert h.server.max_in_flight == 2 and h.client.limiter.max_in_use == 2
    run(test, parallel=2)


def test_a_backoff_sleep_holds_no_slot():
    in_use_while_sleeping = []

    async def test(h: Harness):
        async def sleep(seconds):
            in_use_while_sleeping.append(h.client.limiter.in_use)
        h.client._sleep = sleep
        h.server.script(Behavior.server_error(500), Behavior.rate_limited(1))
        await h.client.chat(request())
        assert in_use_while_sleeping == [0, 0]
    run(test, parallel=1, max_retries=2)


def test_threaded_server_fixture_for_synchronous_tests(fake_server):
    # The server runs on a loop in its own thread; the client on asyncio.run's loop.
    fake_server.set_default(Behavior(latency_s=0.01))
    fake_server.script(Behavior.server_error(502))

    async def main():
        provider = fake_server.provider_spec(max_retries=1)
        async with make_session([provider]) as session:
            client = OpenAICompatibleClient(session, provider, None,
                                            sleep=lambda s: asyncio.sleep(0))
            return await client.chat(request(False))
    result = asyncio.run(main())
    assert result.text == expected_text("m", MESSAGES)
    assert [r.status for r in fake_server.requests] == [502, 200]
    first = fake_server.requests[0]
    assert first.authorized is None and "Authorization" not in first.headers
