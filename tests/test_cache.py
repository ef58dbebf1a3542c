"""The response cache over real HTTP: record through OpenAICompatibleClient against the fake
server, replay with the server receiving nothing; keys, failures, bad files and secrets."""

from __future__ import annotations

import asyncio
import secrets
import sqlite3
import time

import pytest
from fake_openai import Behavior, FakeOpenAI, expected_text, prompt_tokens
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import SecretStr

from moac.run.cache import CacheError, CacheMiss, CachingClient, ResponseCache, request_key
from moac.providers import (
    ChatRequest, ContentFiltered, MalformedResponse, OpenAICompatibleClient, ProviderError,
    RetryPolicy, ServerError, decide, make_session,
)
from moac.ir.spec import Sampling

KEY = "sk-canary-" + secrets.token_hex(16)
SAMPLING = Sampling(temperature=0.7, max_tokens=64, seed=3)
MESSAGES = [{"role": "system", "content": "Be brief."},
            {"role": "user", "content": "What is a Mixture-of-Agents? naïve ☃"}]


def request(**fields) -> ChatRequest:
    return ChatRequest(fields.pop("model", "m"), fields.pop("messages", MESSAGES),
                       fields.pop("sampling", SAMPLING), **fields)


def run(test, path, mode="record", *, create=True, **provider_fields):
    """A fake server (checking the canary key), a real client and a cache on one loop;
    ``await test(server, client, cache)``."""
    async def main():
        async with FakeOpenAI(api_key=KEY) as server:
            provider = server.provider_spec(**provider_fields)
            async with make_session([provider]) as session:
                inner = OpenAICompatibleClient(session, provider, SecretStr(KEY),
                                               sleep=lambda s: asyncio.sleep(0))
                with ResponseCache(path, create=create) as cache:
                    return await test(server, CachingClient(inner, cache, mode), cache)
    return asyncio.run(main())


# --- record, then replay -------------------------------------------------------------------

@pytest.mark.parametrize("stream", [True, False])
def test_record_then_replay_sends_nothing(tmp_path, stream):
    path = tmp_path / "cache.sqlite"
    wanted = [request(stream=stream), request(stream=stream, max_tokens=3)]  # stop, length

    async def record(server, client, cache):
        first = [await client.chat(r) for r in wanted]
        # the request with max_tokens = 3 is also filed under its unclamped request
        assert len(server.requests) == 2 and len(cache) == 3
        again = [await client.chat(r) for r in wanted]  # recorded: free, even in record mode
        assert len(server.requests) == 2
        assert cache.stats.hits == 2 and cache.stats.misses == 2 and cache.stats.stored == 2
        assert [a.text for a in again] == [f.text for f in first]
        assert all(a.attempts[0].cached for a in again)
        assert not any(f.attempts[0].cached for f in first)
        return first

    async def replay(server, client, cache):
        deltas, ended = [], []
        out = [await client.chat(r, on_delta=deltas.append, on_attempt=ended.append)
               for r in wanted]
        assert server.requests == []
        assert deltas == [o.text for o in out]  # one delta per answer, the whole text
        assert [a for o in out for a in o.attempts] == ended
        for attempt, o in zip(ended, out):
            assert attempt.cached and attempt.status == "ok" and attempt.number == 1
            assert attempt.ttft_s == 0 and attempt.finish_reason == o.finish_reason
            assert (attempt.prompt_tokens, attempt.completion_tokens, attempt.tokens_reported) \
                == (o.usage.prompt_tokens, o.usage.completion_tokens, o.usage.reported)
            assert attempt.started <= attempt.ended and attempt.started_wall <= attempt.ended_wall
        assert cache.stats.hits == 2 and cache.stats.misses == 0
        return out

    recorded = run(record, path)
    replayed = run(replay, path, "replay", create=False)  # the file survived closing
    assert [(r.text, r.finish_reason, r.usage) for r in replayed] == \
        [(r.text, r.finish_reason, r.usage) for r in recorded]
    assert recorded[0].text == expected_text("m", MESSAGES) and recorded[0].finish_reason == "stop"
    assert recorded[1].finish_reason == "length"
    assert recorded[0].usage.prompt_tokens == prompt_tokens(MESSAGES)


