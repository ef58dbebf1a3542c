"""`moac eval` says what its judge failed to do, and what the planner cannot predict.

A judge whose verdicts cannot be parsed (SmolLM2 judging itself, say) used to leave
"judged 0 failed 0" and nothing else; `moac fit-router` then suggested running the very
evaluation again. Now the table, the report and fit-router's error count the unparsed
verdicts, quote what the judge wrote instead and point at a stronger judge. A pipeline whose
model declares no quality has "unknown" predicted quality, and a free pipeline ($0) is drawn.
"""

from __future__ import annotations

import asyncio
import json
import xml.etree.ElementTree as ET

import pytest
from fake_openai import Behavior, FakeOpenAI

import moac.cli.main as cli
from moac.evaluation.report import unparsed_note
from moac.evaluation.verdicts import excerpt
from moac.traces.trace import QualityRecord
from planner.features import query_features
from planner.learned import NothingParsed, examples_from_records

KEY = "sk-test-honest-0123456789abcdef"
ITEMS = [{"id": str(i), "prompt": f"question {i}", "reference": "a reference",
          "category": "writing"} for i in range(4)]


def source(url: str) -> str:
    return f'''
provider p {{
  kind = openai
  base_url = "{url}"
  api_key = env FAKE_OPENAI_KEY
  max_retries = 0
}}
model rated = p "m-rated" {{
  price = $1.00/M
  params = 10B
  context = 32k
  quality = 40
}}
model unrated = p "m-unrated" {{
  price = $0/M
  params = 1B
  context = 32k
}}
model mumbler = p "m-mumbler" {{
  price = $0/M
  params = 1B
  context = 32k
}}
model half = p "m-half" {{
  price = $0/M
  params = 1B
  context = 32k
}}
pipeline rated_alone {{
  aggregate rated
}}
pipeline free_alone {{
  aggregate unrated
}}
judge mumble {{
  model = mumbler
  protocol = single
}}
judge mumble_pairs {{
  model = mumbler
  protocol = pairwise
}}
judge half_scorer {{
  model = half
  protocol = single
}}
'''


def mumbling(messages) -> str:
    return "The assistant's answer is   quite\nhelpful and I would rate it highly overall " \
           "because it covers the main points of the question in detail."


def half(messages) -> str:
    """Scores question 0 and 1; mumbles on the rest."""
    text = messages[-1]["content"]
    return "Rating: [[7]]" if "question 0" in text or "question 1" in text else "seven"


def run_eval(tmp_path, monkeypatch, args: list[str]) -> int:
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("\n".join(json.dumps(i) for i in ITEMS) + "\n")

    async def main():
        async with FakeOpenAI(api_key=KEY) as server:
            server.set_default(Behavior(text="an answer"))
            server.responders["m-mumbler"] = mumbling
            server.responders["m-half"] = half
            path = tmp_path / "eval.moa"
            path.write_text(source(server.url))
            monkeypatch.setenv("FAKE_OPENAI_KEY", KEY)
            return await asyncio.to_thread(cli.main, [
                "eval", str(path), "--prompts", str(prompts), *args])

    return asyncio.run(main())


def rows(directory) -> dict:
    data = json.loads((directory / "report.json").read_text())
    return {row["pipeline"]: row for row in data["pipelines"]}


