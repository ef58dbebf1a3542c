"""``moac eval`` end to end against a real local server whose judge is scripted, so that the
right numbers are known: win rates, unparseable verdicts, MT-Bench-style scores, quality
traces, resuming, and record then replay.
"""

from __future__ import annotations

import asyncio
import json
import re

import pytest
from fake_openai import Behavior, FakeOpenAI

import moac.cli.main as cli
from moac.traces.trace import read_trace

KEY = "sk-test-eval-0123456789abcdef"
ITEMS = [
    {"id": "a", "prompt": "question a", "reference": "plain reference", "category": "writing"},
    {"id": "b", "prompt": "question b", "reference": "GOOD reference", "category": "writing"},
    {"id": "c", "prompt": "question c", "reference": "plain reference", "category": "math"},
    {"id": "d", "prompt": "UNPARSEABLE question", "reference": "plain", "category": "math"},
]


def source(url: str) -> str:
    models = "".join(f'''
model {name} = p "m-{name}" {{
  price = $1.00/M
  params = 10B
  context = 32k
  quality = {quality}
}}''' for name, quality in (("good", 40), ("bad", 20), ("judge", 50)))
    return f'''
provider p {{
  kind = openai
  base_url = "{url}"
  api_key = env FAKE_OPENAI_KEY
  max_retries = 0
}}
{models}
pipeline good_alone {{
  aggregate good
}}
pipeline bad_alone {{
  aggregate bad
}}
route pick {{
  candidates = [good_alone, bad_alone]
  policy = [budget]
}}
judge pair {{
  model = judge
  protocol = pairwise
}}
judge scorer {{
  model = judge
  protocol = single
  max_tokens = 256
}}
'''


def _block(text: str, name: str) -> str:
    """Side ``name``'s answer or conversation, in moac's or MT-Bench's pairwise prompts."""
    found = re.search(rf"The Start of (?:Answer|Assistant) {name}\b(.*?)The End of "
                      rf"(?:Answer|Assistant) {name}\b", text, re.S)
    return found.group(1) if found else ""


def scripted_judge(messages) -> str:
    """Prefers the answer that says GOOD; with no difference it says [[A]] (a position
    bias, which judging both orders turns into a tie). Single: 8 for GOOD, else 3."""
    text = messages[-1]["content"]
    if "UNPARSEABLE" in text:
        return "I would rather not say."
    if "The Start of Answer A" in text or "The Start of Assistant A" in text:
        a, b = "GOOD" in _block(text, "A"), "GOOD" in _block(text, "B")
        return "Answer B is better. [[B]]" if b and not a else "Answer A is better. [[A]]"
    return "Rating: [[8]]" if "GOOD answer" in text else "Rating: [[3]]"


def run_eval(tmp_path, monkeypatch, args: list[str], *, serve: bool = True):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("\n".join(json.dumps(i) for i in ITEMS) + "\n")

    async def main():
        async with FakeOpenAI(api_key=KEY) as server:
            server.set_default(Behavior(text="GOOD answer here"), model="m-good")
            server.set_default(Behavior(text="a bad answer"), model="m-bad")
            server.responders["m-judge"] = scripted_judge
            path = tmp_path / "eval.moa"
            path.write_text(source(server.url if serve else "http://127.0.0.1:9/v1"))
            monkeypatch.setenv("FAKE_OPENAI_KEY", KEY)
            code = await asyncio.to_thread(cli.main, [
                "eval", str(path), "--prompts", str(prompts), *args])
            return code, list(server.requests)

    return asyncio.run(main())


def report(directory) -> dict:
    data = json.loads((directory / "report.json").read_text())
    return {row["pipeline"]: row for row in data["pipelines"]}


