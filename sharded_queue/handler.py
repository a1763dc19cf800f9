"""Handlers and routes: what users subclass and return.

A `Handler` subclass names its request type in the annotation of ``perform``'s
``*requests``, decides in ``route`` which thread and order each request goes to,
and performs batches of them.
"""

from __future__ import annotations

import inspect
import math
import typing
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from .core.controls import Rate, parse_rate
from .core.routing import RequestRoute, Route, check_name
from .serializer import Codec

__all__ = ["Handler", "HandlerSpec", "RequestRoute", "Route", "handler_name"]


class Handler:
    """Base class of job handlers.

    Attributes:
        name: Stable name the handler's tubes are stored under; defaults to
            ``module:qualname``. Set it to keep messages across a rename.
        orders: Optional precedence of orders, most urgent first. When set, an
            order not listed is an error at `Queue.register`. When unset, orders
            are served ascending, numeric strings as numbers (``"2"`` before ``"10"``).
        batch_size: Optional per-handler batch size, overriding
            ``settings.worker_batch_size``.
        retry_attempts: Optional per-handler number of performs before failing
            requests are dead-lettered, overriding ``settings.retry_attempts``.
        timeout: Optional seconds one ``perform`` call may run, overriding
            ``settings.perform_timeout`` (300 s by default). A ``perform`` past it
            is cancelled and counts as a failed attempt (``TimeoutError``).
        rate_limit: Optional rate limit of the whole handler, across all workers
            (``"500/s"``, ``"10/min"``, ``"2/h"``): a token bucket on the storage's
            clock cuts each batch to what it allows.
        thread_rate_limit: Optional rate limit of each of its threads.
        max_pending: Optional most requests waiting in one thread: a registration
            that would exceed it raises `ThreadFull` and writes nothing of the thread.
        batch_linger: Optional seconds a loop whose thread holds fewer than a batch
            waits for more (woken as soon as it fills), overriding
            ``settings.worker_batch_linger``.

    Rate strings, ``max_pending`` and ``batch_linger`` are checked when the class
    is defined (a `ValueError` naming the attribute).

    ``route``, ``start``, ``perform`` and ``stop`` must be coroutine functions
    (``async def``) and ``route`` a classmethod; a handler that breaks this is a
    ``TypeError`` the first time a `Queue` or `Worker` uses it.
    """

    name: ClassVar[str | None] = None
    orders: ClassVar[Sequence[str] | None] = None
    batch_size: ClassVar[int | None] = None
    retry_attempts: ClassVar[int | None] = None
    timeout: ClassVar[float | None] = None
    rate_limit: ClassVar[str | None] = None
    thread_rate_limit: ClassVar[str | None] = None
    max_pending: ClassVar[int | None] = None
    batch_linger: ClassVar[float | None] = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        check_controls(cls)

    @classmethod
    async def route(cls, *requests: Any) -> list[RequestRoute]:
        """Route every request; the default puts all on the default thread and order."""
        return [RequestRoute(request, Route()) for request in requests]

    async def start(self) -> None:
        """Called once when a worker loop binds one of this handler's threads."""

    async def perform(self, *requests: Any) -> None:
        """Perform one batch of requests, in their FIFO order."""
        raise NotImplementedError(f"{type(self).__name__}.perform is not implemented")

    async def stop(self) -> None:
        """Called once when the worker loop releases the thread."""


def handler_name(handler: type[Handler]) -> str:
    """The name ``handler``'s tubes are stored under."""
    if not (isinstance(handler, type) and issubclass(handler, Handler)):
        raise TypeError(f"expected a Handler subclass, got {handler!r}")
    name = handler.__dict__.get("name") or f"{handler.__module__}:{handler.__qualname__}"
    if "{" in name or "}" in name or "/" in name:
        raise ValueError(f"handler name {name!r} must not contain '{{', '}}' or '/'")
    return name


