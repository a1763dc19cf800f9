"""The machine of the twin: a worker process's CPU, the machine's cores, the storage server, pauses.

All loops of one worker process run on one Python thread, one asyncio event
loop: the library's own work for each effect (encode, the Lua call, parse,
decode, bookkeeping) and the CPU part of ``perform`` run one at a time, while
their I/O waits overlap. So each simulated process has one `Cpu`, a
first-come-first-served server: a loop that needs CPU queues behind the work
already claimed (Lindley's recursion, no event of its own), and an effect that
finds the process idle pays `Overhead.idle` more (the wake-up from
``epoll_wait``; a busy event loop shares it between replies).

`Cpu.sleep` models the event loop's timer granularity: ``epoll_wait`` rounds
its timeout up to the millisecond, so an ``asyncio.sleep(0.0005)`` on an idle
loop takes about 1.1 ms, while on a busy loop it ends at the first wake-up
after it is due (another loop's reply, a wake-up message, the end of a
callback).

`Cores` are the machine's: with fewer cores than busy processes, a process
whose work is ready waits for a core (first come, first served), and other
programs on the same machine (the producer, a storage server: per message
performed, `Scenario.background`) take their share of them.

`StorageServer` is Redis itself: one command at a time. With
`Scenario.storage_cpu` (seconds per command, or `simulator.cpu.ServerCosts` per
script) every storage call and registration queues there, so round trips grow
with the load on the server.

`PauseSchedule` draws the machine's pauses (`simulator.cpu.Pauses`): moments
when the machine stops running the worker processes altogether (the operating
system, the hypervisor, a garbage collection). Every process's CPU stops for
the pause, and work, timers and replies wait for its end. `calibrate` measures
them from a trace.

What each of these costs is a parameter of `simulator.cpu`.
"""

from __future__ import annotations

import bisect
import functools
import heapq
import math
from typing import TYPE_CHECKING, Any

import numpy as np

from .cpu import REGISTER_COMMANDS, ServerCosts

if TYPE_CHECKING:
    import simpy

    from .cpu import Overhead, Pauses
    from .feed import Feed


class PauseSchedule:
    """The pauses of one run: ``[starts[i], ends[i])``, apart and in order, drawn as time goes on."""

    __slots__ = ("ends", "lengths", "mean_gap", "rng", "starts")

    CHUNK = 64

    def __init__(self, pauses: Pauses, rng: np.random.Generator) -> None:
        self.mean_gap = 1 / pauses.rate
        self.lengths = np.asarray(pauses.lengths)
        self.rng = rng
        self.starts: list[float] = [-1.0]  # a sentinel pause, over at 0: the first gap starts there
        self.ends: list[float] = [0.0]
        self._draw()

    def until(self, time: float) -> None:
        """Draw pauses until one starts after ``time``."""
        while self.starts[-1] <= time:
            self._draw()

    def _draw(self) -> None:
        gaps = self.rng.exponential(self.mean_gap, self.CHUNK)
        lengths = self.rng.choice(self.lengths, self.CHUNK)
        end = self.ends[-1]
        for gap, length in zip(gaps.tolist(), lengths.tolist(), strict=True):
            start = end + gap
            end = start + length
            self.starts.append(start)
            self.ends.append(end)

    def after(self, time: float) -> float:
        """``time``, or the end of the pause it falls in."""
        self.until(time)
        index = bisect.bisect_right(self.ends, time)
        return self.ends[index] if self.starts[index] <= time else time


UNRELATED_QUANTUM = 0.001
"""Seconds between two pieces of the unrelated programs' work (`Cores`): the grain of the
kernel's sharing, about its time slice (EEVDF's base slice, 0.75 ms times 1 + log2 of the
CPUs). The share is what matters: a drain's length moves by under 2% from 0.5 to 3 ms
(``tests/test_simulator.py``)."""


