"""Counts, stats pages, peek, deferred requests and reading by name (issue 26, items 11-13):
contract tests on fakeredis, a real redis-server and the 3-node cluster."""

from __future__ import annotations

import asyncio
import math
from datetime import UTC, datetime
from typing import Any, ClassVar

import pytest

from sharded_queue import Handler, Queue, RequestRoute, Route, Settings, Storage, SyncQueue, Tube, Worker
from sharded_queue.core import Ack, ThreadRef
from sharded_queue.storage import HandlerCounts
from sharded_queue.testing import drain, wait_until


class Ordered(Handler):
    """Requests ``[thread, seq, order]``; fails those whose seq is in ``poison``."""

    name = "counts:ordered"
    orders = ("urgent", "normal", "low")
    retry_attempts = 1
    poison: ClassVar[set[int]] = set()
    performed: ClassVar[list[list[Any]]] = []

    @classmethod
    async def route(cls, *requests: list[Any]) -> list[RequestRoute]:
        return [RequestRoute(r, Route(thread=r[0], order=r[2])) for r in requests]

    async def perform(self, *requests: list[Any]) -> None:
        if any(r[1] in self.poison for r in requests):
            raise ValueError("poison")
        self.performed.extend(requests)


class OneEach(Handler):
    """One thread per request."""

    name = "counts:one-each"

    @classmethod
    async def route(cls, *requests: int) -> list[RequestRoute]:
        return [RequestRoute(r, Route(thread=r)) for r in requests]

    async def perform(self, *requests: int) -> None: ...


@pytest.fixture(autouse=True)
def _reset() -> None:
    Ordered.poison, Ordered.performed = set(), []


async def truth(storage: Storage, handler: str) -> HandlerCounts:
    """A handler's counts read from its threads' keys, as if nothing were counted."""
    client, keys = storage.client, storage.keys
    threads: set[str] = set()
    for index in (keys.index(handler), keys.dead_index(handler), keys.due_index(handler)):
        threads.update(member.decode() for member in await client.zrange(index, 0, -1))
    views = await storage.inspect([ThreadRef(handler, thread) for thread in sorted(threads)])
    heads = [float(tube.envelopes[0][1 : tube.envelopes[0].index(b",")]) for view in views for tube in view.tubes]
    return HandlerCounts(
        sum(tube.depth for view in views for tube in view.tubes),
        sum(view.deferred for view in views),
        sum(view.dead for view in views),
        min(heads) if heads else None,
    )


async def counts(queue: Queue, handler: str) -> HandlerCounts:
    """The handler's counts, checked against its keys."""
    counted = (await queue.storage.counts([handler]))[handler]
    expected = await truth(queue.storage, handler)
    assert counted.waiting == expected.waiting and counted.deferred == expected.deferred
    assert counted.dead == expected.dead
    assert (counted.oldest is None) == (expected.oldest is None)
    if counted.oldest is not None and expected.oldest is not None:
        assert math.isclose(counted.oldest, expected.oldest, abs_tol=1e-6)
    return counted


# --- counts ---------------------------------------------------------------------------------


async def test_counts_follow_every_change(queue: Queue, settings: Settings) -> None:
    name = "counts:ordered"
    Ordered.poison = {3}
    await queue.register(Ordered, [1, 1, "normal"], [1, 2, "urgent"], [2, 3, "low"], [2, 4, "low"])
    assert (await counts(queue, name))[:3] == (4, 0, 0)
    await queue.register(Ordered, [1, 5, "normal"], [3, 6, "low"], defer=3600)
    await queue.register(Ordered, [1, 7, "normal"], if_not_exists=True)
    await queue.register(Ordered, [1, 7, "normal"], if_not_exists=True)  # dropped: waits already
    assert (await counts(queue, name))[:3] == (5, 2, 0)
    assert await queue.pending(Ordered) == 5
    await drain(Worker(queue))  # [2, 3] is dead-lettered (and [2, 4], bisected with it, performed)
    assert (await counts(queue, name))[:3] == (0, 2, 1)
    assert await queue.dead_letter_count(Ordered) == 1
    assert await queue.unschedule(Ordered, [1, 5, "normal"]) == 1  # a deferred request goes
    assert (await counts(queue, name))[:3] == (0, 1, 1)
    assert await queue.requeue_dead_letters(Ordered) == 1
    assert (await counts(queue, name))[:3] == (1, 1, 0)
    await drain(Worker(queue))
    assert (await counts(queue, name))[:3] == (0, 1, 1)
    assert await queue.purge_dead_letters(Ordered) == 1
    assert await counts(queue, name) == (0, 1, 0, None)


