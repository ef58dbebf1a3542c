"""Traces: one JSON line per call attempt, per query and per run, flushed as written.

Contract:

- The schema is an allow-list. Every line is one of the pydantic records below
  (``extra="forbid"``), built field by field from what the executor measured, never by dumping
  a request, a response, a header or an exception, so no API key or raw request can land in a
  trace. Error texts come from :class:`moac.providers.errors.ProviderError`, which redacts the
  call's key (and anything key-shaped) when it is built.
- Lines are written whole (one ``write`` of the line and its newline) and flushed before
  :meth:`TraceWriter.write` returns, so a run killed at any point loses nothing already
  written; at worst its last line is torn, and :func:`read_trace` skips a torn line. A file
  opened for appending after a torn line gets a newline first, so the torn line cannot eat
  the next record.
- Five kinds of line, told apart by ``type``:

  ``run``   once per run: moac version, the ``.moa`` file and its SHA-256, the plan as run,
            the budget, the SHA-256 of the price table the costs were computed with.
  ``call``  once per attempt of an agent call (a retried call is billed per attempt), and
            once for a call that never started (``status="skipped"``, ``attempt=0``, the
            reason in ``error``).
  ``route`` once per step of a route's choice for a query, written when the step is taken
            (before the calls it decides on): policy, chosen, alternatives, numbers, why.
  ``query`` once per query: totals, the critical path, the planner's estimate, the answer,
            and for a routed query the route (``pipeline`` is then the one that answered).
  ``quality`` once per judged answer (``moac eval``): the judge's parsed verdicts.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict
from pydantic_core import PydanticSerializationError

from moac.text import json_bytes, valid_json

CallStatus = Literal["ok", "failed", "cancelled", "skipped"]
QueryStatus = Literal["ok", "failed", "cancelled"]
TRACE_FORMAT_VERSION = 1


class Record(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RunHeader(Record):
    type: Literal["run"] = "run"
    format: int = TRACE_FORMAT_VERSION
    run_id: str
    moac_version: str
    started_at: float
    file: str
    file_sha256: str
    pipeline: str
    plan: dict[str, Any]
    budget: dict[str, Any]
    max_usd_total: float | None = None
    price_table_sha256: str


class CallRecord(Record):
    """One attempt of one agent call. Times: ``started_at``/``ended_at`` in epoch seconds;
    ``ttft_s`` from the attempt's start to its first text. ``tokens_reported`` is false when
    a count was estimated (the provider sent no usage). ``error`` is the redacted message of
    the error that ended the call (on its last attempt), or why it was skipped or cancelled;
    ``error_body`` the redacted start of a malformed response's body. ``max_tokens`` is what
    the call was sent with: below the agent's own when the budget clamped it. ``wait_s``: the
    seconds the attempt waited to start (the provider key's pacer, a free slot, a cool-down).
    A reasoning model's thinking: ``reasoning`` what it showed of it, ``reasoning_tokens`` the
    part of ``completion_tokens`` it took (as reported, else estimated), ``reasoning_ttft_s``
    from the start to its first text (``ttft_s`` is to the answer's)."""

    type: Literal["call"] = "call"
    run_id: str
    query_id: str
    pipeline: str
    layer: str
    node: str
    position: int
    role: str
    model: str
    provider: str
    attempt: int
    started_at: float | None = None
    ended_at: float | None = None
    duration_s: float | None = None
    ttft_s: float | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    tokens_reported: bool = False
    cost_usd: float = 0.0
    tflops: float = 0.0
    status: CallStatus
    error_type: str | None = None
    error: str | None = None
    error_body: str | None = None
    http_status: int | None = None
    finish_reason: str | None = None
    max_tokens: int | None = None
    cached: bool = False  # answered from a response cache: cost_usd 0, nothing sent
    wait_s: float = 0.0   # waited before the attempt: the key's pacer, a slot, a cool-down
    reasoning_ttft_s: float | None = None
    reasoning_tokens: int = 0
    reasoning: str | None = None


class SkippedNode(Record):
    node: str
    reason: str


class QueryRecord(Record):
    """One query. ``critical_path`` is, for each stage, the call the next stage waited for
    (the last to end), then the final calls; ``critical_path_s`` the sum of those calls'
    durations, so ``latency_s - critical_path_s`` is what the executor itself added.
    ``estimate`` is the planner's expected-case estimate for this prompt's length (None when
    the planner is not installed). ``finish_reason`` is the answer's (``"length"``: cut by
    its ``max_tokens``); None without an answer."""

    type: Literal["query"] = "query"
    run_id: str
    query_id: str
    pipeline: str
    status: QueryStatus
    started_at: float
    latency_s: float
    critical_path: list[str]
    critical_path_s: float
    calls: int
    attempts: int
    failures: int
    cost_usd: float
    prompt_tokens: int
    completion_tokens: int
    tflops: float
    estimate: dict[str, Any] | None = None
    answer: str | None = None
    answered_by: str | None = None
    errors: list[str] = []
    skipped: list[SkippedNode] = []
    route: str | None = None
    cached_usd: float = 0.0  # what the answers from a response cache would have cost
    fit: list[str] = []  # how the plan was fit to this query's budget and contexts
    finish_reason: str | None = None  # the answer's: "length" when its max_tokens cut it
    # The start fit's choice (the sub-plan, agents kept, what it gave up); None: the
    # declared plan ran (moac.run.start_fit)
    fitted: dict[str, Any] | None = None


class RouteDecisionRecord(Record):
    """One step of a route's choice for a query (:class:`planner.route.Decision`): the
    policy, the pipeline chosen (None: nothing could run), the ones not taken, the numbers
    behind it (estimates, predicted quality, gain factor, agreement) and why."""

    type: Literal["route"] = "route"
    run_id: str
    query_id: str
    route: str
    step: int
    policy: str
    chosen: str | None
    alternatives: list[str]
    numbers: dict[str, Any]
    reason: str


class QualityRecord(Record):
    """A judge's verdict on one answer (``moac eval``): a quality trace line. ``query_id``
    and ``answer_run_id`` point at the query that wrote the answer; ``pipeline`` is what
    answered (a route's choice is in ``routed_to``). Pairwise: ``verdicts`` holds the judge's
    parsed verdict in each order (``"A"``, ``"B"``, ``"tie"``, or None when it could not be
    parsed: recorded as such, never guessed) and ``preference`` the candidate's result
    against the reference (1 win, 0.5 tie, 0 loss; None unless both orders parsed).
    Single: ``score`` 1..10, None when unparsed. ``judge_cost_usd`` is what judging cost."""

    type: Literal["quality"] = "quality"
    run_id: str
    answer_run_id: str | None = None
    query_id: str
    pipeline: str
    routed_to: str | None = None
    judge: str
    protocol: Literal["pairwise", "single"]
    prompts: str | None = None  # the prompt set (query ids are only unique within one)
    category: str | None = None
    turn: int = 1
    preference: float | None = None
    score: float | None = None
    verdicts: list[str | None] = []
    parsed: bool
    candidate_chars: int | None = None
    reference_chars: int | None = None
    answer_cost_usd: float | None = None
    judge_cost_usd: float = 0.0
    error: str | None = None
    # The query's features (planner.features.FEATURE_NAMES order): what `moac fit-router`
    # learns from, without the query's text.
    features: list[float] | None = None


class TraceWriter:
    """Appends records to a JSONL file, each line written whole and flushed at once."""

    def __init__(self, path: str | os.PathLike):
        self.path = os.fspath(path)
        self._handle = open(self.path, "ab", buffering=0)
        if self._handle.tell() > 0 and not _ends_with_newline(self.path):
            self._handle.write(b"\n")  # a torn last line (a killed run) stays on its own

    def write(self, record: Record) -> None:
        # One unbuffered write per line: the OS has it before this returns.
        try:
            line = record.__pydantic_serializer__.to_json(record)
        except PydanticSerializationError:
            # A string no UTF-8 can hold (a lone surrogate that slipped past the repairs at
            # the doors): repaired on a copy, so the line is written rather than lost.
            line = json_bytes(record.model_dump(mode="python"), separators=(",", ":"))
        self._handle.write(jsonl_safe(line) + b"\n")

    def close(self) -> None:
        self._handle.close()

    def __enter__(self) -> "TraceWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


_LINE_SEPARATORS = ("\u2028".encode(), "\u2029".encode())


def jsonl_safe(line: bytes) -> bytes:
    """A JSON line with U+2028 and U+2029 escaped: valid JSON either way, but readers that
    split lines with ``str.splitlines()`` would cut a raw one in two."""
    if b"\xe2\x80" in line:
        for raw in _LINE_SEPARATORS:
            line = line.replace(raw, b"\\u%04x" % ord(raw.decode()))
    return line


def _ends_with_newline(path: str) -> bool:
    with open(path, "rb") as handle:
        handle.seek(-1, os.SEEK_END)
        return handle.read(1) == b"\n"


def read_trace(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The records of a trace file; a torn line (a killed run) is skipped."""
    return read_jsonl(path)


def read_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The JSON objects of a JSON-lines file, one a line; blank lines, torn lines (a killed
    writer's), lines nested too deep to read and lines that are not objects are skipped.
    Strings are made valid (:func:`moac.text.valid_json`): a line may have been written by
    anything."""
    records = []
    with open(path, encoding="utf-8", errors="replace") as handle:
        for line in handle:
            line = line.strip()
            if not line:
                continue
            try:
                record = json.loads(line)
            except (json.JSONDecodeError, RecursionError):
                continue
            if isinstance(record, dict):
                records.append(valid_json(record))
    return records


def sha256_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 16), b""):
            digest.update(block)
    return digest.hexdigest()


def price_table_sha256(models: dict) -> str:
    """A fingerprint of the prices a run was costed with (model id, dollars per million in
    and out), to spot comparisons across price changes."""
    table = {name: [m.model_id, m.usd_per_m_input, m.usd_per_m_output]
             for name, m in sorted(models.items())}
    return hashlib.sha256(json.dumps(table, sort_keys=True).encode()).hexdigest()
