"""The ``moac`` command line, the plan JSON round trip, and what lowering means.

A few exit-code tests run ``python -m moac`` in a subprocess; the rest call
:func:`moac.cli.main.main` in-process. Lowered plans of the examples are kept as golden JSON in
``tests/golden/lowered/`` (``MOAC_UPDATE_GOLDEN=1`` rewrites them).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import networkx as nx
import pytest

import moac
import moac.cli.main as cli
from moac.constants import DEFAULT_AGGREGATE_PROMPT, DEFAULT_MAX_TOKENS, DEFAULT_TEMPERATURE
from moac.ir import Plan, PlanError

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
LOWERED = Path(__file__).resolve().parent / "golden" / "lowered"
UPDATE = os.environ.get("MOAC_UPDATE_GOLDEN", "") not in ("", "0")

# Every pipeline of the examples, and the file that declares it.
PIPELINES = {"moa": "moa.moa", "moa_lite": "moa_lite.moa", "self_moa": "self_moa.moa",
             "moa_gpt4o": "moa_gpt4o.moa", "qwen110_alone": "auto.moa"}
PROPOSERS = ["qwen110", "qwen72", "wizardlm", "llama70", "mixtral", "dbrx"]


@pytest.fixture
def in_examples(monkeypatch):
    monkeypatch.chdir(EXAMPLES)
    return EXAMPLES


def run(capsys, *argv) -> tuple[int, str, str]:
    capsys.readouterr()
    code = cli.main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def moac_subprocess(*argv, cwd=EXAMPLES) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "moac", *argv], cwd=cwd,
                          capture_output=True, text=True, timeout=60)


def plan_of(name: str) -> Plan:
    return moac.compile_file(PIPELINES[name]).plan(name)


def compile_text(text: str) -> moac.Program:
    """Compile text that imports the examples' catalog (run with cwd = examples)."""
    return moac.compile_string('import "catalog.moa"\n' + text, "t.moa")


# --- exit codes, through a real process ----------------------------------------------------


def test_subprocess_check_clean_exits_0():
    names = sorted(p.name for p in EXAMPLES.glob("*.moa"))
    result = moac_subprocess("check", *names)
    assert result.returncode == 0, result.stderr
    assert result.stderr == f"checked {len(names)} files: no problems\n"
    assert result.stdout == ""


def test_subprocess_check_problems_exits_1(tmp_path):
    (tmp_path / "bad.moa").write_text("pipeline p {\n  aggregate nobody\n}\n")
    result = moac_subprocess("check", "bad.moa", cwd=tmp_path)
    assert result.returncode == 1
    assert "bad.moa:2:13: error[E101]: unknown model 'nobody'" in result.stderr
    assert result.stderr.endswith("1 error in 1 file\n")


@pytest.mark.parametrize("argv", [["check", "--bogus", "moa.moa"], ["check"], [],
                                  ["frobnicate"], ["compile"]])
def test_subprocess_usage_errors_exit_2(argv):
    result = moac_subprocess(*argv)
    assert result.returncode == 2, result
    assert "Traceback" not in result.stderr
    assert "usage:" in result.stderr


