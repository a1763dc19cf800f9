"""Does a hot thread starve the others? ``python -m simulator.lab.fairness`` (about a minute).

64 threads, 8 loops, batch 16, ``perform`` sleeping 1 ms + 0.1 ms a request, Poisson
arrivals at `LOAD` of the measured drain rate; in the ``hot`` run thread ``0`` takes
half of them, in the ``cold`` run it takes none and the other 63 get what they got in
the hot run (the same cold traffic, spread over all 64 threads). Both run on real
worker processes, and the twin, calibrated on the cold run, predicts both. Per run:

- ``cold_p99``: the p99 wait (registration to the start of ``perform``) of the
  requests on the cold threads;
- ``jain``: Jain's index of the threads' throughput, each thread's requests
  performed over those it was sent (1: every thread served alike, whatever its
  traffic; ``1 / n``: one thread served alone);
- ``jain_raw``: Jain's index of the threads' raw throughput (the hot thread's half
  of the traffic alone puts it far below 1).

The hot thread starves the others when the cold threads' p99 with it is far above
their p99 without it.
"""

from __future__ import annotations

import argparse

import numpy as np
import pandas as pd

from ..predict import prediction_runs
from ..simulation import simulate
from .accuracy import Config, drain_rate, fit, markdown, real_trace, replay
from .realrun import on_a_server

FAIR = Config("fair", loops=8, batch=16, threads=64, load=0.6, per_batch=0.001, per_message=0.0001, hot=0.5)
"""The hot run's configuration."""
LOAD = 0.6
"""Share of the measured drain rate the arrivals come at."""


def jain(values: np.ndarray) -> float:
    """Jain's fairness index: ``(sum x)^2 / (n sum x^2)``; 1 when all are equal."""
    values = np.asarray(values, dtype=float)
    return float(values.sum() ** 2 / (len(values) * (values**2).sum())) if len(values) and values.any() else 1.0


def fairness(trace: pd.DataFrame, hot: str = "0") -> dict[str, float]:
    """The cold threads' p99 wait and Jain's indexes of a run (see the module)."""
    waits = trace["started_at"] - trace["enqueued_at"]
    cold = trace["thread"].astype(str) != hot
    end = float(trace["enqueued_at"].max())  # served by the end of the arrivals, against sent
    sent = trace.groupby("thread").size()
    served = trace[trace["started_at"] <= end].groupby("thread").size().reindex(sent.index, fill_value=0)
    return {
        "cold_p99": float(np.quantile(waits[cold], 0.99)),
        "jain": jain((served / sent).to_numpy()),
        "jain_raw": jain(served.to_numpy()),
    }


async def study(url: str, seed: int = 0) -> pd.DataFrame:
    """The hot and cold runs, real and as the twin predicts them (calibrated on the cold run)."""
    drained = await real_trace(FAIR.replace(load=None, messages=20_000, hot=0.0), url)
    rate = LOAD * drain_rate(drained)
    cold = FAIR.replace(name="fair-cold", hot=0.0)
    cold_real = await real_trace(cold, url, rate * (1 - FAIR.hot), seed)
    hot_real = await real_trace(FAIR, url, rate, seed + 1)
    fitted = fit(cold, cold_real, seed=seed)
    rows = []
    for case, config, real in (("cold", cold, cold_real), ("hot", FAIR, hot_real)):
        scenario = replay(config, real)
        name = scenario.workloads[0].name  # type: ignore[index]
        runs = prediction_runs(scenario, fitted, handlers={name: next(iter(fitted[0].service))})
        twin = [fairness(simulate(run).trace) for run in runs]
        rows.append({"case": case, "system": "real", **fairness(real)})
        rows.append({"case": case, "system": "twin", **{k: float(np.median([t[k] for t in twin])) for k in twin[0]}})
    return pd.DataFrame(rows)


def main(argv: list[str] | None = None) -> None:
    """Print the table (Markdown)."""
    parser = argparse.ArgumentParser(prog="python -m simulator.lab.fairness", description=__doc__)
    parser.add_argument("--url", help="Redis URL; default: spawn a redis-server on a free port")
    arguments = parser.parse_args(argv)

    async def run(url: str) -> None:
        print(markdown(await study(url)))

    on_a_server(arguments.url, run)


if __name__ == "__main__":
    main()
