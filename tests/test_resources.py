"""Where the time goes (`simulator.lab.resources`): the real instruments' readings and the twin's charges."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest
import redis

from sharded_queue.testing import RedisServer
from simulator import Scenario, Service, Workload, simulate
from simulator.arrivals import Poisson
from simulator.lab.measure import measure_server
from simulator.lab.resources import QUANTITIES, measured, resources, simulated
from simulator.requests import Keyed, Uniform
from tests.conftest import need_redis_server
from tests.test_simulator import settings
from tests.test_twin_lag import Spread


def _meter(process_cpu: float, machine_busy: float, calls: int, usec: int, lag: list[float]) -> dict[str, object]:
    return {
        "process_cpu": process_cpu,
        "machine_busy": machine_busy,
        "storage": {"commands": {"evalsha": {"calls": calls, "usec": usec}}, "cpu": 1.0},
        "lag": lag,
    }


def test_a_real_run_is_read_per_message_from_its_meters() -> None:
    real = pd.DataFrame({"enqueued_at": [0.0] * 1000})
    real.attrs["meter"] = [
        _meter(0.5, 3.0, 400, 20_000, [0.001] * 97 + [0.1] * 3),
        _meter(0.3, 2.5, 380, 19_000, [0.001] * 100),  # the same server, read over a shorter window
    ]
    found = measured(real)
    assert found["worker_cpu"] == pytest.approx(0.8 / 1000)
    assert found["storage_calls"] == pytest.approx(0.4) and found["storage_cpu"] == pytest.approx(20e-6)
    assert found["others_cpu"] == pytest.approx((3.0 - 0.8) / 1000)
    assert found["lag_mean"] == pytest.approx((0.397 + 0.1) / 200)
    assert found["lag_p99"] == pytest.approx(0.1)


def test_a_trace_without_a_meter_measured_nothing() -> None:
    assert all(math.isnan(v) for v in measured(pd.DataFrame({"enqueued_at": [0.0]})).values())


def test_the_twin_charges_each_resource_and_the_real_run_is_set_against_them() -> None:
    service = Service(per_batch=0.001, per_message=0.0001)
    workload = Workload(Spread, Poisson(500), service, Keyed(Uniform(8)))
    runs = [
        simulate(Scenario(workload, loops=4, settings=settings(), duration=3, seed=s, storage_cpu=20e-6, cores=2))
        for s in range(3)
    ]
    found = simulated(runs[0])
    assert set(found) == set(QUANTITIES)
    assert found["worker_cpu"] > 0 and found["storage_calls"] > 1 and found["lag_p99"] >= found["lag_mean"] > 0
    assert found["storage_cpu"] == pytest.approx(found["storage_calls"] * 20e-6)
    real = pd.DataFrame({"enqueued_at": [0.0] * runs[0].messages})
    real.attrs["meter"] = [_meter(found["worker_cpu"] * runs[0].messages, 0.0, 0, 0, [found["lag_mean"]])]
    table = resources(runs, real).set_index("quantity")
    assert table.loc["worker_cpu", "covered"] and abs(table.loc["worker_cpu", "rel_error"]) < 0.2
    assert not table.loc["storage_calls", "covered"]  # the real server counted no call


async def test_measure_server_times_each_script_by_the_servers_slow_log(tmp_path: Path) -> None:
    """`measure_server` on a real redis-server: every script has a time of its own, a
    registration grows with the threads it writes far more than with its requests, and the
    server's slow-log settings are put back."""
    need_redis_server()
    server = RedisServer(tmp_path)
    try:
        with redis.Redis(port=server.port) as client:
            before = client.config_get("slowlog-*")
            costs = await measure_server(server.url, messages=2000)
            assert min(costs.poll, costs.acquire, costs.release, costs.cycle, costs.register) > 0
            assert costs.register_per_thread > costs.register_per_message > 0
            assert client.config_get("slowlog-*") == before
    finally:
        server.stop()
