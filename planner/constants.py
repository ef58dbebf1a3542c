"""Every tunable of the planner in one place (moac's own live in ``moac/constants.py``).

The quality model's coefficients are fitted, not guessed: see :mod:`planner.quality` for the
formula and the published points they reproduce.
"""

from __future__ import annotations

# Dollars and TFLOPs of a call come from ModelSpec.usd and ModelSpec.tflops (moac/spec.py):
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
# Prior assumed for a model whose `quality` is not declared (the report says so).
UNKNOWN_QUALITY = 20.0

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
