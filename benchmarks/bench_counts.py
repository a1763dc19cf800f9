"""Counting benchmarks: what reading a handler's totals costs as its threads grow (issue 26, item 12).

``python -m benchmarks.bench_counts [--quick]`` starts its own ``redis-server``
on a free loopback port and, on it and on the embedded fakeredis, for
``threads`` one-message threads of one handler:

1. **drain**: seconds for `sharded_queue.testing.drain` (one worker, 8 loops,
   which polls `Queue.pending` until it reads 0) to perform them all;
2. **alone**: seconds for the same worker to perform them all when nothing
   polls (the loops stop once the handler has seen every request): the
   worker's own cost, against which to read **drain**;
3. **pending** and **stats**: milliseconds of one `Queue.pending` and of one
   `Queue.stats` (the first page and the totals) with every thread still waiting.

A drain that does not finish within ``--timeout`` seconds is reported as such.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path
from typing import ClassVar

from sharded_queue import Handler, Queue, RequestRoute, Route, Settings, Worker
from sharded_queue.testing import RedisServer, drain, fresh_queue


class OneEach(Handler):
    """One thread per request; sets ``done`` once ``expected`` requests were performed."""

    name = "bench:one-each"
    expected: ClassVar[int] = 0
    performed: ClassVar[int] = 0
    done: ClassVar[asyncio.Event]

    @classmethod
    async def route(cls, *requests: int) -> list[RequestRoute]:
        return [RequestRoute(r, Route(thread=r)) for r in requests]

    async def perform(self, *requests: int) -> None:
        OneEach.performed += len(requests)
        if OneEach.performed >= OneEach.expected:
            OneEach.done.set()


SETTINGS = Settings(key_prefix="counts", coordinator_delay=0.05, worker_empty_limit=1, worker_empty_pause=0.0)


async def register(queue: Queue, threads: int) -> None:
    OneEach.expected, OneEach.performed, OneEach.done = threads, 0, asyncio.Event()
    for first in range(0, threads, 1000):
        await queue.register(OneEach, *range(first, min(first + 1000, threads)))


async def alone(queue: Queue, threads: int, timeout: float) -> float | None:
    """Seconds for 8 loops to perform ``threads`` one-message threads, nothing polling."""
    await register(queue, threads)
    worker = Worker(queue, handlers=[OneEach], settings=SETTINGS)
    started = time.perf_counter()
    loops = [asyncio.create_task(worker.loop()) for _ in range(8)]
    try:
        await asyncio.wait_for(OneEach.done.wait(), timeout)
    except TimeoutError:
        return None
    finally:
        worker.stop()
        await asyncio.gather(*loops, return_exceptions=True)
    return time.perf_counter() - started


async def measure(queue: Queue, threads: int, timeout: float) -> dict[str, float | None]:
    """Register ``threads`` one-message threads, time a pending and a stats call, then drain."""
    await register(queue, threads)
    await queue.pending(OneEach)  # a first read may set up what later reads use
    started = time.perf_counter()
    assert await queue.pending(OneEach) == threads
    pending_ms = (time.perf_counter() - started) * 1000
    started = time.perf_counter()
    await queue.stats(handlers=[OneEach])
    stats_ms = (time.perf_counter() - started) * 1000
    started = time.perf_counter()
    try:
        await drain(Worker(queue, handlers=[OneEach], settings=SETTINGS), loops=8, timeout=timeout)
    except TimeoutError:
        drained = None
    else:
        drained = time.perf_counter() - started
    return {"pending_ms": pending_ms, "stats_ms": stats_ms, "drain_s": drained}


def seconds(value: float | None, timeout: float) -> str:
    return f"{value:9.2f}" if value is not None else f"{'> ' + format(timeout, 'g'):>9}"


async def fresh(backend: str, url: str) -> Queue:
    if backend == "fakeredis":
        return fresh_queue(SETTINGS, prefix="counts")
    queue = Queue(url, settings=SETTINGS)
    await queue.storage.client.flushall()
    return queue


async def run(sizes: list[int], timeout: float) -> None:
    with tempfile.TemporaryDirectory(prefix="sq-bench-counts-") as directory:
        server = RedisServer(Path(directory))
        try:
            print(f"{'storage':>9} {'threads':>8} {'pending ms':>11} {'stats ms':>9} {'drain s':>9} {'alone s':>9}")
            for size in sizes:
                for backend in ("fakeredis", "redis"):
                    queue = await fresh(backend, server.url)
                    try:
                        result = await measure(queue, size, timeout)
                    finally:
                        await queue.close()
                    queue = await fresh(backend, server.url)
                    try:
                        by_itself = await alone(queue, size, timeout)
                    finally:
                        await queue.close()
                    print(
                        f"{backend:>9} {size:>8,} {result['pending_ms']:>11.1f} {result['stats_ms']:>9.1f} "
                        f"{seconds(result['drain_s'], timeout)} {seconds(by_itself, timeout)}",
                        flush=True,
                    )
        finally:
            server.stop()


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m benchmarks.bench_counts``."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_counts", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="5,000 threads only")
    parser.add_argument("--threads", type=int, nargs="*", help="sizes to run (default 5,000 and 20,000)")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds before a drain is given up")
    args = parser.parse_args(argv)
    sizes = args.threads or ([5_000] if args.quick else [5_000, 20_000])
    asyncio.run(run(sizes, args.timeout))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
