"""Tunables of the provider layer, kept in one place as openai-python keeps ``_constants.py``.

Per-provider settings (timeouts, retries, parallelism) come from the ``.moa`` file through
:class:`moac.ir.spec.ProviderSpec`; their defaults live in :mod:`moac.constants`. What is here
applies to every provider.
"""

from __future__ import annotations

# --- retries (openai-python: 0.5 s initial, 8 s cap, jitter 1 - 0.25 * random()) -------
INITIAL_RETRY_DELAY_S = 0.5
MAX_RETRY_DELAY_S = 8.0
# The backoff is multiplied by a factor drawn uniformly from [JITTER_MIN, 1.0].
JITTER_MIN = 0.75
# A server-sent Retry-After (or retry-after-ms) is obeyed when 0 < v <= this; a longer or
# nonsensical one falls back to the backoff (openai-python's rule).
MAX_RETRY_AFTER_S = 120.0
# A 429's retry waits its Retry-After times a factor drawn from [1, 1 + this]: retries of
# calls refused together do not return together.
RATE_LIMIT_JITTER = 0.2
# An attempt is not started with less time than this left before the query's deadline:
# connecting and a first token take about this long on a hosted endpoint.
MIN_ATTEMPT_S = 1.0

# --- cooling down a failing model (LiteLLM's router: 5 s) ---------------------------------
# This many 5xx/timeouts/dropped connections in a row of one model, with no answer between
# them, pause new attempts on that model (only: its provider's other models go on). Never
# on a single first failure, and never for a 429: that is pacing, not failure.
COOLDOWN_AFTER_FAILURES = 3
COOLDOWN_S = 5.0

# --- pacing at the provider's rate limit (moac/providers/pacing.py) -------------------------
# A burst of about this many seconds of the rate may start at once: providers enforce
# per-minute limits in per-second slices, and spending a limit smoothly is what they allow.
BURST_S = 1.0
# A 429 without Retry-After pauses the key's starts this long.
DEFAULT_PAUSE_S = 1.0
# No rate ever goes below this (one request a minute): a stuck pacer would be a hang.
MIN_REQUESTS_PER_S = 1 / 60
# Below this share of a limit remaining, the rate is scaled down in proportion: several
# processes sharing one key then settle at about limit / n each instead of exhausting it.
SHARE_SLOWDOWN_BELOW = 0.5
# Without headers, starts begin at this rate after the key's first answer and double every
# second until a 429 (TCP's slow start: a limit of 6,000 rpm is reached in four seconds).
SLOW_START_REQUESTS_PER_S = 8.0
# Then AIMD: on a 429 the rate is halved; every answer adds this many requests a second
# (a halved rate of r is whole again after 10 r answers: ten seconds at any rate, so the
# limit is probed, and refused, about once every ten seconds).
AIMD_DECREASE = 0.5
AIMD_INCREASE = 0.05
# A slow-down happens at most once this often (or once per Retry-After, when longer): the
# 429s of requests already on their way say nothing new about the slower rate.
SLOWDOWN_EVERY_S = 1.0
# Before a key's first answer (whose headers may tell its limits), at most this many
# requests start on it: a MoA layer goes at once, a batch does not storm an unknown limit.
FIRST_STARTS_BEFORE_AN_ANSWER = 8
# With headers, moac paces at this share of the limit they give (arrivals bunch on their way
# to the provider); a 429 all the same (other programs on the key, a window the headers do
# not describe) halves a factor on the learned rate, which answers grow back by
# LEARNED_FACTOR_INCREASE a second's worth of them (from a half to whole in ten seconds).
LEARNED_RATE_MARGIN = 0.95
LEARNED_FACTOR_INCREASE = 0.05
LEARNED_FACTOR_MIN = 0.05

# --- a key the provider refuses ------------------------------------------------------------
# After this many 401s in a row on a provider (403s on one of its models), with no answer
# between them, the key is wrong (or lacks access): no more requests are sent to it in this
# run, and every call says why at once, rather than a batch spending itself on refusals.
AUTH_REFUSALS_TO_STOP = 3

# --- HTTP -----------------------------------------------------------------------------
# aiohttp's default total connection cap; raised when the providers' caps add up to more.
DEFAULT_CONNECTION_LIMIT = 100
# aiohttp rounds timeouts at least this long up to a whole second (its own default, set
# explicitly so that every ClientTimeout field is chosen, not inherited).
TIMEOUT_CEIL_THRESHOLD_S = 5.0
# An error body is read up to this many bytes; a proxy's HTML error page can be large.
MAX_ERROR_BODY_READ_BYTES = 64 * 1024
USER_AGENT = "moac/0.1"
# Every response is read up to a bound that follows from the max_tokens it was asked for,
# streamed or not: a fixed allowance (headers of the JSON, a usage chunk, a long error) plus
# this many bytes a token. A streamed token is one SSE event of about 150-400 bytes (id,
# model, created, choices, and some providers' padding); 1 KiB leaves room for all of them.
# Past the bound the attempt fails (a server ignoring max_tokens, or a hostile one) rather
# than fill memory, disks and the bill.
RESPONSE_BYTES_BASE = 1024 * 1024
RESPONSE_BYTES_PER_TOKEN = 1024
# Token counts a provider reports are believed up to this (for arithmetic: a count beyond
# what a float holds would crash the cost); the budget check flags anything past the bounds.
MAX_REPORTED_TOKENS = 10 ** 12
# A server-sent-events line longer than this is refused: aiohttp's own line reader stops at
# 128 KiB, which a long answer's final JSON can pass; without any cap, a server that never
# sends a line end would fill memory until the attempt's total timeout.
MAX_SSE_LINE_BYTES = 8 * 1024 * 1024

# --- secrets and stored bodies ----------------------------------------------------------
# Raw bodies kept on errors (for traces and diagnostics) are cut to this many characters,
# after redaction, so a key cut in half at the boundary is still removed.
MAX_STORED_BODY_CHARS = 500
REDACTED = "[REDACTED]"
# A run of this many characters of a key, found anywhere in a text, is redacted: providers'
# 401 bodies often echo a key's prefix and suffix ("sk-abc1****wxyz").
MIN_SECRET_FRAGMENT = 8
# A key shorter than this is refused before any call (naming its variable): no provider's
# key is this short, and a key is redacted from every message, so a one-character "key"
# would mangle them all ("conte[REDACTED]t length").
MIN_API_KEY_CHARS = 8

# --- the embedded llama.cpp server's threads (moac/providers/local_threads.py) --------------
# How llama.cpp's OpenMP threads wait at the barrier that ends each operation of a forward
# pass. libgomp's default spins about 3 ms first: with a core busy elsewhere, the threads
# that arrived spin at every barrier for the one still waiting for a core, and the same
# query took 164-296 s instead of about 11 s on 2 cores. "passive" sleeps at once: as fast
# on an idle machine (bench/local.py --busy), and a busy one slows it down only in
# proportion to the cores it takes.
LOCAL_OMP_WAIT_POLICY = "passive"
# llama.cpp's own thread pool (builds without OpenMP) polls for new work at this level,
# 0-100, before it sleeps: 0, no polling, for the same reason.
LOCAL_CPU_POLL = 0
