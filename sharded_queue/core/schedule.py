"""Time: when deferred requests are due and when recurring ones tick.

Everything here is a pure function of times the storage server gave (its
clock, never a client's): the shells pass ``now`` in and carry the results out.
(Two input checks read the local clock, where any clock will do: that a cron
string ever matches, and that an aware ``defer`` datetime is within ten years.)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo

MAX_DEFER = 10 * 365.25 * 86400
"""Longest ``defer``, in seconds (ten years): a longer one is taken for a unit mistake."""


@dataclass(frozen=True, slots=True)
class Cron:
    """A cron schedule in a time zone: ``recurrent=Cron("0 9 * * mon-fri", tz="Europe/Paris")``.

    Five fields (minute hour day month weekday), as croniter reads them; the
    matches are taken in ``tz`` (an IANA name), so "9 o'clock" stays 9 o'clock
    across daylight saving time, as croniter handles it: a time skipped by the
    spring change is not run, one repeated in autumn runs once. A plain string
    ``recurrent="0 9 * * *"`` is the same in UTC.
    """

    expression: str
    tz: str = "UTC"


@dataclass(frozen=True, slots=True)
class Schedule:
    """When a recurring request runs: every ``every`` seconds, or at each match of a ``cron``
    string in time zone ``tz`` (UTC by default).

    A tick is registered once, by whichever worker finds it due. When no worker
    ran for several ticks, the missed ones collapse into one: the next tick is
    always the first one after now.
    """

    every: float | None = None
    cron: str | None = None
    tz: str | None = None

    @classmethod
    def of(cls, recurrent: float | int | timedelta | str | Cron, shortest: float = 0.0) -> Schedule:
        """The schedule of a ``recurrent=`` argument: seconds, a `timedelta`, a cron string or a `Cron`.

        ``shortest`` is the shortest period allowed: `Queue.register` gives its coordinator delay. Every tick is a
        registration that a worker's poll fires, and idle workers poll every coordinator
        delay: a shorter period cannot be kept, and only turns workers into loops of round trips.

        Raises:
            ValueError: a period shorter than ``shortest`` or not finite; a cron string that
                is invalid, has other than five fields, names an unknown time zone or never matches.
            TypeError: anything else.
        """
        if isinstance(recurrent, str):
            recurrent = Cron(recurrent)
        if isinstance(recurrent, Cron):
            return _cron(recurrent)
        seconds = _seconds("recurrent", recurrent)
        if seconds <= 0:
            raise ValueError(f"recurrent={recurrent!r}: the period must be positive")
        if seconds < shortest:
            raise ValueError(
                f"recurrent={recurrent!r}: the shortest period is the coordinator delay, {shortest:g} s "
                "(QUEUE_COORDINATOR_DELAY: how often idle workers look for due ticks)"
            )
        return cls(every=seconds)

    def first_after(self, now: float) -> float:
        """The first tick after ``now`` (seconds since the epoch, the storage server's clock)."""
        if self.every is not None:
            return now + self.every
        from croniter import croniter

        assert self.cron is not None
        start = datetime.fromtimestamp(now, _zone(self.tz or "UTC"))
        return float(croniter(self.cron, start).get_next(float))

    def next_after(self, due: float, now: float) -> float:
        """The tick after the one due at ``due``: the first after ``now`` (missed ticks collapse)."""
        if self.every is not None:
            return due + self.every * (math.floor(max(0.0, now - due) / self.every) + 1)
        return self.first_after(max(due, now))

    def describe(self) -> float | str:
        """Seconds between ticks, or the cron string (with its time zone, when not UTC)."""
        if self.every is not None:
            return self.every
        return str(self.cron) if self.tz in (None, "UTC") else f"{self.cron} ({self.tz})"


def _cron(cron: Cron) -> Schedule:
    from croniter import CroniterError, croniter

    expression = cron.expression
    fields = len(expression.split())
    if fields != 5 or not croniter.is_valid(expression):
        why = f": it has {fields} fields, not 5 (minute hour day month weekday)" if fields != 5 else ""
        raise ValueError(f"recurrent={expression!r} is not a valid cron string{why}")
    schedule = Schedule(cron=expression, tz=None if cron.tz == "UTC" else cron.tz)
    try:
        schedule.first_after(datetime.now(UTC).timestamp())  # a check of the expression, not a time kept
    except CroniterError:
        raise ValueError(f"recurrent={expression!r}: the cron string never matches") from None
    return schedule


def _zone(name: str) -> tzinfo:
    """The IANA time zone ``name``.

    Raises:
        ValueError: an unknown name.
    """
    if name == "UTC":
        return UTC
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {name!r} (an IANA name such as 'Europe/Paris')") from None


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
        if (defer - datetime.now(UTC)).total_seconds() > MAX_DEFER:  # a sanity bound: any clock will do
            raise ValueError(f"defer={defer!r} is more than ten years away")
        return f"@{defer.timestamp()!r}"
    seconds = _seconds("defer", defer)
    if seconds < 0:
        raise ValueError(f"defer={defer!r}: a delay cannot be negative")
    if seconds > MAX_DEFER:
        raise ValueError(f"defer={defer!r}: at most ten years ({MAX_DEFER:g} s)")
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
