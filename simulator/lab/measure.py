"""The library's CPU per effect, measured on a real redis-server: the constants of `simulator.cpu`.

The twin charges every effect a worker loop carries out (poll, acquire, begin,
cycle with its per-message decode, perform call, end) and every wake-up
message a worker process receives to the process's one CPU. `measure_overhead`
measures those costs from the library itself, on the machine it runs on, with
the machine's speed meanwhile (`sharded_queue.meter.speed_unit`, `Overhead.speed`);
`simulator.cpu.LIBRARY` holds what it measured on the project's development
machine, and ``python -m benchmarks.bench_overhead`` prints a full report.

How: one worker loop (so the thread's CPU clock sees nothing but that loop)
drains backlogs of a no-op handler (once with tracing on, for what recording
a trace adds to each ``perform``) over 4 threads with batch sizes 1, 16 and
128 from a redis-server. Each effect is charged the thread CPU time
(``time.thread_time``) from the end of the previous effect to its own end (a
`Worker` observer: the first effect of a drain, which has no previous one, is
left out): the core's decision, the storage call (encode, send, the event
loop's wait, parse) and the bookkeeping around it. Each drain runs on an event
loop of its own, in a thread of its own, whose selector counts its calls: the
event loop's iterations. Cycle and perform costs are fitted as
``a + b * n`` over the batch sizes; the others are means. A wake-up message is
timed by a subscribed listener while another thread publishes. The asyncio
timer granularity is measured by timing ``asyncio.sleep`` on an idle event
loop. Drains of 4 and 16 loops in one process keep it busy: what their round
trips cost less than one loop's is what an effect that finds the process idle
costs more (`idle_cost`). Drains of 2 and 8 loops, which none of the constants
was fitted on, check them: the CPU the model predicts from the effect counts
against the thread's measured CPU.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import math
import selectors
import statistics
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import numpy as np
import redis
import redis.asyncio

from sharded_queue import Handler, Queue, RequestRoute, Route, Settings, Worker
from sharded_queue.core import Batch, Cycle, Effect, Perform
from sharded_queue.meter import speed_unit
from sharded_queue.storage.scripts import SCRIPTS, source

from ..cpu import Overhead, ServerCosts

THREADS = 4


class Noop(Handler):
    """A no-op ``perform``; requests are ints spread over `THREADS` threads."""

    name = "bench-overhead:noop"

    @classmethod
    async def route(cls, *requests: int) -> list[RequestRoute]:
        return [RequestRoute(r, Route(thread=r % THREADS)) for r in requests]

    async def perform(self, *requests: int) -> None:
        pass


class CountingSelector(selectors.DefaultSelector):
    """The platform's default selector, counting its ``select`` calls: the event loop's iterations."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def select(self, timeout: float | None = None) -> Any:
        """``select``, counted."""
        self.calls += 1
        return super().select(timeout)


class EffectClock:
    """A `Worker` observer: charges each effect the thread CPU since the previous effect ended, and
    counts the event loop's iterations (``selector``'s calls) meanwhile.

    The first effect it sees has no previous one: it only starts the clock.
    """

    def __init__(self, selector: CountingSelector) -> None:
        self.samples: list[tuple[str, int, float, int]] = []
        self.selector = selector
        self.last = math.nan
        self.last_iterations = 0

    def __call__(self, effect: Effect, result: Any) -> None:
        end = time.thread_time()
        iterations = self.selector.calls
        if not math.isnan(self.last):
            size = 0
            if isinstance(effect, Cycle) and isinstance(result, Batch):
                size = result.size
            elif isinstance(effect, Perform):
                size = len(effect.messages)
            self.samples.append((type(effect).__name__, size, end - self.last, iterations - self.last_iterations))
        self.last = end
        self.last_iterations = iterations


Sample = tuple[str, int, float, int]
"""One effect: its kind, batch size (cycles and performs), thread CPU seconds, event loop iterations."""


