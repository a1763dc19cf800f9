"""Time: when deferred requests are due and when recurring ones tick.

Everything here is a pure function of times the storage server gave (its
clock, never a client's): the shells pass ``now`` in and carry the results out.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta


@dataclass(frozen=True, slots=True)
class Schedule:
    """When a recurring request runs: every ``every`` seconds, or at each match of a ``cron`` string (UTC).

    A tick is registered once, by whichever worker finds it due. When no worker
    ran for several ticks, the missed ones collapse into one: the next tick is
    always the first one after now.
    """

    every: float | None = None
    cron: str | None = None

    @classmethod
    def of(cls, recurrent: float | int | timedelta | str) -> Schedule:
        """The schedule of a ``recurrent=`` argument: seconds, a `timedelta` or a cron string.

        Raises:
            ValueError: a period that is not a positive finite number, or an invalid cron string.
            TypeError: anything else.
        """
        if isinstance(recurrent, str):
            from croniter import croniter

            if not croniter.is_valid(recurrent):
                raise ValueError(f"recurrent={recurrent!r} is not a valid cron string")
            return cls(cron=recurrent)
        seconds = _seconds("recurrent", recurrent)
        if seconds <= 0:
            raise ValueError(f"recurrent={recurrent!r}: the period must be positive")
        return cls(every=seconds)

    def first_after(self, now: float) -> float:
        """The first tick after ``now`` (seconds since the epoch, the storage server's clock)."""
        if self.every is not None:
            return now + self.every
        from croniter import croniter

        assert self.cron is not None
        return float(croniter(self.cron, datetime.fromtimestamp(now, UTC)).get_next(float))

    def next_after(self, due: float, now: float) -> float:
        """The tick after the one due at ``due``: the first after ``now`` (missed ticks collapse)."""
        if self.every is not None:
            return due + self.every * (math.floor(max(0.0, now - due) / self.every) + 1)
        return self.first_after(max(due, now))

    def describe(self) -> float | str:
        """Seconds between ticks, or the cron string."""
        return self.every if self.every is not None else str(self.cron)


def due_when(defer: float | int | timedelta | datetime | None) -> str:
    """How the storage is told when a deferred request is due: '' now, '+seconds' from its
    own clock's now, or '@epoch seconds' for an aware datetime (compared on the server's clock).

    Raises:
        ValueError: a negative or non-finite delay, or a naive datetime.
        TypeError: anything else.
    """
    if defer is None:
        return ""
    if isinstance(defer, datetime):
        if defer.tzinfo is None or defer.utcoffset() is None:
            raise ValueError(f"defer={defer!r} is a naive datetime: give it a timezone (e.g. datetime.now(UTC))")
        return f"@{defer.timestamp()!r}"
    seconds = _seconds("defer", defer)
    if seconds < 0:
        raise ValueError(f"defer={defer!r}: a delay cannot be negative")
    return f"+{seconds!r}" if seconds else ""


def _seconds(what: str, value: object) -> float:
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    else:
        raise TypeError(f"{what}= takes seconds or a timedelta, got {type(value).__name__}: {value!r}")
    if not math.isfinite(seconds):
        raise ValueError(f"{what}={value!r} is not a finite number of seconds")
    return seconds


@dataclass(frozen=True, slots=True)
class DueTick:
    """A recurring request whose tick is due, as the storage found it (`MoveDue`).

    Attributes:
        member: The stored recurring request (request, newline, order).
        due: When this tick was due (the storage server's clock).
        stored_due: ``due`` as the storage holds it: the tick's fence, passed back as is.
        schedule: Its schedule.
        rank: Its order's rank in the thread.
        unique: Registered with ``if_not_exists``.
    """

    member: bytes
    due: float
    stored_due: bytes
    schedule: Schedule
    rank: str
    unique: bool


@dataclass(frozen=True, slots=True)
class Tick:
    """Register a recurring request's due tick once, and schedule its next one (`Fire`)."""

    member: bytes
    stored_due: bytes
    next_due: float
    rank: str
    unique: bool


def next_ticks(due: Sequence[DueTick], now: float) -> list[Tick]:
    """The ticks to fire for ``due`` recurring requests found at ``now`` (server clock):
    each is registered once, and its next tick is the first after ``now`` (missed ones collapse)."""
    return [Tick(t.member, t.stored_due, t.schedule.next_after(t.due, now), t.rank, t.unique) for t in due]
