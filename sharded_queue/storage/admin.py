"""The storage's operations off the per-batch path that write: schedules, dead letters, the worker registry.

Writes for `Queue`'s administration (stopping recurring and deferred requests,
requeueing or purging dead letters) and for `sharded_queue.registry`
(heartbeats), on top of the reads of `reads.Reads` (counts, pages of threads,
inspection). `Storage` is an `Admin`: it adds the queue's hot path
(`sharded_queue.storage.store`).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

from ..core import ThreadRef, Tube
from .reads import Reads
from .scripts import is_fake, ms, source, translate_errors


class WorkerRecordRaw(NamedTuple):
    """A live worker's record as stored (see `Admin.worker_records`)."""

    worker_id: str
    started_at: float
    beat_at: float
    record: bytes


class DeadTake(NamedTuple):
    """The oldest dead letters of one thread to take (`Admin.take_dead`).

    Attributes:
        thread: The thread.
        records: Its oldest records, as read (head first): those are taken.
        tubes: What to put back: per order, its rank (kept if the order is queued
            already) and the payloads, in order; empty to drop them.
    """

    thread: str
    records: Sequence[bytes]
    tubes: Sequence[tuple[str, float, Sequence[bytes]]] = ()


class Admin(Reads):
    """Operations on the queue's keys that no worker runs per batch (reads from `Reads`)."""

    async def append_raw(self, handler: str, writes: Sequence[tuple[Tube, float, Sequence[bytes]]]) -> None:
        """Append payloads byte for byte (any bytes, newlines included), then index and count their threads.

        Pipelined, not atomic: for tests and repairs, which write what no registration would.
        """
        with translate_errors():

            def append(pipe: Any) -> None:
                for tube, rank, payloads in writes:
                    pipe.rpush(self.keys.tube(tube), *payloads)
                    pipe.zadd(self.keys.orders(tube.thread_ref), {tube.order: rank})

            await self._pipeline(append)
            threads = list(dict.fromkeys(tube.thread for tube, _, _ in writes))
            await self._eval(self._index, [self.keys.index(handler)], ["add", 0, *threads])
            await self._layout.tally(handler, threads)

    # --- recurring requests -------------------------------------------------

    async def unschedule(self, handler: str, members: Mapping[str, Sequence[bytes]]) -> tuple[int, int]:
        """Remove recurring requests (``members`` by thread: request, newline, order) and the deferred
        requests equal to them; returns how many of each."""
        schedules = deferred = 0
        with translate_errors():
            for thread, names in members.items():
                ref = ThreadRef(handler, thread)
                found = await self._layout.unschedule(ref, [thread, self.keys.thread(ref), *names])
                schedules, deferred = schedules + found[0], deferred + found[1]
        return schedules, deferred

    # --- dead letters -------------------------------------------------------

    async def take_dead(self, handler: str, takes: Sequence[DeadTake]) -> int:
        """Take the oldest dead letters of threads of ``handler``: drop them, or put payloads back.

        Atomic per thread (dead.lua), with the thread's indexes and counts; a
        thread whose oldest record is no longer the one read (another client
        took it meanwhile) is left alone. Returns how many records were taken.
        """
        calls = []
        for take in takes:
            if not take.records:
                continue
            ref = ThreadRef(handler, take.thread)
            args: list[Any] = [take.thread, self.keys.thread(ref), len(take.records), take.records[0]]
            for order, rank, payloads in take.tubes:
                args += (order, repr(rank), len(payloads), *payloads)
            calls.append((take.thread, args))
        with translate_errors():
            replies = await self._layout.take_dead(handler, calls)
        return sum(max(0, int(taken)) for taken, *_ in replies)

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
