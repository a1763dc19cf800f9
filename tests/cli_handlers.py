"""Handlers the CLI tests name on ``sharded-queue worker``'s command line.

Requests are ``[thread, seq]``. Every perform appends one line per request to
the file in ``CLI_TEST_LOG`` with ``os.write`` before returning, so an acked
request is always in the log::

    <pid> <thread> <seq>

``CLI_TEST_PERFORM_SECONDS`` makes each perform sleep first; a negative ``seq``
is a poison request (its perform raises).
"""

from __future__ import annotations

import asyncio
import os
import time

from sharded_queue import Handler, RequestRoute, Route


class Recorder(Handler):
    """Routes ``[thread, seq]`` to its thread and logs every performed request."""

    name = "cli:recorder"

    @classmethod
    async def route(cls, *requests: list[int]) -> list[RequestRoute]:
        return [RequestRoute(r, Route(thread=r[0])) for r in requests]

    async def perform(self, *requests: list[int]) -> None:
        await asyncio.sleep(float(os.environ.get("CLI_TEST_PERFORM_SECONDS", "0")))
        if any(seq < 0 for _, seq in requests):
            raise ValueError("poison request")
        lines = "".join(f"{os.getpid()} {thread} {seq}\n" for thread, seq in requests)
        fd = os.open(os.environ["CLI_TEST_LOG"], os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        try:
            os.write(fd, lines.encode())
        finally:
            os.close(fd)


class RatedRecorder(Recorder):
    """`Recorder` under a handler-wide rate limit; also appends ``<time> <count>`` per perform, at
    its start, to ``CLI_TEST_LOG`` + ``.times``."""

    name = "cli:rated"
    rate_limit = "40/s"
    batch_size = 4

    async def perform(self, *requests: list[int]) -> None:
        fd = os.open(os.environ["CLI_TEST_LOG"] + ".times", os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        try:
            os.write(fd, f"{time.time()!r} {len(requests)}\n".encode())
        finally:
            os.close(fd)
        await super().perform(*requests)


class NotAHandler:
    """A class that is not a Handler."""


class SyncPerform(Handler):
    """A mistake: ``perform`` is not a coroutine function."""

    def perform(self, *requests: int) -> None:  # type: ignore[override]
        pass


class Outer:
    """A namespace, to name a nested handler ``module:Outer.Inner``."""

    class Inner(Handler):
        """A nested handler."""

        async def perform(self, *requests: int) -> None:
            pass
