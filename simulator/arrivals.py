"""Arrival processes: when one handler's requests are registered, generated in bulk.

Arrival processes generate enqueue times in bulk (numpy, in chunks), so the
simulator never spends an event on an arrival.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np

from .checks import ScenarioError, check_count, check_positive
from .noise import Fixed, Noise

CHUNK = 1 << 15
"""Arrivals generated per step of an unbounded arrival process."""


@runtime_checkable
class Arrivals(Protocol):
    """An arrival process: enqueue times of one handler's requests."""

    def chunks(self, rng: np.random.Generator) -> Iterator[np.ndarray]:
        """Yield sorted arrays of enqueue times (seconds), each after the last; may end."""
        ...  # pragma: no cover

    def mean_rate(self) -> float | None:
        """Long-run arrivals per second, if known."""
        ...  # pragma: no cover


@dataclass(frozen=True)
class Poisson:
    """Poisson arrivals: exponential gaps of mean ``1 / rate``.

    Args:
        rate: Arrivals per second.
        start: Time the process starts (the first arrival comes one gap later).
    """

    rate: float
    start: float = 0.0

    def __post_init__(self) -> None:
        check_positive("Poisson rate", self.rate)
        check_positive("Poisson start", self.start, zero=True)

    def chunks(self, rng: np.random.Generator) -> Iterator[np.ndarray]:
        """Yield arrival times in chunks of `CHUNK`."""
        last = self.start
        scale = 1.0 / self.rate
        while True:
            times = np.cumsum(rng.exponential(scale, CHUNK))
            times += last
            last = float(times[-1])
            yield times

    def mean_rate(self) -> float:
        """Arrivals per second."""
        return self.rate


@dataclass(frozen=True)
class Deterministic:
    """Evenly spaced arrivals, one every ``1 / rate`` seconds from ``start``.

    Args:
        rate: Arrivals per second.
        start: Time of the first arrival.
    """

    rate: float
    start: float = 0.0

    def __post_init__(self) -> None:
        check_positive("Deterministic rate", self.rate)
        check_positive("Deterministic start", self.start, zero=True)

    def chunks(self, rng: np.random.Generator) -> Iterator[np.ndarray]:
        """Yield arrival times in chunks of `CHUNK` (exact multiples of the gap)."""
        gap = 1.0 / self.rate
        first = 0
        while True:
            yield self.start + gap * np.arange(first, first + CHUNK, dtype=np.float64)
            first += CHUNK

    def mean_rate(self) -> float:
        """Arrivals per second."""
        return self.rate


@dataclass(frozen=True)
class OnOff:
    """Bursty arrivals: Poisson at ``rate`` during on-periods, nothing during off-periods.

    Args:
        rate: Arrivals per second while on.
        on: Length of an on-period in seconds (mean length when ``random``).
        off: Length of an off-period in seconds (mean length when ``random``).
        random: Exponential period lengths (a two-state MMPP) instead of fixed ones.
        start: Time the first on-period starts.
    """

    rate: float
    on: float
    off: float
    random: bool = False
    start: float = 0.0

    def __post_init__(self) -> None:
        check_positive("OnOff rate", self.rate)
        check_positive("OnOff on", self.on)
        check_positive("OnOff off", self.off, zero=True)
        check_positive("OnOff start", self.start, zero=True)

    def chunks(self, rng: np.random.Generator) -> Iterator[np.ndarray]:
        """Yield arrival times, one or more on-periods per chunk."""
        poisson = Poisson(self.rate).chunks(rng)
        # Generate the process in "on-time" (time counted only while on) and map it
        # to real time by inserting the off-periods: exact and vectorised.
        period_on = self.on
        begin_on, begin_real = 0.0, self.start
        pending = np.empty(0)
        while True:
            lengths = rng.exponential(1.0, 256) if self.random else np.ones(256)
            offs = rng.exponential(1.0, 256) if self.random else np.ones(256)
            ends_on = begin_on + np.cumsum(lengths * period_on)
            starts_real = begin_real + np.concatenate(([0.0], np.cumsum(lengths * period_on + offs * self.off)[:-1]))
            starts_on = np.concatenate(([begin_on], ends_on[:-1]))
            while pending.size == 0 or pending[-1] < ends_on[-1]:
                pending = np.concatenate((pending, next(poisson)))
            cut = int(np.searchsorted(pending, ends_on[-1], "right"))
            on_times, pending = pending[:cut], pending[cut:]
            period = np.searchsorted(ends_on, on_times, "left")
            yield starts_real[period] + (on_times - starts_on[period])
            begin_on = float(ends_on[-1])
            begin_real = float(starts_real[-1] + lengths[-1] * period_on + offs[-1] * self.off)

    def mean_rate(self) -> float:
        """Long-run arrivals per second: ``rate * on / (on + off)``."""
        return self.rate * self.on / (self.on + self.off)


