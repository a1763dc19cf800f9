"""What the library spends of a worker process's CPU, and when the machine pauses: parameters.

All loops of one worker process run on one Python thread, one asyncio event
loop, so the library's own work for each effect (encode, the Lua call, parse,
decode, bookkeeping) and the CPU part of ``perform`` run one at a time, while
their I/O waits overlap. `Overhead` says what each effect costs that CPU
(`LIBRARY`, `TRACED`: measured on this project's development machine;
`NONE`: nothing, the textbook queues), `Pauses` when the whole machine stops
running the worker processes, and `REGISTER_COMMANDS` what a registration
costs the storage server. `simulator.machine` runs them: the process's CPU,
the machine's cores, the storage server, the pauses.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .checks import ScenarioError, check_positive


@dataclass(frozen=True)
class Overhead:
    """CPU seconds the library spends in a worker process, per effect.

    Each cost is charged to the process's CPU when a loop carries out the
    effect (all of a storage call's CPU, before its round trip, except the
    per-message decode, which follows the fetch).

    Attributes:
        poll: A coordinator poll (`Storage.candidates`).
        acquire: A lease attempt.
        begin: Binding a thread (a handler instance, ``start()``, the heartbeat task).
        cycle: One ack+fetch script call.
        decode: Per message fetched (payload decoding).
        perform: The library's part of a ``perform`` call.
        perform_per_message: Per request passed to ``perform``.
        end: Releasing a thread (``stop()``, the release script).
        idle: Extra CPU of an effect that wakes an idle process (the event loop's
            own iterations, shared between replies when the process is busy).
        wake: Per wake-up message (one per registration) every worker process receives.
        trace: What recording a trace adds per ``perform`` (``Worker(trace=True)``).
        trace_per_message: What recording a trace adds per message.
        timer_slack: How late past the millisecond an idle event loop's timer fires.
        timer_resolution: ``epoll_wait``'s resolution: idle timers are rounded up to it.
        speed: Seconds one unit of fixed CPU work took (`sharded_queue.meter.speed_unit`) when
            these costs were measured; 0: not known. `at_speed` takes the costs to another speed.
    """

    poll: float = 0.0
    acquire: float = 0.0
    begin: float = 0.0
    cycle: float = 0.0
    decode: float = 0.0
    perform: float = 0.0
    perform_per_message: float = 0.0
    end: float = 0.0
    idle: float = 0.0
    wake: float = 0.0
    trace: float = 0.0
    trace_per_message: float = 0.0
    timer_slack: float = 0.0
    timer_resolution: float = 0.001
    speed: float = 0.0

    def __post_init__(self) -> None:
        for item in dataclasses.fields(self):
            check_positive(f"Overhead {item.name}", getattr(self, item.name), zero=True)

    @property
    def zero(self) -> bool:
        """Whether the library costs no CPU at all (the textbook queues)."""
        return all(getattr(self, f.name) == 0 for f in dataclasses.fields(self) if f.name not in _NOT_COSTS)

    def scaled(self, factor: float) -> Overhead:
        """Every CPU cost times ``factor`` (a faster or slower machine); timer constants unchanged."""
        check_positive("Overhead.scaled factor", factor)
        return dataclasses.replace(
            self,
            **{f.name: getattr(self, f.name) * factor for f in dataclasses.fields(self) if f.name not in _NOT_COSTS},
            speed=self.speed * factor,
        )

    def at_speed(self, speed: float) -> Overhead:
        """These costs on a machine whose speed probe took ``speed`` seconds (`speed`): scaled by
        ``speed / self.speed``. Unchanged when either speed is unknown (0 or NaN)."""
        if not (self.speed > 0 and speed > 0 and math.isfinite(speed)):
            return self
        return self.scaled(speed / self.speed)


_NOT_COSTS = ("timer_slack", "timer_resolution", "speed")
"""`Overhead` fields that are not CPU costs of the library."""


NONE = Overhead()
"""No library CPU: every loop an independent server, as the textbook queues assume."""

LIBRARY = Overhead(
    poll=5.13e-05,
    acquire=5.31e-05,
    begin=1.16e-05,
    cycle=4.82e-05,
    decode=9.81e-08,
    perform=9.76e-06,
    perform_per_message=3.49e-08,
    end=6.56e-05,
    idle=8.77e-06,
    wake=3.19e-05,
    timer_slack=8.09e-05,
)
"""The library's CPU on this project's 2-core development machine (Python 3.11, redis-py
with hiredis, a local redis-server), measured by::

    .venv/bin/python -m benchmarks.bench_overhead

