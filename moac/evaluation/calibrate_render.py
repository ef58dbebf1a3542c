"""Text of a :class:`moac.evaluation.calibrate.Calibration`: the ``.moa`` catalog and the report.

Contract of :func:`render_moa`: a complete catalog (every provider and model the traces'
plans declare, under the same names, in the syntax of ``examples/catalog.moa``) that a
pipeline file can ``import`` in place of the catalog its runs were built from, and that
reads back (:func:`moac.compile_string`) as exactly ``calibration.providers`` and
``calibration.models``: every number is written in the unit whose factor is 1 (seconds,
billions, tokens) and with as many digits as it takes to read back the same float. Of a
key only the environment variable's *name* is ever written (``api_key = env NAME``).
A header comment says what wrote the file, from which traces, when, and per model what
changed and why the rest was kept.

:func:`report` is the before/after table ``moac calibrate`` prints.
"""

from __future__ import annotations

import time

import numpy as np

from moac import constants
from moac.checks.model_api import implied_api, openai_reasoning_id
from moac.evaluation.calibrate import Calibration, ModelFit
from moac.lang.fmt import string_literal
from moac.ir.spec import ModelSpec, ProviderSpec

INDENT = "  "


def render_moa(calibration: Calibration) -> str:
    """The calibrated catalog as ``.moa`` source (module docstring)."""
    out = _header(calibration)
    for provider in calibration.providers.values():
        out += ["", *_provider(provider)]
    for fit in calibration.fits.values():
        out += ["", *_model(fit.calibrated)]
    if calibration.planner:
        out += ["", "planner {"] + [f"  {key} = {value:g}"
                                    for key, value in calibration.planner.items()] + ["}"]
    return "\n".join(out) + "\n"


def _header(c: Calibration) -> list[str]:
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(c.created_at))
    lines = [f"Written by `moac calibrate` on {when} from {_clean(', '.join(c.paths))}",
             f"(runs {_clean(', '.join(c.run_ids))}: {c.calls} ok calls, {c.queries} "
             "queries with an estimate).",
             "Import it in place of the catalog those runs were built from: the names are "
             "the same.", ""]
    for fit in c.fits.values():
        notes = [n for n in (fit.length, fit.speed, fit.quality) if n]
        lines.append(f"{fit.name}: " + ("; ".join(notes) if notes else "no ok calls: kept"))
    return ["# " + _clean(line) if line else "#" for line in lines]


def _provider(p: ProviderSpec) -> list[str]:
    settings = [("kind", p.kind)]
    if p.base_url is not None:
        settings.append(("base_url", string_literal(p.base_url)))
    if p.api_key_env is not None:
        settings.append(("api_key", f"env {p.api_key_env}"))  # the name, never a value
    if p.model_path is not None:
        settings.append(("model_path", string_literal(p.model_path)))
    settings.append(("parallel", str(p.parallel)))
    if p.rpm is not None:
        settings.append(("rpm", number(p.rpm)))
    settings.append(("timeout", number(p.timeout_s) + "s"))
    for key, value, default in (
            ("connect_timeout", p.connect_timeout_s, constants.DEFAULT_CONNECT_TIMEOUT_S),
            ("read_timeout", p.read_timeout_s, constants.DEFAULT_READ_TIMEOUT_S)):
        if value != default:
            settings.append((key, number(value) + "s"))
    if p.max_retries != constants.DEFAULT_MAX_RETRIES:
        settings.append(("max_retries", str(p.max_retries)))
    return _block(f"provider {p.name}", settings)


def _model(m: ModelSpec) -> list[str]:
    if m.usd_per_m_input == m.usd_per_m_output:
        price = f"${number(m.usd_per_m_input, 2)}/M"
    else:
        price = (f"${number(m.usd_per_m_input, 2)}/M in, "
                 f"${number(m.usd_per_m_output, 2)}/M out")
    params = f"{number(m.active_params_b)}B"
    if m.total_params_b != m.active_params_b:
        params += f" active, {number(m.total_params_b)}B total"
    context = (f"{m.context_tokens // 1024}k" if m.context_tokens % 1024 == 0
               else f"{m.context_tokens} tok")
    speed = f"{number(m.ttft_s)}s ttft, {number(m.output_tokens_per_s)} tok/s"
    if m.prefill_tokens_per_s != constants.DEFAULT_PREFILL_TOKENS_PER_S:
        speed += f", {number(m.prefill_tokens_per_s)} tok/s prefill"
    settings = [("price", price), ("params", params), ("context", context), ("speed", speed)]
    if m.quality is not None:
        settings.append(("quality", number(m.quality)))
    settings.append(("length", f"{m.answer_tokens} tok"))
    settings += _api(m)
    return _block(f"model {m.name} = {m.provider} {string_literal(m.model_id)}", settings)


