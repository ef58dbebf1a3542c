"""``moac calibrate``: refit the planner's model profiles from measured runs.

Contract of :func:`calibrate` (and :func:`calibrate_records`, its pure core):

- **Input.** Trace records (:func:`moac.traces.trace.read_trace`: torn lines skipped). The ``run``
  headers hold the plans as run (``"moac-plan"``, or ``"moac-route"`` with one plan per
  candidate); every model and provider they declare is calibrated, keyed by its name in the
  plan. Where headers disagree on a declaration the latest run's is the base (a warning says
  so). Duplicate lines (a trace passed twice, judgments files beside the trace) count once.
- **Samples.** ``call`` lines with status ``ok``. A line marked ``cached`` (an answer from
  the response cache: nothing was sent), or with no duration or one under
  :data:`MIN_DURATION_S` (such a line in a trace older than the ``cached`` field), is an
  answer but not a latency sample.
- **Length.** ``answer_tokens`` = the rounded mean ``completion_tokens`` less
  ``reasoning_tokens`` of the answers not cut at ``max_tokens`` (``finish_reason``
  "length"): a cut answer says nothing of the natural length. ``thinking_tokens`` = the
  rounded mean ``reasoning_tokens`` of the same answers, for a model that thinks (it
  declares some, or a call reported some). Needs :data:`MIN_SAMPLES` answers.
- **Speed.** The planner's law is ``duration = ttft + prompt / prefill + completion /
  rate``. Streamed answers (a first token well before the end) are fitted in two stages:
  the measured ``ttft_s`` against ``prompt_tokens`` (intercept ttft, slope 1 / prefill)
  when prompts spread enough, else the median of ``ttft_s - prompt / declared prefill``;
  then ``duration - ttft_s`` against ``completion_tokens`` by least squares (slope 1 /
  rate; the intercept, time after the last token, is added to ttft so that the sum stays
  unbiased). Unstreamed answers: one least-squares fit of ``duration``. Needs
  :data:`MIN_SAMPLES` samples, spread answer lengths and a positive slope; otherwise every
  speed figure is kept and the note says why. A prefill slope that is not positive, or an
  intercept below 0, keeps the declared prefill rate. The completion is timed whole,
  thinking included, from its first token shown (thinking or answer); a call that thought
  unseen (reasoning tokens, no thinking shown) is timed as an unstreamed one.
- **Quality.** Pairwise verdicts (``quality`` lines) on ``single:MODEL``: the mean
  preference x 100 becomes the model's ``quality`` prior (needs :data:`MIN_SAMPLES`
  verdicts). Single-answer scores (1..10) are another scale: reported, never used.
- Every figure nothing was measured for keeps its declared value. Calibrated figures are
  rounded to what the ``.moa`` syntax writes back exactly (ms, 0.1 tok/s, whole prefill
  tok/s, 0.1 quality point), so a rendered catalog reads back as these very specs.
- **Errors.** Each ``ok`` query with an expected-case ``estimate`` is compared with what it
  measured (dollars, latency, output and total tokens), then re-estimated with the
  calibrated profiles (:func:`planner.estimate.estimate` on the header's plan with the
  models replaced, same prompt length): mean absolute percentage errors before and after.
  Pairwise verdicts on whole pipelines are compared with the quality model's prediction
  before and after the priors change.

Rendering (the ``.moa`` catalog, the before/after report) is in :mod:`moac.evaluation.calibrate_render`.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from dataclasses import dataclass, field
from typing import Any, Iterable

import numpy as np

from moac.constants import SINGLE_PREFIX
from moac.ir.spec import ModelSpec, ProviderSpec
from moac.traces.trace import read_trace

# Fewer samples than this say too little: a figure fitted from them is kept as declared.
MIN_SAMPLES = 5
# A call shorter than this was answered from the response cache, not by the model.
MIN_DURATION_S = 1e-3
# Relative spread (standard deviation / mean) below which a regressor cannot be told from
# the intercept: answer lengths for the output rate, prompt lengths for the prefill rate.
MIN_ANSWER_SPREAD = 0.10
MIN_PROMPT_SPREAD = 0.25
# A first token at or after this share of the call's duration: the answer was not streamed
# (ttft_s is then the whole body's time and says nothing of the first token).
STREAMED_SHARE = 0.95
# A share of cut answers above which the fitted length is flagged as a lower bound.
CUT_WARNING_SHARE = 0.2


class CalibrationError(ValueError):
    """Nothing to calibrate from (no run header in the traces, or none of the run asked)."""


@dataclass(frozen=True)
class Sample:
    """One ok call as the speed fit sees it."""
    duration: float
    ttft: float | None
    prompt: int
    completion: int


@dataclass
class ModelFit:
    """One model: declared and calibrated profiles, what they rest on, and in words what
    happened to each figure (``length``, ``speed``, ``quality``: "" when nothing was
    measured)."""
    name: str
    declared: ModelSpec
    calibrated: ModelSpec
    answers: int = 0          # ok answers (cut ones included)
    cut: int = 0              # cut at max_tokens: not in the length
    latency_samples: int = 0
    judged: int = 0           # pairwise verdicts on single:NAME
    scores: list[float] = field(default_factory=list)  # single-protocol scores, reported
    length: str = ""
    speed: str = ""
    quality: str = ""

    @property
    def changed(self) -> bool:
        return self.calibrated != self.declared


@dataclass(frozen=True)
class ErrorRow:
    """Mean absolute percentage error of one estimated quantity over ``queries`` queries
    (those whose measured value is above 0), before and after calibration."""
    metric: str
    queries: int
    before: float | None
    after: float | None


@dataclass(frozen=True)
class PipelineQuality:
    """A pipeline's measured pairwise win rate (mean preference x 100, its standard error)
    against the quality model's prediction with the declared and the calibrated priors."""
    pipeline: str
    judged: int
    measured: float
    stderr: float
    before: float | None  # None: unknown (a model it rests on declares no quality)
    after: float | None
    fitted: float | None = None  # with the refitted quality_base as well


