"""Pass 3: expand derived pipelines and resolve every layer and agent into specs.

Derivation (``pipeline moa_lite from moa { ... }``) starts from the base pipeline's
settings, layers and aggregator and applies the body in order: a setting overrides the
base's, a layer with a base layer's name replaces it in place and a new one is appended,
``without`` removes layers, ``aggregate`` replaces the aggregator and its fallback.

Sampling settings cascade: an agent's options, then its layer's, then the pipeline's, then
moac's defaults. A per-copy list (``qwen110 x 3 (temperature = [0.5, 0.7, 0.9])``) gives
each copy its own value; a single seed gives copies consecutive seeds so they differ.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

from moac import constants
from moac.lang import ast
from moac.checks.model_api import check_agent_options
from moac.checks.state import AgentSite, CheckState, suggest
from moac.checks.templates import check_template
from moac.checks.values import Reader
from moac.ir.spec import AgentSpec, LayerSpec, PipelineSpec, Sampling

SAMPLING_KEYS = ("temperature", "max_tokens", "top_p", "seed", "system", "reasoning_effort")
PIPELINE_KEYS = SAMPLING_KEYS + ("min_ok", "prompt", "references")
LAYER_KEYS = PIPELINE_KEYS
AGGREGATE_KEYS = SAMPLING_KEYS + ("prompt", "references")
REFERENCES = ("answer", "with_reasoning")

# The final stage of every plan is called "aggregate" (see moac.ir.lower).
RESERVED_LAYER_NAMES = ("aggregate", "fallback")

AGGREGATOR = -1
FALLBACK = -2


@dataclass
class _Flat:
    """A pipeline's statements after derivation, each with the file it was written in."""

    settings: dict[str, tuple[ast.Setting, str]] = field(default_factory=dict)
    # By name, in pipeline order: replacing a name keeps its place, a new name appends.
    layers: dict[str, tuple[ast.Layer, str]] = field(default_factory=dict)
    aggregate: tuple[ast.Aggregate, str] | None = None
    # How many bases are under it (0: it derives from none).
    depth: int = 0

    def copy(self) -> "_Flat":
        return _Flat(dict(self.settings), dict(self.layers), self.aggregate, self.depth + 1)


def expand_pipelines(state: CheckState) -> None:
    flats: dict[str, _Flat | None] = {}
    for name in state.pipelines:
        if state.agents_left < 0:
            break  # the workspace's agent limit was reported where it was passed
        flat = _flatten(state, name, flats)
        if flat is not None:
            spec = _Resolver(state, name, flat).resolve()
            if spec is not None:
                state.pipeline_specs[name] = spec


def _flatten(state: CheckState, name: str, flats: dict) -> _Flat | None:
    """The flattened statements of pipeline ``name`` (memoized in ``flats``), or None
    after reporting why there are none. Walks the chain of bases with a loop, not by
    recursion: a chain can be as long as a file is."""
    if name in flats:
        return flats[name]
    chain = [name]  # chain[i + 1] is the base of chain[i]
    where = {name: 0}
    # What the last of the chain derives from: nothing (an empty flat whose copy is at
    # depth 0), a flattened base, or None (a problem, reported).
    base_flat: _Flat | None = _Flat(depth=-1)
    too_deep = False
    while True:
        current = chain[-1]
        declared = state.pipelines[current]
        node, path = declared.node, declared.path
        if node.base is None:
            break
        base = node.base.name
        if base in where:
            cycle = " -> ".join(chain[where[base]:] + [base])
            state.report("E305", f"pipeline '{current}' derives from itself ({cycle})", path,
                         node.base.span)
            base_flat = None
            break
        if base not in state.pipelines:
            state.unknown("pipeline", node.base, path, state.pipelines,
                          elsewhere=state.kind_of(base))
            base_flat = None
            break
        if base in flats:
            base_flat = flats[base]
            break
        if len(chain) > constants.MAX_DERIVATION_DEPTH:
            too_deep = True
            break
        where[base] = len(chain)
        chain.append(base)
    if too_deep or base_flat is not None and \
            base_flat.depth + len(chain) > constants.MAX_DERIVATION_DEPTH:
        # Only the pipeline asked for is refused: those below it may be shallow enough.
        node = state.pipelines[name].node
        state.report("E311", f"pipeline '{name}' is derived through more than "
                     f"{constants.MAX_DERIVATION_DEPTH} bases ('{name}' from "
                     f"'{node.base.name}' from ...)", state.pipelines[name].path,
                     node.base.span, hint="derive it from a pipeline nearer the start of the "
                                          "chain, or write it out")
        flats[name] = None
        return None
    for current in reversed(chain):
        flat = None if base_flat is None else _apply_body(state, current, base_flat.copy())
        flats[current] = flat
        base_flat = flat
    return flats[name]


