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

import statistics
import time
from dataclasses import dataclass
from typing import Any

MODES = ("none", "rate")


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
    from benchmarks.turns import BEFORE, arguments, run_once, take_turns  # not at the top: see turns

    args = arguments(__doc__, argv)
    modes = (*MODES, BEFORE) if args.baseline else MODES

    def run(mode: str, url: str) -> dict[str, float]:  # the baseline runs this benchmark's mode "none"
        return dict(run_once(__file__, mode, url, args.n, args.baseline, "none" if mode == BEFORE else mode))

    print(report(take_turns(modes, args.reps, run)))
    print(f"\n{args.n:,} requests over 16 threads, calls of 1,000, 8 loops, batch 128; {args.reps} runs per mode.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