@dataclass
class Calibration:
    paths: list[str]
    run_ids: list[str]
    created_at: float
    providers: dict[str, ProviderSpec]
    fits: dict[str, ModelFit]
    calls: int = 0              # ok calls read
    queries: int = 0            # ok queries with an estimate, compared
    replayed: int = 0           # queries left out: an answer came from the response cache
    errors: list[ErrorRow] = field(default_factory=list)
    pipelines: list[PipelineQuality] = field(default_factory=list)
    planner: dict[str, float] = field(default_factory=dict)  # the planner block to write
    warnings: list[str] = field(default_factory=list)

    @property
    def models(self) -> dict[str, ModelSpec]:
        """The calibrated profiles, by model name."""
        return {name: fit.calibrated for name, fit in self.fits.items()}


# --- entry points ---------------------------------------------------------------------------


def calibrate(paths: list[str], *, run_id: str | None = None,
              now: float | None = None) -> Calibration:
    """Read the traces at ``paths`` and calibrate (module docstring). OSError for a file
    that cannot be read; :class:`CalibrationError` when no run header is selected."""
    records: list[dict] = []
    for path in paths:
        records.extend(read_trace(os.fspath(path)))
    return calibrate_records(records, paths=[os.fspath(p) for p in paths], run_id=run_id,
                             now=now)


