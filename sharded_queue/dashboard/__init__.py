"""A web dashboard of a queue (``pip install 'sharded-queue[dashboard]'``): ``sharded-queue dashboard``.

A thin exporter over `Queue`'s public methods (`Queue.stats`, `Queue.workers`,
`Queue.dead_letters`, `Queue.schedules` and the dead-letter actions), served by
Starlette on uvicorn: one static page that polls the JSON endpoints every second
(no reload, no build step, nothing fetched from elsewhere). Read-only unless
made with ``allow_actions`` and a token. Handler names are shown as stored and
never imported. ``import sharded_queue`` never imports this package; its
dependencies are the ``dashboard`` extra's.

- `sharded_queue.dashboard.app`: `create_app`, the endpoints and the `ACTIONS` table;
- `sharded_queue.dashboard.server`: `serve`, uvicorn until SIGTERM or SIGINT.
"""

from __future__ import annotations

from .app import ACTIONS, Action, create_app
from .server import serve

__all__ = ["ACTIONS", "Action", "create_app", "serve"]
