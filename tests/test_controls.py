"""Thread controls (issue #27), the contract: pause and resume, rate limits, `RateLimited`,
back-pressure (`ThreadFull`), batch linger and `BatchFailed`, on fakeredis, a real
redis-server and a Redis Cluster. Every wait has a deadline; nothing sleeps and hopes."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, ClassVar

import pytest

from sharded_queue import (
    BatchFailed,
    Handler,
    Queue,
    RateLimited,
    RequestRoute,
    Route,
    ThreadFull,
    ThreadRef,
    Worker,
)
from sharded_queue.core import Held, Short
from sharded_queue.testing import drain, wait_until


@dataclass
class Job:
    thread: str
    n: int


class Threaded(Handler):
    """Routes each job to its own thread; logs (thread, n) per perform, with the storage's clock."""

    log: ClassVar[list[tuple[str, list[int]]]] = []

    @classmethod
    async def route(cls, *requests: Job) -> list[RequestRoute]:
        return [RequestRoute(r, Route(thread=r.thread)) for r in requests]

    async def perform(self, *requests: Job) -> None:
        self.log.append((requests[0].thread, [r.n for r in requests]))


def jobs(thread: str, count: int, start: int = 0) -> list[Job]:
    return [Job(thread, n) for n in range(start, start + count)]


@contextlib.asynccontextmanager
async def running(worker: Worker, loops: int = 2) -> AsyncIterator[list[asyncio.Task[int]]]:
    """Run ``loops`` loops of ``worker`` in the background; stop them on the way out."""
    tasks = [asyncio.create_task(worker.loop()) for _ in range(loops)]
    try:
        yield tasks
    finally:
        worker.stop()
        await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 20)


def performed(log: list[tuple[str, list[int]]], thread: str) -> list[int]:
    return [n for t, batch in log if t == thread for n in batch]


# --- pause and resume --------------------------------------------------------


class Pausable(Threaded):
    log: ClassVar[list[tuple[str, list[int]]]] = []


async def hidden_until_resumed(queue: Queue, handler: str, thread: str) -> bool:
    """acquire refused the thread and hid it in the index until its pause ends (never)."""
    score = await queue.storage.client.zscore(queue.storage.keys.index(handler), thread)
    return score is not None and score >= 1e14


async def test_a_paused_thread_is_not_bound_and_resume_takes_it(queue: Queue) -> None:
    Pausable.log = []
    name = queue.spec(Pausable).name
    await queue.pause(Pausable, thread="a")
    assert await queue.paused(Pausable) == ["a"]
    await queue.register(Pausable, *jobs("a", 5), *jobs("b", 5))
    worker = Worker(queue)
    async with running(worker):
        await wait_until(lambda: len(performed(Pausable.log, "b")) == 5, timeout=20)
        await wait_until(lambda: hidden_until_resumed(queue, name, "a"), timeout=20)
        assert performed(Pausable.log, "a") == []  # refused at acquire: nothing of it performed
        assert await queue.pending(Pausable) == 5  # stored as usual, waiting
        await queue.resume(Pausable, thread="a")
        assert await queue.paused(Pausable) == []
        await wait_until(lambda: len(performed(Pausable.log, "a")) == 5, timeout=20)
    assert performed(Pausable.log, "a") == [0, 1, 2, 3, 4]  # FIFO kept


class Blocking(Threaded):
    """Blocks its first batch until `release` is set."""

    log: ClassVar[list[tuple[str, list[int]]]] = []
    batch_size = 2
    entered: ClassVar[asyncio.Event]
    release: ClassVar[asyncio.Event]

    async def perform(self, *requests: Job) -> None:
        if not self.entered.is_set():
            self.entered.set()
            await self.release.wait()
        await super().perform(*requests)


async def test_a_handler_wide_pause_lets_the_holder_finish_its_batch_then_let_go(queue: Queue) -> None:
    Blocking.log, Blocking.entered, Blocking.release = [], asyncio.Event(), asyncio.Event()
    name = queue.spec(Blocking).name
    await queue.register(Blocking, *jobs("0", 6))
    worker = Worker(queue)
    async with running(worker, loops=1):
        await asyncio.wait_for(Blocking.entered.wait(), 20)  # the loop holds thread 0, in its first batch
        await queue.pause(Blocking)
        assert await queue.paused(Blocking) == ["*"]
        Blocking.release.set()
        await wait_until(lambda: Blocking.log == [("0", [0, 1])], timeout=20)
        ref = ThreadRef(name, "0")
        await wait_until(lambda: _no_lease(queue, ref), timeout=20)  # acked, then let go
        await wait_until(lambda: hidden_until_resumed(queue, name, "0"), timeout=20)
        assert Blocking.log == [("0", [0, 1])]
        assert await queue.pending(Blocking) == 4
        await queue.resume(Blocking)
        await wait_until(lambda: len(performed(Blocking.log, "0")) == 6, timeout=20)
    assert performed(Blocking.log, "0") == list(range(6))


