"""``moac run`` and the Python API against the real fake server: streaming to stdout, the
summary line, batches killed (SIGKILL) or interrupted (Ctrl-C) and resumed, the run-level
budget under concurrency, a canary API key that must never leak, missing keys, bad
responses, MT-Bench turns.

The CLI runs in a subprocess where a signal or the environment matters, in-process
(:func:`moac.cli.main.main`) elsewhere.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fake_openai import Behavior, FakeOpenAI, expected_text, serve_in_thread
from test_executor import ENV, KEY, PROPOSERS, arun, example_plan, user, with_answers

import moac
import moac.cli.main as cli
from moac.run import (
    Delta, PromptItem, Restart, RunError, Runner, answered, compact_answers, load_prompts,
    read_answers, run_plan,
)
from moac.traces.trace import read_trace

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
# Runs the CLI with every logger at DEBUG on stderr, so a leak through logging shows too.
WITH_LOGGING = ("import logging, sys; logging.basicConfig(level=logging.DEBUG); "
                "from moac.cli.main import main; sys.exit(main(sys.argv[1:]))")


@pytest.fixture
def server():
    with serve_in_thread(api_key=KEY) as fake:
        yield fake


@pytest.fixture
def workdir(tmp_path, server, monkeypatch):
    """The examples' catalog, moa.moa and moa_lite.moa, every provider at the fake server
    (and without its requests-per-minute pacing)."""
    catalog = (EXAMPLES / "catalog.moa").read_text()
    catalog = re.sub(r'base_url = "[^"]*"', f'base_url = "{server.url}"', catalog)
    catalog = re.sub(r"\n\s*rpm = \d+", "", catalog)  # no pacing: these tests want speed
    (tmp_path / "catalog.moa").write_text(catalog)
    for name in ("moa.moa", "moa_lite.moa"):
        (tmp_path / name).write_text((EXAMPLES / name).read_text())
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TOGETHER_API_KEY", KEY)
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    return tmp_path


def write_prompts(path: Path, count: int) -> list[str]:
    prompts = [f"Question number {i}: what is {i} squared?" for i in range(count)]
    path.write_text("".join(json.dumps({"instruction": p, "dataset": "test"}) + "\n"
                            for p in prompts))
    return prompts


def cli_process(*argv, env_key: str = KEY, cwd: Path) -> subprocess.Popen:
    env = {**os.environ, "TOGETHER_API_KEY": env_key, "OPENAI_API_KEY": env_key}
    return subprocess.Popen([sys.executable, "-c", WITH_LOGGING, *argv], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def main(capsys, *argv) -> tuple[int, str, str]:
    capsys.readouterr()
    code = cli.main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def wait_for_lines(path: Path, count: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and path.read_bytes().count(b"\n") >= count:
            return
        time.sleep(0.02)
    raise AssertionError(f"{path} never reached {count} lines")


def user_prompt(request) -> str:
    return request.body["messages"][-1]["content"]


# --- one prompt ---------------------------------------------------------------------------

def test_one_prompt_streams_the_answer_and_a_summary(workdir, server, capsys):
    code, out, err = main(capsys, "run", "moa_lite.moa", "--prompt", "Hello there",
                          "--trace", "t.jsonl")
    plan = moac.compile_file("moa_lite.moa").plan()
    answers = [expected_text(plan.models[m].model_id, user("Hello there")) for m in PROPOSERS]
    answer = expected_text(plan.models["qwen72"].model_id, with_answers(answers, "Hello there"))
    assert code == 0
    assert out == answer + "\n"
    assert re.fullmatch(r"moac: ok · \$\d\.\d{4} · [\d,]+ tokens \([\d,]+ in, 56 out\) · "
                        r"\d+\.\d\ds · 7 calls · 0 failed\n", err), err
    records = read_trace("t.jsonl")
    assert records[0]["type"] == "run" and records[0]["file_sha256"]
    assert records[0]["plan"]["pipeline"] == "moa_lite" and records[0]["price_table_sha256"]


def test_bad_server_response_is_named_without_a_traceback(workdir, server, capsys):
    server.set_default(Behavior(malformed=True))
    code, out, err = main(capsys, "run", "moa_lite.moa", "--prompt", "hi")
    assert code == 1 and "Traceback" not in err
    assert "a stream event is not a JSON object" in err
    assert "layer propose: 0 of 6 agents answered (6 failed)" in err
    assert err.rstrip().splitlines()[-1].startswith("moac: failed · $")


def test_missing_api_key_fails_before_the_first_call(workdir, server, capsys, monkeypatch):
    monkeypatch.delenv("TOGETHER_API_KEY")
    code, out, err = main(capsys, "run", "moa.moa", "--prompt", "hi", "--trace", "t.jsonl")
    assert code == 1 and out == ""
    assert err == ("moac: error: environment variable TOGETHER_API_KEY is not set (the API key "
                   "of provider 'together')\n")
    assert server.requests == [] and not Path("t.jsonl").exists()


def test_usage_errors(workdir, capsys):
    assert main(capsys, "run", "moa.moa", "--prompt", "x", "--concurrency", "0")[0] == 2
    code, _, err = main(capsys, "run", "moa.moa", "--prompt", "x", "--max-usd-total", "lots")
    assert code == 2 and "--max-usd-total expects" in err
    code, _, err = main(capsys, "run", "moa.moa", "--prompts", "nowhere.jsonl")
    assert code == 2 and "no such file: nowhere.jsonl" in err  # a usage error, as elsewhere


def test_canary_key_appears_in_no_output_trace_or_log(workdir, server, tmp_path):
    """The server rejects the canary with a 401 whose body echoes the Authorization header
    (whole, and masked as providers do)."""
    canary = "sk-canary-5c1f0e9b7d2a4f68a3e1b0c9d8e7f6a5"
    prompts = tmp_path / "p.jsonl"
    write_prompts(prompts, 2)
    runs = [cli_process("run", "moa_lite.moa", "--prompt", "hi", "--trace", "t1.jsonl",
                        env_key=canary, cwd=workdir),
            cli_process("run", "moa_lite.moa", "--prompts", str(prompts), "--out", "a.jsonl",
                        "--trace", "t2.jsonl", env_key=canary, cwd=workdir)]
    texts = []
    for process in runs:
        out, err = process.communicate(timeout=60)
        assert process.returncode == 1 and "Traceback" not in err
        texts += [out, err]
    assert "authentication failed" in texts[1] and "DEBUG" in texts[1] + texts[3]
    texts += [(workdir / name).read_text() for name in ("t1.jsonl", "t2.jsonl", "a.jsonl")]
    echoed = [r.status for r in server.requests]
    assert echoed and set(echoed) == {401}
    for text in texts:
        assert canary not in text
        for i in range(len(canary) - 7):  # no 8 characters of it either
            assert canary[i:i + 8] not in text


# --- batches ---------------------------------------------------------------------------------

def test_batch_killed_midway_resumes_without_paying_twice(workdir, server, tmp_path, capsys):
    prompts = write_prompts(tmp_path / "questions.jsonl", 24)
    server.set_default(Behavior(latency_s=0.15))
    process = cli_process("run", "moa_lite.moa", "--prompts", str(tmp_path / "questions.jsonl"),
                          "--concurrency", "4", "--trace", "t.jsonl", cwd=workdir)
    out_path = workdir / "questions.moa_lite.answers.jsonl"  # the default name
    try:
        wait_for_lines(out_path, 6)
    finally:
        process.kill()
        killed_at = time.monotonic()
        process.communicate(timeout=10)
    time.sleep(0.3)  # let the server see the dropped connections
    before = {r["id"] for r in read_answers(str(out_path)) if r["status"] == "ok"}
    assert 6 <= len(before) < 24
    seen = len(server.requests)
    in_flight = sum(1 for r in server.requests if r.ended >= killed_at)
    journal = workdir / "questions.moa_lite.answers.calls.sqlite"
    assert journal.exists()  # every finished call was kept

    server.set_default(Behavior(latency_s=0.01))
    code, _, err = main(capsys, "run", "moa_lite.moa", "--prompts",
                        str(tmp_path / "questions.jsonl"), "--concurrency", "8",
                        "--trace", "t.jsonl")
    assert code == 0, err
    assert f"{len(before)} of 24 already answered" in err
    resumed = server.requests[seen:]
    # The answered items cost nothing again, and of the items in flight at the kill only
    # the calls then unfinished are asked again: the rest come back from the journal.
    assert len(server.requests) <= 7 * 24 + in_flight
    assert len(resumed) < 7 * (24 - len(before))
    assert "taken back from the journal" in err
    assert not journal.exists()  # every item answered: the journal is gone
    answered_prompts = {prompts[int(i)] for i in before}
    assert not any(user_prompt(r) in answered_prompts for r in resumed)
    rows = read_answers(str(out_path))
    assert [r["id"] for r in rows] == [str(i) for i in range(24)]  # each once, in order
    assert all(r["status"] == "ok" and r["output"] and r["generator"] == "moa_lite"
               and r["dataset"] == "test" for r in rows)
    assert sum(r["type"] == "run" for r in read_trace("t.jsonl")) == 2


def test_repeated_kills_pay_only_for_the_calls_in_flight(workdir, server, tmp_path, capsys):
    """120 MoA-Lite items at concurrency 16, killed (SIGKILL) six times while proposers are
    in flight, then let finish: every call but those in flight at a kill is asked once."""
    write_prompts(tmp_path / "q.jsonl", 120)
    server.set_default(Behavior(latency_s=0.05))
    in_flight = 0
    out = workdir / "a.jsonl"
    for kill in range(6):
        process = cli_process("run", "moa_lite.moa", "--prompts", str(tmp_path / "q.jsonl"),
                              "--out", "a.jsonl", "--concurrency", "16", cwd=workdir)
        try:
            # Let it work a while: until it asked 40 more requests.
            target = len(server.requests) + 40
            deadline = time.monotonic() + 30
            while len(server.requests) < target and time.monotonic() < deadline \
                    and process.poll() is None:
                time.sleep(0.005)
        finally:
            process.kill()
            killed_at = time.monotonic()
            process.communicate(timeout=10)
        time.sleep(0.2)
        # In flight: unfinished at the kill, or finished so shortly before it that the
        # client may not have read (and kept) the answer yet.
        in_flight += sum(1 for r in server.requests
                         if not r.ended or r.ended >= killed_at - 0.1)
    code, _, err = main(capsys, "run", "moa_lite.moa", "--prompts", str(tmp_path / "q.jsonl"),
                        "--out", "a.jsonl", "--concurrency", "16")
    assert code == 0, err
    rows = read_answers(str(out))
    assert len(rows) == 120 and all(r["status"] == "ok" for r in rows)
    assert len(server.requests) <= 7 * 120 + in_flight, (len(server.requests), in_flight)


def test_ctrl_c_stops_keeps_every_trace_line_and_exits_130(workdir, server, tmp_path):
    write_prompts(tmp_path / "q.jsonl", 40)
    server.set_default(Behavior(latency_s=0.3))
    process = cli_process("run", "moa_lite.moa", "--prompts", str(tmp_path / "q.jsonl"),
                          "--out", "a.jsonl", "--trace", "t.jsonl", "--concurrency", "4",
                          cwd=workdir)
    try:
        wait_for_lines(workdir / "a.jsonl", 2)
        time.sleep(0.15)  # proposers in flight
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=20)
    finally:
        process.kill()
    assert process.returncode == 130, err
    assert "moac: interrupted" in err and "Traceback" not in err and "Unclosed" not in err
    lines = (workdir / "t.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]  # every line whole
    assert any(r["type"] == "call" and r["status"] == "cancelled" for r in records)
    assert any(r["type"] == "query" and r["status"] == "cancelled" for r in records)
    rows = read_answers(str(workdir / "a.jsonl"))
    assert len({r["id"] for r in rows}) == len(rows) >= 2


def test_run_total_budget_holds_under_concurrency(tmp_path):
    """Answers are as long as max_tokens allows, so real costs come close to the worst
    cases reserved: sixteen queries at once must still stop short of the total, and a query
    is admitted only when the run can hold its worst case, so none is left half-paid. (A
    MoA-Lite query's worst case is about $0.051 here: its aggregator may read six answers of
    512 tokens at 16 bytes a token, a token a byte; it really costs about $0.009.) When the
    queries in flight are done and the next one's worst case does not fit what is left, it
    is fit to what is left; the batch stops when not even the aggregator alone fits."""
    total = 0.3

    async def main():
        async with FakeOpenAI(api_key=KEY, default=Behavior(tokens=600, latency_s=0.02)) as srv:
            plan = example_plan(srv, "moa_lite", parallel=64)
            items = [PromptItem(str(i), (f"prompt {i}",), "prompt", {"prompt": f"prompt {i}"})
                     for i in range(60)]
            async with Runner(plan, environ=ENV, trace_path=tmp_path / "t.jsonl",
                              max_usd_total=total) as runner:
                state = await runner.run_batch(items, str(tmp_path / "a.jsonl"), concurrency=16)
                return state, runner.run_ledger

    state, ledger = arun(main())
    calls = [r for r in read_trace(tmp_path / "t.jsonl") if r["type"] == "call"]
    spent = sum(r["cost_usd"] for r in calls)
    assert spent <= total and ledger.spent_usd == pytest.approx(spent)
    assert spent > total / 2  # it did get close
    assert state.stopped.startswith("budget: not even the smallest plan fits")
    assert "over what is left of the run's max_usd_total" in state.stopped
    assert state.not_run > 0 and state.ok > 0 and state.failed == 0
    queries = [r for r in read_trace(tmp_path / "t.jsonl") if r["type"] == "query"]
    shrunk = [r for r in queries if r["fitted"] is not None]
    assert shrunk and all(r["status"] == "ok" for r in shrunk)
    assert all(r["fitted"]["room_by"].startswith("what is left of the run's") for r in shrunk)
    assert ledger.reserved_usd == pytest.approx(0.0, abs=1e-12)


def test_batch_refuses_an_answers_file_of_another_pipeline(tmp_path):
    out = tmp_path / "a.jsonl"
    out.write_text(json.dumps({"id": "0", "status": "ok", "generator": "other"}) + "\n")

    async def main():
        async with FakeOpenAI(api_key=KEY) as srv:
            async with Runner(example_plan(srv, "moa_lite"), environ=ENV) as runner:
                await runner.run_batch([PromptItem("0", ("x",), "prompt", {"prompt": "x"})],
                                       str(out))

    with pytest.raises(RunError, match="holds answers of pipeline other"):
        arun(main())


def test_mt_bench_turns_see_the_conversation(tmp_path):
    questions = tmp_path / "question.jsonl"
    questions.write_text(json.dumps({"question_id": 81, "category": "writing",
                                     "turns": ["Write a poem.", "Now make it shorter."]}) + "\n")
    out = tmp_path / "a.jsonl"

    async def main():
        async with FakeOpenAI(api_key=KEY) as srv:
            async with Runner(example_plan(srv, "moa_lite"), environ=ENV) as runner:
                await runner.run_batch(load_prompts(str(questions)), str(out))
            return srv

    srv = arun(main())
    row = read_answers(str(out))[0]
    first, second = row["choices"][0]["turns"]
    assert row["id"] == "81" and row["status"] == "ok" and row["category"] == "writing"
    later = srv.requests[7]  # a proposer of turn 2
    assert later.body["messages"] == [{"role": "user", "content": "Write a poem."},
                                      {"role": "assistant", "content": first},
                                      {"role": "user", "content": "Now make it shorter."}]


def test_load_prompts_formats_and_errors(tmp_path):
    alpaca = tmp_path / "a.json"
    alpaca.write_text(json.dumps([{"instruction": "one", "output": "x"}, {"instruction": "two"}]))
    assert [(i.id, i.prompt, i.field) for i in load_prompts(str(alpaca))] == [
        ("0", "one", "instruction"), ("1", "two", "instruction")]
    lines = tmp_path / "b.jsonl"
    lines.write_text('{"id": "x", "prompt": "p"}\n\n{"question_id": 3, "turns": ["a", "b"]}\n')
    assert [(i.id, i.turns) for i in load_prompts(str(lines))] == [("x", ("p",)),
                                                                   ("3", ("a", "b"))]
    for text, message in (('{"prompt": ""}\n', "has no 'instruction'"),
                          ('{"id": 1, "prompt": "a"}\n{"id": 1, "prompt": "b"}\n', "repeats"),
                          ('{"prompt": "a"\n', "not a JSON line"), ('[1]', "not an object")):
        lines.write_text(text)
        with pytest.raises(RunError, match=message):
            load_prompts(str(lines))


def test_resume_bookkeeping(tmp_path):
    items = [PromptItem(str(i), (f"p{i}",), "prompt", {"prompt": f"p{i}"}) for i in range(3)]
    path = tmp_path / "a.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in [
        {"id": "2", "prompt": "p2", "status": "failed"},
        {"id": "0", "prompt": "p0", "status": "ok"},
        {"id": "1", "prompt": "changed", "status": "ok"},
        {"id": "2", "prompt": "p2", "status": "ok"},
        {"id": "9", "prompt": "other", "status": "ok"}]) + '\n{"id": "3", "pro')
    assert answered(read_answers(str(path)), items) == {"0", "2"}
    compact_answers(str(path), items)
    rows = read_answers(str(path))
    assert [(r["id"], r["status"]) for r in rows] == [("0", "ok"), ("1", "ok"), ("2", "ok"),
                                                       ("9", "ok")]


# --- the Python API ---------------------------------------------------------------------------

def test_python_api_one_many_and_streaming():
    async def main():
        async with FakeOpenAI(api_key=KEY) as srv:
            plan = example_plan(srv, "moa_lite")
            os.environ["FAKE_OPENAI_KEY"] = KEY
            try:
                one = await run_plan(plan, "first")
                many = await run_plan(plan, ["first", "second", "third"], concurrency=2)
            finally:
                del os.environ["FAKE_OPENAI_KEY"]
            async with Runner(plan, environ=ENV) as runner:
                stream = runner.stream("first")
                events = [event async for event in stream]
            return one, many, events, stream.result

    one, many, events, streamed = arun(main())
    assert one.ok and [r.query_id for r in many] == ["0", "1", "2"]
    assert many[0].answer == one.answer != many[1].answer
    assert all(isinstance(e, Delta) for e in events) and len(events) == 8
    assert "".join(e.text for e in events) == streamed.answer == one.answer
    assert not [e for e in events if isinstance(e, Restart)]
    assert one.raise_for_status() is one
