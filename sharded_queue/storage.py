"""Redis storage: every key, every Lua script and every round trip of the queue.

One implementation speaks the Redis protocol through redis-py's asyncio client:
embedded fakeredis (no URL), a Redis/Valkey server (``redis://``, ``rediss://``)
or a Redis Cluster (``redis+cluster://``, ``rediss+cluster://``). The client is
held, not subclassed; the queue uses only the methods of `Storage`.

Keys (``P`` is ``settings.key_prefix``; ``{H/T}`` is the hash tag of thread T of
handler H, so a thread's keys share one cluster slot and its scripts stay
single-slot)::

    P:{H/T}:o:<order>   list    a tube: envelopes, FIFO (RPUSH at the tail, trimmed at the head)
    P:{H/T}:orders      zset    non-empty orders of the thread, scored by precedence
    P:{H/T}:lease       string  the lease token of the loop bound to the thread (PX ttl)
    P:{H/T}:o:<order>:reg:<stamp>  string  marks one registration's append (PX 60 s): retries append once
    P:{H/T}:acked       string  token:seq of the last ack applied (PX ttl), so retries never re-trim
    P:{H/T}:dead        list    dead letters of the thread (JSON records)
    P:{H}:threads       zset    index of non-empty threads, scored by when they become
                                visible to the coordinator (now, or lease expiry while leased)
    P:{H}:dead          set     threads of H that have dead letters
    P:wake              channel a message per registration naming its threads, to wake loops

Invariants: an order is in ``orders`` iff its tube is non-empty (scripts keep
it so); a non-empty thread is always in the index, because registration adds it
*after* appending, and removal from the index is remove-then-recheck-then-re-add.
"""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any

import msgspec
import redis.asyncio as aioredis
import redis.exceptions as redis_errors
from redis.asyncio.cluster import RedisCluster

from .core import ThreadRef, Tube
from .errors import StorageError, StorageTimeout
from .settings import Settings, redact_url

STAMP_TTL_MS = 60_000  # how long a retried registration is recognised
CLUSTER_SCHEMES = {"redis+cluster": "redis", "rediss+cluster": "rediss"}


@dataclass(frozen=True, slots=True)
class TubeWrite:
    """Envelopes to append to one tube (newline-joined, see `Codec.encode`), with the order's rank."""

    tube: Tube
    rank: float
    envelopes: bytes


class Keys:
    """Every Redis key name of the queue, under one prefix."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.wake = f"{prefix}:wake"

    def thread(self, ref: ThreadRef) -> str:
        """Common hash-tagged stem of a thread's keys."""
        return f"{self.prefix}:{{{ref.handler}/{ref.thread}}}"

    def tube_prefix(self, ref: ThreadRef) -> str:
        """Tube key of order O is this plus O."""
        return f"{self.thread(ref)}:o:"

    def tube(self, tube: Tube) -> str:
        """The list holding a tube's envelopes."""
        return f"{self.tube_prefix(tube.thread_ref)}{tube.order}"

    def orders(self, ref: ThreadRef) -> str:
        """Zset of a thread's non-empty orders."""
        return f"{self.thread(ref)}:orders"

    def lease(self, ref: ThreadRef) -> str:
        """A thread's lease."""
        return f"{self.thread(ref)}:lease"

    def stamp(self, tube: Tube, stamp: str) -> str:
        """Marker of one registration's append to a tube (makes a retried append a no-op)."""
        return f"{self.tube(tube)}:reg:{stamp}"

    def acked(self, ref: ThreadRef) -> str:
        """Stamp of the last ack applied under a lease (makes acks idempotent)."""
        return f"{self.thread(ref)}:acked"

    def dead(self, ref: ThreadRef) -> str:
        """A thread's dead letters."""
        return f"{self.thread(ref)}:dead"

    def index(self, handler: str) -> str:
        """Zset of a handler's non-empty threads."""
        return f"{self.prefix}:{{{handler}}}:threads"

    def dead_index(self, handler: str) -> str:
        """Set of a handler's threads that hold dead letters."""
        return f"{self.prefix}:{{{handler}}}:dead"


