"""What the requests are: keys (e.g. user ids from a Zipf distribution) and the requests made from them.

Requests are made from *keys* by a factory; each distinct key is routed once
by the handler's real ``route()`` and the result is cached, which is exact
for routes that are a function of the request (the usual case: a thread must
be stable per key for FIFO to mean anything). `Generated` requests are routed
one by one instead, for routes that are not.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from .checks import ScenarioError, check_count, check_positive


class Keys(Protocol):
    """A key distribution: which key (e.g. user) each arrival belongs to.

    Keys are drawn as indices ``0..n-1``; ``value(index)`` is the key itself.
    """

    @property
    def n(self) -> int:
        """Number of distinct keys."""
        ...  # pragma: no cover

    def sample(self, rng: np.random.Generator, first: int, size: int) -> np.ndarray:
        """Key indices of arrivals ``first .. first + size - 1``."""
        ...  # pragma: no cover

    def value(self, index: int) -> Any:
        """The key of ``index``, passed to the request factory."""
        ...  # pragma: no cover


@dataclass(frozen=True)
class Uniform:
    """Keys ``0..n-1``, equally likely."""

    n: int

    def __post_init__(self) -> None:
        check_count("Uniform n", self.n)

    def sample(self, rng: np.random.Generator, first: int, size: int) -> np.ndarray:
        """Uniform key indices."""
        return rng.integers(0, self.n, size)

    def value(self, index: int) -> Any:
        """The key is the index."""
        return index


@dataclass(frozen=True)
class Zipf:
    """Hot keys: key ``k`` (0-based) has probability proportional to ``1 / (k + 1) ** s``.

    Args:
        n: Number of distinct keys.
        s: Skew exponent (0 is uniform; about 1 is typical of users or items).
    """

    n: int
    s: float = 1.0
    _cdf: np.ndarray = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        check_count("Zipf n", self.n)
        check_positive("Zipf s", self.s, zero=True)
        weights = 1.0 / np.arange(1, self.n + 1, dtype=np.float64) ** self.s
        cdf = np.cumsum(weights)
        object.__setattr__(self, "_cdf", cdf / cdf[-1])

    def sample(self, rng: np.random.Generator, first: int, size: int) -> np.ndarray:
        """Zipf key indices, by inverse transform."""
        return np.minimum(np.searchsorted(self._cdf, rng.random(size), "right"), self.n - 1)

    def probabilities(self) -> np.ndarray:
        """Probability of each key index."""
        return np.diff(self._cdf, prepend=0.0)

    def value(self, index: int) -> Any:
        """The key is the index."""
        return index


@dataclass(frozen=True)
class RoundRobin:
    """Keys ``0, 1, ..., n-1, 0, 1, ...`` in turn (deterministic)."""

    n: int

    def __post_init__(self) -> None:
        check_count("RoundRobin n", self.n)

    def sample(self, rng: np.random.Generator, first: int, size: int) -> np.ndarray:
        """Consecutive key indices modulo ``n``."""
        return np.arange(first, first + size, dtype=np.int64) % self.n

    def value(self, index: int) -> Any:
        """The key is the index."""
        return index


@dataclass(frozen=True)
class KeySequence:
    """Replay recorded keys in order (e.g. a trace's ``thread`` column), cycling at the end."""

    values: Sequence[Any] | np.ndarray
    _codes: np.ndarray = field(init=False, repr=False, compare=False)
    _uniques: np.ndarray = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        values = np.asarray(self.values, dtype=object).ravel()
        if values.size == 0:
            raise ScenarioError("KeySequence needs at least one key")
        uniques, codes = np.unique(values.astype(str), return_inverse=True)
        first_of = {u: i for i, u in reversed(list(enumerate(values.astype(str))))}
        object.__setattr__(self, "_codes", codes.astype(np.int64))
        object.__setattr__(self, "_uniques", np.array([values[first_of[u]] for u in uniques], dtype=object))

    @property
    def n(self) -> int:
        """Number of distinct keys."""
        return int(self._uniques.size)

    def sample(self, rng: np.random.Generator, first: int, size: int) -> np.ndarray:
        """The recorded key indices, cycling."""
        return self._codes[np.arange(first, first + size) % self._codes.size]

    def value(self, index: int) -> Any:
        """The recorded key."""
        return self._uniques[index]


@dataclass(frozen=True)
class Keyed:
    """Requests made from keys; each distinct key is routed once (cached).

    Args:
        keys: The key distribution (`Uniform`, `Zipf`, `RoundRobin`, `KeySequence`).
        make: Builds the request of a key; default: the key itself.
    """

    keys: Keys = field(default_factory=lambda: Uniform(1))
    make: Callable[[Any], Any] | None = None

    def __post_init__(self) -> None:
        if not hasattr(self.keys, "sample") or not hasattr(self.keys, "value"):
            raise ScenarioError(f"Keyed keys must be a key distribution (Uniform, Zipf, ...), got {self.keys!r}")

    def request(self, index: int) -> Any:
        """The request of key ``index``."""
        key = self.keys.value(index)
        return key if self.make is None else self.make(key)


@dataclass(frozen=True)
class Generated:
    """Requests from a generator, each routed by ``route()`` (no caching; slower).

    Use it for routes that are not a function of the request alone.

    Args:
        make: ``make(rng, n)`` returns ``n`` requests (``rng`` is a numpy Generator).
    """

    make: Callable[[np.random.Generator, int], Sequence[Any]]


Requests = Keyed | Generated