async def drain(
    url: str, batch: int, messages: int, loops: int, trace: bool = False
) -> tuple[list[Sample], float, int]:
    """Drain a backlog of ``messages``: per-effect samples, the thread's total CPU and iterations.

    The drain runs on an event loop of its own (its selector counts the iterations), in a thread
    of its own (whose CPU clock sees nothing else).
    """
    return await asyncio.to_thread(_drain_on_own_loop, url, batch, messages, loops, trace)


def _drain_on_own_loop(url: str, batch: int, messages: int, loops: int, trace: bool) -> tuple[list[Sample], float, int]:
    selector = CountingSelector()
    with asyncio.Runner(loop_factory=lambda: asyncio.SelectorEventLoop(selector)) as runner:
        return runner.run(_drain(url, batch, messages, loops, trace, selector))


async def _drain(
    url: str, batch: int, messages: int, loops: int, trace: bool, selector: CountingSelector
) -> tuple[list[Sample], float, int]:
    settings = Settings(storage_url=url, key_prefix=f"bench-overhead-{uuid.uuid4().hex[:8]}", worker_batch_size=batch)
    queue = Queue(url, settings=settings)
    try:
        for start in range(0, messages, 1000):
            await queue.register(Noop, *range(start, min(start + 1000, messages)))
        clock = EffectClock(selector)
        worker = Worker(queue, handlers=[Noop], settings=settings, trace=trace, observer=clock)
        share = messages // loops
        limits = [share + (messages - share * loops if i == 0 else 0) for i in range(loops)]
        counted = selector.calls
        cpu = time.thread_time()
        await asyncio.gather(*(worker.loop(limit) for limit in limits))
        cpu = time.thread_time() - cpu
        return clock.samples, cpu, selector.calls - counted
    finally:
        await queue.close()


def fit_line(sizes: Sequence[int], costs: Sequence[float]) -> tuple[float, float]:
    """Least squares ``cost = a + b * size``."""
    x = np.asarray(sizes, dtype=float)
    (a, b), *_ = np.linalg.lstsq(np.column_stack((np.ones_like(x), x)), np.asarray(costs), rcond=None)
    return float(a), float(b)


KINDS = ("Poll", "Acquire", "Begin", "Cycle", "Perform", "End")


def effect_costs(samples: list[Sample]) -> dict[str, float]:
    """The per-effect constants from one loop's samples."""
    by: dict[str, list[tuple[int, float]]] = defaultdict(list)
    for name, size, cost, _ in samples:
        by[name].append((size, cost))
    cycles = by["Cycle"]
    cycle, decode = fit_line([n for n, _ in cycles], [c for _, c in cycles])
    perform, per_message = fit_line([n for n, _ in by["Perform"]], [c for _, c in by["Perform"]])
    return {
        "poll": statistics.fmean(c for _, c in by["Poll"]),
        "acquire": statistics.fmean(c for _, c in by["Acquire"]),
        "begin": statistics.fmean(c for _, c in by["Begin"]),
        "cycle": cycle,
        "decode": decode,
        "perform": perform,
        "perform_per_message": per_message,
        "end": statistics.fmean(c for _, c in by["End"]),
    }


FIT_LOOPS = (4, 16)
"""Drains of this many loops (one per thread and more) keep the process busy: replies find it
running. `idle_cost` is fitted on them."""
CHECK_LOOPS = (2, 8)
"""Drains of this many loops check the constants, out of sample."""

TRIPS = ("Poll", "Acquire", "Cycle", "End")
"""The effects with a round trip: with one loop, each one's reply wakes the idle process."""


def iteration_cost(single: list[Sample], runs: list[tuple[list[Sample], float, int]]) -> float:
    """CPU of one event loop iteration (for the report): each run's CPU below the one-loop costs,
    regressed on the iterations it saved."""
    by: dict[str, list[tuple[int, float, int]]] = defaultdict(list)
    for name, size, cost, iterations in single:
        by[name].append((size, cost, iterations))
    lines = {name: fit_line([n for n, _, _ in v], [c for _, c, _ in v]) for name, v in by.items()}
    iterations_of = {name: statistics.fmean(i for _, _, i in v) for name, v in by.items()}
    saved_cpu, saved_iterations = [], []
    for samples, cpu, iterations in runs:
        known = [(name, size) for name, size, _, _ in samples if name in lines]  # waits: not in a one-loop drain
        saved_cpu.append(sum(lines[name][0] + lines[name][1] * size for name, size in known) - cpu)
        saved_iterations.append(sum(iterations_of[name] for name, _ in known) - iterations)
    x, y = np.asarray(saved_iterations), np.asarray(saved_cpu)
    return float(x @ y / (x @ x))