class Cores:
    """The machine's cores, shared by the worker processes' CPUs: first come, first served.

    A process runs its work on the core it ran on when it goes on at once, else on the
    core free first; a core is then busy until that work is done. Work is placed in the
    order it is claimed (simulated time), so a core's free time only grows. The other
    programs' work per message (`background`: a producer, a local storage server) runs
    one piece at a time, as one more process. Programs unrelated to the queue keep
    ``unrelated`` cores' worth busy (`Scenario.unrelated`): every `UNRELATED_QUANTUM` they
    need that much of it, in as many pieces as the whole cores it spans, each on the core
    free first.
    """

    __slots__ = ("busy", "free", "others", "others_core", "quantum", "ticked", "unrelated")

    def __init__(self, count: int, unrelated: float = 0.0) -> None:
        self.free = [-math.inf] * count
        self.others = -math.inf  # when the other programs' work claimed so far is done
        self.others_core = -1
        self.unrelated = unrelated
        self.quantum = UNRELATED_QUANTUM
        self.ticked = 0.0  # the unrelated programs' work is placed up to here
        self.busy = 0.0  # CPU seconds of work placed on the cores (the other programs' included)

    def background(self, ready: float, cost: float) -> None:
        """Other programs need ``cost`` CPU seconds from ``ready`` (after their earlier work)."""
        start, self.others_core = self.run(max(ready, self.others), cost, self.others_core)
        self.others = start + cost

    def _place_unrelated(self, until: float) -> None:
        """Place the unrelated programs' work due up to ``until``, piece by piece."""
        quantum, free = self.quantum, self.free
        pieces = math.ceil(self.unrelated)
        cost = self.unrelated * quantum / pieces
        placed = 0
        tick = self.ticked + quantum
        while tick <= until:
            for _ in range(pieces):
                core = free.index(min(free))
                free[core] = (free[core] if free[core] > tick else tick) + cost
            placed += 1
            tick += quantum
        self.busy += cost * pieces * placed
        self.ticked += placed * quantum

    def run(self, ready: float, cost: float, core: int) -> tuple[float, int]:
        """Work of ``cost`` seconds ready at ``ready``, last run on ``core`` (-1: none):
        when it starts, and on which core."""
        if self.unrelated and ready >= self.ticked + self.quantum:
            self._place_unrelated(ready)
        free = self.free
        if core < 0 or free[core] != ready:  # not going on where it left off: the first free core
            core = free.index(min(free))
        start = free[core] if free[core] > ready else ready
        free[core] = start + cost
        self.busy += cost
        return start, core


_NONE = np.zeros(0)


class StorageServer:
    """The storage server: Redis runs one command at a time, first come, first served.

    Every storage call of a loop (poll, acquire, cycle, release) is one command
    and every registration call one more (`ServerCosts`: each script its own time,
    a registration's by its threads and requests; or the same ``cost`` for every
    command, `REGISTER_COMMANDS` per registration). A command reaches the server
    half a round trip after it is sent and waits there for the commands that came
    before it: the round trip is then the network's and the client's part alone.
    The server does not wait for the machine's `Cores`: a process that runs briefly
    and often is run at once by the kernel's scheduler (on 2 cores shared with 3
    busy processes, queueing it for a core first come first served put the p99 of
    0.5 ms sleeps at 1,200/s 34-37% high, against 9-27% without); its CPU is part of
    `Scenario.background`.
    """

    __slots__ = ("accounted", "busy", "calls", "cost", "costs", "feed", "free", "half")

    def __init__(self, feed: Feed, cost: float | ServerCosts, half: float) -> None:
        self.feed = feed
        self.costs = cost if isinstance(cost, ServerCosts) else None
        self.cost = 0.0 if isinstance(cost, ServerCosts) else cost
        self.half = half  # a registration reaches the server half a round trip after its enqueue time
        self.free = -math.inf
        self.accounted = -math.inf  # registrations served up to this enqueue time
        self.busy = 0.0  # seconds of commands claimed (beyond the run's end when it cannot keep up)
        self.calls = 0  # commands served

    def call(self, arrival: float, cost: float) -> float:
        """A command of ``cost`` seconds reaching the server at ``arrival``: the seconds until its reply leaves."""
        until = arrival - self.half
        if until > self.accounted:
            self._registrations(until)
        self.calls += 1
        return self._serve(arrival, cost) - arrival

    def _registrations(self, until: float) -> None:
        """Serve the registrations enqueued up to ``until``, each at its arrival. Those enqueued at
        or before the run's start (a backlog) were registered before it: the server is done with
        them when the loops begin."""
        half, costs = self.half, self.costs
        after = max(self.accounted, 0.0)
        if costs is None:
            times = self.feed.registrations(after, until) if until > after else _NONE
            for time in times.tolist():
                self._serve(time + half, self.cost * REGISTER_COMMANDS)
            self.calls += REGISTER_COMMANDS * len(times)
        elif until > after:
            times, messages, threads = self.feed.registration_calls(after, until)
            seconds = costs.registration(messages, threads)
            for time, cost in zip(times.tolist(), seconds.tolist(), strict=True):
                self._serve(time + half, cost)
            self.calls += len(times)
        self.accounted = until

    def _serve(self, ready: float, cost: float) -> float:
        self.free = (self.free if self.free > ready else ready) + cost
        self.busy += cost
        return self.free


