"""Pass 2b: the ``planner`` blocks, merged as budgets are (an importing file overrides)."""

from __future__ import annotations

from moac.lang import ast
from moac.checks.state import CheckState
from moac.checks.values import Reader, read_file_blocks
from moac.ir.spec import QualitySpec

# Each coefficient and the range it makes sense in (planner/quality.py gives the formula).
PLANNER_KEYS = {
    "quality_base": (-100.0, 100.0),
    "quality_prior_weight": (0.0, 1.0),
    "quality_mean_weight": (0.0, 1.0),
    "quality_sampling_gain": (-50.0, 50.0),
    "quality_diversity_gain": (-50.0, 50.0),
    "quality_diversity_decay": (0.0, 1.0),
}


def read_planner_blocks(state: CheckState) -> None:
    def merge(quality: QualitySpec) -> None:
        state.quality = state.quality.merged(quality)

    read_file_blocks(state, ast.PlannerBlock, "E508", "planner", _read, merge)


def _read(reader: Reader, block: ast.PlannerBlock) -> QualitySpec:
    fields = {}
    for key, setting in reader.settings(block.settings, PLANNER_KEYS, "the planner").items():
        value = reader.single(setting)
        if value is None:
            continue
        low, high = PLANNER_KEYS[key]
        number = reader.in_range(reader.quantity(value, "number", key), low, high, key,
                                 value.span)
        if number is not None:
            fields[key] = number
    return QualitySpec(**fields)
