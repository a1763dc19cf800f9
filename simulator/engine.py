"""The simpy twin of the worker: `sharded_queue.core.worker_program`, driven in simulated time.

Each worker loop is a simpy process that runs the *same generator* as the
asyncio `Worker` and carries its effects out against a model of the storage:

======================  ==========================================================
effect                  how the simulator carries it out
======================  ==========================================================
``Poll``                visible threads (messages, no lease), longest-visible first,
                        up to 16 per handler, like `Storage.candidates`; 1 round trip
``Acquire``             take the lease (and hide the thread in the index, or unindex it
                        when empty); 1 round trip
``Cycle``               ack ``count`` from the head of the ``order`` tube, then fetch up
                        to ``limit`` from the most urgent non-empty order; 1 round trip
``Perform``             the service time of the batch (`Service`), then maybe a failure; past
                        the handler's ``timeout`` (``QUEUE_PERFORM_TIMEOUT``) it fails then
``Wait``                a pause; a *wakeable* one ends early at the wake-up of the next
                        registration (pub/sub: a round trip after it, and the storage
                        server's time to run it)
``Begin`` / ``End``     bind / release; release is 1 round trip
======================  ==========================================================

Round-trip counts mirror `sharded_queue.storage.Storage` on a single Redis. A storage call's
effect happens at once, at its first round trip's server time (half a round
trip after it is sent), then the loop waits for the rest of its round trips.
With `Scenario.storage_cpu` the server is busy for that long per command, one
command at a time (`simulator.cpu.StorageServer`): the loop also waits for the
commands queued there before its own, registrations included.

Arrivals cost no events: they are generated in bulk, routed, and appended to
the tubes ahead of simulated time; a tube knows what has arrived at time ``t``
by binary search. So events happen per batch and per coordinator poll, never
per message.

Two deliberate differences from the asyncio worker, both invisible when the
round trip is 0:

* Without round trip and library CPU (the textbook queues), a wakeable
  ``Wait(0)`` (``coordinator_delay=0`` or ``worker_empty_pause=0``) waits
  *until woken* by the next registration. The real worker re-polls at once,
  i.e. busy-polls Redis, and so does the twin when a poll takes time; with
  neither it would spin forever at one instant. An idle loop finds new work
  at the same moment either way.
* Lease heartbeats and lease expiry are not modelled (no loop crashes), so
  ``lease_ttl`` has no effect.
"""

from __future__ import annotations

import gc
import heapq
import math
import random
import time
from collections.abc import Iterator, Sequence
from typing import Any, overload

import numpy as np
import simpy

from sharded_queue.core import (
    CANDIDATES_PER_HANDLER,
    Ack,
    Acquire,
    Batch,
    Begin,
    Cycle,
    End,
    Message,
    Perform,
    Poll,
    PollResult,
    ThreadRef,
    Tube,
    Wait,
    answering,
    worker_program,
)
from sharded_queue.handler import declared_orders

from .cpu import REGISTER_COMMANDS, Cores, Cpu, PauseSchedule, StorageServer
from .record import Recorder
from .result import Result
from .routing import route_positions
from .scenario import Scenario, Workload, finite_replay
from .wake import LoopState, SimProcess, Wakeups
from .workload import Fixed, Generated, Keyed, Noise, ScenarioError, ServiceSampler

# Round trips of each `sharded_queue.storage.Storage` call, by outcome.
# Round trips of the storage calls on a single Redis, where each script also updates the
# handler's indexes (on a cluster the indexes live in another slot: acquire and release
# take 2 or 3 round trips there, and a cycle carrying dead letters one more).
POLL_TRIPS = 1
ACQUIRE_TRIPS = {1: 1, 0: 1, -1: 1}  # taken, empty (unindexed), held by another: one script call
RELEASE_TRIPS = {True: 1, False: 1}  # left non-empty (shown) or emptied (unindexed): one script call
CYCLE_TRIPS = 1
DEAD_LETTER_TRIPS = 0  # the cycle script indexes the thread's dead letters itself


