"""Pass 6: judges name a model, a protocol, and (for pairwise) what the references are."""

from __future__ import annotations

from moac import constants
from moac.lang import ast
from moac.checks.catalog import read_budget_settings
from moac.checks.state import CheckState
from moac.checks.values import Reader, read_each
from moac.ir.spec import JudgeSpec

PROTOCOLS = ("pairwise", "single")
JUDGE_KEYS = ("model", "protocol", "reference", "temperature", "max_tokens")


def read_judges(state: CheckState) -> None:
    read_each(state, state.judges, _read_judge, state.judge_specs)


def _read_judge(state: CheckState, reader: Reader, node: ast.Judge) -> JudgeSpec | None:
    what = f"judge '{node.name.name}'"
    before = len(state.diagnostics)
    # A judge's own per-call bounds (max_usd, max_latency, ...), apart from the pipelines'.
    budget = read_budget_settings(reader, node.settings, what, extra_keys=JUDGE_KEYS)
    settings = {s.key.name: s for s in node.settings if s.key.name in JUDGE_KEYS}
    fields: dict = {"name": node.name.name, "path": reader.path, "budget": budget}
    for key, hint in (("model", "add `model = gpt4o`"),
                      ("protocol", "add `protocol = pairwise` (against a reference answer) "
                                   "or `protocol = single` (a score from 1 to 10)")):
        if key not in settings:
            reader.report("E204", f"{what} has no '{key}'", node.name.span, hint=hint)
    if "model" in settings and (value := reader.single(settings["model"])) is not None:
        fields["model"] = _name_of(state, reader, value, "model", state.models)
    if "protocol" in settings and (value := reader.single(settings["protocol"])) is not None:
        fields["protocol"] = reader.choice(value, "protocol", PROTOCOLS)
    if "reference" in settings and (value := reader.single(settings["reference"])) is not None:
        known = {**state.pipelines, **state.models}
        fields["reference"] = _name_of(state, reader, value, "pipeline or model", known)
        if fields.get("protocol") == "single":
            reader.report("E505", f"{what} scores answers alone: 'reference' applies to "
                          "pairwise judges", settings["reference"].span)
    if "temperature" in settings and (value := reader.single(settings["temperature"])):
        fields["temperature"] = reader.in_range(
            reader.quantity(value, "number", "temperature"), 0, 2, "temperature", value.span)
    if "max_tokens" in settings and (value := reader.single(settings["max_tokens"])):
        fields["max_tokens"] = reader.integer(value, "max_tokens", minimum=1,
                                              maximum=constants.MAX_TOKEN_COUNT)
    if len(state.diagnostics) > before or any(v is None for v in fields.values()):
        return None
    return JudgeSpec(**fields)


def _name_of(state: CheckState, reader: Reader, value: ast.Value, kind: str, known: dict):
    names = reader.names(value, kind)
    if not names:
        return None
    if len(names) != 1:
        reader.report("E207", f"a judge's {kind} is one name", value.span)
        return None
    ident = ast.Ident(names[0].name, names[0].span)
    if ident.name not in known:
        state.unknown(kind, ident, reader.path, known, elsewhere=state.kind_of(ident.name))
        return None
    return ident.name