def calibrate_records(records: Iterable[dict], *, paths: list[str] | None = None,
                      run_id: str | None = None, now: float | None = None) -> Calibration:
    """:func:`calibrate` on records already read."""
    records = [r for r in records if isinstance(r, dict)]
    headers = sorted((r for r in records if r.get("type") == "run"
                      and (run_id is None or r.get("run_id") == run_id)),
                     key=lambda r: _number(r.get("started_at")) or 0.0)
    where = ", ".join(paths or []) or "the records"
    if not headers:
        raise CalibrationError(f"no run header in {where}"
                               + (f" for run {run_id}" if run_id else "")
                               + ": calibrate reads traces written by `moac run` or `moac eval`")
    warnings: list[str] = []
    plans, providers, models = _declarations(headers, warnings)
    if not models:
        raise CalibrationError(f"the run headers in {where} declare no model")
    runs = set(plans)
    calls = _unique((r for r in records if r.get("type") == "call" and r.get("run_id") in runs
                     and r.get("status") == "ok"),
                    ("run_id", "query_id", "node", "attempt"))
    verdicts = _unique((r for r in records if r.get("type") == "quality"
                        and (run_id is None or run_id in (r.get("run_id"),
                                                          r.get("answer_run_id")))),
                       ("run_id", "pipeline", "query_id", "turn", "judge", "protocol"))
    by_model: dict[str, list[dict]] = {}
    for call in calls:
        by_model.setdefault(call.get("model"), []).append(call)
    strangers = sorted(str(m) for m in by_model if m not in models)
    if strangers:
        warnings.append(f"calls of models no header declares were ignored: "
                        f"{', '.join(strangers)}")
    fits = {name: fit_model(spec, by_model.get(name, []), verdicts)
            for name, spec in models.items()}
    calibration = Calibration(
        paths=list(paths or []), run_ids=sorted(runs), providers=providers, fits=fits,
        created_at=time.time() if now is None else now,
        calls=sum(len(by_model.get(name, [])) for name in models), warnings=warnings)
    # A query with an answer from the response cache took less time and money than its
    # models would have: it says nothing of the estimate's error.
    replayed = {(c.get("run_id"), c.get("query_id")) for c in calls if _sample(c) is None}
    queries = _unique((r for r in records if r.get("type") == "query"
                       and r.get("run_id") in runs
                       and (r.get("run_id"), r.get("query_id")) not in replayed),
                      ("run_id", "query_id"))
    calibration.replayed = len(replayed)
    calibration.queries, calibration.errors = compare_estimates(queries, plans,
                                                                calibration.models)
    calibration.pipelines = compare_quality(verdicts, plans, calibration.models)
    calibration.pipelines, calibration.planner = fit_quality_base(
        calibration.pipelines, plans, calibration.models)
    return calibration


# --- reading the headers ---------------------------------------------------------------------


def plans_of(plan: Any) -> dict[str, dict]:
    """The pipeline plans (as dicts) in a header's ``plan``: itself, or a route's
    candidates; empty for anything else."""
    if not isinstance(plan, dict):
        return {}
    if plan.get("format") == "moac-plan":
        return {str(plan.get("pipeline")): plan}
    if plan.get("format") == "moac-route" and isinstance(plan.get("candidates"), dict):
        return {name: p for name, p in plan["candidates"].items()
                if isinstance(p, dict) and p.get("format") == "moac-plan"}
    return {}


def _declarations(headers: list[dict], warnings: list[str]):
    """Plans by run id and pipeline, and the providers and models they declare (the latest
    header's declaration wins; in the order first seen)."""
    plans: dict[str, dict[str, dict]] = {}
    providers: dict[str, ProviderSpec] = {}
    models: dict[str, ModelSpec] = {}
    for header in headers:
        run = str(header.get("run_id"))
        found = plans_of(header.get("plan"))
        if not found:
            warnings.append(f"run {run}: its header holds no plan moac can read; skipped")
            continue
        plans.setdefault(run, {}).update(found)
        for plan in found.values():
            for table, kind, out in ((plan.get("providers"), ProviderSpec, providers),
                                     (plan.get("models"), ModelSpec, models)):
                for name, data in (table or {}).items():
                    try:
                        spec = kind.model_validate(data)
                    except ValueError:
                        warnings.append(f"run {run}: {kind.__name__[:-4].lower()} '{name}' "
                                        "is not one this moac reads; skipped")
                        continue
                    if name in out and out[name] != spec:
                        warnings.append(f"{kind.__name__[:-4].lower()} '{name}' is declared "
                                        f"differently in run {run}; that latest declaration "
                                        "is the base")
                    out[name] = spec
    return plans, providers, models


