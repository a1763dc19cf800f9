"""The twin against real worker processes on a real redis-server.

Same configuration (calibrated on the very run it replays): throughput of
drains within 10%, p50 latency per order within 15%, p99 within 25%.
Predicted configuration (calibrated on another run): throughput within 15%,
p50 within 25%, p99 within 30%. Errors are the median over 3 real runs (the
real side's own p99 moves 10-60% between runs on this shared machine). CI
runs a representative subset; ``python -m simulator.accuracy`` runs all of
it (the README's tables).
"""

from __future__ import annotations

import pytest

from simulator.accuracy import GRID, PREDICTIONS, markdown, prediction_table, run_grid, run_predictions, table

SUBSET = ("b2", "b6", "o2", "o4")
"""A drain of one loop, a drain of 8 loops over 20 threads, open loops of 2 and 8 loops."""

PREDICTED = ("loops", "drain")
"""More loops sharing a CPU-bound perform; a no-op drain with twice the loops."""

SAME = {"throughput_err": 0.10, "sojourn_p50_err": 0.15, "sojourn_p99_err": 0.25}
PREDICT = {"throughput_err": 0.15, "sojourn_p50_err": 0.25, "sojourn_p99_err": 0.30}


def test_grid_covers_the_ranges() -> None:
    assert len(GRID) >= 12
    assert {min(c.loops for c in GRID), max(c.loops for c in GRID)} == {1, 8}
    assert {min(c.batch for c in GRID), max(c.batch for c in GRID)} == {1, 256}
    assert {min(c.threads for c in GRID), max(c.threads for c in GRID)} == {1, 32}
    assert {c.orders for c in GRID} == {1, 2, 3}
    assert {min(c.delay for c in GRID), max(c.delay for c in GRID)} == {0.0, 0.2}
    assert {c.mode for c in GRID} == {"backlog", "open"}
    changed = {p.name for p in PREDICTIONS}
    assert {"loops", "processes", "load", "drain", "short-io"} <= changed
    for prediction in PREDICTIONS:
        assert prediction.calibrated != prediction.predicted


@pytest.mark.slow
@pytest.mark.timeout(240)
async def test_the_twin_replays_and_predicts_real_runs(redis_url: str) -> None:
    same = table(await run_grid(redis_url, [c for c in GRID if c.name in SUBSET], runs=3), GRID)
    same = same[same["config"].isin(SUBSET)]
    chosen = [p for p in PREDICTIONS if p.name in PREDICTED]
    predicted = prediction_table(await run_predictions(redis_url, chosen, runs=3), chosen)
    print("\n" + markdown(same) + "\n\n" + markdown(predicted))
    assert set(same["config"]) == set(SUBSET) and set(predicted["prediction"]) == set(PREDICTED)
    for limits, frame in ((SAME, same), (PREDICT, predicted)):
        for column, limit in limits.items():
            errors = frame[column].abs().dropna()
            assert (errors <= limit).all(), frame[[frame.columns[0], column]]
        assert frame["sojourn_p50_err"].notna().all() and frame["sojourn_p99_err"].notna().all()