def test_replay_miss_is_loud_and_final(tmp_path):
    async def test(server, client, cache):
        with pytest.raises(CacheMiss) as caught:
            await client.chat(request(model="qwen-110b"))
        assert server.requests == []
        return caught.value

    error = run(test, tmp_path / "c.sqlite", "replay", max_retries=3)
    assert isinstance(error, ProviderError) and not error.retryable
    assert "--replay: no recorded answer for this request (model qwen-110b); " \
           "run with --record first" in str(error)
    assert error.model == "qwen-110b" and error.provider == "fake" and error.attempts == ()
    verdict = decide(RetryPolicy(max_retries=3), 1, error, now=0.0, deadline=None,
                     random=lambda: 0.0)
    assert not verdict.retry


def test_replay_needs_no_inner_client(tmp_path):
    path = tmp_path / "c.sqlite"
    run(lambda server, client, cache: client.chat(request()), path)

    async def replay():
        with ResponseCache(path, create=False) as cache:
            return await CachingClient(None, cache, "replay").chat(request())
    assert asyncio.run(replay()).text == expected_text("m", MESSAGES)
    with pytest.raises(CacheError, match="run with --record first"):
        ResponseCache(tmp_path / "never.sqlite", create=False)
    with ResponseCache(path) as cache, pytest.raises(ValueError):
        CachingClient(None, cache, "record")


def test_many_concurrent_tasks(tmp_path):
    wanted = [request(sampling=SAMPLING.model_copy(update={"seed": i})) for i in range(40)]

    async def record(server, client, cache):
        # Every request twice at once: both miss, both are asked, the first answer stays.
        out = await asyncio.gather(*(client.chat(r) for r in wanted + wanted))
        assert len(cache) == 40 and cache.stats.stored == 40
        return [o.text for o in out[:40]]

    async def replay(server, client, cache):
        out = await asyncio.gather(*(client.chat(r) for r in wanted))
        assert server.requests == []
        return [o.text for o in out]

    texts = run(record, tmp_path / "c.sqlite", parallel=64)
    assert run(replay, tmp_path / "c.sqlite", "replay") == texts


# --- what is not stored ----------------------------------------------------------------------

@pytest.mark.parametrize("behavior, error", [
    (Behavior.server_error(500), ServerError),
    (Behavior(truncate_after=2), MalformedResponse),
    (Behavior(finish_reason="content_filter"), ContentFiltered),
])
def test_failures_are_not_stored(tmp_path, behavior, error):
    async def test(server, client, cache):
        server.script(behavior)
        with pytest.raises(error):
            await client.chat(request())
        assert len(server.requests) == 1
        assert len(cache) == 0 and cache.stats.stored == 0
    run(test, tmp_path / "c.sqlite")
    with sqlite3.connect(tmp_path / "c.sqlite") as db:
        assert db.execute("SELECT count(*) FROM responses").fetchone() == (0,)


# --- keys -------------------------------------------------------------------------------------

def test_keys_differ_by_what_changes_the_answer():
    base = request()
    variants = [
        request(model="other"),
        request(messages=MESSAGES[1:]),
        request(messages=[MESSAGES[0], {"role": "user", "content": "What is MoA?"}]),
        request(sampling=SAMPLING.model_copy(update={"seed": 4})),
        request(sampling=SAMPLING.model_copy(update={"seed": None})),
        request(sampling=SAMPLING.model_copy(update={"temperature": 0.5})),
        request(sampling=SAMPLING.model_copy(update={"top_p": 0.9})),
        request(sampling=SAMPLING.model_copy(update={"max_tokens": 65})),
        request(max_tokens=32),
    ]
    keys = [request_key(base)] + [request_key(v) for v in variants]
    assert len(set(keys)) == len(keys)
    assert all(len(k) == 64 and int(k, 16) >= 0 for k in keys)
    # Only the effective max_tokens counts; streaming and timing do not change the answer.
    assert request_key(request(max_tokens=64)) == request_key(base)
    assert request_key(request(stream=False, min_attempt_s=3.0)) == request_key(base)
    assert request_key(request(sampling=SAMPLING.model_copy(update={"temperature": 1}))) == \
        request_key(request(sampling=SAMPLING.model_copy(update={"temperature": 1.0})))


_text = st.text(max_size=30)
_message = st.dictionaries(st.sampled_from(["role", "content", "name", "tool_call_id"]),
                           _text, min_size=1)


@settings(max_examples=100, deadline=None)
@given(st.lists(_message, min_size=1, max_size=4), st.randoms(use_true_random=False),
       st.floats(0, 2), st.one_of(st.none(), st.integers(-2**31, 2**31)),
       st.integers(1, 4096))
