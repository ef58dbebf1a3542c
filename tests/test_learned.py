"""The learned route policy: fitted from judged traces (``moac fit-router``), read by a
route (``policy = [learned]``, ``router = "..."``), and choosing per query."""

from __future__ import annotations

import json

import pytest

import moac
import moac.cli.main as cli
from moac.traces.trace import QualityRecord
from planner.features import query_features
from planner.learned import examples_from_records, fit_router, load_router
from planner.route import assess, choose_before_calls

CODE = ["Write a Python function that {} a list.", "Fix the bug in this SQL query: {}",
        "Implement {} in JavaScript with a regex."]
PROSE = ["Write a short poem about {}.", "Write a friendly email about {}.",
         "Rewrite this story about {} as a tweet."]
WORDS = ["sorts", "reverses", "merges", "filters", "counts", "joins", "flattens", "groups",
         "splits", "dedupes", "zips", "rotates"]


def records() -> list[dict]:
    """MoA beats MoA-Lite on code questions, ties on prose (where Lite is enough)."""
    out = []
    for index, word in enumerate(WORDS * 2):
        for template, moa_wins in ((CODE[index % 3], True), (PROSE[index % 3], False)):
            text = template.format(word) + f" (case {index})"
            features = [float(v) for v in query_features(text).vector()]
            for pipeline, preference, usd in (("moa", 1.0 if moa_wins else 0.5, 0.02),
                                              ("moa_lite", 0.5, 0.01)):
                out.append(QualityRecord(
                    run_id="r", query_id=f"{template[:10]}-{index}", pipeline=pipeline,
                    judge="j", protocol="pairwise", preference=preference, parsed=True,
                    verdicts=["A", "B"], answer_cost_usd=usd, features=features,
                ).model_dump(mode="json"))
    return out


def test_the_fit_learns_when_the_larger_pipeline_wins():
    examples = examples_from_records(records(), "moa", "moa_lite")
    assert len(examples) == 48 and sum(e.label for e in examples) == 24
    router, report = fit_router(examples, "moa", "moa_lite")
    assert report.held_out_accuracy >= 0.9 and report.majority_accuracy == 0.5
    learned, always = report.policies["learned"], report.policies["always moa"]
    assert learned["quality"] == pytest.approx(always["quality"], abs=0.03)
    assert learned["usd"] < always["usd"]
    assert router.probability("Write a Python function that sorts a list.") > 0.5
    assert router.probability("Write a short poem about the sea.") < 0.5
    assert "held-out accuracy (5-fold)" in report.render("moa", "moa_lite")


def test_too_few_judged_queries_is_an_error():
    with pytest.raises(ValueError, match="fitting needs at least 10"):
        fit_router(examples_from_records(records()[:8], "moa", "moa_lite"), "moa", "moa_lite")


def test_fit_router_then_route_with_it(tmp_path, capsys):
    traces = tmp_path / "quality.jsonl"
    traces.write_text("".join(json.dumps(r) + "\n" for r in records()))
    router_path = tmp_path / "router.json"
    assert cli.main(["fit-router", str(traces), "--larger", "moa", "--smaller", "moa_lite",
                     "-o", str(router_path)]) == 0
    assert "held-out accuracy" in capsys.readouterr().out
    assert load_router(str(router_path)).trained_on == 48

    examples = moac.compile_file("examples/moa_lite.moa")  # noqa: F841 - the catalog exists
    source = tmp_path / "learned.moa"
    source.write_text(f'import "{(tmp_path.parent / "x").as_posix()[:0]}'
                      + str((__import__("pathlib").Path("examples/moa_lite.moa")).resolve())
                      + '"\n\nroute smart {\n  candidates = [moa, moa_lite]\n'
                      '  policy = [learned]\n  router = "router.json"\n}\n')
    plan = moac.compile_file(source).route_plan("smart")
    candidates = assess(plan.plans, 20, plan.budget)
    code = choose_before_calls(plan.route, candidates, "Write a Python function that sorts.")
    prose = choose_before_calls(plan.route, candidates, "Write a short poem about autumn.")
    assert code.target == "moa" and prose.target == "moa_lite"
    step = prose.decisions[-1]
    assert step.policy == "learned" and step.alternatives == ("moa",)
    assert step.numbers["probability"] < 0.5 and step.numbers["held_out_accuracy"] >= 0.9


def test_a_router_for_other_candidates_is_a_compile_error(tmp_path, capsys):
    (tmp_path / "router.json").write_text(json.dumps({
        "format": "moac-router", "version": 1, "larger": "big", "smaller": "small",
        "coefficients": [0.0] * 8,
        "feature_names": ["bias", "log1p_tokens", "is_code", "is_maths", "is_reasoning",
                          "is_writing", "is_open", "is_chat"]}))
    moa_lite = str(__import__("pathlib").Path("examples/moa_lite.moa").resolve())
    source = tmp_path / "bad.moa"
    source.write_text(f'import "{moa_lite}"\n\nroute smart {{\n  candidates = [moa, moa_lite]\n'
                      '  policy = [learned]\n  router = "router.json"\n}\n')
    assert cli.main(["check", str(source)]) == 1
    assert "error[E507]: the router chooses between big and small" in capsys.readouterr().err


def test_fit_router_keeps_judges_apart_and_never_overwrites_a_trace(tmp_path, capsys):
    mixed = records() + [dict(r, judge="other", preference=0.0 if r["pipeline"] == "moa"
                              else 1.0) for r in records()]
    traces = tmp_path / "quality.jsonl"
    traces.write_text("".join(json.dumps(r) + "\n" for r in mixed))
    base = ["fit-router", str(traces), "--larger", "moa", "--smaller", "moa_lite"]
    assert cli.main(base + ["-o", str(traces)]) == 2
    assert "would overwrite a trace" in capsys.readouterr().err
    assert cli.main(base + ["-o", str(tmp_path / "r.json")]) == 1
    assert "several judges (j, other)" in capsys.readouterr().err
    assert cli.main(base + ["-o", str(tmp_path / "r.json"), "--judge", "j"]) == 0
    assert load_router(str(tmp_path / "r.json")).probability("Write a short poem.") < 0.5
    assert cli.main(base + ["-o", str(tmp_path / "o.json"), "--judge", "other"]) == 0
    # the other judge prefers moa_lite everywhere: never worth the larger pipeline
    assert load_router(str(tmp_path / "o.json")).probability("Write Python code.") < 0.5
