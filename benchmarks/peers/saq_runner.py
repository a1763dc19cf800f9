"""Runner for saq, in its own virtualenv: ``SAQ_VENV/bin/python -I saq_runner.py REDIS_URL``.

Speaks the JSON-line protocol of ``benchmarks/workload.py``. The job is
``noop(ctx, *, job_id, user_id, kind)``; saq encodes jobs as JSON.

- fill: ``Queue.enqueue`` once per job (saq has no bulk enqueue; ``Queue.map`` also
  waits for the results), ``producers`` calls in flight at a time; the job's
  ``ttl`` comes from the command's ``job`` options;
- drain: one ``saq.Worker`` in this process, its keyword settings from the
  command's ``settings`` (``concurrency``), timed until the last job was performed.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from saq import Queue, Worker  # type: ignore[import-not-found]
from workload import Counter, concurrently, make_jobs, serve  # type: ignore[import-not-found]

COUNTER = Counter()
QUEUE = "bench"
URL = ""


async def noop(ctx: dict[str, Any], *, job_id: int, user_id: int, kind: str) -> None:
    COUNTER.add(1)


async def _setup(url: str) -> None:
    global URL
    URL = url


async def fill(command: dict[str, Any]) -> dict[str, Any]:
    jobs = make_jobs(command["n"])
    options = command.get("job", {})
    queue = Queue.from_url(URL, name=QUEUE)
    try:
        await queue.connect()

        async def send(job: Any) -> None:
            await queue.enqueue("noop", job_id=job.job_id, user_id=job.user_id, kind=job.kind, **options)

        started, cpu = time.perf_counter(), time.process_time()
        await concurrently(jobs, command["producers"], send)
        seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    finally:
        await queue.disconnect()
    return {"seconds": seconds, "cpu": cpu, "registered": len(jobs)}


async def drain(command: dict[str, Any]) -> dict[str, Any]:
    COUNTER.reset(command["n"])
    assert COUNTER.done is not None
    queue = Queue.from_url(URL, name=QUEUE)
    await queue.connect()
    worker = Worker(queue, functions=[("noop", noop)], **command.get("settings", {}))
    started, cpu = time.perf_counter(), time.process_time()
    task = asyncio.create_task(worker.start())
    finished = asyncio.create_task(COUNTER.done.wait())
    await asyncio.wait([finished, task], timeout=command.get("timeout", 600), return_when="FIRST_COMPLETED")
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    finished.cancel()
    await worker.stop()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    left = await queue.count("queued")
    await queue.disconnect()
    if not COUNTER.done.is_set():
        raise RuntimeError(f"drain did not finish: {COUNTER.count}/{command['n']} performed")
    return COUNTER.report(seconds, cpu, left)


if __name__ == "__main__":
    serve({"fill": fill, "drain": drain}, _setup)
