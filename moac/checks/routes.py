"""Pass 5: routes name existing pipelines, known policies, and sensible thresholds."""

from __future__ import annotations

from moac.lang import ast
from moac.checks.catalog import read_budget_settings
from moac.checks.state import CheckState, suggest
from moac.checks.values import Reader, read_each
from moac.ir.spec import RouteSpec

POLICIES = ("budget", "preroute", "agreement", "learned")
ROUTE_KEYS = ("candidates", "policy", "agreement", "usd_per_point", "share", "router")


def read_routes(state: CheckState) -> None:
    read_each(state, state.routes, _read_route, state.route_specs)


def _read_route(state: CheckState, reader: Reader, node: ast.Route) -> RouteSpec | None:
    what = f"route '{node.name.name}'"
    before = len(state.diagnostics)
    budget = read_budget_settings(reader, node.settings, what, extra_keys=ROUTE_KEYS)
    settings = {s.key.name: s for s in node.settings if s.key.name in ROUTE_KEYS}
    fields: dict = {"name": node.name.name, "budget": budget, "path": reader.path}
    if "candidates" not in settings:
        reader.report("E204", f"{what} has no 'candidates'", node.name.span,
                      hint="add `candidates = [moa, moa_lite]`")
    else:
        fields["candidates"] = _candidates(state, reader, settings["candidates"])
    if "policy" in settings:
        fields["policies"] = _policies(reader, settings["policy"])
    for key, field, kind in (("agreement", "agreement", "fraction"),
                             ("share", "target_share", "fraction")):
        if key in settings and (value := reader.single(settings[key])) is not None:
            number = reader.quantity(value, kind, key)
            fields[field] = reader.in_range(number, 0, 1, key, value.span)
    if "usd_per_point" in settings and (value := reader.single(settings["usd_per_point"])):
        fields["usd_per_point"] = reader.positive(value, "usd", "usd_per_point")
    if "router" in settings and (value := reader.single(settings["router"])) is not None:
        fields["router"] = _router(reader, value, fields.get("candidates"))
    if len(state.diagnostics) > before or any(v is None for v in fields.values()):
        return None
    _policy_settings(reader, node, settings, fields.get("policies", ("budget",)))
    if fields.get("policies") and "agreement" in fields["policies"]:
        _shared_first_layer(state, reader, settings, fields["candidates"])
    if len(state.diagnostics) > before:
        return None
    return RouteSpec(**fields)


# The settings each policy reads; a setting whose policy is not on is a mistake.
_POLICY_SETTINGS = {"agreement": ("agreement",), "preroute": ("usd_per_point", "share"),
                    "learned": ("router",)}


def _router(reader: Reader, value: ast.Value, candidates) -> str | None:
    """The router file, relative to the .moa file, read now: a bad one is a compile error."""
    import os

    from planner.router_file import RouterFileError, read_router_file
    text = reader.string(value, "router")
    if text is None:
        return None
    path = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(reader.path)), text))
    try:
        router = read_router_file(path)
    except RouterFileError as error:
        # Say the path as written: the absolute one differs from machine to machine.
        reader.report("E507", str(error).replace(path, text), value.span,
                      hint="fit one with `moac fit-router TRACES --larger A --smaller B -o "
                           "router.json`")
        return None
    pair = (router["larger"], router["smaller"])
    missing = [name for name in pair if name not in (candidates or ())]
    if candidates and missing:
        reader.report("E507", f"the router chooses between {pair[0]} and {pair[1]}; "
                      f"{', '.join(missing)} is not a candidate", value.span)
        return None
    return path


def _policy_settings(reader: Reader, node: ast.Route, settings: dict, policies) -> None:
    where = settings["policy"].span if "policy" in settings else node.name.span
    for policy, keys in _POLICY_SETTINGS.items():
        if policy not in policies:
            for key in keys:
                if key in settings:
                    reader.report("E505", f"'{key}' is set but the route's policy has no "
                                  f"'{policy}'", settings[key].span,
                                  hint=f"add {policy} to `policy`, or remove `{key}`")
    if "preroute" in policies:
        given = [key for key in ("usd_per_point", "share") if key in settings]
        if not given:
            reader.report("E505", "policy 'preroute' needs 'usd_per_point' or 'share'", where,
                          hint="`usd_per_point = $0.002` (what one quality point is worth) "
                               "or `share = 0.3` (of queries sent to the larger pipeline)")
        elif len(given) == 2:
            reader.report("E505", "policy 'preroute' takes 'usd_per_point' or 'share', not "
                          "both", settings["share"].span)
    if "learned" in policies and "router" not in settings:
        reader.report("E505", "policy 'learned' needs 'router', a file written by "
                      "`moac fit-router`", where, hint='`router = "router.json"`')
    if "learned" in policies and "preroute" in policies:
        reader.report("E505", "policies 'preroute' and 'learned' both choose before any call; "
                      "use one", where)


def _shared_first_layer(state: CheckState, reader: Reader, settings: dict,
                        candidates: tuple[str, ...]) -> None:
    """The agreement policy needs two candidates that start with the same layer (the
    shared answers whose agreement decides)."""
    firsts = [state.pipeline_specs[c].layers[0] for c in candidates
              if c in state.pipeline_specs and state.pipeline_specs[c].layers]
    if len(firsts) == len(set(firsts)) and "candidates" in settings:
        reader.report("E506", "policy 'agreement': no two candidates start with the same "
                      "layer, so there are no shared answers to measure",
                      settings["candidates"].span,
                      hint="derive one candidate from another (`pipeline lite from moa { "
                           "without refine }`) so that both start with the same proposers")


def _candidates(state: CheckState, reader: Reader, setting: ast.Setting):
    value = reader.single(setting)
    names = value and reader.names(value, "candidates")
    if not names:
        return None
    found = []
    for item in names:
        ident = ast.Ident(item.name, item.span)
        if item.name in state.pipelines:
            found.append(item.name)
        elif item.name in state.routes:
            reader.report("E501", f"candidate '{item.name}' is a route; a route chooses among "
                          "pipelines", item.span)
        else:
            kind = state.kind_of(item.name)
            if kind:
                state.unknown("pipeline", ident, reader.path, state.pipelines, elsewhere=kind)
            else:
                reader.report("E501", f"route candidate '{item.name}' is not a pipeline",
                              item.span, hint=suggest(item.name, state.pipelines))
    if len(set(found)) != len(found):
        reader.report("E205", "a candidate is listed twice", value.span)
        return None
    if len(names) < 2:
        reader.report("E502", "a route chooses among at least two pipelines", value.span,
                      hint="to always run one pipeline, select it with --pipeline")
        return None
    return tuple(found) if len(found) == len(names) else None


def _policies(reader: Reader, setting: ast.Setting):
    value = reader.single(setting)
    names = value and reader.names(value, "policy")
    if not names:
        return None
    policies = []
    for item in names:
        if item.name not in POLICIES:
            reader.report("E503", f"unknown route policy '{item.name}'", item.span,
                          hint=suggest(item.name, POLICIES) or "policies: " + ", ".join(
                              POLICIES))
            return None
        policies.append(item.name)
    return tuple(policies)
