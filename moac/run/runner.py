"""Running plans for real: one prompt (awaited or streamed), many, or a resumable batch.

    from moac.run import Runner, run_plan        # re-exported by the package

    result = await run_plan(plan, "What is a Mixture-of-Agents?")      # one QueryResult
    results = await run_plan(plan, ["first", "second"], concurrency=8)  # in the given order

    async with Runner(plan, trace_path="traces.jsonl") as runner:
        async for event in (stream := runner.stream("Explain MoA")):
            if isinstance(event, Delta):
                print(event.text, end="", flush=True)
            else:                               # Restart: what was printed is void
                print("\\n[the answer starts over]")
        stream.result                           # the QueryResult, once the stream ended

Contract:

- One ``aiohttp`` session per :class:`Runner`, one client per provider (its concurrency cap,
  requests-per-minute pacing and cool-down shared by every query of the run), one trace file.
- API keys are read when the :class:`Runner` is built, before anything is sent or written:
  a missing one raises :class:`~moac.providers.errors.MissingApiKey` naming the variable.
- Batches (:meth:`Runner.run_batch`) append one JSON line per item to the answers file as
  soon as the item is done (flushed), and skip the items already answered there (same id,
  same prompt, status ``ok``): a killed run is resumed by running it again, and pays for
  nothing it already had. When a batch ends, even by Ctrl-C, the file is rewritten (atomically)
  with one line per id, in the prompts' order.
- With ``max_usd_total``, the run's spending is one ledger shared by every query: once a call
  is refused by it, no new query starts (those queries are ``not_run`` and left to a resume).
"""

from __future__ import annotations

import asyncio
import os
import re
import sys
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

from moac.run.batch_files import (  # noqa: F401 (re-exported: part of moac.run's API)
    _ANSWER_FIELDS, PROMPT_FIELDS, PromptItem, RunError, _open_append, answered,
    compact_answers, load_prompts, read_answers,
)
from moac.constants import DEFAULT_RUN_CONCURRENCY
from moac.run.executor import (
    BudgetLedger, BudgetRefused, ChatClient, Executor, QueryProgress, QueryResult, retry_sleep,
)
from moac.ir import Plan, RoutePlan
from moac.ir.spec import ProviderSpec
from moac.providers.errors import MissingApiKey, ProviderError
from moac.providers.limits import ProviderLimiter
from moac.providers.pacing import Pacer, pacer_for
from moac.providers.openai import OpenAICompatibleClient, make_session, resolve_api_key
from moac.text import json_bytes, valid_text
from moac.traces.trace import RunHeader, TraceWriter, jsonl_safe, price_table_sha256, sha256_file


# --- streaming -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Delta:
    """Text the final stage wrote."""
    text: str


@dataclass(frozen=True)
class Reasoning:
    """Thinking the final stage showed (only from ``Runner.stream(..., reasoning=True)``);
    it comes before the answer's :class:`Delta` events, never among them."""
    text: str


@dataclass(frozen=True)
class Restart:
    """The attempt that streamed the text so far failed: that text is void, and the answer
    starts over (from a retry or the fallback)."""
    node: str
    reason: str


_END = object()


class AnswerStream:
    """An async iterator of :class:`Delta` and :class:`Restart` events for one query;
    :attr:`result` holds the :class:`~moac.run.executor.QueryResult` once iteration ends (and
    iteration re-raises what the run raised). Leaving early: ``await stream.aclose()``."""

    def __init__(self, runner: "Runner", prompt, query_id: str, reasoning: bool = False):
        self._runner, self._prompt, self._query_id = runner, prompt, query_id
        self._reasoning = reasoning
        self._queue: asyncio.Queue = asyncio.Queue()
        self._task: asyncio.Task | None = None
        self.result: QueryResult | None = None

    def __aiter__(self) -> "AnswerStream":
        if self._task is None:
            self._task = asyncio.ensure_future(self._run())
        return self

    async def _run(self) -> QueryResult:
        more = {"on_reasoning": lambda text: self._queue.put_nowait(Reasoning(text))} \
            if self._reasoning else {}
        try:
            return await self._runner.run(
                self._prompt, query_id=self._query_id,
                on_delta=lambda text: self._queue.put_nowait(Delta(text)),
                on_restart=lambda node, why: self._queue.put_nowait(Restart(node, why)),
                **more)
        finally:
            self._queue.put_nowait(_END)

    async def __anext__(self) -> Delta | Restart:
        if self._task is None:
            self.__aiter__()
        item = await self._queue.get()
        if item is _END:
            self.result = self._task.result()
            raise StopAsyncIteration
        return item

    async def aclose(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)


