"""The storage as the twin's loops see it: tubes, leases and the coordinator's index.

Each tube holds its messages' enqueue times (no object per message) and the
index of its first unacked message; each thread its tubes by precedence, its
lease and its place in its handler's index. The calls mirror
`sharded_queue.storage.Storage` on a single Redis, and so do their round trips
(`POLL_TRIPS`, ...): `simulator.engine` charges them.

Of the thread controls, the two a workload sets on its handler class are
modelled as ``cycle.lua`` keeps them: the rate limits (`Buckets`: a token bucket
per thread and per handler, on the simulated clock, which cuts the batch, or holds
the thread back with the wait for a token) and the batch linger (a lingering cycle
that finds fewer than its limit fetches nothing and says how many wait). Pauses,
``RateLimited``, ``BatchFailed`` and ``max_pending`` come from operators and from
``perform``'s outcomes, which no workload describes: not modelled.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any, overload

import numpy as np

from sharded_queue.core import (
    CANDIDATES_PER_HANDLER,
    Ack,
    Batch,
    Held,
    Message,
    Rate,
    Short,
    ThreadRef,
    Tube,
    answering,
    order_key,
)
from sharded_queue.handler import check_controls, declared_orders

if TYPE_CHECKING:
    from .workload import Workload

# Round trips of the storage calls on a single Redis, where each script also updates the
# handler's indexes (on a cluster the indexes live in another slot: acquire and release
# take 2 or 3 round trips there, and a cycle carrying dead letters one more).
POLL_TRIPS = 1
ACQUIRE_TRIPS = {1: 1, 0: 1, -1: 1, -2: 1}  # taken, empty (unindexed), held by another, held back: one call
RELEASE_TRIPS = {True: 1, False: 1}  # left non-empty (shown) or emptied (unindexed): one script call
CYCLE_TRIPS = 1
DEAD_LETTER_TRIPS = 0  # the cycle script indexes the thread's dead letters itself


class Messages(Sequence[Message]):
    """A batch's messages as a view on its tube's enqueue times: no object per message.

    Behaves as the ``Sequence[Message]`` the core expects (length, slicing for
    bisection, indexing); `Message` objects are made only when indexed.
    """

    __slots__ = ("offset", "times")

    def __init__(self, times: np.ndarray, offset: int = 0) -> None:
        self.times = times
        self.offset = offset

    def __len__(self) -> int:
        return len(self.times)

    @overload
    def __getitem__(self, index: int) -> Message: ...

    @overload
    def __getitem__(self, index: slice) -> Messages: ...

    def __getitem__(self, index: int | slice) -> Message | Messages:
        if isinstance(index, slice):
            start, stop, step = index.indices(len(self.times))
            if step != 1:
                raise ValueError("Messages slices must be contiguous")
            return Messages(self.times[start:stop], self.offset + start)
        position = range(len(self.times))[index]
        return Message(self.offset + position, None, float(self.times[position]))

    def __iter__(self) -> Iterator[Message]:
        for position in range(len(self.times)):
            yield self[position]


class SimTube:
    """One tube's messages: materialised enqueue times and the index of the first unacked.

    ``times`` is a view of a buffer with spare room, so appending is amortised
    O(1). The buffer is never changed in place below its end and is replaced
    (not compacted in place) when full: a fetched batch's view stays valid.
    """

    __slots__ = ("arrived_after_warmup", "base", "buffer", "group", "head", "order", "thread", "times", "tube")

    def __init__(self, tube: Tube, thread: SimThread, group: int) -> None:
        self.tube = tube
        self.order = tube.order
        self.thread = thread
        self.group = group
        self.buffer = np.empty(16)
        self.times = self.buffer[:0]
        self.head = 0
        self.base = 0  # messages dropped from ``times`` by compaction (all acked)
        self.arrived_after_warmup = 0

    def append(self, new: np.ndarray) -> None:
        """Add arrivals (later than any present); drop acked ones when the buffer is full."""
        end = len(self.times)
        count = len(new)
        if end + count > len(self.buffer):
            live = end - self.head
            buffer = np.empty(max(2 * (live + count), 16))
            buffer[:live] = self.times[self.head :]
            self.buffer = buffer
            self.base += self.head
            self.head = 0
            end = live
        self.buffer[end : end + count] = new
        self.times = self.buffer[: end + count]

    def waiting(self, at: float) -> int:
        """Messages in the tube at time ``at`` (arrived, not acked)."""
        return int(self.times.searchsorted(at, "right")) - self.head


class SimThread:
    """One (handler, thread): its tubes by precedence, lease and place in the index."""

    __slots__ = (
        "after",
        "answerer",
        "bucket",
        "by_order",
        "heap",
        "index",
        "indexed",
        "key",
        "leased",
        "ref",
        "released_at",
        "tubes",
        "version",
    )

    def __init__(self, ref: ThreadRef, heap: list[Any], index: int) -> None:
        self.ref = ref
        self.answerer = 0  # the worker process that answers its wake-ups (`core.answering`)
        self.index = index  # position in the storage's threads
        self.heap = heap  # its handler's index
        self.key = ref.thread.encode()  # Redis breaks score ties bytewise
        self.tubes: list[SimTube] = []
        self.by_order: dict[str, SimTube] = {}
        self.leased = False
        self.version = 0
        self.released_at = -math.inf
        self.indexed = False
        self.bucket: list[float] | None = None  # its rate limit's [tokens, at], once used
        self.after = -math.inf  # not performed before (a rate limit's long wait: `core.Hold`)

    def next_arrival(self) -> float:
        """Enqueue time of the oldest unacked message (``inf`` if none materialised yet)."""
        first = math.inf
        for tube in self.tubes:
            times = tube.times
            if tube.head < len(times) and times[tube.head] < first:
                first = float(times[tube.head])
        return first

    def has_messages(self, at: float) -> bool:
        """Whether any tube holds a message at time ``at`` (its head message has arrived)."""
        for tube in self.tubes:
            times = tube.times
            if tube.head < len(times) and times[tube.head] <= at:
                return True
        return False


class SimStorage:
    """The storage as the loops see it: tubes, leases and the coordinator's index.

    The index keeps, per handler, a heap of ``(score, thread, version)``: a
    thread's score is when it became visible (its first registration after it
    was last released empty, or its release time when released non-empty),
    exactly the scores of the Redis index. Acquiring bumps the version, which
    invalidates the entry.
    """

    def __init__(
        self, workloads: Sequence[Workload], processes: int = 1, batch_sizes: dict[str, int] | None = None
    ) -> None:
        self.peers = [str(process) for process in range(processes)]  # the worker processes, as ids
        self.buckets = Buckets(workloads, batch_sizes or {})
        self.handlers = [w.name for w in workloads]
        self.declared = {w.name: declared_orders(w.handler) for w in workloads}
        self.heaps: dict[str, list[tuple[float, bytes, int, SimThread]]] = {name: [] for name in self.handlers}
        self.heap_list = list(self.heaps.values())
        self.threads: dict[ThreadRef, SimThread] = {}
        self.thread_list: list[SimThread] = []  # by index
        self.by_id: dict[int, SimThread] = {}  # by id() of its ThreadRef, the one handed to the core
        self.tubes: list[SimTube] = []
        self.tube_ids: dict[Tube, int] = {}
        self.acked = np.zeros(64, dtype=np.int64)  # per tube: messages ever acked
        self.tube_thread = np.zeros(64, dtype=np.int64)  # per tube: its thread's index

    def tube_id(self, tube: Tube) -> int:
        """Index of ``tube`` in `tubes`, creating it (and its thread) on first use."""
        found = self.tube_ids.get(tube)
        if found is not None:
            return found
        ref = tube.thread_ref
        thread = self.threads.get(ref)
        if thread is None:
            thread = self.threads[ref] = SimThread(ref, self.heaps[ref.handler], len(self.threads))
            thread.answerer = int(answering(self.peers, ref)) if len(self.peers) > 1 else 0
            self.thread_list.append(thread)
            self.by_id[id(ref)] = thread
        sim_tube = SimTube(tube, thread, len(self.tubes))
        thread.tubes.append(sim_tube)
        declared = self.declared[tube.handler]
        thread.tubes.sort(key=lambda t: order_key(t.order, declared))
        thread.by_order[tube.order] = sim_tube
        self.tubes.append(sim_tube)
        self.tube_ids[tube] = sim_tube.group
        if len(self.tubes) > len(self.acked):
            self.acked = np.concatenate((self.acked, np.zeros(len(self.acked), dtype=np.int64)))
            self.tube_thread = np.concatenate((self.tube_thread, np.zeros(len(self.tube_thread), dtype=np.int64)))
        self.tube_thread[sim_tube.group] = thread.index
        return sim_tube.group

    def reindex(self, thread: SimThread, now: float) -> float:
        """Put a thread that is not leased back in the index, visible from its next message.

        Returns the enqueue time of that message (``inf`` if none is materialised yet).
        """
        thread.version += 1
        first = thread.next_arrival()
        if first == math.inf:
            thread.indexed = False  # re-indexed when its next arrival is materialised
            return first
        thread.indexed = True
        visible = max(first, now, thread.after)  # a thread held back is hidden until then
        heapq.heappush(thread.heap, (visible, thread.key, thread.version, thread))
        return first

    def candidates(self, at: float) -> list[ThreadRef]:
        """Visible threads at time ``at``: up to 16 per handler, longest-visible first."""
        found: list[tuple[float, bytes, int, SimThread]] = []
        pop, push = heapq.heappop, heapq.heappush
        for heap in self.heap_list:
            taken: list[tuple[float, bytes, int, SimThread]] = []
            while heap and heap[0][0] <= at:
                entry = pop(heap)
                if entry[2] == entry[3].version:  # else stale: acquired or re-indexed since
                    taken.append(entry)
                    if len(taken) == CANDIDATES_PER_HANDLER:
                        break
            for entry in taken:
                push(heap, entry)
            found += taken
        if len(self.heap_list) > 1:
            found.sort(key=lambda entry: entry[0])
        return [entry[3].ref for entry in found]

    def acquire(self, thread: SimThread, at: float) -> int:
        """Take the lease: 1 taken, 0 thread empty (unindexed), -1 held by another loop, -2 held
        back (not before `SimThread.after`: hidden until then)."""
        if thread.leased:
            return -1
        if not thread.has_messages(at):
            self.reindex(thread, at)
            return 0
        if at < thread.after:
            self.reindex(thread, at)
            return -2
        thread.leased = True
        thread.version += 1
        return 1

    def release(self, thread: SimThread, at: float) -> bool:
        """Drop the lease; True when the thread still has messages."""
        thread.leased = False
        thread.released_at = at
        return self.reindex(thread, at) <= at

    def cycle(
        self, thread: SimThread, ack: Ack | None, limit: int, at: float, linger: bool = False, hold: float = 0.0
    ) -> tuple[Batch | Held | Short, SimTube | None] | None:
        """Apply ``ack``, then fetch up to ``limit`` from the most urgent non-empty tube at ``at``,
        as far as the rate limits allow (else `Held`); lingering, fetch only a full batch (else `Short`).
        ``hold``: not before ``at + hold`` (the thread is let go next)."""
        if ack is not None and ack.count:
            acked = thread.by_order[ack.order]
            acked.head += ack.count
            self.acked[acked.group] += ack.count
        if hold:
            thread.after = at + hold
        if limit == 0:
            return None
        rated = thread.ref.handler in self.buckets.rates
        if rated:
            limit, wait = self.buckets.allowed(thread, limit, at)
            if limit == 0:
                return Held(wait), None
        for tube in thread.tubes:
            times = tube.times
            head = tube.head
            end = len(times)
            if head >= end or times[head] > at:
                continue
            last = head + limit
            if last <= end and times[last - 1] <= at:  # a full batch has arrived
                size = limit
            else:
                size = int(times.searchsorted(at, "right")) - head
                size = size if size < limit else limit
            if linger and size < limit:
                return Short(size, at), None
            if rated:
                self.buckets.spend(thread, size, at)
            return Batch(tube.order, size, Messages(times[head : head + size])), tube
        return None


class Buckets:
    """The rate limits' token buckets, as ``cycle.lua`` keeps them, on the simulated clock.

    A handler's ``rate_limit`` is one bucket for all its threads, its
    ``thread_rate_limit`` one per thread; each refills at its rate up to
    `sharded_queue.core.Rate.capacity` (a fresh one is full), and a batch takes
    no more than both hold.
    """

    def __init__(self, workloads: Sequence[Workload], batch_sizes: dict[str, int]) -> None:
        self.rates: dict[str, tuple[Rate | None, Rate | None]] = {}
        self.sizes: dict[str, int] = {}
        self.handler_buckets: dict[str, list[float]] = {}
        for workload in workloads:
            rates = check_controls(workload.handler)
            if rates != (None, None):
                self.rates[workload.name] = rates
                self.sizes[workload.name] = batch_sizes.get(workload.name, 128)

    def allowed(self, thread: SimThread, limit: int, at: float) -> tuple[int, float]:
        """How many of ``limit`` the buckets allow at ``at``, and (when none) the seconds until one."""
        wait = 0.0
        for rate, bucket in self._buckets(thread):
            tokens = _refilled(bucket, rate, self.sizes[thread.ref.handler], at)
            limit = min(limit, math.floor(tokens))
            if tokens < 1:  # as cycle.lua: to the next microsecond, so the cycle after the wait finds one
                wait = max(wait, math.ceil((1 - tokens) / rate.per_second * 1e6 + 1) / 1e6)
        return max(limit, 0), wait

    def spend(self, thread: SimThread, used: int, at: float) -> None:
        """Take ``used`` tokens out of the buckets of ``thread`` at ``at``."""
        for rate, bucket in self._buckets(thread):
            bucket[0] = _refilled(bucket, rate, self.sizes[thread.ref.handler], at) - used
            bucket[1] = at

    def _buckets(self, thread: SimThread) -> list[tuple[Rate, list[float]]]:
        handler = thread.ref.handler
        whole, each = self.rates[handler]
        found = []
        if each is not None:
            if thread.bucket is None:
                thread.bucket = [math.nan, math.nan]
            found.append((each, thread.bucket))
        if whole is not None:
            found.append((whole, self.handler_buckets.setdefault(handler, [math.nan, math.nan])))
        return found


def _refilled(bucket: list[float], rate: Rate, batch_size: int, at: float) -> float:
    """The tokens a bucket ``[tokens, at]`` holds at ``at`` (a fresh one, ``nan``, is full)."""
    size = rate.capacity(batch_size)
    if math.isnan(bucket[0]):
        return float(size)
    return min(size, bucket[0] + max(0.0, at - bucket[1]) * rate.per_second)
