"""Helpers for tests and notebooks: fresh queues, run-until-drained, waiting.

Used by the project's own tests and notebooks, and meant for users' tests too::

    queue = fresh_queue()
    await queue.register(MyHandler, *requests)
    await drain(Worker(queue), loops=4)

    trace = await trace_run(MyHandler, requests, loops=4)   # one row per performed message
"""

from __future__ import annotations

import asyncio
import random
import shutil
import socket
import subprocess
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import redis

from .handler import Handler
from .queue import Queue
from .settings import Settings
from .settings import settings as default_settings
from .storage import Storage
from .worker import Worker

if TYPE_CHECKING:
    import pandas as pd


def fresh_queue(settings: Settings | None = None, prefix: str = "sq") -> Queue:
    """A queue on its own embedded fakeredis server, isolated from every other."""
    import fakeredis

    client = fakeredis.FakeAsyncRedis(server=fakeredis.FakeServer())
    return Queue(Storage(client, prefix), settings=settings or default_settings)


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def free_cluster_port() -> int:
    """A free port P below 55536 whose cluster bus port P + 10000 is free too."""
    for port in random.Random().sample(range(20000, 45000), 200):
        try:
            with socket.socket() as a, socket.socket() as b:
                a.bind(("127.0.0.1", port))
                b.bind(("127.0.0.1", port + 10000))
                return port
        except OSError:
            continue
    raise RuntimeError("no free port pair for a cluster node")


class RedisServer:
    """A throwaway ``redis-server`` on a free loopback port, for tests and benchmarks.

    Started on creation (``--save ""``, no AOF unless ``extra`` says so, files
    in ``directory``); `stop` ends it, `start` starts it again on the same port
    and directory (a restart). Never touches a server it did not start.
    """

    def __init__(self, directory: Path, *extra: str, port: int | None = None) -> None:
        self.port = port or free_port()
        self.directory = directory
        self.extra = extra
        self.process: subprocess.Popen[bytes] | None = None
        self.start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = shutil.which("redis-server")
        assert binary is not None
        self.process = subprocess.Popen(
            [
                binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.directory),
                "--logfile",
                str(self.directory / "redis.log"),
                *self.extra,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        client = redis.Redis(port=self.port, socket_timeout=5, socket_connect_timeout=5)
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline or self.process.poll() is not None:
                    raise RuntimeError(f"redis-server on port {self.port} did not start") from None
                time.sleep(0.02)
        client.close()

    def stop(self, kill: bool = False) -> None:
        if self.process is not None and self.process.poll() is None:
            (self.process.kill if kill else self.process.terminate)()
            self.process.wait(10)
        self.process = None


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


async def drain(worker: Worker, loops: int = 1, timeout: float = 60.0, feed: Awaitable[object] | None = None) -> int:
    """Run ``loops`` loops of ``worker`` until its handlers' tubes are empty, then stop them.

    Args:
        worker: The worker to run.
        loops: Concurrent loops.
        timeout: Seconds before giving up.
        feed: Registrations to run alongside the loops (e.g. open-loop arrivals);
            the queue counts as drained only once it has finished.

    Returns:
        How many messages the loops took off the queue.

    Raises:
        TimeoutError: not drained within ``timeout`` seconds (the loops are cancelled).
    """
    tasks = [asyncio.create_task(worker.loop()) for _ in range(loops)]
    if feed is not None:
        # start feeding once every loop is up and looking for work, as in a running system
        await wait_until(lambda: len(worker.wakeups.idle) >= loops or any(t.done() for t in tasks), timeout=timeout)
        tasks.append(asyncio.create_task(_as_count(feed)))
    fed = tasks[-1] if feed is not None else None
    try:
        await wait_until(lambda: _drained_or_failed(worker, tasks, fed), timeout=timeout)
        worker.stop()
        results: list[Any] = await asyncio.gather(*tasks)
        return sum(results)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        worker.control.stopping = False


async def _as_count(feed: Awaitable[object]) -> int:
    await feed
    return 0


async def _drained_or_failed(worker: Worker, tasks: list[asyncio.Task[int]], fed: asyncio.Task[int] | None) -> bool:
    for task in tasks:
        if task.done():
            task.result()  # re-raise a loop's crash instead of waiting for the timeout
    return (fed is None or fed.done()) and await is_drained(worker)


async def trace_run(
    handler: type[Handler],
    requests: Sequence[Any],
    *,
    at: Sequence[float] | None = None,
    loops: int = 1,
    queue: Queue | None = None,
    settings: Settings | None = None,
    chunk: int = 1000,
    timeout: float = 120.0,
) -> pd.DataFrame:
    """Run a workload through real workers and return its trace, in one call.

    Args:
        handler: The handler to register and perform.
        requests: The requests, in registration order.
        at: Arrival offsets in seconds from the start (non-decreasing), one per
            request, for an open-loop workload; without it the requests are
            registered at once as a backlog (in calls of ``chunk``). Either way
            the loops are started first, as in a running system.
        loops: Concurrent worker loops.
        queue: Where to run; default a `fresh_queue` (embedded, isolated).
        settings: Settings of the fresh queue and the worker.
        chunk: Requests per `Queue.register` call for a backlog.
        timeout: Seconds before giving up.

    Returns:
        The trace DataFrame (schema in `sharded_queue.trace`).
    """
    queue = queue or fresh_queue(settings)
    worker = Worker(queue, handlers=[handler], settings=settings, trace=True)
    if at is None:
        feed: Awaitable[object] = _backlog(queue, handler, requests, chunk)
    elif len(at) != len(requests):
        raise ValueError(f"{len(at)} arrival times for {len(requests)} requests")
    else:
        feed = register_at(queue, handler, requests, at)
    await drain(worker, loops=loops, timeout=timeout, feed=feed)
    trace: pd.DataFrame = worker.trace()
    return trace


async def _backlog(queue: Queue, handler: type[Handler], requests: Sequence[Any], chunk: int) -> None:
    """Register everything at once, in calls of ``chunk``."""
    for start in range(0, len(requests), chunk):
        await queue.register(handler, *requests[start : start + chunk])


async def register_at(queue: Queue, handler: type[Handler], requests: Sequence[Any], at: Sequence[float]) -> int:
    """Register each request at its offset in seconds from now (open-loop arrivals); requests due
    together go in one `Queue.register` call. Returns the calls made."""
    start = time.monotonic()
    index = calls = 0
    while index < len(requests):
        delay = at[index] - (time.monotonic() - start)
        if delay > 0:
            await asyncio.sleep(delay)
        now = time.monotonic() - start
        end = index
        while end < len(requests) and at[end] <= now:
            end += 1
        await queue.register(handler, *requests[index : max(end, index + 1)])
        index = max(end, index + 1)
        calls += 1
    return calls
