"""A response cache keyed by the full request, in SQLite: ``--record`` stores answers,
``--replay`` answers from them and fails loudly on a miss, so an evaluation can be re-run
or re-judged for free and deterministically.

    with ResponseCache("answers.sqlite") as cache:
        client = CachingClient(OpenAICompatibleClient(...), cache, "record")
        result = await client.chat(request)          # a second identical call is free
        cache.stats                                   # CacheStats(hits=1, misses=1, stored=1)

Contract:

- :func:`request_key` hashes what determines an answer and nothing else: the format version,
  the model id, the messages (their keys in any order), temperature, top_p, seed, the
  effective ``max_tokens``, ``reasoning_effort`` when set, and the request's ``occurrence``
  in its query (identical copies of an agent are distinct answers). Not the provider's URL,
  name or key, nor ``stream`` or timing fields: a recording made through one endpoint
  replays through another, and a cache file never holds a secret (there is no header or
  key anywhere in it).
- A call the budget clamped (``max_tokens`` below its agent's) is also filed under its
  unclamped request, where only ``--replay`` looks after missing the exact request, so a
  replay whose budget clamps differently still finds it.
- With ``record``, identical requests in flight at once are asked once: the others wait for
  its answer and take it from the cache (or, if it failed, are asked on their own).
- An answer is stored with its model's thinking (``reasoning``) and thinking tokens; a file
  written before those columns existed gets them (empty) when opened.
- Only complete answers with text are stored (``finish_reason`` in
  :data:`~moac.constants.CACHE_FINISH_REASONS`); failures never are, nor an empty answer,
  and one an older moac stored is never answered (it is a miss). The first answer
  stored for a key stays: concurrent identical requests do not overwrite each other.
- An answer from the cache reaches ``on_delta`` as one delta and ``on_attempt`` as one
  :class:`~moac.providers.openai.Attempt` with ``cached=True`` (nothing was sent; the
  executor bills it at zero), with the recorded token counts.
- A file that is not a moac cache (another database, random bytes, another format version)
  raises :class:`CacheError` when opened, never later and never silently.
"""

from __future__ import annotations

import asyncio
import hashlib
import sqlite3
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Literal

from moac.constants import (
    CACHE_APPLICATION_ID, CACHE_BUSY_TIMEOUT_S, CACHE_FINISH_REASONS, CACHE_FORMAT_VERSION,
)
from moac.providers.errors import ProviderError
from moac.providers.openai import Attempt, CallResult, ChatRequest, Usage
from moac.text import json_bytes

Mode = Literal["record", "replay", "journal"]

_SCHEMA = """CREATE TABLE IF NOT EXISTS responses (
    key TEXT PRIMARY KEY, model TEXT NOT NULL, created_at REAL NOT NULL, text TEXT NOT NULL,
    finish_reason TEXT NOT NULL, prompt_tokens INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL, tokens_reported INTEGER NOT NULL,
    reasoning TEXT NOT NULL DEFAULT '', reasoning_tokens INTEGER NOT NULL DEFAULT 0)"""
_COLUMNS = ("model, created_at, text, finish_reason, prompt_tokens, completion_tokens, "
            "tokens_reported, reasoning, reasoning_tokens")
# Columns added since format 1's first files: added to an older file when it is opened.
_ADDED = (("reasoning", "TEXT NOT NULL DEFAULT ''"),
          ("reasoning_tokens", "INTEGER NOT NULL DEFAULT 0"))


class CacheError(Exception):
    """The cache file cannot be used: missing, not a moac cache, or failing. One line."""


class CacheMiss(ProviderError):
    """``--replay`` and the request was never recorded. Final: retrying cannot help."""
    retryable_default = False


