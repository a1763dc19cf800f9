"""The twin against real worker processes on a real redis-server, out of sample.

`simulator.lab.accuracy` fits the twin on one real run of each family and predicts other
configurations, run for real too; ``python -m simulator.lab.accuracy`` runs all of it (the
docs' tables, against the issue's bounds). CI runs two families, one scored configuration
each, and holds them to what one run on this shared machine can tell: nothing grossly wrong
(`GROSS`), and intervals that are intervals.
"""

from __future__ import annotations

import dataclasses
import statistics

import numpy as np
import pandas as pd
import pytest
import redis
import redis.asyncio

from simulator.cpu import SERVER, TRACED, Overhead
from simulator.lab.accuracy import (
    FAMILIES,
    METRICS,
    Config,
    Family,
    handler_for,
    markdown,
    per_config,
    report,
    run_all,
    where_the_time_goes,
)
from simulator.lab.fairness import fairness, jain, study
from simulator.lab.measure import measure_overhead
from simulator.lab.plancheck import Question, check, verdict
from simulator.lab.realrun import on_a_server

GROSS = {"throughput": 0.5, "sojourn_p50": 1.0}
"""On a shared 2-core machine the real side moves by tens of percent between runs, and one CI
run cannot hold the twin to the issue's bounds (15%, 25%, 40%), which the docs' full run
reports against; these catch a twin that is off by a factor."""


def test_the_families_cover_what_the_issue_asks() -> None:
    fits = {family.name: family.fit for family in FAMILIES}
    assert fits["io"].mode == "open" and fits["io"].perform == "sleep"
    assert fits["cpu"].perform == "spin" and fits["drain"].perform == "noop" and fits["drain"].mode == "backlog"
    assert fits["orders"].orders > 1 and fits["zipf"].zipf > 0
    loads = [c.load for f in FAMILIES for c in (f.fit, *f.scored) if c.load is not None]
    assert min(loads) <= 0.4 and max(loads) >= 0.8
    changed = set()
    for family in FAMILIES:
        assert family.scored and family.test
        for config in (*family.scored, *family.test):
            changed |= {k for k, v in vars(config).items() if k != "name" and v != getattr(family.fit, k)}
    assert {"load", "loops", "processes", "batch", "threads", "zipf", "orders"} <= changed
    zipf = handler_for(fits["zipf"])
    threads = [zipf.thread_of(r) for r in range(20_000)]
    assert threads.count(0) > 10 * threads.count(63)  # hot keys


@pytest.mark.slow
@pytest.mark.timeout(600)
async def test_the_twin_predicts_held_out_real_runs(redis_url: str) -> None:
    """The library's costs are the median of three short measurements (as ``bench_overhead``
    takes them): one of them alone has come out twice too high on a machine just busy."""
    measured = [await measure_overhead(redis_url, messages=10_000) for _ in range(3)]
    overhead = dataclasses.replace(
        measured[0],
        **{f.name: statistics.median(getattr(m, f.name) for m in measured) for f in dataclasses.fields(Overhead)},
    )
    chosen = [Family(f.fit, f.scored[:1], f.test) for f in FAMILIES if f.name in ("cpu", "drain")]
    results = await run_all(redis_url, chosen, overhead)
    print(*map(markdown, (per_config(results), report(results), where_the_time_goes(results))), sep="\n\n")
    overall = results[results["order"] == "*"]
    for metric, bound in GROSS.items():
        errors = overall[overall["metric"] == metric]["rel_error"].abs()
        assert (errors <= bound).all(), f"{metric} off by more than {bound:.0%}: {list(errors)}"
    scored = results[results["metric"].isin(METRICS)]
    assert (scored["sim_low"] <= scored["sim"]).all() and (scored["sim"] <= scored["sim_high"]).all()
    used = where_the_time_goes(results)
    assert (used["worker_cpu_real"] > 0).all() and used["worker_cpu_err"].notna().all()


@pytest.mark.slow
@pytest.mark.timeout(600)
async def test_a_plans_answer_is_run_for_real(redis_url: str) -> None:
    """`simulator.lab.plancheck` on a small question: every candidate runs for real beside the
    twin's p99, and the verdict names the choice (or says there was none)."""
    config = Config("plan-small", loops=2, batch=16, threads=8, seconds=1.0, per_batch=0.001, per_message=0.0001)
    question = Question(config, load=0.3, goals=(1e-6, 0.5), loops=(1, 2))
    (impossible, _), (answer, table) = await check(question, redis_url, overhead=TRACED, server=SERVER)
    assert impossible.choice is None  # no queue performs within a microsecond
    assert list(table["loops"]) == [1, 2] and (table["real_p99"] > 0).all()
    assert (table["twin_p99_high"] >= table["twin_p99"]).all() and table["rate"].iloc[0] > 0
    assert table["chosen"].sum() == (answer.choice is not None)
    assert verdict(table).startswith("chose" if answer.choice else "no choice")


def test_jains_index_and_what_fairness_reads_of_a_run() -> None:
    assert jain(np.ones(8)) == pytest.approx(1.0) and jain(np.array([1.0, 0, 0, 0])) == pytest.approx(0.25)
    trace = pd.DataFrame(
        {
            "thread": ["0", "0", "0", "1", "2"],
            "enqueued_at": [0.0, 0.0, 1.0, 0.0, 1.0],
            "started_at": [0.1, 0.2, 1.1, 0.5, 3.0],  # thread 2's one request starts after the last arrival
        }
    )
    found = fairness(trace)
    assert found["cold_p99"] == pytest.approx(np.quantile([0.5, 2.0], 0.99))
    assert found["jain"] == pytest.approx(jain(np.array([2 / 3, 1.0, 0.0])))  # served by the last arrival
    assert found["jain_raw"] == pytest.approx(jain(np.array([2.0, 1.0, 0.0])))


@pytest.mark.slow
@pytest.mark.timeout(600)
async def test_the_fairness_study_runs_real_and_twin(redis_url: str) -> None:
    table = await study(redis_url)
    assert list(table["case"]) == ["cold", "cold", "hot", "hot"] and list(table["system"]) == ["real", "twin"] * 2
    assert (table["cold_p99"] > 0).all() and table["jain"].between(0, 1).all()


def test_the_lab_runs_on_a_server_of_its_own_or_the_one_given(redis_url: str) -> None:
    """``python -m simulator.lab.*`` without ``--url`` start a redis-server for the run and stop it."""
    seen: list[str] = []

    async def run(url: str) -> None:
        client = redis.asyncio.Redis.from_url(url)
        assert await client.ping()
        await client.aclose()
        seen.append(url)

    on_a_server(None, run)
    on_a_server(redis_url, run)
    assert seen[1] == redis_url and seen[0] != redis_url
    with pytest.raises(redis.ConnectionError):
        redis.Redis.from_url(seen[0]).ping()  # stopped