_EMPTY = np.empty(0)


class RoundTrips:
    """Round-trip times: the mean times a unit-mean noise factor, drawn in blocks."""

    BLOCK = 4096

    def __init__(self, mean: float, noise: Noise, seed: np.random.SeedSequence) -> None:
        self.mean = mean
        self.noise = noise
        self.rng = np.random.default_rng(seed)
        self.factors: list[float] = []

    def next(self) -> float:
        """The next storage call's round trip."""
        if not self.factors:
            self.factors = (self.noise.sample(self.rng, self.BLOCK) * self.mean).tolist()
        return self.factors.pop()


class SimulatedFailure(Exception):
    """What a simulated ``perform`` raises (see `Service.failure_rate`)."""


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
        from sharded_queue.core import order_key

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


class Feed:
    """Materialises arrivals ahead of simulated time: generated, routed, appended to tubes.

    Every arrival with enqueue time up to `frontier` is in its tube; `ensure`
    moves the frontier on, one bulk step at a time.
    """

    def __init__(self, scenario: Scenario, storage: SimStorage, seeds: Sequence[np.random.SeedSequence]) -> None:
        workloads: Sequence[Workload] = scenario.workloads  # type: ignore[assignment]
        self.storage = storage
        self.sources = [Source(w, storage, np.random.default_rng(s)) for w, s in zip(workloads, seeds, strict=True)]
        self.until = math.inf if scenario.duration is None else scenario.duration
        self.remaining = scenario.messages
        self.warmup = scenario.warmup
        self.frontier = -math.inf
        self.exhausted = False
        self.total = 0
        self.last = -math.inf
        self.wake = np.empty(0)  # enqueue times of materialised arrivals not yet dropped, sorted
        self.wake_tubes = np.empty(0, dtype=np.int64)  # the tube of each
        self.wake_threads = np.empty(0, dtype=np.int64)  # the thread (index) of each
        self.dropped = np.zeros(0, dtype=np.int64)  # per tube: arrivals dropped from ``wake``
        self.low_water = lambda: -math.inf  # earliest wake-up lookup any loop may still make
        # One `Queue.register` call gives its requests one enqueue time: arrivals sharing one are
        # one registration, which wakes an idle loop per thread it touches (`Worker._on_wake`).

    def ensure(self, at: float) -> None:
        """Make sure every arrival up to time ``at`` is in its tube."""
        while self.frontier < at and not self.exhausted:
            self.step()

    def step(self) -> None:
        """Generate, route and append the next window of arrivals."""
        sources = self.sources
        for source in sources:
            source.pull()
        window = min(source.horizon() for source in sources)
        taken = [source.take(window) for source in sources]
        if self.until < math.inf:
            taken = [times[: int(times.searchsorted(self.until, "left"))] for times in taken]
            if window >= self.until:
                self.exhausted = True
        count = sum(len(times) for times in taken)
        if self.remaining is not None and count >= self.remaining:
            taken = self._first(taken, self.remaining)
            count = self.remaining
            self.exhausted = True
        if window == math.inf:
            self.exhausted = True
        if self.remaining is not None:
            self.remaining -= count
        touched: set[SimThread] = set()
        fresh: list[tuple[np.ndarray, np.ndarray]] = []
        for source, times in zip(sources, taken, strict=True):
            if len(times):
                fresh.append((times, source.deliver(times, self.warmup, touched)))
                self.last = max(self.last, float(times[-1]))
        for thread in touched:
            if not thread.leased and not thread.indexed:
                self.storage.reindex(thread, thread.released_at)
        self.total += count
        if fresh:
            self._remember(fresh)
        # Arrivals at exactly ``window`` may continue in a source's next chunk.
        self.frontier = math.inf if self.exhausted else float(np.nextafter(window, -math.inf))

    def _remember(self, fresh: list[tuple[np.ndarray, np.ndarray]]) -> None:
        """Append new arrivals to the time-ordered arrays, dropping those no loop can still ask about."""
        if len(fresh) == 1:
            times, tubes = fresh[0]
        else:
            all_times = np.concatenate([t for t, _ in fresh])
            order = np.argsort(all_times, kind="stable")
            times, tubes = all_times[order], np.concatenate([i for _, i in fresh])[order]
        drop = int(self.wake.searchsorted(self.low_water(), "left"))
        if drop:
            dropped = np.bincount(self.wake_tubes[:drop], minlength=len(self.storage.tubes))
            if len(self.dropped) < len(dropped):
                self.dropped = np.concatenate((self.dropped, np.zeros(len(dropped) - len(self.dropped), np.int64)))
            self.dropped[: len(dropped)] += dropped
        threads = self.storage.tube_thread[tubes]
        self.wake = np.concatenate((self.wake[drop:], times))
        self.wake_tubes = np.concatenate((self.wake_tubes[drop:], tubes))
        self.wake_threads = np.concatenate((self.wake_threads[drop:], threads))

    def passes(self, process: SimProcess) -> np.ndarray:
        """By thread index: whether a registration on it passes ``process``'s idle loops by,
        because one of its loops holds the thread or another process answers for it
        (`sharded_queue.core.answering`, as `Worker.answers`)."""
        threads = self.storage.thread_list
        count = len(threads)
        if len(process.bound_mask) < count:
            process.bound_mask = np.concatenate((process.bound_mask, np.zeros(count, dtype=bool)))
        if len(self.storage.peers) == 1:
            return process.bound_mask
        if len(process.others) < count:
            process.others = np.array([thread.answerer != process.index for thread in threads])
        return process.bound_mask[: len(process.others)] | process.others

    def next_on_thread(self, thread: SimThread, at: float) -> float:
        """Enqueue time of the first materialised arrival on ``thread`` after ``at``."""
        first = math.inf
        for tube in thread.tubes:
            times = tube.times
            position = int(times.searchsorted(at, "right"))
            if position < len(times) and times[position] < first:
                first = float(times[position])
        return first

    def next_unheld(self, process: SimProcess, at: float) -> float:
        """Enqueue time of the first materialised arrival after ``at`` on a thread
        that no loop of ``process`` holds."""
        threads = self.storage.thread_list
        if len(threads) - len(process.bound) <= 32:  # few candidates: ask each
            first = math.inf
            for thread in threads:
                if thread not in process.bound and thread.answerer == process.index:
                    first = min(first, self.next_on_thread(thread, at))
            return first
        held = self.passes(process)
        owners = self.wake_threads
        position = int(self.wake.searchsorted(at, "right"))
        end = len(owners)
        while position < end:  # most arrivals are on threads nobody holds: a short scan
            free = ~held[owners[position : position + 64]]
            if free.any():
                return float(self.wake[position + int(np.argmax(free))])
            position += 64
        return math.inf

    def next_touch(self, process: SimProcess, at: float, count: int) -> float:
        """Enqueue time of the registration after ``at`` that brings the ``count``-th touch of a
        thread no loop of ``process`` holds (one touch per registration and thread): the one
        that wakes the ``count``-th of its idle loops not woken yet."""
        if count == 1:
            return self.next_unheld(process, at)
        found = self.touches(process, at, count)
        return found[-1] if len(found) == count else math.inf

    def touches(self, process: SimProcess, at: float, count: int) -> list[float]:
        """Enqueue times of the first ``count`` touches after ``at`` of threads no loop of
        ``process`` holds (fewer when the materialised arrivals have fewer): `next_touch` of
        1, 2, ... ``count`` in one scan."""
        held = self.passes(process)
        owners, times = self.wake_threads, self.wake
        position, end = int(times.searchsorted(at, "right")), len(owners)
        found: list[float] = []
        touched: set[int] = set()  # threads of the registration at ``last``
        last = math.nan
        step = 16  # a few first (usually enough), then growing chunks, skipping passed threads in numpy
        while position < end:
            chunk = owners[position : position + step]
            for offset in np.flatnonzero(~held[chunk]).tolist() if step > 16 else range(len(chunk)):
                thread = int(chunk[offset])
                if held[thread]:
                    continue
                time = float(times[position + offset])
                if time != last:
                    last, touched = time, set()
                if thread not in touched:
                    touched.add(thread)
                    found.append(time)
                    if len(found) == count:
                        return found
            position, step = position + step, step * 4
        return found

    def registrations(self, after: float, until: float) -> np.ndarray:
        """Distinct enqueue times in ``(after, until]``: one `Queue.register` call, one wake-up message each."""
        if self.frontier < until:
            self.ensure(until)
        wake = self.wake
        low = int(wake.searchsorted(after, "right"))
        high = int(wake.searchsorted(until, "right"))
        if high <= low:
            return _EMPTY
        times = wake[low:high]
        if high - low == 1:
            return times
        first = np.empty(high - low, dtype=bool)  # in order: the distinct ones are where the time changes
        first[0] = True
        np.not_equal(times[1:], times[:-1], out=first[1:])
        return times[first]

    def next_registration(self, since: float, before: float) -> float:
        """The first enqueue time at or after ``since`` if it comes before ``before``, else ``inf``."""
        if self.frontier < before:
            self.ensure(before)
        position = int(self.wake.searchsorted(since, "left"))
        if position < len(self.wake) and self.wake[position] < before:
            return float(self.wake[position])
        return math.inf

    def arrived(self, at: float) -> np.ndarray:
        """Per tube: arrivals with enqueue time at most ``at`` (not before any loop's last wake-up lookup)."""
        self.ensure(at)
        count = len(self.storage.tubes)
        upto = int(self.wake.searchsorted(at, "right"))
        arrived = np.bincount(self.wake_tubes[:upto], minlength=count)
        arrived[: len(self.dropped)] += self.dropped
        return arrived

    @staticmethod
    def _first(taken: list[np.ndarray], count: int) -> list[np.ndarray]:
        """The first ``count`` arrivals over all sources, in time order (ties by source order)."""
        owner = np.concatenate([np.full(len(times), i) for i, times in enumerate(taken)])
        order = np.argsort(np.concatenate(taken), kind="stable")[:count]
        kept = np.bincount(owner[order], minlength=len(taken))
        return [times[:k] for times, k in zip(taken, kept, strict=True)]


