"""One trace schema for real workers and the simulator.

A trace has one row per performed message::

    handler, thread, order, worker, batch, enqueued_at, started_at, finished_at

Times are seconds (wall clock for real runs, simulated time for the twin);
``batch`` numbers the ``perform`` call the message was part of. pandas is only
imported when a trace is turned into a DataFrame.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import pandas as pd

COLUMNS = ("handler", "thread", "order", "worker", "batch", "enqueued_at", "started_at", "finished_at")


class _Thread(Protocol):
    @property
    def handler(self) -> str: ...
    @property
    def thread(self) -> str: ...


class _Message(Protocol):
    @property
    def enqueued_at(self) -> float: ...


class TraceRecorder:
    """Appends trace rows cheaply, column by column."""

    def __init__(self) -> None:
        self.columns: dict[str, list[Any]] = {name: [] for name in COLUMNS}
        self.batches = 0

    def record(
        self,
        thread: _Thread,
        order: str,
        worker: str,
        messages: Sequence[_Message],
        started_at: float,
        finished_at: float,
    ) -> None:
        """Record one performed batch."""
        count = len(messages)
        self.batches += 1
        columns = self.columns
        columns["handler"].extend([thread.handler] * count)
        columns["thread"].extend([thread.thread] * count)
        columns["order"].extend([order] * count)
        columns["worker"].extend([worker] * count)
        columns["batch"].extend([self.batches] * count)
        columns["enqueued_at"].extend(message.enqueued_at for message in messages)
        columns["started_at"].extend([started_at] * count)
        columns["finished_at"].extend([finished_at] * count)

    def __len__(self) -> int:
        return len(self.columns["batch"])

    def frame(self) -> pd.DataFrame:
        """The trace as a DataFrame with the shared schema."""
        return to_frame(self.columns)


def to_frame(columns: Mapping[str, Sequence[Any]]) -> pd.DataFrame:
    """A trace DataFrame from columns, with the schema's column order and dtypes."""
    import pandas as pd

    frame = pd.DataFrame({name: columns[name] for name in COLUMNS})
    for name in ("handler", "thread", "order", "worker"):
        frame[name] = frame[name].astype(str)
    frame["batch"] = frame["batch"].astype("int64")
    for name in ("enqueued_at", "started_at", "finished_at"):
        frame[name] = frame[name].astype("float64")
    return frame
