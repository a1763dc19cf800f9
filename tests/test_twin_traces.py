"""The twin's numbers, pinned: seeded scenarios whose traces and results must not change.

Each scenario covers part of the model (threads and orders, Zipf hot keys, batching, loops
over processes, the library's CPU, the storage server, pauses, cores, failures and
retries, timeouts, deferred and recurring arrivals, wake-ups), and each run is reduced
to a hash of its trace, loops, processes, backlog and summary. A change to the twin
that is meant to leave its behaviour alone (a refactoring) must leave every hash as it
is. A change that is meant to change the numbers re-records them, and says so::

    .venv/bin/python -m tests.test_twin_traces     # prints GOLDEN for this code

The handlers are this module's own, so that a change to another test's cannot move the hashes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest

from sharded_queue import Handler, RequestRoute, Route, Settings
from simulator import (
    LIBRARY,
    NONE,
    Backlog,
    Deferred,
    Empirical,
    Exponential,
    Generated,
    Keyed,
    LogNormal,
    OnOff,
    Pauses,
    Poisson,
    Recurring,
    Registered,
    Result,
    Scenario,
    Service,
    Uniform,
    Workload,
    Zipf,
    simulate,
)


@dataclass(frozen=True)
class Note:
    user: int
    urgent: bool = False


def make_note(key: int) -> Note:
    return Note(key, urgent=key % 5 == 0)


class Notify(Handler):
    """Users over 8 threads, two declared orders."""

    name = "golden-notify"
    orders = ("urgent", "normal")

    @classmethod
    async def route(cls, *requests: Note) -> list[RequestRoute]:
        return [RequestRoute(r, Route(thread=r.user % 8, order="urgent" if r.urgent else "normal")) for r in requests]


class Users(Handler):
    """User ``k`` on thread ``k % 32``, orders ``0``-``2`` by ``k // 32``."""

    name = "golden-users"
    batch_size = 16

    @classmethod
    async def route(cls, *requests: int) -> list[RequestRoute]:
        return [RequestRoute(r, Route(thread=r % 32, order=(r // 32) % 3)) for r in requests]


class Wide(Handler):
    """User ``k`` on thread ``k % 96``: more threads than the few-candidates shortcut of the look-ups."""

    name = "golden-wide"
    batch_size = 8

    @classmethod
    async def route(cls, *requests: int) -> list[RequestRoute]:
        return [RequestRoute(r, Route(thread=r % 96)) for r in requests]


class Flaky(Handler):
    """Four threads; two attempts, then dead letters."""

    name = "golden-flaky"
    retry_attempts = 2
    batch_size = 8

    @classmethod
    async def route(cls, *requests: int) -> list[RequestRoute]:
        return [RequestRoute(r, Route(thread=r % 4)) for r in requests]


class Slow(Handler):
    """One thread; ``perform`` times out after 20 ms."""

    name = "golden-slow"
    timeout = 0.02


def generated(rng: np.random.Generator, count: int) -> list[int]:
    return [int(k) for k in rng.integers(0, 100, count)]


def notify(rate: float, service: Service, keys: Any = None) -> Workload:
    return Workload(Notify, Poisson(rate), service, Keyed(keys or Zipf(500, 1.1), make=make_note))


FAST = {"coordinator_delay": 0.0, "worker_empty_pause": 0.0}

SCENARIOS: dict[str, Callable[[], Scenario]] = {
    "textbook": lambda: Scenario(
        notify(300, Service(0.002, 0.0005, Exponential())),
        loops=3,
        overhead=NONE,
        settings=Settings().copy(worker_batch_size=4, **FAST),
        duration=2.0,
        seed=1,
    ),
    "zipf-rtt": lambda: Scenario(
        notify(2000, Service(0.001, 0.0001, LogNormal(0.5))),
        loops=4,
        settings=Settings().copy(worker_batch_size=32, coordinator_delay=0.05),
        rtt=0.0005,
        duration=1.5,
        warmup=0.2,
        seed=2,
    ),
    "processes-cpu": lambda: Scenario(
        [
            notify(1500, Service(0.001, 0.00005, LogNormal(0.3), cpu_per_batch=0.0002, cpu_per_message=0.00001)),
            Workload(Users, Registered(Poisson(3000), every=0.002), Service(0.002, 0.00002), Keyed(Uniform(4000))),
        ],
        loops=6,
        processes=2,
        settings=Settings().copy(worker_batch_size=64, coordinator_delay=0.02),
        rtt=0.0004,
        rtt_noise=Empirical([0.5, 1.0, 1.5, 3.0]),
        overhead=LIBRARY,
        duration=1.0,
        seed=3,
    ),
    "storage-cores-pauses": lambda: Scenario(
        Workload(Users, Poisson(4000), Service(0.0005, 0.00002, timer=True), Keyed(Zipf(2000, 0.9))),
        loops=8,
        processes=3,
        settings=Settings().copy(coordinator_delay=0.01, worker_empty_limit=2, worker_empty_pause=0.005),
        rtt=0.0002,
        storage_cpu=0.00003,
        cores=2,
        background=0.00005,
        pauses=Pauses(rate=20, lengths=[0.001, 0.004]),
        overhead=LIBRARY,
        duration=0.8,
        seed=4,
    ),
    "failures-retries": lambda: Scenario(
        [
            Workload(Flaky, Poisson(400), Service(0.001, 0.0002, failure_rate=0.3), Keyed(Uniform(50))),
            Workload(Slow, OnOff(200, on=0.2, off=0.3), Service(0.015, 0.0, Exponential()), Keyed()),
        ],
        loops=3,
        settings=Settings().copy(retry_backoff=0.01, retry_backoff_max=0.05, coordinator_delay=0.02),
        rtt=0.0003,
        duration=2.0,
        seed=5,
    ),
    "deferred-recurring-generated": lambda: Scenario(
        [
            Workload(Notify, Deferred(Poisson(500), 0.05, Exponential()), Service(0.002), Keyed(Zipf(100), make_note)),
            Workload(Flaky, Recurring(0.01), Service(0.001), Keyed(Uniform(10))),
            Workload(Users, Poisson(300), Service(0.001, 0.0001), Generated(generated)),
        ],
        loops=4,
        processes=2,
        settings=Settings().copy(coordinator_delay=0.1),
        rtt=0.001,
        overhead=LIBRARY,
        duration=1.5,
        seed=6,
    ),
    "backlog-drain": lambda: Scenario(
        Workload(Users, Backlog(6000), Service(0.0002, 0.00001), Keyed(Uniform(3000))),
        loops=5,
        processes=2,
        settings=Settings().copy(worker_batch_size=128, coordinator_delay=0.05),
        rtt=0.0003,
        overhead=LIBRARY,
        seed=7,
    ),
    "wide-wakeups": lambda: Scenario(
        Workload(Wide, Registered(Poisson(2500), every=0.003), Service(0.003, 0.0001), Keyed(Zipf(5000, 0.7))),
        loops=16,
        processes=2,
        settings=Settings().copy(coordinator_delay=0.05),
        rtt=0.0003,
        overhead=LIBRARY,
        duration=1.0,
        seed=9,
    ),
    "wide-immediate": lambda: Scenario(
        Workload(Wide, Poisson(1500), Service(0.004, 0.0002, Exponential()), Keyed(Uniform(960))),
        loops=12,
        processes=3,
        settings=Settings().copy(**FAST),
        duration=1.0,
        overhead=NONE,
        seed=10,
    ),
    "trace-off": lambda: Scenario(
        notify(3000, Service(0.001, 0.00005, LogNormal(0.4))),
        loops=4,
        processes=2,
        settings=Settings().copy(worker_batch_size=32, coordinator_delay=0.02),
        rtt=0.0005,
        overhead=LIBRARY,
        duration=1.0,
        warmup=0.1,
        trace=False,
        seed=8,
    ),
}


def digest(result: Result) -> str:
    """A hash of what a run produced: trace, loops, processes, backlog, summary, totals."""
    parts = [
        repr((result.end, result.messages, result.dead, result.arrived)),
        result.loops.drop(columns=["acquires", "cycles", "releases"]).to_csv(),
        result.processes[["process", "loops", "cpu_busy", "cpu_utilisation"]].to_csv(),
        result.backlog(("handler", "thread", "order")).to_csv(),
        result.summary().to_csv(),
    ]
    if result.scenario.trace:
        parts.append(result.trace.to_csv())
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


GOLDEN: dict[str, str] = {
    "textbook": "7c17e07343dde32c",
    "zipf-rtt": "ee4430d6bfff691b",
    "processes-cpu": "73ae36cf800ed574",
    "storage-cores-pauses": "e9dc1f5f0a9165e9",
    "failures-retries": "6ae8ad59b6644d3d",
    "deferred-recurring-generated": "a6178d06accc278a",
    "backlog-drain": "4f4eedabd99b4b42",
    "wide-wakeups": "1e376a2e0d6b64a4",
    "wide-immediate": "d9bd00cd4e54012f",
    "trace-off": "5cc1a7f6fef91ec7",
}


@pytest.mark.parametrize("name", SCENARIOS)
def test_twin_numbers_unchanged(name: str) -> None:
    """Every scenario's run hashes as recorded (see the module docstring to re-record)."""
    assert digest(simulate(SCENARIOS[name]())) == GOLDEN[name]


if __name__ == "__main__":
    print("GOLDEN: dict[str, str] = {")
    for name, make in SCENARIOS.items():
        print(f'    "{name}": "{digest(simulate(make()))}",')
    print("}")
