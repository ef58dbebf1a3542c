"""A model that declares no `quality` has no prior: every prediction resting on it is reported
as unknown, never as the number the search ranks with, and no quality dominance is claimed
for it. Costs are still shown and compared; the budget policy still chooses, by a stated rule.
"""

from __future__ import annotations

import json
import re

import pytest

import moac
from moac.cli.main import main
from moac.ir.spec import BudgetSpec, RouteSpec
from planner import MoaQualityModel, frontier, frontier_table, point_of, prune, render
from planner.constants import UNKNOWN_QUALITY
from planner.frontier import Point
from planner.quality import predicted_or_none, unknown_models
from planner.route import assess, choose_before_calls

from conftest import EXAMPLES

LOCAL = str(EXAMPLES / "local.moa")
CATALOG = (EXAMPLES / "catalog.moa").as_posix()
# A number with one decimal where a predicted quality would stand in the tables.
NUMBER = re.compile(r"^\s+\d*\s+\d+\.\d\s")

MIXED = f'''import "{CATALOG}"

model newbie = together "new/model" {{
  price = $0.50/M
  params = 8B
  context = 32k
  length = 300 tok
}}

pipeline mixed {{
  max_tokens = 512
  layer propose = [qwen72, wizardlm, newbie]
  aggregate qwen110
}}

pipeline known_only {{
  max_tokens = 512
  layer propose = [qwen72, wizardlm]
  aggregate qwen110
}}

pipeline backed_up {{
  max_tokens = 512
  layer propose = [qwen72, wizardlm]
  aggregate qwen110 fallback newbie
}}
'''

FREE = '''
provider local {
  kind = local
  parallel = 3
}
model smollm2 = local "SmolLM2-135M-Instruct" {
  price = $0/M
  params = 135M
  context = 4k
  speed = 10ms ttft, 100 tok/s, 265 tok/s prefill
  length = 96 tok
}
model smollm2_q = local "SmolLM2-135M-Instruct" {
  price = $0/M
  params = 135M
  context = 4k
  speed = 10ms ttft, 100 tok/s, 265 tok/s prefill
  length = 96 tok
  quality = 5
}
pipeline alone {
  aggregate smollm2
}
pipeline three {
  layer propose = smollm2 x 3 (seed = 1)
  aggregate smollm2
}
pipeline deep from three {
  layer refine = smollm2 x 2
}
pipeline rated {
  aggregate smollm2_q
}
route r {
  candidates = [alone, three, deep]
  policy = [budget, agreement]
}
route tie {
  candidates = [three, alone]
  policy = [budget]
}
route mixed {
  candidates = [rated, three]
  policy = [budget, preroute]
  usd_per_point = $1
}
'''


def program(source: str, name: str = "t.moa"):
    return moac.compile_string(source, name)


# --- the quality model -----------------------------------------------------------------

def test_unknown_models_are_those_the_prediction_reads():
    p = program(MIXED)
    model = MoaQualityModel()
    assert unknown_models(model, p.plan("mixed")) == ["newbie"]
    assert predicted_or_none(model, p.plan("mixed")) is None
    assert predicted_or_none(model, p.plan("known_only")) == pytest.approx(
        model.predict(p.plan("known_only")))
    # A fallback that never aggregates is not read: the prediction stays known.
    assert model.known(p.plan("backed_up"))


def test_a_point_of_unknown_quality_neither_dominates_nor_is_dominated():
    known = Point("k", 50, 0.01, 1.0, 1.0)
    unknown = Point("u", 90, 0.001, 0.1, 0.1, known=False)  # better "quality", cheaper
    worse_unknown = Point("w", 10, 1.0, 10.0, 10.0, known=False)
    assert not unknown.dominates(known) and not known.dominates(worse_unknown)
    assert not unknown.dominates(worse_unknown)
    assert Point("k2", 60, 0.001, 1.0, 1.0).dominates(known)  # known ones as before


# --- moac plan -----------------------------------------------------------------------------

def test_moac_plan_on_the_local_example_prints_no_quality_number(capsys):
    assert main(["plan", LOCAL, "-p", "local_self_moa"]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if "-> smollm2" in line or "local_" in line]
    assert rows and all(" unknown " in line for line in rows)
    assert not [line for line in out.splitlines() if NUMBER.match(line)]
    assert f"{UNKNOWN_QUALITY:.1f}" not in out and "44.9" not in out
    assert "dominated" not in out  # no quality dominance claimed
    assert "local_self_moa: quality unknown, so not compared" in out
    assert "smollm2 declares no `quality`" in out
    assert "0 on the Pareto frontier, 4 of unknown quality" in out
    # the costs are still shown, TFLOPs of a tiny model readable, not rounded to 0
    assert re.search(r"\$0\.0000\s+5\.7s\s+0\.513\s+local_self_moa", out)