class Source:
    """One workload's arrivals and requests, routed by its handler's real ``route()``."""

    def __init__(self, workload: Workload, storage: SimStorage, rng: np.random.Generator) -> None:
        self.workload = workload
        self.storage = storage
        self.name = workload.name
        self.declared = declared_orders(workload.handler)
        arrival_seed, key_seed = rng.spawn(2)
        self.chunks = workload.arrivals.chunks(arrival_seed)
        self.key_rng = key_seed
        self.pending = np.empty(0)
        self.last_pulled = -math.inf
        self.done = False
        self.drawn = 0
        requests = workload.requests
        self.key_tubes = np.full(requests.keys.n, -1, dtype=np.int64) if isinstance(requests, Keyed) else None

    def pull(self) -> None:
        """Generate the next chunk if nothing is pending."""
        while not len(self.pending) and not self.done:
            try:
                chunk = np.asarray(next(self.chunks), dtype=np.float64)
            except StopIteration:
                self.done = True
                return
            if not np.isfinite(chunk).all():
                raise ScenarioError(f"arrivals of {self.name} produced a non-finite time")
            if len(chunk) and chunk[0] < self.last_pulled:
                raise ScenarioError(f"arrivals of {self.name} went back in time")
            self.pending = chunk
            if len(chunk):
                self.last_pulled = float(chunk[-1])

    def horizon(self) -> float:
        """Time up to which this source's arrivals are all generated."""
        if len(self.pending):
            return float(self.pending[-1])
        return math.inf if self.done else -math.inf

    def take(self, window: float) -> np.ndarray:
        """Pending arrivals up to ``window``."""
        cut = int(self.pending.searchsorted(window, "right"))
        taken, self.pending = self.pending[:cut], self.pending[cut:]
        return taken

    def deliver(self, times: np.ndarray, warmup: float, touched: set[SimThread]) -> np.ndarray:
        """Route the requests of these arrivals, append them to their tubes; return their tube ids."""
        tube_ids = self._route(len(times))
        tubes = self.storage.tubes
        if len(tube_ids) and (tube_ids == tube_ids[0]).all():
            self._append(tubes[int(tube_ids[0])], times, warmup, touched)
            return tube_ids
        narrow = tube_ids.astype(np.int16) if len(tubes) < 1 << 15 else tube_ids  # stable sort of int16: radix
        order = np.argsort(narrow, kind="stable")
        ordered = tube_ids[order]
        cuts = np.flatnonzero(ordered[1:] != ordered[:-1]) + 1
        for begin, end in zip(np.concatenate(([0], cuts)), np.concatenate((cuts, [len(ordered)])), strict=True):
            self._append(tubes[int(ordered[begin])], times[order[begin:end]], warmup, touched)
        return tube_ids

    @staticmethod
    def _append(tube: SimTube, times: np.ndarray, warmup: float, touched: set[SimThread]) -> None:
        tube.append(times)
        tube.arrived_after_warmup += len(times) - int(times.searchsorted(warmup, "left"))
        touched.add(tube.thread)

    def _route(self, count: int) -> np.ndarray:
        requests = self.workload.requests
        if isinstance(requests, Generated):
            made = list(requests.make(self.key_rng, count))
            if len(made) != count:
                raise ScenarioError(f"Generated requests of {self.name} made {len(made)} requests, not {count}")
            return self._tubes_of(made)
        assert self.key_tubes is not None
        keys = requests.keys.sample(self.key_rng, self.drawn, count)
        self.drawn += count
        tube_ids = self.key_tubes[keys]
        missing = tube_ids < 0
        if missing.any():
            new_keys = np.unique(keys[missing])
            self.key_tubes[new_keys] = self._tubes_of([requests.request(int(key)) for key in new_keys])
            tube_ids = self.key_tubes[keys]
        return tube_ids

    def _tubes_of(self, requests: Sequence[Any]) -> np.ndarray:
        grouped = route_positions(self.workload.handler, self.name, self.declared, requests)
        tube_ids = np.empty(len(requests), dtype=np.int64)
        for tube, positions in grouped.items():
            tube_ids[positions] = self.storage.tube_id(tube)
        return tube_ids


