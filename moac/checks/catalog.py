"""Pass 2: read providers, models and budgets into specs, checking every setting.

A secret never appears here: ``api_key`` must be ``env NAME``, and a literal string in its
place is reported without echoing it.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

from moac import constants
from moac.lang import ast
from moac.checks.model_api import API_KEYS, API_READERS, api_defaults
from moac.checks.state import CheckState
from moac.checks.values import Reader, read_each, read_file_blocks
from moac.ir.spec import BudgetSpec, ModelSpec, ProviderSpec

_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

PROVIDER_KEYS = ("kind", "base_url", "api_key", "parallel", "rpm", "tpm", "timeout",
                 "connect_timeout", "read_timeout", "max_retries", "model_path")
MODEL_KEYS = ("price", "params", "context", "speed", "quality", "length") + API_KEYS
BUDGET_KEYS = ("max_usd", "max_latency", "max_tflops", "mode", "on_over_budget")


def read_providers(state: CheckState) -> None:
    read_each(state, state.providers, _read_provider, state.provider_specs)


def _read_provider(state: CheckState, reader: Reader, node: ast.Provider
                   ) -> ProviderSpec | None:
    what = f"provider '{node.name.name}'"
    settings = reader.settings(node.settings, PROVIDER_KEYS, what)
    values = {k: reader.single(s) for k, s in settings.items()}
    if "kind" not in settings:
        reader.report("E204", f"{what} has no 'kind'", node.name.span,
                      hint="add `kind = openai` (any OpenAI-compatible endpoint) or "
                           "`kind = local` (the embedded llama.cpp model)")
        return None
    kind = values["kind"] and reader.choice(values["kind"], "kind", ("openai", "local"))
    if kind is None:
        return None
    fields: dict = {"name": node.name.name, "kind": kind}
    ok = True
    for key, value in values.items():
        if value is None:
            ok = False
            continue
        if key == "base_url":
            if kind == "local":
                reader.report("E603", "a local provider has no base_url: moac starts the "
                              "model's server itself", settings[key].key.span)
                ok = False
                continue
            url = reader.string(value, key)
            problem = url is not None and _url_problem(url)
            if problem:
                reader.report("E602", f"invalid base_url: {problem}", value.span,
                              hint='e.g. "https://api.openai.com/v1"',
                              redact=problem in _SECRET_PROBLEMS)
                url = None
            fields["base_url"] = url
            ok = ok and url is not None
        elif key == "api_key":
            var = _read_env(reader, value)
            fields["api_key_env"] = var
            ok = ok and var is not None
        elif key == "model_path":
            if kind != "local":
                reader.report("E603", "model_path applies to local providers only",
                              settings[key].key.span)
                ok = False
                continue
            fields["model_path"] = reader.string(value, key)
        elif key == "parallel":
            fields["parallel"] = reader.integer(value, key, minimum=1,
                                                maximum=constants.MAX_PARALLEL)
        elif key == "max_retries":
            fields["max_retries"] = reader.integer(value, key, minimum=0,
                                                   maximum=constants.MAX_RETRIES)
        elif key in ("rpm", "tpm"):
            fields[key] = reader.positive(value, "number", key, maximum=constants.MAX_RPM
                                          if key == "rpm" else constants.MAX_TPM,
                                          smallest=constants.MIN_RATE)
        elif key in ("timeout", "connect_timeout", "read_timeout"):
            fields[f"{key}_s"] = reader.positive(value, "duration", key)
    if kind == "openai" and "base_url" not in settings:
        reader.report("E204", f"{what} has no 'base_url'", node.name.span,
                      hint='add e.g. `base_url = "https://api.openai.com/v1"`')
        ok = False
    if not ok or any(v is None for v in fields.values()):
        return None
    fields.setdefault("parallel", constants.DEFAULT_PARALLEL)
    fields.setdefault("timeout_s", constants.DEFAULT_TIMEOUT_S)
    fields.setdefault("connect_timeout_s", constants.DEFAULT_CONNECT_TIMEOUT_S)
    fields.setdefault("read_timeout_s", constants.DEFAULT_READ_TIMEOUT_S)
    fields.setdefault("max_retries", constants.DEFAULT_MAX_RETRIES)
    return ProviderSpec(**fields)


# Credentials in a URL would end up in plans and traces (and on screen in a diagnostic's
# source excerpt, which is masked for these two).
_CREDENTIALS = "it holds a user name or password; use `api_key = env VAR` for secrets"
_QUERY = "it has a query or fragment; keys in URLs would reach plans and traces"
_SECRET_PROBLEMS = (_CREDENTIALS, _QUERY)


def _url_problem(url: str) -> str | None:
    """Why ``url`` cannot be a provider's base URL, or None. Never echoes credentials."""
    try:
        parts = urlsplit(url)
        port = parts.port  # raises ValueError when out of range
    except ValueError as error:
        return f"{error}"
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return "it must start with http:// or https:// and a host"
    if parts.username is not None or parts.password is not None:
        return _CREDENTIALS
    if parts.query or parts.fragment:
        return _QUERY
    if any(c.isspace() for c in url):
        return "it contains whitespace"
    del port
    return None