def check_methods(handler: type[Handler]) -> None:
    """Check that the worker and `Queue.register` can call ``handler``'s methods as designed.

    Raises:
        TypeError: ``route`` is not a classmethod, or one of ``route``, ``start``,
            ``perform``, ``stop`` is not a coroutine function.
    """
    where = handler.__qualname__
    if not isinstance(inspect.getattr_static(handler, "route"), classmethod):
        raise TypeError(
            f"{where}.route must be a classmethod (it routes requests before any handler instance exists): "
            "decorate it with @classmethod"
        )
    for method in ("route", "start", "perform", "stop"):
        if not inspect.iscoroutinefunction(getattr(handler, method)):
            raise TypeError(
                f"{where}.{method} must be a coroutine function: declare it `async def {method}(...)` "
                "(the worker awaits it)"
            )


def check_controls(handler: type[Handler]) -> tuple[Rate | None, Rate | None]:
    """Check ``handler``'s controls; returns its rate limits (handler-wide, per thread), read.

    Raises:
        ValueError: a rate string that does not read (`core.parse_rate`), a ``max_pending``
            that is not an int >= 1, or a ``batch_linger`` that is not a finite number >= 0.
    """
    where = handler.__qualname__
    rates = (
        parse_rate(handler.rate_limit, f"{where}.rate_limit"),
        parse_rate(handler.thread_rate_limit, f"{where}.thread_rate_limit"),
    )
    cap = handler.max_pending
    if cap is not None and (isinstance(cap, bool) or not isinstance(cap, int) or cap < 1):
        raise ValueError(f"{where}.max_pending must be an int >= 1 (requests waiting in a thread) or None, got {cap!r}")
    linger = handler.batch_linger
    if linger is not None and (
        isinstance(linger, bool) or not isinstance(linger, int | float) or not 0 <= linger < math.inf
    ):
        raise ValueError(f"{where}.batch_linger must be a number of seconds >= 0 or None, got {linger!r}")
    return rates


def request_type(handler: type[Handler]) -> Any:
    """The request type annotated on ``perform``'s ``*requests`` (`typing.Any` if none)."""
    parameters = inspect.signature(handler.perform).parameters.values()
    star = next((p for p in parameters if p.kind is inspect.Parameter.VAR_POSITIONAL), None)
    if star is None:
        raise TypeError(f"{handler.__qualname__}.perform must take *requests")
    if star.annotation is inspect.Parameter.empty:
        return Any
    hints = typing.get_type_hints(handler.perform)
    return hints.get(star.name, Any)


def declared_orders(handler: type[Handler]) -> tuple[str, ...] | None:
    """``handler.orders`` normalised to strings, or None when undeclared."""
    if handler.orders is None:
        return None
    orders = tuple(check_name("order", order) for order in handler.orders)
    if len(set(orders)) != len(orders) or not orders:
        raise ValueError(f"{handler.__qualname__}.orders must be non-empty and unique: {orders!r}")
    return orders


@dataclass(frozen=True)
class HandlerSpec:
    """What the queue knows about a handler class, computed once."""

    name: str
    handler: type[Handler]
    codec: Codec
    orders: tuple[str, ...] | None
    rate: Rate | None = None
    thread_rate: Rate | None = None

    @classmethod
    def of(cls, handler: type[Handler]) -> HandlerSpec:
        """Inspect ``handler``: its stored name, request codec, declared orders and overrides.

        Raises:
            TypeError: a method is not a coroutine function, or ``route`` not a classmethod.
            ValueError: ``batch_size`` or ``retry_attempts`` is set but not an int >= 1,
                or ``timeout`` is set but not a finite number > 0, or a control is bad
                (`check_controls`).
        """
        name = handler_name(handler)
        check_methods(handler)
        for attribute in ("batch_size", "retry_attempts"):
            value = getattr(handler, attribute)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"{handler.__qualname__}.{attribute} must be an int >= 1 or None, got {value!r}")
        timeout = handler.timeout
        if timeout is not None and (
            isinstance(timeout, bool) or not isinstance(timeout, int | float) or not 0 < timeout < math.inf
        ):
            raise ValueError(f"{handler.__qualname__}.timeout must be a number of seconds > 0 or None, got {timeout!r}")
        rate, thread_rate = check_controls(handler)
        return cls(name, handler, Codec(request_type(handler)), declared_orders(handler), rate, thread_rate)
