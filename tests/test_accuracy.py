"""The twin against real workers on a real redis-server, over the accuracy grid:
throughput per thread and order within 10%, median latency per order within 20%."""

from __future__ import annotations

import pytest

from simulator.accuracy import GRID, markdown, run_grid, table


def test_grid_covers_the_ranges() -> None:
    assert len(GRID) >= 12
    assert {min(c.workers for c in GRID), max(c.workers for c in GRID)} == {1, 8}
    assert {min(c.batch for c in GRID), max(c.batch for c in GRID)} == {1, 256}
    assert {min(c.threads for c in GRID), max(c.threads for c in GRID)} == {1, 32}
    assert {c.orders for c in GRID} == {1, 2, 3}
    assert {min(c.delay for c in GRID), max(c.delay for c in GRID)} == {0.0, 0.2}
    assert {c.mode for c in GRID} == {"backlog", "open"}


@pytest.mark.slow
@pytest.mark.timeout(300)
async def test_simulated_matches_real_runs(redis_url: str) -> None:
    results = await run_grid(redis_url)
    summary = table(results)
    print("\n" + markdown(summary))
    throughput = results[results["metric"] == "throughput"]
    latency = results[results["metric"] == "sojourn_p50"]
    assert set(results["config"]) == {c.name for c in GRID}
    assert throughput["rel_error"].notna().all() and latency["rel_error"].notna().all()
    worst = summary.set_index("config")
    assert (worst["throughput_err_max"] <= 0.10).all(), worst["throughput_err_max"]
    assert (worst["sojourn_p50_err_max"] <= 0.20).all(), worst["sojourn_p50_err_max"]
