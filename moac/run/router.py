"""Run a route: for each query, choose a candidate pipeline and run it, paying nothing twice.

:class:`RouteExecutor` has the interface of :class:`moac.run.executor.Executor` (``run``,
``worst_case_usd``), so a :class:`moac.run.Runner` given a :class:`moac.ir.RoutePlan` runs
routes exactly as it runs pipelines: batches, resume, streaming, the run's budget.

Contract of :meth:`RouteExecutor.run`, on top of the executor's:

- **Before any call**, the candidates are estimated for the real prompt's length and the
  pre-call policies choose a target (:func:`planner.route.choose_before_calls`: budget, then
  pre-route), within ``max_usd`` or what is left of the run's total when that is less. No
  candidate fits: the query fails at once, no call made, the decision naming each
  candidate's excess. A target without an early exit is then fit to the query as a pipeline
  is (:mod:`moac.run.start_fit`) and admitted as one; with an early exit, the run admits the
  query on the larger worst case of the target and its early exit.
- **Agreement.** When a cheaper candidate shares the target's leading stages, those stages
  run once (as the target's), their answers' agreement is measured
  (:func:`planner.agreement.agreement`) and :func:`planner.route.choose_on_agreement`
  decides; the query then goes on with the chosen plan from its next stage, its aggregator
  reading the answers already paid for. A shared stage below its quorum fails the query as
  it would have failed the target.
- **Budget after the shared stages.** With their answers' real lengths known, the target's
  remaining calls are estimated again (:meth:`~moac.run.executor.Executor.remaining_usd`, the
  budget's mode); when they no longer fit what is left of ``max_usd``, the early exit
  finishes instead (a ``budget`` decision), before the agreement is even weighed.
- **One query, one ledger, one deadline.** The per-query budget (the route's limits) covers
  the shared stages and what follows them, whichever candidate finishes; so does the
  deadline. The hard budget holds with routing on exactly as without.
- **Trace.** Each decision is a ``route`` line written when it is taken; calls are written
  under the pipeline they ran for (the shared stages under the target); the query line
  names the route and, as ``pipeline``, the candidate that ran (the route's own name when
  none did: nothing fitted). A query the run's budget sends back to wait
  (``admission="raise"``) writes its decisions when it is asked again, once.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Mapping

from moac.run.executor import (
    BudgetLedger, BudgetRefused, ChatClient, Executor, Messages, QueryResult, _Query,
    as_history,
)
from moac.ir import RoutePlan
from moac.ir.prompts import messages_tokens
from moac.ir.spec import BudgetSpec
from moac.traces.trace import RouteDecisionRecord, TraceWriter
from planner.agreement import agreement
from planner.quality import QualityModel
from planner.route import (
    Candidate, Decision, PreCallChoice, assess, choose_before_calls, choose_on_agreement,
)

_ASSESSMENTS_KEPT = 4096  # prompt lengths whose estimates are cached


class RouteExecutor:
    """Runs a :class:`~moac.ir.RoutePlan`: one :class:`~moac.run.executor.Executor` per
    candidate, all sharing the clients, trace, run id and run ledger."""

    def __init__(self, route_plan: RoutePlan, clients: Mapping[str, ChatClient], *,
                 trace: TraceWriter | None = None, run_id: str | None = None,
                 run_ledger: BudgetLedger | None = None, estimates: bool = True,
                 quality: QualityModel | None = None, preroute=None,
                 clock: Callable[[], float] = time.monotonic,
                 wall_clock: Callable[[], float] = time.time):
        self.route_plan = route_plan
        self.route = route_plan.route
        self.budget = route_plan.budget
        self.trace = trace
        self.run_ledger = run_ledger
        self.executors: dict[str, Executor] = {}
        for name, plan in route_plan.plans.items():
            self.executors[name] = Executor(
                plan, clients, trace=trace, run_id=run_id, budget=self.budget,
                run_ledger=run_ledger, estimates=estimates, clock=clock, wall_clock=wall_clock)
            run_id = run_id or self.executors[name].run_id
        self.run_id = run_id
        self.quality = quality  # None: each candidate's own (MoaQualityModel.of)
        self.preroute = preroute
        self._assessed: dict[int, list[Candidate]] = {}

    # --- choosing ----------------------------------------------------------------------------

    def assess(self, prompt_tokens: int, budget: BudgetSpec | None = None
               ) -> list[Candidate]:
        """The candidates estimated for a prompt this long (cached per length and budget)."""
        budget = budget or self.budget
        found = self._assessed.get((prompt_tokens, budget))
        if found is None:
            if len(self._assessed) >= _ASSESSMENTS_KEPT:
                self._assessed.clear()
            found = assess(self.route_plan.plans, prompt_tokens, budget, self.quality)
            self._assessed[(prompt_tokens, budget)] = found
        return found

    def choose(self, history: list[dict], run_left: float | None = None) -> PreCallChoice:
        """The pre-call choice for a conversation (its last user turn is the query), within
        what is left of the run's total (``run_left``) when that is less than max_usd."""
        budget = self.budget
        if run_left is not None and (budget.max_usd is None or run_left < budget.max_usd):
            budget = budget.model_copy(update={"max_usd": max(run_left, 0.0)})
        return choose_before_calls(self.route, self.assess(messages_tokens(history), budget),
                                   _last_user_text(history), self.preroute)

    def worst_case_usd(self, history: Messages) -> float:
        """The largest worst case among the candidates (what any of them could cost)."""
        return max(x.worst_case_usd(history) for x in self.executors.values())

    # --- running -----------------------------------------------------------------------------

    async def run(self, prompt: str | Messages, *, query_id: str = "q0",
                  on_delta: Callable[[str], None] | None = None,
                  on_restart: Callable[[str, str], None] | None = None,
                  admission: str = "fail", on_progress=None,
                  on_reasoning: Callable[[str], None] | None = None) -> QueryResult:
        """Choose and answer (see the module docstring); ``admission`` and
        ``on_reasoning`` as in :meth:`moac.run.executor.Executor.run`."""
        history = as_history(prompt)
        run = self.run_ledger
        choice = self.choose(history, run.headroom_usd() if run is not None
                             and admission != "raise" else None)
        first = choice.target or next(iter(self.executors))
        query = _Query(self.executors[first], query_id, history, on_delta, on_restart,
                       on_progress)
        query.on_reasoning = on_reasoning
        query.route = self.route.name
        if choice.target is None:  # nothing fits: no candidate ran, none answered
            if admission == "shrink":
                raise BudgetRefused(choice.decisions[-1].reason)
            query.unrouted = True
            self.record_all(query, choice)
            return query.finish(None, None, failure=choice.decisions[-1].reason)
        if choice.early_exit is None:
            # The target alone runs: it is fit to the query as a pipeline is (its shared
            # stages with an early exit must stay as they are, so that one is not).
            failure = query.fit_at_start(admission)
            self.record_all(query, choice)
            if failure is not None:
                return query.finish(None, None, failure=failure)
            return await query.under_deadline(query.execute)
        if self.run_ledger is not None:
            possible = [choice.target] + ([choice.early_exit] if choice.early_exit else [])
            why = query.ledger.admit(max(self.executors[name].worst_case_usd(history)
                                         for name in possible))
            if why is not None:
                if admission == "raise":  # asked again later: decided (and written) then
                    raise BudgetRefused(why)
                self.record_all(query, choice)
                query.causes.append(f"not started: {why}")
                return query.finish(None, None, failure="the run's budget is spent")
        self.record_all(query, choice)
        return await query.under_deadline(lambda: self._execute(query, choice))

    async def _execute(self, query: _Query, choice: PreCallChoice) -> QueryResult:
        if choice.early_exit is None:
            return await query.execute()
        failure = await query.run_stages(0, choice.shared)
        if failure is not None:
            return query.finish(None, None, failure=failure, path=query.path)
        forced = self.budget_after_shared(query, choice)
        if forced is not None:
            self.record(query, forced)
            query.switch(self.executors[forced.chosen])
            return await query.execute(start=choice.shared)
        answers = query.answers_of(query.x.stages[choice.shared - 1])
        decision = choose_on_agreement(choice, agreement(answers) if len(answers) >= 2
                                       else None)
        self.record(query, decision)
        query.switch(self.executors[decision.chosen])
        return await query.execute(start=choice.shared)

    def budget_after_shared(self, query: _Query, choice: PreCallChoice) -> Decision | None:
        """With the shared answers' real lengths and price known, the target may no longer
        fit ``max_usd``: then the early exit finishes (a "budget" decision), rather than the
        target's calls being stopped by the ledger one by one. None: the target still fits."""
        limit = self.budget.max_usd
        if limit is None:
            return None
        spent = query.ledger.spent_usd
        left = limit - spent
        need = {name: self.executors[name].remaining_usd(query.history, query.outcomes,
                                                         choice.shared, self.budget.mode)
                for name in (choice.target, choice.early_exit)}
        if need[choice.target] <= left:
            return None
        target, early = choice.target, choice.early_exit
        also = "" if need[early] <= left else " (it does not fit either, but costs less)"
        return Decision(
            "budget", early, (target,),
            {"spent_usd": round(spent, 6), "left_usd": round(left, 6),
             "remaining_usd": {k: round(v, 6) for k, v in need.items()}},
            f"after the shared layer, with ${spent:.4f} spent: {target} needs "
            f"${need[target]:.4f} more, over the ${left:.4f} left; {early} needs "
            f"${need[early]:.4f}{also}")

    def record_all(self, query: _Query, choice: PreCallChoice) -> None:
        for decision in choice.decisions:
            self.record(query, decision)

    def record(self, query: _Query, decision: Decision) -> None:
        query.decisions.append(decision.as_dict())
        if self.trace is not None:
            self.trace.write(RouteDecisionRecord(
                run_id=self.run_id, query_id=query.query_id, route=self.route.name,
                step=len(query.decisions), **decision.as_dict()))


def _last_user_text(history: list[dict]) -> str:
    for message in reversed(history):
        if message.get("role") == "user":
            return _text(message.get("content"))
    return ""


def _text(content: Any) -> str:
    """A message's text: a string, or the text parts of a list of content parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(str(part.get("text", "")) for part in content
                         if isinstance(part, dict) and part.get("type") == "text")
    return ""