# --- the runner ------------------------------------------------------------------------------


@dataclass
class BatchProgress:
    total: int            # items to answer in this run (the ones answered before excluded)
    before: int           # items answered by an earlier run
    done: int = 0
    ok: int = 0
    failed: int = 0
    cost_usd: float = 0.0
    cached_usd: float = 0.0  # the price of the answers that came from a cache or journal
    started: float = field(default_factory=time.monotonic)
    not_run: int = 0
    stopped: str | None = None  # why the batch stopped early (the run's budget)
    # Each distinct error of the failed items (its call's id taken off), with the number
    # of items it failed: what a batch's summary names.
    errors: Counter = field(default_factory=Counter)
    recovered: int = 0  # calls answered from the journal of an interrupted run
    recovered_usd: float = 0.0  # ...and what they had cost
    pacing: str = ""  # where the providers' rate limits stand, when a pacer knows or acts
    cut: int = 0  # answered items with an answer cut by its max_tokens (finish_reason length)

    @property
    def elapsed_s(self) -> float:
        return time.monotonic() - self.started


class Runner:
    """The session, clients, trace and executor of one run. Use ``async with``."""

    def __init__(self, plan: Plan | RoutePlan, *, environ: Mapping[str, str] | None = None,
                 trace_path: str | None = None, source_file: str | None = None,
                 max_usd_total: float | None = None,
                 clients: Mapping[str, ChatClient] | None = None,
                 cache=None, cache_mode: str | None = None,
                 run_ledger: BudgetLedger | None = None):
        self.plan = plan
        self.trace_path = trace_path
        self.source_file = source_file
        self.max_usd_total = max_usd_total
        # ``run_ledger``: one shared with other runners (moac eval's --max-usd-total covers
        # every pipeline and the judge); else one of its own when max_usd_total is given.
        if run_ledger is not None:
            self.run_ledger = run_ledger
            self.max_usd_total = run_ledger.max_usd
        else:
            self.run_ledger = BudgetLedger(max_usd_total, name="run", label="max_usd_total") \
                if max_usd_total is not None else None
        self.run_id = uuid.uuid4().hex[:12]
        self._given_clients = clients
        # A response cache (moac.run.cache.ResponseCache): "record" answers repeats from it and
        # stores new answers; "replay" answers only from it, so it needs no key and no
        # server, and a request it has not recorded fails the call (CacheMiss).
        self.cache, self.cache_mode = cache, cache_mode if cache is not None else None
        self.keys = {}
        if clients is None and self.cache_mode != "replay":
            # Keys first: a missing one must fail before anything is sent or written.
            self.keys = resolve_keys([plan], os.environ if environ is None else environ)
        self.session = None
        self.clients: dict[str, ChatClient] = {}  # shared by the executors: see run_batch
        self.local_servers = None  # moac.providers.local.LocalServers, started on first use
        self.trace: TraceWriter | None = None
        self.executor: Executor | None = None

    def pacing(self) -> str:
        """Where each provider key's rate limit stands and its pace, for a progress line
        ("" when no pacer has anything to say)."""
        seen, parts = set(), []
        for client in self.clients.values():
            limiter = getattr(client, "limiter", None) or \
                getattr(getattr(client, "inner", None), "limiter", None)
            pacer = getattr(limiter, "pacer", None)
            if pacer is not None and id(pacer) not in seen:
                seen.add(id(pacer))
                text = pacer.describe()
                if text:
                    parts.append(text)
        return "; ".join(parts)

    def _pacer(self, provider: ProviderSpec) -> Pacer:
        if provider.kind == "local":  # llama.cpp in this process: no limit but its speed
            return Pacer(provider.name, clock=time.monotonic)
        key = self.keys.get(provider.name)
        return pacer_for(provider.base_url, key.get_secret_value() if key else None,
                         name=provider.name, rpm=provider.rpm, tpm=provider.tpm,
                         burst=min(provider.parallel, provider.rpm) if provider.rpm else None,
                         clock=time.monotonic)

    async def __aenter__(self) -> "Runner":
        if self._given_clients is None and self.cache_mode == "replay":
            from moac.run.cache import CachingClient
            clients = {name: CachingClient(None, self.cache, "replay", provider=name)
                       for name in self.plan.providers}
        elif self._given_clients is None:
            self.session = make_session(self.plan.providers.values())
            clients: dict[str, ChatClient] = {}
            for name, provider in self.plan.providers.items():
                # A limiter of its own (pacing sleeps must not reach retry_sleep), with the
                # pacer every client of this key in the process shares.
                limiter = ProviderLimiter(provider.name, provider.parallel,
                                          pacer=self._pacer(provider))
                if provider.kind == "local":
                    from moac.providers.local import LocalClient, LocalServers
                    if self.local_servers is None:
                        self.local_servers = LocalServers()
                    clients[name] = LocalClient(provider, self.plan.models.values(),
                                                self.local_servers, limiter=limiter,
                                                sleep=retry_sleep)
                else:
                    clients[name] = OpenAICompatibleClient(
                        self.session, provider, self.keys[name], sleep=retry_sleep,
                        limiter=limiter)
        else:
            clients = dict(self._given_clients)
        if self.cache_mode == "record":
            from moac.run.cache import CachingClient
            clients = {name: CachingClient(client, self.cache, "record", provider=name)
                       for name, client in clients.items()}
        try:
            if self.local_servers is not None:
                # Start llama.cpp now: a bad model file fails the run once, not each agent,
                # and its start-up (which holds the GIL) does not land mid-run.
                await self.local_servers.start_all(self.plan.providers,
                                                   self.plan.models.values())
            if self.trace_path:
                self.trace = TraceWriter(self.trace_path)
                self.trace.write(self.header())
            self.clients = clients
            self.executor = self._executor(clients)
        except BaseException:
            await self.__aexit__(None, None, None)
            raise
        return self

    def _executor(self, clients: Mapping[str, ChatClient]):
        if isinstance(self.plan, RoutePlan):
            from moac.run.router import RouteExecutor  # loads the planner's routing
            return RouteExecutor(self.plan, clients, trace=self.trace, run_id=self.run_id,
                                 run_ledger=self.run_ledger)
        return Executor(self.plan, clients, trace=self.trace, run_id=self.run_id,
                        run_ledger=self.run_ledger)

    async def __aexit__(self, *exc) -> None:
        # Each step in a finally of the one before: a second Ctrl-C (a cancel arriving
        # while llama.cpp stops) must still close the session and the trace, or aiohttp
        # prints "Unclosed client session" on the way out.
        try:
            if self.local_servers is not None:
                servers, self.local_servers = self.local_servers, None
                await servers.aclose()  # stops llama.cpp, also on Ctrl-C
        finally:
            try:
                if self.session is not None:
                    session, self.session = self.session, None
                    await session.close()
            finally:
                if self.trace is not None:
                    self.trace.close()

    def header(self) -> RunHeader:
        from moac import __version__
        source = self.source_file or self.plan.source
        return RunHeader(
            run_id=self.run_id, moac_version=__version__, started_at=time.time(),
            file=source, file_sha256=sha256_file(source) if source and os.path.isfile(source)
            else "", pipeline=self.plan.pipeline, plan=self.plan.to_dict(),
            budget=self.plan.budget.model_dump(mode="json"), max_usd_total=self.max_usd_total,
            price_table_sha256=price_table_sha256(self.plan.models))

    @property
    def spent_usd(self) -> float:
        return self.run_ledger.spent_usd if self.run_ledger else float("nan")

    # --- queries ---------------------------------------------------------------------------

    async def run(self, prompt, *, query_id: str = "q0",
                  on_delta: Callable[[str], None] | None = None,
                  on_restart: Callable[[str, str], None] | None = None,
                  on_progress: Callable[[QueryProgress], None] | None = None,
                  on_reasoning: Callable[[str], None] | None = None) -> QueryResult:
        """Answer one prompt (a string, or a conversation ending with the user's turn).
        ``on_progress`` hears where the query stands as each stage starts and each of its
        calls ends; ``on_reasoning`` the final stage's thinking, apart from its answer."""
        return await self.executor.run(prompt, query_id=query_id, on_delta=on_delta,
                                       on_restart=on_restart, on_progress=on_progress,
                                       on_reasoning=on_reasoning)

    def stream(self, prompt, *, query_id: str = "q0", reasoning: bool = False) -> AnswerStream:
        """Answer one prompt as an async iterator of :class:`Delta`/:class:`Restart`
        (and :class:`Reasoning`, the final stage's thinking, with ``reasoning``)."""
        return AnswerStream(self, prompt, query_id, reasoning)

    async def run_many(self, prompts: Sequence, *,
                       concurrency: int = DEFAULT_RUN_CONCURRENCY) -> list[QueryResult]:
        """Answer several prompts, up to ``concurrency`` at once; results in their order."""
        semaphore = asyncio.Semaphore(max(concurrency, 1))

        async def one(index: int, prompt) -> QueryResult:
            async with semaphore:
                return await self.run(prompt, query_id=str(index))

        return list(await asyncio.gather(*(one(i, p) for i, p in enumerate(prompts))))

    async def answer_item(self, item: PromptItem, admission: str = "raise"
                          ) -> tuple[str, list[QueryResult]]:
        """Every turn of an item, each turn seeing the conversation so far. Raises
        :class:`~moac.run.executor.BudgetRefused` when the run cannot admit the first turn
        (``admission`` as in :meth:`moac.run.executor.Executor.run`; later turns are fit to
        what is left of the run)."""
        history: list[dict] = []
        results: list[QueryResult] = []
        for number, turn in enumerate(item.turns, 1):
            history.append({"role": "user", "content": turn})
            query_id = item.id if len(item.turns) == 1 else f"{item.id}#{number}"
            result = await self.executor.run(list(history), query_id=query_id,
                                             admission=admission if number == 1 else "fail")
            results.append(result)
            if not result.ok:
                return "failed", results
            history.append({"role": "assistant", "content": result.answer})
        return "ok", results

    async def run_batch(self, items: Sequence[PromptItem], out_path: str, *,
                        concurrency: int = DEFAULT_RUN_CONCURRENCY,
                        progress: Callable[[BatchProgress], None] | None = None,
                        journal: bool = True) -> BatchProgress:
        """Answer every item not already answered in ``out_path`` (see the module
        docstring), appending a line per item as it completes. With ``journal`` (and no
        response cache of its own), every call is kept as it ends in
        :func:`journal_path` ``(out_path)``, so that a killed batch, run again, pays only for
        the calls that were in flight; the journal is removed once every item is answered."""
        if not journal or self.cache_mode is not None or not self.clients:
            return await self._run_batch(items, out_path, concurrency, progress)
        from moac.run.cache import CachingClient, ResponseCache
        path = journal_path(out_path)
        plain = dict(self.clients)
        with ResponseCache(path) as kept:
            # The executors share this dict: the journal stands in front of every client
            # for the length of the batch.
            self.clients.update({name: CachingClient(client, kept, "journal", provider=name)
                                 for name, client in plain.items()})
            try:
                state = await self._run_batch(items, out_path, concurrency, progress)
            finally:
                self.clients.update(plain)
            state.recovered = kept.stats.hits
            state.recovered_usd = state.cached_usd
        if state.failed == 0 and state.not_run == 0 and not state.stopped:
            for suffix in ("", "-wal", "-shm"):
                try:
                    os.remove(path + suffix)
                except FileNotFoundError:
                    pass
        return state

    async def _run_batch(self, items: Sequence[PromptItem], out_path: str, concurrency: int,
                         progress: Callable[[BatchProgress], None] | None) -> BatchProgress:
        rows = read_answers(out_path)
        others = sorted({str(r.get("generator")) for r in rows
                         if r.get("status") == "ok" and r.get("generator") not in
                         (None, self.plan.pipeline)})
        if others:
            raise RunError(f"{out_path} holds answers of pipeline {', '.join(others)}, not "
                           f"{self.plan.pipeline}: give another --out")
        done_before = answered(rows, items)
        todo = [item for item in items if item.id not in done_before]
        state = BatchProgress(total=len(todo), before=len(items) - len(todo))
        queue = iter(todo)
        out = _open_append(out_path)
        finished = asyncio.Condition()
        in_flight = [0]

        async def answer(item: PromptItem) -> tuple[str, list[QueryResult]] | None:
            """The item's answer, once the run's budget admits it; None if it never will
            (nothing else in flight will free any of the budget)."""
            admission = "raise"
            while True:
                try:
                    return await self.answer_item(item, admission)
                except BudgetRefused as refusal:
                    if in_flight[0] == 1 and admission == "raise":
                        # Nothing in flight will free any of the run's budget: fit this
                        # query to what is left of it (it stops the batch if not even its
                        # smallest plan fits).
                        admission = "shrink"
                        continue
                    if in_flight[0] == 1:
                        state.stopped = refusal.reason
                        return None
                    in_flight[0] -= 1
                    async with finished:
                        await finished.wait()
                    in_flight[0] += 1
                except OSError:
                    raise  # a full disk or a lost file: the batch cannot record anything
                except Exception as error:  # noqa: BLE001 - one item's data must not end the batch
                    return "failed", [QueryResult.broken(
                        item.id, f"this item could not be run: {type(error).__name__}: "
                                 f"{valid_text(str(error))[:500]}")]

        def skip() -> None:
            state.not_run += 1
            if progress is not None:
                progress(state)

        async def worker() -> None:
            for item in queue:
                if state.stopped:
                    skip()
                    continue
                in_flight[0] += 1
                try:
                    answer_ = await answer(item)
                finally:
                    in_flight[0] -= 1
                    async with finished:
                        finished.notify_all()
                if answer_ is None:
                    skip()
                    continue
                status, results = answer_
                out.write(self.answer_line(item, status, results))
                state.done += 1
                state.ok += status == "ok"
                state.failed += status != "ok"
                state.cut += status == "ok" and any(r.truncated for r in results)
                if status != "ok":
                    # A failed query's first error says what failed ("the aggregator
                    # failed"); the ones after it say why: those are the causes.
                    state.errors.update({distinct_error(e) for r in results
                                         for e in (r.errors[1:] or r.errors)})
                state.cost_usd += sum(r.cost_usd for r in results)
                state.cached_usd += sum(r.cached_usd for r in results)
                if progress is not None:
                    state.pacing = self.pacing()
                    progress(state)

        workers = [asyncio.ensure_future(worker())
                   for _ in range(max(1, min(concurrency, len(todo) or 1)))]
        try:
            await asyncio.gather(*workers)
        finally:
            # One worker failing (a full disk) must not leave the others writing to a file
            # about to be closed and compacted: stop them all first.
            for task in workers:
                task.cancel()
            await asyncio.gather(*workers, return_exceptions=True)
            out.close()
            compact_answers(out_path, items)
        return state

    def answer_line(self, item: PromptItem, status: str, results: list[QueryResult]) -> bytes:
        row: dict[str, Any] = {"id": item.id}
        row.update((k, v) for k, v in item.record.items() if k not in _ANSWER_FIELDS)
        answers = [r.answer for r in results]
        if item.field == "turns":
            row["choices"] = [{"index": 0, "turns": answers}]
            row["model_id"] = self.plan.pipeline
        else:
            row["output"] = answers[0] if answers else None
        row["generator"] = self.plan.pipeline
        if isinstance(self.plan, RoutePlan):  # which candidate answered each turn
            row["routed_to"] = [r.pipeline for r in results] if item.field == "turns" \
                else (results[0].pipeline if results else None)
        row["status"] = status
        # Each answer's finish_reason ("length": cut by its max_tokens), per turn for turns.
        row["finish_reason"] = [r.finish_reason for r in results] if item.field == "turns" \
            else (results[0].finish_reason if results else None)
        row["cost_usd"] = round(sum(r.cost_usd for r in results), 8)
        row["latency_s"] = round(sum(r.latency_s for r in results), 4)
        row["tflops"] = round(sum(r.tflops for r in results), 3)
        if any(r.cached_usd or r.cached_tflops for r in results):
            row["cached_usd"] = round(sum(r.cached_usd for r in results), 8)
            row["cached_tflops"] = round(sum(r.cached_tflops for r in results), 3)
        row["run_id"] = self.run_id  # the trace's run that wrote this answer
        row["errors"] = [e for r in results for e in r.errors]
        return jsonl_safe(json_bytes(row)) + b"\n"