def _apply_body(state: CheckState, name: str, flat: _Flat) -> _Flat:
    """``flat`` (a copy of the base's statements, or empty) with pipeline ``name``'s own
    statements applied, in order."""
    declared = state.pipelines[name]
    node, path = declared.node, declared.path
    reader = Reader(state, path)
    body_settings: dict[str, ast.Setting] = {}
    body_layers: set[str] = set()
    aggregate_seen: ast.Aggregate | None = None
    for stage in node.stages:
        if isinstance(stage, ast.Setting):
            key = stage.key.name
            if key not in PIPELINE_KEYS:
                reader.report("E201", f"unknown setting '{key}' in pipeline '{name}'",
                              stage.key.span, hint=suggest(key, PIPELINE_KEYS)
                              or "known settings: " + ", ".join(PIPELINE_KEYS))
            elif key in body_settings:
                reader.report("E205", f"'{key}' is set twice in pipeline '{name}' (first on "
                              f"line {body_settings[key].span.line})", stage.key.span)
            else:
                body_settings[key] = stage
                flat.settings[key] = (stage, path)
        elif isinstance(stage, ast.Layer):
            layer_name = stage.name.name
            if aggregate_seen is not None:
                reader.report("E309", f"layer '{layer_name}' comes after the aggregator",
                              stage.name.span, hint="answers flow top to bottom: put "
                                                    "`aggregate` last")
            if layer_name in RESERVED_LAYER_NAMES:
                reader.report("E304", f"'{layer_name}' is the name of the final stage; call "
                              "the layer something else", stage.name.span)
                continue
            if layer_name in body_layers:
                reader.report("E304", f"pipeline '{name}' has two layers named "
                              f"'{layer_name}'", stage.name.span)
                continue
            body_layers.add(layer_name)
            flat.layers[layer_name] = (stage, path)
        elif isinstance(stage, ast.Without):
            for ident in stage.layers:
                if ident.name not in flat.layers:
                    reader.report("E306", f"pipeline '{name}' has no layer '{ident.name}' "
                                  "to leave out", ident.span,
                                  hint=suggest(ident.name, flat.layers)
                                  or _layers_hint(flat.layers))
                else:
                    del flat.layers[ident.name]
        elif isinstance(stage, ast.Aggregate):
            if aggregate_seen is not None:
                reader.report("E307", f"pipeline '{name}' has a second aggregator",
                              stage.span, hint=f"the first is on line "
                                               f"{aggregate_seen.span.line}; use `fallback` "
                                               "for a second model")
                continue
            aggregate_seen = stage
            flat.aggregate = (stage, path)
    return flat


def _layers_hint(layers: dict) -> str | None:
    """A pipeline's layers, the first few (a hint per error must not grow with the file)."""
    if not layers:
        return None
    shown = list(itertools.islice(layers, 8))
    more = len(layers) - len(shown)
    return "its layers: " + ", ".join(shown) + (f" and {more:,} more" if more else "")