async def test_deferred_requests_that_come_due_are_counted_as_waiting(queue: Queue) -> None:
    name = "counts:ordered"
    await queue.register(Ordered, [1, 1, "normal"], [1, 2, "low"], defer=0.2)
    assert (await counts(queue, name))[:3] == (0, 2, 0)
    worker = Worker(queue)
    task = asyncio.create_task(worker.loop(2))
    await asyncio.wait_for(task, 20)
    assert Ordered.performed == [[1, 1, "normal"], [1, 2, "low"]]
    assert await counts(queue, name) == (0, 0, 0, None)


async def test_recurring_ticks_are_counted(queue: Queue) -> None:
    class Tick(Handler):
        name = "counts:tick"
        performed: ClassVar[int] = 0

        async def perform(self, *requests: int) -> None:
            Tick.performed += len(requests)

    await queue.register(Tick, 1, recurrent=queue.settings.coordinator_delay)
    assert (await counts(queue, "counts:tick"))[:3] == (0, 0, 0)  # a schedule is neither
    worker = Worker(queue)
    task = asyncio.create_task(worker.loop())
    await wait_until(lambda: Tick.performed >= 2, timeout=20)
    worker.stop()
    await task
    await counts(queue, "counts:tick")


async def test_lag_of_the_total_is_the_oldest_head(queue: Queue) -> None:
    storage = queue.storage
    name = "counts:ordered"
    now = await storage.server_time()
    await storage.append_raw(
        name,
        [
            (Tube(name, "7", "normal"), 1, [f"[{now - 100},[7,0,0]]".encode()]),
            (Tube(name, "8", "urgent"), 0, [f"[{now - 40},[8,0,0]]".encode()]),
        ],
    )
    frame = await queue.stats([name])
    total = frame.iloc[-1]
    assert total["depth"] == 2 and 100 <= total["lag"] < 130
    await storage.client.lpop(storage.keys.tube(Tube(name, "7", "normal")))  # behind the scripts' back
    await storage.recount(name)
    assert 40 <= (await queue.stats([name])).iloc[-1]["lag"] < 70


async def test_reads_recount_a_handler_written_without_counts(queue: Queue) -> None:
    """A queue written by a version without counts: the first read counts it once."""
    storage, keys, name = queue.storage, queue.storage.keys, "counts:ordered"
    Ordered.poison = {2}
    await queue.register(Ordered, [1, 1, "normal"], [2, 2, "normal"])
    await drain(Worker(queue))
    await queue.register(Ordered, *[[t, 10 + t, "low"] for t in range(5)])
    await queue.register(Ordered, [9, 20, "low"], defer=3600)
    await storage.client.delete(keys.counts(name), keys.tallies(name), keys.heads(name))
    assert await queue.pending(Ordered) == 5
    assert await counts(queue, name) == (await truth(storage, name))
    # a write to a handler never recounted counts its own thread; the first read counts the rest
    await storage.client.delete(keys.counts(name), keys.tallies(name), keys.heads(name))
    await queue.register(Ordered, [0, 30, "low"])
    assert (await queue.stats([Ordered])).iloc[-1][["depth", "deferred", "dead"]].tolist() == [6, 1, 1]


