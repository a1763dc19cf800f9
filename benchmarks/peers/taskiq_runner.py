"""Runner for taskiq with taskiq-redis, in its own virtualenv:
``TASKIQ_VENV/bin/python -I taskiq_runner.py REDIS_URL``.

Speaks the JSON-line protocol of ``benchmarks/workload.py``. The job is the task
``noop(job_id, user_id, kind)``; taskiq encodes messages as JSON. The broker is
taskiq-redis's ``RedisStreamBroker`` (a consumer group; a message is acknowledged
after it ran, so a crashed worker's messages are claimed again), with the
keyword arguments of the command's ``broker``.

- fill: ``kiq`` once per job (taskiq has no bulk kick), ``producers`` calls in flight
  at a time;
- drain: taskiq's ``Receiver`` in this process, set up as each ``taskiq worker``
  process sets it up (a thread pool for sync tasks, ``listen`` until a shutdown
  event), its keyword settings from the command's ``settings``
  (``max_async_tasks``, ``max_prefetch``), timed until the last job was performed.
"""

from __future__ import annotations

import asyncio
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from redis.asyncio import Redis
from taskiq.receiver import Receiver  # type: ignore[import-not-found]
from taskiq_redis import RedisStreamBroker  # type: ignore[import-not-found]
from workload import Counter, make_jobs, serve, timed_enqueue, work_until_counted  # type: ignore[import-not-found]

COUNTER = Counter()
QUEUE = "bench"
URL = sys.argv[1]  # the benchmark's own redis-server


async def noop(job_id: int, user_id: int, kind: str) -> None:
    COUNTER.add(1)


def _broker(command: dict[str, Any]) -> tuple[Any, Any]:
    """A fresh broker with the task declared on it."""
    broker = RedisStreamBroker(URL, queue_name=QUEUE, **command.get("broker", {}))
    return broker, broker.task(task_name="noop")(noop)


async def fill(command: dict[str, Any]) -> dict[str, Any]:
    jobs = make_jobs(command["n"])
    broker, task = _broker(command)
    await broker.startup()  # the stream's consumer group must exist before the first message
    try:

        async def send(job: Any) -> None:
            await task.kiq(job.job_id, job.user_id, job.kind)

        return await timed_enqueue(jobs, command["producers"], send)
    finally:
        await broker.shutdown()


async def _left() -> int:
    """Messages never delivered: the stream group's lag."""
    async with Redis.from_url(URL) as client:
        groups = await client.xinfo_groups(QUEUE)
        return sum(int(group.get("lag") or 0) for group in groups)


async def drain(command: dict[str, Any]) -> dict[str, Any]:
    """Perform the waiting jobs; then ask the receiver to shut down, waiting for it a few seconds
    at most. Its shutdown can hang (a cancelled read inside the broker's ``listen``), so the
    benchmark runs each drain in a fresh runner process, which it ends afterwards."""
    COUNTER.reset(command["n"])
    broker, _ = _broker(command)
    broker.is_worker_process = True
    shutdown = asyncio.Event()
    pool = ThreadPoolExecutor()
    receiver = Receiver(broker, executor=pool, **command.get("settings", {}))
    task, seconds, cpu = await work_until_counted(COUNTER, receiver.listen(shutdown), command.get("timeout", 600))
    shutdown.set()
    await asyncio.wait([task], timeout=3)
    left = await _left()
    if COUNTER.count < COUNTER.target:
        raise RuntimeError(f"drain did not finish: {COUNTER.count}/{command['n']} performed")
    return COUNTER.report(seconds, cpu, left) | {"stopped": task.done()}


if __name__ == "__main__":
    serve({"fill": fill, "drain": drain})
