"""How close the twin is, out of sample: fitted on some real runs, scored on others.

Each `Family` is one workload. Its ``fit`` configuration runs on real worker processes (each
tracing and measuring its run: `sharded_queue.meter`) and `simulator.calibrate.calibrations`
fits the twin from that trace alone, with draws for the intervals. Each ``scored``
configuration differs from it (rate x0.5 to x1.5, loops, processes, batch size, threads, hot
keys, orders), runs for real too, and the twin predicts it from the fit: its runs replay the
scored run's requests at their enqueue times, each calibrated by a draw with a seed of its own
(`simulator.predict`). A cell is one metric of one group (overall, per order): its error is the
prediction's median against the real value, and it is covered when the real value lies in the
interval holding 90% of the prediction's runs.

An open-loop family's rates are shares (``load``) of its fit configuration's drain rate,
measured first by a backlog of it. The ``test`` configurations are kept out of the model's
development: they run only with ``--test``, and were looked at once, at the end::

    python -m simulator.lab.accuracy                 # the scored set; spawns its own redis-server
    python -m simulator.lab.accuracy --test          # the test set
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from sharded_queue import Settings

from ..analysis import compare
from ..arrivals import Replay
from ..calibrate import Calibration, calibrations, unrelated_load
from ..cpu import SERVER, TRACED, Overhead, ServerCosts
from ..predict import prediction_runs
from ..requests import Keyed, KeySequence
from ..scenario import Scenario
from ..service import Service
from ..simulation import simulate
from ..workload import Workload
from .handlers import TimedHandler, handler_from_spec
from .measure import measure_overhead, measure_server
from .realrun import on_a_server, run_workers
from .resources import QUANTITIES, resources

LATENCY = ("sojourn_p50", "sojourn_p99")
METRICS = ("throughput", *LATENCY)
BOUNDS = {"throughput": 0.15, "sojourn_p50": 0.25, "sojourn_p99": 0.40}
"""The issue's bounds on |relative error|, per metric."""
DRAWS = 20
"""Runs of the twin per prediction (calibration draws, seeds, machine noise)."""


@dataclass(frozen=True)
class Config:
    """One real run.

    Attributes:
        name: Short label.
        loops: Worker loops in all, spread over ``processes``.
        batch: ``worker_batch_size``.
        threads: Threads the requests are spread over.
        orders: Orders ``"0"``, ``"1"``, ... (``"0"`` most urgent), round robin per thread.
        seconds: About how long the run lasts (open loop: messages = rate x seconds).
        load: Open-loop Poisson arrivals at this share of the family's drain rate; None: a backlog.
        messages: Requests of a backlog.
        per_batch: Seconds every ``perform`` costs.
        per_message: Seconds each request adds to it.
        processes: Worker processes.
        perform: ``"sleep"`` (waiting), ``"spin"`` (computing) or ``"noop"``.
        hot: Share of the requests on thread ``"0"``; 0: none.
        zipf: Keys drawn from a Zipf law of this exponent over ``keys`` keys; 0: round robin.
        keys: Keys of the Zipf law.
        delay: ``coordinator_delay``.
    """

    name: str
    loops: int
    batch: int
    threads: int
    orders: int = 1
    seconds: float = 2.0
    load: float | None = None
    messages: int = 0
    per_batch: float = 0.0
    per_message: float = 0.0
    processes: int = 1
    perform: str = "sleep"
    hot: float = 0.0
    zipf: float = 0.0
    keys: int = 0
    delay: float = 0.05

    @property
    def mode(self) -> str:
        """``backlog`` or ``open``."""
        return "backlog" if self.load is None else "open"

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


@dataclass(frozen=True)
class Family:
    """A workload: fitted on ``fit``, scored on ``scored``; ``test`` is held out to the end."""

    fit: Config
    scored: tuple[Config, ...]
    test: tuple[Config, ...]

    @property
    def name(self) -> str:
        """The fit configuration's name."""
        return self.fit.name


def _variants(base: Config, **named: dict[str, Any]) -> tuple[Config, ...]:
    return tuple(base.replace(name=f"{base.name}/{label}", **changes) for label, changes in named.items())