async def test_recount_mends_counts_that_drifted(queue: Queue) -> None:
    storage, keys, name = queue.storage, queue.storage.keys, "counts:one-each"
    await queue.register(OneEach, *range(30))
    await queue.pending(OneEach)
    await storage.client.hset(keys.counts(name), "waiting", 999)  # a count off, whatever the cause
    await storage.client.hdel(keys.tallies(name), "3")  # a thread's tally lost
    await storage.client.hset(keys.tallies(name), "nowhere", "5 0 0 -")  # a tally of an empty thread
    assert await queue.pending(OneEach) == 999
    await queue.recount(OneEach)
    assert await queue.pending(OneEach) == 30
    assert await storage.client.hexists(keys.tallies(name), "nowhere") == 0
    await counts(queue, name)


async def test_a_lost_count_on_a_cluster_is_mended_by_the_threads_next_change(
    queue: Queue, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a cluster a thread's counts are applied after its script: if that never happens (the
    client died between the two), the handler's counts drift until the thread changes again."""
    storage = queue.storage
    await queue.register(OneEach, 1, 1, 1)
    assert await queue.pending(OneEach) == 3
    ref = ThreadRef("counts:one-each", "1")
    assert await storage.acquire(ref, "token", 5)
    assert isinstance(await storage.cycle(ref, "token", 5, None, 0, [], 2), tuple)
    lost: list[Any] = []

    async def settle(handler: str, counted: Any) -> None:
        lost.append(counted)

    if storage.cluster:
        monkeypatch.setattr(storage._layout, "_settle", settle)
    await storage.cycle(ref, "token", 5, Ack("0", 2), 1, [], 0)  # acked, its count lost on a cluster
    assert await queue.pending(OneEach) == (3 if storage.cluster else 1)
    monkeypatch.undo()
    await queue.register(OneEach, 1)
    assert await queue.pending(OneEach) == 2
    assert bool(lost) == storage.cluster


async def test_a_retried_ack_counts_once(queue: Queue) -> None:
    storage, name = queue.storage, "counts:one-each"
    await queue.register(OneEach, 1, 1, 1)
    ref = ThreadRef(name, "1")
    assert await storage.acquire(ref, "token", 5)
    reply = await storage.cycle(ref, "token", 5, None, 0, [], 2)
    assert isinstance(reply, tuple)
    ack = Ack("0", 2)
    for _ in range(2):  # a client retrying after a lost reply
        await storage.cycle(ref, "token", 5, ack, 1, [], 0)
    assert await queue.pending(OneEach) == 1
    await counts(queue, name)


# --- stats pages ----------------------------------------------------------------------------


async def test_stats_pages_cover_every_thread_once_and_totals_come_first(queue: Queue) -> None:
    await queue.register(OneEach, *range(25))
    await queue.register(Ordered, [1, 1, "low"], [2, 2, "low"], defer=3600)
    seen: list[tuple[str, str]] = []
    totals: list[Any] = []
    cursor = None
    pages = 0
    while True:
        frame = await queue.stats([OneEach, "counts:ordered"], limit=7, cursor=cursor)
        pages += 1
        rows = frame.to_dict("records")
        assert len([row for row in rows if row["thread"] is not None]) <= 7
        seen += [(row["handler"], row["thread"]) for row in rows if row["thread"] is not None]
        totals += [row for row in rows if row["thread"] is None]
        cursor = frame.attrs["cursor"]
        if cursor is None:
            break
    assert pages == 4
    assert sorted(seen) == sorted(
        [("counts:one-each", str(t)) for t in range(25)] + [("counts:ordered", "1"), ("counts:ordered", "2")]
    )
    assert [(t["handler"], t["depth"], t["deferred"]) for t in totals] == [
        ("counts:one-each", 25, 0),
        ("counts:ordered", 0, 2),
    ]
    only_totals = await queue.stats([OneEach, "counts:ordered"], limit=0)
    assert only_totals["thread"].tolist() == [None, None] and only_totals.attrs["cursor"] is None
    with pytest.raises(ValueError, match="cursor"):
        await queue.stats(limit=3, cursor="not a cursor")