def request_key(request: ChatRequest, *, scoped: bool = False) -> str:
    """The SHA-256 (hex) of a canonical JSON of everything that determines the answer (see
    the module docstring). Equal requests give equal keys whatever the key order of their
    message dicts; numbers are normalised (``temperature`` 1 and 1.0 are one key).
    ``scoped``: the request's query (``scope``) is part of the key too (a batch's journal:
    only the same query takes an answer back)."""
    sampling = request.sampling
    max_tokens = request.max_tokens if request.max_tokens is not None else sampling.max_tokens
    canonical = {
        "v": CACHE_FORMAT_VERSION, "model": request.model,
        "messages": [dict(m) for m in request.messages],
        "temperature": float(sampling.temperature),
        "top_p": None if sampling.top_p is None else float(sampling.top_p),
        "seed": sampling.seed, "max_tokens": int(max_tokens),
    }
    if request.reasoning_effort is not None:
        canonical["reasoning_effort"] = request.reasoning_effort
    if request.occurrence:  # the second unseeded copy in a query is another answer
        canonical["occurrence"] = request.occurrence
    if scoped:
        canonical["scope"] = request.scope
    return hashlib.sha256(json_bytes(canonical, sort_keys=True, separators=(",", ":"),
                                     allow_nan=False)).hexdigest()


def clamped_alias(request: ChatRequest) -> str:
    """Where the answer to a call sent with a clamped ``max_tokens`` (below its agent's own,
    by a budget) is also filed: under the unclamped request's key, marked. Only a replay
    looks there, after missing the exact key."""
    return request_key(replace(request, max_tokens=None)) + ":clamped"


@dataclass(frozen=True, slots=True)
class CachedResponse:
    model: str
    created_at: float  # epoch seconds
    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    tokens_reported: bool
    reasoning: str = ""
    reasoning_tokens: int = 0


@dataclass(slots=True)
class CacheStats:
    """Counted by :class:`ResponseCache` over its lifetime, for every client sharing it."""
    hits: int = 0
    misses: int = 0
    stored: int = 0


