"""Benchmarks of sharded_queue: ``make bench`` (``python -m benchmarks``).

- `benchmarks.bench_queue`: register/process throughput against PyPI
  ``sharded-queue==0.2.10`` (at its best settings and at its defaults) and the
  bare redis-py ceiling, worker processes (``--processes 1`` and ``2``) with their
  CPU per message, Redis Cluster against one Redis, idle latency, scaling,
  worker RSS; on request the peer's settings grid and py-spy profiles;
- `benchmarks.bench_peers`: the popular Redis queues (arq, saq, rq, dramatiq,
  taskiq), each in its own virtualenv, against this library at batch 1 and 128:
  enqueue and drain rates of a backlog of no-op jobs, CPU per job;
- `benchmarks.bench_faults`: Redis memory per waiting message, and what one
  huge `register` costs other clients;
- `benchmarks.bench_scheduling`: lateness of deferred requests, and the cost of
  ``if_not_exists`` and ``defer`` on `register`;
- `benchmarks.bench_failover`: the cost of ``QUEUE_REGISTER_REPLICAS=1`` on
  `register`, and what a killed Redis or a failover (Sentinel, Redis Cluster)
  loses, duplicates and how long it takes to resume (``docs/durability.md``);
- `benchmarks.bench_simulator` (when present): the simulator's own benchmarks;
- `benchmarks.bench_counts` (run on its own: minutes): what counting a
  handler's messages costs as its threads grow (`pending`, a `stats` page,
  `testing.drain` of one-message threads).

Runners (`lib_runner`, `peer_runner`, `bare`, ``peers/*_runner.py``) are subprocesses the suites drive;
`workload` is the workload and line protocol they share; `stacks` folds py-spy's
raw stacks into per-function shares.
"""


def quick_main(prog: str, description: str | None, run: object, argv: list[str] | None) -> int:
    """Parse ``[--quick]`` and run ``run(quick)`` (a coroutine function): a small suite's entry point."""
    import argparse
    import asyncio

    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--quick", action="store_true", help="smaller sizes, for a smoke run")
    asyncio.run(run(parser.parse_args(argv).quick))  # type: ignore[operator]
    return 0
