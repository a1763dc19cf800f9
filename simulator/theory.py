"""Closed forms the simulator is checked against, for tests and notebooks.

* `erlang_c_wait`: mean wait of M/M/c (Poisson arrivals, ``c`` servers,
  exponential service, one queue) — a worker fleet with batch size 1 and many
  more threads than loops.
* `bulk_service_wait`: mean wait of M/M^(1,B)/1 (Bailey 1954) — one thread,
  one loop, batches of up to ``B`` whose service time does not depend on
  their size; an idle server starts on the first arrival at once.
* `mm1_sojourn`: mean time in system of M/M/1 — any number of loops of one
  process whose ``perform`` is all CPU: they share one CPU (`cpu_scenario`).
* `rebinding_wait`: mean wait of M/G/1 with a close-down and setup times
  (`setup_wait`, Welch's exceptional first service when there is no close-down) —
  one loop that releases its thread when empty and binds it again
  (`polling_scenario` with one thread and batch size 1).
* `PollingRecursion`: one loop serving many threads by the library's rules, event
  by event, fed the twin's own arrival paths (`polling_paths`): a polling system
  whose switchover is the release, poll and acquire round trips.
"""

from __future__ import annotations

import dataclasses
import heapq
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from sharded_queue import Handler, RequestRoute, Route, Settings
from sharded_queue.core import CANDIDATES_PER_HANDLER

from .arrivals import Poisson
from .cpu import NONE
from .requests import Keyed, RoundRobin, Uniform
from .scenario import Scenario
from .service import Service
from .simulation import simulate
from .workload import Workload

if TYPE_CHECKING:
    import pandas as pd


def erlang_c(servers: int, offered: float) -> float:
    """Probability that an arrival waits in M/M/c (Erlang C).

    Args:
        servers: ``c``.
        offered: Offered load ``a = lambda / mu`` in Erlangs; must be below ``c``.
    """
    if servers < 1 or not 0 <= offered < servers:
        raise ValueError(f"Erlang C needs c >= 1 and 0 <= a < c, got c={servers}, a={offered}")
    term, total = 1.0, 1.0  # a**k / k!, summed for k < c
    for k in range(1, servers):
        term *= offered / k
        total += term
    top = term * offered / servers * servers / (servers - offered)  # a**c / c! * c / (c - a)
    return top / (total + top)


def erlang_c_wait(arrival_rate: float, service_rate: float, servers: int) -> float:
    """Mean time in queue of M/M/c: ``C(c, a) / (c * mu - lambda)``."""
    offered = arrival_rate / service_rate
    return erlang_c(servers, offered) / (servers * service_rate - arrival_rate)


def bulk_root(arrival_rate: float, service_rate: float, batch: int) -> float:
    """The root ``r`` in (0, 1) of ``mu * z**(B+1) - (lambda + mu) * z + lambda = 0``."""
    if not 0 < arrival_rate < batch * service_rate:
        raise ValueError(f"bulk service needs 0 < lambda < B * mu, got {arrival_rate} >= {batch} * {service_rate}")

    # z = 1 is always a root; dividing it out leaves g(z) = mu * (z + z**2 + ... + z**B) - lambda,
    # increasing on [0, 1] from -lambda to B * mu - lambda > 0: one clean sign change.
    def g(z: float) -> float:
        return service_rate * sum(z**k for k in range(1, batch + 1)) - arrival_rate

    low, high = 0.0, 1.0
    for _ in range(200):  # bisection to the last bit
        middle = (low + high) / 2
        if middle in (low, high):
            break
        low, high = (middle, high) if g(middle) < 0 else (low, middle)
    return (low + high) / 2


def bulk_service_wait(arrival_rate: float, service_rate: float, batch: int) -> float:
    """Mean time in queue of M/M^(1,B)/1 (Bailey 1954).

    With ``p_n = C r**n`` the probability of ``n`` waiting while the server is
    busy, and ``p_idle = mu C / lambda``, normalisation gives
    ``C = 1 / (mu / lambda + 1 / (1 - r))``; the mean queue is
    ``L_q = C r / (1 - r)**2`` and, by Little's law, ``W_q = L_q / lambda``.
    """
    r = bulk_root(arrival_rate, service_rate, batch)
    c = 1.0 / (service_rate / arrival_rate + 1.0 / (1.0 - r))
    return c * r / (1.0 - r) ** 2 / arrival_rate


