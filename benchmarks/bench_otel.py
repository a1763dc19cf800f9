"""What OpenTelemetry costs: ``python -m benchmarks.bench_otel [--quick] [--baseline DIR]`` (in ``make bench``).

Register and drain throughput of the library with telemetry off and on, on a
``redis-server`` started here on a free loopback port (never the one on 6379):
``n`` small dataclass requests routed over 16 threads, registered in calls of 1,000,
then drained by one worker of 8 loops, batch 128, with a no-op ``perform``; then
``n / 50`` calls that register one request each (a register span per request). Modes:

- ``off``: the default;
- ``on, SDK``: ``OpenTelemetry(provider)``, an SDK ``TracerProvider`` whose exporter
  drops every span (``SimpleSpanProcessor``): the library's part, and the SDK's span
  creation, without any export;
- ``on, no SDK``: ``OpenTelemetry(NoOpTracerProvider())``, turned on with the API only
  (non-recording spans, no traceparent written);
- ``before`` (with ``--baseline DIR``): the code in ``DIR`` (e.g. a checkout of the commit
  before telemetry, made with ``git archive``), which has no telemetry at all.

Each run is a fresh subprocess (timed inside, so start-up and imports never count)
on a flushed server; the modes take turns (A B C A B C ...) and each is reported as
the median of its runs with the spread (min-max), and the CPU time of this process per
request (``time.process_time``), which a busy machine disturbs less than throughput
(the storage server's CPU is not in it). Every run also checks a stored
envelope: off (and ``before``), it must be the plain ``[enqueued_at, request]``,
byte for byte (the benchmark fails otherwise).
"""

from __future__ import annotations

import asyncio
import os
import platform
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

HERE = Path(__file__).resolve()
MODES = ("off", "on, SDK", "on, no SDK")


@dataclass
class Job:
    """The benchmark request, as in `benchmarks.workload`."""

    job_id: int
    user_id: int
    kind: str


def _telemetry(mode: str) -> Any:
    """The ``telemetry=`` of a mode (None: leave the argument out)."""
    if mode == "off":  # and the baseline's runs ("before"): run_once sends them as "off"
        return None
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult
    from opentelemetry.trace import NoOpTracerProvider

    from sharded_queue.otel import OpenTelemetry

    class Drop(SpanExporter):
        def export(self, spans: Any) -> SpanExportResult:
            return SpanExportResult.SUCCESS

    if mode == "on, no SDK":
        return OpenTelemetry(NoOpTracerProvider())
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(Drop()))
    return OpenTelemetry(provider)


