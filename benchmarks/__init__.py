"""Benchmarks of sharded_queue: ``make bench`` (``python -m benchmarks``).

- `benchmarks.bench_queue`: register/process throughput against PyPI
  ``sharded-queue==0.2.10`` and bare redis-py, idle latency, scaling, worker RSS;
- `benchmarks.bench_faults`: Redis memory per waiting message, and what one
  huge `register` costs other clients;
- `benchmarks.bench_scheduling`: lateness of deferred requests, and the cost of
  ``if_not_exists`` and ``defer`` on `register`;
- `benchmarks.bench_simulator` (when present): the simulator's own benchmarks.

Runners (`lib_runner`, `peer_runner`, `bare`) are subprocesses the suites drive;
`workload` is the workload and line protocol they share.
"""


def quick_main(prog: str, description: str | None, run: object, argv: list[str] | None) -> int:
    """Parse ``[--quick]`` and run ``run(quick)`` (a coroutine function): a small suite's entry point."""
    import argparse
    import asyncio

    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--quick", action="store_true", help="smaller sizes, for a smoke run")
    asyncio.run(run(parser.parse_args(argv).quick))  # type: ignore[operator]
    return 0
