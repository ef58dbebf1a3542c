"""Fitting a query's plan before its first call, with its real prompt.

The executor calls :func:`start` once per query, before anything is sent: it fits the plan
(:func:`fit_query`) to the query's *room* (:class:`Room`: its budget, ``max_usd`` lowered to
what is left of the run's ``--max-usd-total`` when that is less, the deadline as
``max_latency``), applies the choice to the query, and has the run admit the fitted plan's
worst case (at most the room); when the run's rest bounds the query, that rest becomes the
query ledger's limit, so the aggregator's reserve is kept against it. Token counts are the
true upper bound the budget's holds use (:func:`moac.ir.prompts.messages_max_tokens`: a
token a UTF-8 byte), so what is decided here is what the holds will find. A fit is cached
per prompt bound and room.

Contract of :func:`fit_query`, in order:

1. **Context.** A call whose input cannot fit its model's declared context even with every
   reference cut (the conversation and its system prompt, plus the shortest answer the run
   time fit would ask for: :func:`~moac.run.fitting.floor_tokens`) is dropped, with the
   reason. If neither the aggregator nor its fallback fits, the query fails.
2. **The smallest plan.** The cheaper of the aggregator and its fallback answering alone
   (exactly what the executor keeps unheld for the final stage: its ``final_reserve``) must
   fit the room; else the query fails, saying what that would cost.
3. ``on_over_budget = shrink`` (the default): the plan, less what the contexts dropped, is
   estimated in the budget's mode with the prompt at its bound (:func:`planner.estimate`);
   over any bound of the room (dollars, TFLOPs, the deadline), :func:`planner.prune` chooses
   the sub-plan of highest predicted quality that fits (proposers, whole layers, or the
   fallback in place of the aggregator), and the planner's drop lines say what each change
   gave up. When not even the planner's smallest plan fits its estimate (but step 2 passed:
   its holds will), the smallest plan runs.
   ``on_over_budget = fail``: the plan stays exact. Its worst case
   (:func:`worst_case`: every call writing its ``max_tokens``,
   every prompt and answer at its byte bound) must fit the room, and no call may be dropped
   for its context; else the query fails, naming the cost. A plan whose worst case fits never
   needs the run time fit, so nothing is shrunk once it starts.

A failure here is always before any call ("nothing was sent").
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from moac.constants import (
    FIT_SEARCH_TIME_LIMIT_S, MAX_ANSWER_BYTES_PER_TOKEN, REASONING_REFERENCE,
)
from moac.ir.prompts import input_max_tokens, messages_max_tokens
from moac.ir.spec import BudgetSpec
from moac.run.fitting import Cost, floor_tokens
from moac.run.ledger import BudgetRefused
from moac.text import dollars

if TYPE_CHECKING:
    from moac.ir import Plan

# ``x`` below is the query's moac.run.executor.Executor, ``query`` its _Query (not
# imported: that module imports this one).
Executor = Any
Query = Any

_FITS_KEPT = 1024  # (prompt bound, room) pairs whose fit is remembered


@dataclass
class StartFit:
    """What :func:`fit_query` decided for one query."""
    dropped: dict[str, str] = field(default_factory=dict)  # node -> why it is not run
    notes: list[str] = field(default_factory=list)          # for QueryResult.fit
    summary: dict[str, Any] | None = None  # QueryResult.fitted (None: the declared plan)
    plan: "Plan | None" = None             # the fitted plan, when it is not the declared one
    failure: str | None = None             # the query fails before any call
    by_run: bool = False                   # ...because of what is left of the run's total


@dataclass(frozen=True)
class Room:
    """The bounds a query is fit to: its budget, with ``max_usd`` lowered to what is left of
    the run's total when that is less (``usd_label`` names whichever binds)."""
    budget: BudgetSpec
    usd_label: str
    by_run: bool = False

    @classmethod
    def of(cls, budget: BudgetSpec, run_left: float | None, deadline_s: float) -> "Room":
        budget = budget.model_copy(update={"max_latency_s": deadline_s})
        own = budget.max_usd
        if run_left is not None and (own is None or run_left < own):
            run_left = max(run_left, 0.0)
            return cls(budget.model_copy(update={"max_usd": run_left}),
                       f"what is left of the run's max_usd_total ({dollars(run_left)})", True)
        return cls(budget, f"max_usd {dollars(own)}" if own is not None else "max_usd")


