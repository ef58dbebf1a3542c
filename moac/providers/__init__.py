"""The provider stage: the HTTP layer the executor calls. OpenAI-compatible chat completions
with one retry loop, typed errors, per-provider limits, byte-level server-sent-events
decoding, and the embedded llama.cpp server (:mod:`.local`).

Takes chat requests and provider declarations (:mod:`moac.ir.spec`); gives call results and
typed errors. May import :mod:`moac.ir` and aiohttp; never the run stage above it.

    session = make_session(providers)
    client = OpenAICompatibleClient(session, provider, resolve_api_key(provider, os.environ))
    result = await client.chat(ChatRequest(model_id, messages, sampling), deadline=...)
"""

from moac.providers.errors import (
    AuthError, BadRequest, ConnectionFailed, ContentFiltered, ContextLengthExceeded,
    DeadlineExceeded, EmptyAnswer, MalformedResponse, MissingApiKey, ProviderError, ProviderTimeout,
    RateLimited, ServerError, redact,
)
from moac.providers.limits import ProviderLimiter, make_limiters
from moac.providers.openai import (
    Attempt, CallResult, ChatRequest, OpenAICompatibleClient, Usage, attempt_timeout,
    make_session, resolve_api_key,
)
from moac.providers.retry import Decision, RetryPolicy, decide, parse_retry_after
from moac.providers.sse import Event, SSEDecoder

__all__ = [
    "Attempt", "AuthError", "BadRequest", "CallResult", "ChatRequest", "ConnectionFailed",
    "ContentFiltered", "ContextLengthExceeded", "DeadlineExceeded", "Decision", "EmptyAnswer",
    "Event", "MalformedResponse", "MissingApiKey", "OpenAICompatibleClient", "ProviderError",
    "ProviderLimiter", "ProviderTimeout", "RateLimited", "RetryPolicy", "SSEDecoder",
    "ServerError", "Usage", "attempt_timeout", "decide", "make_limiters", "make_session",
    "parse_retry_after", "redact", "resolve_api_key",
]
