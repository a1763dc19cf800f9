"""The contract suite: seed example, FIFO, orders, leases and fencing, at-least-once,
no stranded messages. Every test runs on fakeredis and on a real redis-server."""

from __future__ import annotations

import asyncio
import random
from collections import defaultdict
from dataclasses import dataclass
from typing import ClassVar

import pytest

from sharded_queue import Handler, Queue, RequestRoute, Route, Settings, Storage, ThreadRef, Tube, Worker
from sharded_queue.core import Ack
from sharded_queue.storage import TubeWrite
from sharded_queue.testing import drain, wait_until
from sharded_queue.waking import Waker
from tests.conftest import PollCounting


@dataclass
class NotifyRequest:
    user_id: int


class NotifyHandler(Handler):
    log: ClassVar[list[object]] = []

    @classmethod
    async def route(cls, *requests: NotifyRequest) -> list[RequestRoute]:
        return [RequestRoute(r, Route(thread=str(r.user_id % 3))) for r in requests]

    async def start(self) -> None:
        self.log.append("start")

    async def perform(self, *requests: NotifyRequest) -> None:
        self.log.append([r.user_id for r in requests])

    async def stop(self) -> None:
        self.log.append("stop")


async def test_seed_example(queue: Queue) -> None:
    NotifyHandler.log = []
    await queue.register(NotifyHandler, *[NotifyRequest(i) for i in range(1, 10)])
    worker = Worker(queue)
    results = await asyncio.wait_for(asyncio.gather(worker.loop(3), worker.loop(3), worker.loop(3)), 20)
    assert results == [3, 3, 3]
    batches = [entry for entry in NotifyHandler.log if isinstance(entry, list)]
    assert sorted(batches) == [[1, 4, 7], [2, 5, 8], [3, 6, 9]]
    assert NotifyHandler.log.count("start") == NotifyHandler.log.count("stop") == 3
    assert await queue.pending(NotifyHandler) == 0
    for thread in "012":  # every lease released on return
        assert await queue.storage.lease_token(ThreadRef(queue.spec(NotifyHandler).name, thread)) is None


@dataclass
class Item:
    thread: int
    order: int
    seq: int


class FifoHandler(Handler):
    performed: ClassVar[list[Item]] = []
    orders = ("2", "1", "0")  # "2" most urgent
    batch_size = 7

    @classmethod
    async def route(cls, *requests: Item) -> list[RequestRoute]:
        return [RequestRoute(r, Route(r.thread, r.order)) for r in requests]

    async def perform(self, *requests: Item) -> None:
        await asyncio.sleep(random.random() / 1000)
        self.performed.extend(requests)


async def test_fifo_per_thread_with_concurrent_loops(queue: Queue) -> None:
    """8 loops, 32 threads, 3 orders: every (thread, order) is performed exactly once in FIFO order."""
    FifoHandler.performed = []
    counters: dict[tuple[int, int], int] = defaultdict(int)
    rng = random.Random(7)
    for _ in range(20):  # registrations interleaved across threads and orders
        batch = []
        for _ in range(50):
            key = (rng.randrange(32), rng.randrange(3))
            batch.append(Item(key[0], key[1], counters[key]))
            counters[key] += 1
        await queue.register(FifoHandler, *batch)
    worker = Worker(queue)
    assert await drain(worker, loops=8, timeout=60) == 1000
    seen: dict[tuple[int, int], list[int]] = defaultdict(list)
    for item in FifoHandler.performed:
        seen[item.thread, item.order].append(item.seq)
    assert {key: len(seqs) for key, seqs in seen.items()} == dict(counters)
    for seqs in seen.values():
        assert seqs == sorted(seqs)


class OrderedHandler(Handler):
    performed: ClassVar[list[str]] = []
    batch_size = 2

    @classmethod
    async def route(cls, *requests: str) -> list[RequestRoute]:
        return [RequestRoute(r, Route(order=r.rsplit("-", 1)[0])) for r in requests]

    async def perform(self, *requests: str) -> None:
        self.performed.extend(requests)


