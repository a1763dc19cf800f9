"""Service times of ``perform``: ``(per_batch + per_message * n) * noise``, part of it CPU.

``noise`` has mean 1 (deterministic, exponential, lognormal or empirical:
`simulator.noise`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .checks import ScenarioError, check_positive
from .noise import Exponential, Fixed, Noise


@dataclass(frozen=True)
class Service:
    """Service time of ``perform`` for a batch of ``n``: ``(per_batch + per_message * n) * noise``.

    Part of it may be CPU: ``(cpu_per_batch + cpu_per_message * n) * noise``
    holds the worker process's one CPU (other loops of the process wait for
    it), the rest is waiting (I/O), which overlaps with the other loops. The
    CPU part runs first, then the wait.

    Args:
        per_batch: Seconds every ``perform`` call costs, CPU and waiting together.
        per_message: Seconds each request of the batch adds.
        noise: Unit-mean factor: `Fixed` (default), `Exponential`, `LogNormal`, `Empirical`.
        failure_rate: Probability that a ``perform`` raises (after taking its time),
            which drives the real retry/backoff/bisection logic.
        cpu_per_batch: The CPU part of ``per_batch`` (at most ``per_batch``).
        cpu_per_message: The CPU part of ``per_message`` (at most ``per_message``).
        timer: The waiting part is an asyncio timer (``asyncio.sleep``), which an
            idle event loop rounds up to the millisecond (see `simulator.machine`),
            rather than I/O that ends when a reply arrives.
    """

    per_batch: float = 0.0
    per_message: float = 0.0
    noise: Noise = field(default_factory=Fixed)
    failure_rate: float = 0.0
    cpu_per_batch: float = 0.0
    cpu_per_message: float = 0.0
    timer: bool = False

    def __post_init__(self) -> None:
        check_positive("Service per_batch", self.per_batch, zero=True)
        check_positive("Service per_message", self.per_message, zero=True)
        if not hasattr(self.noise, "sample"):
            raise ScenarioError(f"Service noise must be Fixed, Exponential, LogNormal or Empirical, got {self.noise!r}")
        rate = check_positive("Service failure_rate", self.failure_rate, zero=True)
        if rate >= 1:
            raise ScenarioError(f"Service failure_rate must be < 1, got {rate!r}")
        for part, whole in (("cpu_per_batch", "per_batch"), ("cpu_per_message", "per_message")):
            value = check_positive(f"Service {part}", getattr(self, part), zero=True)
            if value > getattr(self, whole) * (1 + 1e-9):
                raise ScenarioError(f"Service {part} ({value!r}) must not exceed {whole} ({getattr(self, whole)!r})")

    def mean(self, n: int | np.ndarray) -> Any:
        """Mean service time of a batch of ``n``."""
        return self.per_batch + self.per_message * n

    def mean_cpu(self, n: int | np.ndarray) -> Any:
        """Mean CPU time of a batch of ``n``."""
        return self.cpu_per_batch + self.cpu_per_message * n

    @property
    def uses_cpu(self) -> bool:
        """Whether ``perform`` holds the process's CPU or sleeps on a timer (not pure I/O)."""
        return bool(self.cpu_per_batch or self.cpu_per_message or self.timer)

    @classmethod
    def exponential(cls, mean: float, per_message: bool = False, cpu: bool = False) -> Service:
        """Exponential service of ``mean`` seconds per batch (or per message), all CPU when ``cpu``."""
        share = mean if cpu else 0.0
        if per_message:
            return cls(per_message=mean, noise=Exponential(), cpu_per_message=share)
        return cls(per_batch=mean, noise=Exponential(), cpu_per_batch=share)

    @classmethod
    def cpu_bound(cls, per_batch: float = 0.0, per_message: float = 0.0, noise: Noise | None = None) -> Service:
        """A ``perform`` that computes all along (no waiting): it holds the process's CPU."""
        return cls(per_batch, per_message, noise or Fixed(), cpu_per_batch=per_batch, cpu_per_message=per_message)


class ServiceSampler:
    """Draws service times and failures in blocks (one numpy call per block)."""

    BLOCK = 4096

    def __init__(self, service: Service, rng: np.random.Generator) -> None:
        self.service = service
        self.rng = rng
        self.fixed = isinstance(service.noise, Fixed)
        self.failure_rate = service.failure_rate
        self._factors: list[float] = []
        self._fails: list[bool] = []

    def duration(self, n: int) -> float:
        """Service time of a batch of ``n``."""
        return self.draw(n)[0]

    def draw(self, n: int) -> tuple[float, float]:
        """Service time of a batch of ``n`` and its CPU part (the same noise factor)."""
        service = self.service
        mean = service.per_batch + service.per_message * n
        cpu = service.cpu_per_batch + service.cpu_per_message * n
        if self.fixed:
            return mean, cpu
        if not self._factors:
            self._factors = service.noise.sample(self.rng, self.BLOCK)[::-1].tolist()
        factor = self._factors.pop()
        return mean * factor, cpu * factor

    def fails(self) -> bool:
        """Whether the next ``perform`` raises."""
        if self.service.failure_rate == 0:
            return False
        if not self._fails:
            self._fails = (self.rng.random(self.BLOCK) < self.service.failure_rate).tolist()
        return self._fails.pop()