def bulk_idle_probability(arrival_rate: float, service_rate: float, batch: int) -> float:
    """Probability that the server of M/M^(1,B)/1 is idle."""
    r = bulk_root(arrival_rate, service_rate, batch)
    c = 1.0 / (service_rate / arrival_rate + 1.0 / (1.0 - r))
    return service_rate * c / arrival_rate


def mm1_wait(arrival_rate: float, service_rate: float) -> float:
    """Mean time in queue of M/M/1 (the ``B = 1`` and ``c = 1`` cases of both)."""
    rho = arrival_rate / service_rate
    if not 0 <= rho < 1:
        raise ValueError(f"M/M/1 needs lambda < mu, got rho={rho}")
    return rho / (service_rate - arrival_rate) if not math.isclose(rho, 0) else 0.0


# --- the twin configured as the textbook queues -----------------------------------------------


class KeyThread(Handler):
    """A handler that puts every request on the thread named by the request itself (a key)."""

    name = "simulator.theory:key-thread"

    @classmethod
    async def route(cls, *requests: Any) -> list[RequestRoute]:
        """Request ``k`` goes to thread ``k``."""
        return [RequestRoute(request, Route(thread=request)) for request in requests]


def mmc_scenario(rho: float, servers: int, messages: int, seed: int = 0, warmup: float = 200.0) -> Scenario:
    """The worker fleet configured as M/M/c: `erlang_c_wait` gives its mean wait.

    * batch size 1 and exponential service of mean 1: each message is one M/M/c service;
    * requests ``0, 1, ..., 4095, 0, ...`` each on its own thread: a message never
      waits behind another message of its thread (far fewer than 4096 are ever
      queued), so no loop idles while a message is visible (work-conserving);
    * ``worker_empty_limit=1``: a loop releases its thread at the first empty poll.
      With the default 16 (and the pause between polls), a loop that just drained
      its thread keeps polling it while messages wait on other threads: not M/M/c;
    * ``coordinator_delay=0``, ``worker_empty_pause=0`` and no round trip: an idle
      loop is woken by the next registration and starts it at once.

    Which visible thread a loop takes (randomly among the longest-visible) is
    not first-come-first-served, but with identical exponential servers the
    number in system, hence the mean wait, is the same for every
    work-conserving order.
    """
    return Scenario(
        Workload(KeyThread, Poisson(rho * servers), Service.exponential(1.0), Keyed(RoundRobin(4096))),
        loops=servers,
        settings=Settings(worker_batch_size=1, worker_empty_limit=1, coordinator_delay=0.0, worker_empty_pause=0.0),
        messages=messages,
        warmup=warmup,
        seed=seed,
        overhead=NONE,
    )


def bulk_scenario(rho: float, batch: int, messages: int, seed: int = 0, warmup: float = 200.0) -> Scenario:
    """One thread and one loop configured as M/M^(1,B)/1: `bulk_service_wait` gives its mean wait.

    Batches of up to ``batch``, exponential service of mean 1 whatever the batch
    size (``per_batch`` only), no round trip; ``worker_empty_pause=0`` makes the
    loop that finds its thread empty wait for the next registration and fetch
    it at once: Bailey's server that starts on the first arrival when idle. A
    huge empty limit keeps the loop bound (re-binding would cost no time either).
    """
    return Scenario(
        Workload(KeyThread, Poisson(rho * batch), Service.exponential(1.0), Keyed(Uniform(1))),
        loops=1,
        settings=Settings(
            worker_batch_size=batch, worker_empty_limit=10**9, coordinator_delay=0.0, worker_empty_pause=0.0
        ),
        messages=messages,
        warmup=warmup,
        seed=seed,
        overhead=NONE,
    )