class _Resolver:
    """Turns one flattened pipeline into a :class:`PipelineSpec`, reporting what is wrong."""

    def __init__(self, state: CheckState, name: str, flat: _Flat):
        self.state = state
        self.name = name
        self.flat = flat
        self.ok = True
        self.agents = 0  # expanded so far, copies counted
        self.over = False  # an agent limit was passed (and reported)
        self.defaults: dict[str, tuple] = {}
        for key, (setting, path) in flat.settings.items():
            value = self._value(Reader(state, path), setting, copies=None)
            if value is not None:
                self.defaults[key] = (value, setting, path)

    def resolve(self) -> PipelineSpec | None:
        layers = [self._layer(i, layer, path) for i, (layer, path) in
                  enumerate(self.flat.layers.values())]
        declared = self.state.pipelines[self.name]
        if self.flat.aggregate is None:
            self.state.report("E301", f"pipeline '{self.name}' has no aggregator",
                              declared.path, declared.node.name.span,
                              hint="end it with `aggregate MODEL`, the model that writes "
                                   "the final answer")
            return None
        aggregate, path = self.flat.aggregate
        has_inputs = bool(self.flat.layers)
        aggregator, prompt = self._single(aggregate.agent, path, AGGREGATOR, has_inputs)
        fallback = None
        if aggregate.fallback is not None:
            fallback, _ = self._single(aggregate.fallback, path, FALLBACK, has_inputs)
        if not self.ok or aggregator is None or any(layer is None for layer in layers):
            return None
        return PipelineSpec(name=self.name, base=getattr(declared.node.base, "name", None),
                            layers=tuple(layers), aggregator=aggregator,
                            aggregator_prompt=prompt, fallback=fallback, path=declared.path)

    # --- values ------------------------------------------------------------------------

    def _value(self, reader: Reader, setting: ast.Setting, copies: int | None):
        """A setting's value, or per-copy values (a list) for an agent with copies.

        Read once per setting (and number of copies) for the whole check: every pipeline
        derived from a base reads the base's settings again, and a long prompt checked
        once per derived pipeline would make the check quadratic in the file.
        """
        key = (id(setting), copies)
        if key not in self.state.setting_values:
            self.state.setting_values[key] = self._read_value(reader, setting, copies)
        result = self.state.setting_values[key]
        if result is None:
            self.ok = False
        return result

    def _read_value(self, reader: Reader, setting: ast.Setting, copies: int | None):
        value = reader.single(setting)
        if value is None:
            self.ok = False
            return None
        if isinstance(value, ast.ListValue):
            if copies is None:
                reader.report("E308", f"a list for '{setting.key.name}' gives one value per "
                              "copy, and only an agent with copies (`MODEL x N`) has copies",
                              value.span)
                self.ok = False
                return None
            if len(value.items) != copies:
                reader.report("E308", f"'{setting.key.name}' lists {len(value.items)} values "
                              f"for {copies} copies", value.span)
                self.ok = False
                return None
            items = [self._scalar(reader, setting.key.name, item) for item in value.items]
            if any(item is None for item in items):
                self.ok = False
                return None
            return items
        result = self._scalar(reader, setting.key.name, value)
        if result is None:
            self.ok = False
        return result

    def _scalar(self, reader: Reader, key: str, value: ast.Value):
        if key == "temperature":
            return reader.in_range(reader.quantity(value, "number", key), 0, 2, key,
                                   value.span)
        if key == "top_p":
            number = reader.in_range(reader.quantity(value, "number", key), 0, 1, key,
                                     value.span)
            return None if number is None else reader.at_least(number, 0, key, value.span,
                                                               strict=True)
        if key == "max_tokens":
            return reader.integer(value, key, kind="tokens", minimum=1)
        if key == "seed":
            return reader.integer(value, key, minimum=0, maximum=constants.MAX_SEED)
        if key == "min_ok":
            return reader.integer(value, key, minimum=1,
                                  maximum=constants.MAX_PIPELINE_AGENTS)
        if key == "reasoning_effort":
            return reader.choice(value, key, constants.REASONING_EFFORTS)
        if key == "references":
            return reader.choice(value, key, REFERENCES)
        if key in ("system", "prompt"):
            text = reader.string(value, key)
            if text is not None and key == "prompt" and not check_template(reader, value,
                                                                          text):
                return None
            return text
        raise AssertionError(key)

    def _options(self, reader: Reader, options, known, what: str, copies: int | None):
        out: dict[str, tuple] = {}
        for key, setting in reader.settings(options, known, what).items():
            value = self._value(reader, setting, copies)
            if value is not None:
                out[key] = (value, setting, reader.path)
        return out

    # --- layers and agents ----------------------------------------------------------------

    def _layer(self, index: int, layer: ast.Layer, path: str) -> LayerSpec | None:
        reader = Reader(self.state, path)
        what = f"layer '{layer.name.name}'"
        options = self._options(reader, layer.options, LAYER_KEYS, what, None)
        if not layer.agents:
            reader.report("E302", f"{what} has no agents", layer.agents_span
                          if layer.agents_span.line else layer.name.span,
                          hint="list its models: `[qwen110, llama70]`")
            self.ok = False
            return None
        agents: list[AgentSpec] = []
        for agent in layer.agents:
            expanded = self._agent(reader, agent, options, index, len(agents))
            if expanded is None:
                self.ok = False
            else:
                agents.extend(expanded)
        min_ok_entry = options.get("min_ok") or self.defaults.get("min_ok")
        min_ok = min_ok_entry[0] if min_ok_entry else constants.DEFAULT_MIN_OK
        if agents and min_ok > len(agents):
            _, setting, where = min_ok_entry
            self.state.report("E303", f"min_ok {min_ok} is larger than {what} "
                              f"({len(agents)} agent{'s' if len(agents) != 1 else ''})",
                              where, setting.span)
            self.ok = False
        prompt = self._prompt(options, index > 0, what, reader)
        if "references" in options and index == 0:
            reader.report("E403", f"{what} receives no earlier answers, so its 'references' "
                          "is never used", options["references"][1].key.span)
            self.ok = False
        if not self.ok:
            return None
        return LayerSpec(name=layer.name.name, agents=tuple(agents), min_ok=min_ok,
                         prompt=prompt)

    def _prompt(self, options: dict, has_inputs: bool, what: str, reader: Reader):
        if "prompt" in options and not has_inputs:
            _, setting, _ = options["prompt"]
            reader.report("E403", f"{what} receives no earlier answers, so its prompt is "
                          "never used", setting.key.span,
                          hint="give the prompt to a later layer or the aggregator, or "
                               "use `system` for a system prompt")
            self.ok = False
            return None
        if not has_inputs:
            return None
        entry = options.get("prompt") or self.defaults.get("prompt")
        return entry[0] if entry else constants.DEFAULT_AGGREGATE_PROMPT

    def _agent(self, reader: Reader, agent: ast.Agent, layer_options: dict, layer: int,
               first: int) -> list[AgentSpec] | None:
        copies = 1
        if agent.copies is not None:
            copies = reader.integer(agent.copies, "copies", minimum=1,
                                    maximum=constants.MAX_PIPELINE_AGENTS)
            if copies is None:
                return None
        if not self._model_known(reader, agent.model):
            return None
        options = self._options(reader, agent.options, SAMPLING_KEYS,
                                f"agent '{agent.model.name}'",
                                copies if agent.copies is not None else None)
        if not check_agent_options(reader, self.state.model_specs[agent.model.name], options) \
                or not self._seeds_fit(reader, agent, copies, options, layer_options) \
                or not self._count(reader, agent, copies):
            return None
        specs = []
        for copy in range(copies):
            self.state.agent_sites[(self.name, layer, first + copy)] = AgentSite(
                reader.path, agent.span)
            specs.append(self._agent_spec(agent.model.name, copy, options, layer_options))
        return specs

    def _single(self, agent: ast.Agent, path: str, slot: int, has_inputs: bool):
        """The aggregator or its fallback: one agent, and the prompt it aggregates with."""
        reader = Reader(self.state, path)
        role = "aggregator" if slot == AGGREGATOR else "fallback"
        if agent.copies is not None:
            reader.report("E202", f"the {role} is a single agent; `x N` copies belong in a "
                          "layer", agent.copies.span)
            self.ok = False
        if not self._model_known(reader, agent.model):
            self.ok = False
            return None, None
        options = self._options(reader, agent.options, AGGREGATE_KEYS,
                                f"{role} '{agent.model.name}'", None)
        if not check_agent_options(reader, self.state.model_specs[agent.model.name], options):
            self.ok = False
        prompt = self._prompt(options, has_inputs, f"{role} '{agent.model.name}'", reader)
        if not self._count(reader, agent, 1):
            self.ok = False
            return None, None
        self.state.agent_sites[(self.name, slot, 0)] = AgentSite(path, agent.span)
        return self._agent_spec(agent.model.name, 0, options, {}), prompt

    def _count(self, reader: Reader, agent: ast.Agent, count: int) -> bool:
        """Whether ``count`` more agents fit the pipeline's and the workspace's limits
        (:data:`~moac.constants.MAX_PIPELINE_AGENTS`, :data:`~moac.constants.
        MAX_WORKSPACE_AGENTS`); the first agent past one is reported, once."""
        if self.over:
            return False
        limit = constants.MAX_PIPELINE_AGENTS
        if self.agents + count > limit:
            reader.report("E310", f"pipeline '{self.name}' has more than {limit:,} agents "
                          "(each copy counts); this agent passes the limit", agent.span,
                          hint="split the pipeline, or use fewer copies")
            self.over = True
            return False
        if count > self.state.agents_left:
            reader.report("E310", f"the pipelines checked together have more than "
                          f"{constants.MAX_WORKSPACE_AGENTS:,} agents (each copy and each "
                          f"derived pipeline counts); pipeline '{self.name}' passes the limit "
                          "here", agent.span, hint="check fewer pipelines at once: split the "
                                                   "file, or import less")
            self.state.agents_left = -1  # no more pipelines are expanded
            self.over = True
            return False
        self.agents += count
        self.state.agents_left -= count
        return True

    def _seeds_fit(self, reader: Reader, agent: ast.Agent, copies: int, options: dict,
                   layer_options: dict) -> bool:
        """Copies take consecutive seeds: the last must still be a seed."""
        for scope in (options, layer_options, self.defaults):
            if "seed" in scope:
                seed, setting, _ = scope["seed"]
                if isinstance(seed, list) or seed + copies - 1 <= constants.MAX_SEED:
                    return True
                reader.report("E206", f"'seed' {seed:,} gives the {copies:,} copies of "
                              f"'{agent.model.name}' seeds up to {seed + copies - 1:,}, past "
                              f"{constants.MAX_SEED:,}", setting.values[0].span)
                self.ok = False
                return False
        return True

    def _model_known(self, reader: Reader, ident: ast.Ident) -> bool:
        if ident.name in self.state.models:
            return ident.name in self.state.model_specs
        self.state.unknown("model", ident, reader.path, self.state.models,
                           elsewhere=self.state.kind_of(ident.name))
        return False

    def _agent_spec(self, model: str, copy: int, options: dict, layer_options: dict
                    ) -> AgentSpec:
        def pick(key, default):
            for scope in (options, layer_options, self.defaults):
                if key in scope:
                    value = scope[key][0]
                    if isinstance(value, list):
                        return value[copy]
                    if key == "seed":
                        return value + copy  # copies of one agent must not share a seed
                    return value
            return default

        sampling = Sampling(temperature=pick("temperature", constants.DEFAULT_TEMPERATURE),
                            max_tokens=pick("max_tokens", constants.DEFAULT_MAX_TOKENS),
                            top_p=pick("top_p", None), seed=pick("seed", None),
                            reasoning_effort=pick("reasoning_effort", None))
        return AgentSpec(model=model, sampling=sampling, system=pick("system", None),
                         references=pick("references", "answer"))