def test_key_ignores_the_order_of_message_keys(messages, rnd, temperature, seed, max_tokens):
    sampling = Sampling(temperature=temperature, max_tokens=max_tokens, seed=seed)
    shuffled = []
    for message in messages:
        items = list(message.items())
        rnd.shuffle(items)
        shuffled.append(dict(items))
    key = request_key(ChatRequest("m", messages, sampling))
    assert request_key(ChatRequest("m", shuffled, sampling)) == key
    assert request_key(ChatRequest("m", [dict(m) for m in messages], sampling)) == key
    changed = [*messages[:-1], {**messages[-1], "content": messages[-1].get("content", "") + "!"}]
    assert request_key(ChatRequest("m", changed, sampling)) != key


# --- files --------------------------------------------------------------------------------------

def other_database(path):
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE people (name TEXT)")
    db.close()


def other_version(path):
    ResponseCache(path).close()
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA user_version = 99")
    db.close()


@pytest.mark.parametrize("make, message", [
    (lambda p: p.write_bytes(secrets.token_bytes(4096)), "is not a moac response cache"),
    (lambda p: p.write_text("{\"not\": \"sqlite\"}\n" * 200), "is not a moac response cache"),
    (lambda p: p.write_bytes(b"SQLite format 3\0" + b"\xff" * 200), "is not a moac response cache"),
    (other_database, "is not a moac response cache: it is another SQLite database"),
    (other_version, "format 99; this moac reads format 1"),
], ids=["random-bytes", "text", "bad-header", "other-database", "other-version"])
def test_a_file_that_is_not_a_cache_is_refused(tmp_path, make, message):
    path = tmp_path / "c.sqlite"
    make(path)
    before = path.read_bytes()
    with pytest.raises(CacheError, match=message) as caught:
        ResponseCache(path)
    assert str(path) in str(caught.value)
    if make is other_database:
        assert path.read_bytes() == before  # left exactly as it was (not switched to WAL)


def test_bad_paths(tmp_path):
    with pytest.raises(CacheError, match="directory .* does not exist"):
        ResponseCache(tmp_path / "missing" / "c.sqlite")
    with pytest.raises(CacheError, match="is a directory"):
        ResponseCache(tmp_path)
    cache = ResponseCache(tmp_path / "c.sqlite")
    cache.close()
    cache.close()  # idempotent
    with pytest.raises(CacheError):
        cache.get("0" * 64)


def test_no_key_or_header_reaches_the_file(tmp_path):
    path = tmp_path / "c.sqlite"

    async def test(server, client, cache):
        await asyncio.gather(client.chat(request()), client.chat(request(stream=False, model="n")))
        assert all(r.authorized for r in server.requests)  # the canary key was really sent
    run(test, path)
    files = list(tmp_path.iterdir())
    assert path in files
    data = b"".join(f.read_bytes() for f in files)
    assert b"sqlite format 3" in data.lower()
    assert expected_text("m", MESSAGES).encode() in data  # the answers are there: we read it all
    for needle in [KEY, KEY[-12:], KEY[10:22], "Authorization", "Bearer", "sk-canary"]:
        assert needle.encode() not in data, needle


def test_it_is_fast(tmp_path):
    """Lookups on the event loop must stay cheap: 2,000 puts and gets well under a second."""
    from moac.providers import CallResult, Usage
    result = CallResult("answer", "stop", Usage(10, 5, True))
    with ResponseCache(tmp_path / "c.sqlite") as cache:
        started = time.perf_counter()
        for i in range(1000):
            cache.put(f"{i:064x}", "m", result)
        assert all(cache.get(f"{i:064x}") is not None for i in range(1000))
        assert time.perf_counter() - started < 1.0
        with pytest.raises(ValueError):
            cache.put("x", "m", CallResult("cut", None, Usage(1, 1, False)))


def test_identical_requests_in_flight_are_asked_once(tmp_path):
    async def ask_four(server, client, cache):
        server.set_default(Behavior(latency_s=0.05))
        results = await asyncio.gather(*(client.chat(request()) for _ in range(4)))
        return results, len(server.requests), cache.stats

    results, sent, stats = run(ask_four, tmp_path / "c.sqlite")
    assert sent == 1 and len({r.text for r in results}) == 1
    assert stats.stored == 1 and stats.hits == 3
    assert [r.attempts[0].cached for r in results].count(False) == 1
