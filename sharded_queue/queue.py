"""`Queue`: where requests are registered, routed and stored."""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import msgspec

from .core import RequestRoute, Schedule, Tube, check_routes, due_when, group_by_tube, order_rank
from .deadletters import DeadLetterRecord
from .errors import StorageError
from .handler import Handler, HandlerSpec
from .registry import collect_workers, workers_frame
from .settings import Settings
from .settings import settings as default_settings
from .stats import collect_stats, stats_frame
from .storage import Storage, StoredSchedule, TubeWrite

if TYPE_CHECKING:
    import pandas as pd


class Queue:
    """Registers requests into their handler's tubes.

    Args:
        storage: A storage URL (``redis://``, ``rediss://``, ``redis+cluster://``, ``redis+sentinel://``),
            a `Storage`, or None for ``settings.storage_url`` or, when that is
            unset too, the embedded in-process fakeredis.
        settings: Settings to use instead of the module-level ``settings``.
    """

    def __init__(self, storage: str | Storage | None = None, *, settings: Settings | None = None) -> None:
        self.settings = settings or default_settings
        self.storage = storage if isinstance(storage, Storage) else Storage.from_settings(self.settings, storage)
        self._specs: dict[type[Handler], HandlerSpec] = {}
        self._by_name: dict[str, HandlerSpec] = {}
        self._registered: dict[str, type[Handler]] = {}

    @property
    def handlers(self) -> list[type[Handler]]:
        """Handler classes registered through this object, in first-use order."""
        return list(self._registered.values())

    def spec(self, handler: type[Handler]) -> HandlerSpec:
        """The (cached) spec of ``handler``, checking its name is not taken by another class."""
        spec = self._specs.get(handler)
        if spec is None:
            spec = HandlerSpec.of(handler)
            other = self._by_name.setdefault(spec.name, spec)
            if other.handler is not handler:
                raise ValueError(f"handlers {other.handler!r} and {handler!r} share the name {spec.name!r}")
            self._specs[handler] = spec
        return spec

    async def register(
        self,
        handler: type[Handler],
        *requests: Any,
        defer: float | timedelta | datetime | None = None,
        if_not_exists: bool = False,
        recurrent: float | timedelta | str | None = None,
    ) -> int:
        """Route, serialize and append ``requests`` to ``handler``'s tubes.

        Everything is validated and encoded first, then written in one round
        trip; on any error nothing is written. Once this returns the requests
        are stored (on the primary, which a failover can lose, unless
        ``settings.register_replicas`` N > 0 made this wait for N replicas too,
        Redis ``WAIT``) and will be performed at least once. A call of more than
        ``settings.register_chunk`` requests is written in chunks of that size,
        in order, each all or nothing, so that it never blocks Redis for long.

        Args:
            handler: The handler class.
            requests: Its requests, in order.
            defer: Join the tube's tail later: after these seconds (or `timedelta`),
                or at this aware `datetime`, on the storage server's clock. Requests
                of one tube due at the same time keep their registration order.
            if_not_exists: Skip a request whose encoded bytes equal those of one
                still waiting (queued or deferred) in the same tube; it is stored
                again once that one is acked (performed or dead-lettered).
            recurrent: Register each request again on every tick of a schedule:
                every so many seconds (or `timedelta`), the first tick one period
                from now, or at each match of a cron string (UTC). Registering the
                same request (same thread and order) again replaces its schedule;
                ticks missed while no worker ran collapse into one. Not with ``defer``.

        Returns:
            How many requests were stored (scheduled, for ``recurrent``).

        Raises:
            RouteError: ``route()`` did not return one `RequestRoute` per request
                (`RouteTypeError`, also a TypeError, for a wrong item type).
            ValueError: an order not in ``handler.orders``; a negative or naive
                ``defer``; an invalid ``recurrent``; ``defer`` with ``recurrent``.
            TypeError: ``defer``, ``recurrent`` or ``if_not_exists`` of the wrong type.
            SerializationError: a request is not of the handler's request type.
            StorageFull: Redis is full (nothing of the chunk was written).
            StorageError: Redis failed, did not answer in time, or fewer than N replicas acknowledged
                (saying how many); ``stored``: requests earlier chunks stored (or the primary holds).
        """
        spec = self.spec(handler)
        when, schedule = _timing(defer, if_not_exists, recurrent)
        if not requests:
            return 0
        routes = check_routes(requests, await handler.route(*requests), f"{handler.__qualname__}.route()")
        if schedule is not None:
            when = f"@{schedule.first_after(await self.storage.server_time())!r}"
        chunks = self._chunks(spec, routes, if_not_exists, when, schedule)
        if spec.name not in self._registered:  # once per handler and Queue: names for stats, never imported
            await self.storage.add_handlers([spec.name])
        stored = await self._push(spec.name, chunks, len(requests))
        self._registered.setdefault(spec.name, handler)
        return stored

    def _chunks(
        self, spec: HandlerSpec, routes: list[RequestRoute], unique: bool, when: str, schedule: Schedule | None
    ) -> list[list[TubeWrite]]:
        """Every write of a registration, encoded, in chunks of ``register_chunk`` requests."""
        now = time.time()  # the client's clock: for traces only, never compared by the storage
        size = self.settings.register_chunk
        return [
            [
                self._write(spec, tube, spec.codec.encode(batch, now), unique, when, schedule)
                for tube, batch in group_by_tube(spec.name, routes[start : start + size]).items()
            ]
            for start in range(0, len(routes), size)
        ]

    async def _push(self, handler: str, chunks: list[list[TubeWrite]], total: int) -> int:
        """Push the chunks in order; a failure says how many requests earlier chunks stored."""
        stored = 0
        replicas, timeout = self.settings.register_replicas, self.settings.storage_timeout
        for writes in chunks:
            try:
                stored += await self.storage.push(handler, writes, replicas=replicas, timeout=timeout)
            except StorageError as exc:
                if stored:
                    exc.stored += stored
                    exc.add_note(f"the first {exc.stored} of {total} requests were stored")
                raise
        return stored

    @staticmethod
    def _write(
        spec: HandlerSpec, tube: Tube, envelopes: bytes, unique: bool, when: str, schedule: Schedule | None
    ) -> TubeWrite:
        rank = order_rank(tube.order, spec.orders)
        if unique and schedule is None:  # a trailing space (valid JSON) marks owners of a mark (push.lua)
            envelopes = envelopes.replace(b"\n", b" \n") + b" "
        if schedule is None:
            return TubeWrite(tube, rank, envelopes, unique, when)
        kept = StoredSchedule(schedule.every, schedule.cron, repr(rank), unique)
        return TubeWrite(tube, rank, envelopes, unique, when, msgspec.json.encode(kept))

    async def unschedule(self, handler: type[Handler], *requests: Any) -> int:
        """Stop recurring requests (routed like `register` routes them); returns how many were scheduled."""
        spec = self.spec(handler)
        if not requests:
            return 0
        routes = check_routes(requests, await handler.route(*requests), f"{handler.__qualname__}.route()")
        members: dict[str, list[bytes]] = {}
        for tube, batch in group_by_tube(spec.name, routes).items():
            for envelope in spec.codec.encode(batch, 0.0).split(b"\n"):
                request = envelope[envelope.index(b",") + 1 : -1]  # as push.lua cuts it
                members.setdefault(tube.thread, []).append(request + b"\n" + tube.order.encode())
        return await self.storage.unschedule(spec.name, members)

    async def schedules(self, handler: type[Handler]) -> pd.DataFrame:
        """``handler``'s recurring requests: request, thread, order, every (seconds or a cron
        string) and next_at (the next tick, an aware UTC datetime on the storage server's clock)."""
        import pandas as pd

        spec = self.spec(handler)
        rows = []
        for thread, member, kept, next_due in await self.storage.schedules(spec.name):
            request, _, order = member.partition(b"\n")
            _, decoded = spec.codec.decode(b"[0," + request + b"]")
            schedule = kept.schedule()
            rows.append((decoded, thread, order.decode(), schedule.describe(), datetime.fromtimestamp(next_due, UTC)))
        return pd.DataFrame(rows, columns=["request", "thread", "order", "every", "next_at"])

    async def pending(self, handler: type[Handler]) -> int:
        """Messages of ``handler`` waiting in storage (inspection; walks the handler's index)."""
        return await self.storage.pending(self.spec(handler).name)

    async def stats(self, handlers: Sequence[str | type[Handler]] | None = None) -> pd.DataFrame:
        """Depth, lag, holder and dead letters per tube, plus a total row per handler.

        One row per (handler, thread, order) that holds messages and one per
        handler with ``thread`` and ``order`` None; columns ``handler, thread,
        order, depth, lag, holder, held_since, dead`` (explained in
        `sharded_queue.stats`). Lag is the storage server's clock minus the
        producer's ``enqueued_at``. Reads a fixed number of pipelined round
        trips, whatever the number of threads; imports nothing.

        Args:
            handlers: Handler classes or stored names; default every handler name
                kept in storage (registered, or run by a worker).

        Raises:
            StorageError: Redis failed or did not answer in time.
        """
        names = None if handlers is None else [h if isinstance(h, str) else self.spec(h).name for h in handlers]
        return stats_frame(await collect_stats(self.storage, names))

    async def workers(self) -> pd.DataFrame:
        """Live workers (their heartbeat has not expired), one row each.

        Columns ``id, handlers, loops, performed, failed, dead_lettered, held,
        started_at, heartbeat_at`` (see `sharded_queue.registry.WorkerInfo`).

        Raises:
            StorageError: Redis failed or did not answer in time.
        """
        _, workers = await collect_workers(self.storage)
        return workers_frame(workers)

    async def dead_letters(self, handler: type[Handler], limit: int | None = None) -> list[DeadLetterRecord]:
        """Dead letters of ``handler``, oldest first per thread (at most ``limit``)."""
        name = self.spec(handler).name
        records: list[DeadLetterRecord] = []
        for threads in _chunks(await self.storage.dead_threads(name)):
            for raws in await self.storage.dead_records(name, threads):
                records += map(DeadLetterRecord.decode, raws)
                if limit is not None and len(records) >= limit:
                    return records[:limit]
        return records

    async def dead_letter_count(self, handler: type[Handler]) -> int:
        """How many dead letters ``handler`` has (without reading them)."""
        return sum((await self.storage.dead_counts(self.spec(handler).name)).values())

    async def requeue_dead_letters(self, handler: type[Handler]) -> int:
        """Put ``handler``'s dead letters back at the *tail* of their thread and order.

        They keep their original envelope (and enqueue time) but lose their
        place: messages registered since they failed are performed first.
        At-least-once: a crash midway may requeue a letter that also stays dead.
        Returns how many were requeued.
        """
        return await self._take_dead(handler, requeue=True)

    async def purge_dead_letters(self, handler: type[Handler]) -> int:
        """Delete ``handler``'s dead letters; returns how many."""
        return await self._take_dead(handler, requeue=False)

    async def _take_dead(self, handler: type[Handler], requeue: bool) -> int:
        spec = self.spec(handler)
        total = 0
        for threads in _chunks(await self.storage.dead_threads(spec.name)):
            taken = await self.storage.dead_records(spec.name, threads)
            if requeue:
                tubes: dict[Tube, list[bytes]] = {}
                for thread, raws in zip(threads, taken, strict=True):
                    for record in map(DeadLetterRecord.decode, raws):
                        payload = record.payload.removesuffix(b" ")  # back without an if_not_exists mark
                        tubes.setdefault(Tube(spec.name, thread, record.order), []).append(payload)
                writes = [(tube, order_rank(tube.order, spec.orders), payloads) for tube, payloads in tubes.items()]
                if writes:
                    await self.storage.append_raw(spec.name, writes)
            await self.storage.take_dead(spec.name, {t: len(raws) for t, raws in zip(threads, taken, strict=True)})
            total += sum(map(len, taken))
        return total

    async def close(self) -> None:
        """Close the storage connections."""
        await self.storage.close()

    async def __aenter__(self) -> Queue:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def __repr__(self) -> str:
        settings = self.settings
        return (
            f"<Queue on {self.storage.location}, prefix {self.storage.keys.prefix!r}; registered "
            f"{', '.join(sorted(self._registered)) or 'nothing yet'}; settings worker_batch_size "
            f"{settings.worker_batch_size}, coordinator_delay {settings.coordinator_delay:g} s, "
            f"lease_ttl {settings.lease_ttl:g} s>"
        )


def _chunks(threads: list[str], size: int = 1000) -> list[list[str]]:
    """Threads in pipelines of ``size``: a fixed number of round trips per thousand threads."""
    return [threads[start : start + size] for start in range(0, len(threads), size)]


def _timing(
    defer: float | timedelta | datetime | None, if_not_exists: object, recurrent: float | timedelta | str | None
) -> tuple[str, Schedule | None]:
    """`Queue.register`'s ``defer`` (`core.due_when`) and ``recurrent`` (`Schedule`), checked."""
    when = due_when(defer)
    schedule = None if recurrent is None else Schedule.of(recurrent)
    if schedule is not None and defer is not None:
        raise ValueError("recurrent= and defer= together: a recurring request starts at its first tick")
    if not isinstance(if_not_exists, bool):
        raise TypeError(f"if_not_exists= takes a bool, got {if_not_exists!r}")
    return when, schedule
