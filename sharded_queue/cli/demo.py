"""``sharded-queue demo``: the seed example on the embedded default, showing what ran where."""

from __future__ import annotations

import argparse
import asyncio
import time
import warnings
from collections import defaultdict
from dataclasses import dataclass
from typing import ClassVar

from ..errors import EmbeddedStorageWarning
from ..handler import Handler, RequestRoute, Route
from ..queue import Queue
from ..worker import Worker


@dataclass
class NotifyRequest:
    """The seed example's request."""

    user_id: int
    urgent: bool = False


class NotifyHandler(Handler):
    """The seed example's handler: users spread over 3 threads, urgent ones first."""

    name = "demo:notify"
    orders = ("urgent", "normal")
    performed: ClassVar[list[tuple[str, str, str, list[int]]]] = []

    @classmethod
    async def route(cls, *requests: NotifyRequest) -> list[RequestRoute]:
        return [
            RequestRoute(r, Route(thread=str(r.user_id % 3), order="urgent" if r.urgent else "normal"))
            for r in requests
        ]

    async def perform(self, *requests: NotifyRequest) -> None:
        task = asyncio.current_task()
        loop = task.get_name() if task else "?"
        first = requests[0]
        order = "urgent" if first.urgent else "normal"
        self.performed.append((loop, str(first.user_id % 3), order, [r.user_id for r in requests]))


async def demo() -> None:
    """The seed scenario on the embedded default, plus urgent requests registered last."""
    queue = Queue()
    await queue.register(NotifyHandler, *[NotifyRequest(i) for i in range(1, 10)])
    await queue.register(NotifyHandler, *[NotifyRequest(i, urgent=True) for i in (10, 11, 12)])
    print("registered users 1..9 (normal) and 10..12 (urgent), routed by user_id % 3 into threads 0, 1, 2")
    worker = Worker(queue)
    started = time.perf_counter()
    loops = [asyncio.create_task(worker.loop(4), name=f"loop-{n}") for n in (1, 2, 3)]
    counts = await asyncio.gather(*loops)
    elapsed = time.perf_counter() - started
    by_thread: dict[str, list[str]] = defaultdict(list)
    for loop, thread, order, users in NotifyHandler.performed:
        by_thread[thread].append(f"{loop} performed {order:>6} batch {users}")
    for thread in sorted(by_thread):
        print(f"thread {thread}:")
        for line in by_thread[thread]:
            print(f"  {line}")
    print(f"3 loops performed {sum(counts)} requests in {elapsed * 1000:.1f} ms; FIFO per thread, urgent first")
    await queue.close()


def demo_command(arguments: argparse.Namespace) -> int:
    """``demo``: the seed example on the embedded default (in-process: its own worker performs all)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", EmbeddedStorageWarning)
        asyncio.run(demo())
    return 0
