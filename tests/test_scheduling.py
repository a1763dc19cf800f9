"""Deferred, deduplicated and recurring requests: contract tests on fakeredis, a real
redis-server and the 3-node cluster, plus bad input."""

from __future__ import annotations

import asyncio
import threading
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar

import msgspec
import pytest

from benchmarks.processes import Processes
from benchmarks.worker_process import ChaosHandler
from sharded_queue import (
    Cron,
    Handler,
    Queue,
    RequestRoute,
    Route,
    SerializationError,
    Settings,
    Storage,
    SyncQueue,
    Tube,
    Worker,
)
from sharded_queue.core import Schedule
from sharded_queue.testing import drain, wait_until
from tests.test_crashes import chaos_settings


class Timed(Handler):
    """Records each request with the storage server's time when it was performed."""

    performed: ClassVar[list[tuple[Any, float]]] = []
    queue: ClassVar[Queue]

    @classmethod
    async def route(cls, *requests: Any) -> list[RequestRoute]:
        return [RequestRoute(r, Route(thread=str(r)[0])) for r in requests]

    async def perform(self, *requests: Any) -> None:
        now = await self.queue.storage.server_time()
        self.performed.extend((request, now) for request in requests)


@pytest.fixture
def timed(queue: Queue) -> type[Timed]:
    Timed.performed = []
    Timed.queue = queue
    return Timed


def performed(handler: type[Timed]) -> list[Any]:
    return [request for request, _ in handler.performed]


async def run_until(worker: Worker, condition: Any, loops: int = 2, timeout: float = 20) -> None:
    tasks = [asyncio.create_task(worker.loop()) for _ in range(loops)]
    try:
        await wait_until(condition, timeout=timeout)
    finally:
        worker.stop()
        await asyncio.gather(*tasks)
        worker.control.stopping = False


# --- defer ------------------------------------------------------------------------


async def test_deferred_request_is_performed_when_due_not_before(queue: Queue, timed: type[Timed]) -> None:
    due = datetime.fromtimestamp(await queue.storage.server_time() + 0.3, UTC)
    assert await queue.register(timed, "a-later", defer=due) == 1
    assert await queue.register(timed, "a-now") == 1
    assert await queue.pending(timed) == 1  # the deferred one waits outside the tube
    await run_until(Worker(queue), lambda: len(timed.performed) == 2)
    assert performed(timed) == ["a-now", "a-later"]
    assert timed.performed[1][1] >= due.timestamp()  # on the storage server's clock


async def test_deferred_requests_join_the_tail_in_due_then_registration_order(queue: Queue, timed: type[Timed]) -> None:
    now = await queue.storage.server_time()
    at = datetime.fromtimestamp(now + 0.3, UTC)
    await queue.register(timed, "b1", "b2", defer=at)
    await queue.register(timed, "b0", defer=timedelta(seconds=0.1))  # due first
    await queue.register(timed, "b3", defer=at)  # due with b1, b2, registered after them
    await queue.register(timed, "b-now")
    worker = Worker(queue)
    await run_until(worker, lambda: len(timed.performed) == 5)
    assert performed(timed) == ["b-now", "b0", "b1", "b2", "b3"]
    assert await _due_threads(queue, timed) == 0  # the due index forgot the thread


async def test_registration_after_due_never_overtakes_a_deferred_request(queue: Queue, timed: type[Timed]) -> None:
    await queue.register(timed, "c-deferred", defer=0.05)
    await asyncio.sleep(0.2)  # due now, but no worker has run: it has not moved yet
    await queue.register(timed, "c-after")  # moves what came due first
    await drain(Worker(queue))
    assert performed(timed) == ["c-deferred", "c-after"]


async def _due_threads(queue: Queue, handler: type[Handler]) -> int:
    return int(await queue.storage.client.zcard(queue.storage.keys.due_index(queue.spec(handler).name)))


# --- if_not_exists ------------------------------------------------------------------


class Dedup(Handler):
    performed: ClassVar[list[str]] = []
    poison: ClassVar[set[str]] = set()
    retry_attempts = 1

    async def perform(self, *requests: str) -> None:
        for request in requests:
            if request in self.poison:
                raise RuntimeError(f"poison {request}")
        self.performed.extend(requests)


