"""One agent call of a query: its budget hold, its attempts, their trace lines, its outcome.

:class:`AgentCall` is the executor's worker for a single node (see :mod:`moac.run.executor` for the
contract it keeps); :func:`retry_sleep` is the backoff sleep that lets a retry be budgeted.
"""

from __future__ import annotations

import asyncio
import contextvars
from dataclasses import dataclass, replace
from typing import Any, Callable, Protocol

from moac.constants import REASONING_REFERENCE
from moac.ir.plan import CallNode
from moac.ir.prompts import (
    CUT_BY_LENGTH, SHORTENED, render_template, shorten_evenly, text_max_tokens,
)
from moac.ir.spec import ModelSpec
from moac.providers.errors import ContextLengthExceeded, MalformedResponse, ProviderError
from moac.providers.openai import Attempt, ChatRequest
from moac.run.fitting import (
    Cost, Room, context_refused, floor_tokens, largest_answer, largest_input,
)
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
    query_id: str
    history: list[dict]
    deadline: float
    limit_s: float
    start: float                         # on the executor's clock
    expired: bool
    ledger: BudgetLedger
    outcomes: dict[str, CallOutcome]
    clamped: dict[str, int]
    causes: list[str]                    # errors the query reports beside its calls' own
    answered: list[str]                  # the nodes whose answers the next stage reads
    dropped: dict[str, str]              # calls the start fit left out of this query
    final_reserve: Cost                  # kept unheld for the final stage's smallest answer
    on_delta: Callable[[str], None] | None
    on_restart: Callable[[str, str], None] | None
    on_reasoning: Callable[[str], None] | None

    def skip(self, node: str, reason: str, *, cause: bool = True,
             left_out: bool = False) -> CallOutcome: ...

    def note(self, text: str) -> None: ...

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
    """One agent call of a query: its fitting, reservation, attempts and outcome."""

    __slots__ = ("q", "node", "call", "model", "outcome", "held_usd", "held_tflops",
                 "worst_usd", "worst_tflops", "keep", "pending", "emitted", "blank", "token")

    def __init__(self, query: QueryState, node: Node):
        self.q = query
        self.node = node
        self.call = node.call
        self.model = node.model
        self.outcome = CallOutcome(node.call.id, "failed")
        self.held_usd = self.held_tflops = 0.0
        self.worst_usd = self.worst_tflops = 0.0
        # What must stay unheld when this call holds its worst case: an earlier stage's
        # call keeps the aggregator's smallest answer affordable.
        self.keep = Cost(0.0, 0.0) if node.final else query.final_reserve
        self.pending: tuple[Attempt, float, float] | None = None
        self.emitted = 0  # characters streamed by the current attempt
        self.blank = ""  # its whitespace so far, held back: it may be an empty answer yet
        self.token = None

    # --- what it sends ---------------------------------------------------------------------

    def references(self) -> list[tuple[str, str | None]]:
        """The answers this call aggregates, with their notes: the latest stage that
        answered (the one before, unless the budget left that one out whole), in
        declaration order, each with its thinking only if the call's ``references`` says
        so; empty for a call without a template."""
        if self.call.prompt is None:
            return []
        outcomes = self.q.outcomes
        return [(reference_text(outcomes[n], self.call.references),
                 CUT_BY_LENGTH if outcomes[n].finish_reason == "length" else None)
                for n in self.q.answered]

    def request(self, references: list[tuple[str, str | None]],
                max_tokens: int | None = None) -> ChatRequest:
        """The request for these references: the system prompt (with the template, when
        there is something to aggregate), then the conversation."""
        call = self.call
        system = [call.system] if call.system else []
        if call.prompt is not None and references:
            system.append(render_template(call.prompt, [text for text, _ in references],
                                          [note for _, note in references]))
        head = [{"role": "system", "content": "\n\n".join(system)}] if system else []
        return ChatRequest(model=self.model.model_id, messages=head + self.q.history,
                           sampling=call.sampling, max_tokens=max_tokens, stream=True,
                           occurrence=self.node.occurrence, scope=self.q.query_id,
                           # Later stages, then older queries, go first when the key's
                           # pacer holds calls back: answers come out steadily.
                           priority=(-call.layer_index, self.q.start),
                           **api_fields(self.model, call.sampling))

    def shortened(self, references, allowance: int, max_tokens: int | None, *,
                  keep_one: bool = False):
        """The request with its references cut evenly to fit ``allowance`` tokens of prompt
        in all; when not even their notes fit, the first ones only, down to one
        (``keep_one``) or none (the aggregator then answers the conversation alone). None
        when nothing fits."""
        for count in range(len(references), 1 if keep_one and references else -1, -1):
            kept = references[:count]
            request = self.request(kept, max_tokens)
            rest = request.max_prompt_tokens() - sum(text_max_tokens(t) for t, _ in kept)
            if allowance < rest:
                continue
            cut = shorten_evenly([text for text, _ in kept], allowance - rest)
            notes = [SHORTENED if was_cut else note
                     for (_, note), (_, was_cut) in zip(kept, cut)]
            request = self.request(list(zip([text for text, _ in cut], notes)), max_tokens)
            if request.max_prompt_tokens() <= allowance:
                if count < len(references):
                    self.q.note(f"{self.call.id}: read {count} of {len(references)} answers "
                                "(no room for the rest)")
                return request
        return None

    # --- fitting it to its context and its budget -----------------------------------------

    def fit_context(self, references) -> tuple[ChatRequest | None, str | None]:
        """The request that fits the model's context window (input at its upper bound plus
        the answer): references shortened evenly first, then a shorter answer (down to
        the model's typical one); else ``(None, why)``."""
        model, limit = self.model, self.model.context_tokens
        request = self.request(references)
        wanted = request.answer_limit
        reading = request.max_prompt_tokens()
        if reading + wanted <= limit:
            return request, None
        shorter = self.shortened(references, limit - wanted, None)
        if shorter is not None:
            self.q.note(f"{self.call.id}: its references were shortened to fit the "
                        f"{limit:,}-token context of {model.name}")
            return shorter, None
        floor = floor_tokens(model, wanted)
        bare = self.shortened(references, limit - floor, None) or self.request(references)
        answer = min(wanted, limit - bare.max_prompt_tokens())
        if answer >= floor:
            self.q.clamped[self.call.id] = answer
            self.q.note(f"{self.call.id}: asked for at most {answer:,} tokens (not "
                        f"{wanted:,}) to fit the {limit:,}-token context of {model.name}")
            return replace(bare, max_tokens=answer), None
        return None, (f"context: its input of up to {reading:,} tokens (a token a byte) and "
                      f"{wanted:,} to answer exceed the {limit:,}-token context of "
                      f"{model.name}")

    def try_hold(self, request: ChatRequest) -> str | None:
        cost = Cost.of(self.model, request.max_prompt_tokens(), request.answer_limit)
        why = self.q.ledger.reserve(cost.usd, cost.tflops, keep_usd=self.keep.usd,
                                    keep_tflops=self.keep.tflops)
        if why is None:
            self.worst_usd, self.worst_tflops = cost.usd, cost.tflops
            self.held_usd, self.held_tflops = cost.usd, cost.tflops
        return why

    def room(self) -> Room:
        ledger = self.q.ledger
        return Room(ledger.headroom_usd(self.keep.usd), ledger.headroom_tflops(self.keep.tflops))

    async def fit_budget(self, request: ChatRequest, references
                         ) -> tuple[ChatRequest | None, str | None]:
        """Hold the request's worst case (see the executor's contract): as it is; after
        the holds of calls in flight are settled, when only they are in the way; with a
        shorter answer (down to the model's typical one); for the final stage, with its
        references shortened evenly. Else ``(None, why)``."""
        q, model = self.q, self.model
        why = self.try_hold(request)
        cost = Cost.of(model, request.max_prompt_tokens(), request.answer_limit)
        while why is not None and q.ledger.blocked_by_holds(
                cost.usd, cost.tflops, keep_usd=self.keep.usd, keep_tflops=self.keep.tflops):
            # Refused only for what this query's calls in flight hold: each gives back all
            # but its real cost when it ends, so wait for that rather than skip or clamp.
            if not await q.ledger.wait_for_release(q.deadline - q.x.clock()) or q.expired:
                return None, (f"deadline: the query's {q.limit_s:g}s ran out while it "
                              f"waited for budget held by calls in flight ({why})")
            why = self.try_hold(request)
        if why is None:
            return request, None
        wanted = request.answer_limit
        floor = floor_tokens(model, wanted)
        answer = min(wanted - 1, largest_answer(model, request.max_prompt_tokens(),
                                                self.room()))
        if answer >= floor:
            shorter = replace(request, max_tokens=answer)
            if self.try_hold(shorter) is None:
                q.clamped[self.call.id] = answer
                return shorter, None
        if self.node.final and references:
            # Aggregate what has arrived, cut evenly to what the budget has room for, with
            # room kept for the model's typical answer.
            allowance = largest_input(model, floor, self.room())
            # An aggregator with a fallback behind it reads at least one answer, or hands
            # over: the cheaper fallback may afford them all.
            shorter = self.shortened(references, allowance, floor if floor < wanted else None,
                                     keep_one=self.call.role == "aggregate"
                                     and any(n not in q.dropped
                                             for n in q.x.stages[-1].nodes[1:]))
            if shorter is not None and self.try_hold(shorter) is None:
                if floor < wanted:
                    q.clamped[self.call.id] = floor
                q.note(f"{self.call.id}: its references were shortened to fit the budget")
                return shorter, None
        return None, why

    # --- running it ------------------------------------------------------------------------

    async def run(self) -> CallOutcome:
        q, call = self.q, self.call
        if q.expired or q.x.clock() >= q.deadline:
            return q.skip(call.id, f"deadline: the query's {q.limit_s:g}s ran out before "
                                   "it could start")
        references = self.references()
        request, why = self.fit_context(references)
        if request is not None:
            request, why = await self.fit_budget(request, references)
        if request is None:
            left_out = not why.startswith("deadline")
            return q.skip(call.id, why, left_out=left_out)
        outcome = self.outcome
        q.outcomes[call.id] = outcome
        outcome.started = q.x.clock()
        on_delta = self.delta if self.node.final and q.on_delta is not None else None
        # Only asked for: a client that knows no reasoning need take no such callback.
        more = {"on_reasoning": self.reasoning_delta} \
            if self.node.final and q.on_reasoning is not None else {}
        self.token = _CURRENT_CALL.set(self)
        try:
            result = await q.x.clients[call.provider].chat(
                request, deadline=q.deadline, on_delta=on_delta, on_attempt=self.attempt,
                **more)
        except ProviderError as error:
            text = str(error)
            if isinstance(error, ContextLengthExceeded):  # never retried: named
                text = context_refused(self.model, request.max_prompt_tokens(),
                                       request.answer_limit, text)
            outcome.error = f"{call.id}: {text}"
            self.close_pending(error, text)
        else:
            outcome.status, outcome.text = "ok", result.text
            outcome.finish_reason = result.finish_reason
            outcome.reasoning = result.reasoning
            outcome.reasoning_tokens = result.usage.reasoning_tokens
            if result.usage.reported:  # the answer's own length: its thinking is not read
                outcome.answer_tokens = result.usage.completion_tokens - \
                    min(result.usage.reasoning_tokens, result.usage.completion_tokens)
        finally:
            _CURRENT_CALL.reset(self.token)
            outcome.ended = q.x.clock()
            self.release()
        return outcome

    def delta(self, text: str) -> None:
        """Stream the final stage's text; whitespace before its first visible character
        is held back, so that an empty answer streams nothing (no restart to undo)."""
        if not self.emitted and not text.strip():
            self.blank += text
            return
        text, self.blank = self.blank + text, ""
        self.emitted += len(text)
        self.q.on_delta(text)

    def reasoning_delta(self, text: str) -> None:
        self.emitted += len(text)
        self.q.on_reasoning(text)

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
        overrun = None
        if record.overrun and not record.cached:
            # Booked as reported (the ledger then stops what it must), and said: the hold
            # was an upper bound for an honest provider, and this one went past it.
            overrun = (f"the provider reported usage past the request's bounds: "
                       f"{record.overrun}; ${nominal:.6f} booked as reported")
            self.q.causes.append(f"{self.call.id}: attempt {record.number}: {overrun}")
        if record.status == "ok":
            self.q.write_call(self.call, attempt=record.number, status="ok", record=record,
                              cost=cost, tflops=tflops, cached=record.cached, error=overrun)
            return
        self.pending = (record, cost, tflops)
        if self.emitted and record.status == "failed" and self.q.on_restart is not None:
            self.q.on_restart(self.call.id, f"attempt {record.number} failed "
                                            f"({record.error_type or record.status}) after "
                                            f"{self.emitted} characters")
        self.emitted, self.blank = 0, ""

    def flush_pending(self, error: str | None = None, body: str | None = None) -> None:
        if self.pending is not None:
            record, cost, tflops = self.pending
            self.pending = None
            self.q.write_call(self.call, attempt=record.number, status=record.status,
                              record=record, cost=cost, tflops=tflops, error=error,
                              error_body=body)

    def close_pending(self, error: ProviderError, text: str | None = None) -> None:
        """The call ended with ``error`` (said as ``text``): put it on the last attempt's
        line, or, when no attempt was left unwritten (none started, or a retry was
        refused), on a line of its own for the attempt that never started."""
        body = error.body if isinstance(error, MalformedResponse) else None
        text = str(error) if text is None else text
        if self.pending is not None:
            self.flush_pending(text, body)
        else:
            self.q.write_call(self.call, attempt=self.outcome.attempts + 1, status="skipped",
                              error=text)

    def reserve_retry(self) -> None:
        why = self.q.ledger.reserve(self.worst_usd, self.worst_tflops, keep_usd=self.keep.usd,
                                    keep_tflops=self.keep.tflops)
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


# --- reasoning models --------------------------------------------------------------------------


def api_fields(model: ModelSpec, sampling) -> dict[str, Any]:
    """What a request to ``model`` sends as its API takes it (:class:`ChatRequest`'s
    ``token_param``, ``fixed_temperature``, ``reasoning_effort`` and ``thinks``)."""
    return {"token_param": model.token_param, "fixed_temperature": model.fixed_temperature,
            "reasoning_effort": sampling.reasoning_effort if model.reasoning else None,
            "thinks": model.reasoning or model.thinking_tokens > 0}


def reference_text(outcome: CallOutcome, references: str) -> str:
    """An answer as a later call reads it: alone, or after its thinking
    (``references = with_reasoning``, :data:`~moac.constants.REASONING_REFERENCE`)."""
    answer = outcome.text or ""
    if references != "with_reasoning" or not outcome.reasoning:
        return answer
    return REASONING_REFERENCE.format(reasoning=outcome.reasoning, answer=answer)
