"""Crash tests with real processes and a real redis-server: kill -9 chaos, SIGSTOP
fencing, a Redis restart with AOF, and SIGTERM during a perform."""

from __future__ import annotations

import asyncio
import itertools
import json
import random
import signal
import statistics
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from benchmarks.processes import Processes
from benchmarks.worker_process import ChaosHandler
from sharded_queue import Queue, Settings, ThreadRef, Worker
from sharded_queue.testing import RedisServer, wait_until
from tests.conftest import need_redis_server


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RedisServer]:
    need_redis_server()
    instance = RedisServer(tmp_path, "--appendonly", "yes", "--appendfsync", "always")
    yield instance
    instance.stop()


@pytest.fixture
def processes(server: RedisServer, tmp_path: Path) -> Iterator[Processes]:
    env = {
        "QUEUE_LEASE_TTL": "1.5",
        "QUEUE_COORDINATOR_DELAY": "0.1",
        "QUEUE_WORKER_BATCH_SIZE": "32",
        "QUEUE_WORKER_EMPTY_LIMIT": "4",
        "QUEUE_WORKER_EMPTY_PAUSE": "0.05",
        "QUEUE_KEY_PREFIX": "chaos",
    }
    group = Processes(server.url, tmp_path, env)
    yield group
    group.stop_all()


def chaos_settings() -> Settings:
    return Settings(key_prefix="chaos", lease_ttl=1.5, worker_batch_size=32)


async def register_workload(url: str, threads: int, per_thread: int) -> None:
    queue = Queue(url, settings=chaos_settings())
    rng = random.Random(3)
    counters = [0] * threads
    requests = []
    for _ in range(threads * per_thread):
        thread = rng.randrange(threads)
        while counters[thread] >= per_thread:
            thread = (thread + 1) % threads
        requests.append([thread, counters[thread]])
        counters[thread] += 1
    for start in range(0, len(requests), 1000):
        await queue.register(ChaosHandler, *requests[start : start + 1000])
    await queue.close()


async def pending(url: str) -> int:
    queue = Queue(url, settings=chaos_settings())
    try:
        return await queue.pending(ChaosHandler)
    finally:
        await queue.close()


@dataclass
class Audit:
    performs: int
    unique: int
    lost: int
    fifo_violations: int
    duplicates: int
    duplicates_not_from_killed: int
    restarted: int
    recovery: list[float]


def audit(group: Processes, threads: int, per_thread: int) -> Audit:
    first: dict[tuple[str, int], tuple[int, int]] = {}  # message -> (clock, pid) of its first perform
    performs = 0
    by_thread: dict[str, list[tuple[float, int]]] = defaultdict(list)
    for clock, stamp, pid, _, thread, seqs in group.lines("perform"):
        by_thread[thread].append((float(stamp), int(pid)))
        for seq in map(int, seqs.split(",")):
            performs += 1
            key = (thread, seq)
            if key not in first or int(clock) < first[key][0]:
                first[key] = (int(clock), int(pid))
    expected = {(str(t), s) for t in range(threads) for s in range(per_thread)}
    violations = 0
    for t in range(threads):
        clocks = [first[str(t), s][0] for s in range(per_thread) if (str(t), s) in first]
        violations += sum(1 for a, b in itertools.pairwise(clocks) if b < a)
    counts: dict[tuple[str, int], int] = defaultdict(int)
    for *_, thread, seqs in group.lines("perform"):
        for seq in map(int, seqs.split(",")):
            counts[thread, seq] += 1
    duplicated = [key for key, n in counts.items() if n > 1]
    return Audit(
        performs=performs,
        unique=len(first),
        lost=len(expected - set(first)),
        fifo_violations=violations,
        duplicates=sum(counts[key] - 1 for key in duplicated),
        duplicates_not_from_killed=sum(1 for key in duplicated if first[key][1] not in group.killed),
        recovery=recovery_times(group, by_thread),
        restarted=sum(len(seqs.split(",")) for *_, seqs in group.lines("start")) - len(first),
    )


def recovery_times(group: Processes, by_thread: dict[str, list[tuple[float, int]]]) -> list[float]:
    """Per kill: how long until every thread the killed worker performed last was performed by another."""
    times = []
    for killed_at, pid in group.kill_times:
        worst = 0.0
        for performs in by_thread.values():
            before = [p for p in performs if p[0] <= killed_at]
            if not before or max(before)[1] != pid:
                continue
            after = [stamp for stamp, other in performs if stamp > killed_at and other != pid]
            if after:
                worst = max(worst, min(after) - killed_at)
        if worst:
            times.append(worst)
    return times