async def test_if_not_exists_skips_a_waiting_equal_request_until_it_is_acked(queue: Queue) -> None:
    Dedup.performed, Dedup.poison = [], set()
    assert await queue.register(Dedup, "x", "y", "x", if_not_exists=True) == 2
    assert await queue.register(Dedup, "x", if_not_exists=True) == 0
    assert await queue.register(Dedup, "x") == 1  # without the option nothing is checked
    assert await queue.register(Dedup, "z", defer=60, if_not_exists=True) == 1
    assert await queue.register(Dedup, "z", if_not_exists=True) == 0  # a deferred one waits too
    await drain(Worker(queue))
    assert Dedup.performed == ["x", "y", "x"]
    assert await queue.register(Dedup, "x", if_not_exists=True) == 1  # performed: stored again
    await drain(Worker(queue))
    assert Dedup.performed == ["x", "y", "x", "x"]


async def test_if_not_exists_mark_goes_with_a_dead_letter(queue: Queue) -> None:
    Dedup.performed, Dedup.poison = [], {"bad"}
    assert await queue.register(Dedup, "bad", if_not_exists=True) == 1
    await drain(Worker(queue))
    assert await queue.dead_letter_count(Dedup) == 1
    assert await queue.register(Dedup, "bad", if_not_exists=True) == 1  # its mark went with it
    marks = queue.storage.keys.marks(Tube(queue.spec(Dedup).name, "0", "0"))
    assert await queue.storage.client.scard(marks) == 1  # the new one's


# --- recurrent ------------------------------------------------------------------------


class Ticking(Handler):
    performed: ClassVar[list[str]] = []

    async def perform(self, *requests: str) -> None:
        self.performed.extend(requests)


async def test_recurring_request_runs_each_tick_and_is_listed_replaced_and_stopped(queue: Queue) -> None:
    Ticking.performed = []
    assert await queue.register(Ticking, "tick", recurrent=0.1) == 1
    assert await queue.register(Ticking, "tick", recurrent=timedelta(seconds=0.05)) == 1  # replaces
    assert queue.settings.coordinator_delay == 0.05  # the shortest period allowed
    listed = await queue.schedules(Ticking)
    assert listed[["request", "thread", "order", "every"]].values.tolist() == [["tick", "0", "0", 0.05]]
    assert listed["next_at"].iloc[0].tzinfo is not None
    worker = Worker(queue, handlers=[Ticking])
    await run_until(worker, lambda: Ticking.performed.count("tick") >= 4)
    assert await queue.unschedule(Ticking, "tick") == 1
    assert await queue.unschedule(Ticking, "tick") == 0
    assert len(await queue.schedules(Ticking)) == 0
    await drain(worker)  # a tick registered before unschedule may still be waiting
    count = len(Ticking.performed)
    await asyncio.sleep(0.2)  # four periods: no tick may come any more
    await drain(worker)
    assert len(Ticking.performed) == count


async def test_a_cron_in_a_time_zone_ticks_at_its_local_time_across_daylight_saving() -> None:
    """9:00 in Paris is 8:00 UTC in winter and 7:00 UTC in summer (croniter's handling of the zone)."""
    schedule = Schedule.of(Cron("0 9 * * *", tz="Europe/Paris"))
    winter = datetime(2026, 3, 27, 12, tzinfo=UTC).timestamp()  # Friday; the clocks go forward on Sunday
    ticks = [winter]
    for _ in range(3):
        ticks.append(schedule.next_after(ticks[-1], ticks[-1]))
    assert [datetime.fromtimestamp(t, UTC).strftime("%d %H:%M") for t in ticks[1:]] == [
        "28 08:00",
        "29 07:00",
        "30 07:00",
    ]
    assert schedule.describe() == "0 9 * * * (Europe/Paris)"


async def test_cron_schedule_is_listed_with_its_next_tick(queue: Queue) -> None:
    assert await queue.register(Ticking, "hourly", recurrent="0 * * * *") == 1
    (row,) = (await queue.schedules(Ticking)).itertuples()
    assert row.every == "0 * * * *"
    assert row.next_at.minute == 0 and row.next_at.second == 0
    now = datetime.fromtimestamp(await queue.storage.server_time(), UTC)
    assert timedelta(0) < row.next_at - now <= timedelta(hours=1)