async def _no_lease(queue: Queue, ref: ThreadRef) -> bool:
    return await queue.storage.lease_token(ref) is None


async def test_a_thread_that_appears_during_a_handler_wide_pause_is_refused_too(queue: Queue) -> None:
    """No copy of the pause is in it (it was not indexed when the pause was written): acquire reads
    the handler's pause itself (on a cluster, the index call that follows it)."""
    Pausable.log = []
    name = queue.spec(Pausable).name
    await queue.pause(Pausable)
    await queue.register(Pausable, *jobs("new", 3))
    worker = Worker(queue)
    async with running(worker):
        await wait_until(lambda: hidden_until_resumed(queue, name, "new"), timeout=20)
        assert await queue.storage.lease_token(ThreadRef(name, "new")) is None
        assert Pausable.log == []
        await queue.resume(Pausable)
        await wait_until(lambda: len(performed(Pausable.log, "new")) == 3, timeout=20)
    assert performed(Pausable.log, "new") == [0, 1, 2]


async def test_resume_wakes_an_idle_loop_at_once(queue: Queue, settings: Any) -> None:
    """The loop sleeps ``coordinator_delay`` (an hour) after its poll found only the paused thread:
    only the resume's wake-up can get the thread performed before the test's deadline."""
    from dataclasses import replace

    Pausable.log = []
    slow = Queue(queue.storage, settings=replace(settings, coordinator_delay=3600.0))
    name = slow.spec(Pausable).name
    await slow.pause(Pausable, thread="a")
    await slow.register(Pausable, *jobs("a", 2))
    worker = Worker(slow)
    async with running(worker, loops=1):
        await wait_until(lambda: hidden_until_resumed(slow, name, "a"), timeout=20)
        await wait_until(lambda: bool(worker.wakeups.idle), timeout=20)  # polled, now waiting
        await slow.resume(Pausable, thread="a")
        await wait_until(lambda: len(performed(Pausable.log, "a")) == 2, timeout=20)


async def test_a_handler_wide_pause_leaves_threads_paused_by_name(queue: Queue) -> None:
    await queue.pause(Pausable, thread="x")
    await queue.pause(Pausable)
    assert await queue.paused(Pausable) == ["*", "x"]
    await queue.resume(Pausable)
    assert await queue.paused(Pausable) == ["x"]


async def test_a_pause_for_a_duration_ends_by_itself(queue: Queue) -> None:
    Pausable.log = []
    await queue.pause(Pausable, thread="a", for_=1.0)
    assert await queue.paused(Pausable) == ["a"]
    await queue.register(Pausable, *jobs("a", 3))
    assert await drain(Worker(queue), loops=1, timeout=30) == 3
    assert await queue.paused(Pausable) == []
    assert performed(Pausable.log, "a") == [0, 1, 2]


async def test_pauses_are_stored_not_held_by_a_queue_object(queue: Queue, settings: Any) -> None:
    await queue.pause(Pausable, thread="a")
    other = Queue(queue.storage, settings=settings)
    assert await other.paused(queue.spec(Pausable).name) == ["a"]


# --- RateLimited -------------------------------------------------------------


class Limited(Threaded):
    """Thread "a" answers "too many requests" three times, then performs."""

    log: ClassVar[list[tuple[str, list[int]]]] = []
    tries: ClassVar[list[float]] = []  # thread "a"'s performs, on the server's clock
    retry_attempts = 1  # a plain failure would dead-letter at once
    batch_size = 3
    storage: ClassVar[Any]

    async def perform(self, *requests: Job) -> None:
        if requests[0].thread == "a":
            self.tries.append(await self.storage.server_time())
            if len(self.tries) <= 3:
                raise RateLimited(retry_after=0.2)
        self.log.append((requests[0].thread, [r.n for r in requests]))


async def test_rate_limited_keeps_the_batch_counts_no_attempt_and_waits(queue: Queue) -> None:
    Limited.log, Limited.tries, Limited.storage = [], [], queue.storage
    await queue.register(Limited, *jobs("a", 3), *jobs("b", 3))
    assert await drain(Worker(queue), loops=2, timeout=30) == 6
    assert performed(Limited.log, "a") == [0, 1, 2]  # the batch stayed whole at the head
    assert await queue.dead_letter_count(Limited) == 0  # no attempt counted
    assert len(Limited.tries) == 4  # refused three times, then performed
    for before, after in zip(Limited.tries, Limited.tries[1:], strict=False):
        assert after - before >= 0.2 - 0.002  # not performed again before retry_after (server clock)
    assert performed(Limited.log, "b") == [0, 1, 2]