_IO = Config("io", loops=8, batch=64, threads=32, load=0.6, per_batch=0.0005, per_message=0.00002)
_ZIPF = Config(
    "zipf", loops=8, batch=32, threads=64, load=0.7, per_batch=0.002, per_message=0.0001, zipf=1.2, keys=1000
)
_ORDERS = Config("orders", loops=4, batch=16, threads=8, orders=3, load=0.8, per_batch=0.005, per_message=0.0005)
_CPU = Config("cpu", loops=4, batch=16, threads=16, load=0.6, per_batch=0.001, per_message=0.00005, perform="spin")
_DRAIN = Config("drain", loops=8, batch=64, threads=32, messages=100_000, perform="noop")

FAMILIES: tuple[Family, ...] = (
    Family(
        _IO,
        _variants(
            _IO, low={"load": 0.4}, high={"load": 0.8}, processes={"loops": 8, "processes": 2}, batch={"batch": 16}
        ),
        _variants(_IO, test={"load": 0.5, "threads": 64, "processes": 2}),
    ),
    Family(
        _ZIPF,
        _variants(_ZIPF, low={"load": 0.5}, loops={"loops": 16}, batch={"batch": 8}),
        _variants(_ZIPF, test={"zipf": 0.8, "load": 0.6}),
    ),
    Family(
        _ORDERS,
        _variants(_ORDERS, low={"load": 0.6}, orders={"orders": 2}, threads={"threads": 16}),
        _variants(_ORDERS, test={"batch": 32, "load": 0.7}),
    ),
    Family(
        _CPU,
        _variants(_CPU, loops={"loops": 8}, high={"load": 0.8}, processes={"loops": 4, "processes": 2}),
        _variants(_CPU, test={"batch": 64, "load": 0.5}),
    ),
    Family(
        _DRAIN,
        _variants(_DRAIN, loops={"loops": 16}, processes={"loops": 16, "processes": 2}, batch={"batch": 16}),
        _variants(_DRAIN, test={"threads": 8, "loops": 4}),
    ),
)
"""Open-loop I/O at 40-80% of the drain rate, Zipf-hot keys, several orders, a CPU-bound
``perform`` and no-op drains; scored on other rates, loops, processes, batch sizes, threads,
key skew and orders."""


def handler_for(config: Config) -> type[TimedHandler]:
    """A handler with the config's threads, orders, keys, costs and kind of ``perform``."""
    return handler_from_spec(spec_of(config))


def spec_of(config: Config) -> dict[str, Any]:
    """What a worker process needs to rebuild `handler_for` (JSON)."""
    return {
        "name": config.name.replace("/", "-"),
        "perform": config.perform,
        "threads": config.threads,
        "orders_used": config.orders,
        "per_batch": config.per_batch,
        "per_message": config.per_message,
        "hot": config.hot,
        "zipf": config.zipf,
        "keys": config.keys,
    }


def arrivals(rate: float, messages: int, seed: int = 0) -> list[float]:
    """Open-loop Poisson arrival offsets."""
    gaps = np.random.default_rng(seed).exponential(1 / rate, messages)
    return list(np.cumsum(gaps) - gaps[0])


async def real_trace(config: Config, url: str, rate: float | None = None, seed: int = 0) -> pd.DataFrame:
    """The trace of ``config`` on real worker processes (open loop at ``rate``, else a backlog)."""
    messages = config.messages if rate is None else max(200, int(rate * config.seconds))
    return await run_workers(
        handler_for(config),
        spec_of(config),
        list(range(messages)),
        url=url,
        settings=config.settings(url),
        loops=config.loops,
        processes=config.processes,
        at=None if rate is None else arrivals(rate, messages, seed),
    )


def drain_rate(trace: pd.DataFrame) -> float:
    """Messages per second of a drain, from the first perform's start to the last one's end."""
    return len(trace) / float(trace["finished_at"].max() - trace["started_at"].min())