async def test_undeclared_orders_are_served_numerically(queue: Queue) -> None:
    OrderedHandler.performed = []
    await queue.register(OrderedHandler, "b-1", "10-1", "2-1", "a-1", "10-2", "2-2", "-1-1")
    await drain(Worker(queue))
    assert OrderedHandler.performed == ["-1-1", "2-1", "2-2", "10-1", "10-2", "a-1", "b-1"]


class DeclaredHandler(Handler):
    orders = ("urgent", "normal")
    performed: ClassVar[list[tuple[str, int]]] = []

    @classmethod
    async def route(cls, *requests: list[object]) -> list[RequestRoute]:
        return [RequestRoute(r, Route(order=str(r[0]))) for r in requests]

    async def perform(self, *requests: list[object]) -> None:
        self.performed.extend((str(r[0]), int(str(r[1]))) for r in requests)


async def test_declared_orders_take_precedence(queue: Queue) -> None:
    DeclaredHandler.performed = []
    await queue.register(DeclaredHandler, *[["normal", i] for i in range(3)], *[["urgent", i] for i in range(2)])
    await drain(Worker(queue))
    assert DeclaredHandler.performed == [("urgent", 0), ("urgent", 1), ("normal", 0), ("normal", 1), ("normal", 2)]


class SlowHandler(Handler):
    started: ClassVar[asyncio.Event]
    release: ClassVar[asyncio.Event]
    performed: ClassVar[list[list[int]]] = []

    async def perform(self, *requests: int) -> None:
        self.performed.append(list(requests))
        self.started.set()
        await self.release.wait()


def _reset_slow() -> None:
    SlowHandler.started = asyncio.Event()
    SlowHandler.release = asyncio.Event()
    SlowHandler.performed = []


async def test_cancelled_loop_batch_is_redelivered_first(queue: Queue) -> None:
    _reset_slow()
    await queue.register(SlowHandler, 1, 2, 3)
    worker = Worker(queue)
    loop = asyncio.create_task(worker.loop())
    await asyncio.wait_for(SlowHandler.started.wait(), 10)
    loop.cancel()
    with pytest.raises(asyncio.CancelledError):
        await loop
    assert await queue.pending(SlowHandler) == 3  # nothing acked
    await queue.register(SlowHandler, 4)
    SlowHandler.release.set()
    await drain(Worker(queue))
    first, *redelivered = SlowHandler.performed
    assert first == [1, 2, 3]
    assert [n for batch in redelivered for n in batch] == [1, 2, 3, 4]  # the cancelled batch first, once


async def test_lost_lease_cannot_ack_and_new_holder_performs_batch(queue: Queue, settings: Settings) -> None:
    """Fencing: a loop whose lease expired mid-perform neither acks nor trims; the next holder redoes the batch."""
    _reset_slow()
    slow_settings = settings.copy(lease_ttl=0.3)
    await queue.register(SlowHandler, 1, 2)
    stale = Worker(queue, settings=slow_settings)
    stale_loop = asyncio.create_task(stale.loop(2))
    await asyncio.wait_for(SlowHandler.started.wait(), 10)
    ref = ThreadRef(queue.spec(SlowHandler).name, "0")
    # stall the stale loop's heartbeat by stealing the lease as another holder would after expiry
    stale_token = await queue.storage.lease_token(ref)
    assert stale_token is not None
    await queue.storage.client.delete(queue.storage.keys.lease(ref))
    assert await queue.storage.acquire(ref, "new-holder", 30)
    await queue.register(SlowHandler, 3)
    SlowHandler.release.set()
    assert await asyncio.wait_for(stale_loop, 10) == 2  # it performed its batch but could not ack
    assert await queue.storage.lease_token(ref) == "new-holder"  # its release left the new lease alone
    assert await queue.pending(SlowHandler) == 3  # nothing trimmed
    await queue.storage.release(ref, "new-holder")
    await drain(Worker(queue))
    assert SlowHandler.performed == [[1, 2], [1, 2, 3]]