class ResponseCache:
    """One SQLite file (WAL), one connection. Each method runs one statement under a lock,
    in microseconds: calling them from the event loop, from many tasks, is fine. ``create``
    False (``--replay``) refuses a file that does not exist yet."""

    def __init__(self, path: str | Path, *, create: bool = True) -> None:
        self.path = Path(path)
        self.stats = CacheStats()
        self._lock = threading.Lock()
        if self.path.is_dir():
            raise CacheError(f"{self.path} is a directory, not a moac response cache")
        if not self.path.exists():
            if not create:
                raise CacheError(f"{self.path}: no such response cache; run with --record first")
            if not self.path.parent.is_dir():
                raise CacheError(f"cannot create response cache {self.path}: directory "
                                 f"{self.path.parent} does not exist")
        try:
            # Autocommit (isolation_level=None): every put is durable on its own.
            self._db = sqlite3.connect(self.path, timeout=CACHE_BUSY_TIMEOUT_S,
                                       isolation_level=None, check_same_thread=False)
        except sqlite3.Error as exc:
            raise CacheError(f"cannot open response cache {self.path}: {exc}") from exc
        try:
            self._open()
        except BaseException as exc:
            self._db.close()
            if isinstance(exc, sqlite3.DatabaseError):
                raise CacheError(f"{self.path} is not a moac response cache: {exc}") from exc
            raise

    def _open(self) -> None:
        db = self._db
        # Identify before writing anything: WAL mode is persistent, and someone else's
        # database must be left exactly as it was.
        if self._identity() == (0, 0, False):
            db.execute("BEGIN IMMEDIATE")  # another process may be creating it too
            try:
                if self._identity() == (0, 0, False):
                    db.execute(f"PRAGMA application_id = {CACHE_APPLICATION_ID}")
                    db.execute(f"PRAGMA user_version = {CACHE_FORMAT_VERSION}")
                    db.execute(_SCHEMA)
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        app_id, version, _ = self._identity()
        if app_id != CACHE_APPLICATION_ID:
            raise CacheError(f"{self.path} is not a moac response cache: it is another "
                             f"SQLite database (application_id {app_id})")
        if version != CACHE_FORMAT_VERSION:
            raise CacheError(f"{self.path} is a moac response cache of format {version}; "
                             f"this moac reads format {CACHE_FORMAT_VERSION}: record anew "
                             f"into another file")
        self._add_columns()
        db.execute("PRAGMA journal_mode = WAL")
        db.execute("PRAGMA synchronous = NORMAL")  # WAL: durable at checkpoints, never corrupt

    def _add_columns(self) -> None:
        """Give a file written before :data:`_ADDED` existed those columns."""
        have = {row[1] for row in self._db.execute("PRAGMA table_info(responses)")}
        for name, kind in _ADDED:
            if name not in have:
                try:
                    self._db.execute(f"ALTER TABLE responses ADD COLUMN {name} {kind}")
                except sqlite3.OperationalError:  # another process added it meanwhile
                    if name not in {row[1] for row in
                                    self._db.execute("PRAGMA table_info(responses)")}:
                        raise

    def _identity(self) -> tuple[int, int, bool]:
        """(application_id, user_version, has tables). Raises on a non-SQLite file."""
        db = self._db
        tables = db.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
        return (db.execute("PRAGMA application_id").fetchone()[0],
                db.execute("PRAGMA user_version").fetchone()[0], tables > 0)

    def _run(self, sql: str, args: tuple[Any, ...] = ()) -> sqlite3.Cursor:
        try:
            with self._lock:
                return self._db.execute(sql, args)
        except sqlite3.ProgrammingError as exc:  # used after close()
            raise CacheError(f"response cache {self.path}: {exc}") from exc
        except sqlite3.DatabaseError as exc:  # disk full, corrupted since it was opened...
            raise CacheError(f"response cache {self.path}: {exc}") from exc

    def get(self, key: str, *, count: bool = True) -> CachedResponse | None:
        """The answer stored under ``key``, or None. Counts a hit or a miss (unless
        ``count`` is false: a first look that another will follow)."""
        row = self._run(f"SELECT {_COLUMNS} FROM responses WHERE key = ?", (key,)).fetchone()
        if row is None or not row[2].strip():  # an empty answer is no answer to give
            self.stats.misses += count
            return None
        self.stats.hits += count
        return CachedResponse(row[0], row[1], row[2], row[3], row[4], row[5], bool(row[6]),
                              row[7], row[8])

    def put(self, key: str, model: str, result: CallResult, *, count: bool = True) -> bool:
        """Store ``result`` under ``key``; False when the key already had an answer (which
        stays, unless it had no text). Raises ValueError for an answer that is not complete
        or has no text. ``count`` false: a second filing of an answer already counted as
        stored."""
        if not storable(result):
            raise ValueError(f"only complete answers with text are cached, not "
                             f"finish_reason {result.finish_reason!r} with "
                             f"{len(result.text.strip())} characters of text")
        usage = result.usage
        old = self._run("SELECT text FROM responses WHERE key = ?", (key,)).fetchone()
        if old is not None and not old[0].strip():  # an older moac's empty answer: replaced
            self._run("DELETE FROM responses WHERE key = ?", (key,))
        cursor = self._run(
            f"INSERT OR IGNORE INTO responses (key, {_COLUMNS}) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (key, model, time.time(), result.text, result.finish_reason, usage.prompt_tokens,
             usage.completion_tokens, int(usage.reported), result.reasoning,
             usage.reasoning_tokens))
        stored = cursor.rowcount == 1
        self.stats.stored += stored and count
        return stored

    def __len__(self) -> int:
        return self._run("SELECT count(*) FROM responses").fetchone()[0]

    def close(self) -> None:
        """Close the file (the last connection folds the WAL back in). Idempotent."""
        with self._lock:
            self._db.close()

    def __enter__(self) -> "ResponseCache":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"ResponseCache({str(self.path)!r})"


def storable(result: CallResult) -> bool:
    """Whether an answer may be cached: complete (or cut by ``max_tokens``), with text."""
    return result.finish_reason in CACHE_FINISH_REASONS and bool(result.text.strip())


