"""The feed of arrivals: generated in bulk, routed by the handlers' real ``route()``, appended to
the tubes ahead of simulated time.

Arrivals cost no events: a tube knows what has arrived at time ``t`` by binary
search. The feed also keeps every materialised arrival in time order (its
enqueue time, tube and thread) for as long as a loop may still ask about it:
one `Queue.register` call gives its requests one enqueue time, so arrivals
sharing one are one registration, with one wake-up message
(`registrations`), which `simulator.lookups` and `simulator.wake` route.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from sharded_queue.handler import declared_orders

from .checks import ScenarioError
from .requests import Generated, Keyed
from .routing import route_positions

if TYPE_CHECKING:
    from .scenario import Scenario
    from .storage_model import SimStorage, SimThread, SimTube
    from .workload import Workload

_EMPTY = np.empty(0)


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

    def registration_calls(self, after: float, until: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The `registrations` in ``(after, until]``, and each one's requests and distinct threads."""
        if self.frontier < until:
            self.ensure(until)
        wake = self.wake
        low = int(wake.searchsorted(after, "right"))
        high = int(wake.searchsorted(until, "right"))
        if high <= low:
            return _EMPTY, _EMPTY, _EMPTY
        times = wake[low:high]
        first = np.empty(high - low, dtype=bool)  # in order: a call starts where the time changes
        first[0] = True
        np.not_equal(times[1:], times[:-1], out=first[1:])
        starts = np.flatnonzero(first)
        messages = np.diff(np.append(starts, high - low))
        calls = np.cumsum(first) - 1  # each request's call
        written = self.wake_threads[low:high]
        span = int(written.max()) + 1
        pairs = np.unique(calls * span + written)  # (call, thread), once each
        threads = np.bincount(pairs // span, minlength=len(starts))
        return times[starts], messages, threads

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
