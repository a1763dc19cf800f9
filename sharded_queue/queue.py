"""`Queue`: where requests are registered, routed and stored."""

from __future__ import annotations

import time
import warnings
from datetime import datetime, timedelta
from typing import Any

import msgspec

from .admin import QueueAdmin
from .core import Cron, RequestRoute, Schedule, Tube, check_routes, due_when, group_by_tube, order_rank
from .errors import EmbeddedStorageWarning, StorageError, ThreadFull
from .handler import Handler, HandlerSpec
from .settings import Settings
from .settings import settings as default_settings
from .storage import Storage, StoredSchedule, TubeWrite
from .telemetry import RegisterSpan, Telemetry, resolve_telemetry


class Queue(QueueAdmin):
    """Registers requests into their handler's tubes; reads and administers them (`QueueAdmin`).

    Args:
        storage: A storage URL (``redis://``, ``rediss://``, ``redis+cluster://``, ``redis+sentinel://``),
            a `Storage`, or None for ``settings.storage_url`` or, when that is
            unset too, the embedded in-process fakeredis.
        settings: Settings to use instead of the module-level ``settings``.
        telemetry: A span per `register` call, whose W3C traceparent its envelopes
            carry (`sharded_queue.otel`, the ``otel`` extra): True, False, a
            `sharded_queue.otel.OpenTelemetry`, or None for ``settings.otel``.

    Raises:
        ImportError: telemetry is on and the ``otel`` extra is not installed.
    """

    def __init__(
        self,
        storage: str | Storage | None = None,
        *,
        settings: Settings | None = None,
        telemetry: bool | Telemetry | None = None,
    ) -> None:
        self.settings = settings or default_settings
        self.telemetry = resolve_telemetry(telemetry, self.settings)
        self.storage = storage if isinstance(storage, Storage) else Storage.from_settings(self.settings, storage)
        self._specs: dict[type[Handler], HandlerSpec] = {}
        self._by_name: dict[str, HandlerSpec] = {}
        self._registered: dict[str, type[Handler]] = {}
        self._closed = False
        self._warned = False  # the embedded default's warning, once per Queue

    @property
    def handlers(self) -> list[type[Handler]]:
        """Handler classes registered through this object, in first-use order."""
        return list(self._registered.values())

    def spec(self, handler: type[Handler]) -> HandlerSpec:
        """The (cached) spec of ``handler``, checking its name is not taken by another class.

        Raises:
            RuntimeError: the Queue is closed (every method that takes a handler asks here first).
        """
        self._check_open()
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
        recurrent: float | timedelta | str | Cron | None = None,
    ) -> int:
        """Route, serialize and append ``requests`` to ``handler``'s tubes; returns how many were stored.

        Everything is validated and encoded first, then written in one round trip
        (chunks of ``settings.register_chunk``, in order, each all or nothing); on an
        error nothing of the chunk is written. Once this returns, the requests are
        stored (on the primary, which a failover can lose, unless
        ``settings.register_replicas`` made it wait for that many replicas: ``WAIT``)
        and will be performed at least once.

        Args:
            handler: The handler class.
            requests: Its requests, in order.
            defer: Join the tube's tail after these seconds (or `timedelta`), or at
                this aware `datetime`, on the storage server's clock (at most ten years).
            if_not_exists: Skip a request equal to one still waiting (queued or
                deferred) in the same tube, until that one is acked.
            recurrent: Register each request on every tick: every so many seconds
                (or `timedelta`, at least ``coordinator_delay``), or at each match of a
                cron string (UTC) or a `Cron`. Registering it again replaces its
                schedule; missed ticks collapse into one. Not with ``defer``.

        Raises:
            RouteError: ``route()`` did not return one `RequestRoute` per request.
            ValueError: an undeclared order, a bad ``defer`` or ``recurrent``, both of
                them, or (off the embedded default) a ``__main__`` handler without ``name``.
            TypeError: ``defer``, ``recurrent`` or ``if_not_exists`` of the wrong type.
            SerializationError: a request a worker could not decode.
            ThreadFull: a thread would hold more than ``handler.max_pending`` requests
                (nothing of the chunk was written, on one server; its ``stored`` says
                how many requests were).
            StorageFull: Redis is full (nothing of the chunk was written).
            StorageError: Redis failed, or fewer replicas than asked acknowledged (saying how
                many); its ``stored`` says how many requests earlier chunks stored.
        """
        spec = self.spec(handler)
        when, schedule = _timing(defer, if_not_exists, recurrent, self.settings.coordinator_delay)
        embedded = self.storage.embedded_default
        if not embedded:
            _check_importable(spec)
        if not requests:
            return 0
        telemetry = self.telemetry
        if telemetry is None:
            stored = await self._store(spec, requests, if_not_exists, when, schedule, None)
        else:
            with telemetry.register(spec.name, len(requests)) as span:
                stored = await self._store(spec, requests, if_not_exists, when, schedule, span)
                span.stored(stored)
        if embedded and not self._warned:
            self._warned = True
            _warn_embedded(handler)
        return stored

    async def _store(
        self,
        spec: HandlerSpec,
        requests: tuple[Any, ...],
        unique: bool,
        when: str,
        schedule: Schedule | None,
        span: RegisterSpan | None,
    ) -> int:
        """Route, encode and push a registration (`register`), in ``span`` when telemetry is on."""
        handler = spec.handler
        routes = check_routes(requests, await handler.route(*requests), f"{handler.__qualname__}.route()")
        traceparent = None
        if span is not None:
            span.routed({route.route.thread for route in routes})
            traceparent = span.traceparent
        if schedule is not None:
            when = f"@{schedule.first_after(await self.storage.server_time())!r}"
        chunks = self._chunks(spec, routes, unique, when, schedule, traceparent)
        if spec.name not in self._registered:  # once per handler and Queue: names for stats, never imported
            await self.storage.add_handlers([spec.name])
        stored = await self._push(spec, chunks, len(requests))
        self._registered.setdefault(spec.name, handler)
        return stored

    def _chunks(
        self,
        spec: HandlerSpec,
        routes: list[RequestRoute],
        unique: bool,
        when: str,
        schedule: Schedule | None,
        traceparent: str | None,
    ) -> list[list[TubeWrite]]:
        """Every write of a registration, encoded, in chunks of ``register_chunk`` requests."""
        now = time.time()  # the client's clock: for traces only, never compared by the storage
        size = self.settings.register_chunk
        return [
            [
                self._write(spec, tube, spec.codec.encode(batch, now, traceparent), unique, when, schedule)
                for tube, batch in group_by_tube(spec.name, routes[start : start + size]).items()
            ]
            for start in range(0, len(routes), size)
        ]

    async def _push(self, spec: HandlerSpec, chunks: list[list[TubeWrite]], total: int) -> int:
        """Push the chunks in order; a failure says how many requests earlier chunks stored."""
        stored = 0
        replicas, timeout = self.settings.register_replicas, self.settings.storage_timeout
        cap = spec.handler.max_pending
        for writes in chunks:
            try:
                stored += await self.storage.push(
                    spec.name, writes, replicas=replicas, timeout=timeout, max_pending=cap
                )
            except (StorageError, ThreadFull) as exc:
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
        kept = StoredSchedule(schedule.every, schedule.cron, repr(rank), unique, schedule.tz)
        return TubeWrite(tube, rank, envelopes, unique, when, msgspec.json.encode(kept))

    async def unschedule(self, handler: type[Handler], *requests: Any) -> int:
        """Stop recurring requests and drop deferred ones, routed like `register` routes them.

        A deferred request goes when its encoded bytes and order equal those of
        one of ``requests`` (all such, if it was deferred more than once). Takes
        the class, not a stored name: the requests are routed by its ``route()``.

        Returns:
            How many were removed: schedules stopped plus deferred requests dropped.
        """
        spec = self.spec(handler)
        if not requests:
            return 0
        routes = check_routes(requests, await handler.route(*requests), f"{handler.__qualname__}.route()")
        members: dict[str, list[bytes]] = {}
        for tube, batch in group_by_tube(spec.name, routes).items():
            for envelope in spec.codec.encode(batch, 0.0).split(b"\n"):
                request = envelope[envelope.index(b",") + 1 : -1]  # as push.lua cuts it
                members.setdefault(tube.thread, []).append(request + b"\n" + tube.order.encode())
        schedules, deferred = await self.storage.unschedule(spec.name, members)
        return schedules + deferred

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("this Queue is closed")

    async def close(self) -> None:
        """Close the storage connections; the Queue refuses any further call.

        On the embedded default, warns (`EmbeddedStorageWarning`) when requests
        registered through this Queue still wait: they are lost with the process.
        """
        if self._closed:
            return
        self._closed = True
        if self.storage.embedded_default and self._registered:
            waiting = {name: await self.storage.pending(name) for name in self._registered}
            left = {name: count for name, count in waiting.items() if count}
            if left:
                warnings.warn(
                    "closing a Queue on the embedded in-process storage while requests wait in it ("
                    + ", ".join(f"{count} of {name}" for name, count in left.items())
                    + "): they are lost when this process exits",
                    EmbeddedStorageWarning,
                    stacklevel=2,
                )
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


