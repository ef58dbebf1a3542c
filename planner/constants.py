"""Every tunable of the planner in one place (moac's own live in ``moac/constants.py``).

The quality model's coefficients are fitted, not guessed: see :mod:`planner.quality` for the
formula and the published points they reproduce.
"""

from __future__ import annotations

# Dollars and TFLOPs of a call come from ModelSpec.usd and ModelSpec.tflops (moac/ir/spec.py):
# TFLOPs = 2 x active parameters x tokens.

# --- quality model (planner.quality.MoaQualityModel) -------------------------------------
# Fitted (minimax, then rounded) to the nine published MoA points of Wang et al. 2024
# (Table 3 ablation, MoA 65.1, MoA-Lite 59.3); every point lands within 1.5 of its target.
# Weight of an agent's own prior in what it writes when it aggregates answers.
QUALITY_PRIOR_WEIGHT = 0.34          # alpha
# How much the average quality of the answers it reads moves an aggregator.
QUALITY_MEAN_WEIGHT = 0.18           # kappa
# What any aggregator can make of answers of average quality 0, before the gains below.
QUALITY_BASE = 44.0                  # C
# Gain once there are two answers or more to compare (copies of one model count).
QUALITY_SAMPLING_GAIN = 10.2         # G_s
# Gain from distinct models, saturating: G_d * (1 - DECAY ** (distinct - 1)).
QUALITY_DIVERSITY_GAIN = 15.0        # G_d
QUALITY_DIVERSITY_DECAY = 0.80       # rho_d
# Prior the search ranks sub-plans with in place of a model's undeclared `quality` (low: the
# planner prefers what it knows). Never reported: a prediction resting on it is "unknown".
UNKNOWN_QUALITY = 20.0
# `moac plan` lists at most this many sub-plans of unknown quality (cheapest first).
FRONTIER_UNKNOWN_ROWS = 12

# --- routing (planner.route) ------------------------------------------------------------
# Agreement at or above which the shared first layer's answers are aggregated at once (the
# cheaper candidate's path) when a route sets no `agreement`. Over AlpacaEval with the five
# recorded proposers the measure's median is 0.435 (p5 0.28, p95 0.58): at 0.45, 57% of
# queries go on to the full MoA and 43% exit early, a third cheaper than always-MoA
# (bench/route.py prints the distribution and the whole trade-off).
DEFAULT_AGREEMENT_THRESHOLD = 0.45

# The learned route policy (planner.learned): folds of the held-out accuracy it reports, and
# the L2 penalty on its logistic regression's coefficients (not the bias): a few hundred
# judged queries and eight features call for a firm one.
ROUTER_FOLDS = 5
ROUTER_RIDGE = 1.0

# --- search ------------------------------------------------------------------------------
# Branch and bound stops after this long and reports its gap to the proven upper bound.
SEARCH_TIME_LIMIT_S = 1.5
# Predicted qualities closer than this are ties (broken towards the cheaper plan).
QUALITY_EPSILON = 1e-9
# A layer of more agents than this is not enumerated (2**k subsets): the search refuses it.
MAX_AGENTS_PER_LAYER = 16

# --- frontier ----------------------------------------------------------------------------
# Sub-plans enumerated exactly up to this many; above it the frontier is swept with the
# budgeted search over FRONTIER_SWEEP_POINTS dollar budgets and marked approximate.
FRONTIER_MAX_SUBPLANS = 200_000
FRONTIER_SWEEP_POINTS = 24

# --- routing signals (planner.agreement, planner.features, planner.preroute) ----------------
# Hashed n-gram space of the agreement measure: with 2**18 buckets an answer of 2,000 words
# (~2,500 distinct grams) has about a dozen collisions; the vectors are kept sparse, so a
# larger space costs nothing but would change every recorded score.
AGREEMENT_BUCKETS = 2**18
# planner.features: greetings and small talk count as "chat" only in prompts this short.
CHAT_MAX_TOKENS = 16
# planner.preroute: ridge on every coefficient but the bias (805 training rows: 1.0 is small;
# it centres the one-hot category coefficients, which the bias would otherwise alias).
PREROUTE_RIDGE = 1.0
# Fitted by bench/fit_preroute.py on the five proposers' recorded AlpacaEval answers; aligned
# with planner.features.FEATURE_NAMES (bias, log1p_tokens, is_code, is_maths, is_reasoning,
# is_writing, is_open, is_chat). Target: disagreement = 1 - agreement score.
# Weak: in-sample R^2 0.06, 5-fold held-out correlation 0.21 (see planner.preroute).
PREROUTE_COEFFICIENTS = (0.5677, -0.0070, -0.0276, -0.0343, -0.0073, 0.0396, 0.0220, 0.0075)
PREROUTE_MEAN_DISAGREEMENT = 0.5591
