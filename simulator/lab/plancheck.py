"""A plan's answer, run for real: does its choice meet the goal, and does the next cheaper one not?

    .venv/bin/python -m simulator.lab.plancheck          # about 3 minutes

For each `QUESTIONS` entry: one real run of the workload calibrates the twin
(`simulator.calibrate.calibrations`, as the accuracy study does) and says how often its
producer called ``register`` (`producer_every`); `plan` then picks the
fewest loops that keep up with the rate within the p99 goal; then every candidate of
the grid runs for real, open loop at that rate, and its real p99 is set beside the
twin's upper bound. The plan tells the truth when its choice meets the goal for real and
the next cheaper candidate does not clearly meet it (its real p99 is above the goal).
The goals are set before any run: a rate at a share of the fit run's measured drain
rate and a p99 bound, per question.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ..arrivals import Poisson, Registered
from ..cpu import Overhead, ServerCosts
from ..requests import Keyed, KeySequence
from ..scenario import Scenario
from ..service import Service
from ..sweep import Plan, plan
from ..workload import Workload
from .accuracy import Config, drain_rate, fit, handler_for, markdown, real_trace
from .measure import measure_overhead, measure_server
from .realrun import on_a_server


@dataclass(frozen=True)
class Question:
    """Which loops keep up with ``load`` x the drain rate of ``config`` within each p99 goal?"""

    config: Config
    load: float
    goals: tuple[float, ...]
    loops: tuple[int, ...]


QUESTIONS = (
    Question(Config("plan-io", loops=8, batch=64, threads=32, load=0.5, per_batch=0.0005, per_message=0.00002),
             load=0.5, goals=(0.05, 1.0), loops=(1, 2, 4, 8)),
    Question(Config("plan-sleep", loops=8, batch=16, threads=64, load=0.5, per_batch=0.005, per_message=0.0002),
             load=0.5, goals=(0.1, 0.5), loops=(2, 4, 8, 16)),
)  # fmt: skip
"""An I/O workload of short sleeps, and one of longer ones over more threads. The first goal of
each was set before any run (no candidate met it, and the plans said so); the second after
seeing that run, where the grid's boundary lay, and tested on new runs."""


def scenario_for(question: Question, rate: float, every: float) -> Scenario:
    """The question's workload as a plannable scenario: Poisson arrivals at ``rate``, registered
    by a producer that calls ``register`` every ``every`` seconds with what arrived since (as
    `sharded_queue.testing.register_at` does, when it cannot keep up with one call each)."""
    config = question.config
    keys = Keyed(KeySequence(np.arange(int(rate * config.seconds * 3) + 1000)))
    workload = Workload(handler_for(config), Registered(Poisson(rate), every), Service(), keys)
    return Scenario(workload, loops=config.loops, settings=config.settings(None), duration=config.seconds)


def producer_every(trace: pd.DataFrame) -> float:
    """Seconds between two of the real producer's ``register`` calls (a call: one enqueue time)."""
    times = trace["enqueued_at"]
    return float(times.max() - times.min()) / max(times.nunique() - 1, 1)


def real_p99(trace: pd.DataFrame) -> float:
    """The real run's p99 sojourn (enqueue to finish)."""
    return float(np.quantile(trace["finished_at"] - trace["enqueued_at"], 0.99))


async def check(
    question: Question,
    url: str,
    seed: int = 0,
    overhead: Overhead | None = None,
    server: ServerCosts | None = None,
) -> list[tuple[Plan, pd.DataFrame]]:
    """Ask `plan` ``question`` from one real run, for each goal; then run every candidate for real
    (once, for all the goals). The library's costs and the server's are measured first unless given."""
    config = question.config
    drained = await real_trace(config.replace(load=None, messages=20_000), url)
    rate = question.load * drain_rate(drained)
    overhead = overhead or await measure_overhead(url)
    server = server or await measure_server(url)
    real = await real_trace(config, url, rate, seed)
    fitted = fit(config, real, overhead, seed, server)
    scenario = scenario_for(question, rate, producer_every(real))
    over = {"loops": list(question.loops)}
    answers = [
        plan(scenario, rate=rate, p99=goal, over=over, replications=len(fitted), progress=False, calibrations=fitted)
        for goal in question.goals
    ]
    reals = [await real_trace(config.replace(loops=n), url, rate, seed + i) for i, n in enumerate(question.loops, 1)]
    return [(answer, _rows(question, answer, reals)) for answer in answers]


def _rows(question: Question, answer: Plan, reals: list[pd.DataFrame]) -> pd.DataFrame:
    """Each candidate: the twin's p99 and its upper bound, whether it was chosen, and the real run's."""
    rows = []
    for loops, real in zip(question.loops, reals, strict=True):
        twin = answer.table[answer.table["loops"] == loops].iloc[0]
        p99 = real_p99(real)
        rows.append(
            {
                "question": question.config.name,
                "rate": answer.rate,
                "goal_p99": answer.p99,
                "loops": loops,
                "twin_p99": float(twin["sojourn_p99"]),
                "twin_p99_high": float(twin["sojourn_p99_high"]),
                "twin_meets": bool(twin["meets"]),
                "chosen": answer.choice is not None and answer.choice["loops"] == loops,
                "real_p99": p99,
                "real_throughput": len(real) / float(real["finished_at"].max() - real["enqueued_at"].min()),
                "real_meets": p99 <= answer.p99,
            }
        )
    return pd.DataFrame(rows)


def verdict(table: pd.DataFrame) -> str:
    """Whether the plan told the truth: its choice met the goal for real, the next cheaper did not."""
    chosen = table[table["chosen"]]
    if chosen.empty:
        met = table[table["real_meets"]]
        return "no choice; " + ("none met the goal for real either" if met.empty else "but some met it for real")
    loops = int(chosen["loops"].iloc[0])
    cheaper = table[table["loops"] < loops]
    good = bool(chosen["real_meets"].iloc[0])
    lean = cheaper.empty or not bool(cheaper.iloc[-1]["real_meets"])
    return f"chose {loops} loops: {'met' if good else 'MISSED'} for real; next cheaper " + (
        "none" if cheaper.empty else ("did not meet it" if lean else "MET it too (the plan was not the cheapest)")
    )


def main(argv: list[str] | None = None) -> None:
    """Ask each question, run the answers, print the tables and verdicts (Markdown)."""
    parser = argparse.ArgumentParser(prog="python -m simulator.lab.plancheck", description=__doc__)
    parser.add_argument("--url", help="Redis URL; default: spawn a redis-server on a free port")
    arguments = parser.parse_args(argv)

    async def run(url: str) -> None:
        for question in QUESTIONS:
            for answer, table in await check(question, url):
                print(f"{answer!r}\n\n{markdown(table)}\n\n{verdict(table)}\n", flush=True)

    on_a_server(arguments.url, run)


if __name__ == "__main__":
    main()
