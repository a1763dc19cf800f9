"""Unit-mean noise: the random factor of a service time, a round trip or a delay."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from .checks import ScenarioError, check_positive


class Noise(Protocol):
    """A unit-mean random factor multiplying the mean service time."""

    def sample(self, rng: np.random.Generator, size: int) -> np.ndarray:
        """``size`` factors, mean 1."""
        ...  # pragma: no cover


@dataclass(frozen=True)
class Fixed:
    """No noise: every batch of ``n`` takes exactly the mean time."""

    def sample(self, rng: np.random.Generator, size: int) -> np.ndarray:
        """Ones."""
        return np.ones(size)


@dataclass(frozen=True)
class Exponential:
    """Exponential service times (coefficient of variation 1)."""

    def sample(self, rng: np.random.Generator, size: int) -> np.ndarray:
        """Exponential factors of mean 1."""
        return rng.exponential(1.0, size)


@dataclass(frozen=True)
class LogNormal:
    """Lognormal service times of mean 1 and coefficient of variation ``cv``."""

    cv: float = 0.5

    def __post_init__(self) -> None:
        check_positive("LogNormal cv", self.cv)

    def sample(self, rng: np.random.Generator, size: int) -> np.ndarray:
        """Lognormal factors of mean 1."""
        sigma2 = math.log1p(self.cv**2)
        return rng.lognormal(-sigma2 / 2, math.sqrt(sigma2), size)


@dataclass(frozen=True)
class Empirical:
    """Resample measured factors (normalised to mean 1), e.g. from `calibrate`."""

    values: Sequence[float] | np.ndarray

    def __post_init__(self) -> None:
        values = np.asarray(self.values, dtype=np.float64).ravel()
        if values.size == 0 or not np.isfinite(values).all() or (values < 0).any() or values.sum() <= 0:
            raise ScenarioError("Empirical needs finite, non-negative values with a positive sum")
        object.__setattr__(self, "values", values / values.mean())

    def sample(self, rng: np.random.Generator, size: int) -> np.ndarray:
        """Factors drawn with replacement from the measured ones."""
        return rng.choice(np.asarray(self.values), size)
