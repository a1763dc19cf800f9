"""The storage as the twin's loops see it: tubes, leases and the coordinator's index.

Each tube holds its messages' enqueue times (no object per message) and the
index of its first unacked message; each thread its tubes by precedence, its
lease and its place in its handler's index. The calls mirror
`sharded_queue.storage.Storage` on a single Redis, and so do their round trips
(`POLL_TRIPS`, ...): `simulator.engine` charges them.
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
    Message,
    ThreadRef,
    Tube,
    answering,
    order_key,
)
from sharded_queue.handler import declared_orders

if TYPE_CHECKING:
    from .workload import Workload

# Round trips of the storage calls on a single Redis, where each script also updates the
# handler's indexes (on a cluster the indexes live in another slot: acquire and release
# take 2 or 3 round trips there, and a cycle carrying dead letters one more).
POLL_TRIPS = 1
ACQUIRE_TRIPS = {1: 1, 0: 1, -1: 1}  # taken, empty (unindexed), held by another: one script call
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
        "answerer",
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

    def __init__(self, workloads: Sequence[Workload], processes: int = 1) -> None:
        self.peers = [str(process) for process in range(processes)]  # the worker processes, as ids
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
        heapq.heappush(thread.heap, (first if first > now else now, thread.key, thread.version, thread))
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
        """Take the lease: 1 taken, 0 thread empty (unindexed), -1 held by another loop."""
        if thread.leased:
            return -1
        if not thread.has_messages(at):
            self.reindex(thread, at)
            return 0
        thread.leased = True
        thread.version += 1
        return 1

    def release(self, thread: SimThread, at: float) -> bool:
        """Drop the lease; True when the thread still has messages."""
        thread.leased = False
        thread.released_at = at
        return self.reindex(thread, at) <= at

    def cycle(self, thread: SimThread, ack: Ack | None, limit: int, at: float) -> tuple[Batch, SimTube] | None:
        """Apply ``ack``, then fetch up to ``limit`` from the most urgent non-empty tube at ``at``."""
        if ack is not None and ack.count:
            acked = thread.by_order[ack.order]
            acked.head += ack.count
            self.acked[acked.group] += ack.count
        if limit == 0:
            return None
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
            return Batch(tube.order, size, Messages(times[head : head + size])), tube
        return None