def _api(m: ModelSpec) -> list[tuple[str, str]]:
    """The API settings that read back as ``m``'s (what ``reasoning`` and the model id
    would not imply: :mod:`moac.checks.model_api`)."""
    settings = []
    if m.reasoning or openai_reasoning_id(m.model_id):
        settings.append(("reasoning", "true" if m.reasoning else "false"))
    implied = implied_api(m.reasoning)
    if m.token_param != implied["token_param"]:
        settings.append(("token_param", m.token_param))
    if m.fixed_temperature != implied["fixed_temperature"]:
        settings.append(("temperature", "fixed" if m.fixed_temperature else "any"))
    if m.thinking_tokens != implied["thinking_tokens"]:
        settings.append(("thinking", f"{m.thinking_tokens} tok"))
    return settings


def _block(head: str, settings: list[tuple[str, str]]) -> list[str]:
    return [head + " {", *(f"{INDENT}{key} = {value}" for key, value in settings), "}"]


def number(value: float, places: int = 0) -> str:
    """``value`` in plain decimals (no exponent, which a unit could not follow), with at
    least ``places`` decimals when those read back as the same float, else the fewest
    digits that do."""
    if places:
        fixed = f"{value:.{places}f}"
        if float(fixed) == value:
            return fixed
    return np.format_float_positional(float(value), trim="-")


def _clean(text: str) -> str:
    """One comment line: control characters (a newline in a path) would end the comment."""
    return "".join(ch if ch.isprintable() else "?" for ch in text)


# --- the report ----------------------------------------------------------------------------


def report(calibration: Calibration) -> str:
    """What changed per model, the estimate error before and after, and the pipelines'
    measured quality against the prediction before and after."""
    c = calibration
    out = [f"calibrated {len(c.fits)} models from {len(c.run_ids)} run(s): {c.calls} ok "
           f"calls, {c.queries} queries with an estimate", ""]
    rows = [("model", "length (tok)", "ttft (s)", "output tok/s", "prefill tok/s",
             "quality")]
    rows += [_model_row(fit) for fit in c.fits.values()]
    out += _table(rows)
    notes = [f"  {fit.name}: {note}" for fit in c.fits.values()
             for note in (fit.length, fit.speed, fit.quality) if "kept" in note
             or "score" in note or "lower bound" in note]
    if notes:
        out += ["", "why figures were kept, and what else was measured:", *notes]
    errors = [e for e in c.errors if e.queries]
    if errors:
        out += ["", f"estimate error (mean absolute % error, expected case, "
                    f"{c.queries} queries):"]
        out += _table([("", "before", "after", "queries")] + [
            (e.metric, _percent(e.before), _percent(e.after), str(e.queries))
            for e in errors], indent="  ")
        if c.replayed:
            out.append(f"  ({c.replayed} queries with answers from the response cache left "
                       "out: they took no model's time)")
    else:
        out += ["", "estimate error: no ok query line with an expected-case estimate"]
    if c.pipelines:
        out += ["", "pipeline quality (pairwise win rate; predicted by the quality model):"]
        out += _table([("pipeline", "measured", "predicted before", "with priors",
                        "with priors and base")] + [
            (q.pipeline, f"{q.measured:.1f} +/-{q.stderr:.1f} ({q.judged})",
             _quality(q.before), _quality(q.after),
             "-" if q.fitted is None else f"{q.fitted:.1f}") for q in c.pipelines],
            indent="  ")
        if c.planner:
            out.append("  refitted: " + ", ".join(f"{k} {v:g}" for k, v in c.planner.items())
                       + " (written as a planner block)")
    out += [f"warning: {w}" for w in c.warnings]
    return "\n".join(out) + "\n"


def _model_row(fit: ModelFit) -> tuple[str, ...]:
    d, m = fit.declared, fit.calibrated
    return (fit.name, _change(d.answer_tokens, m.answer_tokens),
            _change(d.ttft_s, m.ttft_s), _change(d.output_tokens_per_s, m.output_tokens_per_s),
            _change(d.prefill_tokens_per_s, m.prefill_tokens_per_s),
            _change(d.quality, m.quality))


def _quality(value: float | None) -> str:
    return "unknown" if value is None else f"{value:.1f}"


def _change(before, after) -> str:
    show = (lambda v: "-" if v is None else f"{v:g}")
    return show(before) if before == after else f"{show(before)} -> {show(after)}"


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}%"


def _table(rows: list[tuple[str, ...]], indent: str = "") -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return [indent + "  ".join(cell.ljust(w) if i == 0 else cell.rjust(w)
                               for i, (cell, w) in enumerate(zip(row, widths))).rstrip()
            for row in rows]
