"""Closed forms the simulator is checked against, for tests and notebooks.

* `erlang_c_wait`: mean wait of M/M/c (Poisson arrivals, ``c`` servers,
  exponential service, one queue) — a worker fleet with batch size 1 and many
  more threads than loops.
* `bulk_service_wait`: mean wait of M/M^(1,B)/1 (Bailey 1954) — one thread,
  one loop, batches of up to ``B`` whose service time does not depend on
  their size; an idle server starts on the first arrival at once.
* `mm1_sojourn`: mean time in system of M/M/1 — any number of loops of one
  process whose ``perform`` is all CPU: they share one CPU (`cpu_scenario`).
"""

from __future__ import annotations

import dataclasses
import heapq
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from sharded_queue import Handler, RequestRoute, Route, Settings

from .arrivals import Poisson
from .cpu import NONE
from .requests import Keyed, RoundRobin, Uniform
from .scenario import Scenario
from .service import Service
from .simulation import simulate
from .workload import Workload


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