def _unique(records: Iterable[dict], keys: tuple[str, ...]) -> list[dict]:
    seen: set = set()
    out = []
    for record in records:
        key = tuple(str(record.get(k)) for k in keys)
        if key not in seen:
            seen.add(key)
            out.append(record)
    return out


# --- fitting one model -----------------------------------------------------------------------


def fit_model(declared: ModelSpec, calls: list[dict], verdicts: list[dict]) -> ModelFit:
    """Calibrate one model from its ok call lines and every quality line (module docstring)."""
    fit = ModelFit(declared.name, declared, declared, answers=len(calls))
    changes: dict[str, Any] = {}
    answers = [c for c in calls if c.get("finish_reason") != "length"]
    fit.cut = len(calls) - len(answers)
    if calls:
        changes.update(_fit_length(fit, declared, answers))
    samples = [s for s in map(_sample, calls) if s is not None]
    fit.latency_samples = len(samples)
    if calls:
        speed, fit.speed = fit_speed(samples, declared)
        changes.update(speed)
    changes.update(_fit_quality(fit, declared, verdicts))
    fit.calibrated = declared.model_copy(update=changes)
    return fit


def _fit_length(fit: ModelFit, declared: ModelSpec, answers: list[dict]) -> dict:
    cut = f", {fit.cut} cut at max_tokens left out" if fit.cut else ""
    if len(answers) < MIN_SAMPLES:
        fit.length = f"length kept ({len(answers)} whole answers{cut}, need {MIN_SAMPLES})"
        return {}
    thought = [min(_number(c.get("reasoning_tokens")) or 0.0,
                   _number(c.get("completion_tokens")) or 0.0) for c in answers]
    tokens = [(_number(c.get("completion_tokens")) or 0.0) - t
              for c, t in zip(answers, thought)]
    length = max(1, int(round(float(np.mean(tokens)))))
    bound = ("; a lower bound, so many were cut"
             if fit.cut > CUT_WARNING_SHARE * fit.answers else "")
    fit.length = (f"length {declared.answer_tokens} -> {length} tok "
                  f"({len(answers)} answers{cut}{bound})")
    changes: dict = {"answer_tokens": length}
    if declared.thinking_tokens or any(thought):
        thinking = int(round(float(np.mean(thought))))
        fit.length += f"; thinking {declared.thinking_tokens} -> {thinking} tok"
        changes["thinking_tokens"] = thinking
    return changes


def _sample(call: dict) -> Sample | None:
    duration = _number(call.get("duration_s"))
    # `cached` says so since traces carry it; the duration test reads older traces.
    if call.get("cached") or duration is None or duration < MIN_DURATION_S:
        return None
    ttft = _number(call.get("ttft_s"))
    shown = _number(call.get("reasoning_ttft_s"))
    if shown is not None:  # the first token shown was thinking
        ttft = shown if ttft is None else min(ttft, shown)
    elif (_number(call.get("reasoning_tokens")) or 0) > 0:
        ttft = None  # it thought unseen: the first answer token came after its thinking
    return Sample(duration, ttft if ttft is not None and ttft > 0 else None,
                  int(_number(call.get("prompt_tokens")) or 0),
                  int(_number(call.get("completion_tokens")) or 0))


