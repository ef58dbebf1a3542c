"""What a model's API accepts, and what an agent may ask of it: reasoning models.

A model block may say (each optional):

- ``reasoning = true | false``: a reasoning model of OpenAI's kind. It takes
  ``reasoning_effort``, and unless the block says otherwise its completion is limited by
  ``max_completion_tokens`` and it samples at its own temperature (moac sends no
  ``temperature`` or ``top_p``). On a provider of ``kind = openai`` the default comes from the
  model id: OpenAI's reasoning families (:data:`~moac.constants.OPENAI_REASONING_MODEL_IDS`)
  are reasoning models.
- ``token_param = max_tokens | max_completion_tokens``: the request field that limits the
  completion (thinking and answer together).
- ``temperature = fixed | any``: ``fixed`` sends no temperature or top_p.
- ``thinking = 2000 tok``: its typical thinking before the answer, for the planner (billed,
  never read by another agent). Default 0, or :data:`~moac.constants.DEFAULT_THINKING_TOKENS`
  for a reasoning model.

An agent's own ``temperature``, ``top_p`` (on a model with ``temperature = fixed``) or
``reasoning_effort`` (on a model that is not a reasoning model) is an error: it would not
be sent. The same settings inherited from a layer or the pipeline apply where they can.
"""

from __future__ import annotations

import re

from moac import constants
from moac.lang import ast
from moac.checks.values import Reader
from moac.ir.spec import ModelSpec, ProviderSpec

API_KEYS = ("reasoning", "token_param", "temperature", "thinking")
_OPENAI_REASONING = re.compile(constants.OPENAI_REASONING_MODEL_IDS)


def openai_reasoning_id(model_id: str) -> bool:
    """Whether ``model_id`` names one of OpenAI's reasoning models."""
    return _OPENAI_REASONING.fullmatch(model_id) is not None


def _reasoning(reader: Reader, setting: ast.Setting) -> dict | None:
    value = reader.single(setting)
    word = value and reader.choice(value, "reasoning", ("true", "false"))
    return None if word is None else {"reasoning": word == "true"}


def _token_param(reader: Reader, setting: ast.Setting) -> dict | None:
    value = reader.single(setting)
    word = value and reader.choice(value, "token_param", ("max_tokens", "max_completion_tokens"))
    return None if word is None else {"token_param": word}


def _temperature(reader: Reader, setting: ast.Setting) -> dict | None:
    value = reader.single(setting)
    if isinstance(value, ast.Quantity):
        reader.report("E202", "a model's 'temperature' says whether it takes one (fixed or "
                      "any), not its value", value.span,
                      hint="set the value on the pipeline, a layer or an agent")
        return None
    word = value and reader.choice(value, "temperature", ("fixed", "any"))
    return None if word is None else {"fixed_temperature": word == "fixed"}


def _thinking(reader: Reader, setting: ast.Setting) -> dict | None:
    value = reader.single(setting)
    number = value and reader.integer(value, "thinking", kind="tokens", minimum=0)
    return None if number is None else {"thinking_tokens": number}


API_READERS = {"reasoning": _reasoning, "token_param": _token_param,
               "temperature": _temperature, "thinking": _thinking}


def api_defaults(fields: dict, provider: ProviderSpec | None) -> None:
    """Fill in what the model block left out (see the module docstring)."""
    if "reasoning" not in fields:
        fields["reasoning"] = provider is not None and provider.kind == "openai" and \
            openai_reasoning_id(fields["model_id"])
    implied = implied_api(fields["reasoning"])
    for key, value in implied.items():
        fields.setdefault(key, value)


def implied_api(reasoning: bool) -> dict:
    """What ``reasoning = true`` (or false) implies for the other API fields."""
    return {"token_param": "max_completion_tokens" if reasoning else "max_tokens",
            "fixed_temperature": reasoning,
            "thinking_tokens": constants.DEFAULT_THINKING_TOKENS if reasoning else 0}


def check_agent_options(reader: Reader, model: ModelSpec, options: dict) -> bool:
    """Report an agent's own settings its model would not be sent (``options`` maps a key
    to ``(value, setting, path)``); False when there was one."""
    ok = True
    for key in ("temperature", "top_p"):
        if key in options and model.fixed_temperature:
            reader.report("E604", f"'{key}' would not be sent: model '{model.name}' "
                          "samples at its own temperature",
                          options[key][1].key.span,
                          hint="remove it, or declare `temperature = any` on the model "
                               "if its API takes one")
            ok = False
    if "reasoning_effort" in options and not model.reasoning:
        reader.report("E604", f"'reasoning_effort' would not be sent: model "
                      f"'{model.name}' is not a reasoning model",
                      options["reasoning_effort"][1].key.span,
                      hint="declare `reasoning = true` on the model if its API takes "
                           "reasoning_effort")
        ok = False
    return ok