def cpu_scenario(rho: float, loops: int, messages: int, seed: int = 0, warmup: float = 200.0) -> Scenario:
    """``loops`` loops of one process sharing a CPU-bound ``perform``: a single server, M/M/1.

    `mmc_scenario` with ``perform`` all CPU (exponential, mean 1) and no library
    overhead: a loop that holds a message waits for the process's one CPU, so
    however many loops there are, one message is performed at a time. Work
    arrives at ``rho`` and the CPU is busy whenever a message is in the system
    (a free loop takes it at once), so the number in system is that of M/M/1
    and the mean sojourn (enqueue to finish) is ``1 / (mu - lambda)``
    (`mm1_sojourn`), not M/M/c's.
    """
    scenario = mmc_scenario(rho / loops, loops, messages, seed, warmup)  # arrivals at rho, not rho * loops
    workloads: tuple[Workload, ...] = scenario.workloads  # type: ignore[assignment]
    workload = dataclasses.replace(workloads[0], service=Service.exponential(1.0, cpu=True))
    return dataclasses.replace(scenario, workloads=(workload,))


def mm1_sojourn(arrival_rate: float, service_rate: float) -> float:
    """Mean time in system of M/M/1: ``1 / (mu - lambda)``."""
    if not 0 <= arrival_rate < service_rate:
        raise ValueError(f"M/M/1 needs lambda < mu, got {arrival_rate} >= {service_rate}")
    return 1.0 / (service_rate - arrival_rate)


def fcfs_waits(arrivals: np.ndarray, services: np.ndarray, servers: int) -> np.ndarray:
    """Waits of a first-come-first-served queue with ``servers`` servers (Kiefer-Wolfowitz).

    Customer ``i`` arrives at ``arrivals[i]`` (sorted) and needs ``services[i]``.
    """
    free = [0.0] * servers
    waits = np.empty(len(arrivals))
    push, pop = heapq.heappush, heapq.heappop
    for i, (arrival, service) in enumerate(zip(arrivals.tolist(), services.tolist(), strict=True)):
        start = max(pop(free), arrival)
        waits[i] = start - arrival
        push(free, start + service)
    return waits


@dataclass(frozen=True)
class WaitEstimate:
    """Mean wait of a run, with batch means for its standard error and an optional control.

    Attributes:
        mean: Mean wait of the messages registered after the warm-up.
        count: How many messages that is.
        batch_means: Means of consecutive batches of those messages (by enqueue time).
        control_means: The same batch means of a control variate: a queue with a
            known mean wait driven by the same arrival and service times.
        control_expected: That known mean.
    """

    mean: float
    count: int
    batch_means: tuple[float, ...]
    control_means: tuple[float, ...] = ()
    control_expected: float = math.nan

    @staticmethod
    def pooled(estimates: Sequence[WaitEstimate]) -> tuple[float, float]:
        """Mean over several runs (weighted by count) and its standard error from all batch means."""
        means = np.array([m for e in estimates for m in e.batch_means])
        mean = float(np.average([e.mean for e in estimates], weights=[e.count for e in estimates]))
        return mean, float(means.std(ddof=1) / math.sqrt(len(means)))

    @staticmethod
    def controlled(estimates: Sequence[WaitEstimate]) -> tuple[float, float]:
        """Control-variate estimate of the mean wait, and its standard error.

        ``mean - beta * (control mean - control expected)``, with ``beta`` the
        regression slope of the batch means on the control's batch means. The
        control shares the run's randomness, so most of the sampling noise
        cancels, while an error in the simulated waits does not.
        """
        waits = np.array([m for e in estimates for m in e.batch_means])
        controls = np.array([m for e in estimates for m in e.control_means])
        if len(controls) != len(waits) or len(waits) < 3:
            raise ValueError("controlled() needs runs with control batch means")
        expected = estimates[0].control_expected
        beta = float(np.cov(waits, controls)[0, 1] / controls.var(ddof=1))
        adjusted = waits - beta * (controls - expected)
        return float(adjusted.mean()), float(adjusted.std(ddof=1) / math.sqrt(len(adjusted)))