def resolve_keys(plans: Sequence[Plan | RoutePlan],
                 environ: Mapping[str, str]) -> dict[str, Any]:
    """Every provider's key (by provider name; None for one that needs none), after
    checking every local model is installed. Raises one
    :class:`~moac.providers.errors.MissingApiKey` naming *every* missing (or too short to be
    a key) variable of every plan, so that a run needing two keys says so once, before any
    call."""
    keys: dict[str, Any] = {}
    missing: list[tuple[str, str | None]] = []
    short: set[str] = set()
    for plan in plans:
        for provider in plan.providers.values():
            if provider.kind == "local":
                # The model file and llama.cpp must be there before anything starts; the
                # error names the install command.
                from moac.providers.local import check_local
                for model in plan.models.values():
                    if model.provider == provider.name:
                        check_local(provider, model)
                continue
            try:
                keys[provider.name] = resolve_api_key(provider, environ)
            except MissingApiKey as error:
                missing.extend(error.missing)
                short |= error.short
    if missing:
        raise MissingApiKey.every(missing, frozenset(short))
    return keys


async def run_plan(plan: Plan | RoutePlan, prompts, *, concurrency: int = DEFAULT_RUN_CONCURRENCY,
                   trace_path: str | None = None, environ: Mapping[str, str] | None = None,
                   max_usd_total: float | None = None,
                   on_delta: Callable[[str], None] | None = None):
    """One-shot: a string (or a conversation) gives one :class:`QueryResult`; a list of
    strings gives a list of them, in order."""
    async with Runner(plan, environ=environ, trace_path=trace_path,
                      max_usd_total=max_usd_total) as runner:
        if isinstance(prompts, str) or (prompts and isinstance(prompts[0], Mapping)):
            return await runner.run(prompts, on_delta=on_delta)
        return await runner.run_many(prompts, concurrency=concurrency)


