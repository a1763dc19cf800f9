"""Runner for rq, in its own virtualenv: ``RQ_VENV/bin/python -I rq_runner.py REDIS_URL``.

Speaks the JSON-line protocol of ``benchmarks/workload.py`` (rq is synchronous: each
command blocks this runner's event loop while it runs, which nothing else needs).
The job is ``noop(job_id, user_id, kind)``; rq pickles it (its default serializer).

- fill: ``Queue.enqueue_many`` of ``Queue.prepare_data`` items, one pipeline per call
  of ``chunk`` jobs (rq's documented bulk enqueue); the job options (``result_ttl``)
  come from the command's ``job`` options;
- drain: one ``SimpleWorker`` (jobs run in this process, no fork per job) working
  the queue in burst mode, its keyword settings from the command's ``settings``,
  logging at WARNING (no line per job), timed until the last job was performed.
  Its teardown would then wait up to a minute for its pub/sub thread (rq polls
  that channel every 60 s, and redis-py joins the thread on stop): `BenchWorker`
  only unsubscribes, and the benchmark ends this runner process after each drain,
  the idle daemon thread with it.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from redis import Redis
from rq import Queue, SimpleWorker  # type: ignore[import-not-found]
from workload import Counter, chunks, make_jobs, serve  # type: ignore[import-not-found]

COUNTER = Counter()
QUEUE = "bench"
URL = sys.argv[1]  # the benchmark's own redis-server
LAST: list[float] = []  # perf_counter and process_time when the last job was performed


class BenchWorker(SimpleWorker):  # type: ignore[misc]
    """rq's `SimpleWorker`, less the wait for its pub/sub thread at teardown (see above)."""

    def unsubscribe(self) -> None:
        if self.pubsub_thread:
            self.pubsub.unsubscribe()


def noop(job_id: int, user_id: int, kind: str) -> None:
    COUNTER.add(1)
    if COUNTER.count == COUNTER.target:
        LAST[:] = [time.perf_counter(), time.process_time()]


async def fill(command: dict[str, Any]) -> dict[str, Any]:
    calls = chunks(make_jobs(command["n"]), command["chunk"])
    options = command.get("job", {})
    connection = Redis.from_url(URL)
    try:
        connection.ping()
        queue = Queue(QUEUE, connection=connection)
        started, cpu = time.perf_counter(), time.process_time()
        for call in calls:
            queue.enqueue_many(
                [Queue.prepare_data(noop, (job.job_id, job.user_id, job.kind), **options) for job in call]
            )
        seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    finally:
        connection.close()
    return {"seconds": seconds, "cpu": cpu, "registered": command["n"]}


async def drain(command: dict[str, Any]) -> dict[str, Any]:
    COUNTER.reset(command["n"])
    LAST.clear()
    connection = Redis.from_url(URL)
    try:
        connection.ping()
        queue = Queue(QUEUE, connection=connection)
        worker = BenchWorker([queue], connection=connection, **command.get("settings", {}))
        started, cpu = time.perf_counter(), time.process_time()
        worker.work(burst=True, logging_level="WARNING")
        left = queue.count
    finally:
        connection.close()
    if COUNTER.count != command["n"]:
        raise RuntimeError(f"drain did not finish: {COUNTER.count}/{command['n']} performed")
    return COUNTER.report(LAST[0] - started, LAST[1] - cpu, left)


if __name__ == "__main__":
    serve({"fill": fill, "drain": drain})