def mean_wait(kind: str, rho: float, size: int, messages: int, seed: int, batches: int = 20) -> WaitEstimate:
    """Simulate `mmc_scenario` (``kind="mmc"``, ``size`` loops) or `bulk_scenario` (``size`` = B).

    For M/M/c the control variate is a single-server FCFS queue of rate ``c * mu``
    fed the same arrival times and the same service times (divided by ``c``, in
    the order services started): an M/M/1 queue whose mean wait is known.
    A plain function of plain arguments, so runs can go to other processes.
    """
    build = {"mmc": mmc_scenario, "bulk": bulk_scenario, "cpu": cpu_scenario}[kind]
    scenario = build(rho, size, messages, seed)
    latencies = simulate(scenario).latencies()
    by_arrival = latencies.sort_values("enqueued_at", kind="stable")
    kept = (by_arrival["enqueued_at"] >= scenario.warmup).to_numpy()
    wait = by_arrival["wait"].to_numpy()[kept]
    batch_means = tuple(float(p.mean()) for p in np.array_split(wait, batches))
    if kind != "mmc":
        return WaitEstimate(float(wait.mean()), len(wait), batch_means)
    by_start = latencies.sort_values("started_at", kind="stable")
    services = (by_start["finished_at"] - by_start["started_at"]).to_numpy()
    control = fcfs_waits(by_arrival["enqueued_at"].to_numpy(), services / size, 1)[kept]
    return WaitEstimate(
        float(wait.mean()),
        len(wait),
        batch_means,
        tuple(float(p.mean()) for p in np.array_split(control, batches)),
        mm1_wait(rho * size, float(size)),
    )


# --- one loop binding and releasing threads: a polling system with switchover times ----------


def setup_wait(
    arrival_rate: float, service: tuple[float, float], close_down: float, setup: float, idle_setup: float
) -> float:
    """Mean wait of M/G/1 with a close-down and two setup times (deterministic).

    One server, exhaustive, FIFO; a service ``G`` has moments ``service = (E[G], E[G^2])``.
    When the queue empties the server closes down for ``V`` (``close_down``) while
    arrivals queue; if any came, a setup ``U1`` (``setup``) follows, else it idles until
    the next arrival and then sets up for ``U0`` (``idle_setup``).

    Fuhrmann and Cooper's decomposition (1985: Poisson arrivals, an order and periods
    off service that depend neither on service times nor on future arrivals) gives
    ``E[W] = lambda E[G^2] / (2 (1 - rho)) + E[N_v] / lambda``, ``N_v`` the number waiting
    at a random moment off service. With ``q = exp(-lambda V)`` (nothing came during the
    close-down), one period off service lasts ``V + (1 - q) U1 + q (1 / lambda + U0)`` on
    average, and its area (time times number waiting) is ``lambda V^2 / 2`` (close-down)
    ``+ lambda V U1 + (1 - q) lambda U1^2 / 2`` (setup after it; ``E[N(V); N(V) > 0] = lambda V``)
    ``+ q (U0 + lambda U0^2 / 2)`` (setup from idle, one waiting at its start); ``E[N_v]`` is
    area over length. Without close-down (``V = 0``) this is Welch's exceptional first
    service (1964) with a setup ``D = U0``: ``(2 D + lambda D^2) / (2 (1 + lambda D))`` on top.
    """
    mean, second = service
    rho = arrival_rate * mean
    if not 0 < rho < 1:
        raise ValueError(f"M/G/1 needs 0 < lambda E[G] < 1, got {rho}")
    lam, v, u1, u0 = arrival_rate, close_down, setup, idle_setup
    q = math.exp(-lam * v)
    area = lam * v * v / 2 + lam * v * u1 + (1 - q) * lam * u1 * u1 / 2 + q * (u0 + lam * u0 * u0 / 2)
    length = v + (1 - q) * u1 + q * (1 / lam + u0)
    return lam * second / (2 * (1 - rho)) + area / length / lam


