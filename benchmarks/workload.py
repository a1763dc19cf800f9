"""The benchmark workload and the runners' line protocol, shared by every system.

Standard library only: the peer runner imports this module from the peer's own
virtualenv, where neither this project nor msgspec is installed. Every system
(this library, the peer, the bare redis-py ceiling) registers the same `Job`
objects, built by `make_jobs`, routed to the same threads by `thread_of`.

A runner is a long-lived subprocess speaking JSON lines: the parent writes one
command object per line on the runner's stdin and reads one reply per line.
Timings are taken inside the runner with `time.perf_counter`, so process
start-up, imports and the pipe never count.
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import sys
import time
import traceback
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any, TextIO


@dataclass
class Job:
    """The benchmark request: a small dataclass, as in the issue."""

    job_id: int
    user_id: int
    kind: str


def make_jobs(n: int, start: int = 0) -> list[Job]:
    """``n`` jobs with user ids spread evenly over any number of threads."""
    return [Job(i, (i * 7919) % 10007, "notify") for i in range(start, start + n)]


def thread_of(job: Job, threads: int) -> int:
    """The thread a job is routed to: the same rule for every system."""
    return job.user_id % threads


def chunks(jobs: list[Job], size: int) -> list[list[Job]]:
    """``jobs`` cut into registration calls of ``size``."""
    return [jobs[i : i + size] for i in range(0, len(jobs), size)]


async def concurrently(items: list[Any], width: int, send: Callable[[Any], Awaitable[Any]]) -> None:
    """Await ``send(item)`` for every item, ``width`` calls in flight at a time (``width`` producers
    sharing one iterator): how a producer without a bulk method keeps its round trips overlapping."""
    pending = iter(items)

    async def producer() -> None:
        for item in pending:
            await send(item)

    await asyncio.gather(*(producer() for _ in range(width)))


async def timed_enqueue(items: list[Any], width: int, send: Callable[[Any], Awaitable[Any]]) -> dict[str, Any]:
    """`concurrently`, timed: what a runner's ``fill`` answers (wall and CPU seconds, items sent)."""
    started, cpu = time.perf_counter(), time.process_time()
    await concurrently(items, width, send)
    return {"seconds": time.perf_counter() - started, "cpu": time.process_time() - cpu, "registered": len(items)}


async def work_until_counted(
    counter: Counter, work: Coroutine[Any, Any, Any], timeout: float
) -> tuple[asyncio.Task[Any], float, float]:
    """Run ``work`` (a worker's main coroutine) as a task until ``counter`` reaches its target, the
    task ends or ``timeout`` passes: the task, still running, and the wall and CPU seconds it took."""
    assert counter.done is not None
    started, cpu = time.perf_counter(), time.process_time()
    task = asyncio.create_task(work)
    finished = asyncio.create_task(counter.done.wait())
    await asyncio.wait([finished, task], timeout=timeout, return_when="FIRST_COMPLETED")
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    finished.cancel()
    return task, seconds, cpu


def rss_bytes() -> int:
    """Resident set size of this process, from ``/proc/self/statm``."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class Counter:
    """Counts performed requests; ``done`` is set once ``target`` were seen.

    With ``rss_every`` it also samples this process's RSS every that many
    requests (the memory benchmark).
    """

    def __init__(self) -> None:
        self.reset(0)

    def reset(self, target: int, rss_every: int = 0) -> None:
        self.count = 0
        self.target = target
        self.rss_every = rss_every
        self.next_sample = rss_every
        self.samples: list[tuple[int, int]] = []
        self.done = asyncio.Event() if target else None

    def add(self, n: int) -> None:
        self.count += n
        if self.rss_every and self.count >= self.next_sample:
            self.samples.append((self.count, rss_bytes()))
            self.next_sample += self.rss_every
        if self.done is not None and self.count >= self.target:
            self.done.set()

    def report(
        self, seconds: float, cpu: float, left: int, errors: list[str] | None = None, rss: list[Any] | None = None
    ) -> dict[str, Any]:
        """What a runner's ``drain`` answers: time, CPU, counts, RSS samples and peak."""
        return {
            "seconds": seconds,
            "cpu": cpu,
            "performed": self.count,
            "left": left,
            "errors": errors or [],
            "rss": (rss or []) + self.samples,
            "maxrss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        }


Op = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]


def serve(ops: dict[str, Op], setup: Callable[[str], Awaitable[None]] | None = None) -> None:
    """Run a runner: answer JSON-line commands from stdin until EOF or ``{"op": "quit"}``.

    The Redis URL is ``sys.argv[1]``. Replies go to the original stdout; anything
    else printed (warnings, libraries) is sent to stderr so it cannot corrupt
    the protocol. A failing command replies ``{"error": ...}`` and the runner
    keeps serving.
    """
    url = sys.argv[1]
    out: TextIO = os.fdopen(os.dup(sys.stdout.fileno()), "w", buffering=1)
    sys.stdout = sys.stderr

    async def main() -> None:
        loop = asyncio.get_running_loop()
        if setup is not None:
            await setup(url)
        while True:
            line = await loop.run_in_executor(None, sys.stdin.readline)
            if not line or json.loads(line).get("op") == "quit":
                # The peer installs a SIGTERM handler and its loops can outlive
                # a cancellation: leave at once rather than wait for stray tasks.
                out.flush()
                os._exit(0)
            command = json.loads(line)
            try:
                reply = await ops[command["op"]](command)
            except Exception as exc:
                reply = {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}
            out.write(json.dumps(reply) + "\n")

    asyncio.run(main())
