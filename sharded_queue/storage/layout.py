"""Where a handler's indexes and counts live, as two strategies: `SingleServer` and `Cluster`.

A thread's keys share one hash tag, so each thread script is single-slot; a
handler's indexes (of non-empty threads, of threads with dead letters, of
threads with something due) and counts (``keys.Keys.counts``) are keyed by the
handler alone. On one server a thread script is passed those keys too and
updates them atomically, in the same call. On a cluster they live in another
slot, so the thread script runs alone and the strategy follows up: with
``index.lua``, an append is indexed after it is written, and an empty thread is
removed, re-checked and re-added if a registration raced in, so no message is
ever stranded outside the index; with ``counts.lua``, the thread's counts that
the script returned are applied to the handler's (see the keys' docstring for
what a crash between the two does).

`Storage` picks one strategy at construction and calls it where the two differ;
both have the same methods, taking durations in milliseconds (`scripts.ms`).
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from typing import Any

from ..core import ThreadRef
from .keys import Keys
from .protocol import TubeWrite
from .scripts import Scripts


class Layout(abc.ABC):
    """The script calls that touch a handler's indexes, for one kind of deployment.

    Args:
        client: The redis-py client the scripts are registered on.
        keys: The key schema.
        scripts: The registered scripts, and how to run them.
        stamp_window: Seconds a registration's stamp is kept (`Storage`).
    """

    transaction: bool
    """Whether a pipeline of one slot's keys may be a MULTI transaction (not on redis-py's cluster)."""

    def __init__(self, client: Any, keys: Keys, scripts: Scripts, stamp_window: int) -> None:
        self._client = client
        self._keys = keys
        self._stamp_window = stamp_window
        self._eval = scripts.eval
        self._eval_waiting = scripts.eval_waiting
        self._on_nodes = scripts.on_nodes
        self._pipeline = scripts.pipeline
        self._push = scripts.push
        self._acquire = scripts.acquire
        self._renew = scripts.renew
        self._release = scripts.release
        self._index = scripts.index
        self._unschedule = scripts.unschedule
        self._eval_all = scripts.eval_all
        self._dead = scripts.dead
        self._tally = scripts.tally
        self._counts = scripts.counts

    @abc.abstractmethod
    async def push(
        self,
        handler: str,
        writes: Sequence[TubeWrite],
        wake: bytes,
        stamp: str,
        replicas: int,
        timeout: int,
        cap: int | None = None,
    ) -> tuple[int, int, tuple[str, int] | None]:
        """Append ``writes`` (stamped ``stamp``), index their threads, publish ``wake``.

        With ``replicas``, ``WAIT`` up to ``timeout`` ms for that many replicas to
        have the writes. With ``cap`` (``max_pending``), a thread that would hold
        more than that many requests refuses its writes. Returns how many envelopes
        were appended, how many replicas acknowledged them (``replicas`` itself
        when none were asked for), and the (thread, depth) of a thread that refused.
        """

    @abc.abstractmethod
    async def acquire(self, ref: ThreadRef, token: str, ttl: int) -> Any:
        """Take the lease for ``ttl`` ms and hide the thread meanwhile; acquire.lua's reply."""

    @abc.abstractmethod
    async def renew(self, ref: ThreadRef, token: str, ttl: int) -> Any:
        """Extend our lease by ``ttl`` ms, keeping the thread hidden; renew.lua's reply."""

    @abc.abstractmethod
    async def release(self, ref: ThreadRef, token: str) -> None:
        """Drop our lease; the thread becomes visible, or leaves the index when empty."""

    @abc.abstractmethod
    async def call(
        self,
        script: Any,
        ref: ThreadRef,
        keys: Sequence[str],
        args: Sequence[Any],
        indexes: Sequence[str] = (),
        after: Sequence[str] = (),
    ) -> Any:
        """Run a thread script that counts ``ref`` (cycle, due, fire: the last item of its reply
        is the thread's counts, for a cluster) with the handler's ``indexes`` it takes and its counts,
        then the handler's keys ``after`` (one server only: a cluster's are another slot)."""

    @abc.abstractmethod
    async def before_dead_letters(self, ref: ThreadRef) -> None:
        """Before a cycle.lua call that writes dead letters: index the thread's (a cluster)."""

    @abc.abstractmethod
    async def due_moved(self, ref: ThreadRef, moved: int) -> None:
        """After due.lua or fire.lua calls moved (or fired) ``moved`` requests of ``ref``: index it as they did."""

    @abc.abstractmethod
    async def unschedule(self, ref: ThreadRef, args: Sequence[Any]) -> tuple[int, int]:
        """unschedule.lua on ``ref``, then its due index entry re-scored: (schedules, deferred) removed."""

    @abc.abstractmethod
    async def take_dead(self, handler: str, takes: Sequence[tuple[str, Sequence[Any]]]) -> list[list[Any]]:
        """dead.lua on threads of ``handler`` (thread, arguments each: requeue or drop their oldest
        dead letters), indexed and counted; its replies."""

    @abc.abstractmethod
    async def tally(self, handler: str, threads: Sequence[str]) -> None:
        """Count ``threads`` of ``handler`` again, from what their keys hold (tally.lua)."""

    async def rebuild(self, handler: str, since: float) -> None:
        """Set ``handler``'s counts to what its threads' tallies add up to, recounted from ``since``
        (counts.lua, one call; also on a full Redis)."""
        await self._eval(self._counts, self._settling(handler), ["rebuild", repr(since)])

    @abc.abstractmethod
    async def before_subscribe(self) -> None:
        """Make the client ready for a pub/sub subscription."""

    def _counting(self, handler: str) -> tuple[str, str, str]:
        """The handler's counts, tallies and heads, as the scripts take them (lib.lua's count_thread)."""
        keys = self._keys
        return keys.counts(handler), keys.tallies(handler), keys.heads(handler)

    def _settling(self, handler: str) -> list[str]:
        """counts.lua's keys: `_counting`'s and the threads gone (versions of emptied tallies)."""
        return [*self._counting(handler), self._keys.gone(handler)]

    def _tube_arguments(self, writes: Sequence[TubeWrite], keys: list[str], args: list[Any]) -> None:
        """Append push.lua's keys and arguments of each of ``writes``."""
        schema = self._keys
        for write in writes:
            tube = write.tube
            ref = tube.thread_ref
            keys += (
                schema.tube(tube),
                schema.orders(ref),
                schema.deferred(ref),
                schema.deferred_seq(ref),
                schema.marks(tube),
                schema.recurring(ref),
                schema.schedules(ref),
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


class SingleServer(Layout):
    """One Redis (or fakeredis): the thread scripts update the handler's indexes and counts themselves, atomically."""

    transaction = True

    def __init__(self, client: Any, keys: Keys, scripts: Scripts, stamp_window: int) -> None:
        super().__init__(client, keys, scripts, stamp_window)
        self._settled: list[str] = []  # stamps of calls that returned: forgotten by the next push

    async def push(
        self,
        handler: str,
        writes: Sequence[TubeWrite],
        wake: bytes,
        stamp: str,
        replicas: int,
        timeout: int,
        cap: int | None = None,
    ) -> tuple[int, int, tuple[str, int] | None]:
        """One atomic script call: all or nothing, and a full Redis refuses it whole (`StorageFull`);
        with ``replicas``, its ``WAIT`` follows it in the same write, over the same connection."""
        schema = self._keys
        forget, self._settled = self._settled, []
        keys = [schema.stamps()]
        args: list[Any] = [stamp, self._stamp_window, schema.wake, wake, len(forget), _cap(cap), *forget]
        self._tube_arguments(writes, keys, args)
        keys += (schema.index(handler), schema.due_index(handler), *self._counting(handler))
        try:
            if replicas:
                reply, acked = await self._eval_waiting(self._push, keys, args, replicas, timeout)
            else:
                reply, acked = await self._eval(self._push, keys, args), 0
        except BaseException:
            self._settled.extend(forget)  # harmless if the call did forget them
            raise
        if int(reply[0]) < 0:  # a thread is full: nothing written, the stamp not kept
            return 0, acked, (reply[1].decode(), int(reply[2]))
        self._settled.append(stamp)
        return int(reply[0]), acked, None

    async def acquire(self, ref: ThreadRef, token: str, ttl: int) -> Any:
        """One call: acquire.lua refuses a thread held back (or whose handler is paused) and hides
        it, hides the thread taken, or unindexes it when empty, itself."""
        keys = self._keys
        return await self._eval(
            self._acquire,
            [keys.lease(ref), keys.orders(ref), keys.controls(ref), keys.index(ref.handler), keys.paused(ref.handler)],
            [token, ttl, ref.thread],
        )

    async def renew(self, ref: ThreadRef, token: str, ttl: int) -> Any:
        """One call: renew.lua keeps the thread hidden itself."""
        keys = self._keys
        return await self._eval(self._renew, [keys.lease(ref), keys.index(ref.handler)], [token, ttl, ref.thread])

    async def release(self, ref: ThreadRef, token: str) -> None:
        """One call: release.lua shows the thread, or unindexes it when empty, itself."""
        keys = self._keys
        await self._eval(
            self._release, [keys.lease(ref), keys.orders(ref), keys.index(ref.handler)], [token, ref.thread]
        )

    async def call(
        self,
        script: Any,
        ref: ThreadRef,
        keys: Sequence[str],
        args: Sequence[Any],
        indexes: Sequence[str] = (),
        after: Sequence[str] = (),
    ) -> Any:
        """One call: the script is passed the indexes and the counts, and updates them."""
        return await self._eval(script, [*keys, *indexes, *self._counting(ref.handler), *after], args)

    async def before_dead_letters(self, ref: ThreadRef) -> None:
        """Nothing to do: cycle.lua is passed the dead-letter index and marks the thread itself."""

    async def due_moved(self, ref: ThreadRef, moved: int) -> None:
        """Nothing left to do: the scripts indexed the thread."""

    async def before_subscribe(self) -> None:
        """Nothing to do: a plain client subscribes as it is."""

    async def unschedule(self, ref: ThreadRef, args: Sequence[Any]) -> tuple[int, int]:
        """One call: unschedule.lua re-scores the thread's due index entry and counts it itself."""
        keys = self._keys
        schedules, deferred, _ = await self.call(
            self._unschedule,
            ref,
            [keys.recurring(ref), keys.schedules(ref), keys.deferred(ref)],
            args,
            [keys.due_index(ref.handler)],
        )
        return int(schedules), int(deferred)

    async def take_dead(self, handler: str, takes: Sequence[tuple[str, Sequence[Any]]]) -> list[list[Any]]:
        """One round trip: dead.lua indexes each thread, prunes the dead-letter index and counts it itself."""
        keys = self._keys
        indexes = [keys.index(handler), keys.dead_index(handler), *self._counting(handler)]
        calls = []
        for thread, args in takes:
            ref = ThreadRef(handler, thread)
            calls.append((self._dead, [keys.dead(ref), keys.orders(ref), *indexes], args))
        return [list(reply) for reply in await self._eval_all(calls)] if calls else []

    async def tally(self, handler: str, threads: Sequence[str]) -> None:
        """tally.lua on each thread (pipelined), counting it in the handler's counts itself."""
        if not threads:
            return
        keys = self._keys
        counting = self._counting(handler)
        refs = [ThreadRef(handler, thread) for thread in threads]
        await self._eval_all(
            [(self._tally, [keys.orders(ref), *counting], [ref.thread, keys.thread(ref)]) for ref in refs]
        )


class Cluster(Layout):
    """A Redis Cluster: a handler's indexes and counts are another slot, kept by ``index.lua`` and
    ``counts.lua`` after each thread script."""

    transaction = False

    async def push(
        self,
        handler: str,
        writes: Sequence[TubeWrite],
        wake: bytes,
        stamp: str,
        replicas: int,
        timeout: int,
        cap: int | None = None,
    ) -> tuple[int, int, tuple[str, int] | None]:
        """Each thread's tubes are one call (pipelined per node), and the index is touched only
        once every tube is appended, which keeps a message from being stranded outside the index:
        then the index, the due index and the threads' counts, in one pipelined round trip.

        With ``replicas``, each node's calls are followed by a ``WAIT`` on their
        connection (`Scripts.on_nodes`), the index's too: its node fails over
        independently of the threads', and a thread whose index entry a failover
        lost would wait where no loop looks."""
        schema = self._keys
        by_thread: dict[str, list[TubeWrite]] = {}
        for write in writes:
            by_thread.setdefault(write.tube.thread, []).append(write)
        calls = []
        for thread, group in by_thread.items():
            keys = [schema.stamps(ThreadRef(handler, thread))]
            args: list[Any] = [stamp, self._stamp_window, "", "", 0, _cap(cap)]
            self._tube_arguments(group, keys, args)
            calls.append(("EVALSHA", self._push.sha, len(keys), *keys, *args))
        if replicas:
            replies, acked = await self._on_nodes(calls, replicas, timeout)
        else:
            replies, acked = await self._pipeline(lambda pipe: [pipe.execute_command(*call) for call in calls]), 0
        full = next(((reply[1].decode(), int(reply[2])) for reply in replies if int(reply[0]) < 0), None)
        if full is not None:  # a full thread wrote nothing; the others' writes stand
            kept = [(item, reply) for item, reply in zip(by_thread.items(), replies, strict=True) if int(reply[0]) >= 0]
            by_thread = dict(item for item, _ in kept)
            replies = [reply for _, reply in kept]
        queued = [
            thread
            for (thread, group), (_, _, moved, _) in zip(by_thread.items(), replies, strict=True)
            if moved or any(write.immediate for write in group)
        ]
        follow: list[tuple[Any, list[str], list[Any]]] = []
        if queued:
            follow.append((self._index, [schema.index(handler)], ["add", 0, *queued]))
        follow += (
            (self._index, [schema.due_index(handler)], ["at", due, thread])
            for thread, (_, due, _, _) in zip(by_thread, replies, strict=True)
            if due
        )
        counted = [item for *_, counts in replies for item in counts]
        if counted:
            follow.append((self._counts, self._settling(handler), ["apply", *counted]))
        if replicas and follow:
            commands = [("EVALSHA", script.sha, len(keys), *keys, *args) for script, keys, args in follow]
            acked = min(acked, (await self._on_nodes(commands, replicas, timeout))[1])
        elif follow:
            await self._eval_all(follow)
        await self._client.publish(schema.wake, wake)
        return sum(int(count) for count, *_ in replies), acked, full

    async def _settle(self, handler: str, counted: Sequence[Any]) -> None:
        """Apply threads' counts returned by a thread script to the handler's (counts.lua)."""
        if counted:
            await self._eval(self._counts, self._settling(handler), ["apply", *counted])

    async def acquire(self, ref: ThreadRef, token: str, ttl: int) -> Any:
        """acquire.lua, then index.lua hides the thread taken, unless its handler is paused (then the
        lease goes back, and the thread stays hidden until the pause ends); a thread held back by its
        controls is hidden until then; an empty one is unindexed."""
        keys = self._keys
        index = keys.index(ref.handler)
        taken = await self._eval(self._acquire, [keys.lease(ref), keys.orders(ref), keys.controls(ref)], [token, ttl])
        if taken == 1:
            hidden = await self._eval(self._index, [index, keys.paused(ref.handler)], ["take", ttl, ref.thread])
            if isinstance(hidden, list):  # the handler is paused: let go at once
                await self._eval(self._release, [keys.lease(ref), keys.orders(ref)], [token])
                return hidden
        elif taken == 0:
            await self._unindex(ref)
        elif isinstance(taken, list):
            await self._eval(self._index, [index], ["until", taken[1], ref.thread])
        return taken

    async def renew(self, ref: ThreadRef, token: str, ttl: int) -> Any:
        """renew.lua, then index.lua keeps the thread hidden."""
        keys = self._keys
        renewed = await self._eval(self._renew, [keys.lease(ref)], [token, ttl])
        if renewed:
            await self._eval(self._index, [keys.index(ref.handler)], ["hide", ttl, ref.thread])
        return renewed

    async def release(self, ref: ThreadRef, token: str) -> None:
        """release.lua, then the thread is unindexed (empty) or shown (free of any lease)."""
        keys = self._keys
        left, free = await self._eval(self._release, [keys.lease(ref), keys.orders(ref)], [token])
        if not left:
            await self._unindex(ref)
        elif free:
            await self._eval(self._index, [keys.index(ref.handler)], ["show", 0, ref.thread])

    async def call(
        self,
        script: Any,
        ref: ThreadRef,
        keys: Sequence[str],
        args: Sequence[Any],
        indexes: Sequence[str] = (),
        after: Sequence[str] = (),
    ) -> Any:
        """The script alone, then the counts it returned applied (`due_moved` follows up on the indexes)."""
        reply = await self._eval(script, keys, args)
        if reply:
            await self._settle(ref.handler, reply[-1])
        return reply

    async def before_dead_letters(self, ref: ThreadRef) -> None:
        """Mark the thread first, with index.lua: pruning (`take_dead`) removes only threads it saw empty."""
        await self._eval(self._index, [self._keys.dead_index(ref.handler)], ["add", 0, ref.thread])

    async def due_moved(self, ref: ThreadRef, moved: int) -> None:
        """Index the thread if requests were moved, and re-score its due index entry."""
        if moved:
            await self._eval(self._index, [self._keys.index(ref.handler)], ["add", 0, ref.thread])
        await self._reindex_due(ref)

    async def unschedule(self, ref: ThreadRef, args: Sequence[Any]) -> tuple[int, int]:
        """unschedule.lua, then the thread's due index entry is re-scored and its counts applied."""
        keys = self._keys
        schedules, deferred, _ = await self.call(
            self._unschedule, ref, [keys.recurring(ref), keys.schedules(ref), keys.deferred(ref)], args
        )
        await self._reindex_due(ref)
        return int(schedules), int(deferred)

    async def take_dead(self, handler: str, takes: Sequence[tuple[str, Sequence[Any]]]) -> list[list[Any]]:
        """dead.lua on each thread (pipelined over the nodes), then the threads given messages are
        indexed, those left without dead letters leave the dead-letter index (removed, re-checked,
        re-added if one landed meanwhile), and their counts are applied."""
        if not takes:
            return []
        keys = self._keys
        refs = [ThreadRef(handler, thread) for thread, _ in takes]
        replies = [
            list(reply)
            for reply in await self._eval_all(
                [
                    (self._dead, [keys.dead(ref), keys.orders(ref)], args)
                    for ref, (_, args) in zip(refs, takes, strict=True)
                ]
            )
        ]
        done = [(ref, reply) for ref, reply in zip(refs, replies, strict=True) if int(reply[0]) >= 0]
        queued = [ref.thread for ref, (_, _, requeued, _) in done if int(requeued)]
        if queued:
            await self._eval(self._index, [keys.index(handler)], ["add", 0, *queued])
        empty = [ref for ref, (_, left, _, _) in done if not int(left)]
        if empty:
            index = keys.dead_index(handler)
            await self._client.zrem(index, *(ref.thread for ref in empty))
            again = await self._pipeline(lambda pipe: [pipe.llen(keys.dead(ref)) for ref in empty])
            back = [ref.thread for ref, left in zip(empty, again, strict=True) if left]
            if back:
                await self._eval(self._index, [index], ["add", 0, *back])
        await self._settle(handler, [item for *_, counted in replies for item in counted])
        return replies

    async def tally(self, handler: str, threads: Sequence[str]) -> None:
        """tally.lua on each thread (pipelined over the nodes), then their counts applied at once."""
        if not threads:
            return
        keys = self._keys
        refs = [ThreadRef(handler, thread) for thread in threads]
        replies = await self._eval_all(
            [(self._tally, [keys.orders(ref)], [ref.thread, keys.thread(ref)]) for ref in refs]
        )
        await self._settle(handler, [item for (counted,) in replies for item in counted])

    async def before_subscribe(self) -> None:
        """Initialize the client: a cluster pub/sub needs the slot map first."""
        await self._client.initialize()

    async def _unindex(self, ref: ThreadRef) -> None:
        """Remove an empty thread from the index, safely against a racing register."""
        index = self._keys.index(ref.handler)
        await self._client.zrem(index, ref.thread)
        if await self._client.zcard(self._keys.orders(ref)):
            await self._eval(self._index, [index], ["add", 0, ref.thread])

    async def _reindex_due(self, ref: ThreadRef) -> None:
        """Score the due index entry of ``ref`` by its earliest due: remove, re-check, re-add
        (a registration racing with this keeps its own, lower, score)."""
        keys = self._keys
        index = keys.due_index(ref.handler)
        await self._client.zrem(index, ref.thread)
        deferred, recurring = await self._pipeline(
            lambda pipe: [
                pipe.zrange(keys.deferred(ref), 0, 0, withscores=True),
                pipe.zrange(keys.recurring(ref), 0, 0, withscores=True),
            ]
        )
        scores = [score for _, score in (*deferred, *recurring)]
        if scores:
            await self._eval(self._index, [index], ["at", repr(min(scores)), ref.thread])


def _cap(cap: int | None) -> str:
    """push.lua's max pending argument: '' for none."""
    return "" if cap is None else str(cap)
