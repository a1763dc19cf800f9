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
    P:{H/T}:acked       string  token:seq of the last ack applied (PX ttl), so retries never re-trim
    P:{H/T}:losses      hash    per order: fetches of the tube's head never acked (lease lost, holder died)
    P:{H/T}:deferred    zset    deferred envelopes (sequence, envelope, rank, order), scored by due time
    P:{H/T}:deferred-seq string counter: deferred envelopes due together keep their registration order
    P:{H/T}:u:<order>   set     requests registered with if_not_exists that wait in the tube (or are
                                deferred to it), as 'request] '; their envelopes end in a space,
                                which marks them as owners: an owner's ack removes the mark
    P:{H/T}:recurring   zset    recurring requests (request newline order), scored by their next tick
    P:{H/T}:schedules   hash    recurring request -> its schedule (JSON: every or cron, rank, unique)
    P:{H/T}:dead        list    dead letters of the thread (JSON records)
    P:{H}:threads       zset    index of non-empty threads, scored by when they become
                                visible to the coordinator (now, or lease expiry while leased),
                                on the storage server's clock
    P:stamps            zset    one server: stamps of recent registrations (retries append once)
    P:{H/T}:stamps      zset    a cluster: the same, per thread (each slot's call is retried alone)
    P:{H}:dead-threads  zset    threads of H that have dead letters (scored by the first one's time)
    P:{H}:due           zset    threads of H with deferred or recurring requests, scored by the
                                earliest due time (server clock): workers look only at what is due
    P:wake              channel a message per registration naming its threads, to wake loops

Operations (worker registry and inspection; see `sharded_queue.registry` and
`sharded_queue.stats`)::

    P:{registry}:handlers  set   names of every handler registered or worked on (read by stats;
                                 a name is only ever displayed, never imported)
    P:{registry}:workers   zset  worker registry: worker id -> when its record expires (server ms)
    P:{registry}:w:<id>    hash  a worker's record: JSON (handlers, loops, counters, held threads),
                                 started_at and beat_at (server ms); PX ttl, renewed by heartbeat

A lease's token names its holder: ``<worker id>:<loop>@<since ms>/<random>``
(``since`` is the holder's own clock, for display only).

Invariants: an order is in ``orders`` iff its tube is non-empty (scripts keep
it so); a non-empty thread is always in the index, because registration adds it
*after* appending, and removal from the index is atomic with the emptiness check
(one server) or remove-then-recheck-then-re-add (a cluster, where the index lives
in another slot than the thread).

Time: every score and expiry the storage compares is the storage server's clock
(Lua ``TIME``) or a relative TTL, never a client's ``time.time()``: clients'
clocks may be off by hours. The envelope's ``enqueued_at`` is the registering
client's clock, kept for traces only.

A full Redis (``maxmemory`` with ``noeviction``): the scripts that only move
leases or free memory (acquire, cycle, renew, release, index) are declared
``allow-oom``, so workers keep draining; ``push`` is refused whole (`StorageFull`).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import math
import secrets
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, NamedTuple

import msgspec
import redis.asyncio as aioredis
import redis.exceptions as redis_errors
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff

from ..core import Ack, DueMoves, DueTick, PollResult, Schedule, ThreadRef, Tick, Tube
from ..errors import StorageError, StorageFull, StorageTimeout
from ..settings import Settings, redact_url
from .transport import InitializedCluster, Lane, fast_path, hiredis_packing

CLIENT_RETRIES = 3  # retries of a command after a connection error or timeout (redis-py's, and lanes')
CLIENT_BACKOFF_CAP = 0.5  # seconds
_LANE_BACKOFF = ExponentialWithJitterBackoff(base=0.01, cap=CLIENT_BACKOFF_CAP)
CLUSTER_SCHEMES = {"redis+cluster": "redis", "rediss+cluster": "rediss"}


@dataclass(frozen=True, slots=True)
class TubeWrite:
    """Envelopes to write to one tube (newline-joined, see `Codec.encode`), with the order's rank.

    Attributes:
        unique: Drop an envelope whose request equals a waiting one's (``if_not_exists``).
        when: ``''`` now, ``'+seconds'`` from the server's now, ``'@epoch'`` (`core.due_when`).
        schedule: For recurring requests: the JSON kept with each (`Queue.register`);
            ``when`` is then the first tick.
    """

    tube: Tube
    rank: float
    envelopes: bytes
    unique: bool = False
    when: str = ""
    schedule: bytes = b""

    @property
    def immediate(self) -> bool:
        """Whether its envelopes join the tube now (neither deferred nor scheduled)."""
        return not self.when and not self.schedule


class StoredSchedule(msgspec.Struct, omit_defaults=True):
    """What is kept with a recurring request: its `Schedule`, its order's rank, ``if_not_exists``."""

    every: float | None = None
    cron: str | None = None
    rank: str = "0"
    unique: bool = False

    def schedule(self) -> Schedule:
        """The schedule."""
        return Schedule(self.every, self.cron)


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

    def stamps(self, ref: ThreadRef | None = None) -> str:
        """Stamps of recent registrations: one zset per prefix, or per thread on a cluster."""
        return f"{self.prefix}:stamps" if ref is None else f"{self.thread(ref)}:stamps"

    def acked(self, ref: ThreadRef) -> str:
        """Stamp of the last ack applied under a lease (makes acks idempotent)."""
        return f"{self.thread(ref)}:acked"

    def deferred(self, ref: ThreadRef) -> str:
        """Zset of a thread's deferred envelopes, scored by due time."""
        return f"{self.thread(ref)}:deferred"

    def deferred_seq(self, ref: ThreadRef) -> str:
        """Counter ordering a thread's deferred envelopes due at the same time."""
        return f"{self.thread(ref)}:deferred-seq"

    def marks_prefix(self, ref: ThreadRef) -> str:
        """The marks set of a thread's order O is this plus O."""
        return f"{self.thread(ref)}:u:"

    def marks(self, tube: Tube) -> str:
        """Set of a tube's waiting ``if_not_exists`` requests."""
        return f"{self.marks_prefix(tube.thread_ref)}{tube.order}"

    def recurring(self, ref: ThreadRef) -> str:
        """Zset of a thread's recurring requests (request, newline, order), scored by next tick."""
        return f"{self.thread(ref)}:recurring"

    def schedules(self, ref: ThreadRef) -> str:
        """Hash of a thread's recurring requests -> their schedule (JSON)."""
        return f"{self.thread(ref)}:schedules"

    def due_index(self, handler: str) -> str:
        """Zset of a handler's threads with deferred or recurring requests, scored by the earliest due."""
        return f"{self.prefix}:{{{handler}}}:due"

    def losses(self, ref: ThreadRef) -> str:
        """Per order, fetches of the head never acked (lease lost or holder dead mid-batch)."""
        return f"{self.thread(ref)}:losses"

    def dead(self, ref: ThreadRef) -> str:
        """A thread's dead letters."""
        return f"{self.thread(ref)}:dead"

    def index(self, handler: str) -> str:
        """Zset of a handler's non-empty threads."""
        return f"{self.prefix}:{{{handler}}}:threads"

    def dead_index(self, handler: str) -> str:
        """Zset of a handler's threads that hold dead letters."""
        return f"{self.prefix}:{{{handler}}}:dead-threads"

    # --- operations ---

    @property
    def handlers(self) -> str:
        """Set of the names of every handler registered or worked on (in the registry's slot)."""
        return f"{self.prefix}:{{registry}}:handlers"

    @property
    def workers(self) -> str:
        """Zset of live workers' ids, scored by when their record expires (server ms)."""
        return f"{self.prefix}:{{registry}}:workers"

    def worker(self, worker_id: str) -> str:
        """A worker's heartbeat record (in the registry's slot)."""
        return f"{self.prefix}:{{registry}}:w:{worker_id}"


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
        raise StorageError(f"storage failed: {type(exc).__name__}: {exc}") from exc


def _script(name: str, flags: bool = True) -> str:
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


_EMBEDDED_SERVER: Any = None


def connect(url: str | None, settings: Settings, fast: bool | None = None) -> Any:
    """A redis-py asyncio client for ``url``; ``None`` is the process-wide embedded fakeredis.

    ``fast`` packs commands with hiredis (`transport.hiredis_packing`); by default when
    `transport.fast_path` holds.
    """
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
    retry = Retry(ExponentialWithJitterBackoff(base=0.01, cap=CLIENT_BACKOFF_CAP), CLIENT_RETRIES)
    if scheme in CLUSTER_SCHEMES:
        return InitializedCluster.from_url(
            f"{CLUSTER_SCHEMES[scheme]}://{rest}", socket_timeout=timeout, socket_connect_timeout=timeout, retry=retry
        )
    if scheme not in ("redis", "rediss", "unix"):
        raise ValueError(f"storage URL {redact_url(url)!r}: unknown scheme {scheme!r}")
    client = aioredis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout, retry=retry)
    if fast if fast is not None else fast_path():
        client.connection_pool.connection_class = hiredis_packing(client.connection_pool.connection_class)
    return client


_LANES: weakref.WeakKeyDictionary[Any, list[Lane]] = weakref.WeakKeyDictionary()
"""Free lanes by client: storages sharing a client share them."""


def stamp_window(settings: Settings) -> int:
    """Seconds a registration's stamp is kept: longer than redis-py may go on retrying it."""
    return math.ceil((CLIENT_RETRIES + 1) * (settings.storage_timeout + CLIENT_BACKOFF_CAP)) + 5


class Storage:
    """The queue's view of Redis: a narrow set of operations over a held client.

    Args:
        client: A ``redis.asyncio.Redis``, ``RedisCluster`` or fakeredis client
            (bytes replies, i.e. without ``decode_responses``).
        prefix: Key prefix; two prefixes never see each other.
        stamp_window: Seconds a registration's stamp is kept, so that a client
            retry of it within that time appends nothing twice (`stamp_window`).
        fast: Send scripts over lanes on a single Redis (`transport.Lane`); by
            default when `transport.fast_path` holds. False is redis-py's public path.
    """

    def __init__(self, client: Any, prefix: str = "sq", stamp_window: int = 60, fast: bool | None = None) -> None:
        self.client = client
        self.keys = Keys(prefix)
        self.cluster = isinstance(client, RedisCluster)
        self.stamp_window = stamp_window
        self.fake = type(client).__module__.startswith("fakeredis")
        self._scripts = {name: client.register_script(_script(name, not self.fake)) for name in SCRIPTS}
        self._push = self._scripts["push"]
        self._cycle = self._scripts["cycle"]
        self._acquire = self._scripts["acquire"]
        self._renew = self._scripts["renew"]
        self._release = self._scripts["release"]
        self._index = self._scripts["index"]
        self._candidates = self._scripts["candidates"]
        self._due = self._scripts["due"]
        self._fire = self._scripts["fire"]
        self._unschedule = self._scripts["unschedule"]
        self._settled: list[str] = []  # stamps of calls that returned: forgotten by the next push
        # On a single Redis, scripts go over lanes: connections of their own, one per call in
        # flight, taken from and given back to a free list that storages sharing the client
        # share (and `close` closes). None elsewhere, and off `transport.fast_path`.
        self._lanes: list[Lane] | None = None
        if not (self.cluster or self.fake) and (fast if fast is not None else fast_path()):
            self._lanes = _LANES.setdefault(client, [])

    async def _eval(self, script: Any, keys: Sequence[Any], args: Sequence[Any]) -> Any:
        """Run a script over a lane on a single Redis, else through the client."""
        if self._lanes is None:
            return await script(keys=keys, args=args)
        (reply,) = await self._on_lane([("EVALSHA", script.sha, len(keys), *keys, *args)])
        return reply

    async def _on_lane(self, commands: Sequence[tuple[Any, ...]]) -> list[Any]:
        """Send script calls over a free lane and return their replies.

        As redis-py's client would: a connection error or a timeout is retried
        (`CLIENT_RETRIES` times, with backoff, on a fresh connection) and a
        missing script is loaded. Every script of the queue may be run twice
        with the same effect: stamps, sequence numbers, tokens and due times
        make them idempotent.
        """
        lanes = self._lanes
        assert lanes is not None
        lane = lanes.pop() if lanes else Lane(self.client.connection_pool)
        try:
            for attempt in range(CLIENT_RETRIES + 1):
                try:
                    return await lane.send(*commands)
                except redis_errors.NoScriptError:
                    await lane.send(*[("SCRIPT", "LOAD", script.script) for script in self._scripts.values()])
                    return await lane.send(*commands)
                except (redis_errors.ConnectionError, redis_errors.TimeoutError):
                    if attempt == CLIENT_RETRIES:
                        raise
                    await asyncio.sleep(_LANE_BACKOFF.compute(attempt + 1))
            raise AssertionError("unreachable")  # pragma: no cover
        finally:
            lanes.append(lane)  # reusable after a failure: it reconnects

    @classmethod
    def from_settings(cls, settings: Settings, url: str | None = None, fast: bool | None = None) -> Storage:
        """Storage at ``url`` (default ``settings.storage_url``, else embedded); ``fast`` as for `Storage`."""
        client = connect(url or settings.storage_url, settings, fast)
        return cls(client, settings.key_prefix, stamp_window(settings), fast)

    async def close(self) -> None:
        """Close the client's connections and lanes (of every storage sharing the client)."""
        lanes = self._lanes or []
        while lanes:
            with contextlib.suppress(Exception):
                await lanes.pop().close()
        with contextlib.suppress(Exception):
            await self.client.aclose()

    # --- registration -------------------------------------------------------

    async def push(self, handler: str, writes: Sequence[TubeWrite], stamp: str | None = None) -> int:
        """Append envelopes to ``handler``'s tubes, then index their threads, then wake idle loops.

        On one server this is one atomic script call: all or nothing, and a
        full Redis refuses it whole (`StorageFull`). On a cluster each thread's
        tubes are one call (pipelined per node), and the index is touched only
        once every tube is appended, which keeps a message from being stranded
        outside the index. Either way a client retry after a lost reply appends
        nothing twice (``stamp`` names a call; a fresh one by default). Returns
        how many envelopes were appended.
        """
        if not writes:
            return 0
        threads = list(dict.fromkeys(write.tube.thread_ref.thread for write in writes))
        wake = msgspec.json.encode([[handler, thread] for thread in threads])
        stamp = stamp or secrets.token_hex(8)
        with translate_errors():
            if self.cluster:
                return await self._push_cluster(handler, writes, threads, wake, stamp)
            forget, self._settled = self._settled, []
            keys = [self.keys.stamps()]
            args: list[Any] = [stamp, self.stamp_window, self.keys.wake, wake, len(forget), *forget]
            self._tube_arguments(writes, keys, args)
            keys += (self.keys.index(handler), self.keys.due_index(handler))
            try:
                count = int((await self._eval(self._push, keys, args))[0])
            except BaseException:
                self._settled.extend(forget)  # harmless if the call did forget them
                raise
            self._settled.append(stamp)
            return count

    async def _push_cluster(
        self, handler: str, writes: Sequence[TubeWrite], threads: list[str], wake: bytes, stamp: str
    ) -> int:
        by_thread: dict[str, list[TubeWrite]] = {}
        for write in writes:
            by_thread.setdefault(write.tube.thread, []).append(write)

        def append(pipe: Any) -> None:
            for thread, group in by_thread.items():
                keys = [self.keys.stamps(ThreadRef(handler, thread))]
                args: list[Any] = [stamp, self.stamp_window, "", "", 0]
                self._tube_arguments(group, keys, args)
                pipe.execute_command("EVALSHA", self._push.sha, len(keys), *keys, *args)

        replies = await self._pipeline(append)
        queued = [
            thread
            for (thread, group), (_, _, moved) in zip(by_thread.items(), replies, strict=True)
            if moved or any(write.immediate for write in group)
        ]
        if queued:
            await self._eval(self._index, [self.keys.index(handler)], ["add", 0, *queued])
        for thread, (_, due, _) in zip(by_thread, replies, strict=True):
            if due:
                await self._eval(self._index, [self.keys.due_index(handler)], ["at", due, thread])
        await self.client.publish(self.keys.wake, wake)
        return sum(int(count) for count, _, _ in replies)

    def _tube_arguments(self, writes: Sequence[TubeWrite], keys: list[str], args: list[Any]) -> None:
        for write in writes:
            tube = write.tube
            ref = tube.thread_ref
            keys += (
                self.keys.tube(tube),
                self.keys.orders(ref),
                self.keys.deferred(ref),
                self.keys.deferred_seq(ref),
                self.keys.marks(tube),
                self.keys.recurring(ref),
                self.keys.schedules(ref),
            )
            args += (
                tube.thread,
                tube.order,
                write.rank,
                write.envelopes,
                1 if write.unique else 0,
                write.when,
                write.schedule,
            )

    async def _eval_all(self, calls: Sequence[tuple[Any, Sequence[Any], Sequence[Any]]]) -> list[Any]:
        """Run several scripts in one round trip: ``(script, keys, args)`` each."""
        commands = [("EVALSHA", script.sha, len(keys), *keys, *args) for script, keys, args in calls]
        if self._lanes is None:
            return await self._pipeline(lambda pipe: [pipe.execute_command(*command) for command in commands])
        return await self._on_lane(commands)

    async def _pipeline(self, build: Callable[[Any], object]) -> list[Any]:
        """Run the script calls ``build`` queues on a pipeline, loading the scripts if the server lacks them.

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
            for script in self._scripts.values():
                await self.client.script_load(script.script)
        raise AssertionError("unreachable")  # pragma: no cover

    # --- coordinator --------------------------------------------------------

    async def candidates(self, handlers: Sequence[str], count: int) -> PollResult:
        """What a coordinator poll sees, on the server's clock (one round trip).

        Returns:
            Up to ``count`` threads per handler visible now, longest-visible
            first, with the seconds until the next deferred or recurring request
            is due, and the threads with requests due now, for `move_due`.
        """
        calls = [(self._candidates, [self.keys.index(h), self.keys.due_index(h)], [count]) for h in handlers]
        with translate_errors():
            replies = await self._eval_all(calls)
        found: list[tuple[float, ThreadRef]] = []
        due: list[ThreadRef] = []
        due_in = math.inf
        for handler, (visible, ready, later) in zip(handlers, replies, strict=True):
            found += (
                (float(visible[i + 1]), ThreadRef(handler, visible[i].decode())) for i in range(0, len(visible), 2)
            )
            due += (ThreadRef(handler, thread.decode()) for thread in ready)
            if later:
                due_in = min(due_in, float(later))
        found.sort(key=lambda item: item[0])
        return PollResult([ref for _, ref in found], due_in, due)

    async def move_due(self, ref: ThreadRef, limit: int = 1000) -> DueMoves:
        """Move ``ref``'s deferred requests that are due to their tubes' tails (up to ``limit``),
        and find its recurring requests whose tick is due, for `fire` (`core.next_ticks`)."""
        keys = self.keys
        thread_keys = [
            keys.deferred(ref),
            keys.deferred_seq(ref),
            keys.orders(ref),
            keys.recurring(ref),
            keys.schedules(ref),
        ]
        with translate_errors():
            moved, _, fire, now = await self._on_thread(
                self._due, ref, thread_keys, [keys.tube_prefix(ref), limit], index=True
            )
            await self._after_moving(ref, int(moved))
        ticks = []
        for i in range(0, len(fire), 3):
            member, due, raw = fire[i : i + 3]
            stored = msgspec.json.decode(raw, type=StoredSchedule)
            ticks.append(DueTick(member, float(due), due, stored.schedule(), stored.rank, stored.unique))
        return DueMoves(int(moved), ticks, float(now))

    async def fire(self, ref: ThreadRef, ticks: Sequence[Tick]) -> int:
        """Register each recurring tick once (whoever else tries) and move its schedule to the
        next tick. Returns how many this call registered."""
        keys = self.keys
        fired = 0
        with translate_errors():
            for tick in ticks:
                fired += await self._on_thread(
                    self._fire,
                    ref,
                    [keys.recurring(ref), keys.orders(ref), keys.deferred(ref)],
                    [
                        keys.tube_prefix(ref),
                        tick.member,
                        tick.stored_due,
                        repr(tick.next_due),
                        tick.rank,
                        1 if tick.unique else 0,
                        keys.marks_prefix(ref),
                    ],
                    index=True,
                )
            await self._after_moving(ref, fired)
        return fired

    async def _after_moving(self, ref: ThreadRef, count: int) -> None:
        """After ``count`` due requests joined ``ref``'s tubes: index it on a cluster (one server's
        scripts did), re-score its due entry, and wake the loop holding it, else an idle one."""
        if self.cluster and count:
            await self._eval(self._index, [self.keys.index(ref.handler)], ["add", 0, ref.thread])
        if self.cluster:
            await self._reindex_due(ref)
        if count:
            await self.client.publish(self.keys.wake, msgspec.json.encode([[ref.handler, ref.thread]]))

    async def _reindex_due(self, ref: ThreadRef) -> None:
        """Score a cluster's due index entry of ``ref`` by its earliest due: remove, re-check, re-add
        (a registration racing with this keeps its own, lower, score)."""
        index = self.keys.due_index(ref.handler)
        await self.client.zrem(index, ref.thread)
        deferred, recurring = await self._pipeline(
            lambda pipe: [
                pipe.zrange(self.keys.deferred(ref), 0, 0, withscores=True),
                pipe.zrange(self.keys.recurring(ref), 0, 0, withscores=True),
            ]
        )
        scores = [score for _, score in (*deferred, *recurring)]
        if scores:
            await self._eval(self._index, [index], ["at", repr(min(scores)), ref.thread])

    async def server_time(self) -> float:
        """The storage server's clock, in seconds since the epoch."""
        with translate_errors():
            seconds, micros = await self.client.time()
        return float(seconds) + float(micros) / 1_000_000

    async def acquire(self, ref: ThreadRef, token: str, ttl: float) -> bool:
        """Take ``ref``'s lease; hide it in the index while held. False if empty or taken."""
        keys = self.keys
        with translate_errors():
            taken = await self._on_thread(self._acquire, ref, [keys.lease(ref), keys.orders(ref)], [token, _ms(ttl)])
            if self.cluster and taken == 1:
                await self._eval(self._index, [keys.index(ref.handler)], ["hide", _ms(ttl), ref.thread])
            elif self.cluster and taken == 0:
                await self._unindex(ref)
        return bool(taken == 1)

    async def _on_thread(
        self, script: Any, ref: ThreadRef, keys: list[str], args: list[Any], index: bool = False
    ) -> Any:
        """Call a thread script; on one server with the handler's index too (and its due index
        with ``index=True``), so it updates them atomically. ``ref.thread`` follows the first
        argument for those scripts, last for the others."""
        if index:
            args = [args[0], ref.thread, *args[1:]]
        if self.cluster:  # the indexes are another slot: the caller follows up with index.lua
            return await self._eval(script, keys, args)
        extra = [self.keys.index(ref.handler)]
        if index:
            extra.append(self.keys.due_index(ref.handler))
            return await self._eval(script, [*keys, *extra], args)
        return await self._eval(script, [*keys, *extra], [*args, ref.thread])

    async def _unindex(self, ref: ThreadRef) -> None:
        """Remove an empty thread from a cluster's index, safely against a racing register."""
        index = self.keys.index(ref.handler)
        await self.client.zrem(index, ref.thread)
        if await self.client.zcard(self.keys.orders(ref)):
            await self._eval(self._index, [index], ["add", 0, ref.thread])

    # --- bound thread -------------------------------------------------------

    async def cycle(
        self,
        ref: ThreadRef,
        token: str,
        ttl: float,
        ack: Ack | None,
        ack_seq: int,
        dead: Sequence[bytes],
        limit: int,
    ) -> tuple[str, list[bytes], int] | bool | None:
        """Ack the previous batch and fetch the next, fenced by the lease.

        Safe to retry with the same ``ack_seq`` after a lost reply: an ack is
        applied once per (token, seq).

        Returns:
            ``(order, payloads, losses)``, where ``losses`` counts earlier fetches
            of that head that were never acked; ``None`` when the thread is empty
            (or nothing was asked); ``False`` when the lease is not ours and
            nothing changed.
        """
        keys = self.keys
        thread_keys = [
            keys.lease(ref),
            keys.orders(ref),
            keys.dead(ref),
            keys.acked(ref),
            keys.losses(ref),
        ]
        with translate_errors():
            if dead and self.cluster:  # marked first: pruning removes only threads it saw empty
                await self._eval(self._index, [keys.dead_index(ref.handler)], ["add", 0, ref.thread])
            elif dead:
                thread_keys.append(keys.dead_index(ref.handler))
            reply = await self._eval(
                self._cycle,
                thread_keys,
                [
                    keys.tube_prefix(ref),
                    token,
                    _ms(ttl),
                    ack.order if ack else "",
                    ack.count if ack else 0,
                    ack_seq,
                    limit,
                    ref.thread,
                    1 if ack is None or ack.clears_losses else 0,
                    keys.marks_prefix(ref),
                    *dead,
                ],
            )
        if reply is None:
            return False
        if not reply:
            return None
        order, payloads, losses = reply
        return order.decode(), payloads, int(losses)

    async def renew(self, ref: ThreadRef, token: str, ttl: float) -> bool:
        """Extend our lease and keep the thread hidden from the coordinator meanwhile."""
        with translate_errors():
            renewed = await self._on_thread(self._renew, ref, [self.keys.lease(ref)], [token, _ms(ttl)])
            if self.cluster and renewed:
                await self._eval(self._index, [self.keys.index(ref.handler)], ["hide", _ms(ttl), ref.thread])
        return bool(renewed)

    async def release(self, ref: ThreadRef, token: str) -> None:
        """Drop our lease (never another's) and make the thread visible, or unindex it when empty."""
        keys = self.keys
        with translate_errors():
            left, free = await self._on_thread(self._release, ref, [keys.lease(ref), keys.orders(ref)], [token])
            if self.cluster and not left:
                await self._unindex(ref)
            elif self.cluster and free:
                await self._eval(self._index, [keys.index(ref.handler)], ["show", 0, ref.thread])

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
                raise_if_cancelled(asyncio.current_task())
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
            orders = await self._pipeline(lambda pipe: [pipe.zrange(self.keys.orders(ref), 0, -1) for ref in refs])
            lengths = await self._pipeline(
                lambda pipe: [
                    pipe.llen(self.keys.tube(Tube(handler, ref.thread, order.decode())))
                    for ref, names in zip(refs, orders, strict=True)
                    for order in names
                ]
            )
        return sum(lengths)

    async def lease_token(self, ref: ThreadRef) -> str | None:
        """The token of the loop holding ``ref``, if any."""
        with translate_errors():
            token = await self.client.get(self.keys.lease(ref))
        return None if token is None else token.decode()

    async def append_raw(self, handler: str, writes: Sequence[tuple[Tube, float, Sequence[bytes]]]) -> None:
        """Append payloads byte for byte (any bytes, newlines included), then index their threads.

        Pipelined, not atomic: for putting dead letters back, which is at-least-once.
        """
        with translate_errors():

            def append(pipe: Any) -> None:
                for tube, rank, payloads in writes:
                    pipe.rpush(self.keys.tube(tube), *payloads)
                    pipe.zadd(self.keys.orders(tube.thread_ref), {tube.order: rank})

            await self._pipeline(append)
            threads = list(dict.fromkeys(tube.thread for tube, _, _ in writes))
            await self._eval(self._index, [self.keys.index(handler)], ["add", 0, *threads])

    # --- recurring requests -------------------------------------------------

    async def unschedule(self, handler: str, members: Mapping[str, Sequence[bytes]]) -> int:
        """Remove recurring requests (``members`` by thread: request, newline, order); returns how many."""
        removed = 0
        with translate_errors():
            for thread, names in members.items():
                ref = ThreadRef(handler, thread)
                keys = [self.keys.recurring(ref), self.keys.schedules(ref), self.keys.deferred(ref)]
                if not self.cluster:
                    keys.append(self.keys.due_index(handler))
                removed += int(await self._eval(self._unschedule, keys, [thread, *names]))
                if self.cluster:
                    await self._reindex_due(ref)
        return removed

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

    async def dead_counts(self, handler: str) -> dict[str, int]:
        """How many dead letters each thread of ``handler`` holds (two round trips, no bodies read)."""
        threads = await self.dead_threads(handler)
        with translate_errors():
            lengths = await self._pipeline(
                lambda pipe: [pipe.llen(self.keys.dead(ThreadRef(handler, thread))) for thread in threads]
            )
        return {thread: int(length) for thread, length in zip(threads, lengths, strict=True) if length}

    async def dead_records(self, handler: str, threads: Sequence[str]) -> list[list[bytes]]:
        """Raw dead-letter records of each of ``threads``, oldest first (one round trip)."""
        with translate_errors():
            return await self._pipeline(
                lambda pipe: [pipe.lrange(self.keys.dead(ThreadRef(handler, thread)), 0, -1) for thread in threads]
            )

    async def take_dead(self, handler: str, counts: Mapping[str, int]) -> None:
        """Drop the oldest ``counts[thread]`` dead letters of each thread (requeued or purged).

        Threads left without dead letters leave the handler's dead-letter index:
        removed, re-checked, and re-added if a letter landed meanwhile.
        """
        index = self.keys.dead_index(handler)
        keys = {thread: self.keys.dead(ThreadRef(handler, thread)) for thread in counts}
        with translate_errors():
            replies = await self._pipeline(
                lambda pipe: [
                    (pipe.ltrim(keys[thread], count, -1), pipe.llen(keys[thread])) for thread, count in counts.items()
                ]
            )
            empty = [thread for thread, left in zip(counts, replies[1::2], strict=True) if not left]
            if not empty:
                return
            await self.client.zrem(index, *empty)
            again = await self._pipeline(lambda pipe: [pipe.llen(keys[thread]) for thread in empty])
            back = [thread for thread, left in zip(empty, again, strict=True) if left]
            if back:
                await self._eval(self._index, [index], ["add", 0, *back])

    # --- operations: where the storage is, worker registry, inspection ------------------
    # Reads for `sharded_queue.stats` and writes for `sharded_queue.registry`; none of
    # them is on a worker's per-batch path.

    @property
    def location(self) -> str:
        """Where this storage is, safe to log: a URL without password, or ``embedded fakeredis``."""
        return describe_client(self.client)

    @property
    def embedded_default(self) -> bool:
        """True on the process-wide embedded fakeredis (``Queue()`` with no URL anywhere)."""
        pool = getattr(self.client, "connection_pool", None)
        server = getattr(pool, "connection_kwargs", {}).get("server")
        return server is not None and server is _EMBEDDED_SERVER

    @functools.cached_property
    def _worker_beat(self) -> Any:
        flags = not type(self.client).__module__.startswith("fakeredis")  # as in __init__
        return self.client.register_script(_script("worker_beat", flags))

    @functools.cached_property
    def _worker_list(self) -> Any:
        return self.client.register_script(_script("worker_list"))

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
                args=[worker_id, _ms(ttl), record, *handlers],
            )
        return int(now) / 1000, sorted(worker.decode() for worker in live)

    async def remove_worker(self, worker_id: str) -> None:
        """Delete a worker's record at once (a graceful stop)."""
        keys = self.keys
        with translate_errors():
            async with self.client.pipeline(transaction=not self.cluster) as pipe:
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

    async def snapshot(self, handlers: Sequence[str]) -> Snapshot:
        """Everything `stats` shows of ``handlers``, in three pipelined round trips.

        However many threads there are: the handlers' indexes and dead-letter
        indexes, then every listed thread's orders, lease and dead-letter count,
        then every tube's length and head envelope. Plus one ``TIME``.
        """
        keys = self.keys
        with translate_errors():
            now = await self.server_time()
            replies = await self._pipeline(
                lambda pipe: [
                    (pipe.zrange(keys.index(handler), 0, -1), pipe.zrange(keys.dead_index(handler), 0, -1))
                    for handler in handlers
                ]
            )
            refs: list[ThreadRef] = []
            for position, handler in enumerate(handlers):
                indexed, dead = replies[2 * position], replies[2 * position + 1]
                names = dict.fromkeys(member.decode() for member in [*indexed, *dead])
                refs += [ThreadRef(handler, thread) for thread in names]

            def per_thread(pipe: Any) -> None:
                for ref in refs:
                    pipe.zrange(keys.orders(ref), 0, -1, withscores=True)
                    pipe.get(keys.lease(ref))
                    pipe.llen(keys.dead(ref))

            replies = await self._pipeline(per_thread)
            threads: list[ThreadSnapshot] = []
            for position, ref in enumerate(refs):
                orders, lease, dead = replies[3 * position : 3 * position + 3]
                token = None if lease is None else lease.decode()
                threads.append(ThreadSnapshot(ref, [(o.decode(), rank) for o, rank in orders], token, int(dead)))
            tubes = [
                keys.tube(Tube(thread.ref.handler, thread.ref.thread, order))
                for thread in threads
                for order, _ in thread.orders
            ]
            heads: Iterator[Any] = iter(
                await self._pipeline(lambda pipe: [(pipe.llen(t), pipe.lindex(t, 0)) for t in tubes])
            )
        for thread in threads:
            thread.tubes = [(order, int(next(heads)), next(heads)) for order, _ in thread.orders]
        return Snapshot(now, threads)