def _read_env(reader: Reader, value: ast.Value) -> str | None:
    if isinstance(value, ast.Env):
        if not _ENV_NAME.fullmatch(value.var.name):
            reader.report("E202", f"'{value.var.name}' is not a valid environment variable "
                          "name", value.var.span)
            return None
        return value.var.name
    # Never echo the value: it may be a real key pasted into the file.
    reader.report("E601", "api_key must name an environment variable, not hold a value",
                  value.span, redact=True,
                  hint="write `api_key = env MY_API_KEY` and export MY_API_KEY; if a real key "
                       "was here, revoke it")
    return None


def read_models(state: CheckState) -> None:
    read_each(state, state.models, _read_model, state.model_specs)


def _read_model(state: CheckState, reader: Reader, node: ast.Model) -> ModelSpec | None:
    what = f"model '{node.name.name}'"
    provider_name = node.provider.name
    provider = state.provider_specs.get(provider_name)
    if provider_name not in state.providers:
        state.unknown("provider", node.provider, reader.path, state.providers,
                      elsewhere=state.kind_of(provider_name))
    settings = reader.settings(node.settings, MODEL_KEYS, what)
    local = provider is not None and provider.kind == "local"
    required = ("params", "context") if local else ("price", "params", "context")
    missing = [k for k in required if k not in settings]
    if missing:
        reader.report("E204", f"{what} has no {' or '.join(repr(k) for k in missing)}",
                      node.name.span, hint="e.g. `price = $0.90/M`, `params = 70B`, "
                                           "`context = 8k`")
    fields: dict = {"name": node.name.name, "provider": provider_name,
                    "model_id": node.model_id.value}
    if not node.model_id.value.strip():
        reader.report("E206", "the model id is empty", node.model_id.span)
    ok = not missing and bool(node.model_id.value.strip())
    for key, setting in settings.items():
        result = _MODEL_READERS[key](reader, setting)
        if result is None:
            ok = False
        else:
            fields.update(result)
    if not ok or provider is None:
        return None
    api_defaults(fields, provider)
    fields.setdefault("usd_per_m_input", 0.0)
    fields.setdefault("usd_per_m_output", 0.0)
    fields.setdefault("total_params_b", fields["active_params_b"])
    fields.setdefault("ttft_s", constants.DEFAULT_TTFT_S)
    fields.setdefault("output_tokens_per_s", constants.DEFAULT_OUTPUT_TOKENS_PER_S)
    fields.setdefault("prefill_tokens_per_s", constants.DEFAULT_PREFILL_TOKENS_PER_S)
    fields.setdefault("answer_tokens", constants.DEFAULT_ANSWER_TOKENS)
    if fields["total_params_b"] < fields["active_params_b"]:
        reader.report("E206", f"{what} has more active parameters than total ones",
                      settings["params"].span)
        return None
    return ModelSpec(**fields)


def _tagged(reader: Reader, setting: ast.Setting, kinds: dict[str | None, tuple[str, str]],
            what: str) -> dict | None:
    """Read ``value [tag], value [tag]`` where each tag selects a field and its unit kind.

    ``kinds`` maps a tag (None for no tag) to (field, kind).
    """
    out: dict = {}
    for value in setting.values:
        tag = value.tag.name if isinstance(value, ast.Quantity) and value.tag else None
        if tag not in kinds:
            words = ", ".join(repr(t) for t in kinds if t)
            span = value.tag.span if tag else value.span
            reader.report("E202", f"'{setting.key.name}' does not know '{tag}'" if tag else
                          f"'{setting.key.name}' needs a word after this value", span,
                          hint=f"words {what} takes: {words}")
            return None
        field, kind = kinds[tag]
        if field in out:
            reader.report("E205", f"'{setting.key.name}' gives {field.split('_')[0]} twice",
                          value.span)
            return None
        number = reader.quantity(value, kind, setting.key.name, allow_tag=True)
        if number is None or reader.at_least(number, 0, setting.key.name, value.span) is None:
            return None
        out[field] = number
    return out


