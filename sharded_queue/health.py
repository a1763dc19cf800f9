"""`StorageHealth`: a storage outage, or a failover, is two log lines, not one per retry."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from .errors import StorageError, StorageFull

logger = logging.getLogger("sharded_queue")

QUIET = 1.0
"""Seconds calls must answer with none failing before an outage is logged as over: on a cluster
the nodes that still answer would otherwise end and restart it at every call until the failover."""


class StorageHealth:
    """Logs a storage outage once: a WARNING when calls start failing, an INFO once they answer again.

    Shared by a worker's loops, its heartbeats and its wake-up listener, so an
    outage is two lines, not one per retry. The INFO comes once calls have
    answered for `QUIET` seconds with none failing, and gives the outage's
    length up to the first call that answered. With ``primaries`` (where a
    Sentinel-managed or a cluster client last found its primaries,
    `Storage.primaries`), the WARNING names them and the INFO says "failover"
    when another primary took over.

    Args:
        primaries: The primaries' ``host:port``, or None for a plain server.
    """

    def __init__(self, primaries: Callable[[], frozenset[str] | None] | None = None) -> None:
        self.failing_since: float | None = None
        self._primaries = primaries or (lambda: None)
        self._before: frozenset[str] | None = None
        self._last_failure = 0.0
        self._answered_at: float | None = None

    def failed(self, exc: StorageError) -> None:
        """A storage call failed (it will be retried)."""
        self._last_failure = time.monotonic()
        self._answered_at = None
        if self.failing_since is not None:
            return
        self.failing_since = self._last_failure
        self._before = self._primaries()
        if isinstance(exc, StorageFull):
            logger.warning(
                "storage is full (maxmemory reached): registrations are refused until workers drain it; "
                "retrying the refused write: %s",
                exc,
            )
        elif self._before is not None:
            logger.warning(
                "storage is failing (%s %s); retrying with backoff until it answers, or until a failover "
                "promotes a replica: %s",
                "primaries" if len(self._before) > 1 else "primary",
                ", ".join(sorted(self._before)) or "unknown",
                exc,
            )
        else:
            logger.warning("storage is failing; retrying with backoff until it answers: %s", exc)

    def answered(self) -> None:
        """A storage call succeeded."""
        if self.failing_since is None:
            return
        now = time.monotonic()
        if self._answered_at is None:
            self._answered_at = now
        if now - self._last_failure < QUIET:
            return
        took = self._answered_at - self.failing_since
        before, after = self._before, self._primaries()
        self.failing_since = self._before = self._answered_at = None
        if before is None or after is None or after == before:
            logger.info("storage recovered after %.1f s", took)
            return
        logger.info(
            "storage failover over after %.1f s: primary %s replaces %s",
            took,
            ", ".join(sorted(after - before)) or "?",
            ", ".join(sorted(before - after)) or "?",
        )
