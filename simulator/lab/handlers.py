"""Handlers whose ``perform`` costs a known time, for real runs: a worker process rebuilds one
from a JSON spec (`handler_from_spec`), so no handler class travels between processes.

Requests are ints, routed round robin over ``threads`` (or a ``hot`` share on thread ``0``,
or by a key drawn from a Zipf law of exponent ``zipf`` over ``keys`` keys, hashed to the
threads) and ``orders_used`` orders; ``perform`` sleeps (`TimedHandler`: waiting, like I/O), computes
(`SpinningHandler`: the process's CPU) or does nothing (`NoopHandler`).
"""

from __future__ import annotations

import asyncio
import bisect
import time
from typing import Any, ClassVar

from sharded_queue import Handler, RequestRoute, Route

_GOLDEN = (5**0.5 - 1) / 2
"""Request ``r`` is on the hot thread when ``frac(r * _GOLDEN) < hot``: spread evenly over time."""


class TimedHandler(Handler):
    """``perform`` costs a known time; requests are ints routed round robin."""

    threads: ClassVar[int] = 1
    orders_used: ClassVar[int] = 1
    per_batch: ClassVar[float] = 0.0
    per_message: ClassVar[float] = 0.0
    hot: ClassVar[float] = 0.0
    zipf: ClassVar[float] = 0.0
    keys: ClassVar[int] = 0
    _cdf: ClassVar[list[float]] = []

    @classmethod
    async def route(cls, *requests: int) -> list[RequestRoute]:
        return [RequestRoute(r, Route(cls.thread_of(r), (r // cls.threads) % cls.orders_used)) for r in requests]

    @classmethod
    def thread_of(cls, request: int) -> int:
        """Round robin; or the hot thread ``0`` for a ``hot`` share and round robin over the others;
        or the thread of a Zipf-drawn key (the draw is ``frac(request * golden ratio)``: spread evenly)."""
        if cls.zipf:
            return cls.key_of(request) % cls.threads
        if not cls.hot or cls.threads == 1:
            return request % cls.threads
        return 0 if (request * _GOLDEN) % 1 < cls.hot else 1 + request % (cls.threads - 1)

    @classmethod
    def key_of(cls, request: int) -> int:
        """The Zipf-drawn key of ``request``: key ``k`` (0-based) with weight ``1 / (k + 1) ** zipf``."""
        if not cls._cdf:
            weights = [1 / (k + 1) ** cls.zipf for k in range(cls.keys)]
            total, running = sum(weights), 0.0
            cls._cdf = [running := running + w / total for w in weights]
        return min(bisect.bisect_left(cls._cdf, (request * _GOLDEN) % 1), cls.keys - 1)

    async def perform(self, *requests: int) -> None:
        await asyncio.sleep(self.per_batch + self.per_message * len(requests))


class SpinningHandler(TimedHandler):
    """``perform`` computes for a known CPU time (it holds the worker process's CPU)."""

    async def perform(self, *requests: int) -> None:
        end = time.thread_time() + self.per_batch + self.per_message * len(requests)
        while time.thread_time() < end:
            pass


class NoopHandler(TimedHandler):
    """``perform`` does nothing: what is left is the library's own cost."""

    async def perform(self, *requests: int) -> None:
        pass


PERFORMS: dict[str, type[TimedHandler]] = {"sleep": TimedHandler, "spin": SpinningHandler, "noop": NoopHandler}


def handler_from_spec(spec: dict[str, Any]) -> type[TimedHandler]:
    """The handler class a spec describes (`simulator.lab.accuracy.spec_of`): ``name``, ``perform``
    (``"sleep"``, ``"spin"`` or ``"noop"``), ``threads``, ``orders_used``, ``per_batch``,
    ``per_message``, ``hot``, ``zipf`` and ``keys``."""
    attributes = {key: spec[key] for key in ("threads", "orders_used", "per_batch", "per_message", "hot")}
    attributes |= {"zipf": spec.get("zipf", 0.0), "keys": spec.get("keys", 0), "_cdf": []}
    attributes["name"] = f"accuracy:{spec['name']}"
    return type(f"Timed_{spec['name']}", (PERFORMS[spec["perform"]],), attributes)
