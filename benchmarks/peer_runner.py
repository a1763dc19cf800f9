"""Runner for the peer, PyPI ``sharded-queue==0.2.10``, in its own virtualenv.

Run by `benchmarks.bench_queue` as ``PEER_VENV/bin/python -I peer_runner.py URL``;
both projects ship a package named ``sharded_queue``, so the peer can never share
a process with this library. Speaks the protocol of ``workload.serve``.

The peer's documented Redis set-up: ``RedisStorage`` and ``RedisLock`` over a
``redis.asyncio.Redis`` with ``decode_responses=True``; one ``Worker`` per
concurrent loop (a peer worker binds one tube at a time). Its settings are its
defaults (batch 128, empty limit 16, empty pause 0.1 s, acquire delay 1 s, lock
TTL 24 h) except the batch size a command asks for and whatever its ``peer``
object sets: ``empty_limit``, ``empty_pause``, ``acquire_delay`` (the
`WorkerSettings` fields this workload touches) and ``lock_timeout``. The peer
has no lease fencing and no heartbeat: it prolongs its lock after each batch.
"""

# The sharded_queue imported here is the peer, a third-party package, not this project:
# ruff: noqa: I001
from __future__ import annotations

import asyncio
import os
import sys
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from redis.asyncio import Redis
from sharded_queue import Handler, Queue, Route, Worker  # type: ignore[import-not-found]
from sharded_queue.drivers import RedisLock, RedisStorage  # type: ignore[import-not-found]
from sharded_queue.settings import LockSettings, StorageSettings, WorkerSettings  # type: ignore[import-not-found]
from workload import Counter, Job, chunks, make_jobs, serve  # type: ignore[import-not-found]

COUNTER = Counter()
THREADS = 16
URL = ""
RUN = 0  # each fill gets its own key prefixes, so nothing of an earlier run can interfere


class PeerHandler(Handler):  # type: ignore[misc]
    """No-op handler: routes by user id, counts what it handles."""

    @classmethod
    async def route(cls, *requests: Job) -> list[Route]:
        threads = THREADS
        return [Route(thread=request.user_id % threads) for request in requests]

    async def handle(self, *requests: Job) -> None:
        COUNTER.add(len(requests))


def _client() -> Redis:
    return Redis.from_url(URL, decode_responses=True)


def _storage(client: Redis) -> RedisStorage:
    return RedisStorage(client, StorageSettings(prefix=f"tube{RUN}_"))


async def _setup(url: str) -> None:
    global URL
    URL = url


async def fill(command: dict[str, Any]) -> dict[str, Any]:
    """Register ``n`` jobs over ``threads`` threads in calls of ``chunk``; time it."""
    global THREADS, RUN
    THREADS = command["threads"]
    RUN += 1
    calls = chunks(make_jobs(command["n"]), command["chunk"])
    client = _client()
    try:
        await client.ping()
        queue = Queue(_storage(client))
        started, cpu = time.perf_counter(), time.process_time()
        for call in calls:
            await queue.register(PeerHandler, *call)
        seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    finally:
        await client.aclose()
    return {"seconds": seconds, "cpu": cpu, "registered": command["n"]}


async def _stop(loops: list[asyncio.Task[Any]]) -> None:
    """Cancel the peer's endless loops. One cancellation is sometimes swallowed
    inside a Redis call and the loop carries on, so cancel until they are done."""
    for _ in range(40):
        pending = [loop for loop in loops if not loop.done()]
        if not pending:
            return
        for loop in pending:
            loop.cancel()
        await asyncio.wait(pending, timeout=0.25)
    print(f"peer: {sum(not loop.done() for loop in loops)} loops would not stop", file=sys.stderr)


async def drain(command: dict[str, Any]) -> dict[str, Any]:
    """Handle the ``n`` waiting jobs with ``loops`` peer workers; time until all were handled."""
    global THREADS
    THREADS = command["threads"]
    COUNTER.reset(command["n"], command.get("rss_every", 0))
    assert COUNTER.done is not None
    client = _client()
    storage = _storage(client)
    queue = Queue(storage)
    tuned = dict(command.get("peer", {}))
    lock_timeout = tuned.pop("lock_timeout", None)
    settings = WorkerSettings(batch_size=command["batch"], **tuned)
    lock_settings = LockSettings(prefix=f"lock{RUN}_", **({} if lock_timeout is None else {"timeout": lock_timeout}))
    try:
        await client.ping()
        started, cpu = time.perf_counter(), time.process_time()
        loops = [
            asyncio.create_task(Worker(RedisLock(client, lock_settings), queue, settings=settings).loop())
            for _ in range(command["loops"])
        ]
        finished = asyncio.create_task(COUNTER.done.wait())
        await asyncio.wait([finished, *loops], timeout=command.get("timeout", 300), return_when="FIRST_COMPLETED")
        seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
        finished.cancel()
        await _stop(loops)
        left = sum([await storage.length(pipe) for pipe in await storage.pipes()])
    finally:
        await client.aclose()
    if not COUNTER.done.is_set():
        raise RuntimeError(f"drain did not finish: {COUNTER.count}/{command['n']} handled")
    return COUNTER.report(seconds, cpu, left)


if __name__ == "__main__":
    serve({"fill": fill, "drain": drain}, _setup)