async def _run(mode: str, url: str, n: int) -> dict[str, Any]:
    """One run in this process: register ``n`` jobs, then drain them; times and the envelope sample."""
    import msgspec

    from sharded_queue import Handler, Queue, RequestRoute, Route, Settings, Tube, Worker

    done = asyncio.Event()
    performed = [0]

    class Bench(Handler):
        name = "bench:otel"
        threads: ClassVar[int] = 16

        @classmethod
        async def route(cls, *requests: Job) -> list[RequestRoute]:
            return [RequestRoute(r, Route(thread=r.user_id % cls.threads)) for r in requests]

        async def perform(self, *requests: Job) -> None:
            performed[0] += len(requests)
            if performed[0] >= n:
                done.set()

    telemetry = _telemetry(mode)
    options = {} if telemetry is None else {"telemetry": telemetry}
    jobs = [Job(i, (i * 7919) % 10007, "notify") for i in range(n)]
    async with Queue(url, settings=Settings(worker_batch_size=128), **options) as queue:
        await queue.storage.client.ping()
        started, cpu = time.perf_counter(), time.process_time()
        for start in range(0, n, 1000):
            await queue.register(Bench, *jobs[start : start + 1000])
        register = time.perf_counter() - started, time.process_time() - cpu
        head = await queue.storage.client.lindex(queue.storage.keys.tube(Tube("bench:otel", "0", "0")), 0)
        plain = head == msgspec.json.encode([msgspec.json.decode(head)[0], jobs[0]])  # job 0 heads thread 0
        worker = Worker(queue, **options)
        started, cpu = time.perf_counter(), time.process_time()
        loops = [asyncio.create_task(worker.loop()) for _ in range(8)]
        await asyncio.wait_for(done.wait(), 600)
        drain = time.perf_counter() - started, time.process_time() - cpu
        worker.stop()
        await asyncio.gather(*loops)
        singles = jobs[: max(n // 50, 100)]
        started, cpu = time.perf_counter(), time.process_time()
        for job in singles:  # a producer registering one request per call (a web request, say)
            await queue.register(Bench, job)
        single = time.perf_counter() - started, time.process_time() - cpu
    return {
        "single_per_s": len(singles) / single[0],
        "single_cpu_us": single[1] / len(singles) * 1e6,
        "register_per_s": n / register[0],
        "register_cpu_us": register[1] / n * 1e6,
        "drain_per_s": n / drain[0],
        "drain_cpu_us": drain[1] / n * 1e6,
        "plain": plain,
    }


def summary(values: list[float]) -> str:
    return f"{statistics.median(values):>9,.0f} ({min(values):,.0f}-{max(values):,.0f})"


def ratio(runs: list[dict[str, Any]], base: list[dict[str, Any]], key: str) -> float:
    return statistics.median(run[key] for run in runs) / statistics.median(run[key] for run in base)


MEASURES = (("register", "register calls of 1,000"), ("drain", "drain"), ("single", "register calls of one"))


def report(results: dict[str, list[dict[str, Any]]], n: int, reps: int) -> str:
    """Throughput (median, min-max, ratio to off) and CPU per request (min, median) of each mode."""
    lines = [
        f"{n:,} requests over 16 threads, register calls of 1,000, drained by 8 loops (batch 128), then "
        f"{max(n // 50, 100):,} register calls of one request; {reps} runs per mode, interleaved",
        f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"{platform.platform()}",
        "",
        "per second: median (min-max), median / off's" + "".join(f" | {title:>34}" for _, title in MEASURES),
    ]
    base = results["off"]
    for mode, runs in results.items():
        cells = [
            f"{summary([r[f'{key}_per_s'] for r in runs])} {ratio(runs, base, f'{key}_per_s'):.2f}x"
            for key, _ in MEASURES
        ]
        lines.append(f"{mode:<44}" + "".join(f" | {cell:>34}" for cell in cells))
    lines += [
        "",
        "µs of CPU per request (this process): min, median" + "".join(f" | {title:>22}" for _, title in MEASURES),
    ]
    for mode, runs in results.items():
        cells = []
        for key, _ in MEASURES:
            cpu = [r[f"{key}_cpu_us"] for r in runs]
            cells.append(f"{min(cpu):.2f}, {statistics.median(cpu):.2f}")
        lines.append(f"{mode:<50}" + "".join(f" | {cell:>22}" for cell in cells))
    lines.append("")
    for mode, runs in results.items():
        plain = (
            "yes" if all(run["plain"] for run in runs) else "no" if not any(run["plain"] for run in runs) else "mixed"
        )
        lines.append(f"{mode:<12} stored envelopes byte for byte [enqueued_at, request]: {plain}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from benchmarks.turns import BEFORE, arguments, run_once, take_turns  # not at the top: see turns

    args = arguments(__doc__, argv)
    modes = (*MODES, BEFORE) if args.baseline else MODES
    results = take_turns(
        modes,
        args.reps,
        lambda mode, url: run_once(str(HERE), mode, url, args.n, args.baseline, "off" if mode == BEFORE else mode),
    )
    print(report(results, args.n, args.reps))
    if not all(run["plain"] for mode in ("off", BEFORE) for run in results.get(mode, [])):
        print("FAILED: with telemetry off the stored envelopes are not [enqueued_at, request]")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
