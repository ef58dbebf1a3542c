"""What one call can afford: pure arithmetic over a model's prices and a room to spend in.

The executor fits every call before it starts (:mod:`moac.run.agent_call`): to its model's
context window, then to what the query's budget has room for. These functions say how many
tokens fit; they hold nothing and read no ledger, so they are tested on numbers alone.

A :class:`Room` is what a call may hold at most, in dollars and TFLOPs (``inf`` when
unbounded). Token counts here are upper bounds (:func:`moac.ir.prompts.messages_max_tokens`),
never estimates.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from moac.ir.spec import ModelSpec


@dataclass(frozen=True, slots=True)
class Room:
    usd: float = math.inf
    tflops: float = math.inf

    def less(self, usd: float, tflops: float) -> "Room":
        return Room(self.usd - usd, self.tflops - tflops)


@dataclass(frozen=True, slots=True)
class Cost:
    """A call's worst case: what it holds while it runs."""
    usd: float
    tflops: float

    @classmethod
    def of(cls, model: ModelSpec, tokens_in: int, tokens_out: int) -> "Cost":
        return cls(model.usd(tokens_in, tokens_out), model.tflops(tokens_in + tokens_out))

    def fits(self, room: Room) -> bool:
        return self.usd <= room.usd * (1 + 1e-9) + 1e-15 and \
            self.tflops <= room.tflops * (1 + 1e-9) + 1e-12


def largest_answer(model: ModelSpec, tokens_in: int, room: Room) -> int:
    """The most completion tokens a call reading ``tokens_in`` can hold in ``room``
    (negative when not even its input fits)."""
    by_usd = _tokens(room.usd - model.usd(tokens_in, 0), model.usd(0, 1))
    by_tflops = _tokens(room.tflops - model.tflops(tokens_in), model.tflops(1))
    return min(by_usd, by_tflops)


def largest_input(model: ModelSpec, tokens_out: int, room: Room) -> int:
    """The most prompt tokens a call writing ``tokens_out`` can hold in ``room``."""
    by_usd = _tokens(room.usd - model.usd(0, tokens_out), model.usd(1, 0))
    by_tflops = _tokens(room.tflops - model.tflops(tokens_out), model.tflops(1))
    return min(by_usd, by_tflops)


def context_refused(model: ModelSpec, prompt_bound: int, max_tokens: int, error: str) -> str:
    """What a provider's ``context_length_exceeded`` means for a request moac had fit to
    the model's declared context (``prompt_bound`` tokens in at most, ``max_tokens`` out):
    the model's real context is smaller than declared."""
    return (f"the input did not fit model {model.name}'s context of "
            f"{model.context_tokens:,} tokens (as declared; the provider refused at most "
            f"{prompt_bound:,} tokens in and {max_tokens:,} out: {error}): declare a smaller "
            f"context for {model.name}, or shorten the prompt")


def floor_tokens(model: ModelSpec, max_tokens: int) -> int:
    """The shortest answer worth asking for when a budget or a context forces a shorter one:
    the model's typical answer (its ``length``) after its typical thinking (a reasoning
    model's limit bounds both), or ``max_tokens`` when that is less."""
    return min(model.answer_tokens + model.thinking_tokens, max_tokens)


_HUGE = 10 ** 15  # "as many as you like": an int, so callers can compare and subtract


def _tokens(room: float, per_token: float) -> int:
    if room == math.inf:
        return _HUGE
    if room < 0:
        return -1
    if per_token <= 0:
        return _HUGE
    return min(int(room / per_token * (1 - 1e-12)), _HUGE)
