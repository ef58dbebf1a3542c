"""One agent call of a query: its budget hold, its attempts, their trace lines, its outcome.

:class:`AgentCall` is the executor's worker for a single node (see :mod:`moac.run.executor` for the
contract it keeps); :func:`retry_sleep` is the backoff sleep that lets a retry be budgeted.
"""

from __future__ import annotations

import asyncio
import contextvars
from dataclasses import dataclass, replace
from typing import Any, Callable, Protocol

from moac.constants import BUDGET_TOKEN_MARGIN
from moac.ir.plan import CallNode
from moac.ir.prompts import estimate_tokens, render_template
from moac.ir.spec import ModelSpec
from moac.providers.errors import MalformedResponse, ProviderError
from moac.providers.openai import Attempt, ChatRequest
from moac.run.ledger import BudgetLedger
from moac.run.outcomes import CallOutcome


@dataclass(frozen=True)
class Node:
    """What a call needs, looked up once per plan rather than once per query."""
    call: CallNode
    model: ModelSpec
    inputs: tuple[str, ...]
    final: bool
    occurrence: int = 0  # earlier nodes of its stage that send the very same request


class QueryState(Protocol):
    """What a call reads and writes of the query it belongs to (the executor's query)."""
    x: Any                               # the Executor: clock, clients
    history: list[dict]
    deadline: float
    limit_s: float
    expired: bool
    ledger: BudgetLedger
    outcomes: dict[str, CallOutcome]
    clamped: dict[str, int]
    on_delta: Callable[[str], None] | None
    on_restart: Callable[[str, str], None] | None

    def skip(self, node: str, reason: str, *, cause: bool = True) -> CallOutcome: ...

    def write_call(self, call: CallNode, *, attempt: int, status: str, **fields: Any) -> None: ...


def attempt_cost(model: ModelSpec, prompt_tokens: int, completion_tokens: int) -> float:
    return model.usd(prompt_tokens, completion_tokens)


def attempt_tflops(model: ModelSpec, tokens: int) -> float:
    return model.tflops(tokens)


class BudgetStop(ProviderError):
    """A retry that the budget has no room for (raised by :func:`retry_sleep`)."""


# --- retries under the budget ------------------------------------------------------------------

_CURRENT_CALL: contextvars.ContextVar["AgentCall | None"] = contextvars.ContextVar(
    "moac_current_call", default=None)


async def retry_sleep(seconds: float) -> None:
    """The backoff sleep to give :class:`~moac.providers.openai.OpenAICompatibleClient`
    (``sleep=retry_sleep``, with a limiter of its own so pacing does not come here): the
    client calls it only between a failed attempt and its retry. Before sleeping it writes
    the failed attempt's trace line; after, it re-reserves the retry's worst case, and
    raises :class:`BudgetStop` (ending the call) when the budget has no room for it."""
    call = _CURRENT_CALL.get()
    if call is not None:
        call.flush_pending()
    await asyncio.sleep(seconds)
    if call is not None:
        call.reserve_retry()



