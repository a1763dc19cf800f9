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
command at a time (`simulator.machine.StorageServer`): the loop also waits for the
commands queued there before its own, registrations included.

Arrivals cost no events (`simulator.feed`): they are generated in bulk, routed,
and appended to the tubes ahead of simulated time; a tube knows what has
arrived at time ``t`` by binary search. So events happen per batch and per
coordinator poll, never per message. `simulator.simulation` builds a run and
starts one `SimLoop` per worker loop.

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

import math
import random
from collections.abc import Callable, Generator
from typing import TYPE_CHECKING, Any

import numpy as np
import simpy

from sharded_queue.core import (
    Acquire,
    Batch,
    Begin,
    Cycle,
    End,
    LoopPolicy,
    Perform,
    Poll,
    PollResult,
    Wait,
    worker_program,
)

from .storage_model import ACQUIRE_TRIPS, CYCLE_TRIPS, DEAD_LETTER_TRIPS, POLL_TRIPS, RELEASE_TRIPS

if TYPE_CHECKING:
    from .cpu import Overhead
    from .feed import Feed
    from .loops import LoopState
    from .machine import Cores, StorageServer
    from .noise import Noise
    from .record import Recorder
    from .service import ServiceSampler
    from .storage_model import SimStorage, SimTube
    from .wake import Wakeups

Steps = Generator[Any, Any, Any]
"""A simpy process step: yields simpy events, returns the effect's result."""


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


class Shared:
    """What the loops of one run share: the storage, the feed, the wake-ups, the machine, the
    models of ``perform`` and of round trips, the recorder, and the count of messages taken."""

    def __init__(
        self,
        env: simpy.Environment,
        storage: SimStorage,
        feed: Feed,
        wakeups: Wakeups,
        recorder: Recorder,
        *,
        policy: LoopPolicy,
        samplers: dict[str, ServiceSampler],
        rtt: float,
        round_trips: RoundTrips | None,
        overhead: Overhead,
        cores: Cores | None,
        background: float,
        server: StorageServer | None,
        target: float,
    ) -> None:
        self.env = env
        self.storage = storage
        self.feed = feed
        self.wakeups = wakeups
        self.recorder = recorder
        self.policy = policy
        self.samplers = samplers
        self.rtt = rtt
        self.round_trips = round_trips
        self.overhead = overhead
        self.cores = cores  # the machine's, when fewer than the processes may want
        self.background = background  # other programs' CPU per message performed, on ``cores``
        self.server = server
        self.target = target  # messages after which a run without a duration is over
        self.taken = 0
        self.dead = 0
        self.done = env.event()

    def finish(self, count: int) -> None:
        """Count messages taken off the tubes; a run without a duration ends when all are."""
        self.taken += count
        if self.taken >= self.target and not self.done.triggered:
            self.done.succeed()