def test_every_verdict_unparsed_is_said_with_what_the_judge_wrote(tmp_path, monkeypatch,
                                                                   capsys):
    out = tmp_path / "out"
    code = run_eval(tmp_path, monkeypatch, ["--pipelines", "free_alone,rated_alone",
                                            "--judge", "mumble", "--report", str(out)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    row = rows(out)["free_alone"]
    assert row["judged"] == 0 and row["unparsed"] == 4
    assert row["unparsed_said"] == [excerpt(mumbling(None))]
    assert row["unparsed_said"][0].startswith("The assistant's answer is quite helpful")
    assert row["unparsed_said"][0].endswith("…") and len(row["unparsed_said"][0]) == 80
    table = captured.out
    assert ("free_alone: 4 answers judged but every verdict was unparsed (judge mumble "
            "(model mumbler) did not write a rating [[1]]..[[10]], it wrote e.g. \"The "
            "assistant's answer is quite helpful") in table
    assert "no quality was measured; a stronger judge model is needed" in table
    header = table.splitlines()[0].split()
    assert header[-3:] == ["judged", "unparsed", "failed"]
    free = next(line for line in table.splitlines() if line.startswith("free_alone "))
    assert free.split()[-3:] == ["0", "4", "0"]
    markdown = (out / "report.md").read_text()
    assert "- **free_alone: 4 answers judged but every verdict was unparsed" in markdown
    svg = ET.parse(out / "quality_cost.svg").getroot()
    texts = [t.text for t in svg.iter("{http://www.w3.org/2000/svg}text")]
    assert "no quality measured: every verdict was unparsed (8)" in texts
    # the judgments file keeps what was said, for a resumed run's report
    judged = [json.loads(line) for line in (out / "judgments" / "free_alone.jsonl")
              .read_text().splitlines()]
    assert all(j["judge_said"] == row["unparsed_said"][0] for j in judged)


def test_some_verdicts_unparsed_counts_them_and_free_pipelines_are_drawn(
        tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    code = run_eval(tmp_path, monkeypatch, ["--pipelines", "free_alone,rated_alone",
                                            "--judge", "half_scorer", "--report", str(out)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    free = rows(out)["free_alone"]
    assert free["judged"] == 2 and free["unparsed"] == 2 and free["mean_score"] == 7
    assert ('free_alone: 2 of 4 verdicts unparsed (judge half_scorer (model half) did not '
            'write a rating [[1]]..[[10]], it wrote e.g. "seven"); left out of the quality'
            ) in captured.out
    # a $0 pipeline with a measured score is on the picture, at the "$0" slot
    svg = ET.parse(out / "quality_cost.svg").getroot()
    ns = "{http://www.w3.org/2000/svg}"
    texts = {t.text: t for t in svg.iter(ns + "text")}
    assert "free_alone" in texts and "rated_alone" in texts and "$0" in texts
    label = texts["free_alone"]
    assert float(label.get("x")) - 8 == pytest.approx(float(texts["$0"].get("x")), abs=0.2)


def test_unknown_predicted_quality_is_printed_unknown(tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    code = run_eval(tmp_path, monkeypatch, ["--pipelines", "free_alone,rated_alone",
                                            "--judge", "half_scorer", "--report", str(out)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    free, rated = rows(out)["free_alone"], rows(out)["rated_alone"]
    assert free["predicted"] == {"quality": None, "unknown_quality": ["unrated"],
                                 "usd": 0.0}
    assert rated["predicted"]["quality"] == pytest.approx(40)
    lines = {line.split()[0]: line.split() for line in captured.out.splitlines()[1:3]}
    assert lines["free_alone"][3] == "unknown" and lines["rated_alone"][3] == "40.0"
    assert "predicted unknown: unrated declares no `quality`" in captured.out
    markdown = (out / "report.md").read_text()
    assert "| free_alone | 7.00 (7.00-7.00) | unknown |" in markdown
    assert "- `free_alone`: predicted quality unknown: unrated declares no `quality`" \
        in markdown


def test_the_note_is_none_without_unparsed_verdicts():
    judge = {"name": "j", "model": "m", "protocol": "pairwise"}
    assert unparsed_note({"pipeline": "p", "judged": 3, "unparsed": 0}, judge) is None
    note = unparsed_note({"pipeline": "p", "judged": 0, "unparsed": 1}, judge)
    assert "1 answer judged but every verdict was unparsed" in note
    assert "did not write [[A]]/[[B]]/[[C]])" in note  # nothing quoted: nothing recorded


# --- fit-router ------------------------------------------------------------------------

def quality_records(parsed: bool, judge: str = "weak", pipelines=("big", "small"),
                    n: int = 12) -> list[dict]:
    out = []
    for index in range(n):
        features = [float(v) for v in query_features(f"question {index}").vector()]
        for pipeline in pipelines:
            out.append(QualityRecord(
                run_id="r", query_id=str(index), pipeline=pipeline, judge=judge,
                protocol="pairwise", preference=0.5 if parsed else None, parsed=parsed,
                verdicts=["A", "B"] if parsed else [None, None], features=features,
            ).model_dump(mode="json"))
    return out


def test_examples_from_records_says_every_verdict_was_unparsed():
    with pytest.raises(NothingParsed) as caught:
        examples_from_records(quality_records(parsed=False), "big", "small")
    message = str(caught.value)
    assert message.startswith("24 answers of big and small were judged but every verdict "
                              "was unparsed (judge weak did not write [[A]]/[[B]]/[[C]])")
    assert "a stronger judge model is needed" in message
    # one pipeline parsed, the other not: no pair, and it says why
    mixed = quality_records(True, pipelines=("big",)) + quality_records(
        False, pipelines=("small",))
    with pytest.raises(NothingParsed, match="12 of 24 verdicts on big and small were "
                                            "unparsed"):
        examples_from_records(mixed, "big", "small")
    # a parsed judge beside an unparsed one is used as before
    both = quality_records(True, judge="strong") + quality_records(False)
    assert len(examples_from_records(both, "big", "small")) == 12
    # failed judge calls are not "unparsed": nothing to say about the judge's format
    failed = [dict(r, error="timeout") for r in quality_records(parsed=False)]
    assert examples_from_records(failed, "big", "small") == []


def test_fit_router_does_not_suggest_running_the_same_eval_again(tmp_path, capsys):
    traces = tmp_path / "t.jsonl"
    traces.write_text("".join(json.dumps(r) + "\n" for r in quality_records(parsed=False)))
    code = cli.main(["fit-router", str(traces), "--larger", "big", "--smaller", "small",
                     "-o", str(tmp_path / "router.json")])
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1
    assert "every verdict was unparsed (judge weak did not write [[A]]/[[B]]/[[C]])" in err
    assert "moac eval --pipelines" not in err and "stronger judge" in err
    assert not (tmp_path / "router.json").exists()
    # nothing judged at all: the old advice stands
    traces.write_text("")
    assert cli.main(["fit-router", str(traces), "--larger", "big", "--smaller", "small",
                     "-o", str(tmp_path / "router.json")]) == 1
    assert "moac eval --pipelines big,small" in capsys.readouterr().err
