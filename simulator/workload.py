"""What a scenario feeds the queue: arrival processes, requests and service times.

Arrival processes generate enqueue times in bulk (numpy, in chunks), so the
simulator never spends an event on an arrival. Requests are made from *keys*
(e.g. user ids drawn from a Zipf distribution) by a factory; each distinct key
is routed once by the handler's real ``route()`` and the result is cached,
which is exact for routes that are a function of the request (the usual case:
a thread must be stable per key for FIFO to mean anything). `Generated`
requests are routed one by one instead, for routes that are not.

Service times model ``perform`` as ``(per_batch + per_message * n) * noise``
where ``noise`` has mean 1 (deterministic, exponential, lognormal or empirical).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np

CHUNK = 1 << 15
"""Arrivals generated per step of an unbounded arrival process."""


class ScenarioError(ValueError):
    """A scenario, workload or model has an impossible value (raised before simulating)."""


def _positive(name: str, value: float, *, zero: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
        raise ScenarioError(f"{name} must be a number, got {type(value).__name__}: {value!r}")
    value = float(value)
    if not math.isfinite(value) or value < 0 or (value == 0 and not zero):
        raise ScenarioError(f"{name} must be a finite number {'>=' if zero else '>'} 0, got {value!r}")
    return value


def _count(name: str, value: int, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise ScenarioError(f"{name} must be an integer, got {type(value).__name__}: {value!r}")
    if value < minimum:
        raise ScenarioError(f"{name} must be >= {minimum}, got {value!r}")
    return int(value)


# --- arrival processes ---------------------------------------------------------


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
        _positive("Poisson rate", self.rate)
        _positive("Poisson start", self.start, zero=True)

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
        _positive("Deterministic rate", self.rate)
        _positive("Deterministic start", self.start, zero=True)

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
        _positive("OnOff rate", self.rate)
        _positive("OnOff on", self.on)
        _positive("OnOff off", self.off, zero=True)
        _positive("OnOff start", self.start, zero=True)

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
        _positive("Registered every", self.every)

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
        _positive("Deferred delay", self.delay, zero=True)
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
        _positive("Recurring start", self.start, zero=True)

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
    _count("Backlog count", count)
    _positive("Backlog at", at, zero=True)
    return Replay(np.full(count, float(at)), shift=False)


# --- keys and requests ---------------------------------------------------------


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
        _count("Uniform n", self.n)

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
        _count("Zipf n", self.n)
        _positive("Zipf s", self.s, zero=True)
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
        _count("RoundRobin n", self.n)

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


# --- service times ---------------------------------------------------------------


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
        _positive("LogNormal cv", self.cv)

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
            idle event loop rounds up to the millisecond (see `simulator.cpu`),
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
        _positive("Service per_batch", self.per_batch, zero=True)
        _positive("Service per_message", self.per_message, zero=True)
        if not hasattr(self.noise, "sample"):
            raise ScenarioError(f"Service noise must be Fixed, Exponential, LogNormal or Empirical, got {self.noise!r}")
        rate = _positive("Service failure_rate", self.failure_rate, zero=True)
        if rate >= 1:
            raise ScenarioError(f"Service failure_rate must be < 1, got {rate!r}")
        for part, whole in (("cpu_per_batch", "per_batch"), ("cpu_per_message", "per_message")):
            value = _positive(f"Service {part}", getattr(self, part), zero=True)
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