# --- bad input -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "error", "match"),
    [
        ({"defer": -1}, ValueError, "cannot be negative"),
        ({"defer": float("nan")}, ValueError, "not a finite"),
        ({"defer": datetime(2030, 1, 1)}, ValueError, "naive datetime"),
        ({"defer": "soon"}, TypeError, "seconds or a timedelta"),
        ({"recurrent": "every monday"}, ValueError, "not a valid cron"),
        ({"recurrent": 0}, ValueError, "must be positive"),
        ({"recurrent": 0.001}, ValueError, "shortest period is the coordinator delay, 0.05 s"),
        ({"recurrent": "0 0 30 2 *"}, ValueError, "never matches"),
        ({"recurrent": "* * * * * */10"}, ValueError, "6 fields, not 5"),
        ({"recurrent": Cron("0 9 * * *", tz="Mars/Olympus")}, ValueError, "unknown time zone"),
        ({"defer": 11 * 365 * 86400}, ValueError, "at most ten years"),
        ({"defer": datetime(2099, 1, 1, tzinfo=UTC)}, ValueError, "more than ten years away"),
        ({"recurrent": 5, "defer": 5}, ValueError, "together"),
        ({"if_not_exists": "yes"}, TypeError, "takes a bool"),
    ],
)
async def test_bad_scheduling_options_write_nothing(
    queue: Queue, options: dict[str, Any], error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        await queue.register(Ticking, "r", **options)
    assert await queue.storage.client.keys(f"{queue.storage.keys.prefix}:*") == []


async def test_if_not_exists_request_that_does_not_encode_writes_nothing(queue: Queue) -> None:
    with pytest.raises(SerializationError):
        await queue.register(Dedup, "ok", 5, if_not_exists=True)  # type: ignore[arg-type]
    assert await queue.storage.client.keys(f"{queue.storage.keys.prefix}:*") == []


# --- SyncQueue ---------------------------------------------------------------------------


class Plain(Handler):
    @classmethod
    async def route(cls, *requests: int) -> list[RequestRoute]:
        return [RequestRoute(r, Route(thread=r % 4)) for r in requests]

    async def perform(self, *requests: int) -> None: ...


@pytest.mark.parametrize("backend", ["fakeredis", "redis", "cluster"])
def test_sync_queue_from_16_threads_stores_everything_once(storage: Storage) -> None:
    with SyncQueue(storage, settings=Settings(key_prefix=storage.keys.prefix)) as queue:

        def register(first: int) -> None:
            for number in range(first, first + 50):
                assert queue.register(Plain, number) == 1

        threads = [threading.Thread(target=register, args=(50 * n,)) for n in range(16)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert queue.pending(Plain) == 800
        assert queue.register(Plain, 5, if_not_exists=True, defer=1) == 1
        name = queue.queue.spec(Plain).name
        tubes = [queue._run(storage.tube_payloads(Tube(name, thread, "0"))) for thread in "0123"]
        payloads = [msgspec.json.decode(payload)[1] for tube in tubes for payload in tube]
    assert sorted(payloads) == list(range(800))
    with pytest.raises(RuntimeError, match="closed"):
        queue.register(Plain, 1)


# --- recurring requests with real worker processes ---------------------------------------


def tick_times(processes: Processes) -> list[float]:
    return [float(row[1]) for row in processes.lines("perform") if row[5] == "999"]


async def test_no_duplicate_tick_with_three_worker_processes(processes: Processes) -> None:
    for _ in range(3):
        processes.spawn(loops=2)
    queue = Queue(processes.url, settings=chaos_settings().copy(coordinator_delay=0.1))  # as the workers poll
    await queue.register(ChaosHandler, [0, 999], recurrent=0.2)
    await wait_until(lambda: len(tick_times(processes)) >= 20, timeout=30)
    assert await queue.unschedule(ChaosHandler, [0, 999]) == 1
    await queue.close()
    times = tick_times(processes)
    # one perform per tick: three workers that each registered every tick would triple this (a
    # chaos retry re-performs a tick now and then, and the span's ends fall anywhere in a period)
    assert len(times) <= 1.5 * ((times[-1] - times[0]) / 0.2 + 2)


async def test_recurring_request_survives_a_killed_worker(processes: Processes) -> None:
    first = processes.spawn(loops=1)
    queue = Queue(processes.url, settings=chaos_settings().copy(coordinator_delay=0.1))  # as the workers poll
    await queue.register(ChaosHandler, [0, 999], recurrent=0.1)
    await wait_until(lambda: len(tick_times(processes)) >= 3, timeout=30)
    processes.kill(first)
    before = len(tick_times(processes))
    processes.spawn(loops=1)
    await wait_until(lambda: len(tick_times(processes)) >= before + 3, timeout=30)
    await queue.close()
