"""The twin's event-loop lag probe (`simulator.machine.lag_probe`), the worker meter's twin."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import simpy

from sharded_queue import Handler, RequestRoute, Route
from simulator import Scenario, Service, Workload, simulate
from simulator.arrivals import Poisson
from simulator.cpu import Overhead
from simulator.machine import Cpu, lag_probe
from simulator.requests import Keyed, Uniform
from tests.test_simulator import settings


class Spread(Handler):
    name = "spread"

    @classmethod
    async def route(cls, *requests: int) -> list[RequestRoute]:
        return [RequestRoute(r, Route(thread=r % 8)) for r in requests]


class _NoRegistrations:
    def registrations(self, after: float, until: float) -> np.ndarray:
        return np.zeros(0)


def _probe(claims: list[tuple[float, float]], until: float = 0.06) -> list[float]:
    """Lags of a probe every 50 ms on a process that claims ``(at, cost)`` CPU."""
    env = simpy.Environment()
    cpu = Cpu(env, _NoRegistrations(), Overhead(timer_slack=0.002, timer_resolution=0.001), delivery=0.0)  # type: ignore[arg-type]

    def claimer() -> Any:
        for at, cost in claims:
            yield env.timeout(at - env.now)
            cpu.claim(env.now, cost)

    lags: list[float] = []
    env.process(lag_probe(env, cpu, 0.05, lags))
    env.process(claimer())
    env.run(until=until)
    return lags


@pytest.mark.parametrize(
    ("claims", "lag"),
    [
        ([], 0.002),  # idle: its own timer, on the millisecond, plus the slack
        ([(0.0455, 0.001)], 0.0025),  # busy before it is due: idle since 46.5 ms, timer at 50.5 ms, plus the slack
        ([(0.0495, 0.0105)], 0.01),  # busy when due: fires when the work claimed is done, at 60 ms
        ([(0.0507, 0.0001)], 0.0007),  # idle when due, woken by another callback before its timer
    ],
)
def test_the_probe_fires_when_the_event_loop_gets_to_it(claims: list[tuple[float, float]], lag: float) -> None:
    assert _probe(claims)[0] == pytest.approx(lag, abs=1e-9)


def test_a_busier_process_lags_more() -> None:
    """More of a process's CPU in ``perform``: its event loop lags more, as the real meter sees."""

    def lag(per_message: float) -> tuple[float, float]:
        service = Service(per_batch=0.0, per_message=per_message, cpu_per_message=per_message)
        workload = Workload(Spread, Poisson(400), service, Keyed(Uniform(8)))
        result = simulate(Scenario(workload, loops=4, settings=settings(), duration=5, seed=3))
        return float(result.processes["lag"].iloc[0]), float(result.processes["lag_p99"].iloc[0])

    light, heavy = lag(0.0002), lag(0.0015)  # 8% and 60% of the CPU in perform
    assert light[0] < heavy[0]
    assert heavy[1] > 2 * light[1]  # a timer due behind a batch of 1.5 ms computations waits for it
