"""A real OpenAI-compatible HTTP server (``aiohttp.web``) for tests and benchmarks.

``POST /v1/chat/completions``, streamed (server-sent events, with ``stream_options.include_usage``)
or not. Answers are deterministic: :func:`expected_text` says what a model answers to some
messages (the model id, then words picked by a hash of the messages, some of them
multi-byte and one holding a raw U+2028), with real ``usage`` counts.

Faults are scripted with :class:`Behavior` values::

    async with FakeOpenAI() as server:               # on 127.0.0.1, a free port
        server.script(Behavior.rate_limited(retry_after=2), model="m")   # next request for m
        server.on_request(3, Behavior.server_error())                    # the 3rd request overall
        server.set_default(Behavior(latency_s=0.05))                     # everything else
        ... requests to server.url ("http://127.0.0.1:PORT/v1") ...
        server.requests[0].headers   # every request recorded, secrets redacted
        server.max_in_flight         # the most requests it served at once
        server.context_limits["m"] = 8192  # past it, 400 context_length_exceeded

Reasoning models (``Behavior(reasoning=...)``) think ``reasoning_tokens`` words of
:data:`THOUGHT_WORDS` before the usual answer, shown inline (``<think>...</think>`` opening
the content), in a field of their own (``reasoning_content`` or ``reasoning``, in the message
and the stream's deltas) or not at all (``hidden``: only ``usage`` counts them). The limit
(``max_completion_tokens``, else ``max_tokens``) bounds thinking and answer together, the
thinking first. ``openai_rules`` answers as OpenAI's o-series does: a 400
``unsupported_parameter`` to ``max_tokens`` or ``top_p``, ``unsupported_value`` to a
temperature other than 1.

Which behavior a request gets: its number's (:meth:`FakeOpenAI.on_request`), else the next
one queued for its model, else the next queued for any model (:meth:`FakeOpenAI.script`),
else its model's default, else the default. :data:`NOT_ANSWERS` names models whose answers
are not answers (empty, whitespace, filtered, refused, cut), to give as model defaults.

``server.provider_spec(**fields)`` gives a :class:`moac.ir.spec.ProviderSpec` pointing at it (after
start). From synchronous code (a pytest test calling ``asyncio.run``), :func:`serve_in_thread` runs
the server on a loop of its own; the ``fake_server`` fixture wraps it
(``from fake_openai import fake_server`` in a test module). From a shell:
``python -m tests.fake_openai --port 8000 --latency-ms 50``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import re
import threading
import time
from collections import deque
from dataclasses import dataclass, replace
from typing import Any, Iterator

from aiohttp import web

DEFAULT_TOKENS = 8
# Multi-byte UTF-8 (2, 3 and 4 bytes) and a raw U+2028, which str.splitlines() would break on.
WORDS = ("alpha", "béta", "γάμμα", "日本語", "emoji🙂", "line\u2028sep", "naïve", "zeta")
_REDACT_HEADERS = ("authorization", "api-key", "x-api-key", "cookie", "proxy-authorization")
# What reasoning models think in: words no answer holds (see WORDS), so a test can tell.
THOUGHT_WORDS = ("ponder", "weigh", "recall", "doubt")


def answer_tokens(model: str, messages: Any, tokens: int = DEFAULT_TOKENS) -> list[str]:
    """The tokens the fake streams for ``model`` answering ``messages``."""
    digest = hashlib.sha256(json.dumps([model, messages], sort_keys=True,
                                       ensure_ascii=False).encode()).digest()
    return [model] + [" " + WORDS[digest[i % len(digest)] % len(WORDS)] for i in range(tokens - 1)]


def expected_text(model: str, messages: Any, *, tokens: int = DEFAULT_TOKENS,
                  max_tokens: int | None = None) -> str:
    """What the fake answers (cut at ``max_tokens``, as the server does)."""
    parts = answer_tokens(model, messages, tokens)
    return "".join(parts[:max_tokens] if max_tokens is not None else parts)


def prompt_tokens(messages: Any, count: str = "fake") -> int:
    """The fake's own prompt count: deliberately not moac's estimate, so tests can tell
    a reported count from an estimated one. ``count`` says how densely it tokenises:
    ``fake`` (characters / 4, plus 5 a message), ``words`` (a token per word, as a real
    tokeniser counts "a a a a"), ``bytes`` (a token per UTF-8 byte: the densest any
    byte-level tokeniser can be) plus 3 a message."""
    texts = [str(m.get("content", "")) for m in messages if isinstance(m, dict)]
    if count == "words":
        return sum(len(t.split()) + 3 for t in texts)
    if count == "bytes":
        return sum(len(t.encode("utf-8", "surrogatepass")) + 3 for t in texts)
    return sum(len(t) // 4 + 5 for t in texts)


@dataclass(frozen=True)
class Behavior:
    """How the server answers one request. Combine fields freely; the class methods are
    the usual faults."""

    latency_s: float = 0.0            # before the response starts (status line and headers)
    token_delay_s: float = 0.0        # between streamed tokens
    tokens: int = DEFAULT_TOKENS      # answer length (before max_tokens cuts it)
    status: int = 200
    headers: tuple[tuple[str, str], ...] = ()   # extra response headers
    error: dict | str | None = None   # body of a non-200 (an OpenAI error object by default)
    echo_auth: bool = False           # a 401 whose body echoes the Authorization header
    hang: bool = False                # never answer (until the client gives up)
    stall_after: int | None = None    # stream this many tokens, then go silent
    truncate_after: int | None = None # stream this many tokens, then end the body cleanly
    abort_after: int | None = None    # stream this many tokens, then drop the connection
    malformed: bool = False           # non-JSON body, or a non-JSON event mid-stream
    error_in_200: bool = False        # an `error` object in a 200 body or mid-stream
    no_choices: bool = False          # JSON without `choices`
    null_content: bool = False        # content null
    missing_usage: bool = False       # no `usage` anywhere
    finish_reason: str | None = None  # force one ("length", "content_filter", ...)
    tiny_chunks: bool = False         # write streams 1-3 bytes at a time, CRLF line ends
    chunk_pause_s: float = 0.0        # real pause between tiny chunks (to keep them apart)
    keepalive: bool = False           # ": keep-alive" comments between events
    ignore_stream: bool = False       # answer a stream request with one JSON body (some do)
    text: str | None = None           # answer exactly this (a token per word) instead
    count: str = "fake"               # how prompt tokens are counted (see prompt_tokens)
    ascii_json: bool = False          # JSON with \\u escapes (a lone surrogate as "\\ud800")
    claim_usage: dict | None = None   # report this usage whatever was sent (a lying server)
    flood_bytes: int | None = None    # ignore max_tokens: answer this many bytes of text
    html_200: bool = False            # a proxy's HTML page with status 200
    filter_after: int | None = None   # this many tokens, then finish_reason content_filter
    refusal: str | None = None        # a `refusal` in place of content (content null)
    reasoning: str | None = None      # it thinks first: "inline", "field" or "hidden"
    reasoning_tokens: int = 0         # how long (before the limit cuts it)
    reasoning_field: str = "reasoning_content"  # the field's name ("reasoning": OpenRouter's)
    openai_rules: bool = False        # OpenAI's reasoning-model parameters (400s otherwise)

    @classmethod
    def rate_limited(cls, retry_after: float | str | None = 1, *,
                     retry_after_ms: float | None = None, **more: Any) -> "Behavior":
        headers = []
        if retry_after is not None:
            headers.append(("Retry-After", str(retry_after)))
        if retry_after_ms is not None:
            headers.append(("retry-after-ms", str(retry_after_ms)))
        return cls(status=429, headers=tuple(headers), **more)

    @classmethod
    def server_error(cls, status: int = 500, *, should_retry: bool | None = None,
                     **more: Any) -> "Behavior":
        headers = () if should_retry is None else (("x-should-retry", str(should_retry).lower()),)
        return cls(status=status, headers=headers, **more)

    @classmethod
    def unauthorized(cls, echo_auth: bool = True) -> "Behavior":
        return cls(status=401, echo_auth=echo_auth)

    @classmethod
    def context_length(cls) -> "Behavior":
        return cls(status=400, error={"error": {
            "message": "This model's maximum context length is 4096 tokens. However, you "
                       "requested 9000 tokens. Please reduce the length of the messages.",
            "type": "invalid_request_error", "code": "context_length_exceeded"}})

    @classmethod
    def hanging(cls) -> "Behavior":
        return cls(hang=True)

    # --- answers that are not answers (see NOT_ANSWERS) ---
    @classmethod
    def empty(cls, **more: Any) -> "Behavior":
        """200, finish_reason stop, and no text at all."""
        return cls(text="", **more)

    @classmethod
    def whitespace(cls, **more: Any) -> "Behavior":
        """200, finish_reason stop, and only spaces, newlines and a tab."""
        return cls(text=" \n\n \t ", **more)

    @classmethod
    def filtered(cls, after: int = 2, **more: Any) -> "Behavior":
        """A content filter that stops the answer after ``after`` tokens."""
        return cls(filter_after=after, **more)

    @classmethod
    def refused(cls, **more: Any) -> "Behavior":
        """A refusal in place of content."""
        return cls(refusal="I can't help with that.", **more)

    @classmethod
    def cut(cls, after: int = 3, **more: Any) -> "Behavior":
        """An answer the provider ends at ``after`` tokens with finish_reason length."""
        return cls(tokens=after, finish_reason="length", **more)


# Model ids whose default behavior is an answer that is not one (the non-streamed and the
# streamed forms both): ``server.set_default(NOT_ANSWERS[m], model=m)`` for each.
NOT_ANSWERS = {"blank": Behavior.empty(), "spaces": Behavior.whitespace(),
               "filtered": Behavior.filtered(), "refused": Behavior.refused(),
               "cut": Behavior.cut()}


@dataclass
class RecordedRequest:
    number: int
    model: str | None
    stream: bool
    body: Any                   # the parsed JSON body (None if it was not JSON)
    headers: dict[str, str]     # secrets redacted
    authorized: bool | None     # None when the server checks no key
    started: float              # time.monotonic()
    ended: float = 0.0
    status: int | None = None
    behavior: Behavior | None = None


class FakeOpenAI:
    def __init__(self, *, default: Behavior | None = None, api_key: str | None = None,
                 host: str = "127.0.0.1", port: int = 0, keep_requests: bool = True) -> None:
        self.host, self.port = host, port
        self.keep_requests = keep_requests  # False: count requests but keep no records (benchmarks)
        self.api_key = api_key    # when set, other keys get a 401 (echoing the header)
        self.default = default or Behavior()
        self.model_defaults: dict[str, Behavior] = {}
        self._queues: dict[str | None, deque[Behavior]] = {}
        self._numbered: dict[int, Behavior] = {}
        self.requests: list[RecordedRequest] = []
        # (model, prompt tokens, completion tokens) of every answer, as its usage reported
        # them: what a real provider would bill.
        self.billed: list[tuple[str, int, int]] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self._count = 0
        # responders[model](messages) -> the answer's text (or None: the usual answer), for
        # answers that depend on what was asked (a scripted judge)
        self.responders: dict[str, Any] = {}
        # A provider's rate limit (tests/fake_ratelimit.RateLimit), enforced on every
        # request that would otherwise be answered 200.
        self.rate_limit = None
        # model id -> its context window: a request whose prompt (counted as its behavior's
        # ``count`` says) plus max_tokens exceeds it gets the 400 providers send
        # (context_length_exceeded); each one is kept in ``context_refused``.
        self.context_limits: dict[str, int] = {}
        self.context_refused: list[RecordedRequest] = []
        self._runner: web.AppRunner | None = None
        self._closing: asyncio.Event | None = None

    # --- scripting -----------------------------------------------------------------------
    def script(self, *behaviors: Behavior, model: str | None = None) -> None:
        """Queue behaviors for the next requests for ``model`` (any model when None)."""
        self._queues.setdefault(model, deque()).extend(behaviors)

    def on_request(self, number: int, behavior: Behavior) -> None:
        """The behavior of the ``number``-th request (1-based, counted over all models)."""
        self._numbered[number] = behavior

    def set_default(self, behavior: Behavior, *, model: str | None = None) -> None:
        if model is None:
            self.default = behavior
        else:
            self.model_defaults[model] = behavior

    def reset(self) -> None:
        """Forget scripts, records and counters (the defaults stay)."""
        self._queues.clear()
        self._numbered.clear()
        self.requests.clear()
        self.billed.clear()
        self._count = self.max_in_flight = 0

    def _behavior(self, number: int, model: str | None) -> Behavior:
        if number in self._numbered:
            return self._numbered.pop(number)
        for key in (model, None):
            queue = self._queues.get(key)
            if queue:
                return queue.popleft()
        return self.model_defaults.get(model or "", self.default)

    # --- lifecycle -------------------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    def provider_spec(self, name: str = "fake", **fields: Any):
        """A :class:`moac.ir.spec.ProviderSpec` pointing at this server (short timeouts, no
        retries unless ``fields`` say otherwise)."""
        from moac.ir.spec import ProviderSpec
        values: dict[str, Any] = dict(name=name, kind="openai", base_url=self.url,
                                      api_key_env="FAKE_OPENAI_KEY", parallel=8, timeout_s=5.0,
                                      connect_timeout_s=1.0, read_timeout_s=2.0, max_retries=0)
        values.update(fields)
        return ProviderSpec(**values)

    async def start(self) -> "FakeOpenAI":
        self._closing = asyncio.Event()
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._handle)
        app.router.add_get("/stats", self._stats)
        # Cancel a handler when its client goes away (hangs and stalls end with the client);
        # a short shutdown so a hanging handler cannot hold up stop().
        self._runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=0.5,
                                     access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        self.port = self._runner.addresses[0][1]  # the free port we got
        return self

    async def stop(self) -> None:
        if self._closing is not None:
            self._closing.set()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> "FakeOpenAI":
        return await self.start()

    async def __aexit__(self, *exc: Any) -> None:
        await self.stop()

    # --- serving -----------------------------------------------------------------------------
    async def _stats(self, request: web.Request) -> web.Response:
        """Counters, for a benchmark that runs the server in a process of its own."""
        limit = self.rate_limit
        return web.json_response({
            "requests": self._count, "max_in_flight": self.max_in_flight,
            "rate_limit": None if limit is None else {"admitted": limit.admitted,
                                                      "refused": limit.refused}})

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self._count += 1
        number = self._count
        raw = await request.read()
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        ok_body = isinstance(body, dict) and isinstance(body.get("messages"), list)
        model = body.get("model") if ok_body else None
        auth = request.headers.get("Authorization", "")
        record = RecordedRequest(
            number, model, bool(ok_body and body.get("stream")), body,
            {k: ("[REDACTED]" if k.lower() in _REDACT_HEADERS else v)
             for k, v in request.headers.items()},
            None if self.api_key is None else auth == f"Bearer {self.api_key}",
            time.monotonic())
        if self.keep_requests:
            self.requests.append(record)
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            behavior = record.behavior = self._behavior(number, model)
            if record.authorized is False:
                behavior = replace(behavior, status=401, echo_auth=True, hang=False)
            elif self.rate_limit is not None and behavior.status == 200 and ok_body:
                behavior = self._rate_limited(behavior, body)
            if behavior.status == 200 and ok_body and model in self.context_limits:
                behavior = self._context_checked(behavior, body, record)
            response = await self._respond(request, body if ok_body else None, behavior, auth)
            record.status = response.status
            return response
        finally:
            self.in_flight -= 1
            record.ended = time.monotonic()

    def _context_checked(self, behavior: Behavior, body: dict,
                         record: RecordedRequest) -> Behavior:
        limit = self.context_limits[body["model"]]
        asked = body.get("max_completion_tokens", body.get("max_tokens"))
        asked = asked if isinstance(asked, int) else 0
        prompt = prompt_tokens(body["messages"], behavior.count)
        if prompt + asked <= limit:
            return behavior
        self.context_refused.append(record)
        return replace(behavior, status=400, latency_s=0.0, error={"error": {
            "message": f"This model's maximum context length is {limit} tokens. However, you "
                       f"requested {prompt + asked} tokens ({prompt} in the messages, {asked} "
                       "in the completion). Please reduce the length of the messages or "
                       "completion.",
            "type": "invalid_request_error", "param": "messages",
            "code": "context_length_exceeded"}})

    def _rate_limited(self, behavior: Behavior, body: dict) -> Behavior:
        limit = body.get("max_completion_tokens", body.get("max_tokens"))
        tokens = prompt_tokens(body["messages"]) + (limit if isinstance(limit, int) else 0)
        wait, headers = self.rate_limit.admit(tokens)
        behavior = replace(behavior, headers=behavior.headers + tuple(headers.items()))
        if wait is not None:
            behavior = replace(behavior, status=429, latency_s=0.0, error={"error": {
                "message": "Rate limit reached for requests", "type": "requests",
                "code": "rate_limit_exceeded"}})
        return behavior

    async def _respond(self, request: web.Request, body: dict | None, b: Behavior,
                       auth: str) -> web.StreamResponse:
        if b.latency_s:
            await asyncio.sleep(b.latency_s)
        if b.hang:
            await self._closing.wait()
            raise web.HTTPServiceUnavailable()
        headers = dict(b.headers)
        if b.status != 200:
            if b.echo_auth:  # as providers do, in full and in the usual masked form
                key = auth.removeprefix("Bearer ")
                error: Any = {"error": {
                    "message": f"Incorrect API key provided: {key[:8]}****{key[-4:]}. "
                               f"You sent the header 'Authorization: {auth}'.",
                    "type": "invalid_request_error", "code": "invalid_api_key"}}
            else:
                error = b.error or {"error": {"message": f"fake error {b.status}",
                                              "type": "server_error", "code": b.status}}
            text = error if isinstance(error, str) else json.dumps(error)
            return web.Response(status=b.status, text=text, headers=headers,
                                content_type="application/json")
        if body is None:
            return web.json_response({"error": {"message": "expected a JSON body with messages",
                                                "type": "invalid_request_error"}}, status=400)
        refusal = _openai_refusal(body) if b.openai_rules else None
        if refusal is not None:
            return web.json_response(refusal, status=400, headers=headers)
        if b.html_200:
            return web.Response(text="<html><head><title>502 Bad Gateway</title></head><body>"
                                     "<h1>502 Bad Gateway</h1><hr>nginx</body></html>",
                                content_type="text/html", headers=headers)
        model = str(body.get("model"))
        text = b.text
        if model in self.responders:
            text = self.responders[model](body["messages"]) or text
        tokens = answer_tokens(model, body["messages"], b.tokens) if text is None \
            else [word for word in re.split(r"(?=\s)", text) if word]
        finish = b.finish_reason or "stop"
        max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
        thought = thought_tokens(model, body["messages"], b)
        if b.flood_bytes is not None:
            tokens = ["x" * 1000] * (b.flood_bytes // 1000)
        elif isinstance(max_tokens, int) and max_tokens < len(thought) + len(tokens):
            thought = thought[:max_tokens]
            tokens = tokens[:max_tokens - len(thought)]
            finish = b.finish_reason or "length"
        if b.filter_after is not None:
            tokens, finish = tokens[:b.filter_after], "content_filter"
        usage = {"prompt_tokens": prompt_tokens(body["messages"], b.count),
                 "completion_tokens": len(thought) + len(tokens)}
        if b.reasoning in ("field", "hidden"):
            usage["completion_tokens_details"] = {"reasoning_tokens": len(thought)}
        if b.reasoning == "inline":  # the thinking is part of the content
            tokens, thought = thought + tokens, []
        elif b.reasoning == "hidden":
            thought = []
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        if b.claim_usage is not None:
            usage = dict(b.claim_usage)
        self.billed.append((model, usage.get("prompt_tokens", 0),
                            usage.get("completion_tokens", 0)))
        base = {"id": f"chatcmpl-fake-{self._count}", "created": int(time.time()),
                "model": model}
        if body.get("stream") and not b.ignore_stream:
            include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
            return await self._stream(request, b, base, tokens, finish,
                                      usage if include_usage and not b.missing_usage else None,
                                      headers, thought)
        if b.malformed:
            return web.Response(text='{"id": "chatcmpl-fake", "choices": [{"mess',
                                content_type="application/json", headers=headers)
        if b.error_in_200:
            return web.json_response({"error": {"message": "upstream model overloaded",
                                                "type": "server_error", "code": 502}},
                                     headers=headers)
        answer: dict[str, Any] = {**base, "object": "chat.completion"}
        if not b.no_choices:
            answer["choices"] = [{"index": 0, "finish_reason": finish, "message": {
                "role": "assistant", "content": None if b.null_content else "".join(tokens)}}]
            if b.refusal is not None:
                answer["choices"][0]["message"].update(content=None, refusal=b.refusal)
            if thought:
                answer["choices"][0]["message"][b.reasoning_field] = "".join(thought)
        if not b.missing_usage:
            answer["usage"] = usage
        return web.Response(text=json.dumps(answer, ensure_ascii=b.ascii_json), headers=headers,
                            content_type="application/json")

    async def _stream(self, request: web.Request, b: Behavior, base: dict, tokens: list[str],
                      finish: str, usage: dict | None, headers: dict,
                      thought: list[str] = ()) -> web.StreamResponse:
        response = web.StreamResponse(headers={**headers, "Content-Type": "text/event-stream",
                                               "Cache-Control": "no-cache"})
        await response.prepare(request)
        eol = "\r\n" if b.tiny_chunks else "\n"
        phase = 0

        async def write(text: str) -> None:
            nonlocal phase
            data = text.encode()
            if not b.tiny_chunks:
                await response.write(data)
                return
            # 1, 2, 3 bytes at a time, the cycle shifting from write to write, so that cuts
            # land inside CRLFs and inside multi-byte characters.
            i = 0
            while i < len(data):
                size = 1 + (phase % 3)
                phase += 1
                await response.write(data[i:i + size])
                i += size
                await asyncio.sleep(b.chunk_pause_s)

        async def event(obj: Any) -> None:
            await write(f"data: {json.dumps(obj, ensure_ascii=b.ascii_json)}{eol}{eol}")

        def chunk(delta: dict, finish_reason: str | None = None) -> dict:
            return {**base, "object": "chat.completion.chunk", "choices": [
                {"index": 0, "delta": delta, "finish_reason": finish_reason}]}

        await event(chunk({"role": "assistant", "content": None if b.null_content else ""}))
        for word in thought:  # a reasoning field's deltas, before the answer's
            if b.token_delay_s:
                await asyncio.sleep(b.token_delay_s)
            await event(chunk({b.reasoning_field: word}))
        if b.refusal is not None:
            await event(chunk({"refusal": b.refusal}))
            tokens = []
        for i, token in enumerate(tokens):
            if i == b.truncate_after:
                await response.write_eof()
                return response
            if i == b.abort_after:
                request.transport.close()
                return response
            if i == b.stall_after:
                await self._closing.wait()
                return response
            if i == 1 and b.error_in_200:
                await event({"error": {"message": "upstream model overloaded",
                                       "type": "server_error", "code": 502}})
                await response.write_eof()
                return response
            if i == 1 and b.malformed:
                await write(f'data: {{"choices": [{{"delta": {eol}{eol}')
            if b.token_delay_s:
                await asyncio.sleep(b.token_delay_s)
            if b.keepalive:
                await write(f": keep-alive{eol}{eol}")
            await event(chunk({"content": None if b.null_content else token}))
        await event(chunk({}, finish))
        if usage is not None:
            await event({**base, "object": "chat.completion.chunk", "choices": [], "usage": usage})
        await write(f"data: [DONE]{eol}{eol}")
        await response.write_eof()
        return response


def thought_tokens(model: str, messages: Any, b: Behavior) -> list[str]:
    """What a reasoning model thinks (``b.reasoning_tokens`` tokens; inline, its tags
    count among them), before any limit cuts it."""
    if b.reasoning is None:
        return []
    words = [" " + THOUGHT_WORDS[i % len(THOUGHT_WORDS)] for i in range(b.reasoning_tokens)]
    return ["<think>", *words, "</think>", "\n\n"] if b.reasoning == "inline" else words


def _openai_refusal(body: dict) -> dict | None:
    """The 400 body OpenAI's reasoning models answer a request they refuse with, or None."""
    def error(message: str, param: str, code: str) -> dict:
        return {"error": {"message": message, "type": "invalid_request_error", "param": param,
                          "code": code}}
    for param, instead in (("max_tokens", " Use 'max_completion_tokens' instead."),
                           ("top_p", "")):
        if param in body:
            return error(f"Unsupported parameter: '{param}' is not supported with this "
                         f"model.{instead}", param, "unsupported_parameter")
    temperature = body.get("temperature", 1)
    if temperature != 1:
        return error(f"Unsupported value: 'temperature' does not support {temperature} with "
                     "this model. Only the default (1) value is supported.", "temperature",
                     "unsupported_value")
    return None


