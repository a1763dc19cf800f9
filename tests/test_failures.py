"""Retries, poison isolation, dead letters and graceful stop, on fakeredis and real Redis."""

from __future__ import annotations

import asyncio
import math
from typing import ClassVar

from sharded_queue import Handler, Queue, RequestRoute, Route, Settings, ThreadRef, Worker
from sharded_queue.core import (
    Acquire,
    Batch,
    Begin,
    Cycle,
    Envelopes,
    LoopPolicy,
    Perform,
    Poll,
    PollResult,
    worker_program,
)
from sharded_queue.errors import LeaseLost
from sharded_queue.testing import drain


class Poison(Exception):
    pass


class PoisonHandler(Handler):
    """Fails every batch that contains a poison number; counts every perform."""

    poison: ClassVar[set[int]] = set()
    flaky: ClassVar[dict[int, int]] = {}  # number -> failures left before it succeeds
    performs: ClassVar[list[tuple[int, ...]]] = []
    performed: ClassVar[list[int]] = []
    batch_size = 16

    async def perform(self, *requests: int) -> None:
        self.performs.append(requests)
        for number in requests:
            if number in self.poison:
                raise Poison(f"poison {number}")
            if self.flaky.get(number, 0) > 0:
                self.flaky[number] -= 1
                raise ConnectionError(f"transient failure on {number}")
        self.performed.extend(requests)


def reset(poison: set[int] = frozenset(), flaky: dict[int, int] | None = None) -> None:  # type: ignore[assignment]
    PoisonHandler.poison = set(poison)
    PoisonHandler.flaky = dict(flaky or {})
    PoisonHandler.performs = []
    PoisonHandler.performed = []


def first_performs(performed: list[int]) -> list[int]:
    seen: dict[int, None] = {}
    for number in performed:
        seen.setdefault(number)
    return list(seen)


async def test_poison_request_is_isolated_and_thread_goes_on(queue: Queue, settings: Settings) -> None:
    reset(poison={5})
    await queue.register(PoisonHandler, *range(16))  # one batch of 16
    await queue.register(PoisonHandler, *range(16, 20))
    await drain(Worker(queue))
    assert first_performs(PoisonHandler.performed) == [n for n in range(20) if n != 5]  # FIFO, nothing skipped
    (letter,) = await queue.dead_letters(PoisonHandler)
    assert letter.payload.endswith(b",5]")
    assert (letter.error_type, letter.error, letter.attempts) == ("Poison", "poison 5", settings.retry_attempts)
    assert "raise Poison" in letter.traceback
    attempts = settings.retry_attempts
    bound = 2 * attempts + 2 * math.ceil(math.log2(16)) - 1  # documented in core._perform
    batch_performs = [p for p in PoisonHandler.performs if set(p) & set(range(16))]
    assert len(batch_performs) <= bound
    for number in range(16):
        if number != 5:
            assert PoisonHandler.performed.count(number) == 1
            assert sum(number in p for p in PoisonHandler.performs) <= attempts + math.ceil(math.log2(16))


async def test_transient_failure_is_retried_without_dead_letters(queue: Queue) -> None:
    reset(flaky={2: 2})
    await queue.register(PoisonHandler, 1, 2, 3)
    await drain(Worker(queue))
    assert PoisonHandler.performed == [1, 2, 3]
    assert len(PoisonHandler.performs) == 3  # two failures, then success
    assert await queue.dead_letter_count(PoisonHandler) == 0


class StrictHandler(PoisonHandler):
    retry_attempts = 1


async def test_per_handler_attempts_and_requeue(queue: Queue) -> None:
    reset(poison={7})
    await queue.register(StrictHandler, 7, 8)
    await drain(Worker(queue))
    (letter,) = await queue.dead_letters(StrictHandler)
    assert letter.attempts == 1
    assert PoisonHandler.performed == [8]
    PoisonHandler.poison = set()  # the bug is fixed: requeue and perform it
    assert await queue.requeue_dead_letters(StrictHandler) == 1
    assert await queue.dead_letter_count(StrictHandler) == 0
    await drain(Worker(queue))
    assert PoisonHandler.performed == [8, 7]


