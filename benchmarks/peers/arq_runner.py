"""Runner for arq, in its own virtualenv: ``ARQ_VENV/bin/python -I arq_runner.py REDIS_URL``.

Speaks the JSON-line protocol of ``benchmarks/workload.py``. The job is
``noop(ctx, job_id, user_id, kind)``; arq pickles it (its default serializer).

- fill: ``ArqRedis.enqueue_job`` once per job (arq has no bulk enqueue), ``producers``
  calls in flight at a time;
- drain: one ``arq.worker.Worker`` in this process (``handle_signals=False``, as arq
  documents for a worker run inside another program), its keyword settings from
  the command's ``settings``, timed until the last job was performed.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from arq import create_pool  # type: ignore[import-not-found]
from arq.connections import RedisSettings  # type: ignore[import-not-found]
from arq.worker import Worker, func  # type: ignore[import-not-found]
from workload import Counter, concurrently, make_jobs, serve  # type: ignore[import-not-found]

COUNTER = Counter()
QUEUE = "bench"
URL = ""


async def noop(ctx: dict[str, Any], job_id: int, user_id: int, kind: str) -> None:
    COUNTER.add(1)


async def _setup(url: str) -> None:
    global URL
    URL = url


async def fill(command: dict[str, Any]) -> dict[str, Any]:
    jobs = make_jobs(command["n"])
    pool = await create_pool(RedisSettings.from_dsn(URL), default_queue_name=QUEUE)
    try:
        await pool.ping()

        async def send(job: Any) -> None:
            await pool.enqueue_job("noop", job.job_id, job.user_id, job.kind)

        started, cpu = time.perf_counter(), time.process_time()
        await concurrently(jobs, command["producers"], send)
        seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    finally:
        await pool.aclose()
    return {"seconds": seconds, "cpu": cpu, "registered": len(jobs)}


async def drain(command: dict[str, Any]) -> dict[str, Any]:
    COUNTER.reset(command["n"])
    assert COUNTER.done is not None
    pool = await create_pool(RedisSettings.from_dsn(URL), default_queue_name=QUEUE)
    await pool.ping()
    worker = Worker(
        functions=[func(noop, name="noop")],
        queue_name=QUEUE,
        redis_pool=pool,
        handle_signals=False,
        **command.get("settings", {}),
    )
    started, cpu = time.perf_counter(), time.process_time()
    task = asyncio.create_task(worker.async_run())
    finished = asyncio.create_task(COUNTER.done.wait())
    await asyncio.wait([finished, task], timeout=command.get("timeout", 600), return_when="FIRST_COMPLETED")
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    finished.cancel()
    task.cancel()  # the poll loop; the jobs' own tasks finish (their results, the in-progress keys)
    await asyncio.gather(task, *worker.tasks.values(), return_exceptions=True)
    left = await pool.zcard(QUEUE)
    await pool.aclose()
    if not COUNTER.done.is_set():
        raise RuntimeError(f"drain did not finish: {COUNTER.count}/{command['n']} performed")
    return COUNTER.report(seconds, cpu, left)


if __name__ == "__main__":
    serve({"fill": fill, "drain": drain}, _setup)
