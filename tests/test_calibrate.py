"""moac calibrate: profiles refitted from synthetic traces that follow a known law.

The traces are written with moac.traces.trace's own records around a real plan (MoA-Lite from the
examples): each call lasts ``ttft + prompt / prefill + completion / rate`` of its model's
true profile plus a little noise, answers are drawn around a true length and cut at
max_tokens, and the query lines carry the planner's estimate with the declared profiles,
as the executor writes them.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

import moac
from moac.evaluation.calibrate import MIN_SAMPLES, CalibrationError, calibrate, calibrate_records
from moac.evaluation.calibrate_render import number, render_moa, report
from moac.ir.prompts import input_tokens
from moac.traces.trace import CallRecord, QualityRecord, QueryRecord, RunHeader, TraceWriter
from planner.estimate import estimate

# model: (ttft s, output tok/s, prefill tok/s, mean answer tokens); the declared profiles
# (examples/catalog.moa) are off by 20-60%.
TRUTH = {"qwen110": (0.8, 22.0, 1500.0, 350), "qwen72": (0.6, 25.0, 2500.0, 300),
         "wizardlm": (0.5, 45.0, 3000.0, 470), "llama70": (0.35, 70.0, 4000.0, 420),
         "mixtral": (0.45, 50.0, 3000.0, 330), "dbrx": (0.4, 55.0, 3000.0, 300)}
QUERIES = 40
DBRX_OK = 3           # dbrx fails but in the first three queries: too few samples
CACHED = 4            # qwen110 answers replayed from the response cache (no duration)
CANARY = "sk-canary-0123456789abcdef0123456789abcdef"


def simulate(path, seed: int = 7, run_id: str = "r1") -> dict:
    """Write a MoA-Lite run of QUERIES queries to ``path``; what was generated, per model."""
    rng = np.random.default_rng(seed)
    plan = moac.compile_file("examples/moa_lite.moa").plan("moa_lite")
    header = RunHeader(run_id=run_id, moac_version="test", started_at=1.7e9,
                       file="examples/moa_lite.moa", file_sha256="", pipeline="moa_lite",
                       plan=plan.to_dict(), budget={}, price_table_sha256="")
    seen: dict[str, list[tuple[int, str]]] = {name: [] for name in TRUTH}
    clock = 1.7e9
    with TraceWriter(path) as trace:
        trace.write(header)
        for q in range(QUERIES):
            qid, p = f"q{q}", int(rng.integers(20, 600))
            calls, answers, slowest = [], [], 0.0
            for call in plan.calls():
                model = plan.models[call.model]
                ttft, rate, prefill, length = TRUTH[call.model]
                if call.role == "aggregate":
                    reading = input_tokens(p, template=call.prompt, answers=answers)
                else:
                    reading = input_tokens(p, system=call.system)
                if call.model == "dbrx" and q >= DBRX_OK:
                    calls.append(CallRecord(
                        run_id=run_id, query_id=qid, pipeline="moa_lite", layer=call.layer,
                        node=call.id, position=call.position, role=call.role,
                        model=call.model, provider=call.provider, attempt=1, duration_s=2.0,
                        status="failed", error_type="ServerError", error="HTTP 503"))
                    continue
                natural = max(20, int(rng.normal(length, 0.2 * length)))
                written = min(natural, call.sampling.max_tokens)
                first = ttft + reading / prefill + rng.normal(0, 0.03)
                duration = first + written / rate + abs(rng.normal(0, 0.05))
                cached = call.model == "qwen110" and q < CACHED
                if cached:
                    first = duration = 0.0
                finish = "length" if natural > written else "stop"
                seen[call.model].append((written, finish))
                calls.append(CallRecord(
                    run_id=run_id, query_id=qid, pipeline="moa_lite", layer=call.layer,
                    node=call.id, position=call.position, role=call.role, model=call.model,
                    provider=call.provider, attempt=1, started_at=clock,
                    ended_at=clock + duration, duration_s=duration, ttft_s=first,
                    prompt_tokens=reading, completion_tokens=written, tokens_reported=True,
                    cost_usd=model.usd(reading, written), status="ok", finish_reason=finish,
                    max_tokens=call.sampling.max_tokens, cached=cached))
                if call.role == "aggregate":
                    latency = slowest + duration + 0.01
                else:
                    answers.append(written)
                    slowest = max(slowest, duration)
            for record in calls:
                trace.write(record)
            ok = [c for c in calls if c.status == "ok"]
            trace.write(QueryRecord(
                run_id=run_id, query_id=qid, pipeline="moa_lite", status="ok",
                started_at=clock, latency_s=latency, critical_path=[], critical_path_s=0.0,
                calls=len(calls), attempts=len(calls), failures=len(calls) - len(ok),
                cost_usd=sum(c.cost_usd for c in ok),
                prompt_tokens=sum(c.prompt_tokens for c in ok),
                completion_tokens=sum(c.completion_tokens for c in ok), tflops=0.0,
                estimate=estimate(plan, prompt_tokens=p, mode="expected").as_dict()))
            clock += 60
        judge = dict(run_id="judge1", judge="gpt4", parsed=True)
        for i, pref in enumerate([1.0] * 16 + [0.5] * 4 + [0.0] * 20 + [None] * 3):
            trace.write(QualityRecord(query_id=f"a{i}", pipeline="single:qwen72",
                                      protocol="pairwise", preference=pref, **judge))
        for i, score in enumerate([7, 8, 9, 8, 8]):
            trace.write(QualityRecord(query_id=f"b{i}", pipeline="single:qwen110",
                                      protocol="single", score=score, **judge))
        for i, pref in enumerate([1.0] * 6 + [0.0] * 4):
            trace.write(QualityRecord(query_id=f"c{i}", pipeline="moa_lite",
                                      protocol="pairwise", preference=pref, **judge))
    with open(path, "a", encoding="utf-8") as handle:
        handle.write('{"type": "call", "run_id": "r1", "query_id": "q9')  # a torn last line
    return seen


@pytest.fixture(scope="module")
def traced(tmp_path_factory):
    path = tmp_path_factory.mktemp("calibrate") / "trace.jsonl"
    seen = simulate(path)
    return calibrate([str(path)], now=1.7e9), seen, path


def test_speed_and_length_recover_the_truth(traced):
    calibration, seen, _ = traced
    for name in ("qwen110", "qwen72", "wizardlm", "llama70", "mixtral"):
        ttft, rate, _, _ = TRUTH[name]
        fitted = calibration.models[name]
        assert fitted.output_tokens_per_s == pytest.approx(rate, rel=0.05), name
        assert fitted.ttft_s == pytest.approx(ttft, abs=0.1), name
        whole = [tokens for tokens, finish in seen[name] if finish != "length"]
        assert fitted.answer_tokens == round(float(np.mean(whole))), name
    fit = calibration.fits["qwen110"]
    assert fit.latency_samples == fit.answers - CACHED  # replayed answers are not timed


def test_cut_answers_are_left_out_of_the_length(traced):
    calibration, seen, _ = traced
    fit = calibration.fits["wizardlm"]
    cut = [tokens for tokens, finish in seen["wizardlm"] if finish == "length"]
    assert fit.cut == len(cut) > 0
    everything = round(float(np.mean([tokens for tokens, _ in seen["wizardlm"]])))
    assert calibration.models["wizardlm"].answer_tokens != everything
    assert f"{len(cut)} cut at max_tokens left out" in fit.length


def test_too_few_samples_keep_the_declared_figures(traced):
    calibration, _, _ = traced
    fit = calibration.fits["dbrx"]
    assert fit.calibrated == fit.declared
    assert f"speed kept ({DBRX_OK} samples, need {MIN_SAMPLES})" in fit.speed
    text = report(calibration)
    assert f"dbrx: speed kept ({DBRX_OK} samples, need {MIN_SAMPLES})" in text
    assert f"# dbrx: length kept ({DBRX_OK} whole answers" in render_moa(calibration)


def test_quality_priors_from_pairwise_verdicts_only(traced):
    calibration, _, _ = traced
    assert calibration.models["qwen72"].quality == 45.0  # (16 + 4 / 2) / 40
    assert calibration.fits["qwen72"].judged == 40       # unparsed verdicts left out
    assert calibration.models["qwen110"].quality == 43.9  # scores: another scale
    assert "single-answer score 8.0/10 over 5" in calibration.fits["qwen110"].quality
    [lite] = calibration.pipelines
    assert (lite.pipeline, lite.judged, lite.measured) == ("moa_lite", 10, 60.0)
    assert lite.after > lite.before  # qwen72, the aggregator, measured better than declared


def test_estimate_error_falls(traced):
    calibration, _, _ = traced
    errors = {row.metric: row for row in calibration.errors}
    compared = QUERIES - CACHED  # a query with a replayed answer says nothing of the error
    assert calibration.queries == compared
    for metric in ("cost", "latency", "output tokens"):
        assert errors[metric].queries == compared
        assert errors[metric].after < 0.8 * errors[metric].before, metric
    text = report(calibration)
    assert "estimate error" in text and "latency" in text


def test_rendered_catalog_reads_back_as_the_calibrated_specs(traced, tmp_path, monkeypatch):
    calibration, _, _ = traced
    text = render_moa(calibration)
    assert text.startswith("# Written by `moac calibrate` on 2023-11-14")
    alone = moac.compile_string(text)
    assert alone.models == calibration.models
    (tmp_path / "profiles.moa").write_text(text)
    (tmp_path / "pipe.moa").write_text(
        'import "profiles.moa"\n\npipeline p {\n'
        '  layer propose = [qwen110, qwen72, wizardlm, llama70, mixtral, dbrx]\n'
        '  aggregate qwen72 (max_tokens = 2048)\n}\n')
    program = moac.compile_file(tmp_path / "pipe.moa")
    assert program.models == calibration.models
    assert program.providers == calibration.providers
    assert program.plan("p").models["qwen110"] == calibration.models["qwen110"]


def test_no_key_value_is_ever_written(traced, monkeypatch):
    calibration, _, _ = traced
    monkeypatch.setenv("TOGETHER_API_KEY", CANARY)
    for text in (render_moa(calibration), report(calibration)):
        assert CANARY not in text
    assert "api_key = env TOGETHER_API_KEY" in render_moa(calibration)


def test_route_headers_and_run_selection(tmp_path):
    plan = moac.compile_file("examples/auto.moa").runnable("auto")
    header = RunHeader(run_id="route1", moac_version="test", started_at=1.0, file="",
                       file_sha256="", pipeline="auto", plan=plan.to_dict(), budget={},
                       price_table_sha256="")
    path = tmp_path / "route.jsonl"
    with TraceWriter(path) as trace:
        trace.write(header)
    simulate(path, run_id="r2")  # appended: a second run in the same file
    lines = [json.loads(line) for line in path.read_text().splitlines()[:-1]]
    both = calibrate_records(lines)
    assert both.run_ids == ["r2", "route1"]
    assert {"qwen110", "qwen72", "dbrx"} <= set(both.models)
    only_route = calibrate_records(lines, run_id="route1")
    assert only_route.models == {n: f.declared for n, f in only_route.fits.items()}
    assert only_route.calls == 0 and only_route.queries == 0
    with pytest.raises(CalibrationError, match="no run header"):
        calibrate_records(lines, run_id="nope")


def test_numbers_read_back_exactly():
    for value in (0.412, 1.8, 0.135, 27.4, 120.0, 1e-7, 2000.0):
        assert float(number(value)) == value
        assert "e" not in number(value)
    assert number(1.8, 2) == "1.80" and number(0.075, 2) == "0.075"


def test_the_command_writes_an_importable_catalog_and_reports(traced, tmp_path, capsys):
    import moac.cli.main as cli
    _, _, path = traced
    out = tmp_path / "profiles.moa"
    assert cli.main(["calibrate", str(path), "-o", str(out)]) == 0
    assert out.read_text().startswith("# Written by `moac calibrate` on ")
    moac.compile_file(out)  # it is a valid .moa file on its own
    printed = capsys.readouterr().out
    assert "before" in printed and "after" in printed
    assert cli.main(["calibrate", str(path), "-o", str(path)]) == 2  # never over a trace
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    assert cli.main(["calibrate", str(empty)]) == 1
    assert "moac: error:" in capsys.readouterr().err


def test_the_quality_base_is_refitted_to_the_measured_pipelines(traced, tmp_path):
    calibration, _, _ = traced
    (row,) = [q for q in calibration.pipelines if q.pipeline == "moa_lite"]
    assert row.measured == pytest.approx(60.0)
    # one measured pipeline: the refitted base makes it predicted exactly (to the rounding)
    assert row.fitted == pytest.approx(row.measured, abs=0.05)
    assert abs(row.after - row.measured) > abs(row.fitted - row.measured)
    base = calibration.planner["quality_base"]
    text = render_moa(calibration)
    assert f"planner {{\n  quality_base = {base:g}\n}}" in text
    profiles = tmp_path / "profiles.moa"
    profiles.write_text(text)
    user = tmp_path / "user.moa"
    user.write_text('import "profiles.moa"\n\npipeline lite {\n  layer propose = [qwen110, '
                    'qwen72]\n  aggregate qwen72\n}\n')
    plan = moac.compile_file(user).plan("lite")
    assert plan.quality == {"quality_base": base}
    assert "refitted: quality_base" in report(calibration)
