"""`Storage`: the queue's operations on Redis, over a held redis-py client.

Registration (`Storage.push`), the coordinator's poll (`Storage.candidates`,
`Storage.move_due`), the bound thread's lease and batch cycle
(`Storage.acquire`, `Storage.cycle`, `Storage.renew`, `Storage.release`) and
wake-ups (`Storage.listen_wake`): the `protocol.QueueStorage` a worker and a
registration use. Each is a script call or two (`scripts`), on keys of
`keys.Keys`; where one server and a cluster differ (the handlers' indexes and
counts), the `layout` strategy picked at construction does. Operations off that
path come from `admin.Admin` and `reads.Reads`.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import secrets
from collections.abc import Callable, Sequence
from typing import Any

import msgspec
from redis.asyncio.cluster import RedisCluster

from ..core import Ack, DueMoves, DueTick, Held, PollResult, Short, ThreadRef, Tick
from ..errors import StorageError, ThreadFull
from ..settings import Settings
from .client import close_client, connect, stamp_window
from .controls import Controls
from .keys import Keys
from .layout import Cluster, SingleServer
from .protocol import NO_CONTROLS, CycleControls, QueueStorage, StoredSchedule, TubeWrite
from .scripts import Scripts, is_fake, ms, translate_errors
from .transport import fast_path, sentinel_primary


class Storage(Controls):
    """The queue's view of Redis: a narrow set of operations over a held client.

    Args:
        client: A ``redis.asyncio.Redis``, ``RedisCluster`` or fakeredis client
            (bytes replies, i.e. without ``decode_responses``).
        prefix: Key prefix; two prefixes never see each other.
        stamp_window: Seconds a registration's stamp is kept, so that a client
            retry of it within that time appends nothing twice (`client.stamp_window`).
        fast: Send scripts over lanes on a single Redis (`transport.Lane`); by
            default when `transport.fast_path` holds. False is redis-py's public path.
    """

    def __init__(self, client: Any, prefix: str = "sq", stamp_window: int = 60, fast: bool | None = None) -> None:
        self.cluster = isinstance(client, RedisCluster)
        self.fake = is_fake(client)
        self.stamp_window = stamp_window
        # Lanes only on a single Redis, and only on the fast path.
        lanes = not (self.cluster or self.fake) and (fast if fast is not None else fast_path())
        scripts = Scripts(client, lanes)
        keys = Keys(prefix)
        layout = (Cluster if self.cluster else SingleServer)(client, keys, scripts, stamp_window)
        super().__init__(client, keys, scripts, layout)
        self._eval_all = scripts.eval_all
        self._cycle = scripts.cycle
        self._candidates = scripts.candidates
        self._due = scripts.due
        self._fire = scripts.fire
        self._bucket = scripts.bucket
        self._unused: dict[str, int] = {}  # a cluster: handler tokens reserved and not spent, to give back

    @classmethod
    def from_settings(cls, settings: Settings, url: str | None = None, fast: bool | None = None) -> Storage:
        """Storage at ``url`` (default ``settings.storage_url``, else embedded); ``fast`` as for `Storage`."""
        client = connect(url or settings.storage_url, settings, fast)
        return cls(client, settings.key_prefix, stamp_window(settings), fast)

    async def close(self) -> None:
        """Close the client's connections and lanes (of every storage sharing the client)."""
        await self.scripts.close()
        with contextlib.suppress(Exception):
            await close_client(self.client)

    def primaries(self) -> frozenset[str] | None:
        """``host:port`` of the primaries the client last found: a Sentinel-managed client's one
        primary, a cluster's; None for a plain server (whose address never changes)."""
        if self.cluster:
            return frozenset(node.name for node in self.client.get_primaries())
        primary = sentinel_primary(self.client)
        return None if primary is None else frozenset([primary])

    # --- registration -------------------------------------------------------

    async def push(
        self,
        handler: str,
        writes: Sequence[TubeWrite],
        stamp: str | None = None,
        replicas: int = 0,
        timeout: float = 10.0,
        max_pending: int | None = None,
    ) -> int:
        """Append envelopes to ``handler``'s tubes, then index their threads, then wake idle loops.

        On one server this is one atomic script call: all or nothing, and a
        full Redis refuses it whole (`StorageFull`). On a cluster each thread's
        tubes are one call (pipelined per node), and the index is touched only
        once every tube is appended, which keeps a message from being stranded
        outside the index. Either way a client retry after a lost reply appends
        nothing twice (``stamp`` names a call; a fresh one by default). Returns
        how many envelopes were appended.

        With ``replicas``, returns only once that many replicas have the writes
        (Redis ``WAIT``, on the connection that wrote them, up to ``timeout``
        seconds); else raises `StorageError` saying how many did, its ``stored``
        set to the count the primary holds.

        With ``max_pending``, a thread that would hold more than that many
        requests in its tubes refuses its writes (`ThreadFull`): on one server
        the whole call writes nothing; on a cluster each thread's writes are one
        call, so other threads' may stand (``ThreadFull.stored`` says how many).
        """
        if not writes:
            return 0
        threads = list(dict.fromkeys(write.tube.thread_ref.thread for write in writes))
        wake = msgspec.json.encode([[handler, thread] for thread in threads])
        with translate_errors():
            count, acked, full = await self._layout.push(
                handler, writes, wake, stamp or secrets.token_hex(8), replicas, ms(timeout), max_pending
            )
        if full is not None:
            assert max_pending is not None
            raise ThreadFull(handler, full[0], full[1], max_pending, count)
        if acked < replicas:
            raise not_replicated(count, acked, replicas, timeout)
        return count

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
            moved, _, fire, now, _ = await self._layout.call(
                self._due, ref, thread_keys, [keys.tube_prefix(ref), ref.thread, limit], self._indexes(ref.handler)
            )
            await self._moved(ref, int(moved))
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
                registered, _ = await self._layout.call(
                    self._fire,
                    ref,
                    [keys.recurring(ref), keys.orders(ref), keys.deferred(ref)],
                    [
                        keys.tube_prefix(ref),
                        ref.thread,
                        tick.member,
                        tick.stored_due,
                        repr(tick.next_due),
                        tick.rank,
                        1 if tick.unique else 0,
                        keys.marks_prefix(ref),
                    ],
                    self._indexes(ref.handler),
                )
                fired += int(registered)
            await self._moved(ref, fired)
        return fired

    def _indexes(self, handler: str) -> list[str]:
        """The index and due index, as due.lua and fire.lua take them (one server)."""
        return [self.keys.index(handler), self.keys.due_index(handler)]

    async def _moved(self, ref: ThreadRef, count: int) -> None:
        """After ``count`` due requests of ``ref`` joined its tubes: index it as the scripts did
        (`Layout.due_moved`), and wake the loop holding it, else an idle one, as a registration does."""
        await self._layout.due_moved(ref, count)
        if count:
            await self.client.publish(self.keys.wake, msgspec.json.encode([[ref.handler, ref.thread]]))

    # --- bound thread -------------------------------------------------------

    async def acquire(self, ref: ThreadRef, token: str, ttl: float) -> bool:
        """Take ``ref``'s lease; hide it in the index while held. False if empty or taken."""
        with translate_errors():
            taken = await self._layout.acquire(ref, token, ms(ttl))
        return bool(taken == 1)

    async def cycle(
        self,
        ref: ThreadRef,
        token: str,
        ttl: float,
        ack: Ack | None,
        ack_seq: int,
        dead: Sequence[bytes],
        limit: int,
        controls: CycleControls = NO_CONTROLS,
    ) -> tuple[str, list[bytes], int] | Held | Short | bool | None:
        """Ack the previous batch and fetch the next, fenced by the lease and held back by controls.

        Safe to retry with the same ``ack_seq`` after a lost reply: an ack is
        applied once per (token, seq).

        Returns:
            ``(order, payloads, losses)``, where ``losses`` counts earlier fetches
            of that head that were never acked; ``None`` when the thread is empty
            (or nothing was asked); ``False`` when the lease is not ours and
            nothing changed; `Held` when a control held the thread back (paused,
            an empty rate bucket) and `Short` when ``controls.linger`` and fewer
            than ``limit`` wait: nothing fetched.
        """
        handler_rate, reserved = controls.handler_rate, 0
        if handler_rate and self.cluster and limit:  # the handler's bucket is another slot
            reserved, wait = await self._reserve(ref.handler, handler_rate, limit)
            if not reserved:
                if ack is not None and await self.cycle(ref, token, ttl, ack, ack_seq, dead, 0) is False:
                    return False
                return Held(wait)
            limit, controls = reserved, CycleControls(controls.thread_rate, "", controls.hold, controls.linger)
        with translate_errors():
            reply = await self._cycle_call(ref, token, ttl, ack, ack_seq, dead, limit, controls)
        if reserved:
            fetched = len(reply[1]) if reply and len(reply) == 4 else 0
            self._unused[ref.handler] = self._unused.get(ref.handler, 0) + reserved - fetched
        return _cycle_reply(reply)

    async def _cycle_call(
        self,
        ref: ThreadRef,
        token: str,
        ttl: float,
        ack: Ack | None,
        ack_seq: int,
        dead: Sequence[bytes],
        limit: int,
        controls: CycleControls,
    ) -> Any:
        """cycle.lua on ``ref`` (its dead letters indexed first, on a cluster); its reply."""
        keys = self.keys
        thread_keys = [
            keys.lease(ref),
            keys.orders(ref),
            keys.dead(ref),
            keys.acked(ref),
            keys.losses(ref),
            keys.controls(ref),
            keys.bucket(ref),
        ]
        hold = controls.hold
        if dead:
            await self._layout.before_dead_letters(ref)
        return await self._layout.call(
            self._cycle,
            ref,
            thread_keys,
            [
                keys.tube_prefix(ref),
                token,
                ms(ttl),
                ack.order if ack else "",
                ack.count if ack else 0,
                ack_seq,
                limit,
                ref.thread,
                1 if ack is None or ack.clears_losses else 0,
                keys.marks_prefix(ref),
                controls.thread_rate,
                controls.handler_rate,
                "" if hold is None else f"{hold.seconds!r} {hold.order}".rstrip(),
                1 if controls.linger else 0,
                *dead,
            ],
            [keys.dead_index(ref.handler)],
            [keys.bucket(ref.handler)] if controls.handler_rate else [],
        )

    async def _reserve(self, handler: str, rate: str, want: int) -> tuple[int, float]:
        """A cluster: take up to ``want`` tokens of ``handler``'s bucket (bucket.lua), giving back
        what earlier reservations left unused. Returns how many, and the seconds until one when none."""
        give_back = self._unused.pop(handler, 0)
        with translate_errors():
            taken, wait = await self._eval(self._bucket, [self.keys.bucket(handler)], [rate, want, give_back])
        return int(taken), float(wait)

    async def renew(self, ref: ThreadRef, token: str, ttl: float) -> bool:
        """Extend our lease and keep the thread hidden from the coordinator meanwhile."""
        with translate_errors():
            renewed = await self._layout.renew(ref, token, ms(ttl))
        return bool(renewed)

    async def release(self, ref: ThreadRef, token: str) -> None:
        """Drop our lease (never another's) and make the thread visible, or unindex it when empty."""
        with translate_errors():
            await self._layout.release(ref, token)

    # --- wake-ups -----------------------------------------------------------

    async def listen_wake(self, on_wake: Callable[[list[ThreadRef]], None], ready: Callable[[], None]) -> None:
        """Call ``on_wake`` with the threads of every registration anywhere, until cancelled."""
        with translate_errors():
            await self._layout.before_subscribe()
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


_CONTRACT: type[QueueStorage] = Storage  # mypy checks that `Storage` keeps the protocol


def _cycle_reply(reply: Any) -> tuple[str, list[bytes], int] | Held | Short | bool | None:
    """What cycle.lua's reply means (see `Storage.cycle`)."""
    if reply is None:
        return False
    if len(reply) == 1:  # only the thread's counts: it is empty, or nothing was asked
        return None
    if len(reply) == 5:  # held back by a control: '', kind, value, now, counts
        _, kind, value, now, _ = reply
        if kind == b"short":
            return Short(int(value), float(now))
        return Held(float(value), paused=kind == b"paused")
    order, payloads, losses, _ = reply
    return order.decode(), payloads, int(losses)


def not_replicated(count: int, acked: int, replicas: int, timeout: float) -> StorageError:
    """The error of a registration whose writes fewer than ``replicas`` replicas acknowledged in time."""
    error = StorageError(
        f"only {acked} of the {replicas} replicas asked for (QUEUE_REGISTER_REPLICAS) acknowledged the "
        f"registration within {timeout:g} s: its {count} requests are stored on the primary, which a failover "
        f"may lose"
    )
    error.stored = count
    return error


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