class Cpu:
    """One worker process's CPU: first come, first served; sleeping loops; wake-up messages.

    Attributes:
        free: When the work claimed so far is done.
        busy: CPU seconds claimed so far.
    """

    __slots__ = (
        "accounted",
        "busy",
        "core",
        "cores",
        "cursor",
        "delivery",
        "env",
        "feed",
        "free",
        "mark",
        "overhead",
        "pauses",
        "sequence",
        "sleepers",
        "watch",
        "woke",
    )

    def __init__(
        self,
        env: simpy.Environment,
        feed: Feed,
        overhead: Overhead,
        delivery: float,
        pauses: PauseSchedule | None = None,
        cores: Cores | None = None,
    ) -> None:
        self.env = env
        self.pauses = pauses  # the machine's, shared by every process's CPU
        self.cores = cores  # the machine's too; None: a core of its own
        self.core = -1  # the core this process last ran on
        self.cursor = 1  # the first pause that may end after this CPU's next work starts
        self.mark = 0.0
        self.feed = feed
        self.overhead = overhead
        self.delivery = delivery  # a wake-up message reaches the process this long after its registration
        self.free = -math.inf
        self.busy = 0.0
        self.accounted = -math.inf  # wake-up messages charged up to this delivery time
        self.sleepers: list[list[Any]] = []  # heap of [due, sequence, event]
        self.sequence = 0
        self.watch = math.inf  # the lag probe's timer is due (`lag_probe`): the first wake-up after it
        self.woke = math.inf  # ... is when the event loop next woke

    def claim(self, now: float, cost: float, tail: float = 0.0) -> float:
        """A loop needs ``cost`` CPU seconds from ``now``: when it is done (queued behind earlier work).

        With pauses, `mark` is then when the last ``tail`` seconds of it began.
        """
        if now >= self.watch:
            self.woke, self.watch = now, math.inf
        if self.overhead.wake:
            self._messages(now)
        sleepers = self.sleepers
        if sleepers:  # the process is awake now: due timers fire
            self._fire_due(now)
        free = self.free
        if free < now:  # idle since ``free``: this effect wakes the event loop from epoll_wait
            start = now
            cost += self.overhead.idle
        else:  # busy (or just done: the same callback goes on)
            start = free
        cores = self.cores
        if cores is not None:  # waits for a core
            start, self.core = cores.run(start, cost, self.core)
        end = start + cost
        if self.pauses is not None:
            start, end = self._paused(start, cost, tail)
            if cores is not None:
                cores.free[self.core] = end
        self.free = end
        self.busy += cost
        if sleepers and start <= sleepers[0][0] < end:  # due while this callback runs: fires at its end
            self._fire_later(sleepers[0], end - now)
        return end

    def _paused(self, start: float, cost: float, tail: float) -> tuple[float, float]:
        """When work of ``cost`` ready at ``start`` runs and ends, the machine's pauses stopping
        it; `mark`: when its last ``tail`` seconds began."""
        schedule = self.pauses
        assert schedule is not None
        starts, ends = schedule.starts, schedule.ends
        index = self.cursor  # work starts never go back: pauses before the cursor are over
        schedule.until(start)
        while ends[index] <= start:
            index += 1
        self.cursor = index
        if starts[index] <= start:  # paused now: runs at the end of the pause
            start = ends[index]
            index += 1
        self.mark, index = self._through(start, cost - tail, index)
        end, _ = self._through(self.mark, tail, index)
        return start, end

    def _through(self, time: float, work: float, index: int) -> tuple[float, int]:
        """When ``work`` seconds of running from ``time`` are done, the pauses from ``index`` on
        (none of which started before ``time``) stopping it; and the next pause's index."""
        schedule = self.pauses
        assert schedule is not None
        starts, ends = schedule.starts, schedule.ends
        end = time + work
        schedule.until(end)
        while starts[index] < end:
            end += ends[index] - starts[index]
            index += 1
            schedule.until(end)
        return end, index

    def sleep(self, now: float, seconds: float) -> Any:
        """An ``asyncio.sleep(seconds)`` from ``now``: a simpy event (or timeout) that ends it.

        It ends at the first moment after it is due that the event loop is
        awake: a claim of CPU (a reply, another timer), a wake-up message, the
        end of the callback running when it is due; else at its own timer,
        ``epoll_wait``'s timeout rounded up to `Overhead.timer_resolution`, plus
        `Overhead.timer_slack`, from when the process went idle.
        """
        env = self.env
        due = now + seconds
        if self.free >= due:  # busy all along: the event loop looks at its timers when due
            return env.timeout(due - now)
        overhead = self.overhead
        idle = max(now, self.free)
        resolution = overhead.timer_resolution
        timer = idle + math.ceil((due - idle) / resolution - 1e-9) * resolution + overhead.timer_slack
        if overhead.wake:
            message = self.feed.next_registration(due - self.delivery, timer - self.delivery)
            timer = min(timer, message + self.delivery)
        if self.pauses is not None:
            timer = self.pauses.after(timer)
        event = env.event()
        self.sequence += 1
        entry = [due, self.sequence, event]
        heapq.heappush(self.sleepers, entry)
        self._fire_later(entry, timer - now)
        return event

    def _fire_later(self, entry: list[Any], delay: float) -> None:
        timeout = self.env.timeout(delay)
        timeout.callbacks.append(functools.partial(self._fire, entry))

    def _fire(self, entry: list[Any], _: Any = None) -> None:
        event = entry[2]
        if not event.triggered:
            event.succeed()
            self._fire_due(self.env.now)  # the same wake-up serves every timer due by now

    def _fire_due(self, now: float) -> None:
        sleepers = self.sleepers
        while sleepers and (sleepers[0][0] <= now or sleepers[0][2].triggered):
            entry = heapq.heappop(sleepers)
            if not entry[2].triggered:
                entry[2].succeed()

    def _messages(self, now: float) -> None:
        """Charge the wake-up messages delivered since the last claim, in order (Lindley's
        recursion, one message at a time: a few microseconds for a thousand).

        `Overhead.wake` is measured on an idle listener: each message wakes the event
        loop. One that finds the process busy shares the running iteration, and costs
        `Overhead.idle` less, as an effect does.
        """
        until = now - self.delivery
        times = self.feed.registrations(self.accounted, until)
        self.accounted = until
        if not len(times):
            return
        overhead = self.overhead
        wake = overhead.wake
        shared = max(wake - overhead.idle, 0.0)
        free, delivery, total = self.free, self.delivery, 0.0
        if float(times[-1]) + delivery >= self.watch:  # a message woke the event loop after the probe was due
            self.woke = float(times[times + delivery >= self.watch][0]) + delivery
            self.watch = math.inf
        for time in times.tolist():
            arrival = time + delivery
            cost = shared if free >= arrival else wake
            free = (free if free > arrival else arrival) + cost
            total += cost
        self.free = free
        self.busy += total


