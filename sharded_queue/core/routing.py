"""Routing: where a request goes (`Route`, `RequestRoute`), the units it lands in
(`ThreadRef`, `Tube`), and the order precedence inside a thread.

Shared by `Queue.register` and the simulator's workload: both check what a
handler's ``route()`` returned, group it by tube and rank orders here.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import msgspec

from ..errors import RouteError, RouteTypeError
from ..settings import settings


class _RouteFields(NamedTuple):
    thread: str
    order: str


class Route(_RouteFields):
    """Where a request goes: a thread (strict FIFO, one worker at a time) and an order.

    An immutable (thread, order) pair; made once per registered request, so it
    is a tuple for speed.
    """

    __slots__ = ()

    def __new__(cls, thread: str | int | None = None, order: str | int | None = None) -> Route:
        """A route.

        Args:
            thread: Thread name; ints are normalised with ``str()``. Defaults to
                ``settings.default_thread`` at call time.
            order: Order (priority) inside the thread; see `Handler.orders`.
                Defaults to ``settings.default_order`` at call time.
        """
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
    return check_name(what, value)


def check_name(what: str, value: object) -> str:
    """A thread or order name: a non-empty str or an int (as ``str()``), free of braces (hash tags)."""
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


@dataclass(frozen=True, slots=True)
class ThreadRef:
    """One (handler, thread): the unit of exclusivity, leased by one loop at a time."""

    handler: str
    thread: str


@dataclass(frozen=True, slots=True)
class Tube:
    """One (handler, thread, order): a FIFO list of messages."""

    handler: str
    thread: str
    order: str

    @property
    def thread_ref(self) -> ThreadRef:
        """The thread this tube belongs to."""
        return ThreadRef(self.handler, self.thread)


def check_routes(requests: Sequence[Any], routes: Any, where: str) -> list[RequestRoute]:
    """Validate what ``route()`` returned: exactly one `RequestRoute` per request.

    Raises:
        RouteError: not a list/tuple, or not one item per request.
        RouteTypeError: an item is not a `RequestRoute`.
    """
    if not isinstance(routes, list | tuple):
        raise RouteTypeError(f"{where} must return a list of RequestRoute, got {type(routes).__name__}")
    if len(routes) != len(requests):
        raise RouteError(f"{where} returned {len(routes)} routes for {len(requests)} requests")
    for position, item in enumerate(routes):
        if not isinstance(item, RequestRoute):
            raise RouteTypeError(f"{where} item {position} is {type(item).__name__}, not RequestRoute")
        if not isinstance(item.route, Route):
            raise RouteTypeError(f"{where} item {position} has route {item.route!r}, not a Route")
    return list(routes)


def group_by_tube(handler: str, routes: Iterable[RequestRoute]) -> dict[Tube, list[Any]]:
    """Requests grouped by tube, each group in the order given (FIFO)."""
    groups: dict[tuple[str, str], list[Any]] = {}
    for item in routes:
        route = item.route
        key = (route.thread, route.order)
        group = groups.get(key)
        if group is None:
            groups[key] = [item.request]
        else:
            group.append(item.request)
    return {Tube(handler, thread, order): group for (thread, order), group in groups.items()}


def order_rank(order: str, declared: Sequence[str] | None) -> float:
    """Score of ``order`` in a thread's order index (lower is served first).

    Declared orders rank by position. Otherwise numeric orders rank by value and
    the rest rank last (``inf``), where Redis breaks ties by comparing members
    bytewise; `order_key` is the same total order for Python's ``sorted``.

    Raises:
        ValueError: ``order`` is not one of the ``declared`` orders.
    """
    if declared is not None:
        try:
            return float(declared.index(order))
        except ValueError:
            raise ValueError(f"order {order!r} is not one of the declared orders {list(declared)!r}") from None
    try:
        value = float(order)
    except ValueError:
        return math.inf
    return math.inf if math.isnan(value) else value


def order_key(order: str, declared: Sequence[str] | None) -> tuple[float, bytes]:
    """Sort key giving the same precedence as the storage's order index."""
    return order_rank(order, declared), order.encode()
