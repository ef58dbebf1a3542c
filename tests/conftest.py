"""Shared fixtures: where the examples and golden files live, and whether to rewrite goldens."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
GOLDEN = Path(__file__).resolve().parent / "golden"


def update_golden() -> bool:
    """``MOAC_UPDATE_GOLDEN=1`` rewrites golden files instead of comparing against them."""
    return os.environ.get("MOAC_UPDATE_GOLDEN", "") not in ("", "0")


@pytest.fixture
def examples_dir() -> Path:
    return EXAMPLES


@pytest.fixture
def golden_dir() -> Path:
    return GOLDEN
