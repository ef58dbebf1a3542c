"""Run a lowered plan on one query: stage by stage, the agents of a stage concurrently.

Contract of :meth:`Executor.run`:

- **Order.** Every agent of stage ``i + 1`` receives the query plus the answers of the agents
  of stage ``i`` that succeeded, numbered in the plan's input order (declaration order), never
  completion order, through its aggregate-and-synthesize template, as the system message.
- **Quorum.** A failed agent does not fail its stage while the stage's ``min_ok`` holds. Once
  it can no longer hold, the stage's calls still in flight are cancelled and the query fails
  with every error named (each failed call, and each call skipped by the budget or deadline).
- **Fallback.** An aggregator that fails (or is skipped) hands over to the declared fallback.
- **Answers.** A call is ``ok`` only with text: an answer that is empty or only whitespace
  (``EmptyAnswer``), or that a content filter stopped (``ContentFiltered``), fails its call
  after the retries its provider's policy allows, so it never counts toward a quorum, is never
  read by a later stage and is never a query's answer (the fallback answers instead). An
  answer cut by its ``max_tokens`` is ``ok`` and read, marked as cut
  (:data:`~moac.ir.prompts.CUT_BY_LENGTH`); the final answer's ``finish_reason`` is the
  query's (:attr:`QueryResult.truncated`, and its trace line). Whitespace that begins the
  final answer reaches ``on_delta`` only with the first visible text after it.
- **Deadline.** One per query: ``budget.max_latency_s`` (else
  :data:`~moac.constants.DEFAULT_QUERY_DEADLINE_S`). The client's retry loop reads it (no
  attempt starts that cannot finish, no backoff sleeps past it); past it, plus
  :data:`~moac.constants.DEADLINE_GRACE_S`, whatever is still in flight is cancelled.
- **Budget.** Before a call starts, what the query has spent, plus the worst case of its
  calls in flight, plus this call's worst case, must stay within ``max_usd`` (and
  ``max_tflops``). A call's worst case is one attempt at what the provider can bill at most,
  whatever its tokeniser: every UTF-8 byte of its messages a token (plus the chat
  template's markers, :func:`moac.ir.prompts.messages_max_tokens`), and ``max_tokens`` out.
  A hold refused only because of what this query's calls in flight hold waits for one of
  them to settle (they give back all but their real cost); a hold that cannot fit even then
  asks for a shorter answer when the model's typical one still fits (``max_tokens``
  clamped), else the call does not start and the trace says why. An attempt's hold is
  settled with its real cost when it ends (usage the provider did not report is counted at
  its bounds; usage reported past them is booked and recorded as an error); a retry holds
  its worst case again before it starts and is not made when that fails (see
  :func:`retry_sleep`): holding every attempt up front would triple every hold (two
  retries by default) and stop calls that would fit.
- **Start fit.** Before its first call the plan is fit to the query's real prompt
  (:mod:`moac.run.start_fit`): calls whose context cannot take it are dropped, the planner's
  search keeps the best sub-plan that fits what the query may spend and its deadline (or,
  with ``on_over_budget = fail``, the exact plan's worst case must fit); the dropped calls are
  ``skipped`` lines, left out as the budget leaves calls out, and the choice is
  :attr:`QueryResult.fitted`. Not even the smallest plan fits: the query fails, nothing sent.
- **Run budget.** With a run ledger (``--max-usd-total``) a query is admitted only if the run
  can hold the fitted plan's whole worst case (:meth:`Executor.worst_case_usd`), so no query
  starts that the run could not finish paying for (or, as ``admission`` says, it is fit to
  what is left of the run); its calls are checked against the run as well,
  beyond that admission. Holds are synchronous on one event loop, so concurrent queries cannot
  both pass a check that only one fits.
- **Outcomes, not exceptions.** Expected provider errors never escape: a call ends ``ok``,
  ``failed``, ``cancelled`` or ``skipped``. ``asyncio.CancelledError`` from outside (Ctrl-C)
  propagates after the calls in flight are cancelled and their attempts written.
- **Cache.** An answer from a response cache (``Attempt.cached``) is billed nothing, but
  counted by the budgets at its recorded price, and reported as ``cached_usd``: what the
  query would have cost without the cache.
- **Trace.** Every attempt of every call is one line, written when it ends (a failed attempt
  followed by the call's final error carries that error's redacted message); a call or retry
  that never started is one ``skipped`` line with its reason; then one line for the query.

Streaming: ``on_delta`` receives the final stage's answer as it arrives, and ``on_reasoning``
(when given) its thinking, apart. When an attempt that already streamed text fails,
``on_restart(node, reason)`` is called at once: what was streamed is void and the answer
starts over (from the retry or the fallback).

Reasoning: a call's thinking (an inline ``<think>`` block or a reasoning field, split off by
the client) is kept in its outcome and its trace line, never in what a later call reads
unless that call's ``references`` is ``with_reasoning``; the query's answer is the answer
alone, its thinking in :attr:`QueryResult.reasoning`. Thinking tokens are completion
tokens: billed, and bounded by the completion limit every hold counts.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from typing import Any, Callable, Mapping, Protocol, Sequence

from moac.constants import DEADLINE_GRACE_S, DEFAULT_QUERY_DEADLINE_S
from moac.ir import CallNode, LayerInfo, Plan
from moac.ir.prompts import (
    estimate_tokens, input_max_tokens, input_tokens, messages_max_tokens, messages_tokens,
)
from moac.providers.openai import Attempt, CallResult, ChatRequest
from moac.ir.spec import BudgetSpec, ModelSpec
from moac.run.ledger import BudgetLedger, BudgetRefused  # noqa: F401 (part of the executor API)
from moac.run.outcomes import (  # noqa: F401 (part of the executor API)
    CallOutcome, QueryFailed, QueryProgress, QueryResult,
)
from moac.traces.trace import CallRecord, QueryRecord, SkippedNode, TraceWriter
from moac.run.agent_call import (  # noqa: F401 (retry_sleep and BudgetStop: part of the API)
    AgentCall, BudgetStop, Node, attempt_cost, retry_sleep,
)
from moac.run.fitting import Cost, floor_tokens
from moac.run.start_fit import StartFit, start, worst_case

Messages = Sequence[Mapping[str, Any]]


class ChatClient(Protocol):
    async def chat(self, request: ChatRequest, *, deadline: float | None = None,
                   on_delta: Callable[[str], None] | None = None,
                   on_attempt: Callable[[Attempt], None] | None = None) -> CallResult: ...
    # A client may also take ``on_reasoning`` (the thinking's deltas): it is passed only
    # when the query asked for the thinking (``Executor.run(on_reasoning=...)``).


# --- the executor ------------------------------------------------------------------------------


class Executor:
    """Runs one plan, for every query of a run (see the module docstring). ``clients`` maps
    provider names to clients; give them ``sleep=retry_sleep`` (as
    :class:`moac.run.Runner` does) for retries to be budgeted."""

    def __init__(self, plan: Plan, clients: Mapping[str, ChatClient], *,
                 trace: TraceWriter | None = None, run_id: str | None = None,
                 budget: BudgetSpec | None = None, run_ledger: BudgetLedger | None = None,
                 estimates: bool = True,
                 clock: Callable[[], float] = time.monotonic,
                 wall_clock: Callable[[], float] = time.time):
        missing = sorted(set(plan.providers) - set(clients))
        if missing:
            raise ValueError(f"no client for provider(s) {', '.join(missing)}")
        self.plan = plan
        self.clients = clients
        self.trace = trace
        self.run_id = run_id or uuid.uuid4().hex[:12]
        self.budget = budget or plan.budget
        self.run_ledger = run_ledger
        self.clock = clock
        self.wall_clock = wall_clock
        self.stages: list[LayerInfo] = list(plan.layers)
        final = set(self.stages[-1].nodes)
        self.nodes = {}
        for layer in self.stages:
            # Nodes of one stage read the same history and answers, so two of them send
            # identical requests exactly when their model and settings are identical.
            seen: Counter = Counter()
            for n in layer.nodes:
                call = plan.call(n)
                model = plan.models[call.model]
                same = (call.provider, model.model_id, call.sampling, call.system, call.prompt)
                self.nodes[n] = Node(call, model, tuple(plan.inputs(n)), n in final,
                                      seen[same])
                seen[same] += 1
        self._estimate = _planner_estimate() if estimates else None
        self._estimates: dict[Any, dict[str, Any] | None] = {}
        self.start_fits: dict[Any, StartFit] = {}  # moac.run.start_fit's, per prompt bound

    def final_reserve(self, history: Messages, dropped=()) -> Cost:
        """What a query must keep unheld for its final stage while earlier calls start: the
        cheaper of the aggregator and its fallback (of those not in ``dropped``), reading
        the conversation and its system prompt with no references (they can be cut to
        nothing) and writing its typical answer."""
        prompt = messages_max_tokens(history)
        costs = []
        for node_id in self.stages[-1].nodes:
            if node_id in dropped:
                continue
            node = self.nodes[node_id]
            reading = input_max_tokens(prompt, system=node.call.system)
            costs.append(Cost.of(node.model, reading,
                                 floor_tokens(node.model, node.call.sampling.max_tokens)))
        return min(costs, key=lambda c: (c.usd, c.tflops), default=Cost(0.0, 0.0))

    def estimate_for(self, prompt_tokens: int, plan: Plan | None = None
                     ) -> dict[str, Any] | None:
        """The planner's expected-case totals for a prompt this long (cached), of the plan
        or of the sub-plan a query was fit to (``plan``)."""
        if self._estimate is None:
            return None
        key = (prompt_tokens, id(plan) if plan is not None else None)
        if key not in self._estimates:
            if len(self._estimates) > 4096:
                self._estimates.clear()
            try:
                self._estimates[key] = self._estimate(plan or self.plan, prompt_tokens,
                                                      "expected").as_dict()
            except Exception:  # noqa: BLE001 - an estimate must never fail a query
                self._estimates[key] = None
        return self._estimates[key]

    def worst_case_usd(self, history: Messages, dropped=()) -> float:
        """A query's dollars if every call writes its ``max_tokens`` (the fallback too,
        after its aggregator wrote all of its own and failed), one attempt per call, every
        prompt at its upper bound: a token per UTF-8 byte of the conversation and the
        templates, and of the answers fed in, each at the most bytes an answer of its
        ``max_tokens`` may hold (:data:`~moac.constants.MAX_ANSWER_BYTES_PER_TOKEN`, which
        the client enforces). What a run admits a query with. ``dropped``: calls the query
        does not make (:mod:`moac.run.start_fit`)."""
        return self.worst_case(history, dropped).usd

    def worst_case(self, history: Messages, dropped=()) -> Cost:
        """:meth:`worst_case_usd`, with its TFLOPs (:func:`moac.run.start_fit.worst_case`)."""
        return worst_case(self, history, dropped)

    def remaining_usd(self, history: Messages, outcomes: Mapping[str, CallOutcome],
                      start: int, mode: str = "expected") -> float:
        """Dollars the stages from ``start`` on should still cost, reading the answers in
        ``outcomes`` (their provider-reported lengths, else estimated from characters):
        each later call writes its model's typical answer (``expected``) or its
        ``max_tokens`` (``worst``, where a fallback counts too), as the planner estimates."""
        prompt = messages_tokens(history)
        written = {node: o.answer_tokens if o.answer_tokens is not None
                   else estimate_tokens(o.text) for node, o in outcomes.items() if o.ok}
        total = 0.0
        for layer in self.stages[start:]:
            for node_id in layer.nodes:
                node = self.nodes[node_id]
                call = node.call
                if call.role == "fallback" and mode != "worst":
                    continue
                reading = input_tokens(prompt, system=call.system, template=call.prompt,
                                       answers=[written[u] for u in node.inputs if u in written])
                out, answer = (call.sampling.max_tokens,) * 2 if mode == "worst" else \
                    node.model.expected_output(call.sampling.max_tokens)
                written[node_id] = answer
                total += attempt_cost(node.model, reading, out)
        return total

    async def run(self, prompt: str | Messages, *, query_id: str = "q0",
                  on_delta: Callable[[str], None] | None = None,
                  on_restart: Callable[[str, str], None] | None = None,
                  admission: str = "fail",
                  on_progress: Callable[[QueryProgress], None] | None = None,
                  on_reasoning: Callable[[str], None] | None = None) -> QueryResult:
        """Answer ``prompt`` (a string, or a conversation ending with the user's turn).
        Before any call the plan is fit to the query (:mod:`moac.run.start_fit`); with a
        run ledger the query starts only once the run holds the fitted plan's worst case
        (:meth:`worst_case_usd`, at most what the query may spend). ``admission``:
        ``"fail"`` fits the query to what is left of the run as well, and fails it at once
        when not even its smallest plan fits that; ``"shrink"`` does the same but raises
        :class:`BudgetRefused` rather than failing (a batch with nothing else in flight: it
        stops, and leaves the rest to a resume); ``"raise"`` fits it to its own limits and
        raises :class:`BudgetRefused` when the run cannot hold it now (a batch that waits
        for the queries in flight and asks again)."""
        history = as_history(prompt)
        query = _Query(self, query_id, history, on_delta, on_restart, on_progress)
        query.on_reasoning = on_reasoning
        failure = query.fit_at_start(admission)
        if failure is not None:
            return query.finish(None, None, failure=failure)
        return await query.under_deadline(query.execute)


def quorum(layer: LayerInfo, outcomes: Sequence[CallOutcome]) -> int:
    """The answers a stage needs: its ``min_ok``, lowered to the number of its agents that
    fit (those its budget or context left out shrink the stage, as the planner's pruning
    lowers a layer's quorum to the agents it keeps)."""
    return min(layer.min_ok, sum(1 for o in outcomes if not o.left_out))


def as_history(prompt: str | Messages) -> list[dict]:
    """A prompt as the conversation sent to the first stage."""
    return [{"role": "user", "content": prompt}] if isinstance(prompt, str) \
        else [dict(m) for m in prompt]


def _planner_estimate():
    try:
        from planner.estimate import estimate
    except ImportError:  # the planner is optional at run time
        return None
    return estimate


class _Query:
    """One query: its deadline, ledger, calls in flight and trace lines."""

    def __init__(self, executor: Executor, query_id: str, history: list[dict],
                 on_delta, on_restart, on_progress=None):
        self.x = executor
        self.query_id = query_id
        self.history = history
        self.on_delta = on_delta
        self.on_restart = on_restart
        self.on_progress = on_progress
        self.on_reasoning: Callable[[str], None] | None = None
        self.start = executor.clock()
        self.started_at = executor.wall_clock()
        budget = executor.budget
        self.limit_s = budget.max_latency_s or DEFAULT_QUERY_DEADLINE_S
        self.deadline = self.start + self.limit_s
        self.ledger = BudgetLedger(budget.max_usd, budget.max_tflops,
                                   parent=executor.run_ledger)
        self.outcomes: dict[str, CallOutcome] = {}
        self.answered: list[str] = []  # the latest stage's answers: what aggregators read
        self.fit: list[str] = []  # how the plan was fit to this query's budget and context
        self.dropped: dict[str, str] = {}  # calls the start fit left out, and why
        self.fitted: dict[str, Any] | None = None  # the start fit's choice (None: none made)
        self.fit_plan: Plan | None = None  # the sub-plan it chose (None: the declared one)
        self.final_reserve = executor.final_reserve(history)
        self.clamped: dict[str, int] = {}  # node -> max_tokens the budget allowed it
        self.skipped: list[SkippedNode] = []
        self.causes: list[str] = []  # skips that explain a failure (budget, deadline)
        self.tasks: dict[asyncio.Task, str] = {}
        self.cancel_reasons: dict[asyncio.Task, str] = {}
        self.expired = False
        self.finished = False
        self.path: list[str] = []  # the critical path so far
        self.route: str | None = None  # set by a route's executor
        self.unrouted = False  # a route ran no candidate for it (none fitted)
        self.decisions: list[dict[str, Any]] = []

    # --- the DAG ---------------------------------------------------------------------------

    async def under_deadline(self, body: Callable[[], Any]) -> QueryResult:
        """Await ``body()`` with the query's deadline armed; on a cancel from outside, the
        query is recorded as cancelled before the cancel propagates."""
        loop = asyncio.get_running_loop()
        timer = loop.call_later(max(self.deadline - self.x.clock(), 0.0) + DEADLINE_GRACE_S,
                                self.expire)
        try:
            return await body()
        except asyncio.CancelledError:
            self.finish(None, None, status="cancelled")
            raise
        finally:
            timer.cancel()

    def switch(self, executor: "Executor") -> None:
        """Go on with another plan whose leading stages this query has run (a route's
        early exit): the answers already paid for feed that plan's next stage."""
        self.x = executor
        self.final_reserve = executor.final_reserve(self.history, self.dropped)

    def note(self, text: str) -> None:
        """Say how the plan was fit to this query (a shrink, a shortened reference)."""
        self.fit.append(text)

    def fit_at_start(self, admission: str = "fail") -> str | None:
        """Fit the plan to this query and have the run admit it
        (:func:`moac.run.start_fit.start`): why it cannot start, else None."""
        return start(self, admission)

    async def execute(self, start: int = 0) -> QueryResult:
        """Stages ``start`` onwards, then the final stage; the query's result."""
        failure = await self.run_stages(start, len(self.x.stages) - 1)
        answer = answered_by = None
        if failure is None:
            final = self.x.stages[-1].nodes
            self.progress(self.x.stages[-1], 0, 1)
            for node in final:
                if node in self.dropped:
                    self.skip(node, self.dropped[node], left_out=True, note=False)
                    continue
                if self.expired:
                    self.skip(node, f"deadline: the query's {self.limit_s:g}s ran out")
                    continue
                outcome = await self.spawn(node)
                if outcome.status != "skipped":
                    self.path.append(node)
                if outcome.ok:
                    answer, answered_by = outcome.text, node
                    break
            if answer is None:
                ran = [n for n in final if n not in self.dropped]
                failure = ("the fallback failed" if final[0] in self.dropped else
                           "the aggregator failed" + (" and so did its fallback"
                                                      if len(ran) > 1 else ""))
        return self.finish(answer, answered_by, failure=failure, path=self.path)

    async def run_stages(self, start: int, stop: int) -> str | None:
        """Run stages ``start`` to ``stop - 1`` (none of them final); the failure that ended
        the query (a stage below its quorum), with every later call skipped, else None."""
        stages = self.x.stages
        for index in range(start, stop):
            layer = stages[index]
            if all(n in self.dropped for n in layer.nodes):  # the start fit dropped it
                for node in layer.nodes:
                    self.skip(node, self.dropped[node], left_out=True, note=False)
                continue
            outcomes = await self.stage(layer)
            ran = [o for o in outcomes if o.status != "skipped"]
            if ran:
                self.path.append(max(ran, key=lambda o: o.ended).node)
            ok = sum(1 for o in outcomes if o.ok)
            left_out = sum(1 for o in outcomes if o.left_out)
            if left_out == len(outcomes):
                # The budget or the contexts left no room for any of it: the stage is
                # dropped, and the next one reads what the one before it answered.
                kinds = sorted({o.error.split(": skipped: ", 1)[-1].split(":", 1)[0]
                                for o in outcomes})
                self.note(f"layer {layer.name} left out: none of its {len(outcomes)} agents "
                          f"fit ({' and '.join(kinds)})")
                continue
            needed = quorum(layer, outcomes)
            if any(o.left_out and o.node not in self.dropped for o in outcomes) and \
                    ok >= needed:
                self.note(f"layer {layer.name} ran {len(outcomes) - left_out} of "
                          f"{len(outcomes)} agents (the rest did not fit), quorum "
                          f"{needed} of them")
            if ok < needed:
                counts = Counter(o.status for o in outcomes if not o.ok)
                how = ", ".join(f"{counts[s]} {s}" for s in ("failed", "cancelled", "skipped")
                                if counts[s])
                failure = (f"layer {layer.name}: {ok} of {len(outcomes)} agents answered "
                           f"({how}), below its quorum of {needed}")
                if self.expired:
                    failure = f"deadline: the query's {self.limit_s:g}s ran out; " + failure
                for later in stages[index + 1:]:
                    for node in later.nodes:
                        if self.x.nodes[node].call.role != "fallback":
                            self.skip(node, f"not run: {failure}", cause=False)
                return failure
            self.answered = [o.node for o in outcomes if o.ok]
        return None

    def answers_of(self, layer: LayerInfo) -> list[str]:
        """The texts of a stage's answers that succeeded, in declaration order."""
        found = (self.outcomes.get(n) for n in layer.nodes)
        return [o.text or "" for o in found if o is not None and o.ok]

    def progress(self, layer: LayerInfo, done: int, calls: int) -> None:
        if self.on_progress is not None:
            self.on_progress(QueryProgress(
                layer.name, layer.index + 1, len(self.x.stages), done, calls,
                self.ledger.spent_usd, self.x.clock() - self.start))

    async def stage(self, layer: LayerInfo) -> list[CallOutcome]:
        dropped = {n: self.skip(n, self.dropped[n], left_out=True, note=False)
                   for n in layer.nodes if n in self.dropped}
        tasks = [self.start_task(node) for node in layer.nodes if node not in dropped]
        ok = left_out = 0
        pending = set(tasks)
        self.progress(layer, 0, len(tasks))
        try:
            while pending:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                self.progress(layer, len(tasks) - len(pending), len(tasks))
                results = [task.result() for task in done]
                ok += sum(1 for o in results if o.ok)
                left_out += sum(1 for o in results if o.left_out)
                # The quorum counts the agents that fit (left-out ones shrink the stage);
                # once what is in flight cannot reach it, stop the rest.
                needed = min(layer.min_ok, len(tasks) - left_out)
                if pending and ok + len(pending) < needed:
                    reason = (f"layer {layer.name} can no longer reach its quorum of "
                              f"{layer.min_ok}")
                    for task in pending:
                        self.cancel(task, reason)
                    await asyncio.wait(pending)
                    break
        finally:
            left = [task for task in tasks if not task.done()]
            for task in left:  # we are being cancelled: take the calls down with us
                task.cancel()
            if left:
                await asyncio.wait(left)
        ran = iter(task.result() for task in tasks)
        return [dropped[n] if n in dropped else next(ran) for n in layer.nodes]

    def start_task(self, node: str) -> asyncio.Task:
        task = asyncio.ensure_future(self.guarded(node))
        self.tasks[task] = node
        task.add_done_callback(self._forget)
        return task

    def _forget(self, task: asyncio.Task) -> None:
        self.tasks.pop(task, None)

    async def spawn(self, node: str) -> CallOutcome:
        """Run one call in a task of its own (so that the deadline can cancel it)."""
        task = self.start_task(node)
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            task.cancel()
            await asyncio.wait([task])
            raise

    def cancel(self, task: asyncio.Task, reason: str) -> None:
        if not task.done():
            self.cancel_reasons[task] = reason
            task.cancel(reason)

    def expire(self) -> None:
        """The deadline (plus grace) passed: cancel whatever is in flight."""
        self.expired = True
        for task in list(self.tasks):
            self.cancel(task, f"deadline: the query's {self.limit_s:g}s ran out")

    async def guarded(self, node: str) -> CallOutcome:
        call = AgentCall(self, self.x.nodes[node])
        try:
            return await call.run()
        except asyncio.CancelledError:
            task = asyncio.current_task()
            reason = self.cancel_reasons.pop(task, None)
            outcome = call.cancelled(reason or "interrupted")
            if reason is None:
                raise
            uncancel = getattr(task, "uncancel", None)  # Python 3.11+
            if uncancel is not None:
                uncancel()  # cancelled on purpose: an outcome, not an exception
            return outcome

    # --- records ---------------------------------------------------------------------------

    def skip(self, node: str, reason: str, *, cause: bool = True,
             left_out: bool = False, note: bool = True) -> CallOutcome:
        """Record that a call did not start. ``left_out``: its budget or context left no
        room for it (the stage shrinks; a reason, not an error, unless the query fails);
        ``note``: say so in the fit notes (the start fit's summary already does)."""
        info = self.x.nodes[node]
        self.skipped.append(SkippedNode(node=node, reason=reason))
        if left_out:
            if note:
                self.note(f"{node} left out: {reason.split(' (', 1)[0]}")
        elif cause:
            self.causes.append(f"{node}: skipped: {reason}")
        self.write_call(info.call, attempt=0, status="skipped", error=reason)
        outcome = CallOutcome(node, "skipped", error=f"{node}: skipped: {reason}",
                              left_out=left_out)
        self.outcomes[node] = outcome
        return outcome

    def write_call(self, call: CallNode, *, attempt: int, status: str,
                   record: Attempt | None = None, cost: float = 0.0, tflops: float = 0.0,
                   error: str | None = None, error_body: str | None = None,
                   cached: bool = False) -> None:
        trace = self.x.trace
        if trace is None:
            return
        fields: dict[str, Any] = {}
        if record is not None:
            fields = dict(
                started_at=record.started_wall, ended_at=record.ended_wall,
                duration_s=record.ended - record.started, ttft_s=record.ttft_s,
                prompt_tokens=record.prompt_tokens,
                completion_tokens=record.completion_tokens,
                tokens_reported=record.tokens_reported, error_type=record.error_type,
                http_status=record.http_status, finish_reason=record.finish_reason,
                wait_s=record.queued_s, reasoning_ttft_s=record.reasoning_ttft_s,
                reasoning_tokens=record.reasoning_tokens, reasoning=record.reasoning or None)
        trace.write(CallRecord(
            run_id=self.x.run_id, query_id=self.query_id, pipeline=self.x.plan.pipeline,
            layer=call.layer, node=call.id, position=call.position, role=call.role,
            model=call.model, provider=call.provider, attempt=attempt, status=status,
            cost_usd=cost, tflops=tflops, error=error, error_body=error_body,
            max_tokens=self.clamped.get(call.id, call.sampling.max_tokens), cached=cached,
            **fields))

    def finish(self, answer: str | None, answered_by: str | None, *,
               failure: str | None = None, path: list[str] | None = None,
               status: str | None = None) -> QueryResult:
        path = path or []
        outcomes = list(self.outcomes.values())
        errors = ([failure] if failure else []) + \
            [o.error for o in outcomes if o.error and o.status in ("failed", "cancelled")] + \
            self.causes + (self.fit if answer is None else [])
        if status is None:
            status = "ok" if answer is not None else "failed"
        critical = sum(self.outcomes[n].ended - self.outcomes[n].started for n in path
                       if n in self.outcomes)
        prompt_tokens = messages_tokens(self.history)
        finish_reason = self.outcomes[answered_by].finish_reason \
            if answer is not None and answered_by in self.outcomes else None
        self.ledger.close()
        result = QueryResult(
            query_id=self.query_id, status=status, answer=answer, answered_by=answered_by,
            cost_usd=sum(o.cost_usd for o in outcomes),
            prompt_tokens=sum(o.prompt_tokens for o in outcomes),
            completion_tokens=sum(o.completion_tokens for o in outcomes),
            tflops=sum(o.tflops for o in outcomes), latency_s=self.x.clock() - self.start,
            cached_usd=sum(o.cached_usd for o in outcomes),
            cached_tflops=sum(o.cached_tflops for o in outcomes),
            critical_path=path, critical_path_s=critical, calls=outcomes, errors=errors,
            skipped=self.skipped,
            estimate=None if self.unrouted else self.x.estimate_for(prompt_tokens,
                                                                    self.fit_plan),
            pipeline=None if self.unrouted else self.x.plan.pipeline, route=self.route,
            decisions=self.decisions, fit=list(self.fit), finish_reason=finish_reason,
            fitted=self.fitted,
            reasoning=self.outcomes[answered_by].reasoning if answered_by else None)
        if self.x.trace is not None and not self.finished:
            self.x.trace.write(QueryRecord(
                run_id=self.x.run_id, query_id=self.query_id,
                pipeline=self.route if self.unrouted else self.x.plan.pipeline, status=status,
                started_at=self.started_at, latency_s=result.latency_s,
                critical_path=path, critical_path_s=critical, calls=result.started_calls,
                attempts=result.attempts, failures=result.failures, cost_usd=result.cost_usd,
                prompt_tokens=result.prompt_tokens,
                completion_tokens=result.completion_tokens, tflops=result.tflops,
                estimate=result.estimate, answer=answer, answered_by=answered_by,
                errors=errors, skipped=self.skipped, route=self.route,
                cached_usd=result.cached_usd, fit=result.fit, finish_reason=finish_reason,
                fitted=result.fitted))
        self.finished = True
        return result
