"""Runners of the popular queues for `benchmarks.bench_peers`: one script per peer, each run by
the peer's own virtualenv's Python (``benchmarks/.peers/<name>-venv``) with ``-I``, so that
nothing of this project can shadow the peer; each imports only the standard library,
its peer and ``benchmarks/workload.py``."""