class Simulation:
    """One run of a `Scenario`: the storage model, the feed and the worker loops."""

    def __init__(self, scenario: Scenario) -> None:
        self.scenario = scenario
        self.env = simpy.Environment()
        workloads: Sequence[Workload] = scenario.workloads  # type: ignore[assignment]
        root = np.random.SeedSequence(scenario.seed)
        feed_seed, service_seed, loop_seed, rtt_seed, pause_seed = root.spawn(5)
        self.storage = SimStorage(workloads, scenario.processes)
        self.feed = Feed(scenario, self.storage, feed_seed.spawn(len(workloads)))
        service_rngs = [np.random.default_rng(s) for s in service_seed.spawn(len(workloads))]
        self.samplers = {w.name: ServiceSampler(w.service, rng) for w, rng in zip(workloads, service_rngs, strict=True)}
        self.loop_seeds = [int(s.generate_state(1)[0]) for s in loop_seed.spawn(scenario.loops)]
        self.policy = scenario.policy()
        self.rtt = scenario.rtt
        noisy = scenario.rtt and not isinstance(scenario.rtt_noise, Fixed)
        self.round_trips = RoundTrips(scenario.rtt, scenario.rtt_noise, rtt_seed) if noisy else None
        self.recorder = Recorder(keep=scenario.trace, warmup=scenario.warmup)
        self.taken = 0
        self.dead = 0
        self.done = self.env.event()
        self.processes = [SimProcess(i) for i in range(scenario.processes)]
        self.loops = [LoopState(i, self.processes[i % scenario.processes]) for i in range(scenario.loops)]
        for loop in self.loops:
            loop.process.loops.append(loop)
        self.samples: list[tuple[float, np.ndarray, np.ndarray]] = []
        half = scenario.rtt / 2
        # A wake-up message is published by the storage server once it has run the registration
        # (`REGISTER_COMMANDS`, without the queue there), then travels on to the worker processes.
        delivery = scenario.rtt + REGISTER_COMMANDS * scenario.storage_cpu
        self.wakeups = Wakeups(self.env, self.feed, delivery, self.processes)
        self.feed.low_water = lambda: min(loop.armed_at for loop in self.loops) - delivery
        self.target = _target(scenario)
        self.overhead = scenario.overhead
        paused = not scenario.pauses.none
        # Without library CPU, CPU in perform or pauses, loops are independent servers: skip the CPU entirely.
        self.cpu_on = not scenario.overhead.zero or any(w.service.uses_cpu for w in workloads) or paused
        # The machine's cores, when fewer than the processes may want: shared by their CPUs and the background.
        self.cores = Cores(scenario.cores) if self.cpu_on and scenario.cores is not None else None
        self.background = scenario.background if self.cores is not None else 0.0
        self.server = StorageServer(self.feed, scenario.storage_cpu, half) if scenario.storage_cpu else None
        if self.cpu_on:
            pauses = PauseSchedule(scenario.pauses, np.random.default_rng(pause_seed)) if paused else None
            for process in self.processes:
                process.cpu = Cpu(self.env, self.feed, scenario.overhead, delivery, pauses, self.cores)

    def run(self) -> Result:
        """Simulate, and return the `Result`."""
        wall = time.perf_counter()
        self.feed.ensure(0.0)  # route the first arrivals: a bad route fails before simulating
        for stats, seed in zip(self.loops, self.loop_seeds, strict=True):
            self.env.process(self._loop(stats, random.Random(seed)))
        self.env.process(self._sample())
        duration = self.scenario.duration
        # The heap (pandas, numpy, the user's objects) does not change during a run: keep
        # the cyclic garbage collector from walking it over and over (up to 30% of the time).
        gc.freeze()
        try:
            self.env.run(until=duration if duration is not None else self.done)
        finally:
            gc.unfreeze()
        end = self.env.now
        self._snapshot(end)
        return Result(self, end, time.perf_counter() - wall)

    def _finish(self, count: int) -> None:
        """Count messages taken off the tubes; a run without a duration ends when all are."""
        self.taken += count
        if self.taken >= self.target and not self.done.triggered:
            self.done.succeed()

    def _loop(self, stats: LoopState, rng: random.Random) -> Any:
        """One worker loop: run the core's program, carrying out each effect in simulated time.

        Hot path: effects that take no simulated time are answered without
        yielding to simpy; the storage is looked up by object identity. With
        CPU modelled, every effect first claims the process's CPU for its cost
        (`simulator.cpu.Cpu.claim`); the storage acts when the request is sent
        (after that CPU) plus half a round trip.
        """
        env = self.env
        storage = self.storage
        threads = storage.by_id
        feed = self.feed
        wakeups = self.wakeups
        timeout = env.timeout
        mean_rtt = self.rtt
        next_rtt = self.round_trips.next if self.round_trips is not None else None
        rtt = mean_rtt
        half = rtt / 2
        record = self.recorder.add
        samplers = self.samplers
        cpu: Cpu | None = stats.process.cpu
        claim = cpu.claim if cpu is not None else None
        costs = self.overhead
        background = self.background
        server = self.server
        # A zero wait re-polls at once, as in the Worker, when a poll takes time; else it waits for a wake-up.
        spins = bool(mean_rtt or (claim is not None and costs.poll and costs.cycle))
        program = worker_program(self.policy, None, rng)
        send = program.send
        result: Any = None
        fetched: SimTube | None = None
        owed = 0.0  # a fetch's round trip, waited together with the perform that follows it
        while True:
            effect: Any = send(result)  # dispatched on its exact type below (faster than match)
            kind = type(effect)
            if owed and (kind is not Perform or claim is not None):
                yield timeout(owed)  # with CPU, the perform's CPU is claimed when the reply is in
                owed = 0.0
            if kind is not Poll and kind is not Wait and kind is not Acquire:
                wakeups.acquired(stats, env._now)  # busy: as in the Worker, wake-ups go to another loop
            if next_rtt is not None and kind is not Wait and kind is not Begin and kind is not Perform:
                rtt = next_rtt()  # this storage call's round trip
                half = rtt / 2
            if kind is Cycle:
                now = env._now
                wakeups.arm(stats, now)
                sent = now if claim is None else claim(now, costs.cycle)
                at = sent + half
                if feed.frontier < at:
                    feed.ensure(at)
                ack = effect.ack
                reply = storage.cycle(threads[id(effect.thread)], ack, effect.limit, at)
                if reply is None:
                    result = None
                else:
                    result, fetched = reply
                trips = CYCLE_TRIPS
                if ack is not None and ack.dead:
                    self.dead += len(ack.dead)
                    self._finish(len(ack.dead))
                    trips += DEAD_LETTER_TRIPS
                wait = sent - now + trips * rtt
                if server is not None:
                    wait += server.call(at)
                if wait:
                    if reply is None:
                        yield timeout(wait)
                    else:  # the storage did its part at ``at``: nothing else happens to this loop meanwhile
                        owed = wait
            elif kind is Perform:
                messages = effect.messages
                count = len(messages)
                sampler = samplers[effect.thread.handler]
                duration, busy = sampler.draw(count)
                limit = effect.timeout
                timed_out = duration > limit
                if timed_out:  # cancelled at the timeout, or once its CPU part lets the event loop run
                    duration = max(limit, busy)
                if claim is None:
                    started = env._now + owed
                    if owed + duration > 0:
                        yield timeout(owed + duration)
                    owed = 0.0
                    finished = started + duration
                else:
                    now = env._now
                    library = costs.perform + costs.trace
                    library += (costs.decode + costs.perform_per_message + costs.trace_per_message) * count
                    done = claim(now, library + busy, busy)
                    if background:  # the other programs' share of the machine for these messages
                        self.cores.background(now, background * count)  # type: ignore[union-attr]
                    started = done - busy if cpu.pauses is None else cpu.mark  # type: ignore[union-attr]
                    waiting = duration - busy
                    if waiting > 0 and sampler.service.timer:
                        if done > now:
                            yield timeout(done - now)
                        yield cpu.sleep(done, waiting)  # type: ignore[union-attr]
                    elif done + waiting > now:
                        yield timeout(done + waiting - now)
                    # the awaiting coroutine resumes once the event loop has run what was queued before it
                    finished = claim(env._now, 0.0) if waiting > 0 else env._now
                stats.busy += finished - started
                stats.performs += 1
                if timed_out:
                    result = TimeoutError(f"perform did not finish within {limit:g} s and was cancelled")
                    stats.failures += 1
                elif sampler.failure_rate and sampler.fails():
                    result = SimulatedFailure(f"simulated failure of a batch of {count}")
                    stats.failures += 1
                else:
                    record(fetched.group, stats.index, started, finished, messages.times, busy)  # type: ignore[union-attr]
                    stats.messages += count
                    result = None
                    self.taken += count
                    if self.taken >= self.target:
                        self._finish(0)
            elif kind is Poll:
                now = env._now
                wakeups.poll(stats, now)
                stats.polls += 1
                lead = half if claim is None else claim(now, costs.poll) - now + half
                if lead:
                    yield timeout(lead)
                now = env._now
                if feed.frontier < now:
                    feed.ensure(now)
                result = PollResult(storage.candidates(now))
                rest = POLL_TRIPS * rtt - half + (server.call(now) if server is not None else 0.0)
                if rest:
                    yield timeout(rest)
            elif kind is Acquire:
                lead = half if claim is None else claim(env._now, costs.acquire) - env._now + half
                if lead:
                    yield timeout(lead)
                now = env._now
                if feed.frontier < now:
                    feed.ensure(now)
                code = storage.acquire(threads[id(effect.thread)], now)
                rest = ACQUIRE_TRIPS[code] * rtt - half + (server.call(now) if server is not None else 0.0)
                if rest:
                    yield timeout(rest)
                result = code == 1
                if result:
                    wakeups.acquired(stats, env._now)
                    if effect.wake_next:  # the program saw other threads waiting: wake another idle loop
                        wakeups.wake_idle(stats.process, env._now)
            elif kind is Wait:
                result = None
                if effect.wakeable and effect.seconds == 0 and spins:
                    pass  # as the Worker does: poll again at once (each poll costs CPU or a round trip)
                elif effect.wakeable:
                    waiting = wakeups.wait(stats, effect.seconds)
                    if waiting is not None:
                        yield waiting
                elif effect.seconds > 0:
                    yield timeout(effect.seconds)
            elif kind is Begin:
                now = env._now
                if claim is not None:
                    done = claim(now, costs.begin)
                    if done > now:
                        yield timeout(done - now)
                    now = env._now
                stats.binds += 1
                stats.bound_since = now
                wakeups.bind(stats, threads[id(effect.thread)], now)
                result = True  # a simulated start() succeeds
            elif kind is End:
                now = env._now
                wakeups.unbind(stats, now)
                lead = half if claim is None else claim(now, costs.end) - now + half
                if lead:
                    yield timeout(lead)
                now = env._now
                if feed.frontier < now:
                    feed.ensure(now)
                left = storage.release(threads[id(effect.thread)], now)
                stats.bound += now - stats.bound_since
                stats.bound_since = math.nan
                rest = RELEASE_TRIPS[left] * rtt - half + (server.call(now) if server is not None else 0.0)
                if rest:
                    yield timeout(rest)
                result = None
            else:  # pragma: no cover
                raise TypeError(f"unknown effect {effect!r}")

    def _sample(self) -> Any:
        """Sample every tube's backlog and arrivals; halve the resolution when samples pile up."""
        scenario = self.scenario
        target = scenario.backlog_samples
        if scenario.duration is not None:
            step = scenario.duration / target
        else:
            rate = sum((w.arrivals.mean_rate() or 0.0) for w in scenario.workloads)  # type: ignore[union-attr]
            guess = (scenario.messages or 0) / rate if rate else 1.0
            step = max(guess, 1e-9) / target
        while True:
            self._snapshot(self.env.now)
            if len(self.samples) >= 2 * target:
                self.samples = self.samples[::2]
                step *= 2
            yield self.env.timeout(step)

    def _snapshot(self, at: float) -> None:
        arrived = self.feed.arrived(at)
        waiting = arrived - self.storage.acked[: len(arrived)]
        if self.samples and self.samples[-1][0] == at:
            self.samples.pop()
        self.samples.append((at, waiting, arrived))


def _target(scenario: Scenario) -> float:
    """Messages after which a run without a duration is over."""
    target = math.inf if scenario.messages is None else scenario.messages
    workloads: Sequence[Workload] = scenario.workloads  # type: ignore[assignment]
    replays = [finite_replay(w.arrivals) for w in workloads]
    if all(replay is not None for replay in replays):
        target = min(target, sum(len(replay.times) for replay in replays))  # type: ignore[union-attr]
    return target


def simulate(scenario: Scenario) -> Result:
    """Run ``scenario`` and return its `Result` (trace, summary, backlog, loop stats).

    Raises:
        ScenarioError: an impossible value or a ``route()`` that returns the wrong
            thing, before anything is simulated.
        RouteError: ``route()`` did not return one `RequestRoute` per request.
    """
    if not isinstance(scenario, Scenario):
        raise ScenarioError(f"simulate() takes a Scenario, got {type(scenario).__name__}")
    return Simulation(scenario).run()