def test_a_mixed_frontier_keeps_known_plans_and_lists_unknown_ones_apart():
    p = program(MIXED)
    plan = p.plan("mixed")
    quality = MoaQualityModel.of(plan)
    front = frontier(plan, 256, "expected", quality)
    newbie = 2  # its position in layer propose
    assert front.pareto and all(p.known for p in front.pareto)
    assert all(newbie not in p.choice.keep[0] for p in front.pareto)
    assert front.unknown and all(not p.known for p in front.unknown)
    assert all(newbie in p.choice.keep[0] for p in front.unknown)
    assert len(front.unknown) == 4  # newbie with any subset of the other two
    assert [p.usd for p in front.unknown] == sorted(p.usd for p in front.unknown)
    assert front.unknown_models == ("newbie",)
    named = [point_of(p.plan(n), n, 256, "expected", quality) for n in p.pipelines]
    text = frontier_table(front, named)
    assert "sub-plans of unknown quality, cheapest first" in text
    assert "mixed: quality unknown, so not compared" in text
    assert re.search(r"known_only: (on the frontier|dominated by)", text)
    for line in text.splitlines():
        if "newbie" in line and "->" in line or "propose[all]" in line:
            assert " unknown " in line


def test_the_unknown_list_is_bounded():
    # distinct max_tokens make the copies distinct agents: 2**8 sub-plans
    source = FREE + "pipeline many {\n  layer propose = [" + ", ".join(
        f"smollm2 (max_tokens = {40 + i})" for i in range(8)) + "]\n  aggregate smollm2\n}\n"
    front = frontier(program(source).plan("many"), 256)
    assert len(front.unknown) == 256 and not front.pareto
    text = frontier_table(front)
    rows = [line for line in text.splitlines() if re.match(r"^\s+\d+ unknown ", line)]
    assert len(rows) == 12 and "  ... and 244 more" in text
    assert "quality against" not in text  # no staircase without a known quality


def test_candidates_of_unknown_quality_carry_no_number():
    candidates = assess(program(FREE).route_plan("r").plans, 256, BudgetSpec())
    assert all(not c.known and c.predicted is None for c in candidates)
    assert all(c.numbers()["quality"] is None and c.numbers()["quality_unknown"] == ["smollm2"]
               for c in candidates)


def test_route_table_prints_unknown(tmp_path, capsys):
    path = tmp_path / "free.moa"
    path.write_text(FREE)
    assert main(["plan", str(path), "-p", "r"]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines()[2:5]]
    assert [line.split()[1] for line in rows] == ["unknown"] * 3
    assert "quality unknown: smollm2 declares no quality" in out
    # free candidates are told apart by their compute: three can take over from deep
    assert "three can take over from deep after 1 shared layer" in out


# --- routing ----------------------------------------------------------------------------

def choose(route: str, budget: BudgetSpec | None = None):
    route_plan = program(FREE).route_plan(route)
    budget = budget or route_plan.budget
    return choose_before_calls(route_plan.route, assess(route_plan.plans, 256, budget),
                               "Why is the sky blue?")


def test_the_budget_policy_takes_the_fitting_candidate_that_spends_the_most():
    choice = choose("r")
    budget = choice.decisions[0]
    assert budget.policy == "budget" and budget.chosen == "deep" == choice.target
    assert "quality unknown for alone, three, deep" in budget.reason
    assert "smollm2 declares no quality" in budget.reason and "spends the most" in budget.reason
    assert all(row["quality"] is None for row in budget.numbers["candidates"].values())
    # the agreement step still has a cheaper candidate to exit to
    assert choice.early_exit == "three" and choice.shared == 1


def test_over_budget_candidates_are_still_dropped_and_the_choice_is_deterministic():
    deep = assess(program(FREE).route_plan("r").plans, 256, BudgetSpec())[2]
    bound = BudgetSpec(max_latency_s=deep.estimate.latency_s - 0.5)
    first, second = choose("r", bound), choose("r", bound)
    assert first.target == second.target == "three"
    assert "deep over budget" in first.decisions[0].reason
    # equal costs: the first listed
    assert choose("tie").target == "three"


def test_preroute_cannot_price_an_unknown_gain_and_keeps_the_budgets_choice():
    choice = choose("mixed")
    budget, preroute = choice.decisions
    assert budget.chosen == "three" and "quality unknown for three" in budget.reason
    assert preroute.policy == "preroute" and preroute.chosen == "three"
    assert preroute.numbers["average_gain"] is None and "cannot be priced" in preroute.reason


