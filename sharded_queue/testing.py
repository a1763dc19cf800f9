"""Helpers for tests and notebooks: fresh queues, run-until-drained, waiting.

Used by the project's own tests and meant for users' tests too::

    queue = fresh_queue()
    await queue.register(MyHandler, *requests)
    await drain(Worker(queue), loops=4)
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

from .queue import Queue
from .settings import Settings
from .settings import settings as default_settings
from .storage import Storage
from .worker import Worker


def fresh_queue(settings: Settings | None = None, prefix: str = "sq") -> Queue:
    """A queue on its own embedded fakeredis server, isolated from every other."""
    import fakeredis

    client = fakeredis.FakeAsyncRedis(server=fakeredis.FakeServer())
    return Queue(Storage(client, prefix), settings=settings or default_settings)


async def wait_until(
    condition: Callable[[], Awaitable[bool] | bool], timeout: float = 10.0, interval: float = 0.005
) -> None:
    """Wait until ``condition()`` is true (it may be async).

    Raises:
        TimeoutError: still false after ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if isinstance(result, Awaitable):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"condition not met within {timeout}s")
        await asyncio.sleep(interval)


async def is_drained(worker: Worker) -> bool:
    """True when no message of the worker's handlers waits or is unacked."""
    storage = worker.queue.storage
    for name in worker.specs:
        if await storage.pending(name):
            return False
    return True


async def drain(worker: Worker, loops: int = 1, timeout: float = 60.0) -> int:
    """Run ``loops`` loops of ``worker`` until its handlers' tubes are empty, then stop them.

    Returns:
        How many messages the loops took off the queue.

    Raises:
        TimeoutError: not drained within ``timeout`` seconds (the loops are cancelled).
    """
    tasks = [asyncio.create_task(worker.loop()) for _ in range(loops)]
    try:
        await wait_until(lambda: _drained_or_failed(worker, tasks), timeout=timeout)
        worker.stop()
        results: list[Any] = await asyncio.gather(*tasks)
        return sum(results)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        worker.control.stopping = False


async def _drained_or_failed(worker: Worker, tasks: list[asyncio.Task[int]]) -> bool:
    for task in tasks:
        if task.done():
            task.result()  # re-raise a loop's crash instead of waiting for the timeout
    return await is_drained(worker)