def rebinding_wait(arrival_rate: float, rtt: float, service: tuple[float, float] = (1.0, 2.0)) -> float:
    """Mean wait of one thread and one loop that releases it when empty (`polling_scenario`,
    ``threads=1, batch=1``); ``service``: the moments of ``perform`` (exponential, mean 1).

    In the twin a storage call acts at the storage half a round trip ``r`` after it is
    sent. Counted at the fetches (where a message joins a batch), the loop is `setup_wait`'s
    server, and a message starts ``r / 2`` after its fetch:

    * busy, a Cycle fetches, its reply comes ``r / 2`` later, ``perform`` takes ``S``,
      the next Cycle fetches ``r / 2`` after it is sent: ``G = r + S``;
    * a fetch finds the thread empty at ``f``: the release (End) reaches the storage at
      ``f + r`` and the Poll at ``f + 2 r``, which sees what came meanwhile: ``V = 2 r``;
    * it found the thread: Acquire at ``f + 3 r``, the fetch at ``f + 4 r``: ``U1 = 2 r``;
    * it did not: the loop waits for the wake-up, which leaves a round trip after the
      registration (producer to Redis to worker), then Poll, Acquire, Cycle: ``U0 = 3.5 r``.

    So a switch costs the release, poll and acquire round trips on top of the fetch
    that every batch pays. Exact for the twin with batch size 1, ``worker_empty_limit=1``
    (release at the first empty fetch), ``worker_hold_limit=0`` (else a poll every
    ``hold_limit`` batches), a ``coordinator_delay`` longer than every idle period (an
    idle loop waits for its wake-up), a fixed round trip, ``storage_cpu=0``, no library
    CPU (``overhead=NONE``), one registration per arrival.
    """
    mean, second = service
    g = (rtt + mean, rtt * rtt + 2 * rtt * mean + second)
    return setup_wait(arrival_rate, g, 2 * rtt, 2 * rtt, 3.5 * rtt) + rtt / 2


IDLE_FOREVER = 1e9
"""A coordinator delay (seconds) that no idle period of these runs reaches: an idle loop waits for its wake-up."""


def polling_scenario(
    arrival_rate: float,
    threads: int,
    batch: int,
    messages: int,
    rtt: float,
    seed: int = 0,
    *,
    hold_limit: int = 0,
    coordinator_delay: float = IDLE_FOREVER,
    warmup: float = 0.0,
) -> Scenario:
    """One loop serving ``threads`` threads with batches of up to ``batch``: a polling system.

    Poisson arrivals at ``arrival_rate`` spread uniformly over the threads, ``perform``
    exponential with mean 1 whatever the batch size, round trip ``rtt``, no library CPU.
    ``worker_empty_limit=1`` makes visits exhaustive (the loop releases a thread at its
    first empty fetch); ``hold_limit`` > 0 makes the loop poll every ``hold_limit``
    batches and let go when another thread waits. The switchover between threads is the
    release, the poll and the acquire, a round trip each (`rebinding_wait`); the next
    thread is any visible one but the thread just left, at random; an idle loop waits
    for a wake-up or ``coordinator_delay``. `PollingRecursion` follows the same rules.
    """
    return Scenario(
        Workload(KeyThread, Poisson(arrival_rate), Service.exponential(1.0), Keyed(Uniform(threads))),
        loops=1,
        settings=Settings(
            worker_batch_size=batch,
            worker_empty_limit=1,
            worker_hold_limit=hold_limit,
            coordinator_delay=coordinator_delay,
            worker_empty_pause=0.0,
        ),
        rtt=rtt,
        messages=messages,
        warmup=warmup,
        seed=seed,
        overhead=NONE,
    )


Chooser = Callable[[list[int], "int | None"], int]
"""Picks the thread to bind from the poll's candidates (oldest-visible first) and the thread just left."""