@contextlib.contextmanager
def serve_in_thread(**kwargs: Any) -> Iterator[FakeOpenAI]:
    """Run a :class:`FakeOpenAI` on an event loop in a daemon thread, for synchronous code.
    Scripting it from the calling thread is safe (deque and dict operations)."""
    server = FakeOpenAI(**kwargs)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="fake-openai", daemon=True)
    thread.start()
    try:
        asyncio.run_coroutine_threadsafe(server.start(), loop).result(10)
        yield server
    finally:
        asyncio.run_coroutine_threadsafe(server.stop(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


try:
    import pytest
except ImportError:  # benchmarks may run without pytest
    pytest = None

if pytest is not None:
    @pytest.fixture
    def fake_server() -> Iterator[FakeOpenAI]:
        """A running fake server (in its own thread) for a synchronous test."""
        with serve_in_thread() as server:
            yield server


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--latency-ms", type=float, default=0.0)
    parser.add_argument("--token-delay-ms", type=float, default=0.0)
    parser.add_argument("--tokens", type=int, default=DEFAULT_TOKENS)
    parser.add_argument("--rpm", type=float, help="enforce a rate limit (see fake_ratelimit)")
    parser.add_argument("--tpm", type=float, help="and a tokens-per-minute limit")
    parser.add_argument("--no-rate-headers", action="store_true")
    parser.add_argument("--api-key", help="answer 401 to any other key")
    args = parser.parse_args(argv)
    behavior = Behavior(latency_s=args.latency_ms / 1000, token_delay_s=args.token_delay_ms / 1000,
                        tokens=args.tokens)

    async def serve() -> None:
        async with FakeOpenAI(default=behavior, host=args.host, port=args.port,
                              api_key=args.api_key, keep_requests=False) as server:
            if args.rpm:
                from tests.fake_ratelimit import RateLimit
                server.rate_limit = RateLimit(args.rpm, tpm=args.tpm,
                                              headers=not args.no_rate_headers)
            print(f"fake OpenAI server at {server.url}", flush=True)
            await asyncio.Event().wait()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve())


if __name__ == "__main__":
    main()
