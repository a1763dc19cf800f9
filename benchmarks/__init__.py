"""Benchmarks of sharded_queue: ``make bench`` (``python -m benchmarks``).

- `benchmarks.bench_queue`: register/process throughput against PyPI
  ``sharded-queue==0.2.10`` and bare redis-py, idle latency, scaling, worker RSS;
- `benchmarks.bench_faults`: Redis memory per waiting message, and what one
  huge `register` costs other clients;
- `benchmarks.bench_simulator` (when present): the simulator's own benchmarks.

Runners (`lib_runner`, `peer_runner`, `bare`) are subprocesses the suites drive;
`workload` is the workload and line protocol they share.
"""
