"""An OpenAI-compatible chat-completions client: one retry loop, typed errors, attempt records.

Contract of :meth:`OpenAICompatibleClient.chat`:

- Returns a :class:`CallResult` or raises a :class:`~moac.providers.errors.ProviderError`
  subclass whose ``.attempts`` lists every attempt and ``.gave_up`` says why it stopped.
  ``asyncio.CancelledError`` is re-raised untouched (the attempt in flight is recorded as
  ``cancelled`` through ``on_attempt``). This is the only retry loop: callers must not add
  another.
- A result always holds text: a 2xx answer that is empty or only whitespace is a failed
  attempt (:class:`~moac.providers.errors.EmptyAnswer`), one the provider's content filter
  stopped another (:class:`~moac.providers.errors.ContentFiltered`). One cut by
  ``max_tokens`` is a success, flagged (``finish_reason == "length"``).
- Each attempt holds one of the provider's slots (:class:`~moac.providers.limits.ProviderLimiter`)
  only while it runs; backoff sleeps hold none.
- Each attempt is bounded by an ``aiohttp.ClientTimeout`` with every field set: ``total`` is the
  provider's ``timeout_s`` (less if the deadline is nearer), ``connect`` and ``sock_connect``
  its ``connect_timeout_s``, ``sock_read`` its ``read_timeout_s`` for streams (a stall).
  A non-streamed answer sends nothing until it is complete, so there ``sock_read`` is the
  total. An attempt cut short by the deadline fails with ``DeadlineExceeded``.
- Streams are decoded from raw bytes (``response.content.iter_any()``) with
  :class:`~moac.providers.sse.SSEDecoder`; ``on_delta`` gets each text delta as it arrives
  (a non-streamed answer arrives as one delta). After a failed attempt that already produced
  deltas, the next attempt's deltas start the answer over: ``on_attempt`` (called at the end
  of every attempt, ok, failed or cancelled) tells the caller when that happens.
- Thinking is split from the answer as it arrives (:mod:`moac.providers.thinking`: an inline
  ``<think>`` block, or a ``reasoning_content``/``reasoning`` field): ``on_delta`` and the
  result's ``text`` get the answer alone, ``on_reasoning`` and ``reasoning`` the thinking.
  The limit sent bounds both; thinking tokens are completion tokens.
- Token counts come from the provider's ``usage`` when it sends one, else are estimated
  (:func:`moac.ir.prompts.estimate_tokens`) and flagged. A failed attempt counts tokens only
  once the provider accepted it (a 2xx): those can be billed; 4xx/5xx/timeouts before a
  response count none.
"""

from __future__ import annotations

import asyncio
import json
import random as _random
import sys
import time
from dataclasses import dataclass, field, replace
from typing import Any, Awaitable, Callable, Iterable, Literal, Mapping, Sequence
from urllib.parse import urlsplit

import aiohttp
from pydantic import SecretStr

from moac.constants import (
    DEFAULT_CONNECT_TIMEOUT_S, DEFAULT_READ_TIMEOUT_S, DEFAULT_TIMEOUT_S,
    MAX_ANSWER_BYTES_PER_TOKEN,
)
from moac.ir.prompts import (
    estimate_tokens, messages_max_tokens, messages_tokens, text_max_tokens,
)
from moac.providers.constants import (
    AUTH_REFUSALS_TO_STOP, DEFAULT_CONNECTION_LIMIT, MAX_ERROR_BODY_READ_BYTES, MAX_REPORTED_TOKENS,
    MIN_API_KEY_CHARS, RESPONSE_BYTES_BASE, RESPONSE_BYTES_PER_TOKEN, TIMEOUT_CEIL_THRESHOLD_S, USER_AGENT,
)
from moac.providers.errors import (
    AuthError, ConnectionFailed, DeadlineExceeded, MalformedResponse, MissingApiKey, ProviderError,
    ProviderTimeout, RateLimited, ServerError,
)
from moac.providers.limits import ProviderLimiter
from moac.providers.ratelimits import parse_rate_limits
from moac.providers.parse import (
    StreamState, Where, http_error, parse_completion, reasoning_tokens, require_answer,
    too_large, too_long,
    unexpected_body,
)
from moac.providers.retry import RetryPolicy, decide
from moac.providers.sse import LineTooLong, SSEDecoder
from moac.ir.spec import ProviderSpec, Sampling
from moac.text import json_bytes


