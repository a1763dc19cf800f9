"""The library's own CPU per effect on this machine: a report of `simulator.lab.measure`.

    .venv/bin/python -m benchmarks.bench_overhead    # the tables, then the Overhead(...) and ServerCosts(...) literals

The twin charges every effect a worker loop carries out, and every wake-up
message a worker process receives, to the process's one CPU; how they are
measured is in `simulator.lab.measure`. This prints each constant with its spread
over ``--repeat`` measurements (the median of three by default: the machine is
shared), the asyncio timer's granularity, a check of the constants against
runs of 2 and 8 loops in one process, which no constant was fitted on (the CPU the model predicts from the
effect counts against the thread's measured CPU), and the `Overhead(...)`
literal that `simulator.cpu.LIBRARY` holds for the development machine; then each
script's time on the redis-server (`simulator.lab.measure.measure_server`, by its
``SLOWLOG``) and the `ServerCosts(...)` literal that `simulator.cpu.SERVER` holds.
The redis-server is started on a free loopback port unless ``--url`` names one.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import statistics
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from sharded_queue.testing import RedisServer
from simulator.cpu import ServerCosts
from simulator.lab.measure import KINDS, measure, measure_server


def main(argv: list[str] | None = None) -> None:
    """Measure and print the constants."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=40_000, help="messages per drain")
    parser.add_argument("--url", help="a redis-server to use; default: start one on a free port")
    parser.add_argument("--repeat", type=int, default=3, help="measurements; each constant is their median")
    options = parser.parse_args(argv)

    def measure_all(url: str) -> tuple[list[dict[str, Any]], list[ServerCosts]]:
        runs = [asyncio.run(measure(url, options.messages)) for _ in range(options.repeat)]
        return runs, [asyncio.run(measure_server(url, options.messages // 2)) for _ in range(options.repeat)]

    if options.url:
        runs, servers = measure_all(options.url)
    else:
        with tempfile.TemporaryDirectory(prefix="sq-overhead-") as directory:
            server = RedisServer(Path(directory))
            try:
                runs, servers = measure_all(server.url)
            finally:
                server.stop()
    found = runs[-1]  # sleeps, checks: the last run's
    costs = {name: statistics.median(run["costs"][name] for run in runs) for name in found["costs"]}
    found["slack"] = statistics.median(run["slack"] for run in runs)
    print(f"medians of {len(runs)} measurements; spread (max - min) / median per constant:")
    for name in costs:
        values = [run["costs"][name] for run in runs]
        print(f"  {name:22} {(max(values) - min(values)) / abs(costs[name]) if costs[name] else 0.0:6.0%}")
    print("CPU per effect, one loop (us):")
    for name, value in costs.items():
        print(f"  {name:22} {value * 1e6:8.2f}")
    print(
        f"iterations per effect, one loop: {found['single_iterations']:.2f}, "
        f"one costs {found['iteration'] * 1e6:.1f} us"
    )
    print("asyncio.sleep on an idle loop (ms): requested -> median, p10, p90")
    for seconds, taken in found["sleeps"].items():
        q = np.percentile(taken, [50, 10, 90]) * 1000
        print(f"  {seconds * 1000:6.2f} -> {q[0]:.3f} {q[1]:.3f} {q[2]:.3f}")
    print(f"timer slack past the millisecond: {found['slack'] * 1e6:.0f} us")
    print("check, out of sample (loops not fitted on): measured thread CPU against the constants (s)")
    for loops, batch, cpu, predicted, per_effect in found["check"]:
        print(
            f"  loops {loops:2} batch {batch:3}: measured {cpu:.3f}, predicted {predicted:.3f} "
            f"({predicted / cpu - 1:+.0%}), iterations per effect {per_effect:.2f}"
        )
    print("\nOverhead(")
    for name in (
        *(k.lower() for k in KINDS),
        "decode",
        "perform_per_message",
        "idle",
        "wake",
        "trace",
        "trace_per_message",
    ):
        if name in costs:
            print(f"    {name}={costs[name]:.3g},")
    print(f"    timer_slack={found['slack']:.3g},")
    print(")")
    _print_server(servers)


def _print_server(servers: list[ServerCosts]) -> None:
    """Each script's time on the server: the median of the measurements, with their spread."""
    print("\nthe storage server's time per script (us), median and spread (max - min) / median:")
    medians = {}
    for item in dataclasses.fields(ServerCosts):
        values = [getattr(costs, item.name) for costs in servers]
        medians[item.name] = statistics.median(values)
        spread = (max(values) - min(values)) / medians[item.name] if medians[item.name] else 0.0
        print(f"  {item.name:22} {medians[item.name] * 1e6:8.2f} {spread:6.0%}")
    print("\nServerCosts(")
    for name, value in medians.items():
        print(f"    {name}={value:.2g},")
    print(")")


if __name__ == "__main__":
    main()
