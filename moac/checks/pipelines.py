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

    def copy(self) -> "_Flat":
        return _Flat(dict(self.settings), dict(self.layers), self.aggregate)


def expand_pipelines(state: CheckState) -> None:
    flats: dict[str, _Flat | None] = {}
    for name in state.pipelines:
        flat = _flatten(state, name, flats, [])
        if flat is not None:
            spec = _Resolver(state, name, flat).resolve()
            if spec is not None:
                state.pipeline_specs[name] = spec


def _flatten(state: CheckState, name: str, flats: dict, stack: list[str]) -> _Flat | None:
    if name in flats:
        return flats[name]
    declared = state.pipelines[name]
    node, path = declared.node, declared.path
    flat = _Flat()
    if node.base is not None:
        base = node.base.name
        if base in stack or base == name:
            chain = " -> ".join(stack[stack.index(base):] + [name, base]) if base in stack \
                else f"{name} -> {name}"
            state.report("E305", f"pipeline '{name}' derives from itself ({chain})", path,
                         node.base.span)
            flats[name] = None
            return None
        if base not in state.pipelines:
            state.unknown("pipeline", node.base, path, state.pipelines,
                          elsewhere=state.kind_of(base))
            flats[name] = None
            return None
        base_flat = _flatten(state, base, flats, stack + [name])
        if base_flat is None:
            flats[name] = None
            return None
        flat = base_flat.copy()
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
                    names = list(flat.layers)
                    reader.report("E306", f"pipeline '{name}' has no layer '{ident.name}' "
                                  "to leave out", ident.span, hint=suggest(ident.name, names)
                                  or ("its layers: " + ", ".join(names) if names else None))
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
    flats[name] = flat
    return flat


class _Resolver:
    """Turns one flattened pipeline into a :class:`PipelineSpec`, reporting what is wrong."""

    def __init__(self, state: CheckState, name: str, flat: _Flat):
        self.state = state
        self.name = name
        self.flat = flat
        self.ok = True
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
        """A setting's value, or per-copy values (a list) for an agent with copies."""
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
            return reader.integer(value, key, minimum=0)
        if key == "min_ok":
            return reader.integer(value, key, minimum=1)
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
            copies = reader.integer(agent.copies, "copies", minimum=1)
            if copies is None:
                return None
        if not self._model_known(reader, agent.model):
            return None
        options = self._options(reader, agent.options, SAMPLING_KEYS,
                                f"agent '{agent.model.name}'",
                                copies if agent.copies is not None else None)
        if not check_agent_options(reader, self.state.model_specs[agent.model.name], options):
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
        self.state.agent_sites[(self.name, slot, 0)] = AgentSite(path, agent.span)
        return self._agent_spec(agent.model.name, 0, options, {}), prompt

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