# --- BatchFailed -------------------------------------------------------------


class Partial(Threaded):
    """Requests 1 and 3 always fail; the batch reports them with BatchFailed."""

    log: ClassVar[list[tuple[str, list[int]]]] = []
    batch_size = 5
    retry_attempts = 2

    async def perform(self, *requests: Job) -> None:
        self.log.append((requests[0].thread, [r.n for r in requests]))
        failures = {i: ValueError(f"bad {r.n}") for i, r in enumerate(requests) if r.n in (1, 3)}
        if failures:
            raise BatchFailed(failures)


async def test_batch_failed_retries_only_the_failed_and_acks_the_rest(queue: Queue) -> None:
    Partial.log = []
    await queue.register(Partial, *jobs("0", 8))
    await drain(Worker(queue), loops=1, timeout=30)
    batches = [batch for _, batch in Partial.log]
    # the batch, then its failed requests again (attempt 2), then the next batch: FIFO held
    assert batches == [[0, 1, 2, 3, 4], [1, 3], [5, 6, 7]]
    dead = await queue.dead_letters(Partial)
    assert [(d.error_type, d.error, d.attempts) for d in dead] == [
        ("ValueError", "bad 1", 2),
        ("ValueError", "bad 3", 2),
    ]
    assert await queue.pending(Partial) == 0


def test_batch_failed_and_rate_limited_refuse_bad_arguments() -> None:
    with pytest.raises(ValueError, match="non-empty"):
        BatchFailed({})
    with pytest.raises(ValueError, match="index must be an int >= 0"):
        BatchFailed({-1: ValueError()})
    with pytest.raises(ValueError, match="must map to an exception"):
        BatchFailed({0: "oops"})  # type: ignore[dict-item]
    with pytest.raises(ValueError, match="retry_after"):
        RateLimited(retry_after=-1)
    with pytest.raises(ValueError, match="retry_after"):
        RateLimited(retry_after=float("nan"))


# --- back-pressure -----------------------------------------------------------


class Capped(Threaded):
    max_pending = 3


async def test_max_pending_refuses_a_registration_that_would_overfill_a_thread(queue: Queue, backend: str) -> None:
    assert await queue.register(Capped, *jobs("a", 3), if_not_exists=True) == 3
    with pytest.raises(ThreadFull) as refused:
        await queue.register(Capped, *jobs("a", 1, start=3))
    assert (refused.value.thread, refused.value.depth, refused.value.limit) == ("a", 3, 3)
    assert "'a'" in str(refused.value) and "max_pending is 3" in str(refused.value)
    assert await queue.pending(Capped) == 3  # nothing written
    if backend != "cluster":  # one server: the whole call is refused, the other thread's part too
        with pytest.raises(ThreadFull):
            await queue.register(Capped, *jobs("b", 1), *jobs("a", 1, start=3))
        assert await queue.pending(Capped) == 3
    # what does not join the tube now does not count: a duplicate, a deferred request
    assert await queue.register(Capped, Job("a", 0), if_not_exists=True) == 0  # a duplicate: dropped, not refused
    with pytest.raises(ThreadFull):
        await queue.register(Capped, Job("a", 9), if_not_exists=True)
    assert await queue.register(Capped, Job("a", 9), defer=60) == 1
    assert await queue.register(Capped, *jobs("c", 3)) == 3  # other threads are not affected


async def test_a_drained_thread_takes_registrations_again(queue: Queue) -> None:
    await queue.register(Capped, *jobs("a", 3))
    await drain(Worker(queue), loops=1, timeout=30)
    assert await queue.register(Capped, *jobs("a", 3, start=3)) == 3


def test_bad_controls_are_refused_when_the_class_is_defined() -> None:
    with pytest.raises(ValueError, match=r"BadRate.rate_limit must be a rate like '500/s'"):

        class BadRate(Handler):
            rate_limit = "fast"

    with pytest.raises(ValueError, match="thread_rate_limit"):

        class BadUnit(Handler):
            thread_rate_limit = "10/day"

    with pytest.raises(ValueError, match="rate like"):

        class ZeroRate(Handler):
            rate_limit = "0/s"

    with pytest.raises(ValueError, match=r"max_pending must be an int >= 1"):

        class Negative(Handler):
            max_pending = -1

    with pytest.raises(ValueError, match=r"batch_linger must be a number of seconds >= 0"):

        class Linger(Handler):
            batch_linger = -0.5