def uniform_choice(rng: random.Random) -> Chooser:
    """The library's rule for one loop (`sharded_queue.core.order_candidates`): any candidate
    but the thread just left, uniformly at random; that one only when it is alone."""

    def choose(candidates: list[int], left: int | None) -> int:
        others = [c for c in candidates if c != left]
        return rng.choice(others) if others else candidates[0]

    return choose


class ReplayedChoice:
    """A `Chooser` that makes the twin's choices (its visits' threads, in turn), refusing one the
    library's rule does not allow. ``ranks`` records each as (rank by age among the others, how many)."""

    def __init__(self, visits: Sequence[int]) -> None:
        self.visits = iter(visits)
        self.ranks: list[tuple[int, int]] = []

    def __call__(self, candidates: list[int], left: int | None) -> int:
        others = [c for c in candidates if c != left]
        if not others:
            return candidates[0]  # the thread just left, alone: no new visit in the twin's list
        chosen = next(self.visits)
        if chosen not in others:
            raise ValueError(f"the twin bound thread {chosen} where the rule allows {others} (left {left})")
        self.ranks.append((others.index(chosen), len(others)))
        return chosen


class PollingRecursion:
    """One loop serving threads by the library's rules, event by event: no simpy, none of the twin's code.

    A call acts at the storage half a round trip after it is sent and its reply comes
    back half a round trip later. The loop polls (a thread is visible when it has
    messages and no lease, since ``max(its release, its oldest message)``; up to 16
    oldest-visible candidates); binds the thread ``choose`` picks (Acquire); then cycles:
    each Cycle acks the last batch and fetches up to ``batch`` messages that arrived by
    then, whose ``perform`` starts at the reply and takes ``service(count)``; the first
    empty fetch ends the visit, and so does a poll every ``hold_limit`` batches that finds
    another thread visible (then one more Cycle acks). A release (End) follows. A poll
    that finds nothing waits for a wake-up (a round trip after the next arrival) or
    ``coordinator_delay``; a delay of 0 polls again at once.

    Args:
        arrivals: Per thread, its messages' enqueue times, sorted.
        service: Duration of a ``perform`` of that many messages, called in perform order.
    """

    def __init__(
        self,
        arrivals: Sequence[np.ndarray],
        batch: int,
        rtt: float,
        service: Callable[[int], float],
        choose: Chooser,
        *,
        hold_limit: int = 0,
        coordinator_delay: float = math.inf,
    ) -> None:
        self.times = [np.asarray(a, dtype=float) for a in arrivals]
        self.heads = [0] * len(self.times)  # per thread: its first message not fetched
        self.waits = [np.full(len(a), math.nan) for a in self.times]
        self.released = [-math.inf] * len(self.times)  # per thread: when its lease was last released
        self.batch, self.rtt, self.service, self.choose = batch, rtt, service, choose
        self.hold_limit, self.delay = hold_limit, coordinator_delay
        self.now = 0.0  # when the loop sends its next call

    def run(self) -> list[np.ndarray]:
        """Every message's wait (``perform`` start less enqueue), per thread in FIFO order."""
        left: int | None = None
        while any(h < len(t) for h, t in zip(self.heads, self.times, strict=True)):
            thread = self._bind(left)
            if thread is not None:
                self._visit(thread)
                self._release(thread)
                left = thread
        return self.waits

    def _release(self, thread: int) -> None:
        """End: the release reaches the storage half a round trip after it is sent."""
        self.released[thread] = self.now + self.rtt / 2
        self.now += self.rtt

    def _head(self, thread: int) -> float:
        head, times = self.heads[thread], self.times[thread]
        return float(times[head]) if head < len(times) else math.inf

    def _visible(self, at: float, leased: int | None = None) -> list[int]:
        return [j for j in range(len(self.times)) if j != leased and self._head(j) <= at]

    def _bind(self, left: int | None) -> int | None:
        """Poll, then Acquire the chosen thread (a visible thread has messages and no other loop
        takes them); or wait when the poll found nothing."""
        found = self._visible(self.now + self.rtt / 2)
        self.now += self.rtt
        if not found:
            self._idle()
            return None
        found.sort(key=lambda j: max(self.released[j], self._head(j)))
        thread = self.choose(found[:CANDIDATES_PER_HANDLER], left)
        self.now += self.rtt
        return thread

    def _idle(self) -> None:
        first = min(self._head(j) for j in range(len(self.times)))  # the next arrival
        if self.delay == 0 and self.rtt > 0:  # poll again at once: skip the polls that reach the storage before it
            self.now += max(math.ceil((first - self.now - self.rtt / 2) / self.rtt), 0) * self.rtt
            return
        wake = first + self.rtt
        if wake > self.now:
            self.now = min(wake, self.now + self.delay) if self.delay > 0 else wake

    def _visit(self, thread: int) -> None:
        times, waits, held = self.times[thread], self.waits[thread], 0
        while True:
            at = self.now + self.rtt / 2  # the Cycle reaches the storage: ack, then fetch
            self.now += self.rtt
            head = self.heads[thread]
            count = min(int(times.searchsorted(at, "right")) - head, self.batch)
            if count == 0:
                return
            waits[head : head + count] = self.now - times[head : head + count]
            self.heads[thread] = head + count
            self.now += self.service(count)
            held += 1
            if self.hold_limit and held == self.hold_limit:
                held = 0
                others = self._visible(self.now + self.rtt / 2, thread)  # the Poll
                self.now += self.rtt
                if others:
                    self.now += self.rtt  # a Cycle that only acks
                    return