def fit_speed(samples: list[Sample], declared: ModelSpec) -> tuple[dict, str]:
    """(ModelSpec fields to change, the note) from latency samples (module docstring)."""
    kept = f"speed kept ({len(samples)} samples"
    if len(samples) < MIN_SAMPLES:
        return {}, f"{kept}, need {MIN_SAMPLES})"
    if _spread([s.completion for s in samples]) < MIN_ANSWER_SPREAD:
        return {}, f"{kept}: answer lengths too alike to tell the rate from the ttft)"
    streamed = [s for s in samples if s.ttft is not None and s.ttft < STREAMED_SHARE * s.duration]
    if len(streamed) >= MIN_SAMPLES:
        fitted = _fit_streamed(streamed, declared)
    else:
        fitted = _fit_whole(samples, declared)
    if fitted is None:
        return {}, f"{kept}: time does not grow with answer length)"
    ttft, rate, prefill = fitted
    changes = {"ttft_s": round(max(ttft, 0.0), 3), "output_tokens_per_s": round(rate, 1),
               "prefill_tokens_per_s": declared.prefill_tokens_per_s
               if prefill is None else float(round(prefill))}
    if changes["output_tokens_per_s"] <= 0 or changes["prefill_tokens_per_s"] <= 0:
        return {}, f"{kept}: the fitted rate rounds to 0 tok/s)"
    note = (f"speed {_speed(declared.ttft_s, declared.output_tokens_per_s)} -> "
            f"{_speed(changes['ttft_s'], changes['output_tokens_per_s'])} ({len(samples)} "
            "samples" + (f", {len(streamed)} streamed" if len(streamed) < len(samples) else ""))
    if prefill is None:
        note += "; prefill kept: prompts too alike or no positive slope)"
    else:
        note += (f"; prefill {declared.prefill_tokens_per_s:g} -> "
                 f"{changes['prefill_tokens_per_s']:g} tok/s)")
    return changes, note


def _fit_streamed(samples: list[Sample], declared: ModelSpec):
    """(ttft, rate, prefill or None) from first-token times, then generation times."""
    p, c, t, d = (np.array(v, dtype=float) for v in zip(
        *((s.prompt, s.completion, s.ttft, s.duration) for s in samples)))
    prefill = None
    first = None
    if _spread(p) >= MIN_PROMPT_SPREAD:
        intercept, slope = _line(p, t)
        if slope > 0 and intercept >= 0:
            first, prefill = intercept, 1.0 / slope
    if first is None:
        first = float(np.median(t - p / declared.prefill_tokens_per_s))
    after_last, per_token = _line(c, d - t)
    if per_token <= 0:
        return None
    return first + after_last, 1.0 / per_token, prefill


def _fit_whole(samples: list[Sample], declared: ModelSpec):
    """(ttft, rate, prefill or None) from whole durations (answers not streamed)."""
    p, c, d = (np.array(v, dtype=float) for v in zip(
        *((s.prompt, s.completion, s.duration) for s in samples)))
    if _spread(p) >= MIN_PROMPT_SPREAD:
        coef = np.linalg.lstsq(np.column_stack([np.ones_like(c), c, p]), d, rcond=None)[0]
        if coef[1] > 0 and coef[2] > 0:
            return float(coef[0]), 1.0 / float(coef[1]), 1.0 / float(coef[2])
    intercept, per_token = _line(c, d - p / declared.prefill_tokens_per_s)
    if per_token <= 0:
        return None
    return intercept, 1.0 / per_token, None


