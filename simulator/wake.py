"""Wake-ups, routed as the asyncio `Worker` routes them, without an event per registration.

In the real worker every loop has its own waker, armed at each ``Poll`` and
``Cycle``; a wakeable ``Wait`` ends when it is woken (at once if it was woken
since it was armed). Every registration is published with the threads it
touched, and every worker process (`SimProcess`) wakes, for each thread, the
loop holding it, or else, if it is the process answering for the thread
(`sharded_queue.core.answering`), its oldest idle loop not woken yet (idle: it
has polled and since done nothing but acquire attempts and waits; woken: on
its way to its next poll).

The simulator never handles a registration one by one. Arrivals are known in
advance, and the routing state (which loop holds which thread, which loops are
idle, in which order, armed when) only changes at loop events. Between them,
each touch of a thread that no loop holds wakes the oldest idle loop not woken
yet: an idle loop with ``k`` such loops ahead of it is woken by the
``k + 1``-th touch (`sharded_queue.core.waking_touch`, the closed form of the core's
`wake_targets`, which the asyncio worker applies message by message; the core's
tests check that the two wake the same loops). So for each armed loop the twin looks up the first
registration that would wake it under the current state, and recomputes that
when the state changes (for all the waiting idle loops of a process in one
scan). A waiting loop gets a simpy timer at that moment.

The routing is all in `Wakeups`; finding the registrations is `simulator.lookups`'s
work, and the loops' state is `simulator.loops`'s.
"""

from __future__ import annotations

import functools
import math
from typing import TYPE_CHECKING, Any

import numpy as np
import simpy

from sharded_queue.core import waking_touch

if TYPE_CHECKING:
    from .feed import Feed
    from .lookups import Lookups
    from .loops import LoopState, SimProcess
    from .storage_model import SimThread


