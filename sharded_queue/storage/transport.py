"""The one place that borrows redis-py's internals, and the public path used instead when they move.

redis-py's asyncio client spends tens of µs of CPU per command in its retry
wrapper, hooks and pool bookkeeping, packs commands in Python, and wraps every
write in ``asyncio.wait_for`` (a Task per command on Python 3.11). On the
queue's hot path (one script call per batch) that is a third of a batch's CPU.
So on a single Redis the storage sends its scripts over `Lane`\\s, connections
of its own, packed by hiredis. That needs these redis-py names, none of them
documented API:

- ``ConnectionPool.make_connection`` and a connection's ``send_packed_command``,
  ``read_response``, ``pack_command``, ``pack_commands``, ``is_connected``,
  ``disconnect(nowait=...)``, and its ``_writer`` (the asyncio stream);
- the pool's ``connection_class``, replaced by a subclass that packs with hiredis;
- ``RedisCluster._initialize`` (`InitializedCluster`).

Registrations that wait for replicas (``QUEUE_REGISTER_REPLICAS``) on a Redis
Cluster send their scripts and ``WAIT`` over `NodeLanes`, connections of their
own to each primary, opened with a ``ClusterNode``'s ``connection_class`` and
``connection_kwargs`` (redis-py's cluster pipeline sends a command that failed
again on another connection than its ``WAIT``). And `sentinel_primary` reads the
address a Sentinel pool last resolved (``SentinelConnectionPool.master_address``),
to tell a failover from an outage in the logs; without it the logs only say outage.

`missing` lists what the installed redis-py lacks of them, and `fast_path` is
true only on a version in `TESTED` with nothing missing. Otherwise the storage
takes redis-py's public path (its client, its scripts, its packing): slower,
the same behaviour. ``tests/test_transport.py`` fails, naming what is gone, when
an installed redis-py lacks a name, so an upgrade is noticed before a user does.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import logging
from typing import Any

import redis
import redis.exceptions as redis_errors
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.connection import AbstractConnection, ConnectionPool
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

try:
    import hiredis
except ImportError:  # pragma: no cover - hiredis comes with redis[hiredis]
    hiredis = None  # type: ignore[assignment]

logger = logging.getLogger("sharded_queue")

TESTED = ((7, 0), (9, 0))
"""redis-py versions ``[low, high)`` the fast path was tested on (pyproject.toml's bound is the same)."""


def missing() -> list[str]:
    """What the fast path borrows that the installed redis-py lacks (empty when all is there)."""
    gone = [
        f"{owner.__name__}.{name}"
        for owner, names in (
            (ConnectionPool, ("make_connection",)),
            (
                AbstractConnection,
                ("send_packed_command", "read_response", "pack_command", "pack_commands", "is_connected", "disconnect"),
            ),
            (RedisCluster, ("initialize", "execute_command")),
        )
        for name in names
        if not hasattr(owner, name)
    ]
    if "nowait" not in inspect.signature(AbstractConnection.disconnect).parameters:
        gone.append("AbstractConnection.disconnect(nowait=...)")
    if "check_health" not in inspect.signature(AbstractConnection.send_packed_command).parameters:
        gone.append("AbstractConnection.send_packed_command(check_health=...)")
    source = inspect.getsource(AbstractConnection)
    if "self._writer" not in source:
        gone.append("AbstractConnection._writer")
    if "self._initialize" not in inspect.getsource(RedisCluster):
        gone.append("RedisCluster._initialize")
    if hiredis is None:
        gone.append("hiredis (install redis[hiredis])")
    return gone


def version() -> tuple[int, int]:
    """The installed redis-py's (major, minor)."""
    major, minor, *_ = (*redis.__version__.split("."), "0")
    return int(major), int("".join(c for c in minor if c.isdigit()) or 0)


def fast_path_for(installed: tuple[int, int], gone: list[str]) -> bool:
    """Whether to borrow redis-py's internals: a tested version, with nothing gone."""
    low, high = TESTED
    return low <= installed < high and not gone


@functools.cache
def fast_path() -> bool:
    """Whether the storage sends scripts over lanes packed by hiredis (see the module's docstring).

    Decided once per process, at the first connection; a warning says when not.
    """
    gone = missing()
    if fast_path_for(version(), gone):
        return True
    low, high = TESTED
    logger.warning(
        "redis-py %s is outside the versions sharded-queue's transport was tested with (%s to below %s)%s: "
        "using redis-py's public client path, which is correct but slower",
        redis.__version__,
        ".".join(map(str, low)),
        ".".join(map(str, high)),
        f" or lacks {', '.join(gone)}" if gone else "",
    )
    return False


class InitializedCluster(RedisCluster):
    """redis-py's cluster client, initialized (under its own lock) before any command's routing.

    redis-py 8.1 routes a command before it initializes the client, so many first
    commands at once (a SyncQueue used from 16 threads, say) made some fail
    mid-connect ("'NoneType' object has no attribute 'writelines'"). Only this
    ordering changes. Without the private flag it reads (another version), it
    behaves as redis-py's own client.
    """

    async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        if getattr(self, "_initialize", False):
            await self.initialize()
        return await super().execute_command(*args, **kwargs)


def hiredis_packing(connection_class: type[Any]) -> type[Any]:
    """``connection_class`` packing commands with hiredis (C): the same bytes on the wire.

    redis-py's sync connections pack with hiredis; its asyncio ones always pack
    in Python, copying every argument into a growing buffer. Arguments hiredis
    refuses are packed by redis-py's own ``pack_command``.
    """
    if hiredis is None:
        return connection_class
    packing = _PACKING.get(connection_class)
    if packing is None:
        packing = type(f"Hiredis{connection_class.__name__}", (_HiredisPacking, connection_class), {})
        _PACKING[connection_class] = packing
    return packing


_PACKING: dict[type[Any], type[Any]] = {}


class _HiredisPacking:
    def pack_command(self, *args: Any) -> list[bytes]:
        packed = _pack(args)
        if packed is None:
            return super().pack_command(*args)  # type: ignore[misc,no-any-return]
        return [packed]

    def pack_commands(self, commands: Any) -> list[bytes]:
        parts = []
        for command in commands:
            packed = _pack(tuple(command))
            parts.append(b"".join(super().pack_command(*command)) if packed is None else packed)  # type: ignore[misc]
        return [b"".join(parts)]

    async def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        """redis-py's, without the ``asyncio.wait_for`` it puts around every write.

        On Python 3.11 that makes a Task per command (a tenth of a batch's CPU) and
        may swallow a cancellation. The socket timeout still bounds a write that
        has to wait for the socket (a full send buffer).
        """
        writer = getattr(self, "_writer", None)
        if writer is None or not self.is_connected or (check_health and self.health_check_interval):  # type: ignore[attr-defined]
            await super().send_packed_command(command, check_health)  # type: ignore[misc]
            return
        if isinstance(command, str):
            command = command.encode()
        if isinstance(command, bytes):
            command = [command]
        try:
            writer.writelines(command)
            if writer.transport.get_write_buffer_size():
                async with asyncio.timeout(self.socket_timeout):  # type: ignore[attr-defined]
                    await writer.drain()
        except TimeoutError:
            await self.disconnect(nowait=True)  # type: ignore[attr-defined]
            raise redis_errors.TimeoutError("Timeout writing to socket") from None
        except OSError as exc:
            await self.disconnect(nowait=True)  # type: ignore[attr-defined]
            raise redis_errors.ConnectionError(f"Error while writing to socket: {exc}") from exc
        except BaseException:
            await self.disconnect(nowait=True)  # type: ignore[attr-defined]
            raise


def _pack(args: tuple[Any, ...]) -> bytes | None:
    """One command packed by hiredis, or None when hiredis refuses an argument's type."""
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
        return None


class Lane:
    """A connection of the storage's own to a single Redis, for one script call at a time.

    Each command through redis-py's client costs tens of µs of CPU in its retry
    wrapper, observability hooks and pool bookkeeping: a third of a batch's
    cost, a quarter of a registration's. `scripts.Scripts` keeps a free list of
    lanes, one per call in flight, and sends the scripts over them with none of that.
    A lane connects (and reconnects after a failure) on first use, with the
    client's settings. Failures raise redis-py's errors, translated by the
    caller; the worker retries its calls, which are idempotent. Used only
    on the `fast_path`.
    """

    def __init__(self, pool: Any) -> None:
        self._pool = pool
        self._connection: Any = None

    async def send(self, *commands: tuple[Any, ...]) -> list[Any]:
        """Send ``commands`` in one write and return their replies (the first error reply raises)."""
        connection = self._connection
        if connection is None:
            connection = self._connection = self._pool.make_connection()
        replies: list[Any] = []
        try:
            if not connection.is_connected:  # connect() finds a Sentinel-managed connection's primary; an
                await connection.connect()  # implicit connect in send_packed_command would not
            await connection.send_packed_command(connection.pack_commands(commands), False)
            for _ in commands:
                try:
                    replies.append(await connection.read_response())
                except redis_errors.ResponseError as error:  # the connection is fine: read on
                    replies.append(error)
        except BaseException:  # a reply may be left unread: this connection is done
            self._connection = None
            await connection.disconnect(nowait=True)
            raise
        for reply in replies:
            if isinstance(reply, redis_errors.ResponseError):
                raise reply
        return replies

    async def close(self) -> None:
        """Close the connection, if open."""
        connection, self._connection = self._connection, None
        if connection is not None:
            await connection.disconnect()


class _NodeConnections:
    """What a `Lane` needs of a pool, for a cluster node: a new connection to it, that never retries by itself."""

    def __init__(self, node: Any) -> None:
        self._node = node

    def make_connection(self) -> Any:
        return self._node.connection_class(**{**self._node.connection_kwargs, "retry": Retry(NoBackoff(), 0)})


class NodeLanes:
    """Lanes to the primaries of a Redis Cluster, by node: several commands over one connection of a node.

    A ``WAIT`` counts the replicas that have the writes of the connection it is
    sent on, so a registration that waits for replicas sends each node's script
    calls and its ``WAIT`` in one write over one of these. Failures raise
    redis-py's errors (a ``MOVED`` reply as ``MovedError``, a dead node as
    ``ConnectionError``); the caller lets redis-py's client follow the new
    topology and sends again.
    """

    def __init__(self, cluster: RedisCluster) -> None:
        self._cluster = cluster
        self._free: dict[str, list[Lane]] = {}

    def node(self, key: str) -> Any:
        """The primary serving ``key``'s slot, in the client's current slot map."""
        return self._cluster.get_node_from_key(key)

    async def send(self, node: Any, commands: list[tuple[Any, ...]]) -> list[Any]:
        """Send ``commands`` to ``node`` in one write; their replies (the first error reply raises)."""
        free = self._free.setdefault(node.name, [])
        lane = free.pop() if free else Lane(_NodeConnections(node))
        try:
            return await lane.send(*commands)
        finally:
            free.append(lane)  # reusable after a failure: it reconnects

    async def close(self) -> None:
        """Close every lane."""
        lanes = [lane for free in self._free.values() for lane in free]
        self._free.clear()
        for lane in lanes:
            with contextlib.suppress(Exception):
                await lane.close()


def sentinel_primary(client: Any) -> str | None:
    """``host:port`` of the primary a Sentinel-managed client last resolved, else None."""
    address = getattr(getattr(client, "connection_pool", None), "master_address", None)
    if not (isinstance(address, tuple) and len(address) == 2):
        return None
    host, port = address
    return f"{host.decode() if isinstance(host, bytes) else host}:{port}"
