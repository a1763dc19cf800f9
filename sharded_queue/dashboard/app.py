"""The dashboard's ASGI app: a static page and JSON endpoints over `Queue`'s public methods.

Endpoints (JSON unless said otherwise):

- ``GET /``: the page (``static/index.html``, its script and style under ``/static/``);
- ``GET /api/info``: ``storage`` (its URL without password), ``prefix`` (the key
  prefix) and ``actions`` (the names of the enabled actions; empty when read-only);
- ``GET /api/stats``: `Queue.stats` as ``{"columns": [...], "rows": [{column: value}]}``:
  a row per tube holding messages and a total row per handler (``thread`` null);
- ``GET /api/workers``: `Queue.workers`, the same shape plus ``now``, the storage
  server's clock that ``started_at`` and ``heartbeat_at`` are on;
- ``GET /api/dead-letters/{handler}?limit=100``: ``{"handler", "count", "rows"}``, the
  first ``limit`` records (`DeadLetterRecord.encode`: error, traceback, payload);
- ``GET /api/schedules``: every handler's `Queue.schedules`, with a ``handler`` column;
- ``POST`` the routes of `ACTIONS` (requeue, purge a handler's dead letters; pause, resume a thread).

Every value is JSON: NaN as null, times as seconds since the epoch. A storage
failure answers 503 with ``{"error": ...}``. Actions answer 403 unless the app
was made with ``allow_actions`` and the request carries ``Authorization: Bearer
<token>`` (compared in constant time); a browser never sends that header by
itself, so another site cannot act through a visitor's browser.
"""

from __future__ import annotations

import logging
import math
import secrets
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware, RequestResponseEndpoint
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from ..errors import StorageError
from ..queue import Queue

if TYPE_CHECKING:
    import pandas as pd

logger = logging.getLogger("sharded_queue.dashboard")

STATIC = Path(__file__).parent / "static"
DEAD_LETTERS_SHOWN = 100
DEAD_LETTERS_MAX = 1000
HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; "
        "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


@dataclass(frozen=True, slots=True)
class Action:
    """A ``POST`` endpoint that changes the queue: refused (403) unless enabled and authorised.

    Attributes:
        name: Its name, in ``/api/info``, in logs and on the page's buttons.
        path: Its route; the path parameters are passed to ``run``.
        run: What it does, through `Queue`'s public methods; returns the JSON answer.
    """

    name: str
    path: str
    run: Callable[[Queue, Mapping[str, str]], Awaitable[dict[str, Any]]]


async def _requeue(queue: Queue, params: Mapping[str, str]) -> dict[str, Any]:
    return {"requeued": await queue.requeue_dead_letters(params["handler"])}


async def _purge(queue: Queue, params: Mapping[str, str]) -> dict[str, Any]:
    return {"purged": await queue.purge_dead_letters(params["handler"])}


async def _pause(queue: Queue, params: Mapping[str, str]) -> dict[str, Any]:
    await queue.pause(params["handler"], params["thread"])
    return {"paused": params["thread"]}


async def _resume(queue: Queue, params: Mapping[str, str]) -> dict[str, Any]:
    await queue.resume(params["handler"], params["thread"])
    return {"resumed": params["thread"]}


ACTIONS: tuple[Action, ...] = (
    Action("requeue", "/api/dead-letters/{handler}/requeue", _requeue),
    Action("purge", "/api/dead-letters/{handler}/purge", _purge),
    Action("pause", "/api/threads/{handler}/{thread}/pause", _pause),
    Action("resume", "/api/threads/{handler}/{thread}/resume", _resume),
)


