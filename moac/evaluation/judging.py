"""Judging answers: a judge's calls are ordinary calls (traced, budgeted, retried), its
verdicts parsed strictly (:mod:`moac.evaluation.verdicts`) and recorded as quality traces.

- **pairwise** (AlpacaEval): each answer against the reference answer, judged twice with the
  two answers swapped, which cancels the judge's position bias: the candidate's preference is
  1 when it wins both orders, 0 when it loses both, 0.5 otherwise
  (:func:`~moac.evaluation.verdicts.combine_orders`). A one-turn item is judged with
  :data:`~moac.evaluation.verdicts.ALPACA_PAIRWISE`; a conversation with MT-Bench's
  ``pair-v2`` for its first turn and ``pair-v2-multi-turn`` for later ones, which show both
  conversations (MT-Bench's ``[[C]]`` is a tie).
- **single** (MT-Bench): each turn scored 1 to 10 with MT-Bench's own judge prompts: turn 1
  with ``single-v1`` (``single-math-v1``, showing the reference answer, for maths, reasoning
  and coding questions that have one), later turns with the ``-multi-turn`` variants, which
  show the whole conversation.

A judge call that fails, or a verdict that cannot be parsed, is recorded as such
(``parsed=false``, the error), never guessed, and counts in no rate. For an unparsed verdict
:attr:`Verdict.said` keeps a short excerpt of what the judge wrote instead, for the report.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
from dataclasses import dataclass
from importlib.resources import files
from typing import Any

from moac.evaluation.verdicts import (
    ALPACA_PAIRWISE, JudgePrompt, combine_orders, excerpt, load_judge_prompts, parse_pairwise,
    parse_score,
)
from moac.ir import Plan
from moac.run import Runner
from moac.ir.spec import JudgeSpec, Sampling
from moac.traces.trace import QualityRecord

# MT-Bench shows the reference answer to the judge for these categories (FastChat's
# NEED_REF_CATS).
REFERENCE_CATEGORIES = ("math", "reasoning", "coding")


@functools.lru_cache(maxsize=1)
def mt_bench_prompts() -> dict[str, JudgePrompt]:
    return load_judge_prompts(str(files("moac.data").joinpath("mt_bench_judge_prompts.jsonl")))


def judge_plan(program, judge: JudgeSpec) -> Plan:
    """A one-call plan: the judge's model, at the judge's temperature and max_tokens, under
    the judge's own budget (the file's per-query budget is the pipelines')."""
    return program.single_plan(f"judge:{judge.name}", judge.model, Sampling(
        temperature=judge.temperature, max_tokens=judge.max_tokens), judge.budget)


def answer_sha(text: str | None) -> str:
    return hashlib.sha256((text or "").encode("utf-8")).hexdigest()[:16]


@dataclass
class Verdict:
    """One judged turn, before it becomes a :class:`~moac.traces.trace.QualityRecord`."""
    turn: int
    preference: float | None = None
    score: float | None = None
    verdicts: tuple[str | None, ...] = ()
    parsed: bool = False
    cost_usd: float = 0.0
    error: str | None = None
    said: str | None = None  # unparsed: an excerpt of what the judge wrote instead


