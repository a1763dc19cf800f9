"""Handlers and routes: what users subclass and return.

A `Handler` subclass names its request type in the annotation of ``perform``'s
``*requests``, decides in ``route`` which thread and order each request goes to,
and performs batches of them.
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Sequence
from typing import Any, ClassVar, NamedTuple

import msgspec

from .settings import settings


class _RouteFields(NamedTuple):
    thread: str
    order: str


class Route(_RouteFields):
    """Where a request goes: a thread (strict FIFO, one worker at a time) and an order.

    An immutable (thread, order) pair; made once per registered request, so it
    is a tuple for speed.

    Args:
        thread: Thread name; ints are normalised with ``str()``. Defaults to
            ``settings.default_thread`` at call time.
        order: Order (priority) inside the thread; see `Handler.orders`.
            Defaults to ``settings.default_order`` at call time.
    """

    __slots__ = ()

    def __new__(cls, thread: str | int | None = None, order: str | int | None = None) -> Route:
        if thread is None:
            thread = settings.default_thread
        if order is None:
            order = settings.default_order
        # Most requests of a registration share a few routes: hand out one
        # instance per (thread, order). Only ints and strs are keys (True == 1).
        plain = type(thread) in _PLAIN and type(order) in _PLAIN and cls is Route
        if plain:
            route = _ROUTES.get((thread, order))
            if route is not None:
                return route
        route = tuple.__new__(cls, (_part("thread", thread, ""), _part("order", order, "")))
        if plain:
            if len(_ROUTES) >= _ROUTES_MAX:
                _ROUTES.clear()
            _ROUTES[thread, order] = route
        return route

    def __repr__(self) -> str:
        return f"Route(thread={self.thread!r}, order={self.order!r})"


_PLAIN = (int, str)
_ROUTES: dict[tuple[object, object], Route] = {}
_ROUTES_MAX = 4096


def _part(what: str, value: object, default: str) -> str:
    """A route part: the default for None, ``str()`` of an int, a checked str (fast path first)."""
    if value is None:
        return default
    if type(value) is int:
        return str(value)
    if type(value) is str and value and "{" not in value and "}" not in value:
        return value
    return _name(what, value)


def _name(what: str, value: object) -> str:
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise TypeError(f"Route {what} must be a str or int, got {type(value).__name__}: {value!r}")
    text = str(value)
    if not text or "{" in text or "}" in text:
        raise ValueError(f"Route {what} must be non-empty and free of '{{' and '}}', got {text!r}")
    return text


class RequestRoute(msgspec.Struct, frozen=True):
    """A request together with its `Route`; ``route()`` returns one per request.

    A frozen msgspec ``Struct``: made once per registered request, in C.
    """

    request: Any
    route: Route


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

    ``route``, ``start``, ``perform`` and ``stop`` must be coroutine functions
    (``async def``) and ``route`` a classmethod; a handler that breaks this is a
    ``TypeError`` the first time a `Queue` or `Worker` uses it.
    """

    name: ClassVar[str | None] = None
    orders: ClassVar[Sequence[str] | None] = None
    batch_size: ClassVar[int | None] = None
    retry_attempts: ClassVar[int | None] = None
    timeout: ClassVar[float | None] = None

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
    orders = tuple(_name("order", order) for order in handler.orders)
    if len(set(orders)) != len(orders) or not orders:
        raise ValueError(f"{handler.__qualname__}.orders must be non-empty and unique: {orders!r}")
    return orders
