"""``moac eval``: run pipelines on a prompt set, judge every answer, measure quality and cost.

Contract of :func:`evaluate`:

- Every pipeline is resolved, and every API key it and the judge need is read, before
  anything runs: a pipeline or route of the file, or
  ``single:MODEL`` (the model alone, answering at temperature 0.7 up to 2,048 tokens). A
  pairwise judge needs a reference answer for every item: the prompt set's, or the answers
  of the judge's ``reference`` pipeline or model (run first, like the others); an item
  without one stops the evaluation before any call.
- Answers go to ``REPORT/answers/NAME.jsonl`` through :meth:`moac.run.Runner.run_batch`, and
  judgments to ``REPORT/judgments/NAME.jsonl`` one line per judged turn as it is judged: an
  interrupted evaluation resumes where it stopped, paying for no answer and no judgment
  twice (a judgment is reused when its answer's SHA-256 is unchanged and its judge call did
  not fail). Every call, answers' and judge's, is traced to ``REPORT/trace.jsonl``, with
  one ``quality`` line per judged turn.
- Per pipeline: pairwise → win rate against the reference with a bootstrap 95% interval and
  the length-controlled win rate (:mod:`moac.evaluation.stats`); single → the mean score
  per category and overall. Dollars, TFLOPs and latency per query are the answers' own
  (judging is reported apart; an answer from a response cache at its recorded price),
  beside the planner's predictions.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from typing import Any, Callable

from moac.evaluation.judging import JudgeSession, Verdict, answer_sha, judge_plan
from moac.evaluation.prompt_sets import PromptSet
from moac.ir import Plan, RoutePlan
from moac.run import BatchProgress, RunError, Runner, read_answers
from moac.run.runner import resolve_keys
from moac.constants import SINGLE_PREFIX
from moac.ir.spec import JudgeSpec, Sampling
from moac.traces.trace import QualityRecord, read_jsonl
from planner.features import query_features

SINGLE_SAMPLING = Sampling(temperature=0.7, max_tokens=2048)


@dataclass
class PipelineRun:
    """One evaluated pipeline: its plan, answers (by item id) and verdicts (by turn)."""
    name: str
    plan: Plan | RoutePlan
    answers: dict[str, dict] = field(default_factory=dict)
    verdicts: list[dict] = field(default_factory=list)  # QualityRecord dicts
    progress: BatchProgress | None = None


def resolve(program, name: str) -> Plan | RoutePlan:
    """A pipeline, a route, or ``single:MODEL``; SelectionError for anything else."""
    from moac.compiler import SelectionError
    if name.startswith(SINGLE_PREFIX):
        model = name[len(SINGLE_PREFIX):]
        if model not in program.models:
            known = ", ".join(program.models) or "none"
            raise SelectionError(f"'{name}': no model named '{model}' (known: {known})")
        return program.single_plan(name, model, SINGLE_SAMPLING)
    return program.runnable(name)


def file_stem(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


@dataclass
class EvalSettings:
    program: Any
    pipelines: list[str]
    prompts: PromptSet
    judge: JudgeSpec
    report_dir: str
    concurrency: int = 8
    environ: Any = None
    cache: Any = None
    cache_mode: str | None = None
    progress: Callable[[str, BatchProgress], None] | None = None
    judging: Callable[[str, int, int], None] | None = None  # (pipeline, judged, to judge)
    run_ledger: Any = None  # one BudgetLedger for every answer and judge call (--max-usd-total)


async def evaluate(settings: EvalSettings) -> tuple[list[PipelineRun], str]:
    """Answer, judge and record (module docstring); the runs and the judge's run id."""
    s = settings
    runs = [PipelineRun(name, resolve(s.program, name)) for name in s.pipelines]
    reference_run = None
    if s.judge.protocol == "pairwise" and s.judge.reference is not None:
        ref = s.judge.reference
        reference_run = PipelineRun(ref, resolve(
            s.program, ref if ref in s.program.pipelines else SINGLE_PREFIX + ref))
    elif s.judge.protocol == "pairwise":
        missing = [i.id for i in s.prompts.items if i.id not in s.prompts.references]
        if missing:
            raise RunError(f"judge '{s.judge.name}' compares answers with a reference, and "
                           f"{len(missing)} item(s) of {s.prompts.name} have none (first: "
                           f"{missing[0]}); give them a 'reference' or set `reference = "
                           "PIPELINE` in the judge")
    # Every API key (and local model) is checked before the first call: one missing must
    # not surface after the pipelines before it were paid for.
    plans = [run.plan for run in runs] + [judge_plan(s.program, s.judge)] + \
        ([reference_run.plan] if reference_run is not None else [])
    if s.cache_mode != "replay":
        resolve_keys(plans, os.environ if s.environ is None else s.environ)
    for sub in ("answers", "judgments"):
        os.makedirs(os.path.join(s.report_dir, sub), exist_ok=True)
    trace = os.path.join(s.report_dir, "trace.jsonl")
    references = dict(s.prompts.references)
    if reference_run is not None:
        # The judge's references are its reference pipeline's answers, and only those: an
        # item it failed to answer is not judged (and says so), never against another text.
        await _answer(s, reference_run, trace, prefix="reference-")
        references = {item_id: _turn_answers(row)
                      for item_id, row in reference_run.answers.items()
                      if row.get("status") == "ok"}
    async with JudgeSession(s.program, s.judge, trace_path=trace, environ=s.environ,
                            cache=s.cache, cache_mode=s.cache_mode,
                            concurrency=s.concurrency, run_ledger=s.run_ledger) as session:
        for run in runs:
            await _answer(s, run, trace)
            await _judge(s, session, run, references)
        return runs, session.run_id


