"""The storage's reads: counts, pages of threads, what a thread holds, deferred and recurring requests.

`Reads` is the base of `admin.Admin` (and so of `Storage`): what `Queue`'s
inspection and `sharded_queue.stats` read. A handler's totals come from its
counts (`keys.Keys.counts`): one round trip however many threads; what is read
per thread is paged (`Reads.thread_page`) or asked for by thread.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import msgspec
from redis.asyncio.cluster import RedisCluster

from ..core import ThreadRef, Tube
from ..errors import StorageError
from .client import describe_client, embedded_default
from .keys import Keys
from .layout import Layout
from .protocol import StoredSchedule
from .scripts import Scripts, translate_errors

PAGE = 1000
"""Threads read per pipelined round trip when a read walks many (a recount, deferred requests)."""


class HandlerCounts(NamedTuple):
    """A handler's counts (`Reads.counts`).

    Attributes:
        waiting: Messages in its tubes (a batch being performed counts until acked).
        deferred: Deferred requests not yet due.
        dead: Dead letters.
        oldest: The enqueued_at of the oldest head of its tubes (the producer's clock),
            None when nothing waits.
    """

    waiting: int
    deferred: int
    dead: int
    oldest: float | None


class Position(NamedTuple):
    """Where a page of threads stops (`Reads.thread_page`): a handler, and where in its indexes."""

    handler: str
    phase: int
    cursor: str
    skip: int


class ThreadPage(NamedTuple):
    """A page of threads, and where the next one starts (None: this was the last)."""

    refs: list[ThreadRef]
    next: Position | None


@dataclass(frozen=True, slots=True)
class TubeView:
    """One non-empty tube of a thread as `Reads.inspect` read it: depth and head envelopes."""

    order: str
    rank: float
    depth: int
    envelopes: list[bytes]


@dataclass(frozen=True, slots=True)
class ThreadView:
    """One thread as `Reads.inspect` read it.

    Attributes:
        ref: The thread.
        lease: The lease token of its holder, if any.
        dead: How many dead letters it holds.
        deferred: How many deferred requests it holds.
        tubes: Its non-empty tubes, most urgent first.
    """

    ref: ThreadRef
    lease: str | None
    dead: int
    deferred: int
    tubes: list[TubeView]


class DeferredEntry(NamedTuple):
    """A deferred request as stored (`Reads.deferred_entries`): where, when due (server clock), its envelope."""

    thread: str
    order: str
    due: float
    envelope: bytes


class Reads:
    """Reads of the queue's keys, for inspection and stats.

    Args:
        client: The redis-py client (plain, cluster or fakeredis).
        keys: The key schema.
        scripts: The registered scripts, and how to run them.
        layout: Where the handlers' indexes and counts live (one server or a cluster).
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

    async def ping(self) -> float:
        """Seconds one ``PING`` takes there and back, by the path the scripts take (a lane on one
        server, the client elsewhere): the round trip the worker's calls pay besides the server's work."""
        with translate_errors():
            start = time.perf_counter()
            await self.scripts.send_all([("PING",)])
            return time.perf_counter() - start

    @property
    def local(self) -> bool:
        """Whether the storage server runs on this machine (a loopback address, a unix socket or
        the embedded fakeredis): its CPU then competes with the workers' for the same cores."""
        location = self.location
        return (
            location == "embedded fakeredis"
            or location.startswith("unix:")
            or any(host in location for host in ("@127.", "//127.", "@localhost", "//localhost", "[::1]"))
        )

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

    async def tube_payloads(self, tube: Tube) -> list[bytes]:
        """Every payload waiting in a tube, head first."""
        with translate_errors():
            return list(await self.client.lrange(self.keys.tube(tube), 0, -1))

    async def indexed_threads(self, handler: str) -> list[str]:
        """Threads of ``handler`` in the coordinator's index."""
        with translate_errors():
            return [member.decode() for member in await self.client.zrange(self.keys.index(handler), 0, -1)]

    async def lease_token(self, ref: ThreadRef) -> str | None:
        """The token of the loop holding ``ref``, if any."""
        with translate_errors():
            token = await self.client.get(self.keys.lease(ref))
        return None if token is None else token.decode()

    # --- counts -------------------------------------------------------------

    async def pending(self, handler: str) -> int:
        """Messages waiting in all tubes of ``handler``, from its counts (one round trip)."""
        with translate_errors():
            waiting, recounted = await self.client.hmget(self.keys.counts(handler), "waiting", "recounted")
        if recounted is None:  # never recounted: written by a version without counts, or new
            return (await self.recount(handler)).waiting
        return int(waiting or 0)

    async def counts(self, handlers: Sequence[str]) -> dict[str, HandlerCounts]:
        """The counts of each of ``handlers`` (one round trip, whatever their threads).

        A handler never recounted is recounted first (`recount`): once, after an upgrade.
        """
        return (await self.snapshot(handlers, []))[0]

    async def snapshot(
        self, handlers: Sequence[str], refs: Sequence[ThreadRef], limit: int = 1, across: bool = False
    ) -> tuple[dict[str, HandlerCounts], list[ThreadView]]:
        """The counts of ``handlers`` and what ``refs`` hold (`inspect`), read in one round trip.

        A handler never recounted is recounted first, and read again.
        """
        found, views, _ = await self.page_snapshot(handlers, refs, (), limit, across)
        return found, views

    async def page_snapshot(
        self,
        handlers: Sequence[str],
        refs: Sequence[ThreadRef],
        paused: Sequence[str],
        limit: int = 1,
        across: bool = False,
    ) -> tuple[dict[str, HandlerCounts], list[ThreadView], dict[str, dict[str, float]]]:
        """`snapshot`, with the stored pauses of ``paused`` handlers (thread or ``*`` -> when it
        ends, passed or not), all in one round trip (a page of stats)."""
        commands = [command for handler in handlers for command in self._count_commands(handler)]
        commands += (self.scripts.command(*self._inspect_call(ref, limit, across)) for ref in refs)
        commands += (("HGETALL", self.keys.paused(handler)) for handler in paused)
        with translate_errors():
            replies = await self.scripts.send_all(commands) if commands else []
        found: dict[str, HandlerCounts] = {}
        for position, handler in enumerate(handlers):
            counted = _counts(replies[2 * position], replies[2 * position + 1])
            found[handler] = await self.recount(handler) if counted is None else counted
        first = 2 * len(handlers)
        views = [_view(ref, reply) for ref, reply in zip(refs, replies[first : first + len(refs)], strict=True)]
        stored = replies[first + len(refs) :]
        return found, views, {handler: _pauses(raw) for handler, raw in zip(paused, stored, strict=True)}

    def _count_commands(self, handler: str) -> list[tuple[Any, ...]]:
        keys = self.keys
        return [
            ("HMGET", keys.counts(handler), "waiting", "deferred", "dead", "recounted"),
            ("ZRANGE", keys.heads(handler), 0, 0, "WITHSCORES"),
        ]

    async def recount(self, handler: str) -> HandlerCounts:
        """Rebuild ``handler``'s counts from what its threads hold, and return them.

        Walks its indexes (non-empty threads, threads with dead letters, with
        deferred requests) and its tallies once, counting each thread again as
        a script does after a change, then sets the counts to what the
        threads' tallies add up to (one call, O(threads)): safe while workers
        and producers run. On a cluster, a thread's count that crossed one of
        these in flight may be left as it was until the thread's next change
        (see `keys`).
        """
        keys = self.keys
        threads: dict[str, None] = {}
        since = await self.server_time()
        with translate_errors():
            for key in (keys.index(handler), keys.dead_index(handler), keys.due_index(handler)):
                threads.update(dict.fromkeys(await self._scan_members(key, hashed=False)))
            threads.update(dict.fromkeys(await self._scan_members(keys.tallies(handler), hashed=True)))
            names = list(threads)
            if not names and not await self.client.exists(keys.counts(handler)):
                return HandlerCounts(0, 0, 0, None)  # nothing to count: a name never written, left unwritten
            for start in range(0, len(names), PAGE):
                await self._layout.tally(handler, names[start : start + PAGE])
            await self._layout.rebuild(handler, since)
        return (await self.counts([handler]))[handler]

    async def _scan_members(self, key: str, hashed: bool) -> list[str]:
        """Every member of a zset (or field of a hash), by ZSCAN (HSCAN): never one long command."""
        found: list[str] = []
        cursor = 0
        while True:
            if hashed:
                cursor, fields = await self.client.hscan(key, cursor, count=PAGE)
                found += (field.decode() for field in fields)
            else:
                cursor, members = await self.client.zscan(key, cursor, count=PAGE)
                found += (member.decode() for member, _ in members)
            if not cursor:
                return found

    # --- threads ------------------------------------------------------------

    async def thread_page(self, handlers: Sequence[str], start: Position | None, limit: int) -> ThreadPage:
        """Up to ``limit`` threads of ``handlers``, from ``start`` (None: the beginning).

        A handler's threads are those of its index, then of its dead-letter and
        due indexes not listed already (scan.lua), handler after handler: at
        most two round trips. A thread that changes index between two pages may
        be listed twice or not at all.
        """
        names = list(handlers)
        if start is not None:
            names = names[names.index(start.handler) :] if start.handler in names else []
        if limit <= 0 or not names:
            return ThreadPage([], None)
        positions = [
            start if start is not None and name == start.handler else Position(name, 1, "0", 0) for name in names
        ]
        with translate_errors():
            replies = await self.scripts.eval_all([self._scan_call(position, limit) for position in positions])
            refs: list[ThreadRef] = []
            for position, reply in zip(positions, replies, strict=True):
                left = limit - len(refs)
                phase, cursor, skip, threads = reply
                if len(threads) > left:  # this handler fills the page: read exactly what is left of it
                    phase, cursor, skip, threads = (await self.scripts.eval_all([self._scan_call(position, left)]))[0]
                refs += (ThreadRef(position.handler, thread.decode()) for thread in threads)
                if int(phase) <= 3:
                    return ThreadPage(refs, Position(position.handler, int(phase), cursor.decode(), int(skip)))
                if len(refs) == limit:
                    later = names.index(position.handler) + 1
                    return ThreadPage(refs, Position(names[later], 1, "0", 0) if later < len(names) else None)
        return ThreadPage(refs, None)

    def _scan_call(self, position: Position, count: int) -> tuple[Any, list[str], list[Any]]:
        keys = self.keys
        handler = position.handler
        return (
            self.scripts.scan,
            [keys.index(handler), keys.dead_index(handler), keys.due_index(handler)],
            [position.phase, position.cursor, position.skip, count],
        )

    async def inspect(self, refs: Sequence[ThreadRef], limit: int = 1, across: bool = False) -> list[ThreadView]:
        """What each of ``refs`` holds (one pipelined round trip; inspect.lua).

        Args:
            refs: The threads.
            limit: Envelopes read from the head of each tube, or with ``across`` from
                the thread's tubes together, most urgent first.
            across: See ``limit``.
        """
        return (await self.snapshot([], refs, limit, across))[1]

    def _inspect_call(self, ref: ThreadRef, limit: int, across: bool) -> tuple[Any, list[str], list[Any]]:
        keys = self.keys
        return (
            self.scripts.inspect,
            [keys.orders(ref), keys.lease(ref), keys.dead(ref), keys.deferred(ref)],
            [keys.tube_prefix(ref), limit, 1 if across else 0],
        )

    # --- deferred and recurring requests ------------------------------------

    async def deferred_entries(self, handler: str, limit: int | None = None) -> list[DeferredEntry]:
        """``handler``'s deferred requests, threads by their earliest due, each thread's by due (at most ``limit``)."""
        found: list[DeferredEntry] = []
        with translate_errors():
            threads = [member.decode() for member in await self.client.zrange(self.keys.due_index(handler), 0, -1)]
            for start in range(0, len(threads), PAGE):
                chunk = threads[start : start + PAGE]
                replies = await self._whole_zsets([self.keys.deferred(ThreadRef(handler, t)) for t in chunk])
                for thread, entries in zip(chunk, replies, strict=True):
                    found += (_deferred_entry(thread, member, due) for member, due in entries)
                if limit is not None and len(found) >= limit:
                    return found[:limit]
        return found

    async def _whole_zsets(self, keys: Sequence[str]) -> list[list[tuple[bytes, float]]]:
        """Every member of each zset, with its score (one round trip)."""
        return await self._pipeline(lambda pipe: [pipe.zrange(key, 0, -1, withscores=True) for key in keys])

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

    async def dead_records(self, handler: str, threads: Sequence[str]) -> list[list[bytes]]:
        """Raw dead-letter records of each of ``threads``, oldest first (one round trip)."""
        with translate_errors():
            return await self._pipeline(
                lambda pipe: [pipe.lrange(self.keys.dead(ThreadRef(handler, thread)), 0, -1) for thread in threads]
            )


def _counts(fields: Sequence[bytes | None], heads: Sequence[bytes]) -> HandlerCounts | None:
    """A handler's counts from HMGET (waiting, deferred, dead, recounted) and its first heads
    entry (ZRANGE WITHSCORES); None if never recounted."""
    waiting, deferred, dead, recounted = fields
    if recounted is None:
        return None
    oldest = None
    if heads:  # a flat [member, score] (a lane), or [(member, score)] (redis-py parsed it)
        oldest = float(heads[0][1] if isinstance(heads[0], list | tuple) else heads[1])
    return HandlerCounts(int(waiting or 0), int(deferred or 0), int(dead or 0), oldest)


def _view(ref: ThreadRef, reply: Sequence[Any]) -> ThreadView:
    """A thread from inspect.lua's reply."""
    lease, dead, deferred, *tubes = reply
    return ThreadView(
        ref,
        None if lease is None else lease.decode(),
        int(dead),
        int(deferred),
        [TubeView(order.decode(), float(rank), int(depth), list(heads)) for order, rank, depth, heads in tubes],
    )


def _deferred_entry(thread: str, member: bytes, due: float) -> DeferredEntry:
    """A deferred zset member: 16 hex digits of sequence, the envelope, newline, the rank, newline, the order."""
    body, _, order = member[16:].rpartition(b"\n")
    envelope, _, _ = body.rpartition(b"\n")
    return DeferredEntry(thread, order.decode(), float(due), envelope)


def _pauses(raw: Any) -> dict[str, float]:
    """An HGETALL of a paused hash (a dict, or a flat list when sent raw): thread -> when it ends."""
    items = raw.items() if isinstance(raw, dict) else zip(raw[::2], raw[1::2], strict=True)
    return {_text(field): float(ends) for field, ends in items}


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