def test_pairwise_win_rates_are_the_known_ones(tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    code, requests = run_eval(tmp_path, monkeypatch, [
        "--pipelines", "good_alone,bad_alone", "--judge", "pair", "--report", str(out)])
    assert code == 0, capsys.readouterr().err
    rows = report(out)
    good, bad = rows["good_alone"], rows["bad_alone"]
    # good: wins a and c in both orders, ties b (both GOOD); d is unparseable
    assert good["win_rate"] == pytest.approx(100 * 2.5 / 3)
    assert bad["win_rate"] == pytest.approx(100 * 1.0 / 3)
    assert good["judged"] == bad["judged"] == 3 and good["unparsed"] == bad["unparsed"] == 1
    assert good["win_rate_interval"][0] <= good["win_rate"] <= good["win_rate_interval"][1]
    assert good["lc_win_rate"] is not None and good["usd_per_query"] > 0
    assert good["predicted"]["quality"] == pytest.approx(40)
    assert good["pareto"] is True
    judge_calls = [r for r in requests if r.body["model"] == "m-judge"]
    assert len(judge_calls) == 2 * 4 * 2  # two pipelines, four items, both orders

    records = read_trace(out / "trace.jsonl")
    quality = [r for r in records if r["type"] == "quality"]
    assert len(quality) == 8
    unparsed = [r for r in quality if not r["parsed"]]
    assert {r["query_id"] for r in unparsed} == {"d"}
    assert all(r["preference"] is None and r["verdicts"] == [None, None] for r in unparsed)
    good_a = next(r for r in quality if r["pipeline"] == "good_alone" and r["query_id"] == "a")
    answering = {r["run_id"] for r in records if r["type"] == "run"
                 and r["pipeline"] == "good_alone"}
    assert good_a["answer_run_id"] in answering
    assert good_a["verdicts"] == ["A", "B"] and good_a["preference"] == 1.0
    assert any(r["type"] == "call" and r["pipeline"] == "judge:pair" for r in records)
    from moac.traces.summarize import render_summary, summarize
    summary = render_summary(summarize(records))
    assert "  good_alone  judge pair (pairwise): 83.3% over 3 verdicts, 1 unparsed or failed" \
        in summary
    markdown = (out / "report.md").read_text()
    assert "| good_alone | " in markdown and (out / "quality_cost.svg").exists()
    stdout = capsys.readouterr().out
    assert stdout.splitlines()[0].split()[:2] == ["pipeline", "quality"]


def test_single_scores_by_category(tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    code, _ = run_eval(tmp_path, monkeypatch, [
        "--pipelines", "good_alone,bad_alone", "--judge", "scorer", "--report", str(out)])
    assert code == 0, capsys.readouterr().err
    rows = report(out)
    assert rows["good_alone"]["mean_score"] == pytest.approx(8.0)
    assert rows["bad_alone"]["mean_score"] == pytest.approx(3.0)
    scores = rows["good_alone"]["scores"]
    assert scores["writing"]["n"] == 2 and scores["math"]["n"] == 1
    assert scores["math"]["ignored"] == 1  # d: unparseable, counted, left out


def test_running_again_resumes_and_pays_for_nothing(tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    args = ["--pipelines", "good_alone", "--judge", "pair", "--report", str(out)]
    first, requests = run_eval(tmp_path, monkeypatch, args)
    assert first == 0 and len(requests) == 4 + 8
    again, requests = run_eval(tmp_path, monkeypatch, args)
    assert again == 0 and requests == []  # answers and judgments reused
    assert report(out)["good_alone"]["win_rate"] == pytest.approx(100 * 2.5 / 3)


def test_record_then_replay_reproduces_the_evaluation_for_free(tmp_path, monkeypatch,
                                                                capsys):
    cache = str(tmp_path / "cache.sqlite")
    args = ["--pipelines", "good_alone,bad_alone", "--judge", "pair"]
    code, _ = run_eval(tmp_path, monkeypatch, args + ["--report", str(tmp_path / "rec"),
                                                      "--record", cache])
    assert code == 0
    code, requests = run_eval(tmp_path, monkeypatch, args + [
        "--report", str(tmp_path / "rep"), "--replay", cache], serve=False)
    assert code == 0 and requests == []
    recorded, replayed = report(tmp_path / "rec"), report(tmp_path / "rep")
    for name in ("good_alone", "bad_alone"):
        assert replayed[name]["win_rate"] == recorded[name]["win_rate"]
        assert replayed[name]["lc_interval"] == recorded[name]["lc_interval"]
        # nothing billed, yet the pipeline's cost is what it would be
        assert replayed[name]["billed_usd_per_query"] == 0 and replayed[name]["judge_usd"] == 0
        assert replayed[name]["usd_per_query"] == pytest.approx(recorded[name]["usd_per_query"])
    answers = [json.loads(line)["output"] for line in
               open(tmp_path / "rep" / "answers" / "good_alone.jsonl")]
    assert answers == ["GOOD answer here"] * 4


def test_eval_usage_errors(tmp_path, monkeypatch, capsys):
    out = str(tmp_path / "out")
    code, requests = run_eval(tmp_path, monkeypatch, ["--pipelines", "nope", "--judge", "pair",
                                                      "--report", out])
    assert code == 2 and requests == []
    assert "no pipeline or route named 'nope'" in capsys.readouterr().err
    code, _ = run_eval(tmp_path, monkeypatch, ["--pipelines", "good_alone", "--report", out])
    assert code == 2 and "choose a judge with --judge (pair, scorer)" in capsys.readouterr().err
    code, _ = run_eval(tmp_path, monkeypatch, ["--pipelines", "single:nobody", "--judge",
                                               "pair", "--report", out])
    assert code == 2 and "no model named 'nobody'" in capsys.readouterr().err


def test_a_pairwise_judge_without_references_stops_before_any_call(tmp_path, monkeypatch,
                                                                   capsys):
    bare = tmp_path / "bare.jsonl"
    bare.write_text(json.dumps({"id": 1, "prompt": "no reference here"}) + "\n")

    async def main():
        async with FakeOpenAI(api_key=KEY) as server:
            path = tmp_path / "eval.moa"
            path.write_text(source(server.url))
            monkeypatch.setenv("FAKE_OPENAI_KEY", KEY)
            code = await asyncio.to_thread(cli.main, [
                "eval", str(path), "--prompts", str(bare), "--pipelines", "good_alone",
                "--judge", "pair", "--report", str(tmp_path / "out")])
            return code, list(server.requests)

    code, requests = asyncio.run(main())
    assert code == 1 and requests == []
    assert "have none" in capsys.readouterr().err


def test_single_model_pipelines_and_a_reference_pipeline(tmp_path, monkeypatch, capsys):
    """`reference = bad_alone` in the judge: the references are bad_alone's own answers."""
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("\n".join(json.dumps({"id": i, "prompt": f"q{i}"}) for i in range(3)))

    async def main():
        async with FakeOpenAI(api_key=KEY) as server:
            server.set_default(Behavior(text="GOOD answer here"), model="m-good")
            server.set_default(Behavior(text="a bad answer"), model="m-bad")
            server.responders["m-judge"] = scripted_judge
            path = tmp_path / "eval.moa"
            path.write_text(source(server.url).replace(
                "protocol = pairwise", "protocol = pairwise\n  reference = bad_alone"))
            monkeypatch.setenv("FAKE_OPENAI_KEY", KEY)
            return await asyncio.to_thread(cli.main, [
                "eval", str(path), "--prompts", str(prompts), "--pipelines", "single:good",
                "--judge", "pair", "--report", str(tmp_path / "out")])

    assert asyncio.run(main()) == 0, capsys.readouterr().err
    assert report(tmp_path / "out")["single:good"]["win_rate"] == pytest.approx(100.0)
    assert (tmp_path / "out" / "answers" / "reference-bad_alone.jsonl").exists()


def test_a_route_is_evaluated_like_a_pipeline(tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    code, _ = run_eval(tmp_path, monkeypatch, [
        "--pipelines", "pick", "--judge", "pair", "--report", str(out)])
    assert code == 0, capsys.readouterr().err
    row = report(out)["pick"]
    assert row["routed_to"] == {"good_alone": 4}
    assert row["win_rate"] == pytest.approx(100 * 2.5 / 3)
    assert row["predicted"]["quality"] == pytest.approx(40)
    quality = [r for r in read_trace(out / "trace.jsonl") if r["type"] == "quality"]
    assert {r["routed_to"] for r in quality} == {"good_alone"}
    assert all(len(r["features"]) == 8 for r in quality)


def test_max_usd_total_bounds_answers_and_judging_together(tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    total = 0.0025
    code, requests = run_eval(tmp_path, monkeypatch, [
        "--pipelines", "good_alone,bad_alone", "--judge", "pair", "--report", str(out),
        "--max-usd-total", f"${total}"])
    err = capsys.readouterr().err
    assert code == 1 and "--max-usd-total $0.0025 (reached" in err
    calls = [r for r in read_trace(out / "trace.jsonl") if r["type"] == "call"]
    assert 0 < sum(r["cost_usd"] for r in calls) <= total
    rows = report(out)
    assert rows["good_alone"]["answered"] >= 1  # some work was done, not all of it
    assert sum(r["answered"] + r["judged"] for r in rows.values()) < 2 * (4 + 4)


def test_conversations_are_judged_pairwise_with_mt_bench_prompts(tmp_path, monkeypatch, capsys):
    """Two-turn items: turn 1 with pair-v2, turn 2 with pair-v2-multi-turn (both
    conversations shown), each in both orders."""
    prompts = tmp_path / "talks.jsonl"
    prompts.write_text("\n".join(json.dumps({"id": f"t{i}", "turns": ["first?", "second?"],
                                              "reference": ["plain one", "plain two"]})
                                  for i in range(2)) + "\n")
    seen = []

    async def main():
        async with FakeOpenAI(api_key=KEY) as server:
            server.set_default(Behavior(text="GOOD answer here"), model="m-good")
            server.responders["m-judge"] = lambda m: seen.append(m) or scripted_judge(m)
            path = tmp_path / "eval.moa"
            path.write_text(source(server.url))
            monkeypatch.setenv("FAKE_OPENAI_KEY", KEY)
            return await asyncio.to_thread(cli.main, [
                "eval", str(path), "--prompts", str(prompts), "--pipelines", "good_alone",
                "--judge", "pair", "--report", str(tmp_path / "out")])

    assert asyncio.run(main()) == 0, capsys.readouterr().err
    assert report(tmp_path / "out")["good_alone"]["win_rate"] == pytest.approx(100.0)
    assert report(tmp_path / "out")["good_alone"]["judged"] == 4  # 2 items x 2 turns
    later = [m for m in seen if "Conversation with User" in m[-1]["content"]]
    assert len(later) == 4  # turn 2 of each item, both orders
    assert all("second?" in m[-1]["content"] and "first?" in m[-1]["content"] for m in later)