@pytest.mark.slow
async def test_kill_9_chaos_loses_nothing_and_keeps_fifo(processes: Processes) -> None:
    processes.env["TEST_PERFORM_SECONDS"] = "0.02"
    threads, per_thread = 40, 750  # 30,000 messages
    await register_workload(processes.url, threads, per_thread)
    for _ in range(4):
        processes.spawn()
    rng = random.Random(11)
    kills = 0
    deadline = time.monotonic() + 90
    while await pending(processes.url) and time.monotonic() < deadline:
        await asyncio.sleep(rng.uniform(0.1, 0.4))
        if kills < 60 and processes.running:
            processes.kill(rng.choice(processes.running))
            kills += 1
            processes.spawn()
    assert await pending(processes.url) == 0, processes.errors()[-2000:]
    processes.stop_all()
    result = audit(processes, threads, per_thread)
    report = {
        "messages": threads * per_thread,
        "kills": kills,
        "performs": result.performs,
        "lost": result.lost,
        "fifo_violations": result.fifo_violations,
        "duplicates": result.duplicates,
        "performs_started_again": result.restarted,
        "recovery_median_s": round(statistics.median(result.recovery), 3) if result.recovery else None,
        "recovery_max_s": round(max(result.recovery), 3) if result.recovery else None,
    }
    print("chaos:", json.dumps(report))
    assert kills >= 5
    assert result.lost == 0
    assert result.unique == threads * per_thread
    assert result.fifo_violations == 0
    assert result.duplicates_not_from_killed == 0  # duplicates only from batches in flight at a kill
    assert result.duplicates <= kills * 2 * 32  # at most one batch per loop of each killed process


async def test_paused_worker_cannot_touch_what_it_no_longer_owns(processes: Processes) -> None:
    """SIGSTOP a worker mid-perform past its lease; another holder takes the thread; SIGCONT: nothing changes."""
    processes.env.update({"QUEUE_LEASE_TTL": "0.6", "TEST_PERFORM_SECONDS": "0.3"})
    await register_workload(processes.url, 1, 10)
    worker = processes.spawn(loops=1)
    await wait_until(lambda: bool(processes.lines("start")), timeout=20)
    worker.send_signal(signal.SIGSTOP)
    queue = Queue(processes.url, settings=chaos_settings())
    ref = ThreadRef("chaos", "0")
    await wait_until(lambda: _lease_gone(queue, ref), timeout=20)
    assert await queue.storage.acquire(ref, "new-holder", 60)
    worker.send_signal(signal.SIGCONT)
    await wait_until(lambda: "lost" in processes.errors(), timeout=20)
    await wait_until(lambda: bool(processes.lines("perform")), timeout=20)
    assert await queue.storage.lease_token(ref) == "new-holder"  # not released by the stale worker
    assert await queue.pending(ChaosHandler) == 10  # not trimmed by the stale worker's ack
    processes.stop_all()
    await queue.storage.release(ref, "new-holder")
    await queue.close()


async def _lease_gone(queue: Queue, ref: ThreadRef) -> bool:
    return await queue.storage.lease_token(ref) is None


async def test_redis_restart_mid_drain_with_aof(server: RedisServer) -> None:
    """Workers ride out a Redis restart: no loss, FIFO kept, they resume on their own."""
    settings = chaos_settings().copy(retry_backoff=0.05, retry_backoff_max=0.2, storage_timeout=2)
    performed: dict[str, list[int]] = defaultdict(list)

    class Recording(ChaosHandler):
        name = "chaos"

        async def perform(self, *requests: list[int]) -> None:
            await asyncio.sleep(0.001)
            for thread, seq in requests:
                performed[str(thread)].append(seq)

        async def stop(self) -> None:
            pass

    await register_workload(server.url, 8, 400)
    queue = Queue(server.url, settings=settings)
    worker = Worker(queue, handlers=[Recording])
    loops = [asyncio.create_task(worker.loop()) for _ in range(4)]
    await wait_until(lambda: sum(map(len, performed.values())) > 400, timeout=30)
    server.stop()
    done_while_down = sum(map(len, performed.values()))
    server.start()
    await wait_until(lambda: sum(map(len, performed.values())) > done_while_down, timeout=30)
    await wait_until(lambda: _drained(queue, Recording), timeout=60)
    worker.stop()
    await asyncio.wait_for(asyncio.gather(*loops), 30)
    for thread in range(8):
        seqs = performed[str(thread)]
        firsts = list(dict.fromkeys(seqs))
        assert firsts == list(range(400)), f"thread {thread} lost or reordered messages"
    await queue.close()


async def _drained(queue: Queue, handler: type[ChaosHandler]) -> bool:
    return await queue.pending(handler) == 0


async def test_sigterm_during_long_perform_acks_once_and_releases(processes: Processes) -> None:
    processes.env.update({"TEST_PERFORM_SECONDS": "0.5"})
    await register_workload(processes.url, 1, 5)
    worker = processes.spawn(loops=1)
    await wait_until(lambda: bool(processes.lines("start")), timeout=20)
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(20) == 0
    processes.running.remove(worker)
    events = [row[3] for row in processes.lines()]
    assert events == ["ready", "start", "perform", "stop", "exit"]
    queue = Queue(processes.url, settings=chaos_settings())
    assert await queue.pending(ChaosHandler) == 0  # acked
    assert await queue.storage.lease_token(ThreadRef("chaos", "0")) is None
    await queue.close()
