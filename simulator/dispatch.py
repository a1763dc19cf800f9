"""A batch that waits to fill: dispatched at ``B`` requests or ``T`` seconds after its first.

`linger_batch` is the closed form the twin's ``batch_linger`` is checked against
(``tests/test_twin_controls.py``); `linger_scenario` is the twin set up as that model.

Poisson arrivals at rate ``λ`` reach one idle loop bound to its thread. The first
request starts a batch at time 0 (the loop's cycle finds fewer than a batch and
lingers); the batch leaves when ``B - 1`` more have come, or at ``T``, whichever is
first; the next request starts the next batch. With ``K(t)`` the arrivals in
``(0, t]``, Poisson with mean ``λt`` (Ross, *Introduction to Probability Models*,
ch. 5), the batch's size is ``N = min(B, 1 + K(T))`` and, while it waits, ``1 + K(t)``
requests wait in it as long as ``K(t) <= B - 2``. So

    E[N] = sum_{k=0}^{B-2} (1 + k) P(K(T) = k) + B P(K(T) >= B - 1)
    E[time all requests of a batch wait] = integral_0^T sum_{k=0}^{B-2} (1 + k) P(K(t) = k) dt
                                         = (1 / λ) sum_{k=0}^{B-2} (1 + k) P(K(T) >= k + 1)

using ``integral_0^T λ P(K(t) = k) dt = P(K(T) >= k + 1)`` (the ``k + 1``-th arrival
comes before ``T``), and a request's mean wait is their ratio (renewal-reward). Such
size-or-time dispatch rules are the batch service policies of Deb and Serfozo,
"Optimal control of batch service queues", *Advances in Applied Probability* 5
(1973) 340-361.
"""

from __future__ import annotations

import math
from typing import Any

from sharded_queue import Handler, RequestRoute, Route, Settings

from .arrivals import Poisson
from .cpu import NONE
from .requests import Keyed, RoundRobin
from .scenario import Scenario
from .service import Service
from .workload import Workload


def linger_batch(rate: float, batch: int, linger: float) -> tuple[float, float]:
    """Mean batch size and mean wait of a request (arrival to dispatch) of batches dispatched at
    ``batch`` requests or ``linger`` seconds after their first, under Poisson arrivals at ``rate``."""
    if rate <= 0 or batch < 1 or linger < 0:
        raise ValueError(f"linger_batch needs rate > 0, batch >= 1, linger >= 0; got {rate}, {batch}, {linger}")
    mean = rate * linger
    point = [math.exp(-mean)]
    for k in range(1, batch):
        point.append(point[-1] * mean / k)
    above = [1.0 - sum(point[: k + 1]) for k in range(batch)]  # P(K(T) >= k + 1)
    size = sum((1 + k) * point[k] for k in range(batch - 1)) + batch * (1.0 - sum(point[: batch - 1]))
    waiting = sum((1 + k) * above[k] for k in range(batch - 1)) / rate
    return size, waiting / size


class OneThreadLinger(Handler):
    """Every request on one thread; batches wait up to ``batch_linger`` to fill (set per scenario)."""

    name = "simulator.dispatch:one-thread"

    @classmethod
    async def route(cls, *requests: Any) -> list[RequestRoute]:
        """All on thread 0."""
        return [RequestRoute(request, Route(thread=0)) for request in requests]


def linger_scenario(rate: float, batch: int, linger: float, messages: int, seed: int = 0) -> Scenario:
    """The twin as `linger_batch`'s model: one loop kept bound to one thread (it never gives it up
    for being empty, and sleeps until a registration wakes it), ``perform`` taking no time, no
    round trip and no library CPU."""
    settings = Settings(
        worker_batch_size=batch,
        worker_batch_linger=linger,
        worker_empty_limit=10**9,
        worker_empty_pause=3600.0,
        coordinator_delay=0.0,
    )
    workload = Workload(OneThreadLinger, Poisson(rate), Service(), Keyed(RoundRobin(1)))
    return Scenario(workload, settings=settings, messages=messages, overhead=NONE, seed=seed)
