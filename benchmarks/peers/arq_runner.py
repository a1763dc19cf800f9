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
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from arq import create_pool  # type: ignore[import-not-found]
from arq.connections import RedisSettings  # type: ignore[import-not-found]
from arq.worker import Worker, func  # type: ignore[import-not-found]
from workload import Counter, make_jobs, serve, timed_enqueue, work_until_counted  # type: ignore[import-not-found]

COUNTER = Counter()
QUEUE = "bench"
URL = sys.argv[1]  # the benchmark's own redis-server


async def noop(ctx: dict[str, Any], job_id: int, user_id: int, kind: str) -> None:
    COUNTER.add(1)


async def fill(command: dict[str, Any]) -> dict[str, Any]:
    jobs = make_jobs(command["n"])
    pool = await create_pool(RedisSettings.from_dsn(URL), default_queue_name=QUEUE)
    try:
        await pool.ping()

        async def send(job: Any) -> None:
            await pool.enqueue_job("noop", job.job_id, job.user_id, job.kind)

        return await timed_enqueue(jobs, command["producers"], send)
    finally:
        await pool.aclose()


async def drain(command: dict[str, Any]) -> dict[str, Any]:
    COUNTER.reset(command["n"])
    pool = await create_pool(RedisSettings.from_dsn(URL), default_queue_name=QUEUE)
    await pool.ping()
    worker = Worker(
        functions=[func(noop, name="noop")],
        queue_name=QUEUE,
        redis_pool=pool,
        handle_signals=False,
        **command.get("settings", {}),
    )
    task, seconds, cpu = await work_until_counted(COUNTER, worker.async_run(), command.get("timeout", 600))
    task.cancel()  # the poll loop; the jobs' own tasks finish (their results, the in-progress keys)
    await asyncio.gather(task, *worker.tasks.values(), return_exceptions=True)
    left = await pool.zcard(QUEUE)
    await pool.aclose()
    if COUNTER.count < COUNTER.target:
        raise RuntimeError(f"drain did not finish: {COUNTER.count}/{command['n']} performed")
    return COUNTER.report(seconds, cpu, left)


if __name__ == "__main__":
    serve({"fill": fill, "drain": drain})