class SimLoop:
    """One worker loop: runs the core's program, carrying out each effect in simulated time.

    Hot path: effects that take no simulated time are answered without
    yielding to simpy; the storage is looked up by object identity. With
    CPU modelled, every effect first claims the process's CPU for its cost
    (`simulator.machine.Cpu.claim`); the storage acts when the request is sent
    (after that CPU) plus half a round trip.

    Each step follows simulated time itself (`now`): a timeout ends at ``now``
    plus its delay, the very sum simpy makes, so only a wait on another event
    reads ``env.now``. Reading simpy's ``now`` (a property) after every effect
    took about 6% of a run's instructions.
    """

    __slots__ = (
        "background",
        "claim",
        "costs",
        "cpu",
        "env",
        "feed",
        "fetched",
        "half",
        "next_rtt",
        "now",
        "owed",
        "record",
        "rtt",
        "samplers",
        "server",
        "server_costs",
        "shared",
        "spins",
        "stats",
        "steps",
        "storage",
        "threads",
        "timeout",
        "wakeups",
    )

    def __init__(self, shared: Shared, stats: LoopState) -> None:
        self.shared = shared
        self.stats = stats
        self.env = shared.env
        self.timeout = shared.env.timeout
        self.storage = shared.storage
        self.threads = shared.storage.by_id
        self.feed = shared.feed
        self.wakeups = shared.wakeups
        self.record = shared.recorder.add
        self.samplers = shared.samplers
        self.costs = shared.overhead
        self.background = shared.background
        self.server = server = shared.server
        self.server_costs = _command_costs(server)
        self.rtt = shared.rtt
        self.half = shared.rtt / 2
        self.next_rtt = shared.round_trips.next if shared.round_trips is not None else None
        self.cpu = stats.process.cpu
        self.claim: Callable[..., float] | None = self.cpu.claim if self.cpu is not None else None
        # A zero wait re-polls at once, as in the Worker, when a poll takes time; else it waits for a wake-up.
        self.spins = bool(shared.rtt or (self.claim is not None and self.costs.poll and self.costs.cycle))
        self.fetched: SimTube | None = None
        self.now = 0.0  # simulated time, followed along: each timeout ends at now + its delay, as simpy adds it
        self.owed = 0.0  # a fetch's round trip, waited together with the perform that follows it
        self.steps = StepTable(
            {
                Poll: self.poll,
                Acquire: self.acquire,
                Begin: self.begin,
                Cycle: self.cycle,
                Perform: self.perform,
                Wait: self.wait,
                End: self.end,
            }
        )

    def run(self, rng: random.Random) -> Steps:
        """The simpy process: the core's program, each effect carried out by its step."""
        send = worker_program(self.shared.policy, None, rng).send
        steps, timeout, stats, acquired = self.steps, self.timeout, self.stats, self.wakeups.acquired
        next_rtt, cpu = self.next_rtt, self.claim is not None
        result: Any = None
        self.now = self.env.now
        while True:  # hot: what does not change is in locals
            effect: Any = send(result)
            kind = type(effect)  # dispatched on its exact type (faster than match)
            owed = self.owed
            if owed and (kind is not Perform or cpu):
                yield timeout(owed)  # with CPU, the perform's CPU is claimed when the reply is in
                self.now += owed
                self.owed = 0.0
            if kind is not Poll and kind is not Wait and kind is not Acquire:
                acquired(stats, self.now)  # busy: as in the Worker, wake-ups go to another loop
            if next_rtt is not None and kind is not Wait and kind is not Begin and kind is not Perform:
                rtt = self.rtt = next_rtt()  # this storage call's round trip
                self.half = rtt / 2
            result = yield from steps[kind](effect)

    # --- storage calls -----------------------------------------------------------

    def _reach(self, cost: float) -> Steps:
        """Send a storage call now (after its CPU ``cost``): returns when it reaches the storage."""
        now = self.now
        lead = self.half if self.claim is None else self.claim(now, cost) - now + self.half
        if lead:
            yield self.timeout(lead)
            now = self.now = now + lead
        if self.feed.frontier < now:
            self.feed.ensure(now)
        return now

    def _reply(self, trips: int, at: float, cost: float) -> Steps:
        """Wait for the reply of a call of ``trips`` round trips that reached the storage at ``at``
        and takes the server ``cost`` seconds."""
        rest = trips * self.rtt - self.half + (self.server.call(at, cost) if self.server is not None else 0.0)
        if rest:
            yield self.timeout(rest)
            self.now += rest

    def poll(self, effect: Poll) -> Steps:
        """``Poll``: arm the waker, ask for the visible threads (`SimStorage.candidates`)."""
        self.wakeups.poll(self.stats, self.now)
        self.stats.polls += 1
        at = yield from self._reach(self.costs.poll)
        result = PollResult(self.storage.candidates(at))
        yield from self._reply(POLL_TRIPS, at, self.server_costs[0])
        return result

    def acquire(self, effect: Acquire) -> Steps:
        """``Acquire``: try the lease; a loop that got it wakes another idle loop if threads wait."""
        self.stats.acquires += 1
        at = yield from self._reach(self.costs.acquire)
        code = self.storage.acquire(self.threads[id(effect.thread)], at)
        yield from self._reply(ACQUIRE_TRIPS[code], at, self.server_costs[1])
        if code == 1:
            self.wakeups.acquired(self.stats, self.now)
            if effect.wake_next:  # the program saw other threads waiting: wake another idle loop
                self.wakeups.wake_idle(self.stats.process, self.now)
        return code == 1

    def end(self, effect: End) -> Steps:
        """``End``: let go of the thread, release its lease."""
        stats = self.stats
        stats.releases += 1
        self.wakeups.unbind(stats, self.now)
        at = yield from self._reach(self.costs.end)
        left = self.storage.release(self.threads[id(effect.thread)], at)
        stats.bound += at - stats.bound_since
        stats.bound_since = math.nan
        yield from self._reply(RELEASE_TRIPS[left], at, self.server_costs[2])

    def cycle(self, effect: Cycle) -> Steps:
        """``Cycle``: ack and fetch in one call. The storage acts at once; the wait for the reply is
        owed, and waited together with the ``perform`` that follows (nothing happens to the loop meanwhile)."""
        now = self.now
        claim, feed, server = self.claim, self.feed, self.server
        self.stats.cycles += 1
        self.wakeups.arm(self.stats, now)
        sent = now if claim is None else claim(now, self.costs.cycle)
        at = sent + self.half
        if feed.frontier < at:
            feed.ensure(at)
        ack = effect.ack
        hold = effect.hold.seconds if effect.hold is not None else 0.0
        reply = self.storage.cycle(self.threads[id(effect.thread)], ack, effect.limit, at, effect.linger, hold)
        result = None
        if reply is not None:
            result, fetched = reply
            if fetched is not None:
                self.fetched = fetched
        trips = CYCLE_TRIPS
        if ack is not None and ack.dead:
            self.shared.dead += len(ack.dead)
            self.shared.finish(len(ack.dead))
            trips += DEAD_LETTER_TRIPS
        wait = sent - now + trips * self.rtt
        if server is not None:
            _, _, _, base, per_message = self.server_costs
            moved = (ack.count if ack is not None else 0) + (result.size if isinstance(result, Batch) else 0)
            wait += server.call(at, base + per_message * moved)
        if wait:
            if reply is None:
                yield self.timeout(wait)
                self.now = now + wait
            else:
                self.owed = wait
        return result

    # --- the loop's own effects -----------------------------------------------------

    def begin(self, effect: Begin) -> Steps:
        """``Begin``: bind the thread (its wake-ups now come to this loop)."""
        now = self.now
        if self.claim is not None:
            done = self.claim(now, self.costs.begin)
            if done > now:
                yield self.timeout(done - now)
                now = self.now = now + (done - now)
        self.stats.binds += 1
        self.stats.bound_since = now
        self.wakeups.bind(self.stats, self.threads[id(effect.thread)], now)
        return True  # a simulated start() succeeds

    def wait(self, effect: Wait) -> Steps:
        """``Wait``: a pause; a wakeable one ends at the loop's wake-up (`simulator.wake`)."""
        if effect.wakeable and effect.seconds == 0 and self.spins:
            pass  # as the Worker does: poll again at once (each poll costs CPU or a round trip)
        elif effect.wakeable:
            waiting = self.wakeups.wait(self.stats, effect.seconds, self.now)
            if waiting is not None:
                yield waiting
                self.now = self.env.now  # woken, or at its deadline
        elif effect.seconds > 0:
            yield self.timeout(effect.seconds)
            self.now += effect.seconds

    def perform(self, effect: Perform) -> Steps:
        """``Perform``: the batch's service time (`Service`), then maybe a failure; past the handler's
        timeout it fails then. Without CPU modelled it starts once the fetch's owed reply is in;
        with CPU, see `_claim_perform`."""
        messages = effect.messages
        count = len(messages)
        sampler = self.samplers[effect.thread.handler]
        duration, busy = sampler.draw(count)
        limit = effect.timeout
        timed_out = duration > limit
        if timed_out:  # cancelled at the timeout, or once its CPU part lets the event loop run
            duration = max(limit, busy)
        now = self.now
        if self.claim is None:
            owed = self.owed
            started = now + owed
            if owed + duration > 0:
                yield self.timeout(owed + duration)
                self.now = now + (owed + duration)
            self.owed = 0.0
            finished = started + duration
        else:
            started, done = self._claim_perform(count, busy)
            waiting = duration - busy
            if waiting > 0 and sampler.service.timer:
                if done > now:
                    yield self.timeout(done - now)
                yield self.cpu.sleep(done, waiting)
                now = self.now = self.env.now  # the event loop's timer fired
            elif done + waiting > now:
                yield self.timeout(done + waiting - now)
                now = self.now = now + (done + waiting - now)
            # the awaiting coroutine resumes once the event loop has run what was queued before it
            finished = self.claim(now, 0.0) if waiting > 0 else now
        stats = self.stats
        stats.busy += finished - started
        stats.performs += 1
        if timed_out:
            stats.failures += 1
            return TimeoutError(f"perform did not finish within {limit:g} s and was cancelled")
        if sampler.failure_rate and sampler.fails():
            stats.failures += 1
            return SimulatedFailure(f"simulated failure of a batch of {count}")
        self.record(self.fetched.group, stats.index, started, finished, messages.times, busy)  # type: ignore[union-attr, attr-defined]
        stats.messages += count
        self.shared.taken += count
        if self.shared.taken >= self.shared.target:
            self.shared.finish(0)
        return None

    def _claim_perform(self, count: int, busy: float) -> tuple[float, float]:
        """Claim the process's CPU for a ``perform`` of ``count`` messages: the library's part, then
        ``busy`` seconds of its own. Returns when that CPU part started and when it is done."""
        costs = self.costs
        now = self.now
        library = costs.perform + costs.trace
        library += (costs.decode + costs.perform_per_message + costs.trace_per_message) * count
        done = self.claim(now, library + busy, busy)  # type: ignore[misc]
        if self.background:  # the other programs' share of the machine for these messages
            self.shared.cores.background(now, self.background * count)  # type: ignore[union-attr]
        started = done - busy if self.cpu.pauses is None else self.cpu.mark
        return started, done


def _command_costs(server: StorageServer | None) -> tuple[float, float, float, float, float]:
    """The server's seconds for a poll, an acquire, a release, a cycle and a cycle's message."""
    if server is None:
        return (0.0,) * 5
    costs = server.costs
    if costs is None:  # the same for every command
        return server.cost, server.cost, server.cost, server.cost, 0.0
    return costs.poll, costs.acquire, costs.release, costs.cycle, costs.cycle_per_message


class StepTable(dict[type, Callable[[Any], Steps]]):
    """The step of each kind of effect; an unknown kind is a `TypeError`."""

    def __missing__(self, kind: type) -> Steps:
        raise TypeError(f"unknown effect {kind.__name__}")