def idle_cost(costs: dict[str, float], busy: list[tuple[list[Sample], float, int]]) -> float:
    """What a round trip's effect costs more when its reply wakes an idle process.

    One loop's process is idle at every reply: its effects' costs (``costs``)
    include the wake-up from ``epoll_wait``. Drains that keep the process busy
    (``busy``: `FIT_LOOPS` loops) share the event loop's iterations
    between replies: what their CPU falls short of the one-loop costs, per
    round trip, is the wake-up. Measured directly on the busy runs, it makes
    the constants fit a busy process's CPU, which is what limits a drain.
    """
    predicted = actual = 0.0
    trips = 0
    for samples, cpu, _ in busy:
        predicted += sum(_predict(costs, name, size) for name, size, _, _ in samples)
        actual += cpu
        trips += sum(name in TRIPS for name, *_ in samples)
    return max(0.0, (predicted - actual) / trips)


async def wake_cost(url: str, messages: int = 5000) -> float:
    """CPU of one wake-up message in a worker process's listener (parse and route), seconds."""
    settings = Settings(storage_url=url, key_prefix=f"bench-overhead-{uuid.uuid4().hex[:8]}")
    queue = Queue(url, settings=settings)
    storage = queue.storage
    received = 0
    done = asyncio.Event()

    def on_wake(threads: list[Any]) -> None:
        nonlocal received
        received += 1
        if received == messages:
            done.set()

    ready = asyncio.Event()
    listener = asyncio.create_task(storage.listen_wake(on_wake, ready.set))
    await ready.wait()
    channel = storage.keys.wake
    payload = b'[["bench-overhead:noop","3"]]'

    def publish() -> None:
        client = redis.Redis.from_url(url)
        for _ in range(messages):
            client.publish(channel, payload)
        client.close()

    cpu = time.thread_time()
    producer = threading.Thread(target=publish)
    producer.start()
    await asyncio.wait_for(done.wait(), 120)
    cpu = time.thread_time() - cpu
    producer.join()
    listener.cancel()
    await asyncio.gather(listener, return_exceptions=True)
    await queue.close()
    return cpu / messages


async def sleep_times(seconds: float, count: int = 300) -> list[float]:
    """How long ``asyncio.sleep(seconds)`` takes on an idle event loop."""
    taken = []
    for _ in range(count):
        start = time.perf_counter()
        await asyncio.sleep(seconds)
        taken.append(time.perf_counter() - start)
    return taken