class Wakeups:
    """The wake-up model of all loops; every routing change goes through it.

    For each armed loop: ``checked``, the time up to which registrations were
    looked at under the routing that held meanwhile, and ``next_wake``, the
    first one found that wakes it (``inf``: none so far). A routing change
    first applies what happened up to its moment (`_flush`), then makes the
    affected loops look again from there: at once for a waiting loop (it
    needs its timer), lazily otherwise.
    """

    def __init__(
        self, env: simpy.Environment, feed: Feed, lookups: Lookups, delivery: float, processes: list[SimProcess]
    ) -> None:
        self.env = env
        self.feed = feed
        self.lookups = lookups
        self.delivery = delivery  # pub/sub: a wake-up message reaches the processes this long after its registration
        self.processes = processes

    # --- the waker of one loop ----------------------------------------------------

    def arm(self, loop: LoopState, at: float) -> None:
        """``Waker.arm``: from now on, the next registration routed to the loop wakes it.

        (The real waker keeps a waker that was not woken yet: the same thing.)
        """
        loop.armed_at = at
        loop.woken_at = math.inf
        loop.next_wake = math.inf
        loop.checked = at

    def wait(self, loop: LoopState, seconds: float, now: float) -> simpy.Event | None:
        """A wakeable wait from ``now``: None when already woken, else an event that ends it.

        ``seconds == 0`` waits until woken (see `simulator.engine`).
        """
        if loop.armed_at == -math.inf:
            return self.env.timeout(seconds) if seconds > 0 else None
        self._due(loop, now)
        if loop.woken_at <= now:
            return None
        loop.event = self.env.event()
        loop.wait_id += 1
        loop.deadline = now + seconds if seconds > 0 else math.inf
        if seconds > 0:
            timeout = self.env.timeout(seconds)
            timeout.callbacks.append(functools.partial(self._deadline, loop, loop.wait_id))
        self._compute(loop, now)  # a waiting loop needs its timer now
        return loop.event

    def _deadline(self, loop: LoopState, wait_id: int, _: Any) -> None:
        if loop.event is not None and loop.wait_id == wait_id:
            self._end_wait(loop)

    def _end_wait(self, loop: LoopState) -> None:
        event, loop.event = loop.event, None
        loop.timer += 1  # cancels its pending timer
        assert event is not None
        event.succeed()

    def _due(self, loop: LoopState, at: float) -> None:
        """Mark the loop woken if a registration woke it by ``at`` (looking as far as needed)."""
        if loop.woken_at != math.inf or loop.armed_at == -math.inf:
            return
        if loop.next_wake == math.inf and loop.checked < at:
            if self.feed.frontier < at - self.delivery:
                self.feed.ensure(at - self.delivery)
            self._compute(loop, loop.checked)
        if loop.next_wake <= at:
            loop.woken_at = loop.next_wake

    def _compute(self, loop: LoopState, since: float) -> None:
        """The first registration delivered after ``since`` that wakes ``loop`` as things stand.

        Strictly after: a registration delivered at the very moment a waker is
        armed counts for the waker it finds (the one that woke the loop).
        Only materialised arrivals are looked at; ``checked`` says how far.
        """
        if loop.woken_at != math.inf:
            return
        start = max(since, loop.armed_at) - self.delivery  # enqueue times delivered after ``since``
        touch = math.inf
        process = loop.process
        if loop in process.idle:
            touch = self.lookups.next_touch(process, start, waking_touch(self._ahead(loop, start + self.delivery)))
        self._found(loop, start, touch)

    def _found(self, loop: LoopState, start: float, touch: float) -> None:
        """Set the loop's next wake-up from ``start`` on (enqueue times): the first registration on
        the thread it holds, or ``touch``, the one that wakes it as an idle loop; a waiting loop
        gets its timer."""
        delivery = self.delivery
        wake = touch + delivery
        if loop.thread is not None:
            wake = min(wake, self.lookups.next_on_thread(loop.thread, start) + delivery)
        loop.next_wake = wake
        loop.checked = wake if wake != math.inf else max(self.feed.frontier + delivery, start + delivery)
        if loop.event is not None:
            self._schedule(loop)

    def _ahead(self, loop: LoopState, at: float) -> int:
        """How many idle loops older than ``loop`` a registration delivered after ``at`` finds
        not woken yet: each takes a touch of an unheld thread before ``loop`` does."""
        count = 0
        for other in loop.process.idle:
            if other is loop:
                break
            self._due(other, at)
            if other.woken_at > at:
                count += 1
        return count

    def _schedule(self, loop: LoopState) -> None:
        """Set the waiting loop's timer: its wake-up, or a look further ahead."""
        loop.timer += 1
        now = self.env.now
        if loop.next_wake <= now:  # found looking back (further ahead than before): woken already
            loop.woken_at = loop.next_wake
            self._end_wait(loop)
            return
        at = loop.next_wake if loop.next_wake != math.inf else max(loop.checked, now)
        if at >= loop.deadline or at == math.inf:
            return
        timer = self.env.timeout(at - now)
        timer.callbacks.append(functools.partial(self._fire, loop, loop.timer))

    def _fire(self, loop: LoopState, timer: int, _: Any) -> None:
        if loop.event is None or loop.timer != timer:
            return
        now = self.env.now
        self._due(loop, now)
        if loop.woken_at <= now:
            self._end_wait(loop)
        elif loop.next_wake == math.inf and loop.checked <= now:
            if self.feed.exhausted:
                return  # no registration will ever wake it: its deadline (if any) or a routing change will
            self.feed.step()  # look further ahead
            self._compute(loop, loop.checked)
        else:
            self._schedule(loop)

    # --- routing changes ------------------------------------------------------------

    def _flush(self, process: SimProcess, at: float) -> None:
        """Apply the registrations up to ``at`` under the routing that held until now."""
        if process.flushed == at:  # several changes at one instant: nothing delivered in between
            return
        process.flushed = at
        for loop in process.loops:
            if loop.woken_at == math.inf and loop.armed_at != -math.inf:
                self._due(loop, at)
                if loop.woken_at != math.inf and loop.event is not None:
                    self._end_wait(loop)

    def _changed(self, at: float, loop: LoopState | None) -> None:
        """The routing of ``loop`` changed at ``at``: look again from there (now if it waits)."""
        if loop is None or loop.woken_at != math.inf or loop.armed_at == -math.inf:
            return
        if loop.event is not None:
            self._compute(loop, at)
        else:
            loop.next_wake = math.inf
            loop.checked = max(at, loop.armed_at)

    def _changed_idle(self, at: float, loops: list[LoopState]) -> None:
        """`_changed` for each of ``loops``, idle loops of one process: the waiting ones look up
        their wake-ups in one scan of the registrations (`Feed.touches`), not one each. As in
        `_compute`, the ``k``-th idle loop not woken is woken by the ``k``-th touch of a thread
        no loop holds (`_ahead`: every loop is flushed to ``at``, so woken by then or not at all)."""
        waiting: set[LoopState] = set()
        for loop in loops:
            if loop.woken_at != math.inf or loop.armed_at == -math.inf:
                continue
            if loop.event is None:
                loop.next_wake = math.inf
                loop.checked = max(at, loop.armed_at)
            else:
                waiting.add(loop)
        if not waiting:
            return
        process = loops[0].process
        ranked: list[tuple[LoopState, int]] = []
        ahead = 0
        for loop in process.idle:
            if loop in waiting:
                ranked.append((loop, ahead))
                if len(ranked) == len(waiting):
                    break
            self._due(loop, at)
            if loop.woken_at > at:
                ahead += 1
        start = at - self.delivery  # every loop was armed by ``at``: registrations delivered after it
        counted = waking_touch(ranked[-1][1])
        touches = self.lookups.touches(process, start, counted) if counted > 1 else []
        for loop, rank in ranked:
            number = waking_touch(rank)  # the touch that wakes it (`core.waking_touch`)
            if number == 1:
                touch = self.lookups.next_unheld(process, start)
            else:
                touch = touches[number - 1] if number - 1 < len(touches) else math.inf
            self._found(loop, start, touch)

    def poll(self, loop: LoopState, at: float) -> None:
        """``Poll``: arm, and join the idle loops (keeping its place if already there: armed
        again, it is not woken, so the idle loops after it wait for one more touch)."""
        process = loop.process
        self._flush(process, at)
        process.idle[loop] = None
        self.arm(loop, at)
        self._changed_idle(at, self._after(loop))

    def _after(self, loop: LoopState) -> list[LoopState]:
        """The idle loops younger than ``loop``."""
        idle = list(loop.process.idle)
        return idle[idle.index(loop) + 1 :] if loop in loop.process.idle else []

    def acquired(self, loop: LoopState, at: float) -> None:
        """A successful ``Acquire``, or any effect but ``Poll``/``Wait``/``Acquire``: the loop is no longer idle."""
        process = loop.process
        if loop not in process.idle:
            return
        self._flush(process, at)
        after = self._after(loop)
        del process.idle[loop]
        self._changed(at, loop)
        self._changed_idle(at, after)  # one loop fewer ahead of them

    def wake_idle(self, process: SimProcess, at: float) -> None:
        """``Worker._wake_idle``: a loop that bound a thread saw others waiting; the oldest idle
        loop of its process not woken yet is woken now."""
        self._flush(process, at)
        for loop in process.idle:
            if loop.armed_at != -math.inf and loop.woken_at > at:
                loop.woken_at = at
                if loop.event is not None:
                    self._end_wait(loop)
                self._changed_idle(at, self._after(loop))  # one loop fewer ahead of them
                return

    def bind(self, loop: LoopState, thread: SimThread, at: float) -> None:
        """``Begin``: the loop holds ``thread``; its registrations wake this loop."""
        process = loop.process
        self._flush(process, at)
        process.bound[thread] = loop
        loop.thread = thread
        if thread.index >= len(process.bound_mask):
            process.bound_mask = np.concatenate((process.bound_mask, np.zeros(thread.index + 64, dtype=bool)))
        process.bound_mask[thread.index] = True
        self._changed(at, loop)
        self._changed_idle(at, list(process.idle))  # the threads no loop holds changed, for every idle loop

    def unbind(self, loop: LoopState, at: float) -> None:
        """``End``: the loop lets go of its thread."""
        process = loop.process
        thread = loop.thread
        if thread is None:
            return
        self._flush(process, at)
        del process.bound[thread]
        process.bound_mask[thread.index] = False
        loop.thread = None
        self._changed(at, loop)
        self._changed_idle(at, list(process.idle))  # the threads no loop holds changed, for every idle loop
