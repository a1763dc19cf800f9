"""Routing generated requests with the handler's real ``route()``.

``route()`` is an async classmethod. Typical routes never await anything, so
the coroutine is driven by hand (``send(None)``) without an event loop; one
that does await real I/O is run with ``asyncio.run`` on a helper thread, which
also works inside Jupyter's running loop.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import inspect
import typing
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from sharded_queue import Handler, RequestRoute
from sharded_queue.core import Tube, check_routes, group_by_tube, order_key

from .checks import ScenarioError

if TYPE_CHECKING:
    from .requests import Keyed


def run_route(handler: type[Handler], requests: Sequence[Any]) -> Any:
    """What ``handler.route(*requests)`` returns, without needing an event loop."""
    coro = handler.route(*requests)
    try:
        while True:
            if coro.send(None) is not None:  # awaits a real future: needs a loop
                break
    except StopIteration as stop:
        return stop.value
    except RuntimeError as exc:
        if "event loop" not in str(exc):
            raise
    coro.close()
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, handler.route(*requests)).result()


def route_positions(
    handler: type[Handler], name: str, declared: Sequence[str] | None, requests: Sequence[Any]
) -> dict[Tube, list[int]]:
    """Route ``requests`` and group their positions by tube, as `Queue.register` groups them.

    Uses `sharded_queue.core.check_routes` and `group_by_tube`, and checks each
    order against the handler's declared orders like registration does.

    Raises:
        RouteError: ``route()`` did not return one `RequestRoute` per request.
        ScenarioError: an undeclared order, or routes that cannot be matched
            back to their requests.
    """
    where = f"{handler.__qualname__}.route()"
    routes = check_routes(requests, run_route(handler, requests), where)
    positions = _positions(routes, requests, where)
    grouped = group_by_tube(
        name, [RequestRoute(position, item.route) for position, item in zip(positions, routes, strict=True)]
    )
    for tube in grouped:
        try:
            order_key(tube.order, declared)
        except ValueError as exc:
            raise ScenarioError(f"{where}: {exc}") from None
    return grouped


def _positions(routes: Sequence[RequestRoute], requests: Sequence[Any], where: str) -> list[int]:
    """Position of each route's request in ``requests`` (routes may come in another order)."""
    if all(item.request is request for item, request in zip(routes, requests, strict=True)):
        return list(range(len(requests)))
    by_id = {id(request): position for position, request in enumerate(requests)}
    if len(by_id) != len(requests):
        raise ScenarioError(f"{where} reordered requests that are not distinct objects; cannot match routes to them")
    positions = [by_id.get(id(item.request), -1) for item in routes]
    if -1 in positions or len(set(positions)) != len(positions):
        raise ScenarioError(f"{where} returned routes for requests it was not given")
    return positions


def check_bare_keys(handler: type[Handler], requests: Keyed) -> None:
    """Refuse a `Keyed` without ``make=`` whose keys ``route()`` cannot take as requests.

    Without ``make`` every key itself (an int for `Uniform`, `Zipf`, ...) is the
    request. Rather than let ``route()`` fail in the middle of `simulate` (``'int'
    object has no attribute 'user_id'``), the first key is routed once here.

    Raises:
        ScenarioError: ``route()`` raised on a bare key; says what to pass as ``make``.
    """
    key = requests.keys.value(0)
    try:
        run_route(handler, [key])
    except Exception as exc:
        wanted = _annotated_request(handler)
        make = wanted.__qualname__ if isinstance(wanted, type) and not isinstance(key, wanted) else "<key -> request>"
        raise ScenarioError(
            f"Keyed without make= passes each key itself as the request ({key!r}), and "
            f"{handler.__qualname__}.route() failed on it ({type(exc).__name__}: {exc}): "
            f"pass make=, e.g. Keyed({type(requests.keys).__name__}(...), make={make})"
        ) from exc


def _annotated_request(handler: type[Handler]) -> Any:
    """The request type annotated on ``perform``'s or ``route``'s ``*requests``, if any."""
    for method in (handler.perform, getattr(handler.route, "__func__", handler.route)):
        star = next((p for p in inspect.signature(method).parameters.values() if p.kind is p.VAR_POSITIONAL), None)
        if star is None or star.annotation is inspect.Parameter.empty:
            continue
        try:
            found = typing.get_type_hints(method).get(star.name, Any)
        except Exception:  # an annotation that does not resolve here: no hint, only the error
            continue
        if found is not Any:
            return found
    return Any