def polling_paths(
    trace: pd.DataFrame, threads: int
) -> tuple[list[np.ndarray], list[np.ndarray], list[float], list[int]]:
    """The paths of a `polling_scenario` run, for `PollingRecursion`: per thread its enqueue
    times and waits in FIFO order, the batches' perform times in start order, and the
    threads of the loop's visits in turn (a change of thread starts a visit)."""
    by_thread = trace.assign(thread=trace["thread"].astype(int)).sort_values(["thread", "enqueued_at"], kind="stable")
    groups = [by_thread[by_thread["thread"] == j] for j in range(threads)]
    arrivals = [g["enqueued_at"].to_numpy() for g in groups]
    waits = [(g["started_at"] - g["enqueued_at"]).to_numpy() for g in groups]
    batches = by_thread.groupby("batch").agg(
        started=("started_at", "first"), finished=("finished_at", "first"), thread=("thread", "first")
    )
    batches = batches.sort_values("started", kind="stable")
    sequence = batches["thread"].tolist()
    visits = [thread for k, thread in enumerate(sequence) if k == 0 or thread != sequence[k - 1]]
    return arrivals, waits, (batches["finished"] - batches["started"]).tolist(), visits


def rebinding_mean_wait(
    arrival_rate: float, rtt: float, messages: int, seed: int, batches: int = 20, warmup: float = 200.0
) -> WaitEstimate:
    """Simulate `polling_scenario` with one thread and batch size 1, whose mean wait is `rebinding_wait`.

    The control variate is M/G/1 FIFO with service ``rtt + S``, fed the same arrival
    and ``perform`` times (in that order: one thread, FIFO), whose mean wait is
    Pollaczek-Khinchine's; it shares the sampling noise but none of the switchovers.
    """
    scenario = polling_scenario(arrival_rate, 1, 1, messages, rtt, seed, warmup=warmup)
    latencies = simulate(scenario).latencies().sort_values("enqueued_at", kind="stable")
    enqueued = latencies["enqueued_at"].to_numpy()
    services = (latencies["finished_at"] - latencies["started_at"]).to_numpy()
    kept = enqueued >= warmup
    wait = latencies["wait"].to_numpy()[kept]
    control = fcfs_waits(enqueued, services + rtt, 1)[kept]
    g1, g2 = rtt + 1.0, rtt * rtt + 2 * rtt + 2.0
    return WaitEstimate(
        float(wait.mean()),
        len(wait),
        tuple(float(p.mean()) for p in np.array_split(wait, batches)),
        tuple(float(p.mean()) for p in np.array_split(control, batches)),
        arrival_rate * g2 / (2 * (1 - arrival_rate * g1)),
    )
