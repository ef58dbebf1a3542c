"""Keys never leak: not in errors (str, repr, stored body, traceback), not in attempt records,
not in the fake server's records; a missing variable is named, never a value."""

from __future__ import annotations

import asyncio
import pickle
import secrets
import traceback

import pytest
from fake_openai import Behavior, FakeOpenAI
from pydantic import SecretStr

from moac.providers import (
    AuthError, ChatRequest, ConnectionFailed, MissingApiKey, OpenAICompatibleClient,
    ProviderError, make_session, redact, resolve_api_key,
)
from moac.providers.constants import MAX_STORED_BODY_CHARS, REDACTED
from moac.providers.errors import stored_body
from moac.ir.spec import ProviderSpec, Sampling

MESSAGES = [{"role": "user", "content": "hello"}]


def canary() -> str:
    return "sk-canary-" + secrets.token_hex(16)


def fragments(secret: str, size: int = 8) -> list[str]:
    return [secret[i:i + size] for i in range(len(secret) - size + 1)]


def assert_clean(text: str, secret: str) -> None:
    leaks = [f for f in fragments(secret) if f in text]
    assert not leaks, f"key fragments leaked: {leaks}"


def everything_said_about(error: BaseException) -> str:
    """Every text an error can show: str, repr, fields, its traceback and chain, its records."""
    parts = [str(error), repr(error), "".join(traceback.format_exception(error))]
    parts += [repr(v) for v in vars(error).values()]
    cause = error.__cause__ or error.__context__
    while cause is not None:
        parts += [str(cause), repr(cause), repr(vars(cause))]
        cause = cause.__cause__ or cause.__context__
    return "\n".join(parts)


def call(behavior: Behavior, key: str, *, server_key: str | None = None, **fields) -> ProviderError:
    async def main():
        async with FakeOpenAI(default=behavior, api_key=server_key) as server:
            provider = server.provider_spec(**fields)
            async with make_session([provider]) as session:
                client = OpenAICompatibleClient(session, provider, SecretStr(key),
                                                sleep=lambda s: asyncio.sleep(0))
                assert key not in repr(client)
                with pytest.raises(ProviderError) as caught:
                    await client.chat(ChatRequest("m", MESSAGES, Sampling(temperature=0, max_tokens=8)))
                for recorded in server.requests:
                    assert_clean(repr(recorded), key)
                return caught.value
    return asyncio.run(main())


def test_a_401_echoing_a_canary_key_does_not_leak_it():
    key = canary()
    error = call(Behavior.unauthorized(echo_auth=True), key)
    assert isinstance(error, AuthError) and error.status == 401 and not error.retryable
    assert len(error.attempts) == 1
    assert "Incorrect API key provided" in error.body and REDACTED in error.body
    assert_clean(everything_said_about(error), key)
    assert_clean(repr(error.attempts), key)
    assert_clean(repr(pickle.loads(pickle.dumps(error))), key)


def test_a_wrong_key_is_refused_by_the_server_and_not_retried():
    key = canary()
    error = call(Behavior(), key, server_key="sk-the-right-one-000000", max_retries=3)
    assert isinstance(error, AuthError) and len(error.attempts) == 1
    assert_clean(everything_said_about(error), key)


def test_connection_errors_do_not_carry_the_key():
    key = canary()
    error = call(Behavior(), key, base_url="http://127.0.0.1:1/v1", max_retries=0)
    assert isinstance(error, ConnectionFailed)
    assert_clean(everything_said_about(error), key)


def provider(env: str | None = "TOGETHER_API_KEY") -> ProviderSpec:
    return ProviderSpec(name="together", kind="openai", base_url="https://x/v1", api_key_env=env,
                        parallel=1, timeout_s=1, connect_timeout_s=1, read_timeout_s=1, max_retries=0)


def test_missing_api_key_names_the_variable_never_a_value():
    environ = {"OTHER_KEY": "sk-other-secret-value"}
    with pytest.raises(MissingApiKey) as caught:
        resolve_api_key(provider(), environ)
    error = caught.value
    assert error.variable == "TOGETHER_API_KEY" and "TOGETHER_API_KEY" in str(error)
    assert "together" in str(error) and "sk-other" not in everything_said_about(error)
    with pytest.raises(MissingApiKey):
        resolve_api_key(provider(), {"TOGETHER_API_KEY": "  "})
    key = resolve_api_key(provider(), {"TOGETHER_API_KEY": "sk-real-one-123456"})
    assert isinstance(key, SecretStr) and "sk-real" not in repr(key) and "sk-real" not in str(key)
    assert key.get_secret_value() == "sk-real-one-123456"
    assert resolve_api_key(provider(None), environ) is None


def test_redact():
    key = "sk-abcdefghijklmnopqrstuvwxyz0123"
    assert redact(f"key {key} here", [key]) == f"key {REDACTED} here"
    assert redact(f"key {key} here", [SecretStr(key)]) == f"key {REDACTED} here"
    # Fragments of 8 or more characters, as providers echo them.
    assert "ijklmnop" not in redact("you sent ...ghijklmnopqr...", [key])
    assert redact("Authorization: Bearer abc.def-ghi", []) == f"Authorization: Bearer {REDACTED}"
    assert redact("provided: sk-proj-a1b2****wxyz.", []) == f"provided: {REDACTED}."
    assert redact("", [key]) == "" and redact(None, [key]) == ""
    assert redact("nothing secret here", [key, None, ""]) == "nothing secret here"


def test_stored_bodies_are_redacted_before_they_are_cut():
    key = "sk-" + "k" * 40
    body = "x" * (MAX_STORED_BODY_CHARS - 10) + key + "y" * 1000
    kept = stored_body(body, [key])
    assert len(kept) <= MAX_STORED_BODY_CHARS + 1 and kept.endswith("…")
    assert "kkkk" not in kept
    assert stored_body(b"\xff\xfebytes", []) == "\ufffd\ufffdbytes"
    assert stored_body(None) is None
