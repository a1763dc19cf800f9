"""Modes taking turns: each run a fresh subprocess on a flushed redis-server of the benchmark's own.

What ``bench_otel`` and ``bench_controls`` share: their command line (``--quick``, ``--n``,
``--reps``, ``--baseline``), one run of a mode in a subprocess (the benchmark file's
``_run(mode, url, n)``, importing this checkout's library, or the one in ``--baseline`` for
the mode ``before``), and the rounds in which the modes take turns, who goes first rotating.
The benchmark file is loaded by its path, so it imports nothing of ``benchmarks`` at its top:
a baseline checkout may not have this module.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BEFORE = "before"
"""The mode that runs the library found in ``--baseline``."""


def arguments(doc: str | None, argv: list[str] | None) -> argparse.Namespace:
    """The shared command line; ``n`` and ``reps`` filled in (quick: 10,000 and 2, else 100,000 and 5)."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0] if doc else None)
    parser.add_argument("--quick", action="store_true", help="a smoke run: 10,000 requests, 2 runs per mode")
    parser.add_argument("--n", type=int, default=None, help="requests per run (default 100,000)")
    parser.add_argument("--reps", type=int, default=None, help="runs per mode (default 5)")
    parser.add_argument("--baseline", type=Path, help="also run the library found in this directory (mode 'before')")
    args = parser.parse_args(argv)
    args.n = args.n or (10_000 if args.quick else 100_000)
    args.reps = args.reps or (2 if args.quick else 5)
    return args


_CHILD = """
import asyncio, importlib.util, json, sys
spec = importlib.util.spec_from_file_location("bench_run", sys.argv[1])
module = sys.modules["bench_run"] = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
print(json.dumps(asyncio.run(module._run(sys.argv[2], sys.argv[3], int(sys.argv[4])))))
"""


def run_once(script: str, mode: str, url: str, n: int, baseline: Path | None, sent: str | None = None) -> Any:
    """One run of ``script``'s ``_run(sent, url, n)`` (``sent`` defaults to ``mode``) in a fresh
    subprocess, importing this checkout's library, or ``baseline``'s for `BEFORE`; what it returned."""
    source = baseline if mode == BEFORE and baseline is not None else ROOT
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("QUEUE_")}, "PYTHONPATH": str(source)}
    command = [sys.executable, "-c", _CHILD, script, sent or mode, url, str(n)]
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=tempfile.gettempdir(), timeout=900)
    if done.returncode != 0:
        raise RuntimeError(f"{mode} run failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def take_turns(modes: Sequence[str], reps: int, run: Callable[[str, str], Any]) -> dict[str, list[Any]]:
    """``reps`` rounds in which every mode runs once (``run(mode, url)``), on a redis-server started
    here on a free loopback port and flushed before each run; who goes first rotates."""
    import redis

    from sharded_queue.testing import RedisServer

    results: dict[str, list[Any]] = {mode: [] for mode in modes}
    with tempfile.TemporaryDirectory(prefix="sq-bench-") as directory:
        server = RedisServer(Path(directory))
        try:
            for rep in range(reps):
                for mode in [*modes[rep % len(modes) :], *modes[: rep % len(modes)]]:
                    with redis.Redis.from_url(server.url) as client:
                        client.flushall()  # our own server
                    results[mode].append(run(mode, server.url))
        finally:
            server.stop()
    return results
