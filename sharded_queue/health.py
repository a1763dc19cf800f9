"""`StorageHealth`: a storage outage, or a failover, is two log lines, not one per retry."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from .errors import StorageError, StorageFull

logger = logging.getLogger("sharded_queue")


class StorageHealth:
    """Logs a storage outage once: a WARNING when calls start failing, an INFO when one answers again.

    Shared by a worker's loops, its heartbeats and its wake-up listener, so an
    outage is two lines, not one per retry. With ``primaries`` (where a
    Sentinel-managed client or a cluster client last found its primaries,
    `Storage.primaries`), the lines say "failover" when the storage has
    replicas, and the INFO names the primary that replaced the one lost.

    Args:
        primaries: The primaries' ``host:port``, or None for a plain server.
    """

    def __init__(self, primaries: Callable[[], frozenset[str] | None] | None = None) -> None:
        self.failing_since: float | None = None
        self._primaries = primaries or (lambda: None)
        self._before: frozenset[str] | None = None

    def failed(self, exc: StorageError) -> None:
        """A storage call failed (it will be retried)."""
        if self.failing_since is None:
            self.failing_since = time.monotonic()
            self._before = self._primaries()
            if isinstance(exc, StorageFull):
                logger.warning(
                    "storage is full (maxmemory reached): registrations are refused until workers drain it; "
                    "retrying the refused write: %s",
                    exc,
                )
            elif self._before is not None:
                logger.warning(
                    "storage is failing (primary %s); retrying with backoff until it answers, or until a failover "
                    "promotes a replica: %s",
                    ", ".join(sorted(self._before)) or "unknown",
                    exc,
                )
            else:
                logger.warning("storage is failing; retrying with backoff until it answers: %s", exc)

    def answered(self) -> None:
        """A storage call succeeded."""
        if self.failing_since is None:
            return
        took = time.monotonic() - self.failing_since
        before, after = self._before, self._primaries()
        self.failing_since = self._before = None
        if before is None or after is None or after == before:
            logger.info("storage recovered after %.1f s", took)
            return
        logger.info(
            "storage failover over after %.1f s: primary %s replaces %s",
            took,
            ", ".join(sorted(after - before)) or "?",
            ", ".join(sorted(before - after)) or "?",
        )
