"""The thread controls in the twin (issue #27): rate limits, holds and lingering batches, on the
simulated server's clock, decided by the library's own core as in the worker."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pytest

from sharded_queue import Handler, RequestRoute, Route
from simulator import Backlog, Keyed, Poisson, RoundRobin, Scenario, Service, Workload, simulate
from simulator.cpu import NONE
from simulator.dispatch import linger_batch, linger_scenario
from tests.test_simulator import settings


class Eight(Handler):
    """Requests are ints; request ``r`` goes to thread ``r % 8``."""

    name = "eight"

    @classmethod
    async def route(cls, *requests: int) -> list[RequestRoute]:
        return [RequestRoute(r, Route(thread=r % 8)) for r in requests]


class ThreadLimited(Eight):
    name = "thread-limited"
    thread_rate_limit = "10/s"


class HandlerLimited(Eight):
    name = "handler-limited"
    rate_limit = "50/s"


class SlowThreads(Eight):
    name = "slow-threads"
    thread_rate_limit = "1/s"


def drain(handler: type[Handler], messages: int, loops: int, batch: int = 4, **changes: Any) -> pd.DataFrame:
    workload = Workload(handler, Backlog(messages), Service(per_batch=0.001), Keyed(RoundRobin(messages)))
    scenario = Scenario(workload, loops=loops, settings=settings(worker_batch_size=batch, coordinator_delay=0.05))
    return simulate(scenario.replace(overhead=NONE, **changes)).trace


def most_in_a_window(trace: pd.DataFrame, seconds: float, by: str | None = None) -> int:
    """The most requests started within any window of ``seconds`` (per ``by`` group: the most of any)."""
    groups = [part for _, part in trace.groupby(by)] if by else [trace]
    most = 0
    for part in groups:
        starts = np.sort(part["started_at"].to_numpy())
        ends = np.searchsorted(starts, starts + seconds, "left")
        most = max(most, int((ends - np.arange(len(starts))).max()))
    return most


def test_a_thread_rate_limit_paces_each_thread() -> None:
    """``thread_rate_limit = "10/s"`` over 8 threads and 8 loops: each thread performs at most
    10 a second plus one bucket (4, a batch) over any window, and the drain takes as long as
    the limit says: 40 per thread, less the full bucket, at 10 a second."""
    trace = drain(ThreadLimited, 320, loops=8)
    assert len(trace) == 320
    for seconds in (0.5, 1.0, 2.0):
        assert most_in_a_window(trace, seconds, by="thread") <= 10 * seconds + 4
    assert trace["started_at"].max() == pytest.approx((40 - 4) / 10, rel=0.05)


def test_a_handler_rate_limit_paces_all_its_threads_together() -> None:
    """``rate_limit = "50/s"`` across 8 threads and 4 loops: the whole handler at 50 a second."""
    trace = drain(HandlerLimited, 400, loops=4)
    for seconds in (0.5, 1.0, 2.0):
        assert most_in_a_window(trace, seconds) <= 50 * seconds + 4
    assert trace["started_at"].max() == pytest.approx((400 - 4) / 50, rel=0.05)


def test_a_loop_whose_bucket_is_empty_for_long_serves_other_threads() -> None:
    """At 1 a second per thread, a bucket empty for longer than ``coordinator_delay`` makes the
    loop hold the thread back and let it go: one loop keeps all 8 threads going, 8 a second."""
    trace = drain(SlowThreads, 80, loops=1, batch=1)
    assert len(trace) == 80
    assert trace["started_at"].max() == pytest.approx((80 - 8) / 8, rel=0.1)
    assert most_in_a_window(trace, 2.0, by="thread") <= 1 * 2 + 1


def test_no_control_means_no_hold() -> None:
    """Without a limit the same drain is done in a moment: the buckets cost nothing unset."""
    assert drain(Eight, 320, loops=8)["finished_at"].max() < 0.5


@pytest.mark.parametrize(("rate", "batch", "linger"), [(100.0, 8, 0.05), (100.0, 8, 0.01), (400.0, 16, 0.02)])
def test_a_lingering_batch_matches_the_size_or_timeout_model(rate: float, batch: int, linger: float) -> None:
    """One bound loop, Poisson arrivals, batches leave at ``batch`` or ``linger`` after their first:
    the twin's mean batch size and mean wait against `linger_batch` (within 3%, over 20,000)."""
    result = simulate(linger_scenario(rate, batch, linger, 20_000, seed=2))
    trace = result.trace
    sizes = trace.groupby(["worker", "batch"]).size()
    wait = float((trace["started_at"] - trace["enqueued_at"]).mean())
    size, waited = linger_batch(rate, batch, linger)
    assert sizes.mean() == pytest.approx(size, rel=0.03)
    assert wait == pytest.approx(waited, rel=0.03)


def test_linger_batch_at_its_edges() -> None:
    """No linger: batches of one, no wait; a linger far longer than a batch takes to fill: full
    batches, each request waiting for the ones after it, (B - 1) / 2 arrivals on average."""
    assert linger_batch(100.0, 8, 0.0) == (pytest.approx(1.0), pytest.approx(0.0))
    size, wait = linger_batch(100.0, 8, 100.0)
    assert size == pytest.approx(8) and wait == pytest.approx((8 - 1) / 2 / 100)


def test_linger_in_a_poisson_workload_makes_fuller_batches() -> None:
    """The trade-off the docs teach: with a linger the same load makes fewer, fuller batches."""

    def batches(linger: float) -> float:
        workload = Workload(Eight, Poisson(400), Service(per_batch=0.001), Keyed(RoundRobin(8)))
        changes = settings(worker_batch_size=16, worker_batch_linger=linger)
        scenario = Scenario(workload, loops=2, settings=changes, duration=5, overhead=NONE)
        trace = simulate(scenario).trace
        return float(trace.groupby(["worker", "batch"]).size().mean())

    assert batches(0.05) > 2 * batches(0.0)
