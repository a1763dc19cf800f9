"""Faults found by adversarial testing, against real worker processes and a real
redis-server: a full Redis, hosts whose clocks are hours off, huge and failed
registrations."""

from __future__ import annotations

import asyncio
import gc
import random
import signal
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import msgspec
import pytest

from benchmarks.processes import Processes
from benchmarks.worker_process import ChaosHandler
from sharded_queue import (
    Handler,
    Queue,
    RequestRoute,
    Route,
    Settings,
    StorageError,
    StorageFull,
    Tube,
    Worker,
)
from sharded_queue.storage import connect
from sharded_queue.testing import RedisServer, wait_until
from tests.conftest import WORKER_ENV, PollCounting, need_redis_server
from tests.test_crashes import chaos_settings, pending, register_workload

HOUR = 3600.0


@pytest.fixture
def full(tmp_path: Path) -> Iterator[Processes]:
    """Workers on a Redis limited to 8 MB without eviction; their test clock lives in another Redis."""
    need_redis_server()
    (tmp_path / "clock").mkdir()
    clock = RedisServer(tmp_path / "clock")
    server = RedisServer(tmp_path, "--maxmemory", "8mb", "--maxmemory-policy", "noeviction")
    group = Processes(server.url, tmp_path, {**WORKER_ENV, "TEST_CLOCK_URL": clock.url})
    yield group
    group.stop_all()
    server.stop()
    clock.stop()


def performed(processes: Processes, pid: int | None = None) -> list[tuple[str, int]]:
    """(thread, seq) of every perform logged, by one process or all."""
    return [
        (thread, int(seq))
        for _, _, who, _, thread, seqs in processes.lines("perform")
        if pid is None or int(who) == pid
        for seq in seqs.split(",")
    ]


# --- a full Redis ---------------------------------------------------------------


async def test_full_redis_is_drained_by_fresh_workers(full: Processes) -> None:
    """Workers coming back to a Redis filled to maxmemory take leases and drain it (acquire et al. are allow-oom)."""
    processes = full
    queue = Queue(processes.url, settings=chaos_settings())
    stored = 0
    with pytest.raises(StorageFull):
        for start in range(0, 1_000_000, 1000):
            stored += await queue.register(ChaosHandler, *[[seq % 8, seq] for seq in range(start, start + 1000)])
    assert stored > 10_000
    assert await queue.pending(ChaosHandler) == stored  # the refused call wrote nothing
    for _ in range(2):
        processes.spawn(loops=2, QUEUE_WORKER_BATCH_SIZE="128")
    await wait_until(lambda: _drained(processes.url), timeout=60)
    assert sorted(seq for _, seq in performed(processes)) == list(range(stored))
    assert "retrying" not in processes.errors()  # the workers never failed a storage call
    assert await queue.register(ChaosHandler, [0, stored]) == 1  # room again
    await queue.close()


async def _drained(url: str) -> bool:
    return await pending(url) == 0


# --- clock skew -----------------------------------------------------------------


@pytest.mark.parametrize("skew", [HOUR, 30.0])
async def test_killed_worker_with_clock_ahead_is_taken_over(processes: Processes, skew: float) -> None:
    """A worker whose clock is ahead, killed while holding a thread: taken over once its lease expires."""
    await register_workload(processes.url, 1, 20)
    ahead = processes.spawn(loops=1, TEST_CLOCK_SKEW=str(skew), TEST_PERFORM_SECONDS="5", QUEUE_WORKER_BATCH_SIZE="1")
    await wait_until(lambda: bool(processes.lines("start")), timeout=20)
    processes.kill(ahead)
    processes.spawn(loops=1)
    await wait_until(lambda: _drained(processes.url), timeout=20)  # the lease TTL is 1.5 s
    assert [seq for _, seq in performed(processes)] == list(range(20))


async def test_worker_with_clock_ahead_stopping_cleanly_leaves_the_rest_visible(processes: Processes) -> None:
    await register_workload(processes.url, 1, 20)
    ahead = processes.spawn(loops=1, TEST_CLOCK_SKEW=str(HOUR), TEST_PERFORM_SECONDS="0.1", QUEUE_WORKER_BATCH_SIZE="1")
    await wait_until(lambda: len(processes.lines("perform")) >= 5, timeout=20)
    ahead.send_signal(signal.SIGTERM)
    await asyncio.to_thread(ahead.wait, 20)
    processes.running.remove(ahead)
    taken = len(performed(processes))
    assert 5 <= taken < 20
    processes.spawn(loops=1)
    await wait_until(lambda: _drained(processes.url), timeout=20)
    assert [seq for _, seq in performed(processes)] == list(range(20))


