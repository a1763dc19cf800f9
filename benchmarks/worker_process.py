"""A worker process for the crash tests: ``python benchmarks/worker_process.py URL LOG LOOPS``.

Settings come from ``QUEUE_*`` variables. Every perform appends one line to LOG
with ``os.write`` (it survives kill -9 of this process) *before* returning, so a
batch that was acked is always in the log:

    <clock> <time> <pid> <event> <thread> <seq,seq,...>

``clock`` is a Redis counter, a global order of performs across processes.
``TEST_CLOCK_SKEW`` (seconds) sets this host's ``time.time`` that far off;
``TEST_CLOCK_URL`` keeps the counter in another Redis (one that is not full);
``TEST_BLOCK_SEQ`` names a request whose perform blocks the event loop for
``TEST_BLOCK_SECONDS``; ``TEST_LOG_LEVEL`` is the level of the library's log
lines written to stderr (default WARNING). A request ``[thread, seq, attempt]``
(the failover runs') is logged as ``seq:attempt``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import time

import redis.asyncio as aioredis

from sharded_queue import Handler, Queue, RequestRoute, Route, Worker

LOG_FD = -1
CLOCK: aioredis.Redis | None = None
PERFORM_SECONDS = float(os.environ.get("TEST_PERFORM_SECONDS", "0.002"))
BLOCK_SEQ = int(os.environ.get("TEST_BLOCK_SEQ", "-1"))  # this request blocks the event loop...
BLOCK_SECONDS = float(os.environ.get("TEST_BLOCK_SECONDS", "0"))  # ...this long (time.sleep)


def log(event: str, thread: str = "-", seqs: str = "-", clock: int = 0) -> None:
    os.write(LOG_FD, f"{clock} {time.time():.6f} {os.getpid()} {event} {thread} {seqs}\n".encode())


class ChaosHandler(Handler):
    """Requests are ``[thread, seq]``; each perform is stamped with the global clock."""

    name = "chaos"

    @classmethod
    async def route(cls, *requests: list[int]) -> list[RequestRoute]:
        return [RequestRoute(r, Route(thread=r[0])) for r in requests]

    async def perform(self, *requests: list[int]) -> None:
        assert CLOCK is not None
        thread = str(requests[0][0])
        seqs = ",".join(":".join(map(str, r[1:])) for r in requests)
        log("start", thread, seqs)
        if any(r[1] == BLOCK_SEQ for r in requests):
            time.sleep(BLOCK_SECONDS)  # a blocking call: no heartbeat can run meanwhile
        await asyncio.sleep(PERFORM_SECONDS)
        clock = await CLOCK.incr("test:clock")
        log("perform", thread, seqs, clock)

    async def stop(self) -> None:
        log("stop")


async def main(url: str, loops: int) -> None:
    global CLOCK
    CLOCK = aioredis.Redis.from_url(os.environ.get("TEST_CLOCK_URL", url))
    queue = Queue(url)
    log("ready")
    taken = await Worker(queue, handlers=[ChaosHandler]).serve(loops)
    log("exit", seqs=str(taken))
    await queue.close()
    await CLOCK.aclose()


def skew_clock(seconds: float) -> None:
    """Make this process's wall clock ``seconds`` off, as on a host with a wrong clock."""
    real = time.time
    time.time = lambda: real() + seconds


if __name__ == "__main__":
    skew_clock(float(os.environ.get("TEST_CLOCK_SKEW", "0")))
    url, path, loops = sys.argv[1], sys.argv[2], int(sys.argv[3])
    LOG_FD = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    level = os.environ.get("TEST_LOG_LEVEL", "WARNING")
    logging.basicConfig(stream=sys.stderr, level=level, format=f"{os.getpid()} %(levelname)s %(message)s")
    asyncio.run(main(url, loops))
