"""`QueueAdmin`: what `Queue` reads and administers, by handler class or stored name.

Counting (`QueueAdmin.pending`, `QueueAdmin.recount`), stats, the worker
registry, what waits (`QueueAdmin.peek`), what is deferred or recurring, and
dead letters. Every method takes a handler class or the name it is stored
under, so that an operations page can work on handlers it never imports; a
request of a handler whose class this queue does not know is shown as plain
JSON. `Queue` inherits all of it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import msgspec

from .core import ThreadRef, check_name, order_rank
from .deadletters import DeadLetterRecord
from .errors import DecodeError
from .frames import require_pandas
from .handler import Handler, HandlerSpec
from .registry import collect_workers, workers_frame
from .serializer import Codec
from .stats import DEFAULT_LIMIT, natural, stats_frame, stats_page
from .storage import DeadTake, Storage

if TYPE_CHECKING:
    import pandas as pd

HandlerRef = str | type[Handler]
"""A handler class, or the name it is stored under (`Handler.name`, else ``module:qualname``)."""

_PLAIN = Codec()  # plain JSON requests, either shape of envelope


class QueueAdmin:
    """The reading and administration methods of `Queue` (which sets `storage` and `spec`)."""

    storage: Storage
    _by_name: dict[str, HandlerSpec]

    def spec(self, handler: type[Handler]) -> HandlerSpec:
        """The spec of ``handler`` (`Queue.spec`)."""
        raise NotImplementedError

    def _check_open(self) -> None:
        """Raise `RuntimeError` when the queue is closed (`Queue._check_open`)."""
        raise NotImplementedError

    def _name(self, handler: HandlerRef) -> str:
        """The stored name of ``handler`` (a class, or a name as it is)."""
        self._check_open()
        if isinstance(handler, str):
            return handler
        if isinstance(handler, type) and issubclass(handler, Handler):
            return self.spec(handler).name
        raise TypeError(f"expected a Handler subclass or a handler name, got {handler!r}")

    def _known(self, name: str) -> HandlerSpec | None:
        """The spec of the class stored under ``name``, if this queue has met it."""
        return self._by_name.get(name)

    def _decoder(self, name: str) -> Callable[[bytes], tuple[float, Any]]:
        """Envelope -> (enqueued_at, request), with the handler's codec when its class is known,
        else as plain JSON; an envelope that does not decode gives (NaN, its bytes)."""
        spec = self._known(name)
        decode = spec.codec.decode if spec is not None else _PLAIN.decode

        def decoded(envelope: bytes) -> tuple[float, Any]:
            try:
                return decode(envelope)
            except (DecodeError, msgspec.DecodeError):
                return float("nan"), envelope

        return decoded

    # --- controls -----------------------------------------------------------

    async def pause(
        self, handler: HandlerRef, thread: str | int | None = None, for_: float | timedelta | None = None
    ) -> None:
        """Pause ``thread`` of ``handler``, or (None) the whole handler, until `resume` or for ``for_``.

        No loop binds a paused thread; one holding it finishes the batch in hand,
        acks it and lets the thread go. Registrations to it are stored as usual and
        wait. The pause is stored (it survives worker restarts) and a duration
        runs on the storage server's clock.

        Raises:
            ValueError: ``for_`` is not a number of seconds (or `timedelta`) > 0, or a bad thread name.
        """
        name = self._name(handler)
        seconds = _duration(for_)
        await self.storage.pause(name, None if thread is None else check_name("thread", thread), seconds)

    async def resume(self, handler: HandlerRef, thread: str | int | None = None) -> None:
        """End the pause of ``thread`` of ``handler`` (None: the handler-wide pause, leaving threads
        paused by name paused); idle loops are woken to take the threads at once."""
        name = self._name(handler)
        await self.storage.resume(name, None if thread is None else check_name("thread", thread))

    async def paused(self, handler: HandlerRef) -> list[str]:
        """The paused threads of ``handler``, sorted; a handler-wide pause is listed as ``*``."""
        return list(await self.storage.paused(self._name(handler)))

    # --- counts and stats ---------------------------------------------------

    async def pending(self, handler: HandlerRef) -> int:
        """Messages of ``handler`` waiting in its tubes (not deferred ones), from its counts: one round trip.

        A batch being performed counts until it is acked.
        """
        return await self.storage.pending(self._name(handler))

    async def recount(self, handler: HandlerRef) -> None:
        """Rebuild ``handler``'s counts from what its threads hold (walks its indexes once).

        Reads do it by themselves the first time they meet a handler written
        by a version without counts; on a cluster it also mends counts left off
        by a client that died between a change and its count (see
        `sharded_queue.storage.keys`). Safe while workers run.
        """
        await self.storage.recount(self._name(handler))

    async def stats(
        self, handlers: Sequence[HandlerRef] | None = None, *, limit: int = DEFAULT_LIMIT, cursor: str | None = None
    ) -> pd.DataFrame:
        """Depth, lag, holder, deferred requests and dead letters per tube, plus a total row per handler.

        One row per (handler, thread, order) that holds messages, for a page of
        at most ``limit`` threads, and on the first page one row per handler
        with ``thread`` and ``order`` None: its totals, from the counts the
        storage keeps (one round trip however many threads). Columns
        ``handler, thread, order, depth, lag, holder, held_since, deferred,
        dead`` (explained in `sharded_queue.stats`). Lag is the storage server's
        clock minus the producer's ``enqueued_at``. Imports nothing.

        Args:
            handlers: Handler classes or stored names; default every handler name
                kept in storage (registered, or run by a worker).
            limit: Threads per page (0: the total rows only).
            cursor: None for the first page, else ``frame.attrs["cursor"]`` of the
                page before; the last page's is None.

        Raises:
            ValueError: a ``cursor`` this method did not return.
            StorageError: Redis failed or did not answer in time.
        """
        self._check_open()
        names = None if handlers is None else [self._name(h) for h in handlers]
        page = await stats_page(self.storage, names, limit=limit, cursor=cursor)
        return stats_frame(page.rows, page.cursor)

    async def workers(self) -> pd.DataFrame:
        """Live workers (their heartbeat has not expired), one row each.

        Columns ``id, handlers, loops, performed, failed, dead_lettered, held,
        started_at, heartbeat_at`` (see `sharded_queue.registry.WorkerInfo`).

        Raises:
            StorageError: Redis failed or did not answer in time.
        """
        self._check_open()
        _, workers = await collect_workers(self.storage)
        return workers_frame(workers)

    # --- what waits ---------------------------------------------------------

    async def peek(self, handler: HandlerRef, thread: str | int | None = None, limit: int = 10) -> pd.DataFrame:
        """The first waiting requests of ``thread`` (or of each thread that holds some), taking nothing.

        Per thread, at most ``limit`` requests in the order a worker would take
        them (orders by precedence, each FIFO). Columns ``thread, order,
        position`` (0 for the next one), ``enqueued_at`` (an aware UTC datetime,
        the producer's clock) and ``request`` (decoded; its bytes if it does not
        decode). Without ``thread`` it reads every non-empty thread: on a large
        queue, name one.
        """
        require_pandas("Queue.peek()")
        import pandas as pd

        name = self._name(handler)
        threads = [str(thread)] if thread is not None else sorted(await self.storage.indexed_threads(name), key=natural)
        decode = self._decoder(name)
        rows = []
        for start in range(0, len(threads), DEFAULT_LIMIT):
            refs = [ThreadRef(name, t) for t in threads[start : start + DEFAULT_LIMIT]]
            for view in await self.storage.inspect(refs, limit=limit, across=True):
                envelopes = [(tube.order, envelope) for tube in view.tubes for envelope in tube.envelopes]
                for position, (order, envelope) in enumerate(envelopes):
                    enqueued_at, request = decode(envelope)
                    rows.append((view.ref.thread, order, position, _when(enqueued_at), request))
        return pd.DataFrame(rows, columns=["thread", "order", "position", "enqueued_at", "request"])

    async def deferred(self, handler: HandlerRef, limit: int | None = None) -> pd.DataFrame:
        """``handler``'s deferred requests not yet due, earliest first, then by thread.

        With ``limit``, at most that many, read from the threads whose earliest
        request is due first.

        Columns ``thread, order, due`` (an aware UTC datetime, the storage
        server's clock) and ``request`` (decoded; its bytes if it does not decode).
        `Queue.unschedule` removes them.
        """
        require_pandas("Queue.deferred()")
        import pandas as pd

        name = self._name(handler)
        decode = self._decoder(name)
        entries = sorted(await self.storage.deferred_entries(name, limit), key=lambda e: (e.due, natural(e.thread)))
        rows = [
            (entry.thread, entry.order, datetime.fromtimestamp(entry.due, UTC), decode(entry.envelope)[1])
            for entry in entries
        ]
        return pd.DataFrame(rows, columns=["thread", "order", "due", "request"])

    async def schedules(self, handler: HandlerRef) -> pd.DataFrame:
        """``handler``'s recurring requests: request, thread, order, every (seconds or a cron
        string) and next_at (the next tick, an aware UTC datetime on the storage server's clock)."""
        require_pandas("Queue.schedules()")
        import pandas as pd

        name = self._name(handler)
        decode = self._decoder(name)
        rows = []
        for thread, member, kept, next_due in await self.storage.schedules(name):
            request, _, order = member.partition(b"\n")
            _, decoded = decode(b"[0," + request + b"]")
            schedule = kept.schedule()
            rows.append((decoded, thread, order.decode(), schedule.describe(), datetime.fromtimestamp(next_due, UTC)))
        return pd.DataFrame(rows, columns=["request", "thread", "order", "every", "next_at"])

    # --- dead letters -------------------------------------------------------

    async def dead_letters(self, handler: HandlerRef, limit: int | None = None) -> list[DeadLetterRecord]:
        """Dead letters of ``handler``, oldest first per thread (at most ``limit``)."""
        name = self._name(handler)
        records: list[DeadLetterRecord] = []
        for threads in _chunks(await self.storage.dead_threads(name)):
            for raws in await self.storage.dead_records(name, threads):
                records += map(DeadLetterRecord.decode, raws)
                if limit is not None and len(records) >= limit:
                    return records[:limit]
        return records

    async def dead_letter_count(self, handler: HandlerRef) -> int:
        """How many dead letters ``handler`` has, from its counts (one round trip)."""
        name = self._name(handler)
        return (await self.storage.counts([name]))[name].dead

    async def requeue_dead_letters(self, handler: HandlerRef) -> int:
        """Put ``handler``'s dead letters back at the *tail* of their thread and order.

        They keep their original envelope (and enqueue time) but lose their
        place: messages registered since they failed are performed first. An
        order that waits empty gets back the rank it had when they failed.
        Each thread's letters move at once (a crash leaves none both requeued
        and dead). Returns how many were requeued.
        """
        return await self._take_dead(self._name(handler), requeue=True)

    async def purge_dead_letters(self, handler: HandlerRef) -> int:
        """Delete ``handler``'s dead letters; returns how many."""
        return await self._take_dead(self._name(handler), requeue=False)

    async def _take_dead(self, name: str, requeue: bool) -> int:
        spec = self._known(name)
        total = 0
        for threads in _chunks(await self.storage.dead_threads(name)):
            taken = await self.storage.dead_records(name, threads)
            takes = [
                DeadTake(thread, raws, _requeued(raws, spec) if requeue else ())
                for thread, raws in zip(threads, taken, strict=True)
            ]
            total += await self.storage.take_dead(name, takes)
        return total


def _requeued(raws: Sequence[bytes], spec: HandlerSpec | None) -> list[tuple[str, float, list[bytes]]]:
    """Per order, its rank and the payloads of dead-letter records to put back, in order."""
    tubes: dict[str, tuple[float, list[bytes]]] = {}
    for record in map(DeadLetterRecord.decode, raws):
        if record.order not in tubes:
            tubes[record.order] = (_rank(record, spec), [])
        tubes[record.order][1].append(record.payload.removesuffix(b" "))  # back without an if_not_exists mark
    return [(order, rank, payloads) for order, (rank, payloads) in tubes.items()]


def _rank(record: DeadLetterRecord, spec: HandlerSpec | None) -> float:
    """The rank a dead letter's order goes back with (unless the order is queued already): as
    recorded, else as the handler's class declares, else from the order alone."""
    if record.rank is not None:
        return record.rank
    try:
        return order_rank(record.order, spec.orders if spec is not None else None)
    except ValueError:  # an order the class no longer declares
        return order_rank(record.order, None)


def _when(enqueued_at: float) -> datetime | None:
    """An enqueued_at as an aware UTC datetime (None if it is not a time)."""
    try:
        return datetime.fromtimestamp(enqueued_at, UTC)
    except (ValueError, OverflowError, OSError):
        return None


def _chunks(threads: list[str], size: int = 1000) -> list[list[str]]:
    """Threads in pipelines of ``size``: a fixed number of round trips per thousand threads."""
    return [threads[start : start + size] for start in range(0, len(threads), size)]


def _duration(value: float | timedelta | None) -> float | None:
    """A pause's ``for_`` in seconds (None: until resumed)."""
    if value is None:
        return None
    seconds = value.total_seconds() if isinstance(value, timedelta) else value
    if isinstance(seconds, bool) or not isinstance(seconds, int | float) or not 0 < seconds < math.inf:
        raise ValueError(f"pause(for_=...) takes a number of seconds > 0 or a timedelta, got {value!r}")
    return float(seconds)
