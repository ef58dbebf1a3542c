"""Cheap features of a query for the router: a rule-based category and a token count.

:func:`query_features` reads only the prompt: no model call, a median 32 µs over the
AlpacaEval instructions on a slow 2-core machine, linear in the prompt's length. The category
is one of :data:`CATEGORIES`:

- ``code``: programs, languages, code fences, ``name()`` calls;
- ``maths``: arithmetic (digits with operators), percentages, "solve", "equation"...;
- ``reasoning``: "why", "explain", "compare", riddles, "if ... then", "step by step"...;
- ``writing``: "write", poems, stories, essays, emails, rewriting, summaries, tweets...;
- ``open``: the fallback, open questions no table claims;
- ``chat``: greetings and small talk, scored only in short prompts (at most
  :data:`~planner.constants.CHAT_MAX_TOKENS` tokens): a "Hi," opening a long request is
  not small talk.

How: the lower-cased words of the prompt (runs of ``[a-z0-9+#]``, so ``c++`` and ``c#`` are
words) are looked up in per-category word tables (:data:`WORDS`), and per-category phrase and
shape patterns (:data:`PATTERNS`) are counted. Each hit adds its weight (1 weak, 2 strong,
3 unmistakable) to its category's score; the category with the highest score wins, ties going
to the earlier category in :data:`CATEGORIES`; no hit at all gives ``open``. Deliberately
crude: it feeds a pre-route predictor whose fit is weak anyway (see :mod:`planner.preroute`),
and a crafted-prompt test pins down the obvious cases.

:meth:`QueryFeatures.vector` is the numeric form the predictor reads, in the order of
:data:`FEATURE_NAMES`: a constant 1, ``log1p(tokens)``, then the one-hot category.
"""

from __future__ import annotations

import functools

import math
import re
from dataclasses import dataclass, field

import numpy as np

from moac.ir.prompts import estimate_tokens
from planner.constants import CHAT_MAX_TOKENS

CATEGORIES = ("code", "maths", "reasoning", "writing", "open", "chat")
FEATURE_NAMES = ("bias", "log1p_tokens") + tuple(f"is_{name}" for name in CATEGORIES)

# Per category, weight -> words (exact lower-case words; list the inflections that matter).
# Ambiguous words (java the coffee, swift the singer, a PhD "program") weigh 1 or are left out.
WORDS: dict[str, dict[int, str]] = {
    "code": {
        2: "python javascript typescript sql html css regex regexp c++ c# golang kotlin php "
           "bash powershell latex json yaml numpy pandas django react nodejs js api "
           "debug compiler compile compiles compiled recursion recursive pseudocode github git "
           "programming programmer subroutine",
        1: "java rust ruby swift lua luau haskell scala perl matlab code coding codes function "
           "functions script scripts algorithm algorithms bug bugs syntax array arrays "
           "variable variables integer string strings loop loops linux terminal implement "
           "implementation database endpoint class method",
    },
    "maths": {
        2: "calculate calculation compute solve equation equations integral integrals "
           "derivative derivatives probability arithmetic algebra geometry calculus theorem "
           "logarithm polynomial percent percentage",
        1: "math maths mathematics mathematical formula sum average median fraction fractions "
           "prime primes statistics matrix multiply multiplied divided divide plus minus "
           "total area volume",
    },
    "reasoning": {
        2: "riddle riddles puzzle puzzles logic logical logically deduce infer",
        1: "why explain explanation compare comparison contrast reason reasons reasoning "
           "because cause causes analyze analyse analysis argue argument conclude conclusion "
           "implications consequences",
    },
    "writing": {
        2: "poem poems poetry haiku limerick sonnet lyrics story stories essay email emails "
           "letter tweet tweets slogan blog speech screenplay paraphrase rewrite rephrase "
           "proofread summarize summarise",
        1: "write writing draft compose caption headline title paragraph article translate "
           "tone joke jokes song rap novel fiction outline description describe summary "
           "review script dialogue",
    },
    "chat": {
        1: "hi hello hey howdy greetings thanks thank bye goodbye lol haha",
    },
}