async def test_stats_show_deferred_requests_and_none_for_held_since(queue: Queue) -> None:
    await queue.register(Ordered, [1, 1, "normal"])
    await queue.register(Ordered, [1, 2, "normal"], [2, 3, "low"], defer=3600)
    frame = await queue.stats([Ordered])
    rows = frame.to_dict("records")
    assert [(r["thread"], r["order"], r["depth"], r["deferred"]) for r in rows] == [
        ("1", "normal", 1, 1),
        ("2", None, 0, 1),  # only deferred: a row of its own
        (None, None, 1, 2),
    ]
    assert all(r["held_since"] is None for r in rows)  # None, not NaN, where nobody holds the thread
    assert frame["held_since"].isna().all()
    assert frame["deferred"].dtype == "int64"


async def test_held_since_is_none_where_nobody_holds_the_thread(queue: Queue) -> None:
    await queue.register(OneEach, 1, 2)
    rows = (await queue.stats([OneEach])).to_dict("records")
    assert [row["held_since"] for row in rows] == [None, None, None]  # was NaN


async def test_dead_letter_count_takes_a_name(queue: Queue) -> None:
    Ordered.poison = {1}
    await queue.register(Ordered, [1, 1, "normal"])
    await drain(Worker(queue))
    assert await queue.dead_letter_count("counts:ordered") == 1  # was a TypeError


# --- peek and deferred ----------------------------------------------------------------------


async def test_peek_shows_the_next_requests_without_taking_them(queue: Queue) -> None:
    await queue.register(Ordered, [1, 1, "low"], [1, 2, "normal"], [1, 3, "urgent"], [2, 4, "low"])
    frame = await queue.peek(Ordered, thread=1, limit=2)
    assert frame.columns.tolist() == ["thread", "order", "position", "enqueued_at", "request"]
    assert frame[["thread", "order", "position"]].values.tolist() == [["1", "urgent", 0], ["1", "normal", 1]]
    assert frame["request"].tolist() == [[1, 3, "urgent"], [1, 2, "normal"]]
    assert all(isinstance(when, datetime) and when.tzinfo is UTC for when in frame["enqueued_at"])
    every = await queue.peek("counts:ordered")
    assert every[["thread", "position"]].values.tolist() == [["1", 0], ["1", 1], ["1", 2], ["2", 0]]
    assert await queue.pending(Ordered) == 4  # nothing taken
    assert (await queue.peek(Ordered, thread="nowhere")).empty


async def test_deferred_requests_are_listed_and_unscheduled(queue: Queue) -> None:
    now = await queue.storage.server_time()
    await queue.register(Ordered, [1, 1, "low"], defer=600)
    await queue.register(Ordered, [2, 2, "normal"], defer=60)
    await queue.register(Ordered, [1, 3, "low"], defer=61)
    await queue.register(Ordered, [1, 4, "low"], defer=62, if_not_exists=True)
    frame = await queue.deferred(Ordered)
    assert frame.columns.tolist() == ["thread", "order", "due", "request"]
    assert frame["request"].tolist() == [[2, 2, "normal"], [1, 3, "low"], [1, 4, "low"], [1, 1, "low"]]
    assert frame["thread"].tolist() == ["2", "1", "1", "1"]
    due = frame["due"].tolist()
    assert all(when.tzinfo is UTC for when in due)
    assert 55 < due[0].timestamp() - now < 65 and 595 < due[3].timestamp() - now < 605
    assert len(await queue.deferred("counts:ordered", limit=2)) == 2
    assert await queue.unschedule(Ordered, [1, 3, "low"], [1, 4, "low"], [1, 99, "low"]) == 2
    assert (await queue.deferred(Ordered))["request"].tolist() == [[2, 2, "normal"], [1, 1, "low"]]
    # the if_not_exists mark went with it: the request can be deferred again
    assert await queue.register(Ordered, [1, 4, "low"], defer=62, if_not_exists=True) == 1
    await counts(queue, "counts:ordered")