def create_app(
    queue: Queue,
    *,
    allow_actions: bool = False,
    token: str | None = None,
    allowed_hosts: Sequence[str] | None = None,
    actions: Sequence[Action] = ACTIONS,
) -> Starlette:
    """The dashboard of ``queue`` as an ASGI app (the caller closes ``queue``).

    Args:
        queue: Where to read (and act); only its public methods are called.
        allow_actions: Enable ``actions``; without it they answer 403 whatever the token.
        token: The bearer token actions need; required with ``allow_actions``.
        allowed_hosts: ``Host`` header values to accept (others get 400), against
            DNS rebinding of a dashboard on a loopback address; None accepts any.
        actions: The action table (`ACTIONS`).

    Raises:
        ValueError: ``allow_actions`` without a token.
    """
    if allow_actions and not token:
        raise ValueError("allow_actions needs a token: actions are refused without one")
    endpoints = _Endpoints(queue, allow_actions, token or "")
    routes = [
        Route("/", endpoints.page),
        Route("/api/info", endpoints.info),
        Route("/api/stats", endpoints.stats),
        Route("/api/workers", endpoints.workers),
        Route("/api/schedules", endpoints.schedules),
        Route("/api/dead-letters/{handler}", endpoints.dead_letters),
        *(Route(action.path, endpoints.action(action), methods=["POST"]) for action in actions),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
    endpoints.names = [action.name for action in actions] if allow_actions else []
    middleware = [Middleware(BaseHTTPMiddleware, dispatch=_headers)]
    if allowed_hosts is not None:
        middleware.insert(0, Middleware(TrustedHostMiddleware, allowed_hosts=list(allowed_hosts)))
    return Starlette(routes=routes, middleware=middleware, exception_handlers={StorageError: _storage_failed})


class _Endpoints:
    """The endpoints, over one `Queue`."""

    def __init__(self, queue: Queue, allow_actions: bool, token: str) -> None:
        self.queue = queue
        self.allow_actions = allow_actions
        self._token = token.encode()
        self.names: list[str] = []

    async def page(self, request: Request) -> Response:
        return FileResponse(STATIC / "index.html", media_type="text/html; charset=utf-8")

    async def info(self, request: Request) -> Response:
        storage = self.queue.storage
        return JSONResponse({"storage": storage.location, "prefix": storage.keys.prefix, "actions": self.names})

    async def stats(self, request: Request) -> Response:
        return JSONResponse(table(await self.queue.stats()))

    async def workers(self, request: Request) -> Response:
        frame = await self.queue.workers()
        now = await self.queue.storage.server_time()
        return JSONResponse({"now": now, **table(frame)})

    async def schedules(self, request: Request) -> Response:
        columns = ["handler"]
        rows: list[dict[str, Any]] = []
        for name in (await self.queue.stats())["handler"].unique():
            found = table(await self.queue.schedules(str(name)))
            columns += [column for column in found["columns"] if column not in columns]
            rows += [{"handler": str(name), **row} for row in found["rows"]]
        return JSONResponse({"columns": columns, "rows": rows})

    async def dead_letters(self, request: Request) -> Response:
        handler = request.path_params["handler"]
        try:
            limit = int(request.query_params.get("limit", DEAD_LETTERS_SHOWN))
        except ValueError:
            limit = 0
        if not 1 <= limit <= DEAD_LETTERS_MAX:
            return JSONResponse({"error": f"limit must be an integer from 1 to {DEAD_LETTERS_MAX}"}, 400)
        records = await self.queue.dead_letters(handler, limit=limit)
        count = await self.queue.dead_letter_count(handler)
        rows = [msgspec.json.decode(record.encode()) for record in records]
        return JSONResponse({"handler": handler, "count": count, "rows": rows})

    def action(self, action: Action) -> Callable[[Request], Awaitable[Response]]:
        """The endpoint of ``action``: refused unless enabled and authorised, else run and logged."""

        async def endpoint(request: Request) -> Response:
            params = dict(request.path_params)
            where = f"{action.name} {' '.join(params.values())}"
            client = request.client.host if request.client else "?"
            refusal = self._refusal(request)
            if refusal is not None:
                logger.warning("dashboard: refused %s from %s: %s", where, client, refusal)
                return JSONResponse({"error": refusal}, 403)
            answer = await action.run(self.queue, params)
            logger.info("dashboard: %s from %s: %s", where, client, answer)
            return JSONResponse(answer)

        return endpoint

    def _refusal(self, request: Request) -> str | None:
        """Why an action request is refused, or None (the token is never echoed)."""
        if not self.allow_actions:
            return "actions are disabled: start the dashboard with --allow-actions and a token"
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not secrets.compare_digest(given.strip().encode(), self._token):
            return "a valid token is needed: send the header Authorization: Bearer <token>"
        return None


async def _headers(request: Request, call_next: RequestResponseEndpoint) -> Response:
    response = await call_next(request)
    response.headers.update(HEADERS)
    return response


async def _storage_failed(request: Request, exc: Exception) -> Response:
    return JSONResponse({"error": f"storage: {type(exc).__name__}: {exc}"}, 503)


def table(frame: pd.DataFrame) -> dict[str, Any]:
    """A DataFrame as ``{"columns": [...], "rows": [{column: value}]}``, every value plain JSON."""
    columns = [str(column) for column in frame.columns]
    rows = [dict(zip(columns, map(plain, values), strict=True)) for values in frame.itertuples(index=False, name=None)]
    return {"columns": columns, "rows": rows}


def plain(value: Any) -> Any:
    """A DataFrame cell as JSON: numpy scalars as numbers, NaN and NaT as None, datetimes as epoch seconds."""
    if isinstance(value, list | tuple):
        return [plain(item) for item in value]
    if isinstance(value, dict):
        return {str(key): plain(item) for key, item in value.items()}
    if hasattr(value, "item") and callable(value.item):  # a numpy scalar
        value = value.item()
    if isinstance(value, datetime):
        return None if value != value else value.timestamp()  # NaT is not equal to itself
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