async def test_expired_lease_is_taken_over(queue: Queue, settings: Settings) -> None:
    """A loop that stops heartbeating (here: a lease taken but never renewed) is taken over after the TTL."""
    _reset_slow()
    SlowHandler.release.set()
    await queue.register(SlowHandler, 1)
    ref = ThreadRef(queue.spec(SlowHandler).name, "0")
    assert await queue.storage.acquire(ref, "crashed-worker", 0.2)
    await drain(Worker(queue), timeout=20)
    assert SlowHandler.performed == [[1]]


class CountingHandler(Handler):
    performed: ClassVar[list[int]] = []
    batch_size = 1

    @classmethod
    async def route(cls, *requests: int) -> list[RequestRoute]:
        return [RequestRoute(r, Route(r % 4)) for r in requests]

    async def perform(self, *requests: int) -> None:
        self.performed.extend(requests)


async def test_no_message_stranded_by_register_release_races(queue: Queue, settings: Settings) -> None:
    """Registrations racing with loops that keep releasing empty threads: all messages get performed."""
    CountingHandler.performed = []
    racy = settings.copy(worker_empty_limit=1, worker_empty_pause=0, coordinator_delay=0.01)
    await queue.register(CountingHandler, -4, -3, -2, -1)
    worker = Worker(queue, settings=racy)
    loops = [asyncio.create_task(worker.loop()) for _ in range(4)]
    expected = list(range(-4, 0))
    for wave in range(40):
        wave_items = [wave * 10 + i for i in range(random.randrange(1, 6))]
        expected += wave_items
        await queue.register(CountingHandler, *wave_items)
        await asyncio.sleep(random.random() / 200)
    await wait_until(lambda: len(CountingHandler.performed) >= len(expected), timeout=30)
    worker.stop()
    await asyncio.gather(*loops)
    assert sorted(CountingHandler.performed) == sorted(expected)
    for thread in "0123":
        assert thread not in await queue.storage.indexed_threads(queue.spec(CountingHandler).name)


async def test_release_race_is_safe_step_by_step(queue: Queue) -> None:
    """The interleaving that would strand a message: release sees the thread empty, a register lands, then unindex."""
    CountingHandler.performed = []
    name = queue.spec(CountingHandler).name
    await queue.register(CountingHandler, 0)
    ref = ThreadRef(name, "0")
    assert await queue.storage.acquire(ref, "tok", 30)
    batch = await queue.storage.cycle(ref, "tok", 30, None, 0, [], 10)
    assert batch is not None and batch is not False
    assert await queue.storage.cycle(ref, "tok", 30, Ack("0", 1), 1, [], 0) is None  # acked: empty
    await queue.register(CountingHandler, 4)  # lands while still leased, before release
    await queue.storage.release(ref, "tok")
    assert await queue.storage.indexed_threads(name) == ["0"]
    await drain(Worker(queue))
    assert CountingHandler.performed == [4]


async def test_worker_leaves_unknown_handlers_alone(queue: Queue) -> None:
    """Tubes of handlers a worker does not run are never touched, whatever their names."""
    CountingHandler.performed = []
    NotifyHandler.log = []
    await queue.register(NotifyHandler, NotifyRequest(1))
    await queue.storage.client.rpush(queue.storage.keys.index("os:system"), b"x")  # junk, never resolved
    await queue.register(CountingHandler, 1, 2)
    worker = Worker(queue, handlers=[CountingHandler])
    await drain(worker)
    assert sorted(CountingHandler.performed) == [1, 2]
    assert NotifyHandler.log == []
    assert await queue.pending(NotifyHandler) == 1


async def test_loop_limit_zero_and_idle_stop(queue: Queue) -> None:
    await queue.register(CountingHandler, 1)
    worker = Worker(queue)
    assert await worker.loop(0) == 0
    idle = asyncio.create_task(Worker(queue, handlers=[NotifyHandler]).loop())
    await asyncio.sleep(0)
    idle.cancel()
    with pytest.raises(asyncio.CancelledError):
        await idle
    with pytest.raises(ValueError, match="limit"):
        await worker.loop(-1)


