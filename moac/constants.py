"""Every tunable of moac in one place, as openai-python keeps its ``_constants.py``."""

from __future__ import annotations

# --- reading sources ---------------------------------------------------------------
# A .moa file is a few kilobytes; a 2,000-agent generated file is about 40 KB. Anything
# past this is refused before lexing rather than parsed for seconds.
MAX_SOURCE_BYTES = 4 * 1024 * 1024
# ...and to this many tokens (names, numbers, strings, symbols; a run of blank and comment
# lines is one). lark's parser costs 5-13 us a token, so 4 MiB of `a, a, a` (1.4 million
# tokens) would take a quarter of a minute; this many parse in about a second and check in
# one to two and a half (bench/parse.py, on 2 busy cores). A generated file of 2,000 agents
# has 16,000. E003 at the token past it.
MAX_SOURCE_TOKENS = 100_000
# A file imports a file that imports a file...: at most this many deep (the root is 0).
# Nothing needs more than a few; a longer chain is a generated mistake.
MAX_IMPORT_DEPTH = 64
# `pipeline b from a`, `pipeline c from b`...: at most this many bases under a pipeline.
MAX_DERIVATION_DEPTH = 64
# Agents once copies (`x N`) and derivation (`from`) are expanded: a file of a few bytes
# can otherwise ask for a billion. Per pipeline, and for all the pipelines of a workspace
# together (checking costs about 20 us an agent; the paper's largest MoA has 13).
MAX_PIPELINE_AGENTS = 10_000
MAX_WORKSPACE_AGENTS = 100_000
# Hint for "did you mean": names closer than this (difflib ratio) are suggested.
SUGGESTION_CUTOFF = 0.6
# ...and the comparisons one check may spend on suggestions (each unknown name is compared
# with every known one): past it, errors come without "did you mean", so that 10,000
# unknown names among 10,000 known ones cost a second, not ten minutes.
SUGGESTION_COMPARISONS = 200_000

# --- the range of every quantity a .moa file gives (beyond these it is a typo) -------------
# Each is far past any real value; a value past it is reported (E206) at the value, as is a
# number too large to be a float (`$1e309/M`), so that no plan holds Infinity or NaN.
MAX_AMOUNT_USD = 1_000_000.0        # a budget's max_usd, usd_per_point, a price per 1M tokens
MAX_DURATION_S = 7 * 24 * 3600.0    # timeouts, latency budgets, time to first token
MAX_TOKEN_COUNT = 1 << 30           # context windows, max_tokens, answer lengths
MAX_PARAMS_B = 1_000_000.0          # billions of parameters
MAX_TOKENS_PER_S = 1e9              # speeds
MAX_TFLOPS = 1e15                   # a budget's max_tflops
MAX_PARALLEL = 4096                 # a provider's calls in flight
MAX_RETRIES = 100                   # a provider's retries per call
MAX_RPM = 1e9                       # a provider's requests per minute
MAX_TPM = 1e12                      # ...and tokens per minute
# Speeds and rates are divisors (a latency is tokens over a speed): one this small would
# make a time no float holds, so a positive rate is at least this (tok/s, rpm, tpm).
MIN_RATE = 0.001
MAX_SEED = 2**31 - 1                # a sampling seed (int32: what every server takes)

# --- token estimates at compile time -----------------------------------------------
# English text averages about four characters per token for the paper's models' tokenisers.
CHARS_PER_TOKEN = 4.0
# The prompt length assumed when no real prompt is at hand (compile-time checks, plans):
# AlpacaEval 2.0 instructions average about 40 tokens, MT-Bench turns about 70; 256 leaves
# room for longer user prompts without making the context check cry wolf.
ASSUMED_PROMPT_TOKENS = 256
# Chat-template overhead per message (role markers, separators).
TOKENS_PER_MESSAGE = 8

# --- sampling defaults (the paper's) -----------------------------------------------
DEFAULT_TEMPERATURE = 0.7
DEFAULT_MAX_TOKENS = 512
DEFAULT_MIN_OK = 1

# --- model profile defaults, where a .moa file leaves them out --------------------------
DEFAULT_TTFT_S = 0.5
DEFAULT_OUTPUT_TOKENS_PER_S = 30.0
# Prompt processing is an order of magnitude faster than generation on served models.
DEFAULT_PREFILL_TOKENS_PER_S = 2000.0
DEFAULT_ANSWER_TOKENS = 400
# A reasoning model's thinking before its answer, where its profile declares no `thinking`:
# OpenAI's o-series and GPT-5 at medium effort think a few hundred to several thousand
# tokens a question.
DEFAULT_THINKING_TOKENS = 2000

