"""`Queue`'s dead-letter and schedule methods by stored handler name, as the dashboard calls them:
a process that never imports the handler, on every backend."""

from __future__ import annotations

from typing import ClassVar

from sharded_queue import Handler, Queue, RequestRoute, Route, Worker
from sharded_queue.testing import drain


class Ranked(Handler):
    """Declared orders; even requests are urgent; those in ``poison`` fail (one attempt each)."""

    name = "byname:ranked"
    orders = ("urgent", "normal")
    retry_attempts = 1
    batch_size = 1
    poison: ClassVar[set[int]] = set()
    performed: ClassVar[list[int]] = []

    @classmethod
    async def route(cls, *requests: int) -> list[RequestRoute]:
        return [RequestRoute(r, Route(order="urgent" if r % 2 == 0 else "normal")) for r in requests]

    async def perform(self, *requests: int) -> None:
        if set(requests) & self.poison:
            raise ValueError(f"poison {requests}")
        self.performed.extend(requests)


async def dead_letters_of(queue: Queue, *requests: int) -> None:
    """``requests`` performed once, failing: they become dead letters."""
    Ranked.poison, Ranked.performed = set(requests), []
    await queue.register(Ranked, *requests)
    await drain(Worker(queue, handlers=[Ranked]))
    Ranked.poison = set()


async def test_dead_letters_are_listed_counted_and_purged_by_name(queue: Queue) -> None:
    await dead_letters_of(queue, 1, 2)
    by_name = Queue(queue.storage)  # knows no handler class, like the dashboard
    assert await by_name.dead_letter_count("byname:ranked") == 2
    letters = await by_name.dead_letters("byname:ranked")
    assert sorted((letter.order, letter.error_type) for letter in letters) == [
        ("normal", "ValueError"),
        ("urgent", "ValueError"),
    ]
    assert await by_name.dead_letters("byname:ranked", limit=1) == letters[:1]
    assert await by_name.dead_letters("nobody:ever") == []
    assert await by_name.purge_dead_letters("byname:ranked") == 2
    assert await queue.dead_letter_count(Ranked) == 0
    assert await queue.pending(Ranked) == 0


async def test_requeue_by_name_keeps_the_declared_precedence_storage_holds(queue: Queue) -> None:
    await dead_letters_of(queue, 1, 2)  # a normal and an urgent dead letter
    await queue.register(Ranked, 3, 4)  # the thread holds both orders again, with their ranks
    by_name = Queue(queue.storage)
    assert await by_name.requeue_dead_letters("byname:ranked") == 2
    assert await queue.dead_letter_count(Ranked) == 0
    await drain(Worker(queue, handlers=[Ranked]))
    assert Ranked.performed == [4, 2, 3, 1]  # urgent first, each order FIFO, requeued at the tail


async def test_requeue_by_the_name_of_a_class_this_queue_knows_uses_its_orders(queue: Queue) -> None:
    await dead_letters_of(queue, 1, 2)  # nothing else waits: storage holds no rank
    assert await queue.requeue_dead_letters("byname:ranked") == 2
    await drain(Worker(queue, handlers=[Ranked]))
    assert Ranked.performed == [2, 1]


class Reminder(Handler):
    name = "byname:reminder"

    async def perform(self, *requests: dict[str, int]) -> None: ...


async def test_schedules_by_name_show_requests_as_plain_json(queue: Queue) -> None:
    await queue.register(Reminder, {"user": 7}, recurrent=60)
    listed = await Queue(queue.storage).schedules("byname:reminder")
    assert listed[["request", "thread", "order", "every"]].values.tolist() == [[{"user": 7}, "0", "0", 60.0]]
    assert listed["next_at"].iloc[0].tzinfo is not None
    assert len(await Queue(queue.storage).schedules("nobody:ever")) == 0