class WorkerRecordRaw(NamedTuple):
    """A live worker's record as stored (see `Storage.worker_records`)."""

    worker_id: str
    started_at: float
    beat_at: float
    record: bytes


@dataclass(slots=True)
class ThreadSnapshot:
    """One thread as `Storage.snapshot` read it.

    Attributes:
        ref: The thread.
        orders: Its non-empty orders with their rank, most urgent first.
        lease: The lease token of its holder, if any.
        dead: How many dead letters it holds.
        tubes: Per order: how many messages wait and the head envelope (None if empty).
    """

    ref: ThreadRef
    orders: list[tuple[str, float]]
    lease: str | None
    dead: int
    tubes: list[tuple[str, int, bytes | None]] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Snapshot:
    """What `Storage.snapshot` read: the server time (seconds) and the threads."""

    now: float
    threads: list[ThreadSnapshot]


def describe_client(client: Any) -> str:
    """Where a redis-py (or fakeredis) client points, as a URL without password."""
    if isinstance(client, RedisCluster):
        kwargs = getattr(client, "connection_kwargs", {})
        scheme = "rediss+cluster" if _is_ssl(kwargs.get("connection_class")) else "redis+cluster"
        nodes = ",".join(client.nodes_manager.startup_nodes) or "?"
        return f"{scheme}://{_user(kwargs)}{nodes}"
    pool = getattr(client, "connection_pool", None)
    kwargs = getattr(pool, "connection_kwargs", {})
    if "server" in kwargs:
        return "embedded fakeredis"
    if "path" in kwargs:
        return f"unix://{_user(kwargs)}{kwargs['path']}?db={kwargs.get('db', 0)}"
    scheme = "rediss" if _is_ssl(getattr(pool, "connection_class", None)) else "redis"
    host, port, db = kwargs.get("host", "localhost"), kwargs.get("port", 6379), kwargs.get("db", 0)
    return f"{scheme}://{_user(kwargs)}{host}:{port}/{db}"


