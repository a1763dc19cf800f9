"""Real runs for the accuracy suite: worker loops in their own OS processes, as in production.

`run_workers` starts ``processes`` worker processes (``python -m
simulator.lab.realrun ...``, each a `Worker` with tracing on serving its share of
the loops) and registers the requests from this process: open-loop arrivals
at their offsets once every loop is up, or a backlog all at once *before* the
workers start (so that registering does not compete with draining for the
machine's cores: a drain then measures the workers alone). It waits until the
queue is drained, stops the workers with SIGTERM (a graceful stop:
each loop acks its batch and releases its thread) and returns their traces
merged into one. Traces travel as JSON files, never pickle.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sharded_queue import Handler, Queue, Settings, Worker
from sharded_queue.testing import RedisServer, register_at, wait_until
from sharded_queue.trace import load_trace

from .handlers import handler_from_spec

if TYPE_CHECKING:
    import pandas as pd


def on_a_server(url: str | None, run: Callable[[str], Awaitable[None]]) -> None:
    """``run(url)``; without a URL, on a redis-server started for it on a free loopback port."""
    if url:
        asyncio.run(run(url))
        return
    with tempfile.TemporaryDirectory(prefix="sq-lab-") as directory:
        server = RedisServer(Path(directory))
        try:
            asyncio.run(run(server.url))
        finally:
            server.stop()


def split(loops: int, processes: int) -> list[int]:
    """Loops per process, round robin (as the twin spreads them)."""
    return [len(range(index, loops, processes)) for index in range(processes)]


async def run_workers(
    handler: type[Handler],
    spec: dict[str, Any],
    requests: Sequence[Any],
    *,
    url: str,
    settings: Settings,
    loops: int,
    processes: int = 1,
    at: Sequence[float] | None = None,
    chunk: int = 1000,
    timeout: float = 300.0,
) -> pd.DataFrame:
    """Run ``requests`` through worker processes and return the merged trace.

    Each worker process traces with ``Worker(trace=True)`` and writes what it measured
    of its run (`sharded_queue.meter`) with its trace, as a production worker does with
    ``sharded-queue worker --trace FILE``: the merged trace's ``attrs["meter"]`` holds one
    reading per process, which `calibrate` reads. Nothing here measures anything of
    its own: this is a convenience that starts the processes and registers.

    Args:
        handler: The handler this process registers with (the workers rebuild it from ``spec``).
        spec: JSON-able description the worker processes rebuild the handler from
            (`simulator.lab.handlers.handler_from_spec`).
        requests: The requests, in registration order.
        url: The Redis URL (the workers and this process must share it).
        settings: Settings of the run (key prefix, batch size, delays).
        loops: Loops in all, spread over ``processes`` round robin.
        processes: Worker processes.
        at: Open-loop arrival offsets (seconds from the start), else a backlog.
        chunk: Requests per `Queue.register` call for a backlog.
        timeout: Seconds before giving up.
    """
    with tempfile.TemporaryDirectory(prefix="sq-realrun-") as directory:
        children: list[subprocess.Popen[bytes]] = []
        outputs = [Path(directory) / f"trace-{index}.json" for index in range(processes)]
        queue = Queue(url, settings=settings)
        try:
            if at is None:
                for first in range(0, len(requests), chunk):
                    await queue.register(handler, *requests[first : first + chunk])
            for output, count in zip(outputs, split(loops, processes), strict=True):
                children.append(_spawn(spec, url, settings, count, output))
            await _ready(children, time.monotonic() + 60)
            if at is not None:
                await register_at(queue, handler, requests, at)
            await wait_until(lambda: _drained(queue, handler, children), timeout=timeout, interval=0.01)
            _stop(children)
        finally:
            await queue.close()
            _reap(children)
        return load_trace(*map(str, outputs))


def _stop(children: list[subprocess.Popen[bytes]]) -> None:
    """Stop the worker processes gracefully (SIGTERM: each loop acks its batch, releases its thread)."""
    for child in children:
        child.send_signal(signal.SIGTERM)
    for child in children:
        if child.wait(60) != 0:
            raise RuntimeError(f"worker process exited with {child.returncode}")


def _reap(children: list[subprocess.Popen[bytes]]) -> None:
    """Kill the worker processes still running (after a failure) and close their pipes."""
    for child in children:
        if child.poll() is None:
            child.kill()
            child.wait()
        if child.stdout is not None:
            child.stdout.close()


async def _drained(queue: Queue, handler: type[Handler], children: list[subprocess.Popen[bytes]]) -> bool:
    for child in children:
        if child.poll() is not None:
            raise RuntimeError(f"worker process exited early with {child.returncode}")
    return await queue.pending(handler) == 0


def _spawn(spec: dict[str, Any], url: str, settings: Settings, loops: int, output: Path) -> subprocess.Popen[bytes]:
    environment = dict(os.environ)
    arguments = json.dumps({"spec": spec, "url": url, "settings": settings.as_dict(), "loops": loops})
    return subprocess.Popen(
        [sys.executable, "-m", "simulator.lab.realrun", arguments, str(output)],
        stdout=subprocess.PIPE,
        env=environment,
    )


async def _ready(children: list[subprocess.Popen[bytes]], deadline: float) -> None:
    """Wait for every worker's ``ready`` line (all its loops idle, wake-ups subscribed)."""
    for child in children:
        assert child.stdout is not None
        line = await asyncio.wait_for(asyncio.to_thread(child.stdout.readline), max(deadline - time.monotonic(), 1))
        if line.strip() != b"ready":
            raise RuntimeError(f"worker process did not start: {line!r}")


async def _serve(arguments: dict[str, Any], output: Path) -> None:
    logging.getLogger("sharded_queue").setLevel(logging.ERROR)  # the graceful stop's warning is expected
    handler = handler_from_spec(arguments["spec"])
    settings = Settings(**arguments["settings"])
    loops = int(arguments["loops"])
    queue = Queue(arguments["url"], settings=settings)
    worker = Worker(queue, handlers=[handler], settings=settings, trace=True)
    serving = asyncio.create_task(worker.serve(loops))
    # every loop has polled once: idle (nothing to do yet), or bound to a thread of a backlog
    await wait_until(lambda: worker.ready_loops >= loops or serving.done(), timeout=60)
    print("ready", flush=True)
    await serving
    worker.save_trace(str(output))
    await queue.close()


if __name__ == "__main__":
    asyncio.run(_serve(json.loads(sys.argv[1]), Path(sys.argv[2])))