async def test_producer_with_clock_ahead_is_served_at_once(
    processes: Processes, monkeypatch: pytest.MonkeyPatch
) -> None:
    processes.spawn(loops=1)
    await wait_until(lambda: "ready" in {row[3] for row in processes.lines()}, timeout=20)
    real = time.time
    monkeypatch.setattr(time, "time", lambda: real() + HOUR)
    await register_workload(processes.url, 3, 5)
    monkeypatch.setattr(time, "time", real)
    await wait_until(lambda: _drained(processes.url), timeout=20)
    assert len(performed(processes)) == 15


async def test_worker_with_clock_behind_sees_work(processes: Processes) -> None:
    processes.spawn(loops=2, TEST_CLOCK_SKEW=str(-HOUR))
    await register_workload(processes.url, 4, 10)
    await wait_until(lambda: _drained(processes.url), timeout=20)
    assert len(performed(processes)) == 40


async def test_worker_with_clock_behind_does_not_hide_free_threads(processes: Processes) -> None:
    """16 threads held by a worker whose clock is behind must not fill the coordinator's window."""
    await register_workload(processes.url, 16, 1)
    processes.spawn(loops=16, TEST_CLOCK_SKEW=str(-HOUR), TEST_PERFORM_SECONDS="60")
    await wait_until(lambda: len(processes.lines("start")) == 16, timeout=20)
    queue = Queue(processes.url, settings=chaos_settings())
    await queue.register(ChaosHandler, *[[thread, 0] for thread in range(16, 20)])
    await queue.close()
    correct = processes.spawn(loops=4)
    await wait_until(lambda: len(performed(processes, correct.pid)) == 4, timeout=20)
    assert sorted(performed(processes, correct.pid)) == [(str(thread), 0) for thread in range(16, 20)]


# --- huge registrations, failed registrations -------------------------------------


async def test_huge_register_is_written_in_bounded_chunks_in_order(redis_url: str) -> None:
    queue = Queue(redis_url, settings=chaos_settings().copy(key_prefix="chunks", register_chunk=1000))
    await queue.register(ChaosHandler, [3, -1])  # the script is loaded
    calls = await _script_calls(queue)
    assert await queue.register(ChaosHandler, *[[seq % 3, seq] for seq in range(4500)]) == 4500
    assert await _script_calls(queue) - calls == 5  # 1000 + 1000 + 1000 + 1000 + 500
    for thread in range(3):
        payloads = await queue.storage.tube_payloads(Tube("chaos", str(thread), "0"))
        assert [msgspec.json.decode(p)[1][1] for p in payloads] == list(range(thread, 4500, 3))
    await queue.close()


async def _script_calls(queue: Queue) -> int:
    stats = await queue.storage.client.info("commandstats")
    return int(stats.get("cmdstat_evalsha", {}).get("calls", 0))


async def test_huge_register_failing_midway_says_how_much_was_stored(full: Processes) -> None:
    """A call of many chunks against a Redis that fills up: the first chunks are stored whole, the error says so."""
    queue = Queue(full.url, settings=chaos_settings().copy(register_chunk=1000))
    with pytest.raises(StorageFull) as raised:
        await queue.register(ChaosHandler, *[[0, seq] for seq in range(1_000_000)])
    stored = raised.value.stored
    assert stored > 0 and stored % 1000 == 0
    assert f"the first {stored} of 1000000 requests were stored" in raised.value.__notes__
    payloads = await queue.storage.tube_payloads(Tube("chaos", "0", "0"))
    assert [msgspec.json.decode(p)[1][1] for p in payloads] == list(range(stored))
    await queue.close()


@pytest.mark.parametrize("fault", ["stopped", "paused"])
async def test_failed_register_leaves_no_unclosed_client(tmp_path: Path, fault: str) -> None:
    need_redis_server()
    server = RedisServer(tmp_path)
    queue = Queue(server.url, settings=chaos_settings().copy(storage_timeout=0.5))
    await queue.register(ChaosHandler, [0, 0])  # a pooled connection, as in a running process
    assert server.process is not None
    if fault == "stopped":
        server.stop()
    else:
        server.process.send_signal(signal.SIGSTOP)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(StorageError):
            await queue.register(ChaosHandler, [0, 1])
        await queue.close()
        del queue
        gc.collect()
    if server.process is not None:
        server.process.send_signal(signal.SIGCONT)
        server.stop()
    assert [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)] == []


# --- cancellation -----------------------------------------------------------------


class Noop(Handler):
    name = "noop"

    @classmethod
    async def route(cls, *requests: int) -> list[RequestRoute]:
        return [RequestRoute(r, Route(thread=r % 16)) for r in requests]

    async def perform(self, *requests: int) -> None:
        pass


