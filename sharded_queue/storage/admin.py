"""The storage's operations off the per-batch path: inspection, schedules, dead letters, the worker registry.

Reads for `sharded_queue.stats` (`Admin.snapshot`) and `Queue`'s inspection
(pending messages, recurring requests, dead letters), writes for
`sharded_queue.registry` (heartbeats) and for requeueing or purging dead
letters. `Storage` is an `Admin`: it adds the queue's hot path
(`sharded_queue.storage.store`).
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import msgspec
from redis.asyncio.cluster import RedisCluster

from ..core import ThreadRef, Tube
from ..errors import StorageError
from .client import describe_client, embedded_default
from .keys import Keys
from .layout import Layout
from .protocol import StoredSchedule
from .scripts import Scripts, is_fake, ms, source, translate_errors


class WorkerRecordRaw(NamedTuple):
    """A live worker's record as stored (see `Admin.worker_records`)."""

    worker_id: str
    started_at: float
    beat_at: float
    record: bytes


@dataclass(slots=True)
class ThreadSnapshot:
    """One thread as `Admin.snapshot` read it.

    Attributes:
        ref: The thread.
        orders: Its non-empty orders with their rank, most urgent first.
        lease: The lease token of its holder, if any.
        dead: How many dead letters it holds.
        tubes: Per order: how many messages wait and the head envelope (None if empty).
    """

    ref: ThreadRef
    orders: list[tuple[str, float]]
    lease: str | None
    dead: int
    tubes: list[tuple[str, int, bytes | None]] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Snapshot:
    """What `Admin.snapshot` read: the server time (seconds) and the threads."""

    now: float
    threads: list[ThreadSnapshot]