@dataclass(frozen=True)
class Replay:
    """Replay recorded enqueue times, e.g. the ``enqueued_at`` column of a real trace.

    Args:
        times: Enqueue times in seconds; sorted here. With ``shift`` the first
            one is moved to time 0.
        shift: Subtract the earliest time (real traces use wall-clock time).
    """

    times: Sequence[float] | np.ndarray
    shift: bool = True

    def __post_init__(self) -> None:
        times = np.sort(np.asarray(self.times, dtype=np.float64).ravel())
        if times.size == 0:
            raise ScenarioError("Replay needs at least one enqueue time")
        if not np.isfinite(times).all():
            raise ScenarioError("Replay times must be finite")
        if self.shift:
            times = times - times[0]
        elif times[0] < 0:
            raise ScenarioError(f"Replay times must be >= 0, got {times[0]!r} (use shift=True)")
        object.__setattr__(self, "times", times)

    def chunks(self, rng: np.random.Generator) -> Iterator[np.ndarray]:
        """Yield the recorded times, in chunks of `CHUNK`."""
        times = np.asarray(self.times)
        for first in range(0, times.size, CHUNK):
            yield times[first : first + CHUNK]

    def mean_rate(self) -> float | None:
        """Mean arrivals per second over the recording."""
        times = np.asarray(self.times)
        span = float(times[-1] - times[0])
        return times.size / span if span > 0 else None


@dataclass(frozen=True)
class Registered:
    """Arrivals registered in bulk: a producer that calls ``register`` every ``every`` seconds
    with what arrived since, so each call (and its wake-up message to every worker
    process) carries many requests, all with that call's enqueue time.

    Args:
        arrivals: When requests arrive at the producer (`Poisson`, ...).
        every: Seconds between two ``register`` calls.
    """

    arrivals: Arrivals
    every: float

    def __post_init__(self) -> None:
        if not hasattr(self.arrivals, "chunks"):
            raise ScenarioError(f"Registered arrivals must be an arrival process, got {self.arrivals!r}")
        check_positive("Registered every", self.every)

    def chunks(self, rng: np.random.Generator) -> Iterator[np.ndarray]:
        """The inner process's times, each moved up to the next call (a multiple of ``every``)."""
        for chunk in self.arrivals.chunks(rng):
            yield np.ceil(np.asarray(chunk) / self.every) * self.every

    def mean_rate(self) -> float | None:
        """The inner process's rate."""
        return self.arrivals.mean_rate()