async def _answer(s: EvalSettings, run: PipelineRun, trace: str, prefix: str = "") -> None:
    out = os.path.join(s.report_dir, "answers", prefix + file_stem(run.name) + ".jsonl")
    async with Runner(run.plan, environ=s.environ, trace_path=trace, cache=s.cache,
                      cache_mode=s.cache_mode, run_ledger=s.run_ledger) as runner:
        run.progress = await runner.run_batch(
            s.prompts.items, out, concurrency=s.concurrency,
            progress=(lambda p: s.progress(run.name, p)) if s.progress else None)
    wanted = {item.id for item in s.prompts.items}
    run.answers = {str(r["id"]): r for r in read_answers(out) if str(r["id"]) in wanted}


def _turn_answers(row: dict) -> tuple[str, ...]:
    if "choices" in row:
        return tuple(row["choices"][0]["turns"])
    return (row.get("output") or "",)


async def _judge(s: EvalSettings, session: JudgeSession, run: PipelineRun,
                 references: dict[str, tuple[str, ...]]) -> None:
    """Judge every answered turn not judged before (see the module docstring)."""
    import asyncio
    path = os.path.join(s.report_dir, "judgments", file_stem(run.name) + ".jsonl")
    earlier = {(r.get("query_id"), r.get("turn"), r.get("judge")): r
               for r in (read_jsonl(path) if os.path.exists(path) else [])
               if r.get("error") is None}
    jobs = []
    for item in s.prompts.items:
        row = run.answers.get(item.id)
        if row is None or row.get("status") != "ok":
            continue
        answers = list(_turn_answers(row))
        for turn in range(1, len(answers) + 1):
            sha = answer_sha(answers[turn - 1])
            done = earlier.get((item.id, turn, s.judge.name))
            if done is not None and done.get("answer_sha256") == sha and \
                    done.get("judge_sha256") == _judge_sha(s.judge, references.get(item.id),
                                                           turn):
                run.verdicts.append(done)
                continue
            jobs.append(_judge_turn(s, session, run, item, row, answers, turn, references))
    with open(path, "a", encoding="utf-8") as out:
        for done, finished in enumerate(asyncio.as_completed(jobs), 1):
            record = await finished
            run.verdicts.append(record)
            out.write(json.dumps(record, ensure_ascii=False) + "\n")
            out.flush()
            if s.judging is not None:
                s.judging(run.name, done, len(jobs))
    # In the prompts' order, not the order judge calls ended: the seeded bootstrap then
    # gives the same interval for the same verdicts, run after run.
    order = {item.id: index for index, item in enumerate(s.prompts.items)}
    run.verdicts.sort(key=lambda v: (order.get(v.get("query_id"), len(order)),
                                     v.get("turn", 1)))


async def _judge_turn(s, session: JudgeSession, run: PipelineRun, item, row: dict,
                      answers: list[str], turn: int, references) -> dict:
    reference = references.get(item.id)
    category = s.prompts.categories.get(item.id)
    query_id = item.id if len(answers) == 1 else f"{item.id}#{turn}"
    candidate = answers[turn - 1]
    verdict: Verdict
    ref_text = None
    if s.judge.protocol == "pairwise" and not reference:
        verdict = Verdict(turn, error="no reference answer for this item (the reference "
                                      "pipeline failed on it)")
    elif s.judge.protocol == "pairwise":
        ref_text = reference[min(turn - 1, len(reference) - 1)]
        verdict = await session.pairwise(f"{run.name}/{query_id}", turn, list(item.turns),
                                         answers, list(reference))
    else:
        verdict = await session.single(f"{run.name}/{query_id}", turn, list(item.turns),
                                       answers, reference, category)
    routed = row.get("routed_to")
    record = QualityRecord(
        run_id=session.run_id, answer_run_id=row.get("run_id"), query_id=item.id,
        pipeline=run.name,
        routed_to=(routed[turn - 1] if isinstance(routed, list) else routed),
        judge=s.judge.name, protocol=s.judge.protocol, prompts=s.prompts.name,
        category=category, turn=turn,
        preference=verdict.preference, score=verdict.score,
        verdicts=list(verdict.verdicts), parsed=verdict.parsed,
        candidate_chars=len(candidate),
        reference_chars=len(ref_text) if ref_text is not None else None,
        answer_cost_usd=row.get("cost_usd") if turn == 1 else None,
        judge_cost_usd=verdict.cost_usd, error=verdict.error,
        features=[round(float(v), 6) for v in query_features(item.turns[turn - 1]).vector()])
    session.write(record)
    data = record.model_dump(mode="json")
    data["answer_sha256"] = answer_sha(candidate)
    data["judge_sha256"] = _judge_sha(s.judge, reference, turn)
    if verdict.said is not None:  # what an unparsed verdict said instead (the report quotes it)
        data["judge_said"] = verdict.said
    return data


def _judge_sha(judge: JudgeSpec, reference: tuple[str, ...] | None, turn: int) -> str:
    """What a verdict depends on besides the answer: the judge (model, protocol, sampling,
    reference pipeline) and, for a pairwise judge, the reference text it compared with.
    A judgment is reused only when this is unchanged."""
    text = None
    if judge.protocol == "pairwise" and reference:
        text = reference[min(turn - 1, len(reference) - 1)]
    return answer_sha(json.dumps([judge.model_dump(mode="json", exclude={"path"}), text],
                                 sort_keys=True))