# --- reading by name ------------------------------------------------------------------------


async def test_reads_take_names_and_show_unknown_requests_as_json(queue: Queue, settings: Settings) -> None:
    Ordered.poison = {1}
    await queue.register(Ordered, [1, 1, "normal"], [2, 2, "low"])
    await queue.register(Ordered, [3, 3, "low"], defer=3600)
    await drain(Worker(queue))
    await queue.register(Ordered, [4, 4, "urgent"])
    stranger = Queue(queue.storage, settings=settings)  # has never met the class
    name = "counts:ordered"
    assert await stranger.pending(name) == 1
    assert await stranger.dead_letter_count(name) == 1
    assert [record.payload.endswith(b'[1,1,"normal"]]') for record in await stranger.dead_letters(name)] == [True]
    assert (await stranger.peek(name))["request"].tolist() == [[4, 4, "urgent"]]
    assert (await stranger.deferred(name))["request"].tolist() == [[3, 3, "low"]]
    assert (await stranger.stats([name])).iloc[-1]["dead"] == 1
    assert (await stranger.schedules(name)).empty
    with pytest.raises(TypeError, match="handler name"):
        await stranger.pending(42)  # type: ignore[arg-type]
    assert await stranger.requeue_dead_letters(name) == 1
    assert await stranger.pending(name) == 2
    assert await stranger.purge_dead_letters(name) == 0


async def test_requeue_by_name_keeps_the_order_precedence(queue: Queue, settings: Settings) -> None:
    """A dead letter put back by a process that does not know the class gets its order's rank
    back: "low" (declared third) still goes after "normal"."""
    Ordered.poison = {1}
    await queue.register(Ordered, [1, 1, "low"])
    await drain(Worker(queue))
    (letter,) = await queue.dead_letters(Ordered)
    assert letter.rank == 2.0  # "low" is the third declared order
    await queue.register(Ordered, [1, 2, "normal"])
    stranger = Queue(queue.storage, settings=settings)
    assert await stranger.requeue_dead_letters("counts:ordered") == 1
    Ordered.poison = set()
    await drain(Worker(queue))
    assert Ordered.performed == [[1, 2, "normal"], [1, 1, "low"]]


# --- SyncQueue ------------------------------------------------------------------------------


async def test_sync_queue_reads_like_the_queue(queue: Queue, settings: Settings) -> None:
    Ordered.poison = {1}
    await queue.register(Ordered, [1, 1, "normal"])
    await drain(Worker(queue))
    await queue.register(Ordered, [2, 2, "low"])
    await queue.register(Ordered, [3, 3, "low"], defer=3600)
    url = _url(queue.storage)
    if url is None:
        pytest.skip("the embedded fakeredis lives in this process")

    def admin_page() -> dict[str, Any]:
        with SyncQueue(url, settings=Settings(key_prefix=queue.storage.keys.prefix)) as sync:
            return {
                "pending": sync.pending("counts:ordered"),
                "stats": sync.stats(["counts:ordered"]).iloc[-1][["depth", "deferred", "dead"]].tolist(),
                "workers": len(sync.workers()),
                "dead": [record.order for record in sync.dead_letters("counts:ordered")],
                "dead_count": sync.dead_letter_count("counts:ordered"),
                "deferred": sync.deferred("counts:ordered")["request"].tolist(),
                "peek": sync.peek("counts:ordered", thread=2)["request"].tolist(),
            }

    assert await asyncio.to_thread(admin_page) == {
        "pending": 1,
        "stats": [1, 1, 1],
        "workers": 0,
        "dead": ["normal"],
        "dead_count": 1,
        "deferred": [[3, 3, "low"]],
        "peek": [[2, 2, "low"]],
    }


def _url(storage: Storage) -> str | None:
    """The URL of a real server or cluster under test (no password here), None for fakeredis."""
    return None if storage.fake else storage.location.split(",")[0]  # a cluster: its first node