class Admin:
    """Operations on the queue's keys that no worker runs per batch.

    Args:
        client: The redis-py client (plain, cluster or fakeredis).
        keys: The key schema.
        scripts: The registered scripts, and how to run them.
        layout: Where the handlers' indexes live (one server or a cluster).
    """

    def __init__(self, client: Any, keys: Keys, scripts: Scripts, layout: Layout) -> None:
        self.client = client
        self.keys = keys
        self.scripts = scripts
        self._layout = layout
        self._eval = scripts.eval
        self._pipeline = scripts.pipeline
        self._index = scripts.index

    @property
    def location(self) -> str:
        """Where this storage is, safe to log: a URL without password, or ``embedded fakeredis``."""
        return describe_client(self.client)

    @property
    def embedded_default(self) -> bool:
        """True on the process-wide embedded fakeredis (``Queue()`` with no URL anywhere)."""
        return embedded_default(self.client)

    async def server_time(self) -> float:
        """The storage server's clock, in seconds since the epoch."""
        with translate_errors():
            seconds, micros = await self.client.time()
        return float(seconds) + float(micros) / 1_000_000

    async def info(self, section: str) -> dict[str, Any]:
        """The server's ``INFO section`` (a single server; a cluster's nodes each have their own).

        Raises:
            StorageError: a cluster, or the server did not answer.
        """
        if isinstance(self.client, RedisCluster):
            raise StorageError("INFO of a cluster is per node: not read")
        with translate_errors():
            found: dict[str, Any] = await self.client.info(section)
        return found

    # --- inspection ---------------------------------------------------------

    async def tube_payloads(self, tube: Tube) -> list[bytes]:
        """Every payload waiting in a tube, head first."""
        with translate_errors():
            return list(await self.client.lrange(self.keys.tube(tube), 0, -1))

    async def indexed_threads(self, handler: str) -> list[str]:
        """Threads of ``handler`` in the coordinator's index."""
        with translate_errors():
            return [member.decode() for member in await self.client.zrange(self.keys.index(handler), 0, -1)]

    async def pending(self, handler: str) -> int:
        """Messages waiting in all tubes of ``handler`` (three round trips; not for hot paths)."""
        refs = [ThreadRef(handler, thread) for thread in await self.indexed_threads(handler)]
        with translate_errors():
            orders = await self._pipeline(lambda pipe: [pipe.zrange(self.keys.orders(ref), 0, -1) for ref in refs])
            lengths = await self._pipeline(
                lambda pipe: [
                    pipe.llen(self.keys.tube(Tube(handler, ref.thread, order.decode())))
                    for ref, names in zip(refs, orders, strict=True)
                    for order in names
                ]
            )
        return sum(lengths)

    async def lease_token(self, ref: ThreadRef) -> str | None:
        """The token of the loop holding ``ref``, if any."""
        with translate_errors():
            token = await self.client.get(self.keys.lease(ref))
        return None if token is None else token.decode()

    async def append_raw(self, handler: str, writes: Sequence[tuple[Tube, float, Sequence[bytes]]]) -> None:
        """Append payloads byte for byte (any bytes, newlines included), then index their threads.

        Pipelined, not atomic: for putting dead letters back, which is at-least-once.
        """
        with translate_errors():

            def append(pipe: Any) -> None:
                for tube, rank, payloads in writes:
                    pipe.rpush(self.keys.tube(tube), *payloads)
                    pipe.zadd(self.keys.orders(tube.thread_ref), {tube.order: rank})

            await self._pipeline(append)
            threads = list(dict.fromkeys(tube.thread for tube, _, _ in writes))
            await self._eval(self._index, [self.keys.index(handler)], ["add", 0, *threads])

    # --- recurring requests -------------------------------------------------

    async def unschedule(self, handler: str, members: Mapping[str, Sequence[bytes]]) -> int:
        """Remove recurring requests (``members`` by thread: request, newline, order); returns how many."""
        removed = 0
        with translate_errors():
            for thread, names in members.items():
                removed += int(await self._layout.unschedule(ThreadRef(handler, thread), names))
        return removed

    async def schedules(self, handler: str) -> list[tuple[str, bytes, StoredSchedule, float]]:
        """Every recurring request of ``handler``: (thread, request newline order, schedule, next tick)."""
        with translate_errors():
            threads = [member.decode() for member in await self.client.zrange(self.keys.due_index(handler), 0, -1)]
            refs = [ThreadRef(handler, thread) for thread in threads]
            replies = await self._pipeline(
                lambda pipe: [
                    (
                        pipe.zrange(self.keys.recurring(ref), 0, -1, withscores=True),
                        pipe.hgetall(self.keys.schedules(ref)),
                    )
                    for ref in refs
                ]
            )
        found = []
        for thread, ticks, kept in zip(threads, replies[::2], replies[1::2], strict=True):
            for member, next_due in ticks:
                if member in kept:
                    found.append((thread, member, msgspec.json.decode(kept[member], type=StoredSchedule), next_due))
        return found

    # --- dead letters -------------------------------------------------------

    async def dead_threads(self, handler: str) -> list[str]:
        """Threads of ``handler`` that hold dead letters, in the order they first got one."""
        with translate_errors():
            return [member.decode() for member in await self.client.zrange(self.keys.dead_index(handler), 0, -1)]

    async def dead_counts(self, handler: str) -> dict[str, int]:
        """How many dead letters each thread of ``handler`` holds (two round trips, no bodies read)."""
        threads = await self.dead_threads(handler)
        with translate_errors():
            lengths = await self._pipeline(
                lambda pipe: [pipe.llen(self.keys.dead(ThreadRef(handler, thread))) for thread in threads]
            )
        return {thread: int(length) for thread, length in zip(threads, lengths, strict=True) if length}

    async def dead_records(self, handler: str, threads: Sequence[str]) -> list[list[bytes]]:
        """Raw dead-letter records of each of ``threads``, oldest first (one round trip)."""
        with translate_errors():
            return await self._pipeline(
                lambda pipe: [pipe.lrange(self.keys.dead(ThreadRef(handler, thread)), 0, -1) for thread in threads]
            )

    async def take_dead(self, handler: str, counts: Mapping[str, int]) -> None:
        """Drop the oldest ``counts[thread]`` dead letters of each thread (requeued or purged).

        Threads left without dead letters leave the handler's dead-letter index:
        removed, re-checked, and re-added if a letter landed meanwhile.
        """
        index = self.keys.dead_index(handler)
        keys = {thread: self.keys.dead(ThreadRef(handler, thread)) for thread in counts}
        with translate_errors():
            replies = await self._pipeline(
                lambda pipe: [
                    (pipe.ltrim(keys[thread], count, -1), pipe.llen(keys[thread])) for thread, count in counts.items()
                ]
            )
            empty = [thread for thread, left in zip(counts, replies[1::2], strict=True) if not left]
            if not empty:
                return
            await self.client.zrem(index, *empty)
            again = await self._pipeline(lambda pipe: [pipe.llen(keys[thread]) for thread in empty])
            back = [thread for thread, left in zip(empty, again, strict=True) if left]
            if back:
                await self._eval(self._index, [index], ["add", 0, *back])

    # --- the worker registry ------------------------------------------------

    @functools.cached_property
    def _worker_beat(self) -> Any:
        return self.client.register_script(source("worker_beat", not is_fake(self.client)))

    @functools.cached_property
    def _worker_list(self) -> Any:
        return self.client.register_script(source("worker_list"))

    async def add_handlers(self, names: Sequence[str]) -> None:
        """Add handler names to the set `stats` lists handlers from."""
        if names:
            with translate_errors():
                await self.client.sadd(self.keys.handlers, *names)

    async def handler_names(self) -> list[str]:
        """Names of every handler registered or worked on, sorted (never imported)."""
        with translate_errors():
            return sorted(name.decode() for name in await self.client.smembers(self.keys.handlers))

    async def beat_worker(
        self, worker_id: str, record: bytes, ttl: float, handlers: Sequence[str] = ()
    ) -> tuple[float, list[str]]:
        """Write a worker's heartbeat record, live for ``ttl`` seconds.

        ``handlers`` (the names it runs) are added to the set `handler_names` reads.

        Returns:
            The server time, and the ids of the live workers (this one included).
        """
        keys = self.keys
        with translate_errors():
            now, *live = await self._worker_beat(
                keys=[keys.workers, keys.worker(worker_id), keys.handlers],
                args=[worker_id, ms(ttl), record, *handlers],
            )
        return int(now) / 1000, sorted(worker.decode() for worker in live)

    async def remove_worker(self, worker_id: str) -> None:
        """Delete a worker's record at once (a graceful stop)."""
        keys = self.keys
        with translate_errors():
            async with self.client.pipeline(transaction=self._layout.transaction) as pipe:
                pipe.zrem(keys.workers, worker_id)
                pipe.delete(keys.worker(worker_id))
                await pipe.execute()

    async def live_workers(self) -> list[str]:
        """Ids of the workers whose heartbeat has not expired (one round trip, server clock)."""
        keys = self.keys
        with translate_errors():
            reply = await self._worker_list(keys=[keys.workers], args=[keys.worker(""), "0"])
        return [worker_id.decode() for worker_id in reply[1:]]

    async def worker_records(self) -> tuple[float, list[WorkerRecordRaw]]:
        """The server time and every live worker's record (one round trip).

        Returns:
            ``(now, records)``: seconds on the server's clock, and per worker its
            id, ``started_at`` and ``beat_at`` (server seconds) and its JSON record.
        """
        with translate_errors():
            reply = await self._worker_list(keys=[self.keys.workers], args=[self.keys.worker(""), "1"])
        records = [
            WorkerRecordRaw(worker_id.decode(), int(started) / 1000, int(beat) / 1000, record)
            for worker_id, started, beat, record in reply[1:]
        ]
        return int(reply[0]) / 1000, records

    # --- stats --------------------------------------------------------------

    async def snapshot(self, handlers: Sequence[str]) -> Snapshot:
        """Everything `stats` shows of ``handlers``, in three pipelined round trips.

        However many threads there are: the handlers' indexes and dead-letter
        indexes, then every listed thread's orders, lease and dead-letter count,
        then every tube's length and head envelope. Plus one ``TIME``.
        """
        keys = self.keys
        with translate_errors():
            now = await self.server_time()
            replies = await self._pipeline(
                lambda pipe: [
                    (pipe.zrange(keys.index(handler), 0, -1), pipe.zrange(keys.dead_index(handler), 0, -1))
                    for handler in handlers
                ]
            )
            refs: list[ThreadRef] = []
            for position, handler in enumerate(handlers):
                indexed, dead = replies[2 * position], replies[2 * position + 1]
                names = dict.fromkeys(member.decode() for member in [*indexed, *dead])
                refs += [ThreadRef(handler, thread) for thread in names]

            def per_thread(pipe: Any) -> None:
                for ref in refs:
                    pipe.zrange(keys.orders(ref), 0, -1, withscores=True)
                    pipe.get(keys.lease(ref))
                    pipe.llen(keys.dead(ref))

            replies = await self._pipeline(per_thread)
            threads: list[ThreadSnapshot] = []
            for position, ref in enumerate(refs):
                orders, lease, dead = replies[3 * position : 3 * position + 3]
                token = None if lease is None else lease.decode()
                threads.append(ThreadSnapshot(ref, [(o.decode(), rank) for o, rank in orders], token, int(dead)))
            tubes = [
                keys.tube(Tube(thread.ref.handler, thread.ref.thread, order))
                for thread in threads
                for order, _ in thread.orders
            ]
            heads: Iterator[Any] = iter(
                await self._pipeline(lambda pipe: [(pipe.llen(t), pipe.lindex(t, 0)) for t in tubes])
            )
        for thread in threads:
            thread.tubes = [(order, int(next(heads)), next(heads)) for order, _ in thread.orders]
        return Snapshot(now, threads)
