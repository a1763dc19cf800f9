"""Scheduling benchmarks: how late deferred requests run, and what ``if_not_exists`` costs.

``python -m benchmarks.bench_scheduling [--quick]`` (``make bench`` runs it too). It
starts its own ``redis-server`` on a free loopback port and prints:

1. **lateness**: deferred requests due at random moments over a few seconds, on
   random threads, and an idle worker with default settings (8 loops,
   coordinator delay 1 s): how long after its due time (storage server's
   clock) each request's ``perform`` started, p50/p99/max;
2. **register**: requests per second of `register` in calls of 1,000 over 16
   threads, plain, with ``if_not_exists=True``, and deferred, alternating the
   three, median of several runs; and the cost of each per message relative to
   plain.
"""

from __future__ import annotations

import asyncio
import random
import statistics
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import ClassVar

from benchmarks import quick_main
from sharded_queue import Handler, Queue, RequestRoute, Route, Settings, Worker
from sharded_queue.testing import RedisServer, wait_until


class Late(Handler):
    """Notes, for each request (its due time), the server's time when its perform started."""

    name = "bench:late"
    started: ClassVar[list[tuple[float, float]]] = []
    queue: ClassVar[Queue]

    @classmethod
    async def route(cls, *requests: float) -> list[RequestRoute]:
        return [RequestRoute(r, Route(thread=int(r * 1000) % 16)) for r in requests]

    async def perform(self, *requests: float) -> None:
        now = await self.queue.storage.server_time()
        self.started.extend((due, now) for due in requests)


class Plain(Handler):
    name = "bench:plain"

    @classmethod
    async def route(cls, *requests: int) -> list[RequestRoute]:
        return [RequestRoute(r, Route(thread=r % 16)) for r in requests]

    async def perform(self, *requests: int) -> None: ...


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def lateness(url: str, count: int, spread: float) -> dict[str, float]:
    """Defer ``count`` requests to random due times within ``spread`` seconds; an idle worker performs them."""
    queue = Queue(url, settings=Settings(key_prefix="late"))  # default settings otherwise
    Late.queue, Late.started = queue, []
    worker = Worker(queue, handlers=[Late])
    loops = [asyncio.create_task(worker.loop()) for _ in range(8)]
    await asyncio.sleep(0.5)  # the loops are up and idle
    rng = random.Random(5)
    now = await queue.storage.server_time()
    dues = sorted(now + 0.5 + rng.uniform(0, spread) for _ in range(count))
    for due in dues:  # one call each, all registered up front
        await queue.register(Late, due, defer=datetime.fromtimestamp(due, UTC))
    await wait_until(lambda: len(Late.started) == count, timeout=spread + 30)
    worker.stop()
    await asyncio.gather(*loops)
    await queue.close()
    late = [(started - due) * 1000 for due, started in Late.started]
    return {
        "count": count,
        "early": sum(1 for value in late if value < 0),
        "p50_ms": percentile(late, 0.5),
        "p99_ms": percentile(late, 0.99),
        "max_ms": max(late),
    }


async def register_rates(url: str, n: int, reps: int) -> dict[str, float]:
    """Median requests/s of register in calls of 1,000: plain, if_not_exists, deferred (alternating)."""
    queue = Queue(url, settings=Settings(key_prefix="reg"))
    options: dict[str, dict[str, object]] = {
        "plain": {},
        "if_not_exists": {"if_not_exists": True},
        "deferred": {"defer": 3600},
    }
    rates: dict[str, list[float]] = {name: [] for name in options}
    for rep in range(reps):
        for name, extra in options.items():
            await queue.storage.client.flushall()
            base = rep * n * 10  # distinct requests: if_not_exists drops nothing
            started = time.perf_counter()
            for first in range(base, base + n, 1000):
                await queue.register(Plain, *range(first, first + 1000), **extra)  # type: ignore[arg-type]
            rates[name].append(n / (time.perf_counter() - started))
    await queue.close()
    return {name: statistics.median(values) for name, values in rates.items()}


async def run(quick: bool) -> None:
    with tempfile.TemporaryDirectory(prefix="sq-bench-scheduling-") as directory:
        server = RedisServer(Path(directory))
        try:
            count, spread = (100, 3.0) if quick else (400, 8.0)
            result = await lateness(server.url, count, spread)
            print(f"lateness of deferred requests (an idle worker, default settings, {count} due over {spread:g} s)")
            print(
                f"  p50 {result['p50_ms']:.1f} ms, p99 {result['p99_ms']:.1f} ms, max {result['max_ms']:.1f} ms; "
                f"started before due: {result['early']}"
            )
            rates = await register_rates(server.url, 20_000 if quick else 100_000, 3 if quick else 5)
            print("register, calls of 1,000 over 16 threads (median requests/s; cost per message against plain)")
            for name, rate in rates.items():
                print(f"  {name:>13}: {rate:>9,.0f}/s  {rates['plain'] / rate:.2f}x")
        finally:
            server.stop()


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m benchmarks.bench_scheduling``."""
    return quick_main("python -m benchmarks.bench_scheduling", __doc__, run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
