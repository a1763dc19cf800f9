"""The numbers a worker loop decides with, and the small decisions made from them.

`LoopPolicy` is built once from `Settings` and the handlers' own overrides
(``batch_size``, ``retry_attempts``, ``timeout``, ``batch_linger``), by the asyncio `Worker` and
by the simulator alike (`LoopPolicy.for_handlers`).
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..settings import Settings
from .effects import Batch
from .routing import ThreadRef

CANDIDATES_PER_HANDLER = 16
"""How many visible threads per handler a `Poll` reads from the coordinator's index."""


@dataclass(frozen=True)
class LoopPolicy:
    """The numbers a worker loop decides with, from `Settings` and handler overrides.

    ``batch_sizes``, ``attempts`` and ``timeouts`` hold the handlers' own values,
    by stored handler name; a handler without one takes the setting.
    """

    batch_size: int = 128
    empty_limit: int = 16
    empty_pause: float = 0.1
    coordinator_delay: float = 1.0
    retry_attempts: int = 3
    retry_backoff: float = 0.1
    retry_backoff_max: float = 5.0
    hold_limit: int = 16
    perform_timeout: float = 300.0
    batch_linger: float = 0.0
    batch_sizes: Mapping[str, int] = field(default_factory=dict)
    attempts: Mapping[str, int] = field(default_factory=dict)
    timeouts: Mapping[str, float] = field(default_factory=dict)
    lingers: Mapping[str, float] = field(default_factory=dict)

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        batch_sizes: Mapping[str, int] | None = None,
        attempts: Mapping[str, int] | None = None,
        timeouts: Mapping[str, float] | None = None,
        lingers: Mapping[str, float] | None = None,
    ) -> LoopPolicy:
        """The policy of ``settings``, with per-handler batch sizes, attempts, timeouts and lingers."""
        return cls(
            batch_size=settings.worker_batch_size,
            empty_limit=settings.worker_empty_limit,
            empty_pause=settings.worker_empty_pause,
            coordinator_delay=settings.coordinator_delay,
            retry_attempts=settings.retry_attempts,
            retry_backoff=settings.retry_backoff,
            retry_backoff_max=settings.retry_backoff_max,
            hold_limit=settings.worker_hold_limit,
            perform_timeout=settings.perform_timeout,
            batch_linger=settings.worker_batch_linger,
            batch_sizes=dict(batch_sizes or {}),
            attempts=dict(attempts or {}),
            timeouts=dict(timeouts or {}),
            lingers=dict(lingers or {}),
        )

    @classmethod
    def for_handlers(cls, settings: Settings, handlers: Mapping[str, Any]) -> LoopPolicy:
        """The policy of ``settings`` for ``handlers`` (handler classes by stored name): each
        handler's ``batch_size``, ``retry_attempts``, ``timeout`` and ``batch_linger``, where set, override
        the settings."""

        def own(attribute: str) -> dict[str, Any]:
            values = {name: getattr(handler, attribute, None) for name, handler in handlers.items()}
            return {name: value for name, value in values.items() if value}

        return cls.from_settings(
            settings, own("batch_size"), own("retry_attempts"), own("timeout"), own("batch_linger")
        )

    def batch_limit(self, handler: str, remaining: int | None) -> int:
        """How many messages to fetch next: the batch size, capped by what is left."""
        size = self.batch_sizes.get(handler, self.batch_size)
        return size if remaining is None else min(size, remaining)

    def attempts_for(self, handler: str) -> int:
        """How many times a failing batch (or isolated request) is performed."""
        return self.attempts.get(handler, self.retry_attempts)

    def timeout_for(self, handler: str) -> float:
        """Seconds one ``perform`` call of ``handler`` may run before it is cancelled."""
        return self.timeouts.get(handler, self.perform_timeout)

    def linger_for(self, handler: str) -> float:
        """Seconds a loop waits for a short batch to fill before it performs it (0: never)."""
        return self.lingers.get(handler, self.batch_linger)

    def backoff(self, attempt: int, rng: random.Random) -> float:
        """Pause after failed attempt ``attempt`` (1-based): exponential, half jittered."""
        delay: float = min(self.retry_backoff_max, self.retry_backoff * 2.0 ** (attempt - 1))
        return delay * (0.5 + 0.5 * rng.random())


def order_candidates(
    candidates: Sequence[ThreadRef], rng: random.Random, last: ThreadRef | None = None
) -> list[ThreadRef]:
    """Order in which a loop tries the coordinator's candidates.

    Shuffled so that loops polling at the same moment try different threads
    instead of all racing for the first one; ``last`` (the thread the loop just
    let go of) goes last, so that letting go of it serves another.
    """
    ordered = list(candidates)
    rng.shuffle(ordered)
    if last in ordered:
        ordered.remove(last)
        ordered.append(last)
    return ordered


def after_losses(batch: Batch, attempts: int, limit: int) -> Batch | None:
    """The head to perform of a batch (fetched with ``limit``) that earlier holders fetched
    ``batch.losses`` times without acking it.

    A holder loses its lease mid-batch when its ``perform`` blocks the event loop
    longer than the lease TTL (no heartbeat can run), or kills the worker. The
    losses are counted in storage, so the search for the culprit survives them:
    from ``attempts`` losses on, each further loss halves the head that is
    performed; a head that is performed and acked keeps the count, one that
    loses again halves it. Once a single request keeps losing, this returns
    None: it goes to the dead letters unperformed. So batches of up to B
    cost at most ``attempts + floor(log2 B) + 1`` lost leases before the
    culprit is dead-lettered, whatever their contents.
    """
    size = min(batch.size, limit >> (batch.losses - attempts + 1))
    return batch.head(size) if size else None
