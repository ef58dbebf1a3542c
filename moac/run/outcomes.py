"""What running a plan produces: one :class:`CallOutcome` per call, one
:class:`QueryResult` per query, and :class:`QueryFailed`, which a failed result raises
when asked to."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from moac.traces.trace import SkippedNode


@dataclass
class CallOutcome:
    node: str
    status: str  # ok | failed | cancelled | skipped
    text: str | None = None
    error: str | None = None
    attempts: int = 0
    cost_usd: float = 0.0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    tflops: float = 0.0
    started: float = 0.0
    ended: float = 0.0
    finish_reason: str | None = None
    answer_tokens: int | None = None  # the answer's length as its provider reported it
    cached_usd: float = 0.0     # what its answers from a response cache would have cost
    cached_tflops: float = 0.0
    left_out: bool = False      # skipped for its budget or context: the stage shrinks
    reasoning: str = ""         # the thinking it showed (never read by a later call unless asked)
    reasoning_tokens: int = 0   # of its completion tokens

    @property
    def ok(self) -> bool:
        return self.status == "ok"


@dataclass(frozen=True)
class QueryProgress:
    """Where a query stands, for a progress line: its stage (1-based of ``stages``), the
    calls of that stage finished of those started, what it spent so far."""
    stage: str
    stage_number: int
    stages: int
    done: int
    calls: int
    cost_usd: float
    elapsed_s: float


class QueryFailed(Exception):
    """Raised by :meth:`QueryResult.raise_for_status`: every error of a failed query."""

    def __init__(self, query_id: str, errors: list[str]):
        self.query_id = query_id
        self.errors = errors
        super().__init__(f"query {query_id} failed: " + "; ".join(errors))


@dataclass
class QueryResult:
    query_id: str
    status: str  # ok | failed | cancelled
    answer: str | None
    answered_by: str | None
    cost_usd: float
    prompt_tokens: int
    completion_tokens: int
    tflops: float
    latency_s: float
    critical_path: list[str]
    critical_path_s: float
    calls: list[CallOutcome] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    skipped: list[SkippedNode] = field(default_factory=list)
    estimate: dict[str, Any] | None = None
    cached_usd: float = 0.0       # the price of the answers that came from a cache
    cached_tflops: float = 0.0
    pipeline: str | None = None   # the pipeline that ran (a route's choice)
    route: str | None = None      # the route that chose it, if any
    decisions: list[dict[str, Any]] = field(default_factory=list)  # the route's steps
    fit: list[str] = field(default_factory=list)  # how the plan was fit to its budget/context
    # The answer's own finish_reason ("stop"; "length" when max_tokens cut it), as a server
    # returns it; None without an answer.
    finish_reason: str | None = None
    reasoning: str | None = None  # the answering call's thinking, apart from the answer
    # How the plan was fit to this query before its first call (moac.run.start_fit): the
    # sub-plan run, its agents of those declared, what it gave up; None: the declared plan.
    fitted: dict[str, Any] | None = None

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def truncated(self) -> bool:
        """The answer was cut by its ``max_tokens``: whole as far as it goes, but not whole."""
        return self.finish_reason == "length"

    @property
    def failures(self) -> int:
        return sum(1 for call in self.calls if call.status in ("failed", "cancelled"))

    @property
    def attempts(self) -> int:
        return sum(call.attempts for call in self.calls)

    @property
    def started_calls(self) -> int:
        return sum(1 for call in self.calls if call.status != "skipped")

    @classmethod
    def broken(cls, query_id: str, error: str) -> "QueryResult":
        """A query that could not be carried out at all (its data could not be used): it
        fails alone, with ``error`` named, and a batch goes on."""
        return cls(query_id=query_id, status="failed", answer=None, answered_by=None,
                   cost_usd=0.0, prompt_tokens=0, completion_tokens=0, tflops=0.0,
                   latency_s=0.0, critical_path=[], critical_path_s=0.0, errors=[error])

    def raise_for_status(self) -> "QueryResult":
        if not self.ok:
            raise QueryFailed(self.query_id, self.errors)
        return self