def _user(kwargs: dict[str, Any]) -> str:
    user, password = kwargs.get("username"), kwargs.get("password")
    if password:
        return f"{user or ''}:***@"
    return f"{user}@" if user else ""


def _is_ssl(connection_class: Any) -> bool:
    return isinstance(connection_class, type) and issubclass(connection_class, aioredis.SSLConnection)


def raise_if_cancelled(task: asyncio.Task[Any] | None) -> None:
    """Raise `CancelledError` if ``task`` was cancelled, even when the cancellation was swallowed.

    A client library may catch the `CancelledError` thrown into an await (to clean
    up a connection, say) and return normally or raise something else; the task's
    ``cancelling()`` count still says it was cancelled. Checked after every
    effect, so a cancelled loop always stops.
    """
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


def wake_threads(data: bytes) -> list[ThreadRef]:
    """Threads named in a wake-up message; an unreadable message names none."""
    try:
        return [ThreadRef(str(handler), str(thread)) for handler, thread in msgspec.json.decode(data)]
    except (msgspec.DecodeError, TypeError, ValueError):
        return []


SCRIPTS = ("push", "cycle", "acquire", "renew", "release", "index", "candidates", "due", "fire", "unschedule")


def _ms(seconds: float) -> int:
    return max(1, int(seconds * 1000))