def test_subprocess_version():
    result = moac_subprocess("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"moac {moac.__version__}"


# --- check, in-process ---------------------------------------------------------------------


def test_check_clean(in_examples, capsys):
    assert run(capsys, "check", "moa.moa") == (0, "", "checked 1 file: no problems\n")


def test_check_counts_errors_over_several_files(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a.moa").write_text("pipeline p {\n  aggregate nobody\n}\n")
    (tmp_path / "b.moa").write_text("budget {\n  max_usd = 5\n  mode = fast\n}\n")
    (tmp_path / "c.moa").write_text("")
    code, out, err = run(capsys, "check", "a.moa", "b.moa", "c.moa")
    assert code == 1 and out == ""
    assert err.endswith("3 errors in 3 files\n")
    assert [line.split(": ")[0] for line in err.splitlines() if "error[" in line] == [
        "a.moa:2:13", "b.moa:2:13", "b.moa:3:10"]


def test_usage_errors_in_process(capsys):
    with pytest.raises(SystemExit) as caught:
        cli.main(["check", "--bogus", "x.moa"])
    assert caught.value.code == 2
    with pytest.raises(SystemExit) as caught:
        cli.main(["check"])
    assert caught.value.code == 2
    code, _, err = run(capsys)
    assert code == 2 and "usage: moac" in err


# --- compile -------------------------------------------------------------------------------


def test_compile_writes_a_plan_that_reads_back(in_examples, tmp_path, capsys):
    target = tmp_path / "plan.json"
    code, out, err = run(capsys, "compile", "moa.moa", "-o", str(target))
    assert (code, out, err) == (0, "", "")
    plan = Plan.from_json(target.read_text(encoding="utf-8"))
    assert plan.pipeline == "moa"
    assert plan.to_dict() == plan_of("moa").to_dict()


def test_compile_to_stdout(in_examples, capsys):
    code, out, _ = run(capsys, "compile", "self_moa.moa")
    assert code == 0
    assert Plan.from_json(out).pipeline == "self_moa"


def test_compile_unknown_pipeline_names_the_known_ones(in_examples, capsys):
    code, out, err = run(capsys, "compile", "moa_lite.moa", "--pipeline", "moa_heavy")
    assert code == 2 and out == ""
    assert err == "moac: error: no pipeline or route named 'moa_heavy' (known: moa, moa_lite)\n"


def test_compile_several_pipelines_without_a_choice_lists_them(in_examples, capsys):
    code, out, err = run(capsys, "compile", "auto.moa")
    assert code == 2 and out == ""
    assert "choose one with --pipeline" in err
    assert "qwen110_alone" in err and "auto" in err


def test_compile_file_with_only_imported_pipelines(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "only_import.moa").write_text(f'import "{(EXAMPLES / "moa.moa").as_posix()}"\n')
    code, _, err = run(capsys, "compile", "only_import.moa")
    assert code == 2
    assert "no pipeline of its own" in err and "--pipeline: moa" in err
    code, out, _ = run(capsys, "compile", "only_import.moa", "-p", "moa")
    assert code == 0 and Plan.from_json(out).pipeline == "moa"


def test_compile_missing_file_is_a_usage_error(in_examples, capsys):
    code, out, err = run(capsys, "compile", "nope.moa")
    assert (code, out) == (2, "")
    assert err == "moac: error: no such file: nope.moa\n"


def test_compile_broken_file_prints_diagnostics(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "bad.moa").write_text("pipeline p {\n  aggregate nobody\n}\n")
    code, out, err = run(capsys, "compile", "bad.moa")
    assert code == 1 and out == ""
    assert "error[E101]" in err


def test_compile_route_gives_every_candidate(in_examples, capsys):
    code, out, _ = run(capsys, "compile", "auto.moa", "--pipeline", "auto")
    assert code == 0
    data = json.loads(out)
    assert data["format"] == "moac-route"
    assert data["route"]["name"] == "auto"
    assert data["route"]["policies"] == ["budget", "agreement"]
    assert list(data["candidates"]) == ["moa", "moa_lite", "qwen110_alone"]
    for name, plan in data["candidates"].items():
        read = Plan.from_dict(plan)
        assert read.pipeline == name
        # The route's limits apply to every candidate.
        assert read.budget.max_usd == 0.05 and read.budget.max_latency_s == 60


def test_plan_from_json_rejects_other_documents():
    with pytest.raises(PlanError):
        Plan.from_json("[]")
    with pytest.raises(PlanError):
        Plan.from_json("{not json")
    with pytest.raises(PlanError):
        Plan.from_json(json.dumps({"format": "moac-plan", "version": 999}))


# --- graph ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(PIPELINES))
def test_graph_mermaid_and_dot(in_examples, capsys, name):
    plan = plan_of(name)
    edges = plan.graph.number_of_edges()
    mermaid_code, mermaid, _ = run(capsys, "graph", PIPELINES[name], "-p", name)
    dot_code, dot, _ = run(capsys, "graph", PIPELINES[name], "-p", name, "--format", "dot")
    assert mermaid_code == dot_code == 0
    assert mermaid.startswith("flowchart LR")
    assert dot.startswith(f'digraph "{name}"')
    assert len(re.findall(r"^  n\d+ (-->|-\.->) n\d+$", mermaid, re.M)) == edges
    assert len(re.findall(r"^  \".*\" -> \".*\"( \[style=dashed\])?;$", dot, re.M)) == edges
    node_lines = re.findall(r'^    n\d+\["([^"]*)"\]$', mermaid, re.M)
    assert len(node_lines) == plan.graph.number_of_nodes()
    for call in plan.calls():
        assert call.model in mermaid and call.model in dot
        assert f'"{call.id}" [label="{call.model}' in dot


def test_graph_moa_has_48_edges_with_dashed_fallback(in_examples, capsys):
    _, mermaid, _ = run(capsys, "graph", "moa.moa")
    _, dot, _ = run(capsys, "graph", "moa.moa", "--format", "dot")
    assert mermaid.count(" --> ") == 42 and mermaid.count(" -.-> ") == 6
    assert dot.count(" -> ") == 48 and dot.count("[style=dashed]") == 6


def test_graph_to_file_and_of_a_route(in_examples, tmp_path, capsys):
    target = tmp_path / "moa.dot"
    assert run(capsys, "graph", "moa.moa", "--format", "dot", "-o", str(target))[:2] == (0, "")
    assert target.read_text().count(" -> ") == 48
    code, out, _ = run(capsys, "graph", "auto.moa", "-p", "auto")
    assert code == 0
    # each candidate in a box of its own: moa (48 edges), moa_lite (6: proposers to its
    # aggregator, no fallback), qwen110_alone (none)
    assert [line.strip() for line in out.splitlines() if line.startswith("  subgraph C")] \
        == ['subgraph C0["moa"]', 'subgraph C1["moa_lite"]', 'subgraph C2["qwen110_alone"]']
    assert sum(1 for line in out.splitlines() if " --> " in line or " -.-> " in line) == \
        48 + 6 + 0
    code, dot, _ = run(capsys, "graph", "auto.moa", "-p", "auto", "--format", "dot")
    assert code == 0 and '"moa_lite/aggregate.qwen72"' in dot and "cluster_c2" in dot


# --- fmt (owned elsewhere: only that a formatted example passes --check) ------------------


def test_fmt_check_on_formatted_example(tmp_path, monkeypatch, capsys):
    from moac.lang.fmt import format_source
    monkeypatch.chdir(tmp_path)
    source = (EXAMPLES / "moa.moa").read_text(encoding="utf-8")
    (tmp_path / "moa.moa").write_text(format_source(source, "moa.moa"), encoding="utf-8")
    code, _, err = run(capsys, "fmt", "--check", "moa.moa")
    assert code == 0, err


# --- plans round-trip JSON ----------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(PIPELINES))
def test_plan_json_round_trip_is_lossless(in_examples, name):
    plan = plan_of(name)
    again = Plan.from_json(plan.to_json())
    assert again.to_dict() == plan.to_dict()
    assert again.to_json() == plan.to_json()
    assert nx.utils.graphs_equal(again.graph, plan.graph)
    assert again.calls() == plan.calls()
    assert again.layers == plan.layers and again.models == plan.models
    assert again.providers == plan.providers and again.budget == plan.budget


@pytest.mark.parametrize("name", ["moa", "moa_lite", "self_moa", "moa_gpt4o"])
def test_lowered_plan_golden(in_examples, name):
    text = plan_of(name).to_json() + "\n"
    golden = LOWERED / f"lowered_{name}.json"
    if UPDATE:
        LOWERED.mkdir(parents=True, exist_ok=True)
        golden.write_text(text, encoding="utf-8")
    assert golden.is_file(), f"{golden.name} missing: run MOAC_UPDATE_GOLDEN=1"
    assert text == golden.read_text(encoding="utf-8")


# --- what lowering means -------------------------------------------------------------------


def test_moa_has_three_stages(in_examples):
    plan = plan_of("moa")
    assert [(layer.name, len(layer.nodes)) for layer in plan.layers] == [
        ("propose", 6), ("refine", 6), ("aggregate", 2)]
    assert [plan.call(n).model for n in plan.layers[0].nodes] == PROPOSERS
    assert [plan.call(n).role for n in plan.layers[2].nodes] == ["aggregate", "fallback"]
    aggregator, fallback = (plan.call(n) for n in plan.layers[2].nodes)
    assert (aggregator.model, fallback.model) == ("qwen110", "qwen72")
    assert fallback.fallback_for == aggregator.id
    assert plan.layers[1].min_ok == 4
    assert plan.graph.number_of_edges() == 6 * 6 + 6 + 6


def test_moa_refine_nodes_read_every_proposer_in_order(in_examples):
    plan = plan_of("moa")
    propose = list(plan.layers[0].nodes)
    for node in plan.layers[1].nodes:
        assert plan.inputs(node) == propose
        positions = {u: p for u, _, p in plan.graph.in_edges(node, data="position")}
        assert [positions[u] for u in propose] == [0, 1, 2, 3, 4, 5]
        assert plan.call(node).role == "refine"
        assert plan.call(node).prompt == DEFAULT_AGGREGATE_PROMPT
    for node in plan.layers[2].nodes:
        assert plan.inputs(node) == list(plan.layers[1].nodes)
    for node in propose:
        assert plan.inputs(node) == [] and plan.call(node).prompt is None


def test_moa_lite_drops_refine_and_aggregates_with_qwen72(in_examples):
    plan = plan_of("moa_lite")
    assert [layer.name for layer in plan.layers] == ["propose", "aggregate"]
    (final,) = plan.layers[1].nodes
    assert plan.call(final).model == "qwen72"
    assert plan.call(final).sampling.max_tokens == 2048
    assert plan.inputs(final) == list(plan.layers[0].nodes)
    assert plan.graph.number_of_edges() == 6


def test_moa_gpt4o_keeps_moa_layers_and_swaps_the_aggregator(in_examples):
    plan = plan_of("moa_gpt4o")
    assert [(layer.name, len(layer.nodes)) for layer in plan.layers] == [
        ("propose", 6), ("refine", 6), ("aggregate", 2)]
    assert [plan.call(n).model for n in plan.layers[2].nodes] == ["gpt4o", "qwen110"]
    assert set(plan.providers) == {"together", "openai"}


def test_self_moa_copies_get_seeds_1_to_6(in_examples):
    plan = plan_of("self_moa")
    calls = [plan.call(n) for n in plan.layers[0].nodes]
    assert [c.model for c in calls] == ["qwen110"] * 6
    assert [c.sampling.seed for c in calls] == [1, 2, 3, 4, 5, 6]
    assert len({c.id for c in calls}) == 6
    assert plan.call(plan.layers[1].nodes[0]).sampling.seed is None


def test_per_copy_lists_give_each_copy_its_value(in_examples):
    plan = compile_text("pipeline p {\n  layer a = qwen72 x 3 (temperature = [0.1, 0.5, 0.9],"
                        " seed = [7, 3, 5])\n  aggregate qwen110\n}\n").plan("p")
    calls = [plan.call(n) for n in plan.layers[0].nodes]
    assert [c.sampling.temperature for c in calls] == [0.1, 0.5, 0.9]
    assert [c.sampling.seed for c in calls] == [7, 3, 5]


def test_derived_pipeline_replacing_a_layer_keeps_its_position(in_examples):
    program = compile_text("""
pipeline three {
  layer first = [qwen110, qwen72]
  layer middle = [wizardlm, mixtral]
  layer last = [dbrx, llama70]
  aggregate qwen110
}

pipeline swapped from three {
  layer middle = [gpt4o]
  layer extra = [qwen72]
}
""")
    plan = program.plan("swapped")
    assert [layer.name for layer in plan.layers] == ["first", "middle", "last", "extra",
                                                     "aggregate"]
    assert [plan.call(n).model for n in plan.layers[1].nodes] == ["gpt4o"]
    assert plan.inputs(plan.layers[2].nodes[0]) == list(plan.layers[1].nodes)
    # The base is untouched.
    base = program.plan("three")
    assert [plan_layer.name for plan_layer in base.layers] == ["first", "middle", "last",
                                                              "aggregate"]
    assert [base.call(n).model for n in base.layers[1].nodes] == ["wizardlm", "mixtral"]


def test_derived_from_moa_replacing_propose_keeps_it_first(in_examples):
    program = moac.compile_string('import "moa.moa"\n\npipeline small_first from moa {\n'
                                  '  layer propose = [qwen72, llama70]\n}\n', "t.moa")
    plan = program.plan("small_first")
    assert [layer.name for layer in plan.layers] == ["propose", "refine", "aggregate"]
    assert [plan.call(n).model for n in plan.layers[0].nodes] == ["qwen72", "llama70"]
    for node in plan.layers[1].nodes:
        assert len(plan.inputs(node)) == 2


def test_sampling_cascade(in_examples):
    program = compile_text("""
pipeline p {
  temperature = 0.3
  max_tokens = 300
  seed = 40
  layer a = [qwen110 (temperature = 1.5), qwen72] (temperature = 0.9, max_tokens = 200)
  layer b = [wizardlm (max_tokens = 100), mixtral]
  aggregate qwen110
}

pipeline bare {
  layer a = [qwen72]
  aggregate qwen110
}
""")
    plan = program.plan("p")
    a = [plan.call(n).sampling for n in plan.layers[0].nodes]
    b = [plan.call(n).sampling for n in plan.layers[1].nodes]
    final = plan.call(plan.layers[2].nodes[0]).sampling
    # agent option > layer option > pipeline setting > default
    assert (a[0].temperature, a[0].max_tokens) == (1.5, 200)
    assert (a[1].temperature, a[1].max_tokens) == (0.9, 200)
    assert (b[0].temperature, b[0].max_tokens) == (0.3, 100)
    assert (b[1].temperature, b[1].max_tokens) == (0.3, 300)
    assert (final.temperature, final.max_tokens) == (0.3, 300)
    assert {s.seed for s in a + b + [final]} == {40}
    assert all(s.top_p is None for s in a + b + [final])
    bare = program.plan("bare")
    for call in bare.calls():
        assert call.sampling.temperature == DEFAULT_TEMPERATURE
        assert call.sampling.max_tokens == DEFAULT_MAX_TOKENS
        assert call.sampling.seed is None


def test_derived_pipeline_settings_override_the_base(in_examples):
    program = moac.compile_string('import "moa.moa"\n\npipeline cool from moa {\n'
                                  '  temperature = 0.2\n}\n', "t.moa")
    plan = program.plan("cool")
    propose = [plan.call(n).sampling for n in plan.layers[0].nodes]
    assert {s.temperature for s in propose} == {0.2}
    assert {s.max_tokens for s in propose} == {512}
    aggregator = plan.call(plan.layers[2].nodes[0]).sampling
    assert (aggregator.temperature, aggregator.max_tokens) == (0.2, 2048)
