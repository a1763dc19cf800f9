"""Wake-up look-ups: which registration after a moment touches a thread that no loop of a
worker process holds, or a given thread, in the feed's materialised arrivals.

`simulator.wake` decides which loop a registration wakes; these functions find
the registrations, scanning the feed's time-ordered arrivals (a few at a time,
then in growing numpy chunks) instead of handling them one by one.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from .feed import Feed
    from .loops import SimProcess
    from .storage_model import SimStorage, SimThread


class Lookups:
    """Look-ups in ``feed``'s materialised arrivals, for the processes of one run."""

    def __init__(self, feed: Feed, storage: SimStorage) -> None:
        self.feed = feed
        self.storage = storage

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
        owners = self.feed.wake_threads
        position = int(self.feed.wake.searchsorted(at, "right"))
        end = len(owners)
        while position < end:  # most arrivals are on threads nobody holds: a short scan
            free = ~held[owners[position : position + 64]]
            if free.any():
                return float(self.feed.wake[position + int(np.argmax(free))])
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
        owners, times = self.feed.wake_threads, self.feed.wake
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