def start(query: Query, admission: str = "fail") -> str | None:
    """Fit ``query``'s plan to it before its first call (:func:`fit_query`) and have the run
    admit it (``admission`` as in :meth:`moac.run.executor.Executor.run`): why it cannot
    start (the caller finishes it with that failure), else None. Writes nothing."""
    x, run = query.x, query.x.run_ledger
    left = run.headroom_usd() if run is not None and admission != "raise" else None
    room = Room.of(x.budget, left, query.limit_s)
    fit = fit_query(x, query.history, room)
    if fit.failure is not None:
        if not fit.by_run:
            return fit.failure
        if admission == "shrink":
            raise BudgetRefused(fit.failure)
        query.causes.append(f"not started: {fit.failure}")
        return "the run's budget is spent"
    query.dropped = dict(fit.dropped)
    query.fit.extend(fit.notes)
    query.fitted = dict(fit.summary) if fit.summary is not None else None
    query.fit_plan = fit.plan
    query.final_reserve = x.final_reserve(query.history, query.dropped)
    if room.by_run:
        # What the run has left is this query's limit: the aggregator's reserve is kept
        # against it, as against max_usd.
        query.ledger.max_usd = room.budget.max_usd
        query.ledger.label = "share of the run's max_usd_total"
    if run is not None:
        worst = x.worst_case_usd(query.history, query.dropped)
        cap = room.budget.max_usd
        why = query.ledger.admit(worst if cap is None else min(worst, cap))
        if why is not None:
            if admission != "fail":
                raise BudgetRefused(why)
            query.causes.append(f"not started: {why}")
            return "the run's budget is spent"
    return None


def worst_case(x: Executor, history, dropped=()) -> Cost:
    """A query's worst case (:meth:`~moac.run.executor.Executor.worst_case_usd`), dollars and
    TFLOPs, without the calls in ``dropped``: a stage reads the answers of the latest stage
    before it that runs (as the executor does when a whole layer is dropped)."""
    prompt = messages_max_tokens(history)
    answered: list[int] = []
    usd = tflops = 0.0
    for layer in x.stages:
        written = []
        for node_id in layer.nodes:
            if node_id in dropped:
                continue
            node = x.nodes[node_id]
            call = node.call
            # Read with its thinking, an answer brings the tags around it too.
            tags = len(REASONING_REFERENCE.encode()) if call.references == "with_reasoning" \
                else 0
            reads = [bound + tags for bound in answered] if call.prompt is not None else []
            reading = input_max_tokens(prompt, system=call.system,
                                       template=call.prompt if reads else None, answers=reads)
            # An answer of max_tokens is read as up to a token a byte of it (its thinking
            # and its answer share that limit).
            written.append(call.sampling.max_tokens * MAX_ANSWER_BYTES_PER_TOKEN)
            usd += node.model.usd(reading, call.sampling.max_tokens)
            tflops += node.model.tflops(reading + call.sampling.max_tokens)
        if written:
            answered = written
    return Cost(usd, tflops)


def fit_query(x: Executor, history: list[dict], room: Room) -> StartFit:
    """Fit ``x``'s plan to ``room`` for this conversation (see the module docstring)."""
    prompt_max = messages_max_tokens(history)
    key = (prompt_max, room)
    cache = x.start_fits
    if key not in cache:
        if len(cache) >= _FITS_KEPT:
            cache.clear()
        cache[key] = _fit(x, history, prompt_max, room)
    return cache[key]


def context_misfits(x: Executor, prompt_max: int) -> dict[str, str]:
    """The calls whose input cannot fit their model's context whatever is cut."""
    out = {}
    for node_id, node in x.nodes.items():
        reading = input_max_tokens(prompt_max, system=node.call.system)
        floor = floor_tokens(node.model, node.call.sampling.max_tokens)
        limit = node.model.context_tokens
        if reading + floor > limit:
            out[node_id] = (f"context: its input of up to {reading:,} tokens (a token a byte) "
                            f"and its shortest answer of {floor:,} exceed the {limit:,}-token "
                            f"context of {node.model.name}")
    return out