def replay(config: Config, real: pd.DataFrame, seed: int = 1) -> Scenario:
    """``config`` as a scenario replaying ``real``'s requests at its enqueue times, not yet calibrated."""
    ordered = real.sort_values("enqueued_at", kind="stable")
    # A backlog is registered before the real workers start: the twin starts with all of it there.
    times = ordered["enqueued_at"].to_numpy() if config.mode == "open" else np.zeros(len(ordered))
    workload = Workload(handler_for(config), Replay(times), Service(), Keyed(KeySequence(np.arange(len(ordered)))))
    return Scenario(workload, loops=config.loops, processes=config.processes, settings=config.settings(None), seed=seed)


def fit(
    config: Config, real: pd.DataFrame, overhead: Overhead = TRACED, seed: int = 0, server: ServerCosts = SERVER
) -> list[Calibration]:
    """`calibrations` of a real run of ``config`` (`DRAWS` of them)."""
    return calibrations(real, DRAWS, seed=seed, timer=config.perform == "sleep", overhead=overhead, server=server)


def cells(config: Config, real: pd.DataFrame, fitted: Sequence[Calibration]) -> pd.DataFrame:
    """The prediction of ``config`` from ``fitted`` against its real run ``real``: one row per cell
    (metric and group: overall, per order), with the median, the 90% interval and ``covered``;
    then one row per resource the twin charges (`simulator.lab.resources`: where the time goes).

    The twin replays the real run's arrivals and is given the machine's other load during it
    (`unrelated_load`): conditions of the run, as a planner states them; everything the queue
    does is predicted from ``fitted``.

    A backlog is registered before the real workers start, so its times count from the first
    perform start. Latency is compared per order, not per thread: which thread a loop drains
    first is a random choice, in the worker and its twin alike, so one thread's is a draw.
    """
    scenario = replay(config, real)
    name = scenario.workloads[0].name  # type: ignore[index]
    runs = prediction_runs(scenario, fitted, handlers={name: next(iter(fitted[0].service))})
    unrelated = unrelated_load(real)  # the machine's other load then: a condition, as the arrivals are
    if unrelated is not None and fitted[0].cores is not None:
        runs = [run.replace(unrelated=unrelated) for run in runs]
    results = [simulate(run) for run in runs]
    used = resources(results, real).rename(columns={"quantity": "metric"}).assign(order="*")
    sims = [result.trace for result in results]
    if config.mode == "backlog":
        sims, real = [_from_first_start(sim) for sim in sims], _from_first_start(real)
    parts = [compare(sims, real, by=(), metrics=METRICS, prediction=True).assign(order="*")]
    if config.orders > 1:
        parts.append(compare(sims, real, by=("order",), metrics=LATENCY, prediction=True))
    parts.append(used)
    table = pd.concat(parts, ignore_index=True)
    table.insert(0, "config", config.name)
    return table


def _from_first_start(trace: pd.DataFrame) -> pd.DataFrame:
    return trace.assign(enqueued_at=trace["enqueued_at"].clip(lower=trace["started_at"].min()))


async def run_family(
    family: Family,
    url: str,
    overhead: Overhead = TRACED,
    test: bool = False,
    seed: int = 0,
    server: ServerCosts = SERVER,
) -> pd.DataFrame:
    """Fit ``family`` on a real run of its fit configuration; predict and score each configuration
    of its scored set (or of its test set, with ``test``) against real runs of them."""
    fit_config = family.fit
    rate = None
    if fit_config.mode == "open":
        backlog = fit_config.replace(load=None, messages=0)
        drained = await real_trace(backlog.replace(messages=_drain_messages(fit_config)), url)
        rate = drain_rate(drained)
    fitted = fit(fit_config, await real_trace(fit_config, url, _rate(fit_config, rate), seed), overhead, seed, server)
    tables = []
    for number, config in enumerate(family.test if test else family.scored, 1):
        real = await real_trace(config, url, _rate(config, rate), seed + number)
        table = cells(config, real, fitted)
        tables.append(table.assign(family=family.name, drain_rate=rate, load=config.load))
    return pd.concat(tables, ignore_index=True)


def _rate(config: Config, drain: float | None) -> float | None:
    return None if config.load is None or drain is None else config.load * drain


def _drain_messages(config: Config) -> int:
    """A backlog long enough to measure a drain rate (about a second of the library's pace)."""
    per_message = config.per_batch / config.batch + config.per_message
    return int(min(60_000, max(2_000, config.loops / max(per_message, 2e-5))))