async def test_cancelled_loops_always_stop(redis_url: str) -> None:
    """Busy and idle-polling loops cancelled at random moments all stop, whatever the client library swallows.

    On Python 3.11, ``asyncio.wait_for`` (redis-py sends every command through it)
    returns normally when cancelled just as the send completes; before loops
    checked ``Task.cancelling()``, most of these trials left loops running.
    """
    rng = random.Random(7)
    for trial in range(30):
        settings = Settings(
            key_prefix=f"cancel{trial}", coordinator_delay=0.001, worker_empty_limit=1, worker_empty_pause=0
        )
        queue = Queue(redis_url, settings=settings)
        await queue.register(Noop, *range(500))
        worker = Worker(queue, handlers=[Noop])
        loops = [asyncio.create_task(worker.loop()) for _ in range(16)]
        await asyncio.sleep(rng.uniform(0.002, 0.06))  # a random moment: busy or idle
        for loop in loops:
            loop.cancel()
        _, running = await asyncio.wait(loops, timeout=5)
        if running:  # stop them for good before failing
            worker.stop()
            await asyncio.wait(running, timeout=5)
        assert not running, f"trial {trial}: {len(running)} of 16 cancelled loops still running"
        await queue.close()


# --- a perform that blocks the event loop -------------------------------------------


async def test_perform_blocking_the_event_loop_past_the_lease_is_dead_lettered(processes: Processes) -> None:
    """The request whose perform blocks longer than the lease TTL ends in the dead letters; the rest goes on."""
    processes.env.update({"QUEUE_LEASE_TTL": "0.5", "QUEUE_RETRY_ATTEMPTS": "2", "QUEUE_WORKER_BATCH_SIZE": "8"})
    await register_workload(processes.url, 1, 12)
    processes.spawn(loops=1, TEST_BLOCK_SEQ="5", TEST_BLOCK_SECONDS="0.8")
    await wait_until(lambda: _drained(processes.url), timeout=60)
    queue = Queue(processes.url, settings=chaos_settings())
    (letter,) = await queue.dead_letters(ChaosHandler)
    await queue.close()
    assert msgspec.json.decode(letter.payload)[1] == [0, 5]
    assert letter.error_type == "LeaseLost"
    assert "blocks the event loop" in letter.error
    assert 2 <= letter.attempts <= 2 + 3  # lost leases: at most attempts + log2(8) before this one
    performs = [seq for _, seq in performed(processes) if seq != 5]  # 5 ran to its end, but never under its lease
    first = list(dict.fromkeys(performs))
    assert first == [seq for seq in range(12) if seq != 5]  # every other request, in FIFO order


# --- wake-ups among many worker processes ------------------------------------------------


class Storm(Handler):
    name = "storm"
    performed: ClassVar[list[int]] = []

    @classmethod
    async def route(cls, *requests: int) -> list[RequestRoute]:
        return [RequestRoute(r, Route(thread=r)) for r in requests]

    async def perform(self, *requests: int) -> None:
        self.performed.extend(requests)


async def test_one_worker_process_answers_each_wake_up(redis_url: str) -> None:
    """Polls per registration do not grow with the number of worker processes (here 6, two loops each)."""
    Storm.performed = []
    settings = Settings(
        key_prefix="storm", coordinator_delay=60, lease_ttl=1.5, worker_empty_limit=1, worker_empty_pause=0
    )
    storages = [PollCounting(connect(redis_url, settings), "storm") for _ in range(6)]
    workers = [Worker(Queue(storage, settings=settings), handlers=[Storm]) for storage in storages]
    loops = [asyncio.create_task(worker.loop()) for worker in workers for _ in range(2)]
    await wait_until(lambda: all(len(worker.peers) == 6 for worker in workers))
    await wait_until(lambda: sum(len(worker.wakeups.idle) for worker in workers) == 12)  # all idle on a 60 s delay
    before = sum(storage.polls for storage in storages)
    queue = Queue(redis_url, settings=settings)
    for number in range(20):
        await queue.register(Storm, number)
        await wait_until(lambda: len(Storm.performed) == number + 1)  # noqa: B023 - awaited at once
        await wait_until(lambda: sum(len(worker.wakeups.idle) for worker in workers) == 12)
    polls = (sum(storage.polls for storage in storages) - before) / 20
    assert polls <= 3, f"{polls} polls per registration"  # every process answering made it 7 or more
    for worker in workers:
        worker.stop()
    await asyncio.gather(*loops)
    await queue.close()
    for storage in storages:
        await storage.close()


async def test_register_after_a_redis_restart_reconnects_by_itself(tmp_path: Path) -> None:
    """Connections broken by a restart are replaced on the next call, which succeeds."""
    need_redis_server()
    server = RedisServer(tmp_path)
    queue = Queue(server.url, settings=chaos_settings())
    assert await queue.register(ChaosHandler, [0, 0]) == 1
    server.stop()
    server.start()  # same port, empty (no persistence)
    assert await queue.register(ChaosHandler, [0, 1]) == 1
    assert await queue.pending(ChaosHandler) == 1
    await queue.close()
    server.stop()