async def test_bad_pause_arguments_are_refused(queue: Queue) -> None:
    with pytest.raises(ValueError, match="for_"):
        await queue.pause(Pausable, for_=-1)
    with pytest.raises(ValueError, match="for_"):
        await queue.pause(Pausable, for_=0)
    with pytest.raises(ValueError, match="thread"):
        await queue.pause(Pausable, thread="")
    assert await queue.paused(Pausable) == []


# --- rate limits -------------------------------------------------------------


class Timed(Threaded):
    """Logs each perform with the storage server's clock."""

    log: ClassVar[list[tuple[str, list[int]]]] = []
    times: ClassVar[list[tuple[float, int]]] = []
    storage: ClassVar[Any]
    batch_size = 4

    async def perform(self, *requests: Job) -> None:
        self.times.append((await self.storage.server_time(), len(requests)))
        await super().perform(*requests)


class ThreadRated(Timed):
    log: ClassVar[list[tuple[str, list[int]]]] = []
    times: ClassVar[list[tuple[float, int]]] = []
    thread_rate_limit = "20/s"


class HandlerRated(Timed):
    log: ClassVar[list[tuple[str, list[int]]]] = []
    times: ClassVar[list[tuple[float, int]]] = []
    rate_limit = "30/s"


def worst_window(times: list[tuple[float, int]], seconds: float) -> int:
    """The most requests performed in any window of ``seconds`` starting at a perform."""
    return max(sum(n for t, n in times if start <= t < start + seconds) for start, _ in times)


@pytest.mark.parametrize(("handler", "rate", "threads"), [(ThreadRated, 20, 1), (HandlerRated, 30, 3)])
async def test_a_rate_limit_holds_performs_to_the_limit_plus_one_batch(
    queue: Queue, handler: type[Timed], rate: int, threads: int
) -> None:
    handler.log, handler.times, handler.storage = [], [], queue.storage
    requests = [job for thread in range(threads) for job in jobs(str(thread), 40 // threads + 4)]
    await queue.register(handler, *requests)
    assert await drain(Worker(queue), loops=3, timeout=60) == len(requests)
    # The bound is the limit times the window plus one batch (the bucket). The times are taken as
    # each perform starts, a little after its fetch spent the tokens: one batch more of slack.
    for window in (0.25, 0.5, 1.0):
        assert worst_window(handler.times, window) <= rate * window + 2 * handler.batch_size  # type: ignore[operator]
    span = handler.times[-1][0] - handler.times[0][0]
    assert span >= (len(requests) - 2 * handler.batch_size) / rate  # type: ignore[operator]
    for thread in range(threads):  # FIFO kept
        assert performed(handler.log, str(thread)) == sorted(performed(handler.log, str(thread)))


# --- linger ------------------------------------------------------------------


class Lingering(Threaded):
    log: ClassVar[list[tuple[str, list[int]]]] = []
    batch_size = 4
    batch_linger = 60.0  # only a full batch ends the wait before the test's deadline


async def test_a_lingering_loop_waits_for_a_full_batch_and_is_woken_when_it_fills(queue: Queue) -> None:
    Lingering.log = []
    short = asyncio.Event()

    def observe(effect: object, result: object) -> None:
        if isinstance(result, Short):
            short.set()

    await queue.register(Lingering, *jobs("0", 1))
    worker = Worker(queue, observer=observe)
    async with running(worker, loops=1):
        await asyncio.wait_for(short.wait(), 20)  # the loop found 1 of 4 and waits
        assert Lingering.log == []
        await queue.register(Lingering, *jobs("0", 3, start=1))
        await wait_until(lambda: bool(Lingering.log), timeout=20)
    assert Lingering.log == [("0", [0, 1, 2, 3])]


class BriefLinger(Threaded):
    log: ClassVar[list[tuple[str, list[int]]]] = []
    batch_size = 4
    batch_linger = 0.2


async def test_a_short_batch_is_performed_once_the_linger_has_passed(queue: Queue) -> None:
    BriefLinger.log = []
    seen: list[object] = []
    await queue.register(BriefLinger, *jobs("0", 2))
    assert await drain(Worker(queue, observer=lambda e, r: seen.append(r)), loops=1, timeout=30) == 2
    assert BriefLinger.log == [("0", [0, 1])]
    assert any(isinstance(result, Short) for result in seen)
    assert not any(isinstance(result, Held) for result in seen)


def test_sync_queue_pauses_and_resumes(redis_url: str) -> None:
    from sharded_queue import Settings, SyncQueue

    with SyncQueue(redis_url, settings=Settings(key_prefix="sync-controls")) as sync:
        sync.pause(Pausable, thread=1, for_=60)
        sync.pause(Pausable)
        assert sync.paused(Pausable) == ["*", "1"]
        sync.resume(Pausable)
        sync.resume(Pausable, thread="1")
        assert sync.paused(Pausable) == []