def _timing(
    defer: float | timedelta | datetime | None,
    if_not_exists: object,
    recurrent: float | timedelta | str | Cron | None,
    shortest: float,
) -> tuple[str, Schedule | None]:
    """`Queue.register`'s ``defer`` (`core.due_when`) and ``recurrent`` (`Schedule`), checked."""
    when = due_when(defer)
    schedule = None if recurrent is None else Schedule.of(recurrent, shortest)
    if schedule is not None and defer is not None:
        raise ValueError("recurrent= and defer= together: a recurring request starts at its first tick")
    if not isinstance(if_not_exists, bool):
        raise TypeError(f"if_not_exists= takes a bool, got {if_not_exists!r}")
    return when, schedule


def _check_importable(spec: HandlerSpec) -> None:
    """Refuse a handler stored under a name no worker process can import (defined in ``__main__``).

    Raises:
        ValueError: the handler lives in ``__main__`` and sets no ``name``.
    """
    if spec.name.startswith("__main__:"):
        raise ValueError(
            f"{spec.handler.__qualname__} is defined in the script being run (__main__), so it would be stored as "
            f'{spec.name!r}, a name no worker process can import: set `name = "..."` on the class, or '
            "define it in a module that workers import"
        )


def _warn_embedded(handler: type[Handler]) -> None:
    warnings.warn(
        f"{handler.__qualname__} requests went to the embedded in-process storage (no URL and no "
        "QUEUE_STORAGE_URL): only a Worker in this process can perform them, and they are lost when it "
        "exits. Give Queue a redis:// URL or set QUEUE_STORAGE_URL to share them.",
        EmbeddedStorageWarning,
        stacklevel=3,
    )
