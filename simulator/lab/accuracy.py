"""How close the twin is: the same workloads on real workers and in the simulator.

For each `Config` of `GRID` a handler whose ``perform`` costs a known
``per_batch + per_message * n`` runs on a real Redis, with its worker loops in
worker processes of their own (`simulator.lab.realrun`), `calibrate` fits the twin
from that trace, and `simulate` replays the very same requests at the very
same enqueue times. `compare` then gives, per thread and order, the relative
error of throughput (drains) and of p50 and p99 latency (sojourn).

Each `Prediction` calibrates the twin on one real run and predicts another
configuration: more loops, more processes, a higher load, a bigger drain.

The twin charges the library's CPU per effect as measured on the project's
development machine (`simulator.cpu.LIBRARY`); the real runs may be on a
machine with other costs, so the suite first measures this one's
(`simulator.lab.measure.measure_overhead`), as a capacity planner measures the
machines they plan for, and each calibration follows the machine's speed
during the run it is fitted on (`fit`: `calibrate` with ``run``)::

    python -m simulator.lab.accuracy                # both tables; spawns its own redis-server
    python -m simulator.lab.accuracy --only predictions --url redis://127.0.0.1:6380/0
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import math
import tempfile
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from sharded_queue import Settings
from sharded_queue.testing import RedisServer

from ..analysis import compare, summary
from ..arrivals import Replay
from ..calibrate import Calibration, calibrate
from ..cpu import TRACED, Overhead
from ..requests import Keyed, KeySequence
from ..scenario import Scenario
from ..service import Service
from ..simulation import simulate
from ..workload import Workload
from .handlers import TimedHandler, handler_from_spec
from .measure import measure_overhead, measure_rtt
from .realrun import run_workers

LATENCY = ("sojourn_p50", "sojourn_p99")
METRICS = ("throughput", *LATENCY)


@dataclass(frozen=True)
class Config:
    """One real run of the accuracy suite.

    Attributes:
        name: Short label.
        loops: Worker loops in all.
        batch: ``worker_batch_size``.
        threads: Threads the requests are spread over (round robin).
        orders: Orders ``"0"``, ``"1"``, ... (``"0"`` most urgent), round robin per thread.
        delay: ``coordinator_delay`` in seconds.
        messages: Requests in the run.
        rate: Open-loop Poisson arrivals per second; None drains a backlog.
        per_batch: Seconds every ``perform`` costs.
        per_message: Seconds each request adds to it.
        processes: Worker processes the loops are spread over.
        perform: ``"sleep"`` (``asyncio.sleep``: waiting), ``"spin"`` (computing:
            the process's CPU) or ``"noop"``.
        hot: Share of the requests on thread ``"0"``, the hot thread; the rest
            round robin over the other threads. 0: all threads alike.
    """

    name: str
    loops: int
    batch: int
    threads: int
    orders: int
    delay: float
    messages: int
    rate: float | None = None
    per_batch: float = 0.030
    per_message: float = 0.001
    processes: int = 1
    perform: str = "sleep"
    hot: float = 0.0

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

    def replace(self, **changes: Any) -> Config:
        """A copy with some fields changed."""
        return dataclasses.replace(self, **changes)


GRID: tuple[Config, ...] = (
    Config("b1", loops=1, batch=1, threads=1, orders=1, delay=0.0, messages=60),
    Config("b2", loops=1, batch=32, threads=1, orders=1, delay=0.0, messages=800),
    Config("b3", loops=2, batch=256, threads=4, orders=1, delay=0.1, messages=3000),
    Config("b4", loops=4, batch=16, threads=8, orders=2, delay=0.0, messages=1200),
    Config("b5", loops=8, batch=128, threads=32, orders=3, delay=0.05, messages=4000),
    Config("b6", loops=8, batch=8, threads=20, orders=2, delay=0.2, messages=3000),
    Config("o1", loops=1, batch=1, threads=1, orders=1, delay=0.0, messages=60, rate=10),
    Config("o2", loops=2, batch=16, threads=4, orders=2, delay=0.1, messages=300, rate=75),
    Config("o3", loops=4, batch=64, threads=8, orders=2, delay=0.2, messages=1000, rate=125),
    Config("o4", loops=8, batch=32, threads=32, orders=1, delay=0.05, messages=450, rate=75),
    Config("o5", loops=4, batch=4, threads=2, orders=1, delay=0.05, messages=300, rate=75),
    Config("o6", loops=8, batch=256, threads=8, orders=3, delay=0.1, messages=1600, rate=250),
    Config("o7", loops=4, batch=16, threads=8, orders=2, delay=0.05, messages=1200, rate=150, hot=0.5),
)
"""Loops 1-8, batches 1-256, threads 1-32, 1-3 orders, coordinator delay 0-0.2 s,
backlogs (``b*``) and open-loop arrivals below saturation (``o*``); ``o7`` puts
half of its requests on one hot thread."""


def handler_for(config: Config) -> type[TimedHandler]:
    """A handler with the config's threads, orders, costs and kind of ``perform``."""
    return handler_from_spec(spec_of(config))


def spec_of(config: Config) -> dict[str, Any]:
    """What a worker process needs to rebuild `handler_for` (JSON)."""
    return {
        "name": config.name,
        "perform": config.perform,
        "threads": config.threads,
        "orders_used": config.orders,
        "per_batch": config.per_batch,
        "per_message": config.per_message,
        "hot": config.hot,
    }


def arrivals(config: Config, seed: int = 0) -> list[float] | None:
    """Open-loop Poisson arrival offsets, or None for a backlog."""
    if config.rate is None:
        return None
    gaps = np.random.default_rng(seed).exponential(1 / config.rate, config.messages)
    return list(np.cumsum(gaps) - gaps[0])


async def real_trace(config: Config, url: str, seed: int = 0) -> pd.DataFrame:
    """The trace of ``config`` on real worker processes at ``url`` (`simulator.lab.realrun`)."""
    return await run_workers(
        handler_for(config),
        spec_of(config),
        list(range(config.messages)),
        url=url,
        settings=config.settings(url),
        loops=config.loops,
        processes=config.processes,
        at=arrivals(config, seed),
    )


def replay(config: Config, real: pd.DataFrame, probe: float = math.nan, seed: int = 1) -> Scenario:
    """``config`` as a scenario replaying ``real``'s requests at its enqueue times, not yet calibrated.

    Args:
        config: The configuration to simulate (loops, processes, batch size, delay).
        real: The real run of ``config`` whose arrivals are replayed.
        probe: Round trip to use when the calibration finds none (no back-to-back batches:
            `simulator.lab.measure.measure_rtt`); default 0.
        seed: The twin's seed.
    """
    ordered = real.sort_values("enqueued_at", kind="stable")
    # A backlog is registered before the real workers start: the twin starts with all of it there.
    times = ordered["enqueued_at"].to_numpy() if config.mode == "open" else np.zeros(len(ordered))
    workload = Workload(
        handler_for(config),
        Replay(times),
        Service(),
        Keyed(KeySequence(np.arange(len(ordered)))),  # request i was registered i-th, as in `real_trace`
    )
    return Scenario(
        workload,
        loops=config.loops,
        processes=config.processes,
        settings=config.settings(None),
        rtt=0.0 if math.isnan(probe) else probe,
        seed=seed,
    )


def fit(config: Config, real: pd.DataFrame, overhead: Overhead = TRACED, probe: float = math.nan) -> Calibration:
    """`calibrate` on a real run of ``config``, following the machine's speed during it."""
    return calibrate(real, timer=config.perform == "sleep", overhead=overhead, run=replay(config, real, probe))


def twin_trace(
    config: Config,
    real: pd.DataFrame,
    fitted: Calibration | None = None,
    probe: float = math.nan,
    seed: int = 1,
    overhead: Overhead = TRACED,
) -> pd.DataFrame:
    """The simulated trace of ``config``, replaying ``real``'s requests and enqueue times (`replay`).

    Args:
        config: The configuration to simulate.
        real: The real run of ``config`` whose arrivals are replayed.
        fitted: The calibration to use; default: `fit` on ``real`` itself (the
            same configuration). A prediction passes one fitted on another run.
        probe: Round trip to use when the calibration found none; default 0.
        seed: The twin's seed.
        overhead: The library's CPU per effect on the machine of the real runs
            (`simulator.lab.measure.measure_overhead`); ignored when ``fitted`` is given (it carries its own).
    """
    fitted = fitted or fit(config, real, overhead, probe)
    scenario = replay(config, real, probe, seed)
    source = next(iter(fitted.service))  # one handler per run: the calibration's, whatever its run's name
    name = scenario.workloads[0].name  # type: ignore[index]
    return simulate(fitted.apply(scenario, handlers={name: source})).trace


@dataclass(frozen=True)
class Prediction:
    """Calibrate the twin on a real run of ``calibrated``, predict a real run of ``predicted``."""

    name: str
    calibrated: Config
    predicted: Config
    what: str


_SPIN = Config("spin-4", loops=4, batch=16, threads=16, orders=1, delay=0.05, messages=3000, rate=1000,
               per_batch=0.001, per_message=0.00005, perform="spin")  # fmt: skip
_SHORT = Config("io-8", loops=8, batch=64, threads=8, orders=1, delay=0.05, messages=6000, rate=1200,
                per_batch=0.0005, per_message=0.00002)  # fmt: skip
_DRAIN = Config("noop-8", loops=8, batch=64, threads=32, orders=1, delay=0.05, messages=200_000, perform="noop")

PREDICTIONS: tuple[Prediction, ...] = (
    Prediction("loops", _SPIN, _SPIN.replace(name="spin-8", loops=8), "CPU-bound perform, 4 -> 8 loops in one process"),
    Prediction("load", _SPIN, _SPIN.replace(name="spin-4-hi", rate=1500, messages=4500), "CPU-bound, 1000 -> 1500/s"),
    Prediction("processes", _SHORT, _SHORT.replace(name="io-2x4", processes=2), "0.5 ms sleeps, 1 x 8 -> 2 x 4 loops"),
    Prediction(
        "short-io", _SHORT, _SHORT.replace(name="io-8-hi", rate=1800, messages=9000), "0.5 ms sleeps, 1200 -> 1800/s"
    ),
    Prediction("drain", _DRAIN, _DRAIN.replace(name="noop-16", loops=16), "no-op backlog, 8 -> 16 loops"),
)
"""Calibrated on one run, predicting another: the capacity planner's questions."""


def errors(config: Config, sim: pd.DataFrame, real: pd.DataFrame) -> pd.DataFrame:
    """Relative errors: throughput of drains (overall and per order), p50 and p99 latency per order.

    Throughput is compared only for backlogs: in an open-loop run every group
    performs what arrives, in the twin as in the real run, so its error says
    nothing. A backlog is registered before the real workers start, so its
    times (throughput windows, latencies) count from the first perform start.
    Not per thread: with fewer loops than threads, which threads are drained
    first is a random choice, so one thread's drain time is a draw.
    Latency (sojourn: enqueue to finish) is compared per order, not per thread:
    which threads a loop drains first is a random choice (in the worker and in
    its twin alike), so one thread's latency in a backlog is a draw, while an
    order's is not. A config with a hot thread (open loop) adds that thread's
    latency per order.
    """
    parts = []
    if config.mode == "backlog":  # registered before the workers started: time counts from their start
        sim, real = _from_first_start(sim), _from_first_start(real)
        parts.append(compare(sim, real, by=(), metrics=("throughput",)).assign(order="*"))
        parts.append(compare(sim, real, by=("order",), metrics=("throughput",)))
    parts.append(compare(sim, real, by=("order",), metrics=LATENCY).assign(thread="*"))
    if config.hot:  # open loop: the hot thread's latency per order is no draw
        hot = compare(sim, real, by=("thread", "order"), metrics=LATENCY)
        parts.append(hot[hot["thread"] == "0"])
    table = pd.concat(parts, ignore_index=True)
    table.insert(0, "config", config.name)
    return table


def _from_first_start(trace: pd.DataFrame) -> pd.DataFrame:
    """The trace with enqueue times no earlier than the first perform start (throughput window)."""
    return trace.assign(enqueued_at=trace["enqueued_at"].clip(lower=trace["started_at"].min()))


async def run(
    config: Config, url: str, runs: int = 1, overhead: Overhead = TRACED, probe: float = math.nan
) -> pd.DataFrame:
    """`errors` of ``runs`` real runs of one config (other arrivals each), each against its twin
    calibrated on it; ``real_p50``/``real_p99`` give the real side's run-to-run noise."""
    tables = []
    for number in range(runs):
        real = await real_trace(config, url, seed=number)
        table = twin_errors(config, real, overhead=overhead, probe=probe)
        tables.append(table.assign(run=number, **_overall(real)))
    return pd.concat(tables, ignore_index=True)


async def run_prediction(
    prediction: Prediction, url: str, runs: int = 1, overhead: Overhead = TRACED, probe: float = math.nan
) -> pd.DataFrame:
    """`errors` of ``runs`` predicted runs, the twin calibrated each time on a run of the other config."""
    tables = []
    for number in range(runs):
        source = await real_trace(prediction.calibrated, url, seed=number)
        target = await real_trace(prediction.predicted, url, seed=number + 1000)
        fitted = fit(prediction.calibrated, source, overhead, probe)
        table = twin_errors(prediction.predicted, target, fitted, probe=probe)
        tables.append(table.assign(config=prediction.name, run=number, **_overall(target)))
    return pd.concat(tables, ignore_index=True)


TWIN_SEEDS = (1, 2, 3)
"""The twin is one sample path too: each real run is compared with the median over these seeds."""


def twin_errors(
    config: Config,
    real: pd.DataFrame,
    fitted: Calibration | None = None,
    overhead: Overhead = TRACED,
    probe: float = math.nan,
) -> pd.DataFrame:
    """`errors` of ``real`` against its twin, the median over `TWIN_SEEDS` per metric and group.

    A coordinator delay makes a drain's end a discrete draw (a loop that found
    no thread waits the whole delay): one twin path against one real path
    would count the twin's own draw as an error.
    """
    fitted = fitted or fit(config, real, overhead, probe)
    tables = [errors(config, twin_trace(config, real, fitted, probe, seed), real) for seed in TWIN_SEEDS]
    keys = ["config", "metric", *(c for c in ("thread", "order") if c in tables[0].columns)]
    stacked = pd.concat(tables, ignore_index=True)
    return stacked.groupby(keys, sort=False, dropna=False)[["sim", "real", "rel_error"]].median().reset_index()


def _overall(real: pd.DataFrame) -> dict[str, float]:
    """The real run's own p50 and p99 (for the run-to-run noise)."""
    row = summary(real, ()).iloc[0]
    return {"real_p50": float(row["sojourn_p50"]), "real_p99": float(row["sojourn_p99"])}


def table(results: pd.DataFrame, grid: Sequence[Config] = GRID) -> pd.DataFrame:
    """One row per config: its parameters, the worst |relative error| per metric (the median
    over the runs when there are several) and the real p99's run-to-run spread."""
    rows: list[dict[str, Any]] = []
    for config in grid:
        part = results[results["config"] == config.name]
        row: dict[str, Any] = {
            "config": config.name,
            "mode": config.mode,
            "loops": config.loops,
            "batch": config.batch,
            "threads": config.threads,
            "orders": config.orders,
            "delay": config.delay,
            "hot": config.hot,
            "messages": config.messages,
        }
        row.update(_worst(part))
        row["real_p99_spread"] = _spread(part)
        rows.append(row)
    return pd.DataFrame(rows)


def prediction_table(results: pd.DataFrame, predictions: Sequence[Prediction] = PREDICTIONS) -> pd.DataFrame:
    """One row per prediction: what changed, and the worst signed relative error per metric."""
    rows = []
    for prediction in predictions:
        part = results[results["config"] == prediction.name]
        row = {"prediction": prediction.name, "what": prediction.what, **_worst(part, signed=True)}
        row["real_p99_spread"] = _spread(part)
        rows.append(row)
    return pd.DataFrame(rows)


def _worst(part: pd.DataFrame, signed: bool = False) -> dict[str, float]:
    """Per metric, the largest |error| over the groups of a run (with its sign when ``signed``),
    then the median over the runs; NaN where not compared."""
    out = {}
    runs = part["run"] if "run" in part.columns else pd.Series(0, index=part.index)
    for metric in METRICS:
        chosen = part[part["metric"] == metric]
        if chosen.empty:
            out[f"{metric}_err"] = math.nan
            continue
        worst = [
            float(errors.loc[errors.abs().idxmax()]) for _, errors in chosen.groupby(runs[chosen.index])["rel_error"]
        ]
        median = float(np.median(worst))
        out[f"{metric}_err"] = median if signed else abs(median)
    return out


def _spread(part: pd.DataFrame) -> float:
    """(max - min) / median of the real runs' overall p99: the real side's run-to-run noise."""
    if "real_p99" not in part.columns:
        return math.nan
    values = part.drop_duplicates("run")["real_p99"].to_numpy()
    return float((values.max() - values.min()) / np.median(values)) if len(values) > 1 else math.nan


async def run_grid(
    url: str, grid: Sequence[Config] = GRID, runs: int = 1, overhead: Overhead = TRACED, probe: float = math.nan
) -> pd.DataFrame:
    """`errors` of every config, in one DataFrame."""
    return pd.concat([await run(config, url, runs, overhead, probe) for config in grid], ignore_index=True)


async def run_predictions(
    url: str,
    predictions: Sequence[Prediction] = PREDICTIONS,
    runs: int = 1,
    overhead: Overhead = TRACED,
    probe: float = math.nan,
) -> pd.DataFrame:
    """`errors` of every prediction, in one DataFrame."""
    return pd.concat([await run_prediction(p, url, runs, overhead, probe) for p in predictions], ignore_index=True)


def main(argv: list[str] | None = None) -> None:
    """Print the accuracy tables (Markdown)."""
    parser = argparse.ArgumentParser(prog="python -m simulator.lab.accuracy", description=__doc__)
    parser.add_argument("--url", help="Redis URL; default: spawn a redis-server on a free port")
    parser.add_argument("--only", choices=("grid", "predictions"), help="run one table only")
    parser.add_argument("--runs", type=int, default=3, help="real runs per config (errors: median over them)")
    parser.add_argument(
        "--library", action="store_true", help="charge simulator.cpu.TRACED instead of measuring this machine's"
    )
    arguments = parser.parse_args(argv)

    async def both(url: str) -> None:
        overhead = TRACED if arguments.library else await measure_overhead(url)
        probe = await measure_rtt(url)
        print(f"{overhead!r}\nround trip {probe * 1e3:.3f} ms\n", flush=True)
        if arguments.only != "predictions":
            grid = await run_grid(url, runs=arguments.runs, overhead=overhead, probe=probe)
            print(markdown(table(grid)), flush=True)
            print()
        if arguments.only != "grid":
            predictions = await run_predictions(url, runs=arguments.runs, overhead=overhead, probe=probe)
            print(markdown(prediction_table(predictions)), flush=True)

    if arguments.url:
        asyncio.run(both(arguments.url))
        return
    with tempfile.TemporaryDirectory(prefix="sq-accuracy-") as directory:
        server = RedisServer(Path(directory))
        try:
            asyncio.run(both(server.url))
        finally:
            server.stop()


def markdown(frame: pd.DataFrame) -> str:
    """A DataFrame as a Markdown table (floats to three decimals, NaN as a dash)."""

    def cell(value: Any) -> str:
        if isinstance(value, float):
            return "-" if math.isnan(value) else f"{value:+.3f}" if value < 0 else f"{value:.3f}"
        return str(value)

    lines = ["| " + " | ".join(map(str, frame.columns)) + " |", "|" + "---|" * len(frame.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
