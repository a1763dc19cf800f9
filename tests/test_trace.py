"""Tracing real runs: the shared schema, one row per performed message."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from sharded_queue import Handler, Queue, RequestRoute, Route, Settings, Worker
from sharded_queue.testing import drain, trace_run
from sharded_queue.trace import COLUMNS, OPTIONAL, load_trace
from tests.test_cli import HANDLER, Cli, cli

__all__ = ["cli"]  # the fixture


class Traced(Handler):
    orders = ("hi", "lo")
    batch_size = 4

    @classmethod
    async def route(cls, *requests: list[int]) -> list[RequestRoute]:
        return [RequestRoute(r, Route(thread=r[0], order="hi" if r[1] else "lo")) for r in requests]

    async def perform(self, *requests: list[int]) -> None:
        pass


async def test_backlog_trace_has_schema_and_one_row_per_message(queue: Queue, settings: Settings) -> None:
    requests = [[i % 2, int(i % 3 == 0), i] for i in range(30)]
    trace = await trace_run(Traced, requests, loops=2, queue=queue, settings=settings)
    assert tuple(trace.columns) == (*COLUMNS, *OPTIONAL)
    assert len(trace) == 30
    assert sorted(trace.groupby(["thread", "order"]).size().items()) == [
        (("0", "hi"), 5), (("0", "lo"), 10), (("1", "hi"), 5), (("1", "lo"), 10)
    ]  # fmt: skip
    assert (trace["started_at"] >= trace["enqueued_at"]).all()
    assert (trace["finished_at"] >= trace["started_at"]).all()
    per_batch = trace.groupby("batch").agg(
        n=("thread", "size"), threads=("thread", "nunique"), starts=("started_at", "nunique")
    )
    assert (per_batch["n"] <= 4).all() and (per_batch["threads"] == 1).all() and (per_batch["starts"] == 1).all()
    assert trace["handler"].unique().tolist() == [queue.spec(Traced).name]


async def test_open_loop_trace_registers_at_arrival_times(settings: Settings) -> None:
    requests = [[0, 0, i] for i in range(10)]
    trace = await trace_run(Traced, requests, at=[i * 0.01 for i in range(10)], settings=settings)
    assert len(trace) == 10
    assert trace.sort_values("enqueued_at")["enqueued_at"].is_monotonic_increasing
    with pytest.raises(ValueError, match="3 arrival times for 10 requests"):
        await trace_run(Traced, requests, at=[0, 1, 2], settings=settings)


async def test_trace_is_opt_in(queue: Queue) -> None:
    await queue.register(Traced, [0, 1, 1])
    worker = Worker(queue)
    assert worker.recorder is None
    with pytest.raises(RuntimeError, match="trace=True"):
        worker.trace()


class Spinning(Handler):
    """Request ``[thread, spin]``: ``perform`` computes for ``spin`` seconds, then sleeps 20 ms."""

    @classmethod
    async def route(cls, *requests: list[float]) -> list[RequestRoute]:
        return [RequestRoute(r, Route(thread=int(r[0]))) for r in requests]

    async def perform(self, *requests: list[float]) -> None:
        import asyncio
        import time

        end = time.perf_counter() + sum(r[1] for r in requests)
        while time.perf_counter() < end:
            pass
        await asyncio.sleep(0.02)


async def test_cpu_column_counts_each_performs_own_cpu(settings: Settings) -> None:
    """Loops of one worker share its thread: a batch's ``cpu`` is its own computing (10 ms)
    or nothing, neither its 20 ms sleep nor what the other loop computed meanwhile."""
    requests = [[i % 2, 0.01 if i % 2 else 0.0] for i in range(12)]
    trace = await trace_run(Spinning, requests, loops=2, settings=settings.copy(worker_batch_size=1))
    cpu = trace.groupby("thread")["cpu"].agg(["min", "max"])
    assert cpu.loc["1", "min"] >= 0.01 and cpu.loc["1", "max"] < 0.02
    assert cpu.loc["0", "max"] < 0.005


class Sleepy(Handler):
    name = "trace:sleepy"

    @classmethod
    async def route(cls, *requests: int) -> list[RequestRoute]:
        return [RequestRoute(r, Route(thread=r % 3)) for r in requests]

    async def perform(self, *requests: int) -> None:
        await asyncio.sleep(0.05)


async def test_a_traced_worker_measures_what_calibrating_the_twin_needs(redis_url: str, settings: Settings) -> None:
    """Process CPU, cores, loops, the event loop's lag, the machine's speed and the storage
    server's commands and CPU, each with its own instrument (`sharded_queue.meter`)."""
    queue = Queue(redis_url, settings=settings.copy(key_prefix="meter", worker_batch_size=2))
    await queue.register(Sleepy, *range(60))
    worker = Worker(queue, trace=True)
    await drain(worker, loops=3)
    frame = worker.trace()
    (meter,) = frame.attrs["meter"]
    assert len(frame) == 60 and meter["loops"] == 3 and meter["cores"] >= 1
    assert 0 < meter["process_cpu"] < meter["stopped"] - meter["started"] + 1
    assert len(meter["lag"]) >= 3 and min(meter["lag"]) >= 0  # a probe every 50 ms over a run of 0.5 s or more
    commands = meter["storage"]["commands"]
    assert commands["evalsha"]["calls"] >= 30 and commands["evalsha"]["usec"] > 0  # a cycle per batch, at least
    assert meter["storage"]["cpu"] >= 0 and meter["machine_busy"] >= 0
    assert meter["ping"] and 0 < min(meter["ping"]) < 1 and meter["storage_local"] is True
    assert len(meter["ping_wait"]) == len(meter["ping"]) and min(meter["ping_wait"]) >= 0  # Linux's schedstat
    assert all(w + c <= p + 1e-12 for w, c, p in zip(meter["ping_wait"], meter["ping_cpu"], meter["ping"], strict=True))
    await queue.close()


def test_worker_trace_flag_writes_one_trace_of_every_process(cli: Cli, tmp_path: Path) -> None:
    """``sharded-queue worker --trace FILE`` (two processes here) writes what `load_trace` reads."""
    enqueued = cli.run("enqueue", HANDLER, *[f"[{t}, {s}]" for t in range(4) for s in range(5)])
    assert enqueued.returncode == 0, enqueued.stderr
    path = tmp_path / "run.json"
    done = cli.run("worker", HANDLER, "--processes", "2", "--loops", "2", "--burst", "--trace", str(path))
    assert done.returncode == 0, done.stderr
    frame = load_trace(str(path))
    assert len(frame) == 20 and len(frame.attrs["meter"]) == 2
    assert {pid for pid, _, _ in cli.performed()} <= {meter["pid"] for meter in frame.attrs["meter"]}
    assert not list(tmp_path.glob("run.json.*"))  # the processes' parts were merged and removed
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(ValueError, match="is not a saved trace"):
        load_trace(str(tmp_path / "bad.json"))
