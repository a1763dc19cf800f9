"""Checks of scenario values: a `ScenarioError` naming the value, raised before anything is simulated."""

from __future__ import annotations

import math

import numpy as np


class ScenarioError(ValueError):
    """A scenario, workload or model has an impossible value (raised before simulating)."""


def check_positive(name: str, value: float, *, zero: bool = False) -> float:
    """``value`` as a float if it is a finite number > 0 (>= 0 with ``zero``), else a `ScenarioError`."""
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
        raise ScenarioError(f"{name} must be a number, got {type(value).__name__}: {value!r}")
    value = float(value)
    if not math.isfinite(value) or value < 0 or (value == 0 and not zero):
        raise ScenarioError(f"{name} must be a finite number {'>=' if zero else '>'} 0, got {value!r}")
    return value


def check_count(name: str, value: int, minimum: int = 1) -> int:
    """``value`` as an int if it is an integer >= ``minimum``, else a `ScenarioError`."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise ScenarioError(f"{name} must be an integer, got {type(value).__name__}: {value!r}")
    if value < minimum:
        raise ScenarioError(f"{name} must be >= {minimum}, got {value!r}")
    return int(value)
