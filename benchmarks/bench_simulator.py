"""Simulator speed: simulated messages per wall-clock second, against a per-message model.

The twin simulates the real worker program (events per batch and per poll);
the reference is the textbook per-message simpy model (an arrival process,
a ``simpy.Resource`` of ``c`` servers, a process per message) of the same
load, run in the same process::

    .venv/bin/python -m benchmarks.bench_simulator            # the table in the README (Simulator, Speed)
    .venv/bin/python -m benchmarks.bench_simulator --large    # plus 10 million messages, trace off

Scenario: 16 threads, 8 worker loops, batch size 128, perform = 5 ms per batch
+ 20 us per message (lognormal, cv 0.3), storage round trip 1 ms, Poisson
arrivals (uniform users, 16 threads) at 70% of the loops' capacity with full
batches, ``128 / (5 ms + 128 * 20 us + 1 ms)`` each, registered by a producer
that calls ``register`` every millisecond with what arrived (84 requests a call:
one wake-up message each; one call per arrival would be 84,000 wake-up messages a
second, more CPU than the worker process has). The loops share one
worker process's CPU with the library's measured costs (`simulator.cpu.LIBRARY`),
so the twin also simulates the process's CPU per effect.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import gc
import resource
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import simpy

from sharded_queue import Handler, RequestRoute, Route, Settings
from simulator import Keyed, LogNormal, Poisson, Registered, Scenario, Service, Uniform, Workload, simulate

LOOPS = 8
BATCH = 128
PER_BATCH = 0.005
PER_MESSAGE = 0.00002
RTT = 0.001
UTILISATION = 0.7
REGISTER_EVERY = 0.001  # the producer registers what arrived every millisecond: one call, one wake-up


def router(threads: int) -> type[Handler]:
    """A handler routing user ``k`` to thread ``k % threads``."""

    class Users(Handler):
        name = f"bench-users-{threads}"

        @classmethod
        async def route(cls, *requests: int) -> list[RequestRoute]:
            return [RequestRoute(r, Route(thread=r % threads)) for r in requests]

    return Users


def arrival_rate() -> float:
    """Arrivals per second: 70% of what the loops perform with full batches."""
    return UTILISATION * LOOPS * BATCH / (PER_BATCH + BATCH * PER_MESSAGE + RTT)


def twin(threads: int, duration: float, trace: bool, seed: int = 1, every: float = REGISTER_EVERY) -> Scenario:
    """The benchmark scenario for the simulator (a ``register`` call per ``every`` seconds)."""
    return Scenario(
        Workload(
            router(threads),
            Registered(Poisson(arrival_rate()), every=every),
            Service(PER_BATCH, PER_MESSAGE, LogNormal(0.3)),
            Keyed(Uniform(10_000)),
        ),
        loops=LOOPS,
        settings=Settings(worker_batch_size=BATCH),
        rtt=RTT,
        duration=duration,
        seed=seed,
        trace=trace,
    )


def per_message_mmc(rate: float, servers: int, mean_service: float, messages: int, seed: int = 1) -> float:
    """The plain per-message simpy M/M/c model; returns the mean wait (to use the result)."""
    env = simpy.Environment()
    server = simpy.Resource(env, servers)
    rng = np.random.default_rng(seed)
    gaps = rng.exponential(1.0 / rate, messages)
    services = rng.exponential(mean_service, messages)
    waits = np.empty(messages)

    def customer(index: int) -> Any:
        arrived = env.now
        with server.request() as request:
            yield request
            waits[index] = env.now - arrived
            yield env.timeout(services[index])

    def source() -> Any:
        for index in range(messages):
            yield env.timeout(gaps[index])
            env.process(customer(index))

    env.process(source())
    env.run()
    return float(waits.mean())


def timed(run: Callable[[], Any]) -> tuple[Any, float]:
    """``run()`` and its wall-clock seconds (best of one, after a collection)."""
    gc.collect()
    start = time.perf_counter()
    value = run()
    return value, time.perf_counter() - start


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


LARGE = 10_000_000


def large_run(messages: int) -> tuple[float, float, float]:
    """Simulate ``messages`` with the trace off; speed and peak RSS before and after (MB)."""
    simulate(twin(8, 0.5, trace=False))
    before = peak_rss_mb()
    result = simulate(twin(8, 1.0, trace=False).replace(duration=None, messages=messages))
    result.summary(())
    return result.speed, before, peak_rss_mb()


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark and print a table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=float, default=30.0, help="simulated seconds per twin run")
    parser.add_argument("--mmc-messages", type=int, default=300_000, help="messages of the per-message model")
    parser.add_argument("--large", action="store_true", help="also simulate 10 million messages, trace off")
    options = parser.parse_args(argv)

    rate = arrival_rate()
    rows: list[tuple[str, float, float, str]] = []
    simulate(twin(16, 0.5, trace=False))  # warm up: imports, first allocations

    def twin_row(label: str, scenario: Scenario) -> float:
        result, _ = timed(lambda: simulate(scenario))
        overall = result.summary(()).iloc[0]
        note = (
            f"batch {overall['batch_mean']:.0f}, loops busy {result.utilisation:.0%}, "
            f"CPU {result.cpu_utilisation:.0%}, "
            f"p99 sojourn {overall['sojourn_p99'] * 1000:.1f} ms{', SATURATED' if result.saturated else ''}"
        )
        rows.append((label, result.messages, result.speed, note))
        return result.speed

    twin_speed = twin_row("twin: 16 threads, 8 loops, trace off", twin(16, options.duration, trace=False))
    twin_row("twin: 16 threads, 8 loops, trace on", twin(16, options.duration, trace=True))
    twin_row("twin: 8 threads, 8 loops, trace off", twin(8, options.duration, trace=False))
    few = 5 / rate  # calls of about 5 requests: most touch fewer threads than the idle loops waiting
    twin_row("twin: 8 threads, 8 loops, calls of ~5", twin(8, options.duration / 10, trace=False, every=few))
    mean_service = UTILISATION * LOOPS / rate
    _, seconds = timed(lambda: per_message_mmc(rate, LOOPS, mean_service, options.mmc_messages))
    mmc_speed = options.mmc_messages / seconds
    rows.append(
        ("per-message simpy M/M/8, same load", options.mmc_messages, mmc_speed, f"service {mean_service * 1e6:.0f} us")
    )
    if options.large:
        with concurrent.futures.ProcessPoolExecutor(1) as pool:  # a fresh process: its own peak memory
            speed, before, after = pool.submit(large_run, LARGE).result()
        rows.append(
            ("twin: 10M messages, 8 threads, trace off", LARGE, speed, f"peak RSS {before:.0f} -> {after:.0f} MB")
        )

    print(f"arrivals {rate:,.0f}/s ({UTILISATION:.0%} of full-batch capacity), {options.duration:g} s simulated\n")
    print(f"{'run':44} {'messages':>11} {'msgs/s':>12}  notes")
    for label, count, speed, note in rows:
        print(f"{label:44} {count:>11,.0f} {speed:>12,.0f}  {note}")
    print(f"\ntwin / per-message model: {twin_speed / mmc_speed:.1f}x")


if __name__ == "__main__":
    main()
