"""The quality model reproduces the published points it is fitted to, within 2 points.

Sources: Wang et al. 2024 (Mixture-of-Agents), Table 3 (2 layers: one proposer layer, then
Qwen1.5-110B-Chat aggregating; n different proposers / n samples of one proposer), MoA 65.1
and MoA-Lite 59.3; the models alone from the AlpacaEval 2.0 leaderboard (LC, GPT-4 Turbo).
Assumptions: "n different proposers" are the first n of the paper's list (qwen110, qwen72,
wizardlm, llama70, mixtral, dbrx); "n samples of one proposer" are samples of qwen110.
"""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

import moac
from planner.quality import MoaQualityModel

ROOT = Path(__file__).resolve().parent.parent
CATALOG = ROOT / "examples" / "catalog.moa"
LEADERBOARD = ROOT.parent / "shared" / "data" / "alpaca_eval" / "leaderboard_lc_gpt4_turbo.csv"
SIX = ["qwen110", "qwen72", "wizardlm", "llama70", "mixtral", "dbrx"]
MODEL = MoaQualityModel()


def predict(*layers: str, aggregator: str = "qwen110") -> float:
    body = "\n".join(f"  layer l{i} = {layer}" for i, layer in enumerate(layers))
    source = (f'import "{CATALOG.as_posix()}"\n\npipeline p {{\n  max_tokens = 512\n{body}\n'
              f"  aggregate {aggregator}\n}}\n")
    return MODEL.predict(moac.compile_string(source, "t.moa").plan("p"))


def diverse(n: int) -> str:
    return "[" + ", ".join(SIX[:n]) + "]"


ABLATION = [(1, 47.8, 47.8), (2, 58.8, 54.5), (3, 58.0, 56.1), (6, 61.3, 56.7)]


@pytest.mark.parametrize("n,different,samples", ABLATION)
def test_proposer_count_ablation(n, different, samples):
    assert predict(diverse(n)) == pytest.approx(different, abs=2.0)
    copies = "qwen110" if n == 1 else f"qwen110 x {n} (seed = 1)"
    assert predict(copies) == pytest.approx(samples, abs=2.0)


def test_moa_and_moa_lite():
    assert predict(diverse(6), diverse(6)) == pytest.approx(65.1, abs=2.0)
    assert predict(diverse(6), aggregator="qwen72") == pytest.approx(59.3, abs=2.0)


def test_the_examples_themselves():
    moa = moac.compile_file(ROOT / "examples" / "moa.moa").plan("moa")
    lite = moac.compile_file(ROOT / "examples" / "moa_lite.moa").plan("moa_lite")
    assert MODEL.predict(moa) == pytest.approx(65.1, abs=2.0)
    assert MODEL.predict(lite) == pytest.approx(59.3, abs=2.0)


@pytest.mark.parametrize("name", SIX + ["gpt4o", "gpt4_turbo"])
def test_a_model_alone_is_its_prior(name):
    program = moac.compile_file(CATALOG)
    assert predict(aggregator=name) == pytest.approx(program.models[name].quality)


LEADERBOARD_NAMES = {"qwen110": "Qwen1.5 110B Chat", "qwen72": "Qwen1.5 72B Chat",
                     "llama70": "Llama 3 70B Instruct", "mixtral": "Mixtral 8x22B v0.1",
                     "dbrx": "DBRX Instruct", "gpt4o": "GPT-4 Omni (05/13)",
                     "gpt4_turbo": "GPT-4 Turbo (04/09)"}


def test_models_alone_match_the_leaderboard():
    if not LEADERBOARD.exists():
        pytest.skip(f"AlpacaEval leaderboard not found at {LEADERBOARD} (../shared is only "
                    "on the project's machines)")
    with LEADERBOARD.open(newline="") as handle:
        rates = {row["name"]: float(row["length_controlled_winrate"])
                 for row in csv.DictReader(handle)}
    for name, board in LEADERBOARD_NAMES.items():
        assert predict(aggregator=name) == pytest.approx(rates[board], abs=2.0), name


def test_shape_diverse_beats_copies_and_returns_diminish():
    gains = [predict(diverse(n)) for n in range(1, 7)]
    assert gains[1] - gains[0] > gains[5] - gains[4] >= 0
    assert predict(diverse(3)) > predict("qwen110 x 3 (seed = 1)")
    one, two, three = (predict(*[diverse(6)] * n) for n in (1, 2, 3))
    assert two - one > three - two > 0  # diminishing returns in layers
    # A better aggregator writes a better answer from the same proposals.
    assert predict(diverse(6), aggregator="gpt4o") > predict(diverse(6))


def test_unknown_quality_is_assumed_and_named():
    source = ('provider p {\n kind = openai\n base_url = "http://x/v1"\n}\n'
              'model a = p "a" {\n price = $1/M\n params = 7B\n context = 8k\n}\n'
              "pipeline s {\n  aggregate a\n}\n")
    plan = moac.compile_string(source, "u.moa").plan("s")
    assert MODEL.predict(plan) == MODEL.unknown
    assert MODEL.unknown_models(plan) == ["a"]


# --- a planner block: the coefficients calibrate writes -------------------------------------

def test_a_planner_block_sets_the_quality_model_the_plan_carries(tmp_path):
    import moac
    from moac.ir import Plan
    from moac.lang.fmt import format_source
    catalog = (Path(__file__).resolve().parent.parent / "examples" / "moa_lite.moa").as_posix()
    base = tmp_path / "base.moa"
    base.write_text(f'import "{catalog}"\n\nplanner {{\n  quality_base = 40\n'
                    '  quality_prior_weight = 0.3\n}\n')
    top = tmp_path / "top.moa"
    top.write_text('import "base.moa"\n\nplanner {\n  quality_base = 50\n}\n')
    plan = moac.compile_file(top).plan("moa_lite")
    assert plan.quality == {"quality_base": 50.0, "quality_prior_weight": 0.3}
    model = MoaQualityModel.of(plan)
    assert (model.base, model.alpha) == (50.0, 0.3)
    assert model.kappa == MoaQualityModel().kappa  # unset: the fitted default
    default = MoaQualityModel().predict(plan)
    assert model.predict(plan) != pytest.approx(default)
    again = Plan.from_json(plan.to_json())
    assert again.quality == plan.quality
    assert MoaQualityModel.of(again).predict(again) == pytest.approx(model.predict(plan))
    assert "quality" not in moac.compile_file(catalog).plan("moa_lite").to_dict()
    text = top.read_text()
    assert format_source(text, str(top)) == text


def test_planner_block_values_are_checked(tmp_path, capsys):
    import moac.cli.main as cli
    bad = tmp_path / "bad.moa"
    bad.write_text("planner {\n  quality_prior_weight = 1.5\n  quality_bogus = 1\n}\n")
    assert cli.main(["check", str(bad)]) == 1
    err = capsys.readouterr().err
    assert "'quality_prior_weight' must be between 0 and 1, not 1.5" in err
    assert "unknown setting 'quality_bogus' in the planner" in err
