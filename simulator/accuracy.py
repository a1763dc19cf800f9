"""How close the twin is: the same workloads on real workers and in the simulator.

For each `Config` of `GRID` a handler whose ``perform`` costs a known
``per_batch + per_message * n`` runs on a real Redis (`sharded_queue.testing.trace_run`),
`calibrate` fits the twin from that trace, and `simulate` replays the very same
requests at the very same enqueue times. `compare` then gives, per thread and
order, the relative error of throughput and of median latency (sojourn)::

    python -m simulator.accuracy                # spawns its own redis-server
    python -m simulator.accuracy --url redis://127.0.0.1:6380/0
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd

from sharded_queue import Handler, Queue, RequestRoute, Route, Settings
from sharded_queue.testing import RedisServer, trace_run

from .analysis import compare
from .calibrate import calibrate
from .engine import simulate
from .scenario import Scenario, Workload
from .workload import Keyed, KeySequence, Replay

METRICS = ("throughput", "sojourn_p50")


@dataclass(frozen=True)
class Config:
    """One point of the accuracy grid.

    Attributes:
        name: Short label.
        workers: Worker loops (one process).
        batch: ``worker_batch_size``.
        threads: Threads the requests are spread over (round robin).
        orders: Orders ``"0"``, ``"1"``, ... (``"0"`` most urgent), round robin per thread.
        delay: ``coordinator_delay`` in seconds.
        messages: Requests in the run.
        rate: Open-loop Poisson arrivals per second; None drains a backlog.
        per_batch: Seconds every ``perform`` sleeps.
        per_message: Seconds each request adds to it.
    """

    name: str
    workers: int
    batch: int
    threads: int
    orders: int
    delay: float
    messages: int
    rate: float | None = None
    per_batch: float = 0.030
    per_message: float = 0.001

    @property
    def mode(self) -> str:
        """``backlog`` or ``open``."""
        return "backlog" if self.rate is None else "open"

    def settings(self, url: str | None) -> Settings:
        """The settings of the real run and of the twin."""
        return Settings(
            storage_url=url,
            key_prefix=f"accuracy-{self.name}-{uuid.uuid4().hex[:8]}",
            worker_batch_size=self.batch,
            coordinator_delay=self.delay,
        )


GRID: tuple[Config, ...] = (
    Config("b1", workers=1, batch=1, threads=1, orders=1, delay=0.0, messages=60),
    Config("b2", workers=1, batch=32, threads=1, orders=1, delay=0.0, messages=800),
    Config("b3", workers=2, batch=256, threads=4, orders=1, delay=0.1, messages=3000),
    Config("b4", workers=4, batch=16, threads=8, orders=2, delay=0.0, messages=1200),
    Config("b5", workers=8, batch=128, threads=32, orders=3, delay=0.05, messages=4000),
    Config("b6", workers=8, batch=8, threads=20, orders=2, delay=0.2, messages=3000),
    Config("o1", workers=1, batch=1, threads=1, orders=1, delay=0.0, messages=60, rate=10),
    Config("o2", workers=2, batch=16, threads=4, orders=2, delay=0.1, messages=300, rate=75),
    Config("o3", workers=4, batch=64, threads=8, orders=2, delay=0.2, messages=1000, rate=125),
    Config("o4", workers=8, batch=32, threads=32, orders=1, delay=0.05, messages=450, rate=75),
    Config("o5", workers=4, batch=4, threads=2, orders=1, delay=0.05, messages=300, rate=75),
    Config("o6", workers=8, batch=256, threads=8, orders=3, delay=0.1, messages=1600, rate=250),
)
"""Workers 1-8, batches 1-256, threads 1-32, 1-3 orders, coordinator delay 0-0.2 s,
backlogs (``b*``) and open-loop arrivals below saturation (``o*``)."""


class TimedHandler(Handler):
    """``perform`` sleeps a known time; requests are ints routed round robin."""

    threads: ClassVar[int] = 1
    orders_used: ClassVar[int] = 1
    per_batch: ClassVar[float] = 0.0
    per_message: ClassVar[float] = 0.0

    @classmethod
    async def route(cls, *requests: int) -> list[RequestRoute]:
        return [RequestRoute(r, Route(r % cls.threads, (r // cls.threads) % cls.orders_used)) for r in requests]

    async def perform(self, *requests: int) -> None:
        await asyncio.sleep(self.per_batch + self.per_message * len(requests))


def handler_for(config: Config) -> type[TimedHandler]:
    """A `TimedHandler` with the config's threads, orders and costs."""
    attributes = {
        "name": f"accuracy:{config.name}",
        "threads": config.threads,
        "orders_used": config.orders,
        "per_batch": config.per_batch,
        "per_message": config.per_message,
    }
    return type(f"Timed_{config.name}", (TimedHandler,), attributes)


def arrivals(config: Config, seed: int = 0) -> list[float] | None:
    """Open-loop Poisson arrival offsets, or None for a backlog."""
    if config.rate is None:
        return None
    gaps = np.random.default_rng(seed).exponential(1 / config.rate, config.messages)
    return list(np.cumsum(gaps) - gaps[0])


class _Probe(Handler):
    name = "accuracy:probe"
    batch_size = 1

    async def perform(self, *requests: int) -> None:
        pass