# aiohttp >= 3.10 says which timeout fired; before, both are a plain ServerTimeoutError.
_SOCKET_TIMEOUT = getattr(aiohttp, "SocketTimeoutError", ())
_CONNECT_TIMEOUT = getattr(aiohttp, "ConnectionTimeoutError", ())


@dataclass(frozen=True, slots=True)
class ChatRequest:
    """One chat completion to ask for. ``model`` is the provider's model id; ``max_tokens``
    overrides ``sampling.max_tokens`` (e.g. clamped by a budget); ``min_attempt_s``
    overrides the policy's minimum time an attempt needs before the deadline.
    ``occurrence`` counts the identical requests of the same query before this one (copies
    of an agent without a seed ask exactly the same thing): it is never sent, but a response
    cache keys on it, so that replayed copies do not collapse into one answer. ``scope`` is
    the query the request belongs to (never sent): a batch's journal keys on it, so that a
    resumed query takes back its own answers and no other's. ``priority`` orders it among
    requests waiting for the provider (lower first; see :mod:`moac.providers.limits`).
    What the model's API takes: ``token_param`` names the field the limit is sent in,
    ``fixed_temperature`` sends no temperature or top_p, ``reasoning_effort`` is sent when
    set; ``thinks``: the model may think unseen, so a completion it does not report is
    counted at the limit."""

    model: str
    messages: Sequence[Mapping[str, Any]]
    sampling: Sampling
    max_tokens: int | None = None
    stream: bool = True
    min_attempt_s: float | None = None
    occurrence: int = 0
    scope: str = ""
    priority: tuple = ()
    token_param: str = "max_tokens"
    fixed_temperature: bool = False
    reasoning_effort: str | None = None
    thinks: bool = False

    @property
    def answer_limit(self) -> int:
        """The limit sent (``max_tokens`` or ``max_completion_tokens``): the most
        completion tokens, thinking included, the provider may bill."""
        return self.max_tokens if self.max_tokens is not None else self.sampling.max_tokens

    def body(self) -> bytes:
        payload: dict[str, Any] = {
            "model": self.model, "messages": [dict(m) for m in self.messages]}
        if not self.fixed_temperature:
            payload["temperature"] = self.sampling.temperature
        payload[self.token_param] = self.answer_limit
        if self.sampling.top_p is not None and not self.fixed_temperature:
            payload["top_p"] = self.sampling.top_p
        if self.reasoning_effort is not None:
            payload["reasoning_effort"] = self.reasoning_effort
        if self.sampling.seed is not None:
            payload["seed"] = self.sampling.seed
        if self.stream:
            payload["stream"] = True
            payload["stream_options"] = {"include_usage": True}
        return json_bytes(payload)

    def estimated_prompt_tokens(self) -> int:
        return messages_tokens(self.messages)

    def max_prompt_tokens(self) -> int:
        """The most prompt tokens the provider can bill for this request, whatever its
        tokeniser (:func:`moac.ir.prompts.messages_max_tokens`)."""
        return messages_max_tokens(self.messages)


@dataclass(slots=True)
class Attempt:
    """One HTTP attempt, as the trace records it (an allow-list: no header, body or key).
    Times: ``started``/``ended`` on the client's monotonic clock, ``*_wall`` in epoch
    seconds; ``ttft_s`` from the attempt's start to the first text of the answer (for a
    non-streamed answer, to the whole body), ``reasoning_ttft_s`` to the first text of its
    thinking (None: none was shown). ``reasoning_tokens`` is the part of the completion
    that was thinking (as reported, else estimated from what was shown), and ``reasoning``
    the thinking shown. ``status`` is ``failed`` with ``error_type`` the
    :class:`ProviderError` subclass's name, or ``cancelled``. ``cached``: answered from the
    response cache (:mod:`moac.run.cache`); nothing was sent and nothing is billed."""

    number: int
    started: float
    started_wall: float
    ended: float = 0.0
    ended_wall: float = 0.0
    ttft_s: float | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    tokens_reported: bool = False
    status: Literal["ok", "failed", "cancelled"] = "failed"
    error_type: str | None = None
    finish_reason: str | None = None
    http_status: int | None = None
    cached: bool = False
    overrun: str | None = None  # reported usage past the request's bounds (see _count_tokens)
    queued_s: float = 0.0  # waited for a slot, the key's pacer or a model's cool-down
    reasoning_ttft_s: float | None = None
    reasoning_tokens: int = 0
    reasoning: str = ""

    @property
    def duration_s(self) -> float:
        return self.ended - self.started


