"""Batches that wait to fill: ``python -m benchmarks.bench_linger [--quick]`` (in ``make bench``).

The trade-off of ``batch_linger``: fewer, fuller batches (fewer ``perform`` calls and
storage calls per request) against the time a request waits for its batch to fill.
Requests arrive open loop, Poisson at ``--rate`` a second over 16 threads, for
``--seconds``, on a ``redis-server`` started here on a free loopback port; one worker
of 16 loops (one a thread), batch 32, a ``perform`` that sleeps 0.5 ms, drains them with each linger of
`LINGERS` in turn (the order rotates between rounds). Per linger: the mean batch,
``perform`` calls and the storage server's script time (``INFO commandstats``) per
request, and the latency from ``register`` to the start of ``perform`` (p50, p99).
Next to each, `simulator.dispatch.linger_batch`: the mean batch and wait of the
size-or-timeout model for one thread's arrivals (rate / 16), which ignores the round
trips and ``perform`` itself.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np

from sharded_queue import Handler, Queue, RequestRoute, Route, Settings, Worker
from sharded_queue.testing import RedisServer, register_at, wait_until
from simulator.dispatch import linger_batch

LINGERS = (0.0, 0.005, 0.02, 0.05)
"""Seconds of ``batch_linger`` compared."""
THREADS, BATCH, LOOPS, PERFORM = 16, 32, 16, 0.0005


@dataclass
class Job:
    n: int
    at: float  # when registered (this process's clock: the producer and the worker are one process)


class Lingering(Handler):
    name = "bench-linger"
    starts: ClassVar[list[float]] = []  # per request: seconds from its arrival to its perform
    sizes: ClassVar[list[int]] = []  # per perform: its batch

    @classmethod
    async def route(cls, *requests: Job) -> list[RequestRoute]:
        return [RequestRoute(r, Route(thread=r.n % THREADS)) for r in requests]

    async def perform(self, *requests: Job) -> None:
        now = time.time()
        Lingering.starts += [now - r.at for r in requests]
        Lingering.sizes.append(len(requests))
        await asyncio.sleep(PERFORM)


async def run(url: str, linger: float, rate: float, seconds: float, seed: int) -> dict[str, float]:
    """One linger: register open loop while the worker drains; what it cost and how long requests waited."""
    Lingering.starts, Lingering.sizes = [], []
    settings = Settings(key_prefix=f"bench-linger-{seed}-{linger}", worker_batch_size=BATCH, worker_batch_linger=linger)
    queue = Queue(url, settings=settings)
    client = queue.storage.client
    before = float((await client.info("commandstats")).get("cmdstat_evalsha", {}).get("usec", 0))
    gaps = np.random.default_rng(seed).exponential(1 / rate, int(rate * seconds))
    at = [float(x) for x in np.cumsum(gaps)]
    worker = Worker(queue, handlers=[Lingering])
    loops = [asyncio.create_task(worker.loop()) for _ in range(LOOPS)]

    async def registering() -> None:
        start = time.monotonic()
        jobs = [Job(n, 0.0) for n in range(len(at))]
        for job, offset in zip(jobs, at, strict=True):
            job.at = time.time() - (time.monotonic() - start) + offset  # stamped with its due time
        await register_at(queue, Lingering, jobs, at)

    await registering()
    await wait_until(lambda: len(Lingering.starts) >= len(at), timeout=60)
    worker.stop()
    await asyncio.gather(*loops)
    after = float((await client.info("commandstats")).get("cmdstat_evalsha", {}).get("usec", 0))
    await queue.close()
    waits = np.asarray(Lingering.starts)
    return {
        "batch": float(np.mean(Lingering.sizes)),
        "performs": len(Lingering.sizes) / len(at),
        "server_us": (after - before) / len(at),
        "p50_ms": float(np.median(waits)) * 1000,
        "p99_ms": float(np.quantile(waits, 0.99)) * 1000,
    }


def report(results: dict[float, list[dict[str, float]]], rate: float) -> str:
    """A Markdown table: per linger, medians of the rounds, and the model's batch and wait."""
    lines = [
        "| linger | mean batch | performs per request | server us per request | p50 wait, ms | p99 wait, ms "
        "| model: batch, wait ms |",
        "|---|---|---|---|---|---|---|",
    ]
    for linger, runs in results.items():
        cells = [statistics.median(run[key] for run in runs) for key in ("batch", "performs", "server_us")]
        waits = [statistics.median(run[key] for run in runs) for key in ("p50_ms", "p99_ms")]
        size, wait = linger_batch(rate / THREADS, BATCH, linger)
        lines.append(
            f"| {linger * 1000:g} ms | {cells[0]:.2f} | {cells[1]:.3f} | {cells[2]:.2f} | {waits[0]:.1f} "
            f"| {waits[1]:.1f} | {size:.2f}, {wait * 1000:.1f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="a smoke run: one round of one second")
    parser.add_argument("--rate", type=float, default=2000.0, help="requests a second (default 2,000)")
    parser.add_argument("--seconds", type=float, default=None, help="seconds of arrivals per run (default 3)")
    parser.add_argument("--rounds", type=int, default=None, help="rounds over the lingers (default 3)")
    args = parser.parse_args(argv)
    seconds = args.seconds or (1.0 if args.quick else 3.0)
    rounds = args.rounds or (1 if args.quick else 3)
    results: dict[float, list[dict[str, float]]] = {linger: [] for linger in LINGERS}
    with tempfile.TemporaryDirectory(prefix="sq-bench-linger-") as directory:
        server = RedisServer(Path(directory))
        try:
            for round_ in range(rounds):
                order = LINGERS[round_ % len(LINGERS) :] + LINGERS[: round_ % len(LINGERS)]
                for linger in order:
                    results[linger].append(asyncio.run(run(server.url, linger, args.rate, seconds, round_)))
        finally:
            server.stop()
    print(report(results, args.rate))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