which drains backlogs of a no-op handler with one loop and times each effect with the
thread's CPU clock, and checks the constants against runs of 2 to 16 loops in one
process. Measured on 2026-11-29 with the machine otherwise quiet (load 0.8): with many
loops and batches of 16 the constants overstate the thread's CPU by 8-21% (replies
share the event loop's wake-ups), with 16 loops and batches of 128 they understate it
by 30%. Each constant is the median of three measurements, which move by under 10%
(the idle and wake-up costs and the tiny decode by up to 2x); under load they grow
(10-15% at load 1.6). They depend on the machine: another VM of the same size measured
2.5-3 times as much (dearer system calls). ``idle`` here came from a regression on the
event loop's iterations; the benchmark now takes it from the busy drains (`measure.idle_cost`),
which on one measurement of the CI machine put it at 46 µs against the regression's 32
(and each round trip's cost 14 µs lower). Measure the machine you plan for
(``await simulator.lab.measure.measure_overhead(url)``) and pass that `Overhead` (or
``LIBRARY.scaled(factor)``)."""

TRACED = dataclasses.replace(LIBRARY, trace=4.55e-06, trace_per_message=4.07e-07)
"""`LIBRARY` for a worker that records a trace (``Worker(trace=True)``), as the real runs
`calibrate` learns from do; measured by the same benchmark."""


@dataclass(frozen=True)
class Pauses:
    """Pauses of the whole machine: for their length no worker process runs.

    They start at random (a Poisson process of ``rate`` per second of running
    time) and last a length drawn from ``lengths``. All processes stop together
    (a busy machine, the hypervisor), so more processes do not pause more often.

    Attributes:
        rate: Pauses per second; 0: none.
        lengths: Seconds a pause lasts, resampled (the lengths `calibrate` measured).
    """

    rate: float = 0.0
    lengths: Sequence[float] | np.ndarray = field(default=(0.0,))

    def __post_init__(self) -> None:
        check_positive("Pauses rate", self.rate, zero=True)
        lengths = np.asarray(self.lengths, dtype=np.float64).ravel()
        if lengths.size == 0 or not np.isfinite(lengths).all() or (lengths < 0).any():
            raise ScenarioError(f"Pauses lengths must be finite seconds >= 0, got {self.lengths!r}")
        object.__setattr__(self, "lengths", lengths)

    @property
    def none(self) -> bool:
        """Whether the machine never pauses."""
        return self.rate == 0 or not np.any(np.asarray(self.lengths))

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, Pauses)
            and self.rate == other.rate
            and np.array_equal(np.asarray(self.lengths), np.asarray(other.lengths))
        )

    def __hash__(self) -> int:
        return hash((self.rate, np.asarray(self.lengths).tobytes()))


REGISTER_COMMANDS = 2
"""Storage commands a registration costs when every command costs the same (`Scenario.storage_cpu`
a number): the append script and the wake-up ``PUBLISH``."""


@dataclass(frozen=True)
class ServerCosts:
    """Seconds the storage server spends running each of the library's scripts.

    Redis runs one command at a time; a script's time grows with what it touches. A
    registration (``push.lua``) appends each request and counts each thread it
    writes (its index, its tally, its handler's counts); a cycle (``cycle.lua``) trims
    the acked requests and reads the next batch. `simulator.lab.measure.measure_server`
    times every script on a redis-server by its ``SLOWLOG`` (each call's own
    microseconds, by script), and `SERVER` holds what it measured here.

    Attributes:
        poll: A coordinator poll (``candidates.lua``).
        acquire: A lease attempt (``acquire.lua``).
        release: A release (``release.lua``).
        cycle: An ack and fetch, without its messages.
        cycle_per_message: Per message acked or fetched.
        register: A registration call (``push.lua``), without its threads and messages.
        register_per_thread: Per thread the call writes to.
        register_per_message: Per request it appends.
    """

    poll: float = 0.0
    acquire: float = 0.0
    release: float = 0.0
    cycle: float = 0.0
    cycle_per_message: float = 0.0
    register: float = 0.0
    register_per_thread: float = 0.0
    register_per_message: float = 0.0

    def __post_init__(self) -> None:
        for item in dataclasses.fields(self):
            check_positive(f"ServerCosts {item.name}", getattr(self, item.name), zero=True)

    def registration(self, messages: Any, threads: Any) -> Any:
        """A registration call's seconds, for its requests and the threads it writes (numbers or arrays)."""
        return self.register + self.register_per_thread * threads + self.register_per_message * messages

    def scaled(self, factor: float) -> ServerCosts:
        """Every cost times ``factor`` (a faster or slower server)."""
        check_positive("ServerCosts.scaled factor", factor)
        return ServerCosts(**{f.name: getattr(self, f.name) * factor for f in dataclasses.fields(self)})


SERVER = ServerCosts(
    poll=2.4e-05,
    acquire=3.0e-05,
    release=1.7e-05,
    cycle=6.2e-05,
    cycle_per_message=1.3e-07,
    register=4.5e-05,
    register_per_thread=2.1e-05,
    register_per_message=6.4e-07,
)
"""A local redis-server 7 on this project's 2-core development machine, the medians of three
measurements by::

    .venv/bin/python -m benchmarks.bench_overhead

(`simulator.lab.measure.measure_server`), taken while other programs ran: their spread was
12-78% (156% for ``cycle_per_message``, a hundredth of the cycle). `simulator.calibrate` takes
them to a traced run's own server by its ``INFO commandstats`` (the scripts' microseconds)."""


def check_storage_cpu(value: Any) -> float | ServerCosts:
    """``value`` if it is seconds per command (>= 0) or `ServerCosts`, else a `ScenarioError`."""
    if isinstance(value, ServerCosts):
        return value
    check_positive("Scenario storage_cpu", value, zero=True)
    return float(value)


def models_server(value: float | ServerCosts) -> bool:
    """Whether ``value`` (`Scenario.storage_cpu`) models the storage server at all."""
    return isinstance(value, ServerCosts) or value > 0


def check_overhead(value: Any) -> Overhead:
    """``value`` if it is an `Overhead`, else a `ScenarioError`."""
    if not isinstance(value, Overhead):
        raise ScenarioError(f"Scenario overhead must be an Overhead (e.g. LIBRARY or NONE), got {value!r}")
    return value