def test_routes_of_known_quality_choose_as_before():
    route = RouteSpec(name="x", candidates=("known_only", "single"))
    source = MIXED + "pipeline single {\n  aggregate qwen72\n}\n"
    plans = {n: program(source).plan(n) for n in route.candidates}
    candidates = assess(plans, 256, BudgetSpec())
    assert all(c.known for c in candidates)
    choice = choose_before_calls(route, candidates, "hi")
    best = max(candidates, key=lambda c: c.quality)
    assert choice.target == best.name == "known_only"
    assert choice.decisions[0].reason == (f"known_only has the best predicted quality "
                                          f"({best.quality:.1f})")


# --- pruning ------------------------------------------------------------------------------

def test_pruning_reports_unknown_quality_and_keeps_the_format(tmp_path, capsys):
    out = tmp_path / "plan.json"
    assert main(["compile", LOCAL, "-p", "local_self_moa", "--max-latency", "5s",
                 "-o", str(out)]) == 0
    err = capsys.readouterr().err
    assert re.search(r"before\s+unknown", err) and re.search(r"after\s+unknown", err)
    assert "dropped smollm2 (seed 2) from layer propose: quality unknown, -24% TFLOPs" in err
    assert "quality unknown: smollm2 declares no quality" in err
    assert not re.search(r"[-+]\d+\.\d quality", err) and "20.0" not in err
    data = json.loads(out.read_text())
    info = data["annotations"]["planner"]
    assert info["before"]["quality"] is None and info["after"]["quality"] is None
    assert all(d["quality"] is None for d in info["drops"])
    loaded = moac.Plan.from_json(out.read_text())
    assert render(loaded.annotations["planner"], timing=False) == render(info, timing=False)


def test_a_prune_out_of_unknown_quality_has_a_number_again():
    p = program(MIXED)
    info = prune(p.plan("mixed"), BudgetSpec(max_usd=0.0035)).annotations["planner"]
    assert info["plan"] == "propose[wizardlm] -> qwen110"  # newbie dropped: known again
    assert info["before"]["quality"] is None and info["after"]["quality"] == pytest.approx(
        MoaQualityModel().predict(prune(p.plan("mixed"), BudgetSpec(max_usd=0.0035))),
        abs=1e-3)
    # each step starts from a plan resting on newbie: its change is unknown
    assert [d["quality"] for d in info["drops"]] == [None, None]
    text = render(info, timing=False)
    assert re.search(r"before\s+unknown", text) and re.search(r"after\s+50\.0", text)
    # a budget the search meets with newbie kept: unknown after as well
    info = prune(p.plan("mixed"), BudgetSpec(max_usd=0.0025)).annotations["planner"]
    assert "newbie" in info["plan"] and info["after"]["quality"] is None


def test_a_stopped_search_on_unknown_quality_gives_no_gap():
    from planner.search import optimize
    plan = program(FREE).plan("deep")
    found = optimize(plan, BudgetSpec(max_latency_s=8), time_limit=0.0)
    assert not found.known and not found.exact
    assert "upper bound" not in found.method and "unknown" in found.method
    pruned = prune(plan, BudgetSpec(max_latency_s=8), time_limit=0.0)
    assert pruned.annotations["planner"]["search"]["upper_bound"] is None


# --- calibrate -----------------------------------------------------------------------------

def test_calibrate_reports_an_unknown_prediction_and_fits_no_base_to_it():
    from moac.evaluation.calibrate import (MIN_SAMPLES, Calibration, compare_quality,
                                           fit_quality_base)
    from moac.evaluation.calibrate_render import report
    p = program(MIXED)
    plans = {"run": {"mixed": p.plan("mixed").to_dict()}}
    verdicts = [{"pipeline": "mixed", "protocol": "pairwise", "preference": pref}
                for pref in [1.0, 0.0] * MIN_SAMPLES]
    (row,) = compare_quality(verdicts, plans, {})
    assert row.before is None and row.after is None and row.measured == pytest.approx(50)
    rows, planner = fit_quality_base([row], plans, {})
    assert planner == {} and rows[0].fitted is None  # C is not fitted to an assumption
    text = report(Calibration(["t.jsonl"], ["run"], 0.0, {}, {}, pipelines=rows))
    assert re.search(r"mixed\s+50\.0 \+/-\S+ \(10\)\s+unknown\s+unknown\s+-", text)
    # calibrated with a measured prior for newbie, the prediction is known again
    rated = {"newbie": p.models["newbie"].model_copy(update={"quality": 30.0})}
    (row,) = compare_quality(verdicts, plans, rated)
    assert row.before is None and row.after is not None
    rows, planner = fit_quality_base([row], plans, rated)
    assert "quality_base" in planner and rows[0].fitted is not None