def _fit(x: Executor, history: list[dict], prompt_max: int, room: Room) -> StartFit:
    budget = room.budget
    fit = StartFit(dropped=context_misfits(x, prompt_max))
    final = x.stages[-1].nodes
    if all(n in fit.dropped for n in final):
        fit.failure = ("context: " + "; ".join(f"{n}: {fit.dropped[n].removeprefix('context: ')}"
                                               for n in final) + "; nothing was sent")
        return fit
    reserve = x.final_reserve(history, dropped=fit.dropped)
    over = _over(reserve.usd, reserve.tflops, budget, room.usd_label)
    if over:
        fit.by_run = room.by_run and not _over(reserve.usd, reserve.tflops, x.budget,
                                               "max_usd")
        fit.failure = ("budget: not even the smallest plan fits (the aggregator answering "
                       "alone, its prompt counted a token a byte, its typical answer) costs "
                       + " and ".join(over) + "; nothing was sent")
        return fit
    if budget.on_over_budget == "fail":
        return _exact(x, history, fit, room)
    try:
        _shrink(x, prompt_max, fit, room)
    except ImportError:  # the planner is optional at run time: the run time fit alone
        pass
    except ValueError as error:  # a plan the planner cannot search (too many agents)
        fit.notes = [f"not fit at query start: {error}"]
    return fit


def _over(usd: float, tflops: float, budget: BudgetSpec, usd_label: str) -> list[str]:
    over = []
    if budget.max_usd is not None and usd > budget.max_usd * (1 + 1e-9):
        over.append(f"up to {dollars(usd)}, over {usd_label}")
    if budget.max_tflops is not None and tflops > budget.max_tflops * (1 + 1e-9):
        over.append(f"up to {tflops:,.1f} TFLOPs, over max_tflops {budget.max_tflops:,.1f}")
    return over


def _exact(x: Executor, history: list[dict], fit: StartFit, room: Room) -> StartFit:
    """``on_over_budget = fail``: the declared plan, whole, or a failure naming its cost."""
    if fit.dropped:
        fit.failure = ("context: on_over_budget = fail keeps the plan exact, and "
                       + "; ".join(f"{n} cannot run: {why.removeprefix('context: ')}"
                                   for n, why in fit.dropped.items()) + "; nothing was sent")
        fit.dropped = {}
        return fit
    worst = x.worst_case(history)
    over = _over(worst.usd, worst.tflops, room.budget, room.usd_label)
    if over:
        fit.by_run = room.by_run and not _over(worst.usd, worst.tflops, x.budget, "max_usd")
        fit.failure = ("budget: the declared plan's worst case (every call writing its "
                       "max_tokens, every prompt and answer a token a byte) costs "
                       + " and ".join(over) + "; on_over_budget = fail keeps the plan exact: "
                       "nothing was sent")
    return fit


