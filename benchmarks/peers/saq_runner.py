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
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from saq import Queue, Worker  # type: ignore[import-not-found]
from workload import Counter, make_jobs, serve, timed_enqueue, work_until_counted  # type: ignore[import-not-found]

COUNTER = Counter()
QUEUE = "bench"
URL = sys.argv[1]  # the benchmark's own redis-server


async def noop(ctx: dict[str, Any], *, job_id: int, user_id: int, kind: str) -> None:
    COUNTER.add(1)


async def fill(command: dict[str, Any]) -> dict[str, Any]:
    jobs = make_jobs(command["n"])
    options = command.get("job", {})
    queue = Queue.from_url(URL, name=QUEUE)
    try:
        await queue.connect()

        async def send(job: Any) -> None:
            await queue.enqueue("noop", job_id=job.job_id, user_id=job.user_id, kind=job.kind, **options)

        return await timed_enqueue(jobs, command["producers"], send)
    finally:
        await queue.disconnect()


async def drain(command: dict[str, Any]) -> dict[str, Any]:
    COUNTER.reset(command["n"])
    queue = Queue.from_url(URL, name=QUEUE)
    await queue.connect()
    worker = Worker(queue, functions=[("noop", noop)], **command.get("settings", {}))
    task, seconds, cpu = await work_until_counted(COUNTER, worker.start(), command.get("timeout", 600))
    await worker.stop()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    left = await queue.count("queued")
    await queue.disconnect()
    if COUNTER.count < COUNTER.target:
        raise RuntimeError(f"drain did not finish: {COUNTER.count}/{command['n']} performed")
    return COUNTER.report(seconds, cpu, left)


if __name__ == "__main__":
    serve({"fill": fill, "drain": drain})
