"""`moac compile` with budget flags, `moac plan`, and the golden reports."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

import moac
from moac.cli.main import main
from moac.ir.spec import BudgetSpec
from planner import MoaQualityModel, frontier, frontier_table, point_of, prune, render

from conftest import EXAMPLES, GOLDEN, update_golden

MOA = str(EXAMPLES / "moa.moa")
LITE = str(EXAMPLES / "moa_lite.moa")


def check_golden(name: str, text: str) -> None:
    path = GOLDEN / "plans" / name
    if update_golden():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    assert path.exists(), f"{path} missing: run with MOAC_UPDATE_GOLDEN=1"
    assert text == path.read_text(encoding="utf-8")


BUDGETS = {
    "moa_usd_0.02": BudgetSpec(max_usd=0.02),
    "moa_usd_0.003": BudgetSpec(max_usd=0.003),
    "moa_latency_30s": BudgetSpec(max_latency_s=30),
    "moa_worst_usd_0.03": BudgetSpec(max_usd=0.03, mode="worst"),
}


@pytest.mark.parametrize("name", sorted(BUDGETS))
def test_golden_pruning_reports(name):
    plan = moac.compile_file(MOA).plan("moa", BUDGETS[name])
    check_golden(f"{name}.txt", render(prune(plan).annotations["planner"], timing=False))


def test_golden_frontier_table():
    program = moac.compile_file(LITE)
    quality = MoaQualityModel()
    front = frontier(program.plan("moa"), 256, "expected", quality)
    named = [point_of(program.plan(n), n, 256, "expected", quality) for n in program.pipelines]
    check_golden("frontier_moa.txt", frontier_table(front, named))


def test_compile_prunes_with_flags_and_reports_on_stderr(tmp_path, capsys):
    out = tmp_path / "plan.json"
    assert main(["compile", MOA, "--max-usd", "$0.02", "--max-latency", "50s",
                 "-o", str(out)]) == 0
    err = capsys.readouterr().err
    assert err.startswith("pipeline moa: budget max_usd $0.0200, max_latency 50s")
    assert "dropped" in err and "search: exact" in err
    data = json.loads(out.read_text())
    assert data["budget"]["max_usd"] == 0.02 and data["budget"]["max_latency_s"] == 50
    assert data["annotations"]["planner"]["after"]["usd"] <= 0.02
    assert len(data["nodes"]) < 14


def test_file_budget_alone_prunes_and_flags_override_it(capsys):
    # The file's budget ($0.05, 60 s) holds the declared MoA: it is written as declared,
    # quietly (tests/test_cli.py holds compile of moa.moa to that).
    assert main(["compile", MOA]) == 0
    captured = capsys.readouterr()
    assert captured.err == "" and "planner" not in json.loads(captured.out)["annotations"]
    assert main(["compile", MOA, "--max-latency", "30000ms", "-o", "/dev/null"]) == 0
    err = capsys.readouterr().err
    assert "max_usd $0.0500, max_latency 30s" in err and "dropped layer refine" in err


def test_no_budget_means_no_pruning(capsys):
    assert main(["compile", str(EXAMPLES / "self_moa.moa")]) == 0
    captured = capsys.readouterr()
    assert captured.err == "" and "planner" not in json.loads(captured.out)["annotations"]


def test_nothing_fits_is_a_clear_error(capsys):
    assert main(["compile", MOA, "--max-usd", "0.0001"]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1 and "the cheapest" in captured.err


@pytest.mark.parametrize("flags,message", [
    (["--max-usd", "abc"], "--max-usd expects a non-negative number like '$0.05', got 'abc'"),
    (["--max-usd", "-1"], "--max-usd expects"),
    (["--max-latency", "3x"], "--max-latency expects a duration like 30s"),
    (["--max-latency", "nan"], "--max-latency expects"),
    (["--max-tflops", "lots"], "--max-tflops expects a non-negative number like 5000"),
])
def test_bad_flag_values_exit_2_in_one_line(flags, message, capsys):
    assert main(["compile", MOA, *flags]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err


def test_flag_units(capsys):
    for flag, value in (("--max-usd", "0.02"), ("--max-latency", "30"),
                        ("--max-tflops", "2000")):
        assert main(["compile", MOA, flag, value, "-o", "/dev/null"]) == 0
    err = capsys.readouterr().err
    assert "max_usd $0.0200" in err and "max_latency 30s" in err
    assert "max_tflops 2,000 TFLOPs" in err


def test_plan_prints_the_frontier_and_draws_it(tmp_path, capsys):
    svg = tmp_path / "f.svg"
    assert main(["plan", LITE, "--pipeline", "moa", "--plot", str(svg),
                 "--prompt-tokens", "256"]) == 0
    out = capsys.readouterr().out
    assert out == (GOLDEN / "plans" / "frontier_moa.txt").read_text()
    root = ET.parse(svg).getroot()
    texts = [t.text for t in root.iter("{http://www.w3.org/2000/svg}text")]
    assert "moa_lite" in texts and "cost per query (USD, log scale)" in texts
    assert "compute per query (TFLOPs, log scale)" in texts
    assert len(list(root.iter("{http://www.w3.org/2000/svg}polyline"))) == 3  # one a cost


def test_plan_usage_errors(capsys):
    assert main(["plan", MOA, "--prompt-tokens", "many"]) == 2
    assert main(["plan", MOA, "--pipeline", "nope"]) == 2
    assert main(["plan", str(EXAMPLES / "auto.moa"), "--pipeline", "auto", "--plot",
                 "x.svg"]) == 2
    assert "--plot draws one pipeline's frontier" in capsys.readouterr().err


def test_plan_of_a_route_shows_its_candidates(capsys):
    assert main(["plan", str(EXAMPLES / "auto.moa"), "--pipeline", "auto",
                 "--prompt-tokens", "100"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "route auto: policy budget, agreement; expected case, 100-token prompt"
    rows = {line.split()[0]: line.split() for line in out[2:5]}
    assert set(rows) == {"moa", "moa_lite", "qwen110_alone"}
    assert rows["moa"][1] == "64.4" and rows["moa_lite"][1] == "59.3"
    assert rows["moa"][-1] == "yes" and rows["moa_lite"][-1] == "yes"
    assert "  moa_lite can take over from moa after 1 shared layer" in out


def test_budget_flags_on_a_route_bound_its_queries_instead_of_pruning(capsys):
    assert main(["compile", str(EXAMPLES / "auto.moa"), "--pipeline", "auto",
                 "--max-usd", "1"]) == 0
    captured = capsys.readouterr()
    data = json.loads(captured.out)
    assert data["format"] == "moac-route" and data["budget"]["max_usd"] == 1.0
    assert all(c["budget"]["max_usd"] == 1.0 for c in data["candidates"].values())
    assert "dropped" not in captured.err
