"""`StorageHealth`: a storage outage is two log lines, not one per retry."""

from __future__ import annotations

import logging
import time

from .errors import StorageError, StorageFull

logger = logging.getLogger("sharded_queue")


class StorageHealth:
    """Logs a storage outage once: a WARNING when calls start failing, an INFO when one answers again.

    Shared by a worker's loops, its heartbeats and its wake-up listener, so an
    outage is two lines, not one per retry.
    """

    def __init__(self) -> None:
        self.failing_since: float | None = None

    def failed(self, exc: StorageError) -> None:
        """A storage call failed (it will be retried)."""
        if self.failing_since is None:
            self.failing_since = time.monotonic()
            if isinstance(exc, StorageFull):
                logger.warning(
                    "storage is full (maxmemory reached): registrations are refused until workers drain it; "
                    "retrying the refused write: %s",
                    exc,
                )
            else:
                logger.warning("storage is failing; retrying with backoff until it answers: %s", exc)

    def answered(self) -> None:
        """A storage call succeeded."""
        if self.failing_since is not None:
            logger.info("storage recovered after %.1f s", time.monotonic() - self.failing_since)
            self.failing_since = None
