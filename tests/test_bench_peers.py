"""The peers benchmark's bookkeeping (`benchmarks.bench_peers`): summaries, ratios, the table.

The benchmark itself is not run here (it installs five queues and takes minutes)."""

from __future__ import annotations

import asyncio

import pytest

from benchmarks import bench_peers
from benchmarks.bench_peers import LIB_1, LIB_128, PEERS, QUICK, render, summarise
from benchmarks.workload import concurrently


def _run(enqueue: float, drain: float) -> dict[str, float]:
    return {
        "enqueue": enqueue,
        "drain": drain,
        "enqueue_cpu_us": 1e6 / enqueue,
        "enqueue_server_us": 1.0,
        "drain_cpu_us": 1e6 / drain,
        "drain_server_us": 2.0,
    }


RUNS = {
    LIB_128: [_run(200_000, 800_000), _run(100_000, 400_000), _run(150_000, 600_000)],
    LIB_1: [_run(200_000, 20_000), _run(100_000, 10_000), _run(150_000, 15_000)],
    "arq": [_run(4_000, 2_000), _run(4_000, 2_000), _run(4_000, 3_000)],
}


def test_summarise_takes_medians_and_pairs_the_runs() -> None:
    rows = summarise(RUNS)
    arq = rows["arq"]
    assert arq["drain"] == {"median": 2_000, "min": 2_000, "max": 3_000, "runs": 3}
    assert arq["drain_cpu_us"] == pytest.approx(500)
    # the median of the per-run ratios (400, 200, 200), not the ratio of the medians (300)
    assert arq[f"{LIB_128} / this"] == pytest.approx(200)
    assert arq[f"{LIB_1} / this"] == pytest.approx(5)
    assert f"{LIB_128} / this" not in rows[LIB_1]


def test_render_shows_every_row_with_its_settings_and_ratios() -> None:
    report = {
        "results": {
            "peers": summarise(RUNS),
            "settings": {
                "arq": [
                    {"settings": "defaults", "n": 1_000, "drain": 210.0, "drain_cpu_us": 900.0, "drain_server_us": 90.0}
                ]
            },
        },
        "labels": {LIB_128: "**this library**, batch 128", LIB_1: "**this library**, batch 1", "arq": "arq 0.28.0"},
        "settings": {"arq": PEERS["arq"].best},
        "jobs": {LIB_128: 100_000, LIB_1: 20_000, "arq": 20_000},
        "reps": 3,
        "machine": {
            "library": "sharded-queue 1",
            "cpu": "cpu",
            "cores": 2,
            "memory_gib": 24,
            "os": "linux",
            "python": "3.11",
        },
        "redis_server": "7.0",
        "load_average": {"before": [0.5, 0, 0], "after": [0.7, 0, 0]},
    }
    table = render(report)
    lines = table.splitlines()
    arq = next(line for line in lines if line.startswith("| arq 0.28.0 |"))
    assert PEERS["arq"].best in arq
    assert "| 2,000 (2,000-3,000) |" in arq
    assert arq.endswith("| 200.0x, 5.00x |")
    assert "| **this library**, batch 128 |" in table
    assert "| arq | defaults | 1,000 | 210 | 900.0 + 90.0 |" in table
    assert "Load average 0.50 before, 0.70 after." in table


def test_sizes_and_peers() -> None:
    assert set(PEERS) == {"arq", "saq", "rq", "dramatiq", "taskiq"}
    assert set(bench_peers.GRID) == set(PEERS)
    for peer in PEERS.values():
        name, _, version = peer.requirements[0].partition("==")
        assert name.startswith(peer.name) and version, "each peer pinned to an exact version"
        assert peer.venv.parent.name == ".peers"
    assert QUICK.jobs("rq") < QUICK.jobs("arq") < QUICK.jobs(LIB_128)


def test_concurrently_sends_every_item_with_at_most_width_in_flight() -> None:
    sent: list[int] = []
    flying = peak = 0

    async def send(item: int) -> None:
        nonlocal flying, peak
        flying += 1
        peak = max(peak, flying)
        await asyncio.sleep(0)
        sent.append(item)
        flying -= 1

    asyncio.run(concurrently(list(range(50)), 4, send))
    assert sorted(sent) == list(range(50))
    assert peak == 4