class CachingClient:
    """A :class:`~moac.run.executor.ChatClient` in front of ``inner``. ``record``: a hit is
    answered from the cache (the inner client is not called), a miss is asked of ``inner``
    and its complete answer stored. ``replay``: a hit is answered, a miss raises
    :class:`CacheMiss`; ``inner`` is never called and may be None (no key, no server).
    ``journal``: as ``record``, with keys scoped to the request's query (a batch keeping
    every finished call as it ends, so that a resumed query pays only for what was in
    flight). A cached answer ignores ``deadline``: it takes no time."""

    def __init__(self, inner: Any, cache: ResponseCache, mode: Mode, *,
                 provider: str | None = None, clock: Callable[[], float] = time.monotonic,
                 wall_clock: Callable[[], float] = time.time) -> None:
        if mode not in ("record", "replay", "journal"):
            raise ValueError(f"mode must be 'record', 'replay' or 'journal', not {mode!r}")
        if inner is None and mode != "replay":
            raise ValueError(f"{mode} needs a client to ask on a miss")
        spec = getattr(inner, "provider", None)
        self.inner, self.cache, self.mode = inner, cache, mode
        self._in_flight: dict[str, asyncio.Future] = {}  # record: keys being asked now
        self.provider_name = provider or getattr(spec, "name", None)
        self._clock, self._wall = clock, wall_clock

    @property
    def stats(self) -> CacheStats:
        return self.cache.stats

    def __repr__(self) -> str:
        return f"CachingClient({self.inner!r}, {self.cache!r}, {self.mode!r})"

    async def chat(self, request: ChatRequest, *, deadline: float | None = None,
                   on_delta: Callable[[str], None] | None = None,
                   on_attempt: Callable[[Attempt], None] | None = None,
                   on_reasoning: Callable[[str], None] | None = None) -> CallResult:
        key = request_key(request, scoped=self.mode == "journal")
        replay = self.mode == "replay"
        if not replay and key in self._in_flight:
            # The very same request is being asked right now: wait for its answer rather
            # than pay for it twice (if it fails, this one is asked on its own).
            await asyncio.shield(self._in_flight[key])
        hit = self.cache.get(key, count=not replay)
        if hit is None and replay:
            # The recording may have sent this call with a budget-clamped max_tokens that
            # this run, its budget in another state, did not (or clamped otherwise).
            hit = self.cache.get(clamped_alias(request))
        elif replay:
            self.cache.stats.hits += 1
        if hit is not None:
            await asyncio.sleep(0)  # a cached answer still lets the calls of its stage start
            return self._answer(hit, on_delta, on_attempt, on_reasoning)
        if self.mode == "replay":
            miss = CacheMiss(f"--replay: no recorded answer for this request (model "
                             f"{request.model}); run with --record first",
                             provider=self.provider_name, model=request.model)
            miss.gave_up = "not in the response cache"
            raise miss
        done = self._in_flight.setdefault(key, asyncio.get_running_loop().create_future())
        try:
            more = {} if on_reasoning is None else {"on_reasoning": on_reasoning}
            result = await self.inner.chat(request, deadline=deadline, on_delta=on_delta,
                                           on_attempt=on_attempt, **more)
            if storable(result):
                self.cache.put(key, request.model, result)
                if self.mode == "record" and request.max_tokens is not None and \
                        request.max_tokens != request.sampling.max_tokens:
                    self.cache.put(clamped_alias(request), request.model, result,
                                   count=False)
        finally:  # stored (or failed): the requests waiting on this one go on
            if self._in_flight.get(key) is done:
                del self._in_flight[key]
                done.set_result(None)
        return result

    def _answer(self, hit: CachedResponse, on_delta, on_attempt, on_reasoning=None
                ) -> CallResult:
        started, started_wall = self._clock(), self._wall()
        if on_reasoning is not None and hit.reasoning:
            on_reasoning(hit.reasoning)
        if on_delta is not None and hit.text:  # as a non-streamed answer: one delta
            on_delta(hit.text)
        record = Attempt(number=1, started=started, started_wall=started_wall,
                         ended=self._clock(), ended_wall=self._wall(), ttft_s=0.0,
                         prompt_tokens=hit.prompt_tokens,
                         completion_tokens=hit.completion_tokens,
                         tokens_reported=hit.tokens_reported, status="ok",
                         finish_reason=hit.finish_reason, cached=True,
                         reasoning_ttft_s=0.0 if hit.reasoning else None,
                         reasoning_tokens=hit.reasoning_tokens, reasoning=hit.reasoning)
        if on_attempt is not None:
            on_attempt(record)
        usage = Usage(hit.prompt_tokens, hit.completion_tokens, hit.tokens_reported,
                      hit.reasoning_tokens)
        return CallResult(hit.text, hit.finish_reason, usage, attempts=(record,),
                          reasoning=hit.reasoning)
