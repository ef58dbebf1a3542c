"""Pass 4: every call must fit its model's context window at ``max_tokens``.

An aggregating agent reads the prompt, the template and every earlier answer; with each
answer at its ``max_tokens`` (the worst case) that can pass a small window, as with
Llama-3-70B's 8k behind six 2k proposers. The user prompt is taken at
:data:`~moac.constants.ASSUMED_PROMPT_TOKENS`, since the real one is not known yet.
"""

from __future__ import annotations

from moac.checks.pipelines import AGGREGATOR, FALLBACK
from moac.checks.state import CheckState
from moac.constants import ASSUMED_PROMPT_TOKENS
from moac.ir.prompts import input_tokens
from moac.ir.spec import AgentSpec, PipelineSpec


def check_context_windows(state: CheckState) -> None:
    for name, pipeline in state.pipeline_specs.items():
        for slot, layer_name, agents, template, previous in _consumers(pipeline):
            answers = [a.sampling.max_tokens for a in previous]
            # The earlier answers add the same to what each agent of a stage reads: counted
            # once, so that two layers of a thousand agents cost two thousand steps, not a
            # million. Within a stage, only the system prompt changes the rest.
            from_answers = (input_tokens(0, template=template, answers=answers)
                            - input_tokens(0, template=template))
            readings: dict[str | None, int] = {}
            largest = max(answers, default=0)
            for index, agent in enumerate(agents):
                if agent.system not in readings:
                    readings[agent.system] = from_answers + input_tokens(
                        ASSUMED_PROMPT_TOKENS, system=agent.system, template=template)
                _check_agent(state, name, slot, index, layer_name, agent, template,
                             (len(answers), largest), readings[agent.system])


def _consumers(pipeline: PipelineSpec):
    """(slot, layer name, agents, template, agents whose answers they read) per stage."""
    previous: tuple[AgentSpec, ...] = ()
    for index, layer in enumerate(pipeline.layers):
        yield index, layer.name, layer.agents, layer.prompt, previous
        previous = layer.agents
    yield AGGREGATOR, "the aggregator", (pipeline.aggregator,), pipeline.aggregator_prompt, \
        previous
    if pipeline.fallback is not None:
        yield FALLBACK, "the fallback", (pipeline.fallback,), pipeline.aggregator_prompt, \
            previous


def _check_agent(state: CheckState, pipeline: str, slot: int, index: int, layer_name: str,
                 agent: AgentSpec, template: str | None, answers: tuple[int, int],
                 reading: int) -> None:
    """``answers``: how many earlier answers the agent reads, and the longest's max_tokens;
    ``reading``: the tokens it reads in all."""
    model = state.model_specs.get(agent.model)
    if model is None:
        return
    total = reading + agent.sampling.max_tokens
    if total <= model.context_tokens:
        return
    site = state.agent_sites.get((pipeline, slot, index))
    where = f"layer {layer_name}" if slot >= 0 else layer_name
    count, largest = answers
    if template is not None and count:
        what = (f"{where}'s input can reach {reading:,} tokens ({count} answers of up "
                f"to {largest:,} tokens + prompt), plus {agent.sampling.max_tokens:,} "
                f"to write: {total:,}")
        hint = "lower max_tokens in the layer before, drop proposers, or use a model with a " \
               "larger context"
    else:
        what = (f"{where} can need {total:,} tokens (a {ASSUMED_PROMPT_TOKENS}-token prompt + "
                f"max_tokens {agent.sampling.max_tokens:,})")
        hint = "lower max_tokens"
    state.report("E404", f"{what}, over {agent.model}'s {_window(model.context_tokens)} "
                 f"context (pipeline '{pipeline}')", site.path if site else "",
                 site.span if site else None, hint=hint)


def _window(tokens: int) -> str:
    return f"{tokens // 1024}k" if tokens % 1024 == 0 else f"{tokens:,}-token"
