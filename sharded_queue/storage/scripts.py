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
from collections.abc import Callable, Iterator, Sequence
from importlib import resources
from typing import Any

import redis.exceptions as redis_errors
from redis.backoff import ExponentialWithJitterBackoff

from ..errors import StorageConfigError, StorageError, StorageFull, StorageTimeout
from .client import CLIENT_BACKOFF_CAP, CLIENT_RETRIES
from .transport import Lane

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
)
"""The scripts every `Scripts` registers (the worker registry's are registered on first use)."""

_LANE_BACKOFF = ExponentialWithJitterBackoff(base=0.01, cap=CLIENT_BACKOFF_CAP)

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
        flags = not is_fake(client)
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
        # Lanes: connections of their own, one per call in flight, taken from and given back
        # to a free list that storages sharing the client share (and `close` closes).
        self.lanes: list[Lane] | None = _LANES.setdefault(client, []) if lanes else None

    async def eval(self, script: Any, keys: Sequence[Any], args: Sequence[Any]) -> Any:
        """Run a script over a lane on a single Redis, else through the client."""
        if self.lanes is None:
            return await script(keys=keys, args=args)
        (reply,) = await self.on_lane([("EVALSHA", script.sha, len(keys), *keys, *args)])
        return reply

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
        lanes = self.lanes or []
        while lanes:
            with contextlib.suppress(Exception):
                await lanes.pop().close()
