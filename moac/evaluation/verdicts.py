"""Judge prompts and strict parsing of what the judge answers.

Two protocols, both with MT-Bench's bracket convention (``judge_prompts.jsonl`` of FastChat's
llm_judge, as shipped in ``shared/data/mt_bench``):

* pairwise: the judge ends with ``[[A]]``, ``[[B]]`` or ``[[C]]`` (a tie). moac asks twice,
  with the candidate first as A and then as B, and :func:`combine_orders` folds the two
  verdicts into the candidate's preference, cancelling the judge's position bias;
* single score: the judge writes ``Rating: [[7]]``, a number from 1 to 10.

Parsing never guesses. A judge that names two different verdicts (often by echoing the
format instructions, ``"[[A]]" if A is better, "[[B]]" ...``) or a rating outside 1..10 is
unparseable (None), and the caller counts it as such rather than as a loss or a tie: an
unparseable answer says nothing about the candidate.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

Verdict = Literal["A", "B", "tie"]

# Only upper-case letters between exactly two brackets, as the MT-Bench prompts ask; inner
# spaces are tolerated because they change nothing about which verdict was meant.
_PAIR_TOKEN = re.compile(r"\[\[\s*([ABC])\s*\]\]")
# Any double-bracketed token; its content is judged afterwards, so that "[[-3]]" or
# "[[11]]" makes the answer unparseable instead of being skipped over.
_BRACKETED = re.compile(r"\[\[([^\[\]]*)\]\]")
_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)")
_TOKEN_TO_VERDICT: dict[str, Verdict] = {"A": "A", "B": "B", "C": "tie"}
SCORE_RANGE = (1.0, 10.0)
# What a protocol's judge must write, as messages put it (planner.learned says the same).
EXPECTED = {"pairwise": "[[A]]/[[B]]/[[C]]", "single": "a rating [[1]]..[[10]]"}
# How much of an unparsed verdict reports quote (characters, before an ellipsis).
EXCERPT_CHARS = 80


def excerpt(text: str | None, limit: int = EXCERPT_CHARS) -> str:
    """``text`` on one line (whitespace runs collapsed), cut to ``limit`` characters with an
    ellipsis; ``(nothing)`` for an empty answer."""
    flat = " ".join((text or "").split())
    if not flat:
        return "(nothing)"
    return flat if len(flat) <= limit else flat[:limit - 1].rstrip() + "…"


def parse_pairwise(text: str) -> Verdict | None:
    """The verdict in a pairwise judge's answer, or None if there is not exactly one.

    Recognised tokens: ``[[A]]`` (A is better), ``[[B]]`` (B is better), ``[[C]]`` (a tie),
    upper-case, anywhere in the text, surrounding chatter ignored. The same token repeated
    counts once (a judge restating its verdict); two *different* tokens, or none, give None.
    Lower-case ``[[a]]`` and single brackets ``[A]`` are not verdicts."""
    found = {_TOKEN_TO_VERDICT[m] for m in _PAIR_TOKEN.findall(text)}
    return found.pop() if len(found) == 1 else None


def parse_score(text: str) -> float | None:
    """The rating in a single-answer judge's text (``Rating: [[7]]``), or None.

    Every ``[[...]]`` whose content is a number (integer or decimal, e.g. ``[[7]]``,
    ``[[8.5]]``) counts; other bracketed words (an echoed ``[[rating]]``) are ignored. The
    answer is unparseable (None) when no number is found, when any number lies outside
    1..10, or when the numbers differ (``[[6]] ... [[8]]``); a repeated rating counts once."""
    values = set()
    for content in _BRACKETED.findall(text):
        content = content.strip()
        if _NUMBER.fullmatch(content):
            value = float(content)
            if not SCORE_RANGE[0] <= value <= SCORE_RANGE[1]:
                return None
            values.add(value)
    return values.pop() if len(values) == 1 else None


def combine_orders(first: Verdict | None, second: Verdict | None) -> float | None:
    """The candidate's preference from two judgments of the same pair, in [0, 1].

    ``first`` is the verdict with the candidate shown as A (the reference as B), ``second``
    with the reference as A and the candidate as B. Each verdict is first mapped to the
    candidate's side (win, loss or tie). When both orders agree, the result is theirs: 1.0
    for a win, 0.0 for a loss, 0.5 for a tie. When they disagree (win and loss, or a win or
    loss against a tie) the result is 0.5: the verdict moved with the position, so it is
    position bias, not evidence. This is MT-Bench's rule (FastChat's llm_judge counts
    ``g1_winner != g2_winner`` as "inconsistent", scored as a tie). None if either verdict is
    None: the pair is unjudged, not tied."""
    if first is None or second is None:
        return None
    as_first = {"A": 1.0, "B": 0.0, "tie": 0.5}[first]
    as_second = {"A": 0.0, "B": 1.0, "tie": 0.5}[second]
    return as_first if as_first == as_second else 0.5


@dataclass(frozen=True)
class JudgePrompt:
    """One judge prompt: a system prompt and a user-message template.

    ``prompt_template`` is a :meth:`str.format` template; MT-Bench's use the fields
    ``question``, ``answer``, ``answer_a``, ``answer_b``, ``ref_answer_1`` and, for the
    multi-turn ones, ``question_1``/``question_2``, ``answer_a_1`` ... Fill them with
    ``prompt_template.format(**fields)``: the answers are values, so braces inside them are
    safe. ``output_format`` is the verdict token the prompt asks for (``[[A]]`` for pairwise,
    ``[[rating]]`` for single); ``kind`` is "pairwise" or "single"; ``category`` tells which
    questions the prompt is for ("math" prompts show a reference answer)."""

    name: str
    system_prompt: str
    prompt_template: str
    output_format: str
    kind: str = ""
    category: str = ""


_REQUIRED = ("name", "system_prompt", "prompt_template", "output_format")


def load_judge_prompts(path: str | Path) -> dict[str, JudgePrompt]:
    """The judge prompts of an MT-Bench ``judge_prompts.jsonl`` file, by name.

    One JSON object a line with at least ``name``, ``system_prompt``, ``prompt_template``
    and ``output_format`` (``type`` and ``category`` are kept when present); blank lines are
    skipped. Raises ValueError naming the line for a line that is not such an object or a
    name given twice, and OSError if the file cannot be read. The file shipped with MT-Bench
    holds pair-v2, pair-v2-multi-turn, pair-math-v1, pair-math-v1-multi-turn, single-v1,
    single-math-v1, single-v1-multi-turn and single-math-v1-multi-turn."""
    prompts: dict[str, JudgePrompt] = {}
    with open(path, encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{number}: not JSON: {e.msg}") from None
            if not isinstance(entry, dict):
                raise ValueError(f"{path}:{number}: expected a JSON object")
            missing = [k for k in _REQUIRED if not isinstance(entry.get(k), str)]
            if missing:
                raise ValueError(f"{path}:{number}: missing or not text: {', '.join(missing)}")
            if entry["name"] in prompts:
                raise ValueError(f"{path}:{number}: judge prompt {entry['name']!r} given twice")
            prompts[entry["name"]] = JudgePrompt(
                *(entry[k] for k in _REQUIRED),
                kind=str(entry.get("type", "")), category=str(entry.get("category", "")))
    return prompts


# AlpacaEval-style pairwise judging with moac's own wording: AlpacaEval 2.0 forces a choice
# between the two outputs (its preferences have no ties), so this prompt offers no [[C]];
# a tie still arises when the two orders disagree (combine_orders). The length sentence
# matches MT-Bench's pair-v2; length-controlled win rates correct what bias remains.
ALPACA_PAIRWISE = JudgePrompt(
    name="moac-pair-v1",
    system_prompt=(
        "You are an impartial judge comparing two AI assistants' answers to the same "
        "instruction. Choose the answer a careful user would prefer: the one that follows "
        "the instruction and is more helpful, correct and clear. The order in which the "
        "answers appear, the assistants' names and the answers' lengths must not influence "
        "you. Explain your comparison in at most three sentences, then give your verdict on "
        'its own line, exactly "[[A]]" if answer A is better or "[[B]]" if answer B is '
        "better. You must choose one. Write no other double-bracketed text."),
    prompt_template=(
        "[Instruction]\n{instruction}\n\n"
        "[The Start of Answer A]\n{output_a}\n[The End of Answer A]\n\n"
        "[The Start of Answer B]\n{output_b}\n[The End of Answer B]"),
    output_format="[[A]]",
    kind="pairwise",
    category="general",
)
