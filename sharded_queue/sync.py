"""`SyncQueue`: the same `Queue`, for synchronous code (threaded WSGI servers, Django, Flask, scripts)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeVar

from .admin import HandlerRef
from .core import Cron
from .handler import Handler
from .queue import Queue
from .settings import Settings
from .stats import DEFAULT_LIMIT
from .storage import Storage
from .telemetry import Telemetry

if TYPE_CHECKING:
    import pandas as pd

    from .deadletters import DeadLetterRecord

T = TypeVar("T")


class SyncQueue:
    """A `Queue` driven from synchronous code, safe to share between threads.

    It owns one event loop, on a daemon thread of its own, where a real `Queue`
    routes, validates, encodes and stores exactly as it does for async code:
    the same handlers' async ``route()``, the same scripts, one implementation.
    Each call blocks until that is done, so a `register` that returns means the
    requests are stored. No per-call ``asyncio.run``, no "event loop is closed".

    Args:
        url_or_storage: As for `Queue`: a storage URL, a `Storage` that no other
            event loop has used, or None for ``settings.storage_url``.
        settings: Settings to use instead of the module-level ``settings``.
        telemetry: As for `Queue`; a register span is a child of the calling thread's current span.
    """

    def __init__(
        self,
        url_or_storage: str | Storage | None = None,
        *,
        settings: Settings | None = None,
        telemetry: bool | Telemetry | None = None,
    ) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="sharded-queue-sync", daemon=True)
        self._thread.start()
        self._closed = False

        async def make() -> Queue:
            return Queue(url_or_storage, settings=settings, telemetry=telemetry)

        self.queue = self._run(make())

    def _run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        if self._closed:
            coroutine.close()
            raise RuntimeError("this SyncQueue is closed")
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result()

    def register(
        self,
        handler: type[Handler],
        *requests: Any,
        defer: float | timedelta | datetime | None = None,
        if_not_exists: bool = False,
        recurrent: float | timedelta | str | Cron | None = None,
    ) -> int:
        """`Queue.register`, blocking until the requests are stored; returns how many were."""
        return self._run(
            self.queue.register(handler, *requests, defer=defer, if_not_exists=if_not_exists, recurrent=recurrent)
        )

    def unschedule(self, handler: type[Handler], *requests: Any) -> int:
        """`Queue.unschedule`."""
        return self._run(self.queue.unschedule(handler, *requests))

    def schedules(self, handler: HandlerRef) -> pd.DataFrame:
        """`Queue.schedules`."""
        return self._run(self.queue.schedules(handler))

    def pending(self, handler: HandlerRef) -> int:
        """`Queue.pending`."""
        return self._run(self.queue.pending(handler))

    def stats(
        self, handlers: Sequence[HandlerRef] | None = None, *, limit: int = DEFAULT_LIMIT, cursor: str | None = None
    ) -> pd.DataFrame:
        """`Queue.stats`: a page of rows, the next page's cursor in ``frame.attrs["cursor"]``."""
        return self._run(self.queue.stats(handlers, limit=limit, cursor=cursor))

    def workers(self) -> pd.DataFrame:
        """`Queue.workers`."""
        return self._run(self.queue.workers())

    def peek(self, handler: HandlerRef, thread: str | int | None = None, limit: int = 10) -> pd.DataFrame:
        """`Queue.peek`."""
        return self._run(self.queue.peek(handler, thread, limit))

    def deferred(self, handler: HandlerRef, limit: int | None = None) -> pd.DataFrame:
        """`Queue.deferred`."""
        return self._run(self.queue.deferred(handler, limit))

    def dead_letters(self, handler: HandlerRef, limit: int | None = None) -> list[DeadLetterRecord]:
        """`Queue.dead_letters`."""
        return self._run(self.queue.dead_letters(handler, limit))

    def dead_letter_count(self, handler: HandlerRef) -> int:
        """`Queue.dead_letter_count`."""
        return self._run(self.queue.dead_letter_count(handler))

    def pause(
        self, handler: HandlerRef, thread: str | int | None = None, for_: float | timedelta | None = None
    ) -> None:
        """`Queue.pause`."""
        self._run(self.queue.pause(handler, thread, for_))

    def resume(self, handler: HandlerRef, thread: str | int | None = None) -> None:
        """`Queue.resume`."""
        self._run(self.queue.resume(handler, thread))

    def paused(self, handler: HandlerRef) -> list[str]:
        """`Queue.paused`."""
        return self._run(self.queue.paused(handler))

    def close(self) -> None:
        """Close the storage connections and stop the queue's thread (idempotent)."""
        if self._closed:
            return
        self._run(self.queue.close())
        self._closed = True
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()

    def __enter__(self) -> SyncQueue:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return "<SyncQueue" + repr(self.queue).removeprefix("<Queue")
