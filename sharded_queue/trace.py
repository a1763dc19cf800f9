"""One trace schema for real workers and the simulator.

A trace has one row per performed message::

    handler, thread, order, worker, batch, enqueued_at, started_at, finished_at

Times are seconds (wall clock for real runs, simulated time for the twin);
``batch`` numbers the ``perform`` call the message was part of. pandas is only
imported when a trace is turned into a DataFrame.

A trace may also carry ``cpu``: the seconds its ``perform`` call held the
worker's event loop, i.e. ran rather than awaited (the same for every message
of the batch; `CpuTimed`), which a real worker records when tracing is on, so
that the simulator's `calibrate` can tell the CPU part of ``perform`` from its
waiting.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Generator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

import msgspec

from .frames import require_pandas

if TYPE_CHECKING:
    import pandas as pd

COLUMNS = ("handler", "thread", "order", "worker", "batch", "enqueued_at", "started_at", "finished_at")
OPTIONAL = ("cpu",)
"""Columns a trace may have besides `COLUMNS`."""


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
        self.columns: dict[str, list[Any]] = {name: [] for name in (*COLUMNS, *OPTIONAL)}
        self.batches = 0

    def record(
        self,
        thread: _Thread,
        order: str,
        worker: str,
        messages: Sequence[_Message],
        started_at: float,
        finished_at: float,
        cpu: float = float("nan"),
    ) -> None:
        """Record one performed batch (``cpu``: CPU seconds of its ``perform``, NaN if unknown)."""
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
        columns["cpu"].extend([cpu] * count)

    def __len__(self) -> int:
        return len(self.columns["batch"])

    def frame(self) -> pd.DataFrame:
        """The trace as a DataFrame with the shared schema."""
        return to_frame(self.columns)


def to_frame(columns: Mapping[str, Sequence[Any]]) -> pd.DataFrame:
    """A trace DataFrame from columns, with the schema's column order and dtypes."""
    require_pandas("a trace (Worker.trace())")
    import pandas as pd

    names = [*COLUMNS, *(name for name in OPTIONAL if name in columns)]
    frame = pd.DataFrame({name: columns[name] for name in names})
    for name in ("handler", "thread", "order", "worker"):
        frame[name] = frame[name].astype(str)
    frame["batch"] = frame["batch"].astype("int64")
    for name in ("enqueued_at", "started_at", "finished_at", *names[len(COLUMNS) :]):
        frame[name] = frame[name].astype("float64")
    return frame


class SavedTrace(msgspec.Struct):
    """A trace as `save_trace` writes it: the columns and what each worker process measured."""

    columns: dict[str, list[Any]]
    meter: list[dict[str, Any]] = msgspec.field(default_factory=list)


def save_trace(path: str, columns: Mapping[str, Sequence[Any]], meter: Sequence[Mapping[str, Any]]) -> None:
    """Write a trace's columns and run measurements (`sharded_queue.meter`) to ``path`` as JSON."""
    data = SavedTrace({name: list(values) for name, values in columns.items()}, [dict(m) for m in meter])
    with open(path, "wb") as file:
        file.write(msgspec.json.encode(data))


def _read(path: str) -> SavedTrace:
    with open(path, "rb") as file:
        try:
            return msgspec.json.decode(file.read(), type=SavedTrace)
        except msgspec.DecodeError as exc:
            raise ValueError(f"{path} is not a saved trace: {exc}") from None


def merge_traces(path: str, parts: Sequence[str]) -> None:
    """Write to ``path`` the traces `save_trace` wrote to ``parts`` (worker processes'), as one."""
    columns: dict[str, list[Any]] = {}
    meter: list[dict[str, Any]] = []
    for part in parts:
        saved = _read(part)
        for name, values in saved.columns.items():
            columns.setdefault(name, []).extend(values)
        meter += saved.meter
    save_trace(path, columns, meter)


def load_trace(*paths: str) -> pd.DataFrame:
    """The trace DataFrame of one or more files `save_trace` wrote (several worker processes' runs
    concatenate), with their measurements in ``attrs["meter"]``.

    Raises:
        ValueError: a file is not a saved trace.
    """
    columns: dict[str, list[Any]] = {}
    meter: list[dict[str, Any]] = []
    for path in paths:
        saved = _read(path)
        for name, values in saved.columns.items():
            columns.setdefault(name, []).extend(values)
        meter += saved.meter
    frame = to_frame(columns or {name: [] for name in COLUMNS})
    frame.attrs["meter"] = meter
    return frame


class CpuTimed:
    """Awaits a coroutine and counts in `cpu` the time its own steps held the event loop.

    All loops of a worker share one thread, so a clock read around ``await
    perform(...)`` would also count what other loops did while this
    ``perform`` waited. This wrapper drives the coroutine step by step (as
    `asyncio.Task` does, passing every yielded future, value and exception
    through) and reads the clock around each step only: a CPU-bound
    ``perform`` counts all its time, one that awaits I/O only its computing.
    The clock is wall time (``perf_counter``), not the thread's CPU clock:
    while a step runs, nothing else of the process does, even when the
    operating system lends the core to another process meanwhile.
    """

    __slots__ = ("coroutine", "cpu")

    def __init__(self, coroutine: Awaitable[Any]) -> None:
        self.coroutine: Any = coroutine
        self.cpu = 0.0

    def __await__(self) -> Generator[Any, Any, Any]:
        coroutine = self.coroutine
        clock = time.perf_counter
        value: Any = None
        error: BaseException | None = None
        while True:
            start = clock()
            try:
                yielded = coroutine.send(value) if error is None else coroutine.throw(error)
            except StopIteration as stop:
                return stop.value
            finally:  # the step's CPU, whatever it ended with
                self.cpu += clock() - start
            try:
                value, error = (yield yielded), None
            except GeneratorExit:
                coroutine.close()
                raise
            except BaseException as exc:  # a cancellation or a failed future: the coroutine handles it
                value, error = None, exc
