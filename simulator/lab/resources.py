"""Where the time goes: each resource the twin charges, against what the real run's instruments measured.

A held-out run's throughput and latency can come out right for the wrong reasons (too
little CPU here, too much waiting there). `resources` sets each mechanism the twin models
against a measurement of its own, per message performed:

==================  ====================================================  ==============================================
quantity            real: the instrument                                  twin
==================  ====================================================  ==============================================
``worker_cpu``      the worker processes' ``process_time`` (the meter)     the processes' CPU (`Result.processes`)
``storage_calls``   redis-server's ``INFO commandstats``: script calls     the storage server's commands
``storage_cpu``     ``INFO commandstats``: microseconds in scripts        the storage server's busy seconds
``others_cpu``      ``/proc/stat``'s busy CPU less the workers'            the other programs' work on the cores
                    (the producer, redis-server, anything else)            (`Scenario.background`, `unrelated`)
``lag_mean``,       the meter's lag probe: how late a 50 ms timer fires    the same probe on the simulated event loop
``lag_p99``                                                                (`simulator.machine.lag_probe`)
==================  ====================================================  ==============================================

A quantity the real run did not measure (no ``INFO`` on a cluster, no ``/proc`` off Linux)
is NaN. The server's own counts are of the scripts (``EVALSHA``): it counts the commands a
script runs too, and times them inside the script's own microseconds.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from ..calibrate import scripts
from ..result import Result

QUANTITIES = ("worker_cpu", "storage_calls", "storage_cpu", "others_cpu", "lag_mean", "lag_p99")
"""What `resources` compares, in order."""


def measured(real: pd.DataFrame) -> dict[str, float]:
    """`QUANTITIES` of a real run, from its trace's ``attrs["meter"]`` (one reading per process)."""
    meters: list[dict[str, Any]] = list(real.attrs.get("meter") or [])
    messages = max(len(real), 1)
    found = dict.fromkeys(QUANTITIES, math.nan)
    if not meters:
        return found
    workers = sum(float(m.get("process_cpu") or 0.0) for m in meters)
    found["worker_cpu"] = workers / messages
    calls, usec = scripts(meters)
    if calls:
        found["storage_calls"], found["storage_cpu"] = calls / messages, usec * 1e-6 / messages
    busy = [float(m["machine_busy"]) for m in meters if m.get("machine_busy") is not None]
    if busy:  # the processes' windows overlap: the machine over the longest one
        found["others_cpu"] = max(max(busy) - workers, 0.0) / messages
    lags = np.concatenate([np.asarray(m.get("lag") or [], dtype=float) for m in meters])
    if lags.size:
        found["lag_mean"], found["lag_p99"] = float(lags.mean()), float(np.quantile(lags, 0.99))
    return found


def simulated(result: Result) -> dict[str, float]:
    """`QUANTITIES` of a twin run."""
    messages = max(result.messages, 1)
    scenario = result.scenario
    processes = result.processes
    workers = float(processes["cpu_busy"].sum())
    storage = result.storage_utilisation * result.end
    served = result.storage_calls > 0
    found = {
        "worker_cpu": workers / messages,
        "storage_calls": result.storage_calls / messages if served else math.nan,
        "storage_cpu": storage / messages if served else math.nan,
        "others_cpu": scenario.background + scenario.unrelated * result.end / messages
        if scenario.cores is not None
        else math.nan,
        "lag_mean": float(processes["lag"].mean()),
        "lag_p99": float(processes["lag_p99"].max()),
    }
    return found


def resources(sims: Sequence[Result], real: pd.DataFrame) -> pd.DataFrame:
    """Per quantity: the real value, the twin's median over ``sims`` with the interval holding 90%
    of them, the relative error and whether the real value is inside."""
    truth = measured(real)
    draws = pd.DataFrame([simulated(sim) for sim in sims])
    rows = []
    for quantity in QUANTITIES:
        values = draws[quantity].dropna().to_numpy()
        median = low = high = math.nan
        if values.size:
            median, low, high = float(np.median(values)), *map(float, np.quantile(values, [0.05, 0.95]))
        value = truth[quantity]
        rows.append(
            {
                "quantity": quantity,
                "real": value,
                "sim": median,
                "sim_low": low,
                "sim_high": high,
                "rel_error": (median - value) / value if value else math.nan,
                "covered": bool(low <= value <= high) if values.size and not math.isnan(value) else False,
            }
        )
    return pd.DataFrame(rows)