# Per category, (weight, pattern) counted with findall on the lower-cased prompt.
PATTERNS: dict[str, tuple[tuple[int, str], ...]] = {
    "code": (
        (3, r"```"),                                        # a code fence
        (2, r"\b(?:def|fn|func|function)\s+\w+\s*\("),      # a definition
        (2, r"\w\(\)"),                                     # a call: foo() or obj.bar()
        (1, r"\b(?:import|#include)\s+\w+"),
    ),
    "maths": (
        # Digits with an operator; "-" and "/" only spaced ("4-8" is a range, "1/2" a size).
        (3, r"\d\s*[+*^×÷=]\s*\(?\d|\d\s+[-/]\s+\(?\d"),
        (2, r"\d\s*%"),
        (2, r"\b[xyz]\s*=|=\s*[xyz]\b|\bf\([xyz]\)"),
        (1, r"\bhow many\b|\bsquare root\b|\bprime numbers?\b|\bsum of\b"),
    ),
    "reasoning": (
        (2, r"\bstep[- ]by[- ]step\b|\bdifferences? between\b|\bbrain ?teaser\b"),
        (1, r"\bif\b[^.?!\n]{1,80}?\bthen\b"),
        (1, r"\bwhat (?:if|would happen)\b|\bpros and cons\b|\btrue or false\b"),
        (1, r"\badvantages and disadvantages\b|\bwhich is (?:better|bigger|larger|heavier)\b"),
    ),
    "writing": (
        (2, r"\b(?:cover letter|blog post|short story|product description|rap battle)\b"),
        (1, r"\b(?:in the style of|fix the grammar|correct the grammar|more formal)\b"),
    ),
    "chat": (
        (2, r"\bhow are you\b|\bwho are you\b|\bwhat'?s up\b|\bnice to meet you\b"),
        (2, r"\bgood (?:morning|afternoon|evening|night)\b|\byour name\b"),
        (1, r"\babout yourself\b|\bare you (?:an? )?(?:ai|bot|robot|human|real)\b"),
    ),
}

_WORD = re.compile(r"[a-z0-9+#]+")
_WORD_HITS: dict[str, tuple[str, int]] = {
    word: (category, weight)
    for category, table in WORDS.items() for weight, words in table.items()
    for word in words.split()
}
_PATTERN_HITS = tuple(
    (category, weight, re.compile(pattern))
    for category, patterns in PATTERNS.items() for weight, pattern in patterns
)


@dataclass(frozen=True)
class QueryFeatures:
    """What the router knows of a prompt before any call."""

    category: str                       # one of CATEGORIES
    tokens: int                         # moac.ir.prompts.estimate_tokens of the prompt
    scores: dict[str, int] = field(hash=False)   # weighted hits per category (open: 0)

    def vector(self) -> np.ndarray:
        """``[1, log1p(tokens), one-hot category]`` in the order of :data:`FEATURE_NAMES`."""
        values = np.zeros(len(FEATURE_NAMES))
        values[0] = 1.0
        values[1] = math.log1p(self.tokens)
        values[2 + CATEGORIES.index(self.category)] = 1.0
        return values


def scores(text: str, tokens: int | None = None) -> dict[str, int]:
    """Weighted keyword hits of ``text`` per category (every category present; open is 0).

    Chat is scored only when the prompt has at most ``CHAT_MAX_TOKENS`` tokens (``tokens``:
    its estimate when the caller has it already).
    """
    lowered = text.lower()
    chat = (estimate_tokens(text) if tokens is None else tokens) <= CHAT_MAX_TOKENS
    found = dict.fromkeys(CATEGORIES, 0)
    for word in _WORD.findall(lowered):
        hit = _WORD_HITS.get(word)
        if hit is not None:
            found[hit[0]] += hit[1]
    for category, weight, pattern in _PATTERN_HITS:
        if chat or category != "chat":                      # skip what would be zeroed
            found[category] += weight * len(pattern.findall(lowered))
    if not chat:
        found["chat"] = 0
    return found


@functools.lru_cache(maxsize=1024)
def query_features(text: str) -> QueryFeatures:
    """The category and size of ``text``: the rules of the module docstring. Cached (a
    route's policies each read the query's features)."""
    tokens = estimate_tokens(text)
    found = scores(text, tokens)
    best = max(found.values())
    # Scanning CATEGORIES in order finds the first of equal scores: ties go to the earlier.
    category = "open" if best == 0 else next(name for name in CATEGORIES if found[name] == best)
    return QueryFeatures(category=category, tokens=tokens, scores=found)