# --- command-line helpers ---------------------------------------------------------------------


_CALL_ID = re.compile(r"^(?:[\w-]+\.)+[\w-]+: ")


def distinct_error(error: str) -> str:
    """An error as a batch counts it: without the id of the call it came from, so that one
    cause (a wrong key, a dead model) is one line however many calls it failed."""
    return _CALL_ID.sub("", error, count=1)


def journal_path(out_path: str) -> str:
    """Where a batch writing ``out_path`` keeps every finished call until it is done."""
    stem = out_path[:-len(".jsonl")] if out_path.endswith(".jsonl") else out_path
    return stem + ".calls.sqlite"


def default_answers_path(prompts_path: str, pipeline: str) -> str:
    """``questions.jsonl`` run by ``moa`` answers to ``questions.moa.answers.jsonl`` in the
    current directory (the prompts' own directory may be read-only shared data)."""
    stem = os.path.basename(prompts_path)
    for suffix in (".jsonl", ".json"):
        if stem.endswith(suffix):
            stem = stem[:-len(suffix)]
            break
    return f"{stem}.{pipeline}.answers.jsonl"


def summary_line(result: QueryResult) -> str:
    """The one line ``moac run --prompt`` prints on standard error."""
    routed = [f"routed to {result.pipeline}"] if result.route and result.pipeline else []
    fitted = result.fitted
    routed += [f"fit to {fitted['plan']} ({fitted['agents']} of {fitted['declared_agents']} "
               "agents)"] if fitted else []
    # A cut answer says so next to its status: it must not pass for a complete one.
    cut = ["answer cut at max_tokens (finish_reason length)"] if result.truncated else []
    parts = [result.status] + cut + routed + [
             f"${result.cost_usd:.4f}",
             f"{result.prompt_tokens + result.completion_tokens:,} tokens "
             f"({result.prompt_tokens:,} in, {result.completion_tokens:,} out)",
             f"{result.latency_s:.2f}s",
             f"{result.started_calls} call{'s' if result.started_calls != 1 else ''}"]
    if result.attempts > result.started_calls:
        parts.append(f"{result.attempts} attempts")
    parts.append(f"{result.failures} failed")
    if result.skipped:
        parts.append(f"{len(result.skipped)} skipped")
    if result.answered_by and result.answered_by.startswith("fallback"):
        parts.append(f"answered by {result.answered_by}")
    return "moac: " + " · ".join(parts)


