"""Checked, typed declarations: what a ``.moa`` file means once every name and unit is known.

The checker turns AST nodes into these pydantic models; lowering, the planner and the
executor read only these, never the AST. Units are normalised here: dollars per million
tokens, billions of parameters, tokens, seconds.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, model_serializer


class Spec(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    # Fields added since plans were first written, left out of a dump while at their
    # default: a plan that uses none of them is written as it was, and reads back the same.
    omit_default: ClassVar[tuple[str, ...]] = ()

    @model_serializer(mode="wrap")
    def _dump(self, handler):
        data = handler(self)
        for name in self.omit_default:
            if name in data and getattr(self, name) == type(self).model_fields[name].default:
                del data[name]
        return data


class ProviderSpec(Spec):
    """An endpoint. ``api_key_env`` is the *name* of an environment variable, never a key."""

    name: str
    kind: Literal["openai", "local"]
    base_url: str | None = None
    api_key_env: str | None = None
    parallel: int
    rpm: float | None = None   # ceilings set on purpose (a key shared with other programs);
    tpm: float | None = None   # without them moac paces at what the provider's headers allow
    timeout_s: float
    connect_timeout_s: float
    read_timeout_s: float
    max_retries: int
    model_path: str | None = None


class ModelSpec(Spec):
    """A model's profile: what it costs, how big and fast it is, how good it is alone."""

    name: str
    provider: str
    model_id: str
    usd_per_m_input: float
    usd_per_m_output: float
    active_params_b: float
    total_params_b: float
    context_tokens: int
    ttft_s: float
    output_tokens_per_s: float
    prefill_tokens_per_s: float
    quality: float | None = None
    answer_tokens: int
    # A reasoning model (OpenAI's kind): it takes `reasoning_effort`; see checks.model_api.
    reasoning: bool = False
    # The request field that limits the completion (thinking and answer together).
    token_param: Literal["max_tokens", "max_completion_tokens"] = "max_tokens"
    # The model samples at its own temperature: moac sends no temperature or top_p.
    fixed_temperature: bool = False
    # Tokens it typically thinks before its answer (billed, never read by another agent).
    thinking_tokens: int = 0
    omit_default = ("reasoning", "token_param", "fixed_temperature", "thinking_tokens")

    def expected_output(self, max_tokens: int) -> tuple[int, int]:
        """``(billed, answer)``: the completion tokens of a typical call limited to
        ``max_tokens``, and how many of them are the answer. The limit bounds thinking
        and answer together, and the thinking comes first."""
        thinking = min(self.thinking_tokens, max_tokens)
        answer = min(self.answer_tokens, max_tokens - thinking)
        return thinking + answer, answer

    def usd(self, tokens_in: float, tokens_out: float) -> float:
        """Dollars for a call that reads ``tokens_in`` and writes ``tokens_out``."""
        return (tokens_in * self.usd_per_m_input + tokens_out * self.usd_per_m_output) / 1e6

    def tflops(self, tokens: float) -> float:
        """TFLOPs to process ``tokens``: 2 FLOPs per active parameter per token (the usual
        estimate); parameters are in billions, so 2 x 1e9 / 1e12 per token per billion."""
        return 2 * self.active_params_b * tokens / 1000


class Sampling(Spec):
    temperature: float
    max_tokens: int
    top_p: float | None = None
    seed: int | None = None
    reasoning_effort: str | None = None  # sent only to models that take it
    omit_default = ("reasoning_effort",)


References = Literal["answer", "with_reasoning"]


class AgentSpec(Spec):
    """One call site: a model with its sampling settings and optional system prompt.
    ``references``: what it reads of the answers it aggregates (their thinking too, or
    not)."""

    model: str
    sampling: Sampling
    system: str | None = None
    references: References = "answer"
    omit_default = ("references",)


class LayerSpec(Spec):
    """Agents that run in parallel. ``prompt`` is the aggregate-and-synthesize template its
    agents receive the earlier layer's answers through (None for the first layer)."""

    name: str
    agents: tuple[AgentSpec, ...]
    min_ok: int
    prompt: str | None = None


class PipelineSpec(Spec):
    name: str
    base: str | None = None
    layers: tuple[LayerSpec, ...]
    aggregator: AgentSpec
    aggregator_prompt: str | None = None
    fallback: AgentSpec | None = None
    path: str = ""


class BudgetSpec(Spec):
    """Per-query limits; None means unbounded. Command-line flags override these.
    ``on_over_budget``: what a query whose plan cannot fit does before its first call:
    ``shrink`` (the planner drops what it must) or ``fail`` (the plan stays exact, and a
    query whose exact plan's worst case does not fit fails before any call)."""

    max_usd: float | None = None
    max_latency_s: float | None = None
    max_tflops: float | None = None
    mode: Literal["expected", "worst"] = "expected"
    on_over_budget: Literal["shrink", "fail"] = "shrink"
    omit_default = ("on_over_budget",)

    @property
    def bounded(self) -> bool:
        """Whether any limit is set."""
        return (self.max_usd, self.max_latency_s, self.max_tflops) != (None, None, None)

    def merged(self, override: "BudgetSpec | None") -> "BudgetSpec":
        """This budget with every limit ``override`` sets taken from it."""
        if override is None:
            return self
        values = self.model_dump()
        values.update(override.model_dump(exclude_unset=True))
        return BudgetSpec(**values)


class JudgeSpec(Spec):
    """A judge: a model and a protocol. ``pairwise`` compares an answer with a reference
    answer (AlpacaEval), in both orders; ``single`` scores it 1 to 10 (MT-Bench).
    ``reference`` names a pipeline or model whose answers are the references; None: the
    prompt set's own reference answers. ``budget`` bounds each judge call on its own (the
    pipelines' budget does not apply: judging is accounted apart)."""

    name: str
    model: str
    protocol: Literal["pairwise", "single"]
    reference: str | None = None
    temperature: float = 0.0
    max_tokens: int = 1024
    budget: "BudgetSpec" = Field(default_factory=lambda: BudgetSpec())
    path: str = ""


class QualitySpec(Spec):
    """The planner's quality model coefficients a ``planner`` block sets (None: the fitted
    defaults of :mod:`planner.constants`). ``moac calibrate`` writes them."""

    quality_base: float | None = None
    quality_prior_weight: float | None = None
    quality_mean_weight: float | None = None
    quality_sampling_gain: float | None = None
    quality_diversity_gain: float | None = None
    quality_diversity_decay: float | None = None

    def merged(self, override: "QualitySpec") -> "QualitySpec":
        values = self.model_dump()
        values.update(override.model_dump(exclude_none=True))
        return QualitySpec(**values)

    def settings(self) -> dict[str, float]:
        """The coefficients set, by their .moa names."""
        return self.model_dump(exclude_none=True)


RoutePolicy = Literal["budget", "preroute", "agreement", "learned"]


class RouteSpec(Spec):
    """A per-query choice among pipelines. The policies are carried out by the router."""

    name: str
    candidates: tuple[str, ...]
    policies: tuple[RoutePolicy, ...] = ("budget",)
    agreement: float | None = None
    usd_per_point: float | None = None
    target_share: float | None = None
    router: str | None = None  # the learned policy's router file (absolute path)
    budget: BudgetSpec = Field(default_factory=BudgetSpec)
    path: str = ""
