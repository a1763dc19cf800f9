"""The queue's Lua scripts: loaded from ``sharded_queue/lua/``, registered on a client, run by SHA.

Each script is its ``.lua`` file with the shared ``lib.lua`` inserted after its
flags line. `Scripts` registers them on one client and runs them: over a free
`transport.Lane` on a single Redis (the fast path), else through redis-py's
client, and several at once on a pipeline, loading them into a server that lacks
them. `translate_errors` turns redis-py's exceptions into the library's own, at
this boundary.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import weakref
from collections.abc import Awaitable, Callable, Iterator, Sequence
from importlib import resources
from typing import Any

import redis.exceptions as redis_errors
from redis.backoff import ExponentialWithJitterBackoff

from ..errors import StorageConfigError, StorageError, StorageFull, StorageTimeout
from .client import CLIENT_BACKOFF_CAP, CLIENT_RETRIES
from .transport import Lane, NodeLanes

SCRIPTS = (
    "push",
    "cycle",
    "acquire",
    "renew",
    "release",
    "index",
    "candidates",
    "due",
    "fire",
    "unschedule",
    "dead",
    "tally",
    "counts",
    "scan",
    "inspect",
    "bucket",
    "pause",
)
"""The scripts every `Scripts` registers (the worker registry's are registered on first use)."""

_LANE_BACKOFF = ExponentialWithJitterBackoff(base=0.01, cap=CLIENT_BACKOFF_CAP)

_NODE_FAILURES = (
    redis_errors.ConnectionError,
    redis_errors.TimeoutError,
    redis_errors.AskError,  # MOVED too
    redis_errors.TryAgainError,
    redis_errors.ClusterDownError,
)
"""What `Scripts.on_nodes` sends again once redis-py has followed the cluster's new topology."""

_LANES: weakref.WeakKeyDictionary[Any, list[Lane]] = weakref.WeakKeyDictionary()
"""Free lanes by client: storages sharing a client share them."""


@contextlib.contextmanager
def translate_errors() -> Iterator[None]:
    """Turn redis-py's exceptions into the library's own, chained."""
    try:
        yield
    except redis_errors.OutOfMemoryError as exc:
        raise StorageFull(f"storage is full (maxmemory reached): {exc}") from exc
    except redis_errors.TimeoutError as exc:
        raise StorageTimeout(f"storage did not answer in time: {exc}") from exc
    except (redis_errors.RedisError, OSError) as exc:
        if refused(exc):
            raise StorageConfigError(f"storage refused the configuration: {exc}") from exc
        raise StorageError(f"storage failed: {type(exc).__name__}: {exc}") from exc


def refused(exc: BaseException) -> bool:
    """Whether a redis-py error says the configuration is wrong (password, database, host),
    which no retry mends, rather than that the storage is down or slow."""
    if isinstance(exc, redis_errors.AuthenticationError | redis_errors.AuthorizationError):
        return True
    if isinstance(exc, redis_errors.ResponseError) and "DB index" in str(exc):
        return True
    return isinstance(exc, redis_errors.ConnectionError) and isinstance(exc.__cause__, socket.gaierror)


def source(name: str, flags: bool = True) -> str:
    """A script's source with the shared ``lib.lua`` inserted after its flags line.

    ``flags=False`` drops the ``#!lua flags=...`` line, for fakeredis, which
    does not parse it (and has no ``maxmemory`` for it to matter).
    """
    lua = resources.files("sharded_queue").joinpath("lua")
    body = lua.joinpath(f"{name}.lua").read_text()
    shebang = ""
    if body.startswith("#!"):
        first, _, body = body.partition("\n")
        shebang = f"{first}\n" if flags else ""
    return f"{shebang}{lua.joinpath('lib.lua').read_text()}{body}"


def is_fake(client: Any) -> bool:
    """Whether ``client`` is a fakeredis one (its Lua takes no flags line)."""
    return type(client).__module__.startswith("fakeredis")


def ms(seconds: float) -> int:
    """A duration as the scripts take it: whole milliseconds, at least one."""
    return max(1, int(seconds * 1000))


class Scripts:
    """The scripts of `SCRIPTS` registered on a client, and the ways to run them.

    Each script is an attribute of its name (``scripts.cycle``), to pass to
    `eval`. Every script of the queue may be run twice with the same effect
    (stamps, sequence numbers, tokens and due times make them idempotent), so
    a call is retried after a connection error or a timeout.

    Args:
        client: A redis-py asyncio client (plain, cluster or fakeredis).
        lanes: Send scripts over lanes (`transport.Lane`): only for a single
            Redis on the `transport.fast_path`.
    """

    def __init__(self, client: Any, lanes: bool) -> None:
        self.client = client
        self.fake = is_fake(client)
        flags = not self.fake
        self.all = {name: client.register_script(source(name, flags)) for name in SCRIPTS}
        self.push = self.all["push"]
        self.cycle = self.all["cycle"]
        self.acquire = self.all["acquire"]
        self.renew = self.all["renew"]
        self.release = self.all["release"]
        self.index = self.all["index"]
        self.candidates = self.all["candidates"]
        self.due = self.all["due"]
        self.fire = self.all["fire"]
        self.unschedule = self.all["unschedule"]
        self.dead = self.all["dead"]
        self.tally = self.all["tally"]
        self.counts = self.all["counts"]
        self.scan = self.all["scan"]
        self.inspect = self.all["inspect"]
        self.bucket = self.all["bucket"]
        self.pause = self.all["pause"]
        # Lanes: connections of their own, one per call in flight, taken from and given back
        # to a free list that storages sharing the client share (and `close` closes).
        self.lanes: list[Lane] | None = _LANES.setdefault(client, []) if lanes else None
        self._node_lanes: NodeLanes | None = None

    def node_lanes(self) -> NodeLanes:
        """Lanes to a cluster's primaries (`transport.NodeLanes`), made at the first use."""
        if self._node_lanes is None:
            self._node_lanes = NodeLanes(self.client)
        return self._node_lanes

    async def eval(self, script: Any, keys: Sequence[Any], args: Sequence[Any]) -> Any:
        """Run a script over a lane on a single Redis, else through the client."""
        if self.lanes is None:
            return await script(keys=keys, args=args)
        (reply,) = await self.on_lane([("EVALSHA", script.sha, len(keys), *keys, *args)])
        return reply

    async def eval_waiting(
        self, script: Any, keys: Sequence[Any], args: Sequence[Any], replicas: int, timeout: int
    ) -> tuple[Any, int]:
        """Run a script, then ``WAIT replicas timeout`` (ms) on the same connection, in one round trip.

        Returns the script's reply and how many replicas acknowledged its writes
        (none on fakeredis, which has no replicas). A retried script that finds
        its work done writes again (push.lua's stamp), so the ``WAIT`` on the
        new connection covers the first call's writes too.
        """
        command = ("EVALSHA", script.sha, len(keys), *keys, *args)
        if self.fake:
            return await self.eval(script, keys, args), 0
        wait = ("WAIT", replicas, timeout)
        if self.lanes is None:
            reply, acked = await self.pipeline(
                lambda pipe: [pipe.execute_command(*command), pipe.execute_command(*wait)]
            )
        else:
            reply, acked = await self.on_lane([command, wait])
        return reply, int(acked)

    async def send_loading(
        self, send: Callable[[list[tuple[Any, ...]]], Awaitable[list[Any]]], commands: Sequence[tuple[Any, ...]]
    ) -> list[Any]:
        """``send(commands)`` (over one connection), loading the scripts into a server that lacks them."""
        try:
            return await send(list(commands))
        except redis_errors.NoScriptError:
            await send([("SCRIPT", "LOAD", script.script) for script in self.all.values()])
            return await send(list(commands))

    async def on_lane(self, commands: Sequence[tuple[Any, ...]]) -> list[Any]:
        """Send script calls over a free lane and return their replies.

        As redis-py's client would: a connection error or a timeout is retried
        (`CLIENT_RETRIES` times, with backoff, on a fresh connection) and a
        missing script is loaded.
        """
        lanes = self.lanes
        assert lanes is not None
        lane = lanes.pop() if lanes else Lane(self.client.connection_pool)
        try:
            for attempt in range(CLIENT_RETRIES + 1):
                try:
                    return await lane.send(*commands)
                except redis_errors.NoScriptError:
                    await lane.send(*[("SCRIPT", "LOAD", script.script) for script in self.all.values()])
                    return await lane.send(*commands)
                except (redis_errors.ConnectionError, redis_errors.TimeoutError):
                    if attempt == CLIENT_RETRIES:
                        raise
                    await asyncio.sleep(_LANE_BACKOFF.compute(attempt + 1))
            raise AssertionError("unreachable")  # pragma: no cover
        finally:
            lanes.append(lane)  # reusable after a failure: it reconnects

    async def eval_all(self, calls: Sequence[tuple[Any, Sequence[Any], Sequence[Any]]]) -> list[Any]:
        """Run several scripts in one round trip: ``(script, keys, args)`` each."""
        return await self.send_all([self.command(script, keys, args) for script, keys, args in calls])

    @staticmethod
    def command(script: Any, keys: Sequence[Any], args: Sequence[Any]) -> tuple[Any, ...]:
        """The EVALSHA command of a script call, for `send_all`."""
        return ("EVALSHA", script.sha, len(keys), *keys, *args)

    async def send_all(self, commands: Sequence[tuple[Any, ...]]) -> list[Any]:
        """Send commands (script calls, or plain commands with their key first) in one round trip.

        Take replies as raw: a lane returns them unparsed (``ZRANGE ... WITHSCORES`` gives
        a flat list, ``TIME`` bytes), and redis-py parses a command passed this way little.
        """
        if self.lanes is None:
            return await self.pipeline(lambda pipe: [pipe.execute_command(*command) for command in commands])
        return await self.on_lane(commands)

    async def on_nodes(self, commands: Sequence[tuple[Any, ...]], replicas: int, timeout: int) -> tuple[list[Any], int]:
        """Script calls on a cluster, each on the primary of its first key's slot, followed on each
        node by ``WAIT replicas timeout`` (ms) over the same connection (`transport.NodeLanes`).

        Commands are ``("EVALSHA", sha, numkeys, key, ...)``. A node that fails (dead,
        ``MOVED``, ``CLUSTERDOWN``...) has its commands sent again once redis-py's
        client has followed the new topology, like a command of its own
        (`CLIENT_RETRIES` times, with backoff); every script of the queue may run
        twice. Returns the replies, in order, and the fewest replicas that
        acknowledged a node's writes.
        """
        lanes = self.node_lanes()
        await self.client.initialize()
        replies: list[Any] = [None] * len(commands)
        acked = replicas
        todo = list(range(len(commands)))
        for attempt in range(CLIENT_RETRIES + 1):
            groups: dict[str, tuple[Any, list[int]]] = {}
            for index in todo:
                node = lanes.node(commands[index][3])
                groups.setdefault(node.name, (node, []))[1].append(index)
            outcomes = await asyncio.gather(
                *(
                    self._on_node(lanes, node, [commands[i] for i in indexes], replicas, timeout)
                    for node, indexes in groups.values()
                ),
                return_exceptions=True,
            )
            todo, failure = [], None
            for (_, indexes), outcome in zip(groups.values(), outcomes, strict=True):
                if isinstance(outcome, _NODE_FAILURES):
                    todo, failure = todo + indexes, outcome
                elif isinstance(outcome, BaseException):
                    raise outcome
                else:
                    *done, count = outcome
                    for index, reply in zip(indexes, done, strict=True):
                        replies[index] = reply
                    acked = min(acked, int(count))
            if failure is None:
                return replies, acked
            if attempt == CLIENT_RETRIES:
                raise failure
            await asyncio.sleep(_LANE_BACKOFF.compute(attempt + 1))
            await self.client.exists(commands[todo[0]][3])  # redis-py follows MOVED or a failover: its slot map moves
        raise AssertionError("unreachable")  # pragma: no cover

    async def _on_node(
        self, lanes: NodeLanes, node: Any, commands: list[tuple[Any, ...]], replicas: int, timeout: int
    ) -> list[Any]:
        """``commands`` then ``WAIT`` over one connection of ``node``, loading the scripts if it lacks them."""
        return await self.send_loading(lambda batch: lanes.send(node, batch), [*commands, ("WAIT", replicas, timeout)])

    async def pipeline(self, build: Callable[[Any], object]) -> list[Any]:
        """Run the commands ``build`` queues on a pipeline, loading the scripts if the server lacks them.

        redis-py's own pipeline checks every script with ``SCRIPT EXISTS`` on every
        execute (an extra round trip), and its cluster pipeline not at all.
        """
        for attempt in (1, 2):
            async with self.client.pipeline(transaction=False) as pipe:
                build(pipe)
                try:
                    return list(await pipe.execute())
                except redis_errors.NoScriptError:
                    if attempt == 2:
                        raise
            for script in self.all.values():
                await self.client.script_load(script.script)
        raise AssertionError("unreachable")  # pragma: no cover

    async def close(self) -> None:
        """Close the lanes (of every storage sharing the client), if any."""
        if self._node_lanes is not None:
            await self._node_lanes.close()
        lanes = self.lanes or []
        while lanes:
            with contextlib.suppress(Exception):
                await lanes.pop().close()