def _shrink(x: Executor, prompt_max: int, fit: StartFit, room: Room) -> None:
    """``on_over_budget = shrink``: the planner's sub-plan for this prompt and room."""
    from planner import NothingFits, estimate, prune, violations
    from planner.subplan import build, describe, full_choice

    plan, budget = x.plan, room.budget
    base = _without(plan, fit.dropped)
    reduced = build(plan, base) if base != full_choice(plan) else plan
    search = None
    over = violations(estimate(reduced, prompt_max, budget.mode), budget)
    if room.by_run and budget.max_usd is not None:
        over = [o.replace(f"max_usd ${budget.max_usd:.4f}", room.usd_label) for o in over]
    why = f"{budget.mode} {'; '.join(over)}" if over else "contexts"
    if not over:
        chosen, gave_up = full_choice(reduced), []
    else:
        try:
            pruned = prune(reduced, budget, prompt_tokens=prompt_max,
                           time_limit=FIT_SEARCH_TIME_LIMIT_S)
        except NothingFits as error:
            chosen = _smallest(reduced, prompt_max, budget)
            gave_up = [f"{error}: the smallest plan runs, its calls' holds and the deadline "
                       "decide"]
        else:
            notes = pruned.annotations["planner"]
            chosen = _choice(notes["choice"])
            gave_up = [d["text"] for d in notes["drops"]] + [
                n for n in notes["notes"] if n.startswith("lowered min_ok")]
            search = notes["search"]["method"]
    kept = _kept(plan, base, chosen)
    for node_id in plan.graph.nodes:
        if node_id not in kept and node_id not in fit.dropped:
            fit.dropped[node_id] = f"fit: dropped at query start ({why})"
    if not fit.dropped:
        return
    fitted = build(reduced, chosen)
    after = estimate(fitted, prompt_max, budget.mode)
    declared = _agents(plan, set())
    running = _agents(plan, set(fit.dropped))
    context = [f"{n}: {why}" for n, why in fit.dropped.items() if why.startswith("context:")]
    shape = describe(reduced, chosen)
    fit.notes = [f"fit at query start ({why}, the prompt at its bound of {prompt_max:,} "
                 f"tokens): {shape}, {running} of {declared} agents, {dollars(after.usd)} "
                 f"{budget.mode}"] + context + gave_up
    fit.plan = fitted
    fit.summary = {"plan": shape, "agents": running, "declared_agents": declared,
                   "dropped": sorted(fit.dropped), "gave_up": context + gave_up,
                   "room_usd": budget.max_usd, "room_by": room.usd_label, "over": over,
                   "estimate_usd": round(after.usd, 6), "mode": budget.mode,
                   "prompt_max_tokens": prompt_max, "search": search}


def _without(plan: "Plan", dropped: dict[str, str]):
    """The choice keeping every call the contexts did not drop."""
    from planner.subplan import Choice
    keep = tuple(tuple(i for i, n in enumerate(layer.nodes) if n not in dropped)
                 for layer in plan.layers[:-1])
    final = plan.layers[-1].nodes
    use_fallback = final[0] in dropped
    drop_fallback = len(final) > 1 and final[1] in dropped
    return Choice(keep, use_fallback, drop_fallback)


def _kept(plan: "Plan", base, chosen) -> set[str]:
    """The declared plan's nodes that ``chosen`` (a choice on the plan ``base`` built) keeps."""
    kept: set[str] = set()
    layers = [(i, positions) for i, positions in enumerate(base.keep) if positions]
    for (i, positions), sub in zip(layers, chosen.keep):
        kept.update(plan.layers[i].nodes[positions[j]] for j in sub)
    final = plan.layers[-1].nodes
    aggregator, fallback = final[0], (final[1] if len(final) > 1 else None)
    if base.use_fallback:
        kept.add(fallback)
    elif chosen.use_fallback:
        kept.add(fallback)
    else:
        kept.add(aggregator)
        if fallback is not None and not base.drop_fallback:
            kept.add(fallback)
    return kept


def _smallest(plan: "Plan", prompt_max: int, budget: BudgetSpec):
    """The cheaper of the aggregator and its fallback answering alone."""
    from planner import estimate
    from planner.subplan import Choice, build, final_calls, intermediate
    alone = Choice(tuple(() for _ in intermediate(plan)))
    options = [alone] + ([Choice(alone.keep, True)] if final_calls(plan)[1] else [])
    return min(options, key=lambda c: (estimate(build(plan, c), prompt_max, budget.mode).usd,
                                       c.use_fallback))


def _choice(stored: dict):
    from planner.subplan import Choice
    return Choice(tuple(tuple(kept) for kept in stored["keep"]), stored["use_fallback"])


def _agents(plan: "Plan", dropped: set[str]) -> int:
    """The agents a plan runs: every call but a fallback still behind its aggregator."""
    final = plan.layers[-1].nodes
    count = sum(1 for layer in plan.layers[:-1] for n in layer.nodes if n not in dropped)
    return count + (1 if any(n not in dropped for n in final) else 0)
