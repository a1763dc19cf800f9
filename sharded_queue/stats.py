"""Stats: depth, lag, holder and dead letters of every tube, read from storage alone.

`collect_stats` returns one `StatsRow` per (handler, thread, order) that holds
messages, plus one total row per handler (``thread`` and ``order`` None). It
never imports anything: handler names come from the set of names the storage
keeps (filled by `Queue.register` and by every `Worker`). Its reads are a fixed
number of pipelined round trips whatever the number of threads (see
`Storage.snapshot`).

Columns:

- ``depth``: messages waiting (an unacked batch in flight still counts);
- ``lag``: age in seconds of the tube's oldest waiting message: the storage
  server's clock (``TIME``) minus the envelope's ``enqueued_at``, which is the
  *producer's* clock. A skewed producer clock skews lag by as much (a clock
  ahead shows as 0). None when nothing waits. The total row has the largest;
- ``holder``: the worker id and loop holding the thread (``host:pid-suffix:loop``);
- ``held_since``: when it took the lease, by the holder's own clock (display only);
- ``dead``: the thread's dead letters, counted once per thread: on its first
  row, or on a row of its own (order None, depth 0) when nothing waits in it.
  The total row has the handler's total.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import msgspec

from .leases import parse_lease_token
from .storage import Storage, ThreadSnapshot

if TYPE_CHECKING:
    import pandas as pd

COLUMNS = ("handler", "thread", "order", "depth", "lag", "holder", "held_since", "dead")


@dataclass(frozen=True, slots=True)
class StatsRow:
    """One row of `collect_stats` (columns explained in the module docstring)."""

    handler: str
    thread: str | None
    order: str | None
    depth: int
    lag: float | None
    holder: str | None
    held_since: float | None
    dead: int

    def as_dict(self) -> dict[str, Any]:
        """The row as a plain dict with the keys of `COLUMNS` (JSON-ready)."""
        return asdict(self)


async def collect_stats(storage: Storage, handlers: Sequence[str] | None = None) -> list[StatsRow]:
    """Stats rows of ``handlers`` (default: every stored handler name), handler by handler.

    Args:
        storage: Where to read.
        handlers: Stored handler names; unknown ones get a total row of zeros.

    Raises:
        StorageError: Redis failed or did not answer in time.
    """
    names = list(dict.fromkeys(handlers)) if handlers is not None else await storage.handler_names()
    snapshot = await storage.snapshot(names)
    by_handler: dict[str, list[ThreadSnapshot]] = {name: [] for name in names}
    for thread in snapshot.threads:
        by_handler[thread.ref.handler].append(thread)
    rows: list[StatsRow] = []
    for name in names:
        threads = sorted(by_handler[name], key=lambda t: _natural(t.ref.thread))
        handler_rows = [row for thread in threads for row in _thread_rows(thread, snapshot.now)]
        lags = [row.lag for row in handler_rows if row.lag is not None]
        rows += handler_rows
        rows.append(
            StatsRow(
                handler=name,
                thread=None,
                order=None,
                depth=sum(row.depth for row in handler_rows),
                lag=max(lags) if lags else None,
                holder=None,
                held_since=None,
                dead=sum(thread.dead for thread in threads),
            )
        )
    return rows


def _thread_rows(thread: ThreadSnapshot, now: float) -> list[StatsRow]:
    holder, since = parse_lease_token(thread.lease) if thread.lease is not None else (None, None)
    rows = []
    dead = thread.dead
    for order, depth, head in thread.tubes:
        if depth <= 0:
            continue
        lag = _lag(head, now)
        rows.append(StatsRow(thread.ref.handler, thread.ref.thread, order, depth, lag, holder, since, dead))
        dead = 0  # counted once, on the thread's first row
    if dead:
        rows.append(StatsRow(thread.ref.handler, thread.ref.thread, None, 0, None, holder, since, dead))
    return rows


def _lag(head: bytes | None, now: float) -> float | None:
    """Server time minus the head envelope's ``enqueued_at``; None if it does not parse."""
    if head is None:
        return None
    try:
        enqueued_at, _ = msgspec.json.decode(head, type=tuple[float, msgspec.Raw])
    except msgspec.DecodeError:
        return None
    return max(0.0, now - enqueued_at) if math.isfinite(enqueued_at) else None


def _natural(name: str) -> tuple[float, str]:
    """Threads ``"2"`` before ``"10"``, then other names in text order."""
    try:
        value = float(name)
    except ValueError:
        return math.inf, name
    return (value, name) if math.isfinite(value) else (math.inf, name)


def stats_frame(rows: Sequence[StatsRow]) -> pd.DataFrame:
    """Stats rows as a DataFrame with the columns of `COLUMNS`."""
    import pandas as pd

    # object columns keep None as None (a str column would turn the total rows' thread into NaN)
    frame = pd.DataFrame(
        [[getattr(row, name) for name in COLUMNS] for row in rows], columns=list(COLUMNS), dtype=object
    )
    frame["depth"] = frame["depth"].astype("int64")
    frame["dead"] = frame["dead"].astype("int64")
    frame["lag"] = frame["lag"].astype("float64")
    frame["held_since"] = frame["held_since"].astype("float64")
    return frame