@dataclass(frozen=True, slots=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int
    reported: bool  # False: at least one count was estimated
    reasoning_tokens: int = 0  # of the completion tokens (which include them)


@dataclass(frozen=True, slots=True)
class CallResult:
    """``text`` is the answer alone; ``reasoning`` what the model showed of its thinking."""
    text: str
    finish_reason: str | None
    usage: Usage
    attempts: tuple[Attempt, ...] = field(default=())
    reasoning: str = ""

    @property
    def truncated(self) -> bool:
        """The answer hit ``max_tokens`` (``finish_reason == "length"``): a success, cut."""
        return self.finish_reason == "length"


def attempt_timeout(provider: ProviderSpec, *, stream: bool, left: float | None) -> aiohttp.ClientTimeout:
    """Every field explicit: in aiohttp 3.x a bare ``ClientTimeout(sock_read=...)`` has no
    total limit at all."""
    total = provider.timeout_s if left is None else max(min(provider.timeout_s, left), 0.001)
    connect = min(provider.connect_timeout_s, total)
    sock_read = min(provider.read_timeout_s, total) if stream else total
    return aiohttp.ClientTimeout(total=total, connect=connect, sock_connect=connect,
                                 sock_read=sock_read, ceil_threshold=TIMEOUT_CEIL_THRESHOLD_S)


class OpenAICompatibleClient:
    """Calls ``POST {base_url}/chat/completions`` of one provider (see the module docstring).
    ``clock`` is monotonic seconds, ``wall_clock`` epoch seconds (for HTTP-date
    Retry-After and trace times), ``random()`` in [0, 1)."""

    def __init__(self, session: aiohttp.ClientSession, provider: ProviderSpec,
                 api_key: SecretStr | None, *, policy: RetryPolicy | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 wall_clock: Callable[[], float] = time.time,
                 sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
                 random: Callable[[], float] = _random.random,
                 limiter: ProviderLimiter | None = None) -> None:
        if not provider.base_url:
            raise ValueError(f"provider {provider.name!r} has no base_url")
        self.provider = provider
        self.policy = policy or RetryPolicy.for_provider(provider)
        self.limiter = limiter or ProviderLimiter(provider.name, provider.parallel, provider.rpm,
                                                  clock=clock, sleep=sleep)
        self._session = session
        self._url = provider.base_url.rstrip("/") + "/chat/completions"
        self._clock, self._wall, self._sleep, self._random = clock, wall_clock, sleep, random
        self._secrets = (api_key.get_secret_value(),) if api_key else ()
        base = {"Content-Type": "application/json", "User-Agent": USER_AGENT}
        if api_key:
            base["Authorization"] = f"Bearer {api_key.get_secret_value()}"
        self._headers = {True: {**base, "Accept": "text/event-stream"},
                         False: {**base, "Accept": "application/json"}}
        # 401s in a row on this provider, 403s in a row per model (see AUTH_REFUSALS_TO_STOP)
        self._refused: dict[str | None, tuple[int, str]] = {}

    def __repr__(self) -> str:  # never the headers
        return f"OpenAICompatibleClient(provider={self.provider.name!r}, url={self._url!r})"

    async def chat(self, request: ChatRequest, *, deadline: float | None = None,
                   on_delta: Callable[[str], None] | None = None,
                   on_attempt: Callable[[Attempt], None] | None = None,
                   on_reasoning: Callable[[str], None] | None = None) -> CallResult:
        """Run ``request`` with retries until success, a final error or ``deadline``
        (on ``clock``; None: none). See the module docstring for the contract;
        ``on_reasoning`` gets the thinking's deltas as ``on_delta`` gets the answer's."""
        policy = self.policy if request.min_attempt_s is None else replace(
            self.policy, min_attempt_s=request.min_attempt_s)
        where = Where(self.provider.name, request.model, self._secrets)
        stopped = self._key_refused(request.model, where)
        if stopped is not None:
            raise stopped
        body = request.body()
        # What the key's tokens-per-minute limit counts this request as (providers count
        # max_tokens when it starts); corrected with the usage it reports.
        paced_tokens = request.estimated_prompt_tokens() + request.answer_limit
        attempts: list[Attempt] = []
        number = 0
        refused = False  # the last attempt got a 429 (and its retry waited it out)
        while True:
            number += 1
            outcome: CallResult | ProviderError | None = self._too_late(deadline, policy, where, number)
            if outcome is None:
                try:
                    async with self.limiter.slot(deadline, model=request.model,
                                                 priority=request.priority, tokens=paced_tokens,
                                                 after_429=refused) as waited:
                        # Pacing or a cool-down may have used up the time.
                        outcome = self._too_late(deadline, policy, where, number) or \
                            await self._attempt(request, body, where, number, deadline,
                                                on_delta, on_attempt, attempts, waited,
                                                on_reasoning)
                except DeadlineExceeded as late:  # from the limiter: no attempt was made
                    late.model = request.model
                    outcome = late
            if attempts and attempts[-1].number == number:
                used = attempts[-1].prompt_tokens + attempts[-1].completion_tokens
                self.limiter.pacer.settle(paced_tokens, used)
            if isinstance(outcome, CallResult):
                self.limiter.record(True, model=request.model)
                self._refused.pop(None, None)
                self._refused.pop(request.model, None)
                return outcome
            error = outcome
            if isinstance(error, AuthError) and error.status in (401, 403):
                scope = None if error.status == 401 else request.model
                count, _ = self._refused.get(scope, (0, ""))
                self._refused[scope] = (count + 1, error.message)
            refused = isinstance(error, RateLimited)
            if refused:
                # Pacing, not failure: the key's pacer pauses for what the server asked.
                self.limiter.rate_limited(error.retry_after,
                                          attempts[-1].started if attempts else None)
            elif not isinstance(error, DeadlineExceeded):  # that says nothing of the model
                self.limiter.record(False, model=request.model, overload=isinstance(
                    error, (ServerError, ProviderTimeout, ConnectionFailed)))
            decision = decide(policy, number, error, now=self._clock(), deadline=deadline,
                              random=self._random)
            if not decision.retry:
                error.attempts, error.gave_up = tuple(attempts), decision.reason
                raise error
            await self._sleep(decision.delay_s)

    def _key_refused(self, model: str, where: Where) -> AuthError | None:
        """The error for a call not sent because the provider refused the key on its last
        :data:`AUTH_REFUSALS_TO_STOP` calls (401s, or 403s for this model), or None."""
        for scope, status in ((None, 401), (model, 403)):
            count, message = self._refused.get(scope, (0, ""))
            if count >= AUTH_REFUSALS_TO_STOP:
                variable = self.provider.api_key_env
                whose = f"the key in {variable}" if variable else "its key (none is set)"
                what = "" if scope is None else f" for model {model}"
                error = AuthError(
                    f"not sent: provider {self.provider.name!r} refused {whose}{what} "
                    f"{AUTH_REFUSALS_TO_STOP} times in a row (HTTP {status}: {message}); the "
                    "key is wrong or lacks access, so nothing more goes to it in this run",
                    status=status, **where.fields())
                error.gave_up = "the provider refused the key"
                return error
        return None

    def _too_late(self, deadline: float | None, policy: RetryPolicy, where: Where,
                  number: int) -> DeadlineExceeded | None:
        if deadline is None or deadline - self._clock() >= policy.min_attempt_s:
            return None
        return DeadlineExceeded(f"less than {policy.min_attempt_s:.3g}s left before the "
                                f"deadline: attempt {number} not started",
                                provider=where.provider, model=where.model)

    async def _attempt(self, request: ChatRequest, body: bytes, where: Where, number: int,
                       deadline: float | None, on_delta, on_attempt,
                       attempts: list[Attempt], waited: float = 0.0,
                       on_reasoning=None) -> CallResult | ProviderError:
        """One HTTP attempt. Returns the result or the error (never raises one, so no
        aiohttp exception, which may carry request headers, rides along as a context)."""
        start = self._clock()
        record = Attempt(number, start, self._wall(), queued_s=waited)
        left = None if deadline is None else deadline - start
        timeout = attempt_timeout(self.provider, stream=request.stream, left=left)
        response: aiohttp.ClientResponse | None = None
        state = StreamState(where)
        outcome: CallResult | ProviderError | None = None
        try:
            response = await self._session.post(self._url, data=body, timeout=timeout,
                                                headers=self._headers[request.stream])
            record.http_status = response.status
            self.limiter.observe(parse_rate_limits(response.headers,
                                                         now_wall=self._wall()))
            limit = response_limit(request.answer_limit)
            if not 200 <= response.status < 300:
                raw = await _read_some(response, MAX_ERROR_BODY_READ_BYTES)
                outcome = http_error(response.status, response.headers,
                                     raw.decode("utf-8", errors="replace"), where,
                                     now_wall=self._wall())
            elif not _readable(response.content_type):
                # An HTML error page (a proxy's, a login wall) with status 200: say what
                # came back rather than that a stream ended early.
                raw = await _read_some(response, MAX_ERROR_BODY_READ_BYTES)
                outcome = unexpected_body(response.content_type, raw, where)
            elif request.stream and "json" not in response.content_type:
                outcome = await self._read_stream(request, response, state, record,
                                                  (on_delta, on_reasoning), limit)
            else:  # not streamed, or a server that answered a stream request with JSON
                body = await _read_bounded(response, limit, where)
                text, finish_reason, usage, reasoning = parse_completion(body, where)
                record.ttft_s = self._clock() - start
                state.parts.append(text)
                state.reasoning_parts.append(reasoning)
                state.finish_reason, state.usage = finish_reason, usage
                if reasoning:
                    record.reasoning_ttft_s = record.ttft_s
                    if on_reasoning is not None:
                        on_reasoning(reasoning)
                if on_delta is not None and text:
                    on_delta(text)
                outcome = self._result(request, state, record)
        except ProviderError as error:
            outcome = error
        except asyncio.CancelledError:
            record.status = "cancelled"
            raise
        except (aiohttp.ServerTimeoutError, asyncio.TimeoutError) as exc:
            outcome = self._timeout(exc, timeout, where)
        except LineTooLong as exc:
            outcome = MalformedResponse(str(exc), what="non_json", **where.fields(status=200))
        except aiohttp.ClientPayloadError as exc:
            outcome = MalformedResponse(f"the response body was cut: {type(exc).__name__}: {exc}",
                                        what="truncated", **where.fields(status=record.http_status))
        except (aiohttp.ClientError, OSError) as exc:
            outcome = ConnectionFailed(f"{type(exc).__name__}: {exc}", **where.fields())
        except ValueError as exc:
            if response is not None:
                raise  # raised while reading, by a callback: not the connection's fault
            # aiohttp refuses some URLs only when asked to connect (a port out of range).
            outcome = ConnectionFailed(f"cannot connect: {exc}", **where.fields())
        finally:
            if response is not None:
                # Release (connection reused) only after a clean read; otherwise close.
                response.release() if isinstance(outcome, CallResult) else response.close()
            record.ended, record.ended_wall = self._clock(), self._wall()
            if isinstance(outcome, CallResult):
                record.status = "ok"
            else:
                if outcome is not None:
                    record.error_type = outcome.kind
                elif record.status != "cancelled" and sys.exc_info()[1] is not None:
                    record.error_type = type(sys.exc_info()[1]).__name__  # a callback raised
                if record.http_status is not None and 200 <= record.http_status < 300:
                    self._count_tokens(request, state, record)
            record.finish_reason = state.finish_reason
            record.reasoning = state.reasoning
            attempts.append(record)
            if on_attempt is not None:
                on_attempt(record)
        if isinstance(outcome, CallResult):
            outcome = replace(outcome, attempts=tuple(attempts))
        return outcome

    async def _read_stream(self, request: ChatRequest, response: aiohttp.ClientResponse,
                           state: StreamState, record: Attempt, on_delta,
                           limit: int) -> CallResult:
        """``on_delta``: the (answer, thinking) callbacks."""
        decoder = SSEDecoder()
        size = 0
        head = b""  # the first bytes, to say what came back when it was not a stream
        async for chunk in response.content.iter_any():
            size += len(chunk)
            if size > limit:
                raise too_large(limit, request.answer_limit, state.where)
            if len(head) < 512:
                head += chunk[:512 - len(head)]
            self._take(decoder.feed(chunk), state, record, on_delta)
            if decoder.done:
                break
        else:
            self._take(decoder.close(), state, record, on_delta)
        self._give(state.flush(), state, record, on_delta)
        state.finish(decoder.done, head)
        return self._result(request, state, record)

    def _take(self, events, state: StreamState, record: Attempt, on_delta) -> None:
        for event in events:
            self._give(state.event(event.data), state, record, on_delta)

    def _give(self, delta: str, state: StreamState, record: Attempt, on_delta) -> None:
        """Pass on an answer delta and the thinking that came with it; time the first."""
        on_answer, on_reasoning = on_delta
        thought = state.take_reasoning()
        if thought:
            if record.reasoning_ttft_s is None:
                record.reasoning_ttft_s = self._clock() - record.started
            if on_reasoning is not None:
                on_reasoning(thought)
        if delta:
            if record.ttft_s is None:
                record.ttft_s = self._clock() - record.started
            if on_answer is not None:
                on_answer(delta)

    def _result(self, request: ChatRequest, state: StreamState, record: Attempt) -> CallResult:
        text_bytes = text_max_tokens(state.text) + text_max_tokens(state.reasoning)
        if text_bytes > request.answer_limit * MAX_ANSWER_BYTES_PER_TOKEN:
            raise too_long(text_bytes, request.answer_limit, state.where)
        self._count_tokens(request, state, record)
        require_answer(state.text, state.finish_reason, state.where,
                       max_tokens=request.answer_limit)
        usage = Usage(record.prompt_tokens, record.completion_tokens, record.tokens_reported,
                      record.reasoning_tokens)
        return CallResult(state.text, state.finish_reason, usage, reasoning=state.reasoning)

    def _count_tokens(self, request: ChatRequest, state: StreamState, record: Attempt) -> None:
        """The attempt's billable tokens: the provider's ``usage``, else each count at its
        upper bound (what the provider could have billed: never less than it does); a
        reported count past the request's bounds is noted in ``record.overrun``. Thinking
        is completion: reported thinking tokens past the completion count were left out of
        it, and are added; a model that may think unseen (``request.thinks``) without
        reporting its completion is counted at the limit."""
        prompt, completion = _count(state.usage, "prompt_tokens"), \
            _count(state.usage, "completion_tokens")
        reasoning = reasoning_tokens(state.usage)
        record.tokens_reported = prompt is not None and completion is not None
        most_prompt, most_completion = request.max_prompt_tokens(), request.answer_limit
        if prompt is None:
            prompt = most_prompt
        if reasoning is not None:
            reasoning = min(reasoning, MAX_REPORTED_TOKENS)
            if completion is not None and reasoning > completion:
                completion += reasoning
        if completion is None:
            shown = text_max_tokens(state.text) + text_max_tokens(state.reasoning)
            completion = most_completion if request.thinks else min(most_completion, shown)
        record.reasoning_tokens = reasoning if reasoning is not None else \
            min(completion, estimate_tokens(state.reasoning))
        record.prompt_tokens, record.completion_tokens = prompt, completion
        over = []
        if prompt > most_prompt:
            over.append(f"{prompt:,} prompt tokens for a request of at most {most_prompt:,}")
        if completion > most_completion:
            over.append(f"{completion:,} completion tokens for max_tokens {most_completion:,}")
        record.overrun = "; ".join(over) or None

    def _timeout(self, exc: BaseException, timeout: aiohttp.ClientTimeout, where: Where) -> ProviderError:
        if isinstance(exc, _SOCKET_TIMEOUT):
            phase, limit = "stall", timeout.sock_read
        elif isinstance(exc, _CONNECT_TIMEOUT):
            phase, limit = "connect", timeout.connect
        else:
            phase, limit = "total", timeout.total
        if limit == timeout.total:  # e.g. sock_read of a non-streamed answer
            phase = "total"
        if limit == timeout.total and timeout.total < self.provider.timeout_s:
            return DeadlineExceeded(f"the deadline cut the attempt after {limit:.3g}s",
                                    **where.fields())
        words = {"stall": "no bytes for", "connect": "no connection within",
                 "total": "no complete answer within"}
        return ProviderTimeout(f"{words[phase]} {limit:.3g}s", phase=phase, **where.fields())


def response_limit(max_tokens: int) -> int:
    """The most bytes read of a response to a request for ``max_tokens``."""
    return RESPONSE_BYTES_BASE + RESPONSE_BYTES_PER_TOKEN * max(int(max_tokens), 0)


def _readable(content_type: str) -> bool:
    """Whether a 2xx body may be an answer: JSON, server-sent events or unlabelled; an HTML
    page (or any other text/* but event streams and plain text) is not."""
    kind = (content_type or "").lower()
    return not (kind.startswith("text/") and kind not in ("text/event-stream", "text/plain")) \
        and "html" not in kind and "xml" not in kind


def _count(usage: dict | None, name: str) -> int | None:
    """A token count from ``usage``: a non-negative whole number, else None."""
    value = (usage or {}).get(name)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        return None
    return min(value, MAX_REPORTED_TOKENS)


async def _read_bounded(response: aiohttp.ClientResponse, limit: int, where) -> bytes:
    """The whole body, or :class:`MalformedResponse` once it passes ``limit`` bytes (before
    reading it, when Content-Length says so)."""
    declared = response.content_length
    if declared is not None and declared > limit:
        raise too_large(limit, None, where, declared=declared)
    body = await _read_some(response, limit + 1)
    if len(body) > limit:
        raise too_large(limit, None, where)
    return body


async def _read_some(response: aiohttp.ClientResponse, limit: int) -> bytes:
    """Up to ``limit`` bytes of a body (an error page need not be read whole)."""
    parts, size = [], 0
    while size < limit:
        chunk = await response.content.read(limit - size)
        if not chunk:
            break
        parts.append(chunk)
        size += len(chunk)
    return b"".join(parts)


def resolve_api_key(provider: ProviderSpec, environ: Mapping[str, str]) -> SecretStr | None:
    """The provider's key from ``environ``; None when the provider names no variable.
    Raises :class:`MissingApiKey` naming the variable (never a value) when it is unset,
    empty or shorter than :data:`MIN_API_KEY_CHARS`. Call it for every provider before the
    first request: fail fast."""
    if not provider.api_key_env:
        return None
    value = environ.get(provider.api_key_env, "").strip()
    if len(value) < MIN_API_KEY_CHARS:
        raise MissingApiKey(provider.api_key_env, provider=provider.name,
                            short=frozenset({provider.api_key_env} if value else ()))
    return SecretStr(value)


def make_session(providers: Iterable[ProviderSpec]) -> aiohttp.ClientSession:
    """One session for a run. The connector's ``limit_per_host`` fits the sum of the
    ``parallel`` caps of the providers behind each host, so the providers' semaphores, not
    the pool, are what queue requests; ``limit`` is at least aiohttp's 100. Call it inside
    a running event loop; close the session when the run ends."""
    per_host: dict[tuple[str, int | None], int] = {}
    for provider in providers:
        if provider.base_url:
            parts = urlsplit(provider.base_url)
            key = (parts.hostname or "", parts.port)
            per_host[key] = per_host.get(key, 0) + provider.parallel
    limit_per_host = max(per_host.values(), default=DEFAULT_CONNECTION_LIMIT)
    limit = max(DEFAULT_CONNECTION_LIMIT, sum(per_host.values()))
    connector = aiohttp.TCPConnector(limit=limit, limit_per_host=limit_per_host)
    # Requests set their own timeouts; this one only bounds a request made without one.
    timeout = aiohttp.ClientTimeout(total=DEFAULT_TIMEOUT_S, connect=DEFAULT_CONNECT_TIMEOUT_S,
                                    sock_connect=DEFAULT_CONNECT_TIMEOUT_S,
                                    sock_read=DEFAULT_READ_TIMEOUT_S,
                                    ceil_threshold=TIMEOUT_CEIL_THRESHOLD_S)
    return aiohttp.ClientSession(connector=connector, timeout=timeout)
