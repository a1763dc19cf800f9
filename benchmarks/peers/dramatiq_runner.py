"""Runner for dramatiq with its Redis broker, in its own virtualenv:
``DRAMATIQ_VENV/bin/python -I dramatiq_runner.py REDIS_URL``.

Speaks the JSON-line protocol of ``benchmarks/workload.py``. The job is the actor
``noop(job_id, user_id, kind)`` on a ``RedisBroker`` with dramatiq's default
middleware; dramatiq encodes messages as JSON.

- fill: ``Actor.send`` once per job (dramatiq has no bulk send: a ``group`` sends its
  messages one by one), from this one thread;
- drain: one ``dramatiq.Worker`` in this process, as the ``dramatiq`` command starts
  in each of its processes: ``worker_threads`` threads, and ``queue_prefetch``
  (the ``dramatiq_queue_prefetch`` environment variable) when the command's
  ``settings`` name it; timed until the last job was performed.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import dramatiq  # type: ignore[import-not-found]
from dramatiq.brokers.redis import RedisBroker  # type: ignore[import-not-found]
from workload import Counter, make_jobs, serve  # type: ignore[import-not-found]

QUEUE = "bench"
URL = sys.argv[1]  # the benchmark's own redis-server


class ThreadCounter(Counter):
    """The workload's counter for jobs performed on worker threads: a lock around the count,
    a `threading.Event` for the last one."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.finished = threading.Event()
        super().__init__()

    def reset(self, target: int, rss_every: int = 0) -> None:
        super().reset(0, rss_every)
        self.target = target
        self.finished.clear()

    def add(self, n: int) -> None:
        with self.lock:
            self.count += n
            if self.count >= self.target:
                self.finished.set()


COUNTER = ThreadCounter()


def noop(job_id: int, user_id: int, kind: str) -> None:
    COUNTER.add(1)


def _broker() -> tuple[Any, Any]:
    """A fresh broker with the actor declared on it (a worker adds its middleware to its broker:
    each command gets its own, so nothing piles up from one drain to the next)."""
    broker = RedisBroker(url=URL)
    dramatiq.set_broker(broker)
    return broker, dramatiq.actor(noop, broker=broker, actor_name="noop", queue_name=QUEUE)


async def fill(command: dict[str, Any]) -> dict[str, Any]:
    jobs = make_jobs(command["n"])
    broker, actor = _broker()
    broker.client.ping()
    send = actor.send
    started, cpu = time.perf_counter(), time.process_time()
    for job in jobs:
        send(job.job_id, job.user_id, job.kind)
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    broker.close()
    return {"seconds": seconds, "cpu": cpu, "registered": len(jobs)}


async def drain(command: dict[str, Any]) -> dict[str, Any]:
    COUNTER.reset(command["n"])
    settings = dict(command.get("settings", {}))
    prefetch = settings.pop("queue_prefetch", None)
    broker, _ = _broker()
    broker.client.ping()
    worker = dramatiq.Worker(broker, **settings)
    if prefetch is not None:
        worker.queue_prefetch = prefetch
    started, cpu = time.perf_counter(), time.process_time()
    worker.start()
    done = COUNTER.finished.wait(command.get("timeout", 600))
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    worker.stop()
    left = broker.client.llen(f"{broker.namespace}:{QUEUE}")
    broker.close()
    if not done:
        raise RuntimeError(f"drain did not finish: {COUNTER.count}/{command['n']} performed")
    return COUNTER.report(seconds, cpu, left)


if __name__ == "__main__":
    serve({"fill": fill, "drain": drain})