async def run_all(
    url: str,
    families: Sequence[Family] = FAMILIES,
    overhead: Overhead = TRACED,
    test: bool = False,
    server: ServerCosts = SERVER,
) -> pd.DataFrame:
    """Every family's cells, in one DataFrame."""
    found = [await run_family(family, url, overhead, test, server=server) for family in families]
    return pd.concat(found, ignore_index=True)


def report(results: pd.DataFrame) -> pd.DataFrame:
    """Per metric: cells, the share within the issue's bound (`BOUNDS`), the coverage of the 90%
    intervals and their median width (relative to the real value)."""
    rows = []
    for metric, part in results[results["metric"].isin(METRICS)].groupby("metric", sort=False):
        error = part["rel_error"].abs()
        width = (part["sim_high"] - part["sim_low"]) / part["real"].where(part["real"] != 0)
        rows.append(
            {
                "metric": metric,
                "cells": len(part),
                "bound": BOUNDS[str(metric)],
                "within": float((error <= BOUNDS[str(metric)]).mean()),
                "median_abs_error": float(error.median()),
                "coverage": float(part["covered"].mean()),
                "median_width": float(width.median()),
            }
        )
    return pd.DataFrame(rows)


def where_the_time_goes(results: pd.DataFrame) -> pd.DataFrame:
    """Per configuration, each resource the twin charges (`simulator.lab.resources`): the real
    value per message, the twin's median and its relative error."""
    part = results[results["metric"].isin(QUANTITIES)]
    table = part.pivot_table(index="config", columns="metric", values=["real", "rel_error"], sort=False)
    table.columns = [f"{metric}_{'err' if kind == 'rel_error' else 'real'}" for kind, metric in table.columns]
    ordered = [f"{q}_{kind}" for q in QUANTITIES for kind in ("real", "err") if f"{q}_{kind}" in table.columns]
    return table[ordered].reset_index()


def per_config(results: pd.DataFrame) -> pd.DataFrame:
    """One row per scored configuration: its worst signed error per metric, and its coverage."""
    results = results[results["metric"].isin(METRICS)]
    rows = []
    for config, part in results.groupby("config", sort=False):
        row: dict[str, Any] = {"config": config, "load": part["load"].iloc[0]}
        for metric in METRICS:
            chosen = part[part["metric"] == metric]["rel_error"]
            row[f"{metric}_err"] = float(chosen.loc[chosen.abs().idxmax()]) if len(chosen.dropna()) else math.nan
        row["covered"] = f"{int(part['covered'].sum())}/{len(part)}"
        rows.append(row)
    return pd.DataFrame(rows)


def markdown(frame: pd.DataFrame) -> str:
    """A DataFrame as a Markdown table (floats to three decimals, NaN as a dash)."""

    def cell(value: Any) -> str:
        if isinstance(value, float):
            return "-" if math.isnan(value) else f"{value:+.3f}" if value < 0 else f"{value:.3f}"
        return str(value)

    lines = ["| " + " | ".join(map(str, frame.columns)) + " |", "|" + "---|" * len(frame.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Print the held-out tables (Markdown)."""
    parser = argparse.ArgumentParser(prog="python -m simulator.lab.accuracy", description=__doc__)
    parser.add_argument("--url", help="Redis URL; default: spawn a redis-server on a free port")
    parser.add_argument("--test", action="store_true", help="score the held-out test set instead")
    parser.add_argument("--family", action="append", help="only these families (by name)")
    parser.add_argument(
        "--library", action="store_true", help="charge simulator.cpu.TRACED and SERVER, not this machine's"
    )
    arguments = parser.parse_args(argv)
    families = [f for f in FAMILIES if not arguments.family or f.name in arguments.family]

    async def study(url: str) -> None:
        overhead = TRACED if arguments.library else await measure_overhead(url)
        server = SERVER if arguments.library else await measure_server(url)
        print(f"{overhead!r}\n{server!r}\n", flush=True)
        results = await run_all(url, families, overhead, arguments.test, server)
        tables = (per_config(results), report(results), where_the_time_goes(results))
        print(*map(markdown, tables), sep="\n\n", flush=True)

    on_a_server(arguments.url, study)


if __name__ == "__main__":
    main()