class JudgeSession:
    """A :class:`~moac.run.Runner` for the judge's calls; ``async with`` it."""

    def __init__(self, program, judge: JudgeSpec, *, trace_path: str | None,
                 environ=None, cache=None, cache_mode: str | None = None,
                 concurrency: int = 8, run_ledger=None):
        self.judge = judge
        self.runner = Runner(judge_plan(program, judge), environ=environ,
                             trace_path=trace_path, cache=cache, cache_mode=cache_mode,
                             run_ledger=run_ledger)
        self.semaphore = asyncio.Semaphore(max(concurrency, 1))

    async def __aenter__(self) -> "JudgeSession":
        await self.runner.__aenter__()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.runner.__aexit__(*exc)

    @property
    def run_id(self) -> str:
        return self.runner.run_id

    def write(self, record: QualityRecord) -> None:
        if self.runner.trace is not None:
            self.runner.trace.write(record)

    async def ask(self, prompt: JudgePrompt, fields: dict[str, str], query_id: str
                  ) -> tuple[str | None, float, str | None]:
        """One judge call: (its text or None, its cost, its error)."""
        messages = [{"role": "system", "content": prompt.system_prompt},
                    {"role": "user", "content": prompt.prompt_template.format(**fields)}]
        async with self.semaphore:
            result = await self.runner.run(messages, query_id=query_id)
        error = None if result.ok else "; ".join(result.errors) or "the judge call failed"
        return result.answer, result.cost_usd, error

    async def pairwise(self, query_id: str, turn: int, questions: list[str],
                       candidate: list[str], reference: list[str]) -> Verdict:
        """Turn ``turn`` of ``candidate`` (its answers, turn by turn) against the same turn
        of ``reference``, in both orders (module docstring)."""
        prompt, fields = _pair_prompt(turn, questions, candidate, reference)
        swapped = {_swap(k): v for k, v in fields.items()}
        (first, cost_1, error_1), (second, cost_2, error_2) = await asyncio.gather(
            self.ask(prompt, fields, f"{query_id}/ab"),
            self.ask(prompt, swapped, f"{query_id}/ba"))
        verdicts = (parse_pairwise(first) if first is not None else None,
                    parse_pairwise(second) if second is not None else None)
        preference = combine_orders(*verdicts)
        said = next((excerpt(text) for text, verdict in zip((first, second), verdicts)
                     if text is not None and verdict is None), None)
        return Verdict(turn, preference=preference, verdicts=verdicts,
                       parsed=preference is not None, cost_usd=cost_1 + cost_2,
                       error=error_1 or error_2, said=said)

    async def single(self, query_id: str, turn: int, questions: list[str],
                     answers: list[str], reference: tuple[str, ...] | None,
                     category: str | None) -> Verdict:
        with_reference = bool(reference) and category in REFERENCE_CATEGORIES
        name = "single-math-v1" if with_reference else "single-v1"
        fields: dict[str, Any] = {}
        if turn == 1:
            fields.update(question=questions[0], answer=answers[0])
            if with_reference:
                fields["ref_answer_1"] = reference[0]
        else:
            name += "-multi-turn"
            fields.update(question_1=questions[0], answer_1=answers[0],
                          question_2=questions[turn - 1], answer_2=answers[turn - 1])
            if with_reference:
                fields.update(ref_answer_1=reference[0],
                              ref_answer_2=reference[min(turn - 1, len(reference) - 1)])
        text, cost, error = await self.ask(mt_bench_prompts()[name], fields,
                                           f"{query_id}/score")
        score = parse_score(text) if text is not None else None
        return Verdict(turn, score=score, parsed=score is not None, cost_usd=cost,
                       error=error, said=excerpt(text) if text is not None and score is None
                       else None)


def _pair_prompt(turn: int, questions: list[str], candidate: list[str],
                 reference: list[str]) -> tuple[JudgePrompt, dict[str, str]]:
    """The prompt and its fields with the candidate as A. A one-turn item: moac's
    AlpacaEval-style prompt; a conversation: MT-Bench's ``pair-v2`` for its first turn and
    ``pair-v2-multi-turn`` (the turn before and this one, both conversations) after."""
    ref = reference[min(turn - 1, len(reference) - 1)]
    if len(questions) == 1:
        return ALPACA_PAIRWISE, {"instruction": questions[0], "output_a": candidate[0],
                                 "output_b": ref}
    if turn == 1:
        return mt_bench_prompts()["pair-v2"], {"question": questions[0],
                                               "answer_a": candidate[0], "answer_b": ref}
    before = reference[min(turn - 2, len(reference) - 1)]
    return mt_bench_prompts()["pair-v2-multi-turn"], {
        "question_1": questions[turn - 2], "question_2": questions[turn - 1],
        "answer_a_1": candidate[turn - 2], "answer_a_2": candidate[turn - 1],
        "answer_b_1": before, "answer_b_2": ref}


def _swap(field: str) -> str:
    """The same field with A and B exchanged (``output_a`` <-> ``output_b``, ``answer_a_1``
    <-> ``answer_b_1``)."""
    for side, other in (("_a", "_b"), ("_b", "_a")):
        if field.endswith(side) or f"{side}_" in field:
            return field.replace(side, other, 1)
    return field
