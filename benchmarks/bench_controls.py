"""What thread controls cost: ``python -m benchmarks.bench_controls [--quick] [--baseline DIR]`` (in ``make bench``).

Register and drain on a ``redis-server`` started here on a free loopback port
(never the one on 6379): ``n`` small dataclass requests routed over 16 threads,
registered in calls of 1,000, then drained by one worker of 8 loops, batch 128,
with a no-op ``perform``. Modes:

- ``none``: no control set (the default): what every user pays;
- ``rate``: ``thread_rate_limit`` and ``rate_limit`` set far above what the run
  reaches, so every cycle takes the control branch (buckets read and spent) and no
  batch is ever cut: the cost of the branch itself;
- ``before`` (with ``--baseline DIR``): the code in ``DIR`` (a copy of the commit
  before the controls, made with ``git archive``).

The measure is the storage server's own time in the scripts (``INFO commandstats``,
``usec`` of ``EVALSHA``) per request, which other programs on the machine disturb
far less than throughput; the throughput is printed too. Each run is a fresh
subprocess on a flushed server; the modes take turns, and each is reported as the
median of its runs with the spread (min-max).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
MODES = ("none", "rate")
BEFORE = "before"


@dataclass
class Req:
    n: int


async def _run(mode: str, url: str, n: int) -> dict[str, float]:
    """One run, in this (sub)process: register then drain; server usec per request of each."""
    from sharded_queue import Handler, Queue, RequestRoute, Route, Settings, Worker
    from sharded_queue.testing import drain

    class Bench(Handler):
        name = "bench-controls"

        @classmethod
        async def route(cls, *requests: Req) -> list[RequestRoute]:
            return [RequestRoute(r, Route(thread=r.n % 16)) for r in requests]

        async def perform(self, *requests: Req) -> None:
            pass

    if mode == "rate":
        Bench.rate_limit = "100000000/s"  # type: ignore[attr-defined]
        Bench.thread_rate_limit = "100000000/s"  # type: ignore[attr-defined]
    queue = Queue(url, settings=Settings(key_prefix="bench-controls"))
    client = queue.storage.client
    await client.config_resetstat()
    started = time.perf_counter()
    for start in range(0, n, 1000):
        await queue.register(Bench, *[Req(i) for i in range(start, min(n, start + 1000))])
    register = time.perf_counter() - started, await _script_usec(client)
    await client.config_resetstat()
    started = time.perf_counter()
    await drain(Worker(queue), loops=8, timeout=600)
    process = time.perf_counter() - started, await _script_usec(client)
    await queue.close()
    return {
        "register_per_s": n / register[0],
        "register_server_us": register[1] / n,
        "process_per_s": n / process[0],
        "process_server_us": process[1] / n,
    }


async def _script_usec(client: Any) -> float:
    stats = (await client.info("commandstats")).get("cmdstat_evalsha", {})
    return float(stats.get("usec", 0))


def run_once(mode: str, url: str, n: int, baseline: Path | None) -> dict[str, float]:
    """One run in a fresh subprocess: this checkout, or ``baseline`` for ``before``."""
    where = baseline if mode == BEFORE and baseline is not None else ROOT
    script = Path(__file__).resolve()
    command = [sys.executable, str(script), "--run", "none" if mode == BEFORE else mode, "--url", url, "--n", str(n)]
    done = subprocess.run(
        command, cwd=where, env={"PYTHONPATH": str(where)}, capture_output=True, text=True, timeout=900, check=False
    )
    if done.returncode:
        raise RuntimeError(f"{mode} run failed:\n{done.stderr[-2000:]}")
    result: dict[str, float] = json.loads(done.stdout.splitlines()[-1])
    return result


def _flush(url: str) -> None:
    import redis

    redis.Redis.from_url(url).flushall()


def _cell(values: list[float], digits: int) -> str:
    return f"{statistics.median(values):,.{digits}f} ({min(values):,.{digits}f}-{max(values):,.{digits}f})"


def report(results: dict[str, list[dict[str, float]]]) -> str:
    """A markdown table: per mode, the medians (min-max) of its runs."""
    lines = [
        "| mode | register/s | register: server us/request | process/s | process: server us/request |",
        "|---|---|---|---|---|",
    ]
    for mode, runs in results.items():
        cells = [
            _cell([run[key] for run in runs], digits)
            for key, digits in (
                ("register_per_s", 0),
                ("register_server_us", 3),
                ("process_per_s", 0),
                ("process_server_us", 3),
            )
        ]
        lines.append(f"| {mode} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="a smoke run: 10,000 requests, 2 runs per mode")
    parser.add_argument("--n", type=int, default=None, help="requests per run (default 100,000)")
    parser.add_argument("--reps", type=int, default=None, help="runs per mode (default 5)")
    parser.add_argument("--baseline", type=Path, help="also run the library found in this directory (mode 'before')")
    parser.add_argument("--run", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    n = args.n or (10_000 if args.quick else 100_000)
    if args.run:
        print(json.dumps(asyncio.run(_run(args.run, args.url, n))))
        return 0
    reps = args.reps or (2 if args.quick else 5)
    from sharded_queue.testing import RedisServer

    modes = (*MODES, BEFORE) if args.baseline else MODES
    results: dict[str, list[dict[str, float]]] = {mode: [] for mode in modes}
    with tempfile.TemporaryDirectory(prefix="sq-bench-controls-") as directory:
        server = RedisServer(Path(directory))
        try:
            for rep in range(reps):
                for mode in modes[rep % len(modes) :] + modes[: rep % len(modes)]:  # rotate who goes first
                    _flush(server.url)
                    results[mode].append(run_once(mode, server.url, n, args.baseline))
        finally:
            server.stop()
    print(report(results))
    print(f"\n{n:,} requests over 16 threads, calls of 1,000, 8 loops, batch 128; {reps} runs per mode.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