async def measure(url: str, messages: int) -> dict[str, Any]:
    """Every measurement of the module docstring."""
    await drain(url, 16, 2000, 1)  # warm-up: script loading, first connections, imports
    speeds = [speed_unit() for _ in range(20)]  # the machine's speed as the costs are measured
    single: list[Sample] = []
    for batch in (1, 16, 128):
        got, _, _ = await drain(url, batch, messages if batch > 1 else messages // 8, 1)
        single += got
    shapes = [(loops, batch) for loops in sorted(FIT_LOOPS + CHECK_LOOPS) for batch in (16, 128)]
    runs = [await drain(url, batch, messages, loops) for loops, batch in shapes]
    traced: list[Sample] = []
    for batch in (1, 16, 128):
        got, _, _ = await drain(url, batch, messages if batch > 1 else messages // 8, 1, trace=True)
        traced += got
    costs = effect_costs(single)
    idle = idle_cost(costs, [run for run, (loops, _) in zip(runs, shapes, strict=True) if loops in FIT_LOOPS])
    for name in TRIPS:  # the one-loop costs include a wake-up from idle
        costs[name.lower()] -= idle
    costs["idle"] = idle
    with_trace = effect_costs(traced)
    costs["trace"] = with_trace["perform"] - costs["perform"]
    costs["trace_per_message"] = with_trace["perform_per_message"] - costs["perform_per_message"]
    costs["wake"] = await wake_cost(url)
    sleeps = {d: await sleep_times(d) for d in (0.0002, 0.0005, 0.001, 0.0015, 0.003)}
    slack = statistics.median(statistics.median(t) - math.ceil(d * 1000 - 1e-9) / 1000 for d, t in sleeps.items())
    single_iterations = statistics.fmean(i for _, _, _, i in single)
    per_effect = [iterations / len(samples) for samples, _, iterations in runs]
    floor = min(share for share, (loops, _) in zip(per_effect, shapes, strict=True) if loops in FIT_LOOPS)
    check = []
    for (samples, cpu, _), (loops, batch), share in zip(runs, shapes, per_effect, strict=True):
        if loops not in CHECK_LOOPS:
            continue
        # the share of effects that found the process idle: from the busy runs' iterations to one loop's
        woke = min(1.0, max(0.0, (share - floor) / (single_iterations - floor)))
        trips = sum(name in TRIPS for name, *_ in samples)
        predicted = sum(_predict(costs, name, size) for name, size, _, _ in samples) + costs["idle"] * woke * trips
        check.append((loops, batch, cpu, predicted, share))
    speeds += [speed_unit() for _ in range(20)]
    return {
        "costs": costs,
        "speed": statistics.median(speeds),
        "sleeps": sleeps,
        "slack": slack,
        "check": check,
        "single_iterations": single_iterations,
        "iteration": iteration_cost(single, runs),
    }


def _predict(costs: dict[str, float], name: str, size: int) -> float:
    if name == "Cycle":
        return costs["cycle"] + costs["decode"] * size
    if name == "Perform":
        return costs["perform"] + costs["perform_per_message"] * size
    return costs.get(name.lower(), 0.0)


async def measure_overhead(url: str, messages: int = 40_000, repeat: int = 1) -> Overhead:
    """The library's CPU per effect on this machine, with tracing's share (as `simulator.cpu.TRACED`).

    Args:
        url: A redis-server to measure against (it should be on the machine, or
            as far away, as the one the workers use).
        messages: Messages per drain (16 drains and a few seconds of timers in all).
        repeat: Measurements; each constant is their median.
    """
    runs = [await measure(url, messages) for _ in range(repeat)]
    costs = {name: statistics.median(run["costs"][name] for run in runs) for name in runs[0]["costs"]}
    slack = statistics.median(run["slack"] for run in runs)
    speed = statistics.median(run["speed"] for run in runs)
    names = {field.name for field in dataclasses.fields(Overhead)}
    chosen = {name: max(0.0, value) for name, value in costs.items() if name in names}
    return Overhead(**chosen, timer_slack=slack, speed=speed)


async def measure_rtt(url: str, count: int = 300, gap: float = 0.002) -> float:
    """Median round trip of a ``PING`` from an idle event loop (``gap`` seconds apart), seconds.

    What a round trip costs a worker waiting for its next message: for a twin whose
    calibration saw no back-to-back batches to measure one from (`calibrate`'s ``rtt``
    is NaN), e.g. sparse arrivals over many threads.
    """
    client = redis.asyncio.Redis.from_url(url)
    try:
        await client.ping()  # connect
        taken = []
        for _ in range(count):
            start = time.perf_counter()
            await client.ping()
            taken.append(time.perf_counter() - start)
            await asyncio.sleep(gap)
    finally:
        await client.aclose()
    return statistics.median(taken)


class Spread(Handler):
    """Requests are ints; request ``r`` goes to thread ``r % 64``."""

    name = "bench-overhead:spread"

    @classmethod
    async def route(cls, *requests: int) -> list[RequestRoute]:
        return [RequestRoute(r, Route(thread=r % 64)) for r in requests]

    async def perform(self, *requests: int) -> None:
        pass


REGISTRATIONS = ((1, 1), (64, 1), (64, 64), (512, 8), (512, 64))
"""(requests, threads) of the registration calls `measure_server` times."""


class SlowLog:
    """Every command's own microseconds on a redis-server (``SLOWLOG`` with no threshold),
    named by script for the library's ``EVALSHA`` calls; the server's settings put back after."""

    def __init__(self, url: str) -> None:
        self.client = redis.Redis.from_url(url)
        self.names = {_sha(source(name)): name for name in SCRIPTS}
        self.saved: dict[str, Any] = {}

    def __enter__(self) -> SlowLog:
        try:
            self.saved = self.client.config_get("slowlog-*")
            self.client.config_set("slowlog-log-slower-than", 0)
            self.client.config_set("slowlog-max-len", 1_000_000)
        except redis.ResponseError as exc:
            self.client.close()
            raise RuntimeError(f"measure_server needs CONFIG SET on the server (its SLOWLOG): {exc}") from exc
        self.client.slowlog_reset()
        return self

    def __exit__(self, *exc: object) -> None:
        for name, value in self.saved.items():
            self.client.config_set(name, value)
        self.client.slowlog_reset()
        self.client.close()

    def take(self) -> dict[str, list[float]]:
        """Seconds of each script call since the last `take`, by script name."""
        entries = self.client.slowlog_get(1_000_000)
        self.client.slowlog_reset()
        by: dict[str, list[float]] = defaultdict(list)
        for entry in entries:
            words = entry["command"].split()
            if words and words[0].lower() == b"evalsha" and len(words) > 1:
                name = self.names.get(words[1].decode(), "")
                if name:
                    by[name].append(entry["duration"] * 1e-6)
        return by


def _sha(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()


async def measure_server(url: str, messages: int = 20_000) -> ServerCosts:
    """Each script's time on the redis-server at ``url``, from its ``SLOWLOG`` (see `ServerCosts`).

    Registration calls of the `REGISTRATIONS` shapes give ``register``, ``register_per_thread``
    and ``register_per_message`` (least squares); drains of ``messages`` with batches of 1, 16
    and 128 give the cycle's cost and its cost per message moved (each message is fetched once
    and acked once), and the polls', acquires' and releases' means. The server's slow-log
    settings are put back after.

    Raises:
        RuntimeError: the server refuses ``CONFIG SET`` (a managed Redis): measure a local one.
    """
    with SlowLog(url) as log:
        shapes, durations = [], []
        for count, threads in REGISTRATIONS:
            settings = Settings(storage_url=url, key_prefix=f"bench-server-{uuid.uuid4().hex[:8]}")
            queue = Queue(url, settings=settings)
            try:
                log.take()
                stride = 64 // threads
                for call in range(max(20, 4000 // count)):
                    await queue.register(
                        Spread, *(stride * (i % threads) + 64 * (call * count + i) for i in range(count))
                    )
                taken = log.take()["push"]
                shapes += [(1.0, threads, count)] * len(taken)
                durations += taken
            finally:
                await queue.close()
        (register, per_thread, per_message), *_ = np.linalg.lstsq(np.asarray(shapes), np.asarray(durations), rcond=None)
        rows, totals, scripts = [], [], defaultdict(list)
        for batch in (1, 16, 128):
            log.take()
            await drain(url, batch, messages if batch > 1 else messages // 8, 4)
            taken = log.take()
            rows.append((len(taken["cycle"]), 2.0 * (messages if batch > 1 else messages // 8)))
            totals.append(sum(taken["cycle"]))
            for name in ("candidates", "acquire", "release"):
                scripts[name] += taken[name]
        (cycle, per_moved), *_ = np.linalg.lstsq(np.asarray(rows), np.asarray(totals), rcond=None)
    return ServerCosts(
        poll=statistics.fmean(scripts["candidates"]),
        acquire=statistics.fmean(scripts["acquire"]),
        release=statistics.fmean(scripts["release"]),
        cycle=max(float(cycle), 0.0),
        cycle_per_message=max(float(per_moved), 0.0),
        register=max(float(register), 0.0),
        register_per_thread=max(float(per_thread), 0.0),
        register_per_message=max(float(per_message), 0.0),
    )