@dataclass(frozen=True)
class Deferred:
    """Arrivals registered with ``defer=``: each joins its tube ``delay`` seconds (times a
    draw of ``noise``, mean 1) after it is registered, as `Queue.register` defers them:
    in due order, and in registration order within a due time.

    In the twin a deferred request's ``enqueued_at`` is its due time, so latencies are
    counted from when it came due (the real envelope keeps its registration time).

    Args:
        arrivals: When requests are registered (`Poisson`, ...).
        delay: Mean delay in seconds.
        noise: The delay's unit-mean spread (`Fixed`, `Exponential`, ...).
    """

    arrivals: Arrivals
    delay: float
    noise: Noise = field(default_factory=lambda: Fixed())

    def __post_init__(self) -> None:
        if not hasattr(self.arrivals, "chunks"):
            raise ScenarioError(f"Deferred arrivals must be an arrival process, got {self.arrivals!r}")
        check_positive("Deferred delay", self.delay, zero=True)
        if not hasattr(self.noise, "sample"):
            raise ScenarioError(f"Deferred noise must be a noise (Fixed(), Exponential(), ...), got {self.noise!r}")

    def chunks(self, rng: np.random.Generator) -> Iterator[np.ndarray]:
        """Due times, sorted: a due time is final once registrations have passed it
        (a later registration is due later still), so each step yields those."""
        inner, delays = rng.spawn(2)
        held = np.empty(0)  # due times not yet final, sorted
        for chunk in self.arrivals.chunks(inner):
            registered = np.asarray(chunk, dtype=np.float64)
            if not len(registered):
                continue
            due = registered + self.delay * self.noise.sample(delays, len(registered))
            # stable: at equal due times, earlier registrations (held ones, then this chunk's order) first
            merged = np.sort(np.concatenate((held, due)), kind="stable")
            cut = int(merged.searchsorted(registered[-1], "right"))
            held = merged[cut:]
            yield merged[:cut]
        if len(held):
            yield held

    def mean_rate(self) -> float | None:
        """The inner process's rate."""
        return self.arrivals.mean_rate()


@dataclass(frozen=True)
class Recurring:
    """A recurring request (``register(..., recurrent=...)``): one arrival per tick of the
    library's own `sharded_queue.core.Schedule`. For a period, the first tick comes one
    period after the start; for a cron string, at each match (UTC), simulated time 0
    being ``start`` seconds since the epoch. Ticks arrive on time: the twin's workers
    are always there to register them (missed ticks collapse only when none runs).

    Args:
        every: Seconds, a `timedelta` or a cron string, as ``recurrent=`` takes.
        start: The epoch second simulated time 0 stands for (cron ticks depend on it).
    """

    every: Any
    start: float = 0.0

    def __post_init__(self) -> None:
        from sharded_queue.core import Schedule

        try:
            Schedule.of(self.every)
        except (TypeError, ValueError) as exc:
            raise ScenarioError(f"Recurring: {exc}") from exc
        check_positive("Recurring start", self.start, zero=True)

    def chunks(self, rng: np.random.Generator) -> Iterator[np.ndarray]:
        """The ticks, in chunks."""
        from sharded_queue.core import Schedule

        schedule = Schedule.of(self.every)
        tick = schedule.first_after(self.start)
        if schedule.every is not None:  # a period: arithmetic
            first = tick - self.start
            while True:
                yield first + schedule.every * np.arange(CHUNK)
                first += schedule.every * CHUNK
        while True:  # cron: the library's own next tick, one at a time
            ticks = np.empty(1024)
            for index in range(len(ticks)):
                ticks[index] = tick - self.start
                tick = schedule.next_after(tick, tick)
            yield ticks

    def mean_rate(self) -> float | None:
        """Ticks per second (for a cron string, averaged over its first 1,024 ticks)."""
        from sharded_queue.core import Schedule

        schedule = Schedule.of(self.every)
        if schedule.every is not None:
            return 1.0 / schedule.every
        first = tick = schedule.first_after(self.start)
        for _ in range(1024):
            tick = schedule.next_after(tick, tick)
        return 1024 / (tick - first)


def Backlog(count: int, at: float = 0.0) -> Replay:
    """``count`` requests all registered at time ``at``: a backlog to drain."""
    check_count("Backlog count", count)
    check_positive("Backlog at", at, zero=True)
    return Replay(np.full(count, float(at)), shift=False)


def finite_replay(arrivals: Any) -> Replay | None:
    """The `Replay` an arrival process ends with (it, or one it is built on), or None."""
    while isinstance(arrivals, Deferred | Registered):
        arrivals = arrivals.arrivals
    return arrivals if isinstance(arrivals, Replay) else None