def stderr_progress(stream=None) -> Callable[[BatchProgress], None]:
    """A progress bar on a terminal (redrawn at most ten times a second); a line per tenth
    of the batch otherwise."""
    stream = stream or sys.stderr
    tty = stream.isatty()
    last = [0.0, -1]

    def show(p: BatchProgress) -> None:
        finished = p.done + p.not_run >= p.total
        now = time.monotonic()
        tenth = p.done * 10 // max(p.total, 1)
        if tty and not finished and now - last[0] < 0.1:
            return
        if not tty and not finished and tenth == last[1]:
            return
        last[0], last[1] = now, tenth
        rate = p.done / p.elapsed_s if p.elapsed_s > 0 else 0.0
        text = (f"{p.done:>{len(str(p.total))}}/{p.total} · ${p.cost_usd:.4f}"
                + (f" · {p.failed} failed" if p.failed else "")
                + (f" · {p.not_run} not run" if p.not_run else "")
                + f" · {rate:.1f}/s"
                + (f" · {p.before} answered before" if p.before else "")
                + (f" · {p.pacing}" if p.pacing else ""))
        if tty:
            width = 24
            filled = int(width * p.done / max(p.total, 1))
            stream.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {text}\x1b[K")
            if finished:
                stream.write("\n")
        else:
            stream.write(text + "\n")
        stream.flush()

    return show


__all__ = ["AnswerStream", "BatchProgress", "Delta", "MissingApiKey", "PromptItem",
           "ProviderError", "Reasoning", "Restart", "RunError", "Runner", "answered",
           "compact_answers",
           "default_answers_path", "load_prompts", "read_answers", "run_plan",
           "stderr_progress", "summary_line"]