def _read_price(reader: Reader, setting: ast.Setting) -> dict | None:
    if len(setting.values) == 1 and not getattr(setting.values[0], "tag", None):
        number = reader.quantity(setting.values[0], "price", "price")
        if number is None or reader.at_least(number, 0, "price", setting.span) is None:
            return None
        return {"usd_per_m_input": number, "usd_per_m_output": number}
    out = _tagged(reader, setting, {"in": ("usd_per_m_input", "price"),
                                    "out": ("usd_per_m_output", "price")}, "price")
    if out is not None and len(out) != 2:
        reader.report("E207", "price needs both 'in' and 'out' when either is given",
                      setting.span, hint="write `price = $5.00/M in, $15.00/M out`")
        return None
    return out


def _read_params(reader: Reader, setting: ast.Setting) -> dict | None:
    out = _tagged(reader, setting, {None: ("active_params_b", "params"),
                                    "active": ("active_params_b", "params"),
                                    "total": ("total_params_b", "params")}, "params")
    if out is not None and "active_params_b" not in out:
        reader.report("E207", "params needs the active count", setting.span,
                      hint="write `params = 39B active, 141B total`")
        return None
    if out is not None and out["active_params_b"] <= 0:
        reader.report("E206", "'params' must be greater than 0", setting.span)
        return None
    return out


def _read_speed(reader: Reader, setting: ast.Setting) -> dict | None:
    out = _tagged(reader, setting, {"ttft": ("ttft_s", "duration"),
                                    None: ("output_tokens_per_s", "rate"),
                                    "out": ("output_tokens_per_s", "rate"),
                                    "prefill": ("prefill_tokens_per_s", "rate")}, "speed")
    for key in ("output_tokens_per_s", "prefill_tokens_per_s"):
        if out is not None and out.get(key, 1) <= 0:
            reader.report("E206", "a speed must be greater than 0 tok/s", setting.span)
            return None
    return out


def _one(field: str, kind: str, low: float, high: float | None = None, integer=False):
    def read(reader: Reader, setting: ast.Setting) -> dict | None:
        value = reader.single(setting)
        if value is None:
            return None
        key = setting.key.name
        if integer:
            number = reader.integer(value, key, kind=kind, minimum=int(low))
        else:
            number = reader.quantity(value, kind, key)
            number = reader.in_range(number, low, high if high is not None else float("inf"),
                                     key, value.span)
        return None if number is None else {field: int(number) if integer else number}
    return read


_MODEL_READERS = {
    "price": _read_price,
    "params": _read_params,
    "speed": _read_speed,
    "context": _one("context_tokens", "tokens", 1, integer=True),
    "quality": _one("quality", "percent", 0, 100),
    "length": _one("answer_tokens", "tokens", 1, integer=True),
    **API_READERS,
}


def read_budgets(state: CheckState) -> None:
    """Merge the files' budget blocks: an importing file overrides what it imports."""
    def merge(budget: BudgetSpec) -> None:
        state.budget = state.budget.merged(budget)

    read_file_blocks(state, ast.Budget, "E504", "budget",
                     lambda reader, block: read_budget_settings(reader, block.settings,
                                                                "the budget"), merge)


def read_budget_settings(reader: Reader, settings, what: str, extra_keys=()) -> BudgetSpec:
    """A budget from ``max_usd``/``max_latency``/``max_tflops``/``mode``/``on_over_budget``
    settings; other keys in ``extra_keys`` are left to the caller."""
    indexed = reader.settings(settings, BUDGET_KEYS + tuple(extra_keys), what)
    fields: dict = {}
    kinds = {"max_usd": ("max_usd", "usd"), "max_latency": ("max_latency_s", "duration"),
             "max_tflops": ("max_tflops", "tflops")}
    for key, setting in indexed.items():
        value = reader.single(setting)
        if value is None or key in extra_keys:
            continue
        if key in ("mode", "on_over_budget"):
            choices = ("expected", "worst") if key == "mode" else ("shrink", "fail")
            chosen = reader.choice(value, key, choices)
            if chosen:
                fields[key] = chosen
            continue
        field, kind = kinds[key]
        number = reader.positive(value, kind, key)
        if number is not None:
            fields[field] = number
    return BudgetSpec(**fields)
