"""Stats: depth, lag, holder, deferred requests and dead letters of every tube, read from storage alone.

`stats_page` returns one `StatsRow` per (handler, thread, order) that holds
messages, for a page of threads, plus on the first page one total row per
handler (``thread`` and ``order`` None) and the cursor of the next page. It
never imports anything: handler names come from the set of names the storage
keeps (filled by `Queue.register` and by every `Worker`). A handler's totals
come from the counts the scripts keep (`sharded_queue.storage.keys`), however
many threads it has, and are never computed from the rows. A page is three
round trips: its threads (by ZSCAN over the handlers' indexes), then the counts
and what the threads hold, in one pipeline, then the server's clock. While
workers run, a total may differ from the sum of its rows by what changed
between the two reads: on a cluster, where they are on different nodes, or on
one server when a long pipeline reaches it in several reads.

Columns:

- ``depth``: messages waiting (an unacked batch in flight still counts);
- ``lag``: age in seconds of the tube's oldest waiting message: the storage
  server's clock (``TIME``) minus the envelope's ``enqueued_at``, which is the
  *producer's* clock. A skewed producer clock skews lag by as much (a clock
  ahead shows as 0). None when nothing waits. The total row has the handler's
  largest (of the heads of all its tubes);
- ``holder``: the worker id and loop holding the thread (``host:pid-suffix:loop``);
- ``held_since``: when it took the lease, by the holder's own clock (display
  only); None when nobody holds the thread;
- ``deferred``: the thread's deferred requests not yet due, and
- ``dead``: its dead letters, each counted once per thread: on its first row,
  or on a row of its own (order None, depth 0) when nothing waits in it. The
  total row has the handler's totals;
- ``paused``: the thread is paused (`Queue.pause`), by name or with its whole
  handler; on the total row, the whole handler is.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

import msgspec

from .frames import require_pandas
from .leases import parse_lease_token
from .serializer import enqueued_at_of
from .storage import HandlerCounts, Position, Storage, ThreadView

if TYPE_CHECKING:
    import pandas as pd

COLUMNS = ("handler", "thread", "order", "depth", "lag", "holder", "held_since", "deferred", "dead", "paused")

DEFAULT_LIMIT = 1000
"""Threads per page of stats rows, unless told otherwise."""


@dataclass(frozen=True, slots=True)
class StatsRow:
    """One row of `stats_page` (columns explained in the module docstring)."""

    handler: str
    thread: str | None
    order: str | None
    depth: int
    lag: float | None
    holder: str | None
    held_since: float | None
    deferred: int
    dead: int
    paused: bool = False

    def as_dict(self) -> dict[str, Any]:
        """The row as a plain dict with the keys of `COLUMNS` (JSON-ready)."""
        return asdict(self)


class StatsPage(NamedTuple):
    """Rows of a page of stats, and the cursor of the next page (None: this is the last)."""

    rows: list[StatsRow]
    cursor: str | None


async def stats_page(
    storage: Storage, handlers: Sequence[str] | None = None, *, limit: int = DEFAULT_LIMIT, cursor: str | None = None
) -> StatsPage:
    """A page of stats rows of ``handlers`` (default: every stored handler name).

    Args:
        storage: Where to read.
        handlers: Stored handler names; unknown ones get a total row of zeros.
        limit: Threads of this page (0: the total rows only).
        cursor: Where the page starts: the ``cursor`` of the page before, or None
            for the first page, which also has every handler's total row, after
            that handler's rows of the page.

    Raises:
        ValueError: ``cursor`` is not one this function returned, or ``limit`` < 0.
        StorageError: Redis failed or did not answer in time.
    """
    if limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit!r}")
    names = list(dict.fromkeys(handlers)) if handlers is not None else await storage.handler_names()
    start = _position(cursor)
    page = await storage.thread_page(names, start, limit)
    totals, views, stored = await storage.page_snapshot(names if start is None else [], page.refs, names)
    now = await storage.server_time()
    pauses = {name: {thread for thread, ends in stored[name].items() if ends > now} for name in names}
    by_handler: dict[str, list[ThreadView]] = {name: [] for name in names}
    for view in views:
        by_handler[view.ref.handler].append(view)
    rows: list[StatsRow] = []
    for name in names:
        paused = pauses.get(name, set())
        for view in sorted(by_handler[name], key=lambda v: natural(v.ref.thread)):
            rows += _thread_rows(view, now, "*" in paused or view.ref.thread in paused)
        if name in totals:
            rows.append(_total_row(name, totals[name], now, "*" in paused))
    return StatsPage(rows, None if page.next is None else msgspec.json.encode(list(page.next)).decode())


async def collect_stats(
    storage: Storage, handlers: Sequence[str] | None = None, *, limit: int = DEFAULT_LIMIT, cursor: str | None = None
) -> list[StatsRow]:
    """The rows of `stats_page` (the first page, by default), without the next cursor."""
    return (await stats_page(storage, handlers, limit=limit, cursor=cursor)).rows


def _position(cursor: str | None) -> Position | None:
    """The position a cursor of `stats_page` names."""
    if cursor is None:
        return None
    try:
        handler, phase, scan, skip = msgspec.json.decode(cursor, type=tuple[str, int, str, int])
    except (msgspec.DecodeError, msgspec.ValidationError, TypeError):
        raise ValueError(f"not a stats cursor: {cursor!r}") from None
    return Position(handler, phase, scan, skip)


def _thread_rows(view: ThreadView, now: float, paused: bool) -> list[StatsRow]:
    holder, since = parse_lease_token(view.lease) if view.lease is not None else (None, None)
    handler, thread = view.ref.handler, view.ref.thread
    rows = []
    deferred, dead = view.deferred, view.dead
    for tube in view.tubes:
        if tube.depth <= 0:
            continue
        lag = _lag(tube.envelopes[0] if tube.envelopes else None, now)
        rows.append(StatsRow(handler, thread, tube.order, tube.depth, lag, holder, since, deferred, dead, paused))
        deferred = dead = 0  # counted once, on the thread's first row
    if deferred or dead:
        rows.append(StatsRow(handler, thread, None, 0, None, holder, since, deferred, dead, paused))
    return rows


def _total_row(handler: str, counts: HandlerCounts, now: float, paused: bool) -> StatsRow:
    oldest = counts.oldest
    lag = max(0.0, now - oldest) if oldest is not None and math.isfinite(oldest) else None
    return StatsRow(handler, None, None, counts.waiting, lag, None, None, counts.deferred, counts.dead, paused)


def _lag(head: bytes | None, now: float) -> float | None:
    """Server time minus the head envelope's ``enqueued_at``; None if it does not parse."""
    enqueued_at = None if head is None else enqueued_at_of(head)
    if enqueued_at is None:
        return None
    return max(0.0, now - enqueued_at) if math.isfinite(enqueued_at) else None


def natural(name: str) -> tuple[float, str]:
    """Threads ``"2"`` before ``"10"``, then other names in text order."""
    try:
        value = float(name)
    except ValueError:
        return math.inf, name
    return (value, name) if math.isfinite(value) else (math.inf, name)


def stats_frame(rows: Sequence[StatsRow], cursor: str | None = None) -> pd.DataFrame:
    """Stats rows as a DataFrame with the columns of `COLUMNS`, ``cursor`` in ``frame.attrs["cursor"]``.

    ``lag`` is a float column (NaN where None); ``held_since`` keeps None where
    nobody holds the thread.
    """
    require_pandas("Queue.stats()")
    import pandas as pd

    # object columns keep None as None (a str column would turn the total rows' thread into NaN)
    frame = pd.DataFrame(
        [[getattr(row, name) for name in COLUMNS] for row in rows], columns=list(COLUMNS), dtype=object
    )
    for name in ("depth", "deferred", "dead"):
        frame[name] = frame[name].astype("int64")
    frame["lag"] = frame["lag"].astype("float64")
    frame["paused"] = frame["paused"].astype("bool")
    frame.attrs["cursor"] = cursor
    return frame