@contextlib.contextmanager
def translate_errors() -> Iterator[None]:
    """Turn redis-py's exceptions into the library's own, chained."""
    try:
        yield
    except redis_errors.TimeoutError as exc:
        raise StorageTimeout(f"storage did not answer in time: {exc}") from exc
    except (redis_errors.RedisError, OSError) as exc:
        raise StorageError(f"storage failed: {type(exc).__name__}: {exc}") from exc


def _script(name: str) -> str:
    return resources.files(__package__).joinpath("lua", f"{name}.lua").read_text()


_EMBEDDED_SERVER: Any = None


def connect(url: str | None, settings: Settings) -> Any:
    """A redis-py asyncio client for ``url``; ``None`` is the process-wide embedded fakeredis."""
    if url is None:
        import fakeredis

        global _EMBEDDED_SERVER
        if _EMBEDDED_SERVER is None:
            _EMBEDDED_SERVER = fakeredis.FakeServer()
        return fakeredis.FakeAsyncRedis(server=_EMBEDDED_SERVER)
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise ValueError(f"storage URL {redact_url(url)!r} has no scheme (redis://, rediss://, redis+cluster://)")
    timeout = settings.storage_timeout
    if scheme in CLUSTER_SCHEMES:
        return RedisCluster.from_url(
            f"{CLUSTER_SCHEMES[scheme]}://{rest}", socket_timeout=timeout, socket_connect_timeout=timeout
        )
    if scheme not in ("redis", "rediss", "unix"):
        raise ValueError(f"storage URL {redact_url(url)!r}: unknown scheme {scheme!r}")
    client = aioredis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)
    client.connection_pool.connection_class = hiredis_packing(client.connection_pool.connection_class)
    return client


def hiredis_packing(connection_class: type[Any]) -> type[Any]:
    """``connection_class`` packing commands with hiredis (C) when it is installed.

    redis-py's sync connections pack with hiredis; its asyncio ones always pack
    in Python, copying every argument into a growing buffer. Same bytes on the
    wire; arguments hiredis refuses go through redis-py's own rules.
    """
    if hiredis is None:
        return connection_class
    packing = _PACKING.get(connection_class)
    if packing is None:
        packing = type(f"Hiredis{connection_class.__name__}", (_HiredisPacking, connection_class), {})
        _PACKING[connection_class] = packing
    return packing


class _HiredisPacking:
    def pack_command(self, *args: Any) -> list[bytes]:
        return [_pack(args)]

    def pack_commands(self, commands: Any) -> list[bytes]:
        return [b"".join([_pack(tuple(command)) for command in commands])]


def _pack(args: tuple[Any, ...]) -> bytes:
    first = args[0]
    if isinstance(first, str):
        if " " in first:  # redis-py sends 'SCRIPT LOAD' and the like as one argument
            args = (*first.split(), *args[1:])
    elif b" " in first:
        args = (*first.split(), *args[1:])
    try:
        packed: bytes = hiredis.pack_command(args)
        return packed
    except TypeError:  # bytearray, memoryview, or a bad type: redis-py's rules (DataError)
        return b"".join(HiredisRespSerializer().pack(*args))


_PACKING: dict[type[Any], type[Any]] = {}
try:
    import hiredis
    from redis.connection import HiredisRespSerializer
except ImportError:  # pragma: no cover - hiredis comes with redis[hiredis]
    hiredis = None  # type: ignore[assignment]