def _line(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Least-squares (intercept, slope) of y on x."""
    coef = np.linalg.lstsq(np.column_stack([np.ones_like(x), x]), y, rcond=None)[0]
    return float(coef[0]), float(coef[1])


def _spread(values) -> float:
    values = np.asarray(values, dtype=float)
    mean = float(np.mean(values)) if values.size else 0.0
    return float(np.std(values)) / mean if mean > 0 else 0.0


def _fit_quality(fit: ModelFit, declared: ModelSpec, verdicts: list[dict]) -> dict:
    """A model's quality prior is its AlpacaEval-style LC win rate alone: the pairwise
    verdicts of ``single:NAME``, from one judge on one prompt set (the largest group when
    there are several: verdicts against other references are another scale), length
    controlled when the verdicts carry both answers' lengths."""
    mine = [v for v in verdicts if v.get("pipeline") == SINGLE_PREFIX + declared.name]
    pairwise = [v for v in mine if v.get("protocol") == "pairwise"
                and _number(v.get("preference")) is not None]
    groups: dict[tuple, list[dict]] = {}
    for v in pairwise:
        groups.setdefault((v.get("judge"), v.get("prompts")), []).append(v)
    chosen = max(groups.values(), key=len) if groups else []
    prefs = [_number(v.get("preference")) for v in chosen]
    fit.scores = [s for s in (_number(v.get("score")) for v in mine
                              if v.get("protocol") == "single") if s is not None]
    fit.judged = len(prefs)
    notes = []
    changes = {}
    if len(prefs) >= MIN_SAMPLES:
        rate, stderr = win_rate(prefs)
        how = "win rate"
        lengths = [(v.get("candidate_chars"), v.get("reference_chars")) for v in chosen]
        if all(isinstance(a, int) and isinstance(b, int) for a, b in lengths):
            from moac.evaluation.stats import length_controlled_win_rate
            rate = length_controlled_win_rate(prefs, [a for a, _ in lengths],
                                              [b for _, b in lengths]).rate
            how = "LC win rate"
        changes["quality"] = round(rate, 1)
        before = "unknown" if declared.quality is None else f"{declared.quality:g}"
        judge, prompts = chosen[0].get("judge"), chosen[0].get("prompts")
        others = f"; {len(pairwise) - len(chosen)} verdicts of other judges or prompt sets " \
            "left out" if len(pairwise) > len(chosen) else ""
        notes.append(f"quality {before} -> {changes['quality']:g} ({how} of {len(prefs)} "
                     f"verdicts by {judge}{' on ' + prompts if prompts else ''}, "
                     f"+/-{stderr:.1f}{others})")
    elif prefs:
        notes.append(f"quality kept ({len(prefs)} verdicts, need {MIN_SAMPLES})")
    if fit.scores:
        notes.append(f"single-answer score {np.mean(fit.scores):.1f}/10 over "
                     f"{len(fit.scores)} (another scale: quality not changed by it)")
    fit.quality = "; ".join(notes)
    return changes


def win_rate(preferences: list[float]) -> tuple[float, float]:
    """(mean preference x 100, its standard error in points)."""
    values = np.asarray(preferences, dtype=float) * 100
    stderr = float(np.std(values, ddof=1) / math.sqrt(len(values))) if len(values) > 1 else 0.0
    return float(np.mean(values)), stderr


# --- estimate error, before and after --------------------------------------------------------

_METRICS = (("cost", "usd", lambda q: _number(q.get("cost_usd"))),
            ("latency", "latency_s", lambda q: _number(q.get("latency_s"))),
            ("output tokens", "output_tokens", lambda q: _number(q.get("completion_tokens"))),
            ("all tokens", None, lambda q: (_number(q.get("prompt_tokens")) or 0)
             + (_number(q.get("completion_tokens")) or 0)))


def compare_estimates(queries: list[dict], plans: dict[str, dict[str, dict]],
                      models: dict[str, ModelSpec]) -> tuple[int, list[ErrorRow]]:
    """(queries compared, one :class:`ErrorRow` per metric): each ok query's recorded
    expected-case estimate, and its re-estimate with ``models``, against what it measured."""
    from planner.estimate import estimate

    rebuilt: dict[tuple[str, str], Any] = {}
    pairs: list[tuple[dict, dict, dict]] = []  # (query, estimate before, after)
    for query in queries:
        before = query.get("estimate")
        plan = plans.get(query.get("run_id"), {}).get(query.get("pipeline"))
        prompt = _number(before.get("prompt_tokens")) if isinstance(before, dict) else None
        if (query.get("status") != "ok" or plan is None or prompt is None
                or before.get("mode", "expected") != "expected"
                or query.get("fitted")):  # a sub-plan ran, not the header's plan
            continue
        key = (query["run_id"], query["pipeline"])
        if key not in rebuilt:
            rebuilt[key] = with_models(plan, models)
        if rebuilt[key] is None:
            continue
        after = estimate(rebuilt[key], prompt_tokens=int(prompt), mode="expected").as_dict()
        pairs.append((query, before, after))
    rows = []
    for metric, field_name, measured in _METRICS:
        errors: list[tuple[float, float]] = []
        for query, before, after in pairs:
            actual = measured(query)
            if actual is None or actual <= 0:
                continue  # no relative error of a zero (a free local model's dollars)
            guess = [(_number(e.get(field_name)) if field_name else
                      (_number(e.get("input_tokens")) or 0) + (_number(e.get("output_tokens"))
                                                               or 0)) for e in (before, after)]
            if None not in guess:
                errors.append(tuple(abs(g - actual) / actual * 100 for g in guess))
        mean = np.mean(errors, axis=0) if errors else (None, None)
        rows.append(ErrorRow(metric, len(errors), *(None if m is None else float(m)
                                                   for m in mean)))
    return len(pairs), rows


def with_models(plan: dict, models: dict[str, ModelSpec] | None = None):
    """The :class:`moac.ir.Plan` of a plan dict, its models replaced by ``models``; None
    for a plan this moac cannot read."""
    from moac.ir import Plan, PlanError
    data = dict(plan)
    data["models"] = {name: (models[name].model_dump(mode="json") if name in (models or {})
                             else spec) for name, spec in (plan.get("models") or {}).items()}
    try:
        return Plan.from_dict(data)
    except PlanError:
        return None


def compare_quality(verdicts: list[dict], plans: dict[str, dict[str, dict]],
                    models: dict[str, ModelSpec]) -> list[PipelineQuality]:
    """Measured pairwise win rates of whole pipelines (not ``single:`` ones) against the
    quality model's prediction with the declared and the calibrated priors (None where a
    prior is missing: the prediction would be the quality model's assumption)."""
    from planner.quality import MoaQualityModel, predicted_or_none

    known = {name: plan for by_name in plans.values() for name, plan in by_name.items()
             if not name.startswith(SINGLE_PREFIX)}
    out = []
    for name, plan in known.items():
        prefs = [p for p in (_number(v.get("preference")) for v in verdicts
                             if v.get("pipeline") == name and v.get("protocol") == "pairwise")
                 if p is not None]
        before, after = with_models(plan), with_models(plan, models)
        if not prefs or before is None or after is None:
            continue
        measured, stderr = win_rate(prefs)
        quality = MoaQualityModel()
        out.append(PipelineQuality(name, len(prefs), measured, stderr,
                                   predicted_or_none(quality, before),
                                   predicted_or_none(quality, after)))
    return out


def fit_quality_base(rows: list[PipelineQuality], plans: dict[str, dict[str, dict]],
                     models: dict[str, ModelSpec]
                     ) -> tuple[list[PipelineQuality], dict[str, float]]:
    """The quality model's base (C in planner/quality.py) refitted, by least squares, to
    the measured pipelines (after the priors are calibrated): predictions are affine in C,
    with a slope each plan's shape sets, so one step solves it. The rows with ``fitted``
    set, and the ``planner`` block settings to write (empty when no whole pipeline was
    measured enough).
    The other coefficients keep their fitted defaults: a few pipelines cannot pin six.
    A pipeline resting on a model with no quality, even calibrated, is left out: its
    prediction is an assumption, and C fitted to it would be too."""
    from planner.quality import MoaQualityModel
    known = {name: plan for by_name in plans.values() for name, plan in by_name.items()}
    points = []
    for row in rows:
        plan = with_models(known[row.pipeline], models) if row.pipeline in known else None
        if plan is None or row.judged < MIN_SAMPLES:
            continue
        model = MoaQualityModel.of(plan)
        if not model.known(plan):
            continue
        at = model.predict(plan)
        slope = MoaQualityModel(**{**model.__dict__, "base": model.base + 1}).predict(plan) - at
        if slope > 1e-9:  # a plan with no layer before its aggregator does not read C
            points.append((row, plan, model, at, slope))
    if not points:
        return rows, {}
    shift = sum(s * (r.measured - at) for r, _, _, at, s in points) / \
        sum(s * s for *_, s in points)
    base = round(points[0][2].base + shift, 2)
    fitted = {id(row): MoaQualityModel(**{**model.__dict__, "base": base}).predict(plan)
              for row, plan, model, _, _ in points}
    return [dataclasses.replace(row, fitted=fitted.get(id(row))) for row in rows], \
        {"quality_base": base}


def _speed(ttft: float, rate: float) -> str:
    return f"{ttft:g}s ttft, {rate:g} tok/s"


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None
