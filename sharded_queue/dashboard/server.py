"""`serve`: the dashboard on uvicorn until SIGTERM or SIGINT, which stop it gracefully."""

from __future__ import annotations

import contextlib
import logging
import signal
from collections.abc import Iterator
from types import FrameType

import uvicorn

from ..queue import Queue
from .app import create_app

logger = logging.getLogger("sharded_queue.dashboard")

LOOPBACK = ("127.0.0.1", "localhost")


async def serve(
    queue: Queue,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    allow_actions: bool = False,
    token: str | None = None,
    access_log: bool = False,
) -> None:
    """Serve the dashboard of ``queue`` on ``host:port`` until SIGTERM or SIGINT.

    On a loopback address only requests for ``127.0.0.1`` or ``localhost`` are
    answered (a web page cannot reach it through a DNS name of its own). Logs
    go to the ``sharded_queue.dashboard`` and ``uvicorn`` loggers, with the
    storage's location (no password), never the token.

    Args:
        queue: The queue to show (the caller closes it).
        host: Address to listen on.
        port: TCP port (0: any free one).
        allow_actions: Enable actions (see `create_app`); needs ``token``.
        token: The bearer token actions need.
        access_log: Log every request (the page polls every second).

    Raises:
        ValueError: ``allow_actions`` without a token.
    """
    app = create_app(
        queue, allow_actions=allow_actions, token=token, allowed_hosts=LOOPBACK if host in LOOPBACK else None
    )
    config = uvicorn.Config(
        app, host=host, port=port, log_config=None, access_log=access_log, lifespan="off", server_header=False
    )
    server = uvicorn.Server(config)
    logger.info(
        "dashboard of %s (key prefix %r): actions %s",
        queue.storage.location,
        queue.storage.keys.prefix,
        "enabled (token required)" if allow_actions else "disabled (read-only)",
    )
    with _stop_on_signals(server):
        await server.serve()


@contextlib.contextmanager
def _stop_on_signals(server: uvicorn.Server) -> Iterator[None]:
    """SIGTERM and SIGINT end ``server`` gracefully, and nothing more.

    uvicorn handles both while it serves and, once stopped, raises the signal
    again for the handler it found; that handler is this no-op stop, so the
    process exits 0 rather than dying of the signal.
    """

    def stop(signum: int, frame: FrameType | None) -> None:
        server.should_exit = True

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