class LongHandler(Handler):
    started: ClassVar[asyncio.Event]
    log: ClassVar[list[str]] = []

    async def perform(self, *requests: int) -> None:
        self.log.append(f"perform {list(requests)}")
        self.started.set()
        await asyncio.sleep(0.2)
        self.log.append("performed")

    async def stop(self) -> None:
        self.log.append("stop")


async def test_stop_during_perform_acks_batch_once_and_releases(queue: Queue) -> None:
    LongHandler.started = asyncio.Event()
    LongHandler.log = []
    await queue.register(LongHandler, 1, 2)
    worker = Worker(queue)
    loop = asyncio.create_task(worker.loop())
    await asyncio.wait_for(LongHandler.started.wait(), 10)
    worker.stop()
    assert await asyncio.wait_for(loop, 10) == 2
    assert LongHandler.log == ["perform [1, 2]", "performed", "stop"]
    assert await queue.pending(LongHandler) == 0
    assert await queue.storage.lease_token(ThreadRef(queue.spec(LongHandler).name, "0")) is None


class BadStart(Handler):
    starts: ClassVar[int] = 0
    performed: ClassVar[list[int]] = []

    async def start(self) -> None:
        BadStart.starts += 1
        if BadStart.starts == 1:
            raise RuntimeError("cannot connect to the mail server yet")

    async def perform(self, *requests: int) -> None:
        self.performed.extend(requests)


async def test_failing_start_releases_thread_and_retries(queue: Queue) -> None:
    BadStart.starts, BadStart.performed = 0, []
    await queue.register(BadStart, 1, 2)
    await drain(Worker(queue))
    assert BadStart.performed == [1, 2]
    assert BadStart.starts == 2


class SpreadPoison(PoisonHandler):
    """Every request on its own thread."""

    @classmethod
    async def route(cls, *requests: int) -> list[RequestRoute]:
        return [RequestRoute(r, Route(thread=r)) for r in requests]


async def test_dead_letters_at_scale_are_counted_without_bodies_and_pruned(queue: Queue) -> None:
    reset(poison=set(range(40)))
    await queue.register(SpreadPoison, *range(40))
    await drain(Worker(queue), loops=4)
    name = queue.spec(SpreadPoison).name
    reads = await _list_reads(queue)
    assert await queue.dead_letter_count(SpreadPoison) == 40
    assert await _list_reads(queue) == reads  # lengths only: no dead letter's body was read
    assert len(await queue.storage.dead_threads(name)) == 40
    assert await queue.purge_dead_letters(SpreadPoison) == 40
    assert await queue.storage.dead_threads(name) == []  # threads without dead letters leave the index
    assert await queue.dead_letter_count(SpreadPoison) == 0


async def _list_reads(queue: Queue) -> int | None:
    """LRANGE calls a single redis-server has answered (None elsewhere: fakeredis keeps no
    command stats, a cluster keeps them per node)."""
    client = queue.storage.client
    if queue.storage.cluster or type(client).__module__.startswith("fakeredis"):
        return None
    stats = await client.info("commandstats")
    return int(stats.get("cmdstat_lrange", {}).get("calls", 0))


def test_lease_losses_halve_the_head_then_dead_letter_it() -> None:
    """The pure decision: from `attempts` unacked fetches on, each further one halves the head performed."""
    policy = LoopPolicy(batch_size=8, retry_attempts=2)
    thread = ThreadRef("h", "0")
    program = worker_program(policy, limit=None)
    assert isinstance(next(program), Poll)
    assert isinstance(program.send(PollResult([thread])), Acquire)
    assert isinstance(program.send(True), Begin)
    cycle = program.send(True)  # start() succeeded
    sizes = []
    for losses in range(2, 7):  # each head performed below is lost again before its ack
        batch = Batch("0", 8, Envelopes([(0.0, n) for n in range(8)]), losses=losses)
        effect = program.send(batch)
        if isinstance(effect, Cycle):  # dead-lettered unperformed: acked with its dead letter
            assert effect.ack is not None and effect.ack.count == 1
            (dead,) = effect.ack.dead
            assert isinstance(dead.error, LeaseLost) and dead.attempts == losses
            break
        assert isinstance(effect, Perform)
        sizes.append(len(effect.messages))
        cycle = program.send(None)  # performed
        assert isinstance(cycle, Cycle) and cycle.ack is not None
        assert (cycle.ack.count, cycle.ack.clears_losses) == (len(effect.messages), False)
    assert sizes == [4, 2, 1]
