"""Trace lines (an allow-list schema, whole lines, torn lines survived) and
``moac trace summarize``."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

import moac.cli.main as cli
from moac.traces.summarize import percentile, render_summary, summarize
from moac.traces.trace import CallRecord, QueryRecord, TraceWriter, jsonl_safe, read_trace


def call(**fields) -> CallRecord:
    values = dict(run_id="r", query_id="q", pipeline="p", layer="propose", node="propose.0.a",
                  position=0, role="propose", model="a", provider="x", attempt=1, status="ok")
    values.update(fields)
    return CallRecord(**values)


def query(**fields) -> QueryRecord:
    values = dict(run_id="r", query_id="q", pipeline="p", status="ok", started_at=0.0,
                  latency_s=1.0, critical_path=[], critical_path_s=0.9, calls=1, attempts=1,
                  failures=0, cost_usd=0.01, prompt_tokens=10, completion_tokens=5, tflops=1.0)
    values.update(fields)
    return QueryRecord(**values)


def test_schema_is_an_allow_list():
    with pytest.raises(ValidationError):
        call(headers={"Authorization": "Bearer x"})
    with pytest.raises(ValidationError):
        query(request={"messages": []})
    assert set(CallRecord.model_fields) >= {
        "run_id", "query_id", "pipeline", "layer", "node", "role", "model", "provider",
        "attempt", "started_at", "ended_at", "ttft_s", "prompt_tokens", "completion_tokens",
        "tokens_reported", "cost_usd", "status", "error_type", "finish_reason"}


def test_lines_are_whole_flushed_and_survive_a_torn_one(tmp_path):
    path = tmp_path / "t.jsonl"
    with TraceWriter(path) as writer:
        writer.write(call(node="answer\u2028with a line separator"))
        assert path.read_bytes().count(b"\n") == 1  # on disk before close
    with open(path, "ab") as handle:
        handle.write(b'{"type": "call", "run_id": "torn')  # a killed run's last line
    with TraceWriter(path) as writer:
        writer.write(query())
    records = read_trace(path)
    assert [r["type"] for r in records] == ["call", "query"]
    assert records[0]["node"] == "answer\u2028with a line separator"
    assert len(path.read_text(encoding="utf-8").splitlines()) == 3  # U+2028 escaped
    assert jsonl_safe(json.dumps({"a": "\u2029"}, ensure_ascii=False).encode()) == \
        b'{"a": "\\u2029"}'


def test_percentiles():
    assert percentile([], 50) is None
    assert percentile([3.0], 99) == 3.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5
    assert percentile(list(range(101)), 90) == 90


def trace_records() -> list[dict]:
    lines = [{"type": "run", "run_id": "r", "pipeline": "p"}]
    for i in range(10):
        lines.append(call(query_id=str(i), duration_s=0.1 * (i + 1), ttft_s=0.05,
                          cost_usd=0.001, prompt_tokens=100, completion_tokens=50))
        lines.append(call(query_id=str(i), layer="aggregate", node="aggregate.b", role="aggregate",
                          model="b", duration_s=1.0, cost_usd=0.002))
        lines.append(query(query_id=str(i), latency_s=1.0 + i, cost_usd=0.003,
                           estimate={"usd": 0.006, "latency_s": 2.0, "tflops": 1.0,
                                     "input_tokens": 100, "output_tokens": 50}))
    lines.append(call(query_id="x", node="propose.1.a", attempt=1, status="failed",
                      error_type="ServerError"))
    lines.append(call(query_id="x", node="propose.1.a", attempt=2, status="ok",
                      duration_s=0.2))
    lines.append(call(query_id="x", layer="aggregate", node="aggregate.b", model="b",
                      attempt=0, status="skipped", error="budget: its worst case $1"))
    lines.append(query(query_id="x", status="failed", cost_usd=0.0))
    return [r if isinstance(r, dict) else r.model_dump(mode="json") for r in lines]


def test_summary_per_model_and_layer():
    s = summarize(trace_records())
    a, b = s.models["a"], s.models["b"]
    assert (len(a.calls), a.attempts, a.failed) == (11, 12, 1)
    assert a.cost_usd == pytest.approx(0.010) and b.skipped == 1
    assert percentile(a.durations, 50) == pytest.approx(0.5)  # 0.1..1.0 and 0.2
    assert s.queries == {"ok": 10, "failed": 1}
    assert s.errors == {("a", "ServerError"): 1} and s.skip_reasons == {"budget": 1}
    assert s.estimated_queries == 10
    assert s.estimate["usd"] == pytest.approx(0.06) and s.actual["usd"] == pytest.approx(0.03)
    text = render_summary(s)
    assert "1 run of p: 11 queries (1 failed, 10 ok)" in text
    assert "a: ServerError x1" in text and "skipped calls: budget x1" in text
    assert "cost             $0.0600       $0.0300       0.50x" in text
    assert s.layers["aggregate"].skipped == 1


def test_summarize_command(tmp_path, capsys):
    path = tmp_path / "t.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in trace_records()) + "{torn")
    assert cli.main(["trace", "summarize", str(path)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("1 run of p") and "p50" in out and "p99" in out
    assert cli.main(["trace", "summarize", str(tmp_path / "none.jsonl")]) == 2
