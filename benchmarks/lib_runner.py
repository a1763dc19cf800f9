"""Runner for this library: ``python -m benchmarks.lib_runner REDIS_URL``.

Speaks the JSON-line protocol of `benchmarks.workload.serve`. Leases, heartbeats
and fencing are always on (they cannot be switched off); settings are the
library's defaults except the batch size a command asks for and whatever its
``settings`` object names (`Settings` fields).

`BenchHandler` is also what ``sharded-queue worker benchmarks.lib_runner:BenchHandler``
runs in the multi-process benchmark, and the ``route()`` the bare register loop
calls (`benchmarks.bare`); it is stored under the name ``bench:job`` whichever
module name it was imported under.
"""

from __future__ import annotations

import asyncio
import random
import time
from typing import Any, ClassVar

from sharded_queue import Handler, Queue, RequestRoute, Route, Settings, Worker

from .workload import Counter, Job, chunks, make_jobs, serve

COUNTER = Counter()
STARTS: dict[int, float] = {}
URL = ""


class BenchHandler(Handler):
    """No-op handler: routes by user id over ``threads`` threads, counts what it performs."""

    name = "bench:job"
    threads: ClassVar[int] = 16

    @classmethod
    async def route(cls, *requests: Job) -> list[RequestRoute]:
        threads = cls.threads
        return [RequestRoute(request, Route(thread=request.user_id % threads)) for request in requests]

    async def perform(self, *requests: Job) -> None:
        COUNTER.add(len(requests))


class LatencyHandler(Handler):
    """Records when ``perform`` starts for each job (``time.perf_counter``, system-wide on Linux)."""

    name = "bench:latency"

    @classmethod
    async def route(cls, *requests: Job) -> list[RequestRoute]:
        return [RequestRoute(request, Route(thread=request.user_id % BenchHandler.threads)) for request in requests]

    async def perform(self, *requests: Job) -> None:
        now = time.perf_counter()
        for request in requests:
            STARTS[request.job_id] = now
        COUNTER.add(len(requests))


def _queue(batch: int = 128, settings: dict[str, Any] | None = None) -> Queue:
    return Queue(URL, settings=Settings(**{"worker_batch_size": batch, **(settings or {})}))


async def _setup(url: str) -> None:
    global URL
    URL = url


async def fill(command: dict[str, Any]) -> dict[str, Any]:
    """Register ``n`` jobs over ``threads`` threads in calls of ``chunk``; time it."""
    BenchHandler.threads = command["threads"]
    calls = chunks(make_jobs(command["n"]), command["chunk"])
    async with _queue() as queue:
        await queue.storage.client.ping()  # connect outside the clock
        started, cpu = time.perf_counter(), time.process_time()
        for call in calls:
            await queue.register(BenchHandler, *call)
        seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    return {"seconds": seconds, "cpu": cpu, "registered": command["n"]}


async def drain(command: dict[str, Any]) -> dict[str, Any]:
    """Perform the ``n`` waiting jobs with ``loops`` loops of one worker; time until all were performed."""
    BenchHandler.threads = command["threads"]
    COUNTER.reset(command["n"], command.get("rss_every", 0))
    assert COUNTER.done is not None
    async with _queue(command["batch"], command.get("settings")) as queue:
        worker = Worker(queue, handlers=[BenchHandler])
        rss_before = COUNTER.samples[:]
        started, cpu = time.perf_counter(), time.process_time()
        loops = [asyncio.create_task(worker.loop()) for _ in range(command["loops"])]
        finished = asyncio.create_task(COUNTER.done.wait())
        await asyncio.wait([finished, *loops], timeout=command.get("timeout", 300), return_when="FIRST_COMPLETED")
        seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
        worker.stop()
        results = await asyncio.wait_for(asyncio.gather(*loops, return_exceptions=True), 60)
        finished.cancel()
        errors = [repr(r) for r in results if isinstance(r, BaseException)]
        left = await queue.pending(BenchHandler)
    if not COUNTER.done.is_set():
        raise RuntimeError(f"drain did not finish: {COUNTER.count}/{command['n']} performed, errors {errors}")
    return COUNTER.report(seconds, cpu, left, errors, rss_before)


_latency: dict[str, Any] = {}


async def latency_start(command: dict[str, Any]) -> dict[str, Any]:
    """Start an idle worker (one loop, default settings) that records perform start times."""
    BenchHandler.threads = command["threads"]
    STARTS.clear()
    COUNTER.reset(command["samples"])
    queue = _queue()
    worker = Worker(queue, handlers=[LatencyHandler])
    loops = [asyncio.create_task(worker.loop()) for _ in range(command.get("loops", 1))]
    _latency.update(queue=queue, worker=worker, loops=loops)
    await asyncio.sleep(0.3)  # let the loops subscribe to wake-ups and go idle
    return {"ok": True}


async def latency_collect(command: dict[str, Any]) -> dict[str, Any]:
    """Wait for every sample to be performed, stop the worker, return the start times."""
    assert COUNTER.done is not None
    queue, worker, loops = _latency["queue"], _latency["worker"], _latency["loops"]
    try:
        await asyncio.wait_for(COUNTER.done.wait(), command.get("timeout", 120))
    finally:
        worker.stop()
        await asyncio.wait_for(asyncio.gather(*loops, return_exceptions=True), 60)
        await queue.close()
    return {"starts": {str(k): v for k, v in STARTS.items()}}


async def latency_produce(command: dict[str, Any]) -> dict[str, Any]:
    """Register single jobs, ``gap`` seconds apart (uniform in [lo, hi]); return when each call returned."""
    BenchHandler.threads = command["threads"]
    rng = random.Random(command.get("seed", 1))
    lo, hi = command["gap"]
    returned: dict[str, float] = {}
    start = command.get("first_id", 0)
    async with _queue() as queue:
        await queue.storage.client.ping()
        for job in make_jobs(command["samples"], start):
            await asyncio.sleep(rng.uniform(lo, hi))
            await queue.register(LatencyHandler, job)
            returned[str(job.job_id)] = time.perf_counter()
    return {"returned": returned}


if __name__ == "__main__":
    serve(
        {
            "fill": fill,
            "drain": drain,
            "latency_start": latency_start,
            "latency_collect": latency_collect,
            "latency_produce": latency_produce,
        },
        _setup,
    )
