"""The replay provider (:mod:`moac.evaluation.replay`) through moac's real client: recorded answers come back
exactly, for proposers and for aggregators whose system prompt holds earlier answers."""

from __future__ import annotations

import asyncio
import math
from pathlib import Path

import aiohttp
import pytest

from moac.constants import DEFAULT_AGGREGATE_PROMPT
from moac.ir.prompts import render_template
from moac.providers.errors import BadRequest, ProviderError
from moac.providers.openai import ChatRequest, OpenAICompatibleClient
from moac.evaluation.replay import DEFAULT_MODELS, ReplayServer, find_instruction, load_file, load_outputs
from moac.ir.spec import ProviderSpec, Sampling

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "alpaca_eval"
pytestmark = pytest.mark.skipif(not (DATA / "model_outputs").is_dir(),
                                reason=f"no recorded AlpacaEval answers at {DATA}")

QWEN110, LLAMA, MIXTRAL = ("Qwen/Qwen1.5-110B-Chat", "meta-llama/Llama-3-70b-chat-hf",
                           "mistralai/Mixtral-8x22B-Instruct-v0.1")
WIZARD = "microsoft/WizardLM-2-8x22B"
SAMPLING = Sampling(temperature=0.7, max_tokens=2048)


def recorded(model: str) -> dict[str, str]:
    return load_file(DATA, DEFAULT_MODELS[model])


def instructions(n: int = 3) -> list[str]:
    return list(recorded(QWEN110))[:n]


def run(body, **server_args):
    """Run ``body(server, client)`` against a fresh replay server and a real client."""
    async def main():
        async with ReplayServer(DATA, **server_args) as server:
            spec = ProviderSpec(name="replay", kind="openai", base_url=server.url, parallel=8,
                                timeout_s=30, connect_timeout_s=5, read_timeout_s=30,
                                max_retries=0)
            async with aiohttp.ClientSession() as session:
                return await body(server, OpenAICompatibleClient(session, spec, None))
    return asyncio.run(main())


def ask(model: str, messages, *, stream: bool, max_tokens: int | None = None) -> ChatRequest:
    return ChatRequest(model=model, messages=messages, sampling=SAMPLING, stream=stream,
                       max_tokens=max_tokens)


@pytest.mark.parametrize("stream", [True, False])
def test_proposer_gets_its_recorded_answer(stream):
    async def body(server, client):
        for instruction in instructions():
            for model in (QWEN110, LLAMA, MIXTRAL):
                result = await client.chat(ask(model, [{"role": "user", "content": instruction}],
                                               stream=stream))
                assert result.text == recorded(model)[instruction]
                assert result.finish_reason == "stop"
                assert result.usage.reported
                assert result.usage.completion_tokens == math.ceil(len(result.text) / 4)
                assert result.usage.prompt_tokens == math.ceil(len(instruction) / 4)
        assert server.requests == 9 and server.misses == 0
    run(body)


@pytest.mark.parametrize("stream", [True, False])
def test_aggregator_gets_its_recorded_answer_despite_the_system_prompt(stream):
    instruction = instructions()[1]
    earlier = [recorded(m)[instruction] for m in (QWEN110, LLAMA, MIXTRAL)]
    system = render_template(DEFAULT_AGGREGATE_PROMPT, earlier)
    assert "1. " in system and "3. " in system

    async def body(server, client):
        messages = [{"role": "system", "content": system},
                    {"role": "user", "content": "  " + instruction + "\n"}]
        result = await client.chat(ask(QWEN110, messages, stream=stream))
        assert result.text == recorded(QWEN110)[instruction]
        assert result.usage.prompt_tokens == math.ceil(
            (len(system) + len(instruction) + 3) / 4)
    run(body)


def test_instruction_inside_a_longer_user_message():
    instruction = instructions()[2]

    async def body(server, client):
        wrapped = f"Please answer the following.\n\n{instruction}\n\nThanks!"
        result = await client.chat(ask(LLAMA, [{"role": "user", "content": wrapped}], stream=True))
        assert result.text == recorded(LLAMA)[instruction]
    run(body)


@pytest.mark.parametrize("stream", [True, False])
def test_unknown_instruction_is_a_provider_error(stream):
    async def body(server, client):
        with pytest.raises(ProviderError) as caught:
            await client.chat(ask(QWEN110, [{"role": "user", "content": "zq unrecorded zq"}],
                                  stream=stream))
        assert isinstance(caught.value, BadRequest)
        assert caught.value.status == 404
        assert "instruction not recorded" in str(caught.value)
        assert server.misses == 1
    run(body)


@pytest.mark.parametrize("stream", [True, False])
def test_unrecorded_model_is_an_error_unless_a_fallback_is_set(stream):
    instruction = instructions()[0]
    messages = [{"role": "user", "content": instruction}]

    async def refused(server, client):
        with pytest.raises(BadRequest) as caught:
            await client.chat(ask(WIZARD, messages, stream=stream))
        assert "model not recorded" in str(caught.value)
    run(refused)

    async def stands_in(server, client):
        result = await client.chat(ask(WIZARD, messages, stream=stream))
        assert result.text == recorded(QWEN110)[instruction]
    run(stands_in, fallback=QWEN110)


@pytest.mark.parametrize("stream", [True, False])
def test_max_tokens_cuts_the_answer(stream):
    instruction = next(i for i, a in recorded(MIXTRAL).items() if len(a) > 200)

    async def body(server, client):
        result = await client.chat(ask(MIXTRAL, [{"role": "user", "content": instruction}],
                                       stream=stream, max_tokens=10))
        assert result.text == recorded(MIXTRAL)[instruction][:40]
        assert result.finish_reason == "length" and result.truncated
        assert result.usage.completion_tokens == 10
    run(body)


def test_custom_model_mapping_and_file_stems():
    instruction = instructions()[0]

    async def body(server, client):
        mine = await client.chat(ask("my-model", [{"role": "user", "content": instruction}],
                                     stream=False))
        assert mine.text == load_file(DATA, "dbrx-instruct.json")[instruction]
        moa = await client.chat(ask("Together-MoA", [{"role": "user", "content": instruction}],
                                    stream=True))
        assert moa.text == load_file(DATA, "Together-MoA.json")[instruction]
        with pytest.raises(BadRequest):  # not in the custom mapping, not a file stem
            await client.chat(ask(QWEN110, [{"role": "user", "content": instruction}],
                                  stream=False))
    run(body, models={"my-model": "dbrx-instruct.json"})


def test_load_outputs():
    outputs = load_outputs(DATA)
    assert load_outputs(DATA / "model_outputs")[QWEN110] is outputs[QWEN110]  # read once
    for model, filename in DEFAULT_MODELS.items():
        assert (model in outputs) == (filename is not None)
    assert all(len(answers) == 805 for answers in outputs.values())
    assert outputs["Qwen1.5-110B-Chat"] is outputs[QWEN110]
    assert find_instruction([{"role": "user", "content": "nothing"}], outputs[QWEN110]) is None