# --- reasoning models' parameters (kind = openai) --------------------------------------------
# Model ids of OpenAI's reasoning families (o1, o3-mini, o4-mini, gpt-5, gpt-5.1, ...: the id
# itself or the id followed by '-', '.' or ':'), whose API takes `max_completion_tokens`, no
# `temperature` or `top_p`, and `reasoning_effort`. Ids with a vendor prefix ("openai/o3",
# routers translating parameters themselves) do not match.
OPENAI_REASONING_MODEL_IDS = r"(?i)(o1|o3|o4|gpt-5)([-.:].*)?"
# `reasoning_effort` values moac passes on (the provider refuses those a model lacks).
REASONING_EFFORTS = ("none", "minimal", "low", "medium", "high", "xhigh")
# How a reference reads with `references = with_reasoning`: the thinking, then the answer.
REASONING_REFERENCE = "<think>\n{reasoning}\n</think>\n\n{answer}"

# --- providers -----------------------------------------------------------------------
DEFAULT_PARALLEL = 8
DEFAULT_CONNECT_TIMEOUT_S = 5.0
# No bytes for this long on a stream means the server stalled.
DEFAULT_READ_TIMEOUT_S = 60.0
DEFAULT_TIMEOUT_S = 120.0
DEFAULT_MAX_RETRIES = 2

# --- running ---------------------------------------------------------------------------
# A query with no latency budget still ends: one deadline around the whole DAG.
DEFAULT_QUERY_DEADLINE_S = 600.0
# The planner's search when a query is fit at its start (moac.run.start_fit): past this it
# keeps the best sub-plan found (its search is exact on the paper's MoA within ~60 ms).
FIT_SEARCH_TIME_LIMIT_S = 0.25

# --- the budget's upper bounds (what a provider can bill, whatever its tokeniser) ----------
# A budget hold must be a true upper bound, not an estimate: no tokeniser moac knows is at
# hand, and four characters a token is wrong by 2x for "a a a a" and by 3-4x for CJK or
# emoji. Every byte-level BPE tokeniser (GPT, Llama 3, Qwen, Mistral...) and every
# sentencepiece one with byte fallback makes at most one token per UTF-8 byte of text, so
# the bytes are the ceiling; chat templates add a few special tokens per message (role
# markers, separators, a BOS), and this many is more than any of them adds.
MAX_TEMPLATE_TOKENS_PER_MESSAGE = 16
# ...and per request (the assistant turn's header the template opens for the answer).
MAX_TEMPLATE_TOKENS_PER_REQUEST = 16
# An answer of max_tokens holds at most this many UTF-8 bytes a token, on average: English
# averages about 4.5, code 3-5, CJK 3-6, emoji runs up to 8; 16 is past any real answer, and
# the client refuses an answer longer than that (a server ignoring max_tokens). It bounds
# what a later layer reads before the answers exist: the worst case a query is admitted on.
MAX_ANSWER_BYTES_PER_TOKEN = 16

# --- the aggregate-and-synthesize prompt ---------------------------------------------
# The slot that receives the earlier layer's answers, numbered "1. ...", "2. ...".
RESPONSES_SLOT = "responses"
# Wang et al. 2024, Table 1, as in the reference implementation: a system prompt, the
# earlier answers appended as a numbered list.
DEFAULT_AGGREGATE_PROMPT = (
    "You have been provided with a set of responses from various open-source models to the "
    "latest user query. Your task is to synthesize these responses into a single, "
    "high-quality response. It is crucial to critically evaluate the information provided in "
    "these responses, recognizing that some of it may be biased or incorrect. Your response "
    "should not simply replicate the given answers but should offer a refined, accurate, and "
    "comprehensive reply to the instruction. Ensure your response is well-structured, "
    "coherent, and adheres to the highest standards of accuracy and reliability.\n\n"
    "Responses from models:\n{responses}"
)

# --- evaluation --------------------------------------------------------------------------
# `moac eval --pipelines single:MODEL`: the model answering alone (also how calibrate finds
# a model's own verdicts in quality traces).
SINGLE_PREFIX = "single:"

# --- plans ---------------------------------------------------------------------------
PLAN_FORMAT_VERSION = 1

# --- running (executor) ----------------------------------------------------------------------
# The client's attempts end at the query's deadline on their own; past it by this much,
# whatever is still in flight is cancelled (aiohttp rounds timeouts of 5 s or more up to a
# whole second, so an attempt can otherwise overrun by up to a second).
DEADLINE_GRACE_S = 0.05
# `moac run --prompts`: queries in flight at once, unless --concurrency says otherwise.
DEFAULT_RUN_CONCURRENCY = 8

# --- response cache (moac/run/cache.py: --record / --replay) --------------------------------------
# Part of every cache key and stored in the file (PRAGMA user_version): bump it when the key's
# contents or the table change, so an old file is refused rather than silently missed.
CACHE_FORMAT_VERSION = 1
# PRAGMA application_id of a cache file ("MOAC" in ASCII): tells our file from another SQLite
# database someone passed by mistake.
CACHE_APPLICATION_ID = 0x4D4F4143
# Only complete answers are stored: "stop", or "length" (cut by max_tokens, which is part of
# the key, so the same request is cut the same way again). Anything else is not a reusable answer.
CACHE_FINISH_REASONS = ("stop", "length")
# Another process writing the same file (WAL allows one writer): wait this long for its lock.
CACHE_BUSY_TIMEOUT_S = 5.0