def lag_probe(env: simpy.Environment, cpu: Cpu, every: float, lags: list[float]) -> Any:
    """The worker's event-loop lag probe (`sharded_queue.meter`) on ``cpu``: a timer every
    ``every`` seconds, each one's lateness appended to ``lags``. It only observes: its own CPU
    (a few microseconds) is left out.

    A timer due while the process is busy fires once the work claimed so far is done; one due
    while it is idle fires at the next wake-up of its event loop (a claim of CPU, a wake-up
    message) or at its own ``epoll_wait`` timeout, rounded up to `Overhead.timer_resolution`
    from when the loop went idle, plus `Overhead.timer_slack` (as `Cpu.sleep`).
    """
    resolution, slack = cpu.overhead.timer_resolution, cpu.overhead.timer_slack
    start = env.now
    while True:
        due = start + every
        yield env.timeout(due - env.now)
        if cpu.free > due:
            fired = cpu.free
        else:
            idle = max(cpu.free, start)
            timer = idle + math.ceil((due - idle) / resolution - 1e-9) * resolution + slack
            cpu.watch, cpu.woke = due, math.inf
            yield env.timeout(max(timer - due, 0.0))  # (rounding can put it a hair before ``due``)
            fired = min(timer, cpu.woke)
            cpu.watch = math.inf
        lags.append(fired - due)
        start = fired