class AgentCall:
    """One agent call of a query: its reservation, attempts and outcome."""

    __slots__ = ("q", "node", "call", "model", "outcome", "held_usd", "held_tflops",
                 "worst_usd", "worst_tflops", "pending", "emitted", "token")

    def __init__(self, query: QueryState, node: Node):
        self.q = query
        self.node = node
        self.call = node.call
        self.model = node.model
        self.outcome = CallOutcome(node.call.id, "failed")
        self.held_usd = self.held_tflops = 0.0
        self.worst_usd = self.worst_tflops = 0.0
        self.pending: tuple[Attempt, float, float] | None = None
        self.emitted = 0  # characters streamed by the current attempt
        self.token = None

    def messages(self) -> tuple[list[dict], int]:
        """The call's messages, and the correction to their character-based token estimate
        that the provider-reported sizes of the answers they hold make."""
        q, call = self.q, self.call
        system = [call.system] if call.system else []
        correction = 0
        if call.prompt is not None:
            answers = [o for o in (q.outcomes.get(n) for n in self.node.inputs)
                       if o is not None and o.ok]
            system.append(render_template(call.prompt, [o.text or "" for o in answers]))
            correction = sum(o.answer_tokens - estimate_tokens(o.text) for o in answers
                             if o.answer_tokens is not None)
        head = [{"role": "system", "content": "\n\n".join(system)}] if system else []
        return head + q.history, correction

    async def run(self) -> CallOutcome:
        q, call, model = self.q, self.call, self.model
        messages, correction = self.messages()
        request = ChatRequest(model=model.model_id, messages=messages, sampling=call.sampling,
                              stream=True, occurrence=self.node.occurrence)
        # Tokens read: the answers fed in as their providers counted them (when they did),
        # the rest estimated from characters; reserved with a margin so that a denser
        # tokeniser does not carry spending past the limit.
        reading = int(max(request.estimated_prompt_tokens() + correction, 0)
                      * BUDGET_TOKEN_MARGIN) + 1
        self.worst_usd = attempt_cost(model, reading, call.sampling.max_tokens)
        self.worst_tflops = attempt_tflops(model, reading + call.sampling.max_tokens)
        if q.expired or q.x.clock() >= q.deadline:
            return q.skip(call.id, f"deadline: the query's {q.limit_s:g}s ran out before "
                                   "it could start")
        why = q.ledger.reserve(self.worst_usd, self.worst_tflops)
        if why is not None:
            request = self.clamp(request, reading)
            if request is None:
                return q.skip(call.id, why)
        self.held_usd, self.held_tflops = self.worst_usd, self.worst_tflops
        outcome = self.outcome
        q.outcomes[call.id] = outcome
        outcome.started = q.x.clock()
        on_delta = self.delta if self.node.final and q.on_delta is not None else None
        self.token = _CURRENT_CALL.set(self)
        try:
            result = await q.x.clients[call.provider].chat(
                request, deadline=q.deadline, on_delta=on_delta, on_attempt=self.attempt)
        except ProviderError as error:
            outcome.error = f"{call.id}: {error}"
            self.close_pending(error)
        else:
            outcome.status, outcome.text = "ok", result.text
            outcome.finish_reason = result.finish_reason
            if result.usage.reported:
                outcome.answer_tokens = result.usage.completion_tokens
        finally:
            _CURRENT_CALL.reset(self.token)
            outcome.ended = q.x.clock()
            self.release()
        return outcome

    def clamp(self, request: ChatRequest, reading: int) -> ChatRequest | None:
        """When the call's worst case does not fit but a shorter answer does, ask for at
        most what fits (and hold that), as long as it leaves room for the model's typical
        answer; else None. The answer may then end with finish_reason "length"."""
        q, model = self.q, self.model
        usd_left = q.ledger.headroom_usd() - attempt_cost(model, reading, 0)
        per_token = attempt_cost(model, 0, 1)
        affordable = int(usd_left / per_token) if per_token > 0 else 0
        wanted = self.call.sampling.max_tokens
        if affordable >= wanted or affordable < min(model.answer_tokens, wanted):
            return None
        worst_usd = attempt_cost(model, reading, affordable)
        worst_tflops = attempt_tflops(model, reading + affordable)
        if q.ledger.reserve(worst_usd, worst_tflops) is not None:
            return None
        self.worst_usd, self.worst_tflops = worst_usd, worst_tflops
        q.clamped[self.call.id] = affordable
        return replace(request, max_tokens=affordable)

    def delta(self, text: str) -> None:
        self.emitted += len(text)
        self.q.on_delta(text)

    def attempt(self, record: Attempt) -> None:
        """The client's ``on_attempt``: book the attempt's cost, write its line (a failed
        one waits for the call's final error, or for the retry, before it is written)."""
        nominal = attempt_cost(self.model, record.prompt_tokens, record.completion_tokens)
        nominal_tflops = attempt_tflops(self.model,
                                        record.prompt_tokens + record.completion_tokens)
        outcome = self.outcome
        if record.cached:  # from the response cache: nothing was sent, nothing is billed
            cost = tflops = 0.0
            outcome.cached_usd += nominal
            outcome.cached_tflops += nominal_tflops
        else:
            cost, tflops = nominal, nominal_tflops
        outcome.attempts += 1
        outcome.cost_usd += cost
        outcome.tflops += tflops
        outcome.prompt_tokens += record.prompt_tokens
        outcome.completion_tokens += record.completion_tokens
        # Budgets count a cached answer at its recorded price: a replay then makes exactly
        # the calls (and clamps) its recording made, and a budget bounds what the pipeline
        # costs, not what the cache happened to save.
        self.q.ledger.settle(self.held_usd, self.held_tflops, nominal, nominal_tflops)
        self.held_usd = self.held_tflops = 0.0
        if record.status == "ok":
            self.q.write_call(self.call, attempt=record.number, status="ok", record=record,
                              cost=cost, tflops=tflops, cached=record.cached)
            return
        self.pending = (record, cost, tflops)
        if self.emitted and record.status == "failed" and self.q.on_restart is not None:
            self.q.on_restart(self.call.id, f"attempt {record.number} failed "
                                            f"({record.error_type or record.status}) after "
                                            f"{self.emitted} characters")
        self.emitted = 0

    def flush_pending(self, error: str | None = None, body: str | None = None) -> None:
        if self.pending is not None:
            record, cost, tflops = self.pending
            self.pending = None
            self.q.write_call(self.call, attempt=record.number, status=record.status,
                              record=record, cost=cost, tflops=tflops, error=error,
                              error_body=body)

    def close_pending(self, error: ProviderError) -> None:
        """The call ended with ``error``: put it on the last attempt's line, or, when no
        attempt was left unwritten (none started, or a retry was refused), on a line of
        its own for the attempt that never started."""
        body = error.body if isinstance(error, MalformedResponse) else None
        if self.pending is not None:
            self.flush_pending(str(error), body)
        else:
            self.q.write_call(self.call, attempt=self.outcome.attempts + 1, status="skipped",
                              error=str(error))

    def reserve_retry(self) -> None:
        why = self.q.ledger.reserve(self.worst_usd, self.worst_tflops)
        if why is not None:
            raise BudgetStop(f"retry {self.outcome.attempts + 1} not made: {why}",
                             provider=self.call.provider, model=self.model.model_id)
        self.held_usd, self.held_tflops = self.worst_usd, self.worst_tflops

    def release(self) -> None:
        if self.held_usd or self.held_tflops:
            self.q.ledger.settle(self.held_usd, self.held_tflops, 0.0, 0.0)
            self.held_usd = self.held_tflops = 0.0

    def cancelled(self, reason: str) -> CallOutcome:
        outcome = self.outcome
        if outcome.status == "ok":  # finished just as the cancel came
            return outcome
        outcome.status = "cancelled"
        outcome.error = f"{self.call.id}: cancelled: {reason}"
        if self.call.id in self.q.outcomes:
            self.flush_pending(f"cancelled: {reason}")
        else:  # cancelled before it started
            self.q.outcomes[self.call.id] = outcome
            self.q.write_call(self.call, attempt=0, status="cancelled",
                              error=f"cancelled: {reason}")
        self.release()
        return outcome