async def test_start_and_stop_once_per_binding(queue: Queue) -> None:
    NotifyHandler.log = []
    await queue.register(NotifyHandler, NotifyRequest(3), NotifyRequest(6))
    await drain(Worker(queue))
    assert NotifyHandler.log == ["start", [3, 6], "stop"]


async def test_registration_wakes_idle_loop(queue: Queue, settings: Settings) -> None:
    """With a long coordinator delay, an idle loop still picks up a registration at once (wake-up)."""
    CountingHandler.performed = []
    sleepy = settings.copy(coordinator_delay=60, worker_empty_pause=60)
    worker = Worker(queue, handlers=[CountingHandler], settings=sleepy)
    loop = asyncio.create_task(worker.loop(2))
    await asyncio.sleep(0.05)  # let the loop go idle on its 60 s coordinator delay
    await queue.register(CountingHandler, 1)
    await wait_until(lambda: CountingHandler.performed == [1], timeout=10)
    await queue.register(CountingHandler, 5)  # same thread, loop now on its 60 s empty pause
    assert await asyncio.wait_for(loop, 10) == 2


async def test_registration_wakes_one_idle_loop_not_all(storage: Storage, settings: Settings) -> None:
    CountingHandler.performed = []
    counting = PollCounting(storage.client, storage.keys.prefix)
    queue = Queue(counting, settings=settings.copy(coordinator_delay=60))
    worker = Worker(queue, handlers=[CountingHandler])
    loops = [asyncio.create_task(worker.loop(1)) for _ in range(4)]
    await wait_until(lambda: counting.polls == 4, timeout=10)  # all idle on a 60 s delay
    await queue.register(CountingHandler, 1)
    await wait_until(lambda: CountingHandler.performed == [1], timeout=10)
    assert counting.polls == 5
    worker.stop()
    await asyncio.wait_for(asyncio.gather(*loops), 10)


async def test_wake_ups_in_quick_succession_wake_distinct_idle_loops(queue: Queue, settings: Settings) -> None:
    """Registrations of two threads nobody holds, the second before the loop woken by the first
    has polled: each wakes its own idle loop (the first is on its way to one thread only),
    so neither thread waits for a coordinator delay while loops idle."""
    worker = Worker(queue, handlers=[CountingHandler], settings=settings.copy(coordinator_delay=60))
    name = queue.spec(CountingHandler).name
    idle = [Waker(), Waker(), Waker()]  # three idle loops, oldest first, each armed at its poll
    for waker in idle:
        worker.wakeups.polling(waker)
    worker.wakeups.on_message([ThreadRef(name, "1")])
    worker.wakeups.on_message([ThreadRef(name, "2")])  # the first woken loop has not polled yet
    assert [waker.woken for waker in idle] == [True, True, False]
    idle[0].arm()  # its poll: armed again, it is the first to wake once more
    worker.wakeups.on_message([ThreadRef(name, "3")])
    assert [waker.woken for waker in idle] == [True, True, False]


async def test_a_loop_that_binds_a_thread_wakes_another_for_the_rest(storage: Storage, settings: Settings) -> None:
    """A poll that finds more threads than its loop takes wakes the next idle loop: a thread
    never waits for a coordinator delay while loops idle, even when its own wake-up went
    to a loop that takes another thread (here every wake-up goes to the oldest idle loop)."""
    CountingHandler.performed = []
    counting = PollCounting(storage.client, storage.keys.prefix)
    queue = Queue(counting, settings=settings.copy(coordinator_delay=60))
    worker = Worker(queue, handlers=[CountingHandler])
    worker.wakeups.on_message = lambda threads: next(iter(worker.wakeups.idle)).wake()  # type: ignore[method-assign]
    loops = [asyncio.create_task(worker.loop(1)) for _ in range(2)]
    await wait_until(lambda: counting.polls == 2, timeout=10)  # both idle on a 60 s delay
    await queue.register(CountingHandler, 1, 2)  # threads "1" and "2": one wake-up, for the oldest loop
    assert await asyncio.wait_for(asyncio.gather(*loops), 10) == [1, 1]
    assert sorted(CountingHandler.performed) == [1, 2]