class Storage:
    """The queue's view of Redis: a narrow set of operations over a held client.

    Args:
        client: A ``redis.asyncio.Redis``, ``RedisCluster`` or fakeredis client
            (bytes replies, i.e. without ``decode_responses``).
        prefix: Key prefix; two prefixes never see each other.
    """

    def __init__(self, client: Any, prefix: str = "sq") -> None:
        self.client = client
        self.keys = Keys(prefix)
        self.cluster = isinstance(client, RedisCluster)
        self._push = client.register_script(_script("push"))
        self._cycle = client.register_script(_script("cycle"))
        self._acquire = client.register_script(_script("acquire"))
        self._renew = client.register_script(_script("renew"))
        self._release = client.register_script(_script("release"))

    @classmethod
    def from_settings(cls, settings: Settings, url: str | None = None) -> Storage:
        """Storage at ``url`` (default ``settings.storage_url``, else embedded)."""
        return cls(connect(url or settings.storage_url, settings), settings.key_prefix)

    async def close(self) -> None:
        """Close the client's connections."""
        with contextlib.suppress(Exception):
            await self.client.aclose()

    # --- registration -------------------------------------------------------

    async def push(self, writes: Sequence[TubeWrite], now: float) -> None:
        """Append payloads to tubes, then index their threads, then wake idle loops.

        Each tube's envelopes travel as one argument of ``push.lua`` (joined
        by newlines, which compact JSON never contains). On one server this is
        a single MULTI/EXEC round trip: all or nothing.
        On a cluster the tube writes complete before the index is touched, which
        is what keeps a message from being stranded outside the index.
        """
        keys = self.keys
        threads = list(dict.fromkeys(write.tube.thread_ref for write in writes))
        wake = msgspec.json.encode([[ref.handler, ref.thread] for ref in threads])
        stamp = secrets.token_hex(8)
        with translate_errors():
            if self.cluster:  # one call per slot, all appended before anything is indexed
                for write in writes:
                    await self._push(**self._push_call(write, stamp))
                pipe = self.client.pipeline(transaction=False)
            else:
                pipe = self.client.pipeline(transaction=True)
                for write in writes:
                    await self._push(**self._push_call(write, stamp), client=pipe)  # queued, not sent
            for ref in threads:
                pipe.zadd(keys.index(ref.handler), {ref.thread: now}, nx=True)
            if not self.cluster:  # a cluster pipeline refuses PUBLISH
                pipe.publish(keys.wake, wake)
            await pipe.execute()
            if self.cluster:
                await self.client.publish(keys.wake, wake)

    def _push_call(self, write: TubeWrite, stamp: str) -> dict[str, Any]:
        tube = write.tube
        return {
            "keys": [self.keys.tube(tube), self.keys.orders(tube.thread_ref), self.keys.stamp(tube, stamp)],
            "args": [tube.order, write.rank, write.envelopes, STAMP_TTL_MS],
        }

    # --- coordinator --------------------------------------------------------

    async def candidates(self, handlers: Sequence[str], now: float, count: int) -> list[ThreadRef]:
        """Up to ``count`` visible threads per handler, longest-visible first."""
        with translate_errors():
            pipe = self.client.pipeline(transaction=False)
            for handler in handlers:
                pipe.zrangebyscore(self.keys.index(handler), "-inf", now, start=0, num=count, withscores=True)
            replies = await pipe.execute()
        found = [
            (score, ThreadRef(handler, member.decode()))
            for handler, reply in zip(handlers, replies, strict=True)
            for member, score in reply
        ]
        found.sort(key=lambda item: item[0])
        return [ref for _, ref in found]

    async def acquire(self, ref: ThreadRef, token: str, ttl: float, now: float) -> bool:
        """Take ``ref``'s lease; hide it in the index while held. False if empty or taken."""
        keys = self.keys
        with translate_errors():
            taken = await self._acquire(keys=[keys.lease(ref), keys.orders(ref)], args=[token, _ms(ttl)])
            if taken == 1:
                await self.client.zadd(keys.index(ref.handler), {ref.thread: now + ttl}, xx=True)
            elif taken == 0:
                await self._unindex(ref, now)
        return bool(taken == 1)

    async def _unindex(self, ref: ThreadRef, now: float) -> None:
        """Remove an empty thread from the index, safely against a racing register."""
        index = self.keys.index(ref.handler)
        await self.client.zrem(index, ref.thread)
        if await self.client.zcard(self.keys.orders(ref)):
            await self.client.zadd(index, {ref.thread: now}, nx=True)

    # --- bound thread -------------------------------------------------------

    async def cycle(
        self,
        ref: ThreadRef,
        token: str,
        ttl: float,
        ack_order: str,
        ack_count: int,
        ack_seq: int,
        dead: Sequence[bytes],
        limit: int,
    ) -> tuple[str, list[bytes]] | bool | None:
        """Ack the previous batch and fetch the next, fenced by the lease.

        Safe to retry with the same ``ack_seq`` after a lost reply: an ack is
        applied once per (token, seq).

        Returns:
            ``(order, payloads)``; ``None`` when the thread is empty (or nothing
            was asked); ``False`` when the lease is not ours and nothing changed.
        """
        keys = self.keys
        with translate_errors():
            if dead:
                await self.client.sadd(keys.dead_index(ref.handler), ref.thread)
            reply = await self._cycle(
                keys=[keys.lease(ref), keys.orders(ref), keys.dead(ref), keys.acked(ref)],
                args=[keys.tube_prefix(ref), token, _ms(ttl), ack_order, ack_count, ack_seq, limit, *dead],
            )
        if reply is None:
            return False
        if not reply:
            return None
        order, payloads = reply
        return order.decode(), payloads

    async def renew(self, ref: ThreadRef, token: str, ttl: float, now: float) -> bool:
        """Extend our lease and keep the thread hidden from the coordinator meanwhile."""
        with translate_errors():
            renewed = await self._renew(keys=[self.keys.lease(ref)], args=[token, _ms(ttl)])
            if renewed:
                await self.client.zadd(self.keys.index(ref.handler), {ref.thread: now + ttl}, xx=True)
        return bool(renewed)

    async def release(self, ref: ThreadRef, token: str, now: float) -> None:
        """Drop our lease (never another's) and make the thread visible or unindex it."""
        keys = self.keys
        with translate_errors():
            left = await self._release(keys=[keys.lease(ref), keys.orders(ref)], args=[token])
            if left:
                await self.client.zadd(keys.index(ref.handler), {ref.thread: now})
            else:
                await self._unindex(ref, now)

    # --- wake-ups -----------------------------------------------------------

    async def listen_wake(self, on_wake: Callable[[list[ThreadRef]], None], ready: Callable[[], None]) -> None:
        """Call ``on_wake`` with the threads of every registration anywhere, until cancelled."""
        if self.cluster:
            with translate_errors():
                await self.client.initialize()  # a cluster pub/sub needs the slot map first
        pubsub = self.client.pubsub()
        try:
            with translate_errors():
                await pubsub.subscribe(self.keys.wake)
            ready()
            while True:
                with translate_errors():
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                if message is not None:
                    on_wake(wake_threads(message["data"]))
        finally:
            with contextlib.suppress(Exception):
                await pubsub.aclose()

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
            pipe = self.client.pipeline(transaction=False)
            for ref in refs:
                pipe.zrange(self.keys.orders(ref), 0, -1)
            orders = await pipe.execute()
            pipe = self.client.pipeline(transaction=False)
            for ref, names in zip(refs, orders, strict=True):
                for order in names:
                    pipe.llen(self.keys.tube(Tube(handler, ref.thread, order.decode())))
            return sum(await pipe.execute())

    async def lease_token(self, ref: ThreadRef) -> str | None:
        """The token of the loop holding ``ref``, if any."""
        with translate_errors():
            token = await self.client.get(self.keys.lease(ref))
        return None if token is None else token.decode()

    async def dead_records(self, ref: ThreadRef) -> list[bytes]:
        """Raw dead-letter records of one thread, oldest first."""
        with translate_errors():
            return list(await self.client.lrange(self.keys.dead(ref), 0, -1))

    async def append_raw(self, tube: Tube, rank: float, payloads: Sequence[bytes], now: float) -> None:
        """Append payloads byte for byte (any bytes, newlines included) and index the thread."""
        ref = tube.thread_ref
        with translate_errors():
            pipe = self.client.pipeline(transaction=not self.cluster)
            pipe.rpush(self.keys.tube(tube), *payloads)
            pipe.zadd(self.keys.orders(ref), {tube.order: rank})
            await pipe.execute()
            await self.client.zadd(self.keys.index(ref.handler), {ref.thread: now}, nx=True)

    async def take_dead(self, ref: ThreadRef, count: int) -> None:
        """Drop the ``count`` oldest dead letters of a thread (after they were requeued or purged)."""
        with translate_errors():
            await self.client.ltrim(self.keys.dead(ref), count, -1)

    async def dead_threads(self, handler: str) -> list[str]:
        """Threads of ``handler`` that have held dead letters."""
        with translate_errors():
            return sorted(member.decode() for member in await self.client.smembers(self.keys.dead_index(handler)))


def wake_threads(data: bytes) -> list[ThreadRef]:
    """Threads named in a wake-up message; an unreadable message names none."""
    try:
        return [ThreadRef(str(handler), str(thread)) for handler, thread in msgspec.json.decode(data)]
    except (msgspec.DecodeError, TypeError, ValueError):
        return []


def _ms(seconds: float) -> int:
    return max(1, int(seconds * 1000))