async def probe_rtt(url: str | None, loops: int, messages: int = 200) -> float:
    """The worker's round trip measured by a short probe run: ``loops`` loops
    draining single-message batches, calibrated like any trace."""
    settings = Settings(storage_url=url, key_prefix=f"accuracy-probe-{uuid.uuid4().hex[:8]}")
    queue = Queue(url, settings=settings)
    try:
        trace = await trace_run(
            _Probe, [i % loops for i in range(messages)], loops=loops, queue=queue, settings=settings
        )
    finally:
        await queue.close()
    return calibrate(trace).rtt


async def real_trace(config: Config, url: str | None) -> pd.DataFrame:
    """The trace of ``config`` on real workers at ``url`` (embedded when None)."""
    settings = config.settings(url)
    queue = Queue(url, settings=settings)
    try:
        return await trace_run(
            handler_for(config),
            list(range(config.messages)),
            at=arrivals(config),
            loops=config.workers,
            queue=queue,
            settings=settings,
            chunk=1000,
        )
    finally:
        await queue.close()


def twin_trace(config: Config, real: pd.DataFrame, probe: float) -> pd.DataFrame:
    """The simulated trace of ``config``: calibrated on ``real``, replaying its requests and enqueue times.

    The round trip is calibrated from back-to-back batches when the trace has
    some, else it is ``probe`` (see `probe_rtt`).
    """
    fitted = calibrate(real)
    handler = handler_for(config)
    workload = Workload(
        handler,
        Replay(np.sort(real["enqueued_at"].to_numpy())),
        fitted.service[f"accuracy:{config.name}"],
        Keyed(KeySequence(list(range(config.messages)))),
    )
    scenario = Scenario(workload, workers=config.workers, settings=config.settings(None), rtt=probe, seed=1)
    return simulate(fitted.apply(scenario)).trace


def errors(config: Config, sim: pd.DataFrame, real: pd.DataFrame) -> pd.DataFrame:
    """Relative errors: throughput per thread and order, median latency (sojourn) per order.

    Throughput is counted over the processing window (first perform start to
    last finish), so the time a real run spends registering before its first
    perform, which the twin does not model, does not count against it.
    Median latency is compared per order, not per thread: which threads a loop
    drains first is a random choice (in the worker and in its twin alike), so
    one thread's latency in a backlog is a draw, while an order's is not.
    """
    throughput = compare(
        _from_first_start(sim), _from_first_start(real), by=("thread", "order"), metrics=("throughput",)
    )
    latency = compare(sim, real, by=("order",), metrics=("sojourn_p50",)).assign(thread="*")
    table = pd.concat([throughput, latency], ignore_index=True)
    table.insert(0, "config", config.name)
    return table


def _from_first_start(trace: pd.DataFrame) -> pd.DataFrame:
    """The trace with enqueue times no earlier than the first perform start (throughput window)."""
    return trace.assign(enqueued_at=trace["enqueued_at"].clip(lower=trace["started_at"].min()))


async def run(config: Config, url: str | None) -> pd.DataFrame:
    """`errors` of one config (the real run, then its twin)."""
    real = await real_trace(config, url)
    return errors(config, twin_trace(config, real, await probe_rtt(url, config.workers)), real)


def table(results: pd.DataFrame, grid: Sequence[Config] = GRID) -> pd.DataFrame:
    """One row per config: its parameters and the worst and median |relative error| per metric."""
    rows: list[dict[str, Any]] = []
    for config in grid:
        part = results[results["config"] == config.name]
        row: dict[str, Any] = {
            "config": config.name,
            "mode": config.mode,
            "workers": config.workers,
            "batch": config.batch,
            "threads": config.threads,
            "orders": config.orders,
            "delay": config.delay,
            "messages": config.messages,
        }
        for metric in METRICS:
            error = part.loc[part["metric"] == metric, "rel_error"].abs()
            row[f"{metric}_err_max"] = float(error.max())
            row[f"{metric}_err_median"] = float(error.median())
        rows.append(row)
    return pd.DataFrame(rows)


async def run_grid(url: str | None, grid: Sequence[Config] = GRID) -> pd.DataFrame:
    """`errors` of every config, in one DataFrame."""
    return pd.concat([await run(config, url) for config in grid], ignore_index=True)


def main(argv: list[str] | None = None) -> None:
    """Print the accuracy table (Markdown)."""
    parser = argparse.ArgumentParser(prog="python -m simulator.accuracy", description=__doc__)
    parser.add_argument("--url", help="Redis URL; default: spawn a redis-server on a free port")
    arguments = parser.parse_args(argv)
    if arguments.url:
        results = asyncio.run(run_grid(arguments.url))
    else:
        with tempfile.TemporaryDirectory(prefix="sq-accuracy-") as directory:
            server = RedisServer(Path(directory))
            try:
                results = asyncio.run(run_grid(server.url))
            finally:
                server.stop()
    print(markdown(table(results)))


def markdown(frame: pd.DataFrame) -> str:
    """A DataFrame as a Markdown table (floats to three decimals)."""
    cells = [[f"{v:.3f}" if isinstance(v, float) else str(v) for v in row] for row in frame.itertuples(index=False)]
    lines = ["| " + " | ".join(map(str, frame.columns)) + " |", "|" + "---|" * len(frame.columns)]
    lines += ["| " + " | ".join(row) + " |" for row in cells]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