async def test_retried_registration_appends_once(queue: Queue) -> None:
    """A client retry of an append whose reply was lost (same stamp) appends nothing twice."""
    spec = queue.spec(CountingHandler)
    write = TubeWrite(Tube(spec.name, "0", "0"), 0.0, spec.codec.encode([4, 8], 0.0))
    assert await queue.storage.push(spec.name, [write], stamp="one-registration") == 2
    assert await queue.storage.push(spec.name, [write], stamp="one-registration") == 2  # the first call's count
    assert await queue.storage.tube_payloads(write.tube) == write.envelopes.split(b"\n")


class Hogged(Handler):
    performed: ClassVar[list[str]] = []
    batch_size = 1

    @classmethod
    async def route(cls, *requests: str) -> list[RequestRoute]:
        return [RequestRoute(r, Route(thread=r[0])) for r in requests]

    async def perform(self, *requests: str) -> None:
        await asyncio.sleep(0.005)
        self.performed.extend(requests)


async def test_busy_thread_lets_a_waiting_thread_in(queue: Queue, settings: Settings) -> None:
    """One loop on a thread that never empties; another thread waits: the loop lets go after hold_limit batches."""
    Hogged.performed = []
    worker = Worker(queue, handlers=[Hogged], settings=settings.copy(worker_hold_limit=3))
    loop = asyncio.create_task(worker.loop(21))
    await queue.register(Hogged, *[f"a{i:02}" for i in range(20)])
    await wait_until(lambda: bool(Hogged.performed), timeout=10)  # bound to thread "a"
    await queue.register(Hogged, "b")
    assert await asyncio.wait_for(loop, 20) == 21
    assert Hogged.performed.index("b") < 10  # without a hold limit it would wait for all of "a"
    assert [p for p in Hogged.performed if p != "b"] == [f"a{i:02}" for i in range(20)]


@pytest.mark.parametrize("backend", ["redis", "cluster"])
async def test_many_first_registrations_at_once_on_a_fresh_client(backend: str, request: pytest.FixtureRequest) -> None:
    """A new Queue whose first calls come all at once (a SyncQueue from many threads, a web burst)."""
    url = request.getfixturevalue("redis_url") if backend == "redis" else request.getfixturevalue("redis_cluster").url
    for trial in range(10):
        queue = Queue(url, settings=Settings(key_prefix=f"fresh{trial}"))
        stored = await asyncio.gather(*[queue.register(CountingHandler, number) for number in range(16)])
        assert stored == [1] * 16
        assert await queue.pending(CountingHandler) == 16
        await queue.close()


async def test_observer_sees_every_effect_and_ready_counts_loops(queue: Queue) -> None:
    """The public hooks instruments use: ``observer(effect, result)`` after each effect, ``ready_loops``."""
    from sharded_queue.core import Acquire, Begin, Cycle, End, Perform, Poll

    seen: list[tuple[str, object]] = []
    await queue.register(NotifyHandler, *[NotifyRequest(i) for i in range(3, 12, 3)])  # thread 0
    worker = Worker(queue, observer=lambda effect, result: seen.append((type(effect).__name__, result)))
    assert worker.ready_loops == 0
    assert await asyncio.wait_for(worker.loop(3), 20) == 3
    kinds = [kind for kind, _ in seen]
    assert kinds[:3] == [Poll.__name__, Acquire.__name__, Begin.__name__]
    assert kinds[-1] == End.__name__
    assert [result for kind, result in seen if kind == Perform.__name__] == [None]  # performed once, no error
    assert Cycle.__name__ in kinds
    idle = asyncio.create_task(worker.loop())
    await wait_until(lambda: worker.ready_loops == 1)
    idle.cancel()
    await asyncio.gather(idle, return_exceptions=True)
    assert worker.ready_loops == 0
