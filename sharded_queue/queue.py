"""`Queue`: where requests are registered, routed and stored."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import msgspec

from .core import Tube, check_routes, group_by_tube, order_rank
from .errors import StorageError
from .handler import Handler, declared_orders, handler_name, request_type
from .serializer import Codec
from .settings import Settings
from .settings import settings as default_settings
from .storage import Storage, TubeWrite


@dataclass(frozen=True)
class DeadLetterRecord:
    """A message that was not performed: its payload, the error and where it came from.

    Attributes:
        handler, thread, order: Where the message was.
        payload: The stored envelope, byte for byte.
        error_type, error, traceback: What went wrong (a `DecodeError` for a
            payload that could not be decoded).
        attempts: How many times it was performed (0 if it never decoded).
        failed_at: When it was dead-lettered (seconds since the epoch).
    """

    handler: str
    thread: str
    order: str
    payload: bytes
    error_type: str
    error: str
    traceback: str
    attempts: int
    failed_at: float

    def encode(self) -> bytes:
        """The record as stored: JSON, the payload as text (or hex if not UTF-8)."""
        data: dict[str, Any] = {name: getattr(self, name) for name in self.__dataclass_fields__ if name != "payload"}
        try:
            data["payload"] = self.payload.decode()
        except UnicodeDecodeError:
            data["payload_hex"] = self.payload.hex()
        return msgspec.json.encode(data)

    @classmethod
    def decode(cls, raw: bytes) -> DeadLetterRecord:
        """A record from its stored JSON."""
        data = msgspec.json.decode(raw)
        payload = data["payload"].encode() if "payload" in data else bytes.fromhex(data["payload_hex"])
        return cls(
            handler=data["handler"],
            thread=data["thread"],
            order=data["order"],
            payload=payload,
            error_type=data["error_type"],
            error=data["error"],
            traceback=data["traceback"],
            attempts=data["attempts"],
            failed_at=data["failed_at"],
        )


@dataclass(frozen=True)
class HandlerSpec:
    """What the queue knows about a handler class, computed once."""

    name: str
    handler: type[Handler]
    codec: Codec
    orders: tuple[str, ...] | None

    @classmethod
    def of(cls, handler: type[Handler]) -> HandlerSpec:
        """Inspect ``handler``: its stored name, request codec, declared orders and overrides.

        Raises:
            ValueError: ``batch_size`` or ``retry_attempts`` is set but not an int >= 1.
        """
        for attribute in ("batch_size", "retry_attempts"):
            value = getattr(handler, attribute)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"{handler.__qualname__}.{attribute} must be an int >= 1 or None, got {value!r}")
        return cls(handler_name(handler), handler, Codec(request_type(handler)), declared_orders(handler))


class Queue:
    """Registers requests into their handler's tubes.

    Args:
        storage: A storage URL (``redis://``, ``rediss://``, ``redis+cluster://``),
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

    async def register(self, handler: type[Handler], *requests: Any) -> int:
        """Route, serialize and append ``requests`` to ``handler``'s tubes.

        Everything is validated and encoded first, then written in one round
        trip; on any error nothing is written. Once this returns the requests
        are stored and will be performed at least once. A call of more than
        ``settings.register_chunk`` requests is written in chunks of that size,
        in order, each all or nothing, so that it never blocks Redis for long.

        Returns:
            How many requests were stored.

        Raises:
            RouteError: ``route()`` did not return one `RequestRoute` per request
                (`RouteTypeError`, also a TypeError, for a wrong item type).
            ValueError: an order not in ``handler.orders``.
            SerializationError: a request is not of the handler's request type.
            StorageFull: Redis is full (nothing of the chunk was written).
            StorageError: Redis failed or did not answer in time; its ``stored``
                says how many requests earlier chunks stored.
        """
        spec = self.spec(handler)
        if not requests:
            return 0
        routes = check_routes(requests, await handler.route(*requests), f"{handler.__qualname__}.route()")
        now = time.time()  # the client's clock: for traces only, never compared by the storage
        size = self.settings.register_chunk
        chunks = [
            [
                TubeWrite(tube, order_rank(tube.order, spec.orders), spec.codec.encode(batch, now))
                for tube, batch in group_by_tube(spec.name, routes[start : start + size]).items()
            ]
            for start in range(0, len(routes), size)
        ]
        stored = 0
        for writes in chunks:
            try:
                stored += await self.storage.push(spec.name, writes)
            except StorageError as exc:
                if stored:
                    exc.stored = stored
                    exc.add_note(f"the first {stored} of {len(requests)} requests were stored")
                raise
        self._registered.setdefault(spec.name, handler)
        return stored

    async def pending(self, handler: type[Handler]) -> int:
        """Messages of ``handler`` waiting in storage (inspection; walks the handler's index)."""
        return await self.storage.pending(self.spec(handler).name)

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
                        tubes.setdefault(Tube(spec.name, thread, record.order), []).append(record.payload)
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
        return f"Queue(prefix={self.storage.keys.prefix!r}, handlers={sorted(self._registered)!r})"


def _chunks(threads: list[str], size: int = 1000) -> list[list[str]]:
    """Threads in pipelines of ``size``: a fixed number of round trips per thousand threads."""
    return [threads[start : start + size] for start in range(0, len(threads), size)]
