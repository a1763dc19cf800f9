"""`Result`: what a simulation run produced — trace, summary, backlog, loops."""

from __future__ import annotations

import html
import math
import warnings
from collections.abc import Iterable, Sequence
from functools import cached_property
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from sharded_queue.trace import to_frame

from . import analysis
from .display import duration, html_table, per_second, readable
from .record import RunRecord, histogram_quantile

if TYPE_CHECKING:
    from .scenario import Scenario

SATURATION = 0.02
"""A group is flagged saturated when its backlog grew by more than this share of
its arrivals over the measured window (and by more than one batch)."""


class Result:
    """The outcome of `simulate`: trace, `summary`, `backlog` and per-loop statistics.

    Made from the run's `simulator.record.RunRecord`.

    Attributes:
        scenario: The simulated `Scenario`.
        end: Simulated time at which the run stopped.
        wall: Wall-clock seconds the run took.
        messages: Messages performed.
        dead: Messages dead-lettered.
        arrived: Messages registered.
    """

    def __init__(self, record: RunRecord) -> None:
        self.scenario: Scenario = record.scenario
        self.end = end = record.end
        self.wall = record.wall
        self.messages = record.messages
        self.dead = record.dead
        self.arrived = record.arrived
        self._recorder = record.recorder
        tubes = record.tubes
        self._groups = pd.DataFrame(
            {
                "handler": [t[0] for t in tubes],
                "thread": [t[1] for t in tubes],
                "order": [t[2] for t in tubes],
            }
        )
        self._arrived = record.arrived_after_warmup
        self._arrivals_end = min(end, record.last_arrival)
        self._samples = record.samples
        self._batch_limit = record.batch_limits
        self._loops = pd.DataFrame(
            [
                {
                    "worker": f"sim:{loop['index']}",
                    "process": loop["process"],
                    "messages": loop["messages"],
                    "performs": loop["performs"],
                    "failures": loop["failures"],
                    "binds": loop["binds"],
                    "polls": loop["polls"],
                    "acquires": loop.get("acquires", 0),
                    "cycles": loop.get("cycles", 0),
                    "releases": loop.get("releases", 0),
                    "busy": loop["busy"],
                    "bound": loop["bound"],
                }
                for loop in record.loops
            ]
        )
        self._processes = pd.DataFrame(
            {
                "process": [p["index"] for p in record.processes],
                "loops": [p["loops"] for p in record.processes],
                "cpu_busy": [p["cpu_busy"] for p in record.processes],
                "lag": [p.get("lag", math.nan) for p in record.processes],
                "lag_p99": [p.get("lag_p99", math.nan) for p in record.processes],
            }
        )
        self._storage_busy = record.storage_busy
        self.storage_calls = record.storage_calls
        """Commands the storage server was given (0 when it is not modelled)."""
        self._cores_busy = record.cores_busy
        if not self._recorder.keep:
            self._recorder.flush()

    # --- trace ---------------------------------------------------------------

    @cached_property
    def trace(self) -> pd.DataFrame:
        """The trace DataFrame in the shared schema (`sharded_queue.trace.COLUMNS`).

        Raises:
            RuntimeError: the scenario was run with ``trace=False``.
        """
        if not self._recorder.keep:
            raise RuntimeError("this run kept no trace: simulate a Scenario with trace=True")
        columns = self._recorder.columns()
        group = columns["group"]
        workers = np.array([f"sim:{i}" for i in range(self.scenario.loops)], dtype=object)
        return to_frame(
            {
                "handler": self._groups["handler"].to_numpy(dtype=object)[group],
                "thread": self._groups["thread"].to_numpy(dtype=object)[group],
                "order": self._groups["order"].to_numpy(dtype=object)[group],
                "worker": workers[columns["worker"]],
                "batch": columns["batch"],
                "enqueued_at": columns["enqueued_at"],
                "started_at": columns["started_at"],
                "finished_at": columns["finished_at"],
                "cpu": columns["cpu"],
            }
        )

    def latencies(self) -> pd.DataFrame:
        """Per performed message, numbers only (cheaper than `trace`): ``enqueued_at``,
        ``started_at``, ``finished_at``, ``wait`` and ``sojourn``, in perform order.

        Raises:
            RuntimeError: the scenario was run with ``trace=False``.
        """
        if not self._recorder.keep:
            raise RuntimeError("this run kept no trace: simulate a Scenario with trace=True")
        columns = self._recorder.columns()
        enqueued, started, finished = columns["enqueued_at"], columns["started_at"], columns["finished_at"]
        return pd.DataFrame(
            {
                "enqueued_at": enqueued,
                "started_at": started,
                "finished_at": finished,
                "wait": started - enqueued,
                "sojourn": finished - enqueued,
            }
        )

    # --- summary -------------------------------------------------------------

    def summary(
        self, by: str | Iterable[str] = analysis.GROUP, percentiles: Sequence[float] = analysis.PERCENTILES
    ) -> pd.DataFrame:
        """Per-group statistics over the measured window (after ``warmup``).

        The columns of `simulator.analysis.summary`, plus ``arrived`` (messages
        registered in the window), ``backlog`` (messages still queued at the
        end) and ``saturated``: the backlog grew by more than 2% of the
        arrivals (and by more than a batch) while requests arrived, so the
        group is not in steady state and its latency figures only grow with
        the run's length.

        Args:
            by: Columns among handler, thread, order; ``()`` for one overall row.
            percentiles: Percentiles (0..100) of wait and sojourn.
        """
        names = analysis.group_columns(by)
        if "worker" in names:
            raise ValueError(
                "Result.summary groups by handler, thread and order; use analysis.summary(trace) for workers"
            )
        start = self.scenario.warmup
        if self._recorder.keep:
            out = analysis.summary(
                self.trace, names, start=start, end=self.end, loops=self.scenario.loops, percentiles=percentiles
            )
        else:
            out = self._summary_from_stats(names, percentiles)
        extra = self._flags(names)
        if names:
            out = out.merge(extra, on=names, how="outer").sort_values(names, ignore_index=True)
        else:
            out = pd.concat([out.reset_index(drop=True), extra.reset_index(drop=True)], axis=1).iloc[:1]
        for column in ("count", "batches", "arrived", "backlog"):
            out[column] = out[column].fillna(0).astype("int64")
        out["saturated"] = out["saturated"].fillna(False).astype(bool)
        return out

    def _summary_from_stats(self, names: list[str], percentiles: Sequence[float]) -> pd.DataFrame:
        """The summary from histograms, when no trace was kept (percentiles within a bin, 0.8%)."""
        keys = self._keys(names)
        codes: dict[tuple[Any, ...], int] = {}
        index = np.array([codes.setdefault(key, len(codes)) for key in keys], dtype=np.int64)
        stats = self._recorder.stats.by(index, len(codes))
        window = max(self.end - self.scenario.warmup, 1e-12)
        rows = []
        for key, code in sorted(codes.items()):
            count = int(stats.count[code])
            row: dict[str, Any] = dict(zip(names, key, strict=True))
            row.update(
                count=count,
                performed=int(stats.performed[code]),
                batches=int(stats.batches[code]),
                busy=float(stats.busy[code]),
                first_enqueued=float(stats.first_enqueued[code]),
                last_finished=float(stats.last_finished[code]),
            )
            for name in ("wait", "sojourn"):
                top = float(getattr(stats, f"{name}_max")[code])
                row[f"{name}_mean"] = float(getattr(stats, f"{name}_sum")[code]) / count if count else math.nan
                hist = getattr(stats, f"{name}_hist")[code]
                for p in percentiles:
                    row[f"{name}_p{analysis.percentile_label(p)}"] = (
                        histogram_quantile(hist, p / 100, top) if count else math.nan
                    )
                row[f"{name}_max"] = top if count else math.nan
            rows.append(row)
        out = pd.DataFrame(
            rows,
            columns=[
                *names,
                "count",
                "performed",
                "batches",
                "busy",
                "first_enqueued",
                "last_finished",
                *analysis.metric_columns(percentiles)[4:-1],
            ],
        )
        out = analysis.derived_columns(out, window, self.scenario.loops, self.scenario.warmup)
        return out[[*names, *analysis.metric_columns(percentiles)]]

    def _keys(self, names: list[str]) -> list[tuple[Any, ...]]:
        """The group key of every tube."""
        if not names:
            return [()] * len(self._groups)
        return list(self._groups[names].itertuples(index=False, name=None))

    def _flags(self, names: list[str]) -> pd.DataFrame:
        """``arrived``, ``backlog`` and ``saturated`` per group."""
        keys = self._keys(names)
        codes: dict[tuple[Any, ...], int] = {}
        index = np.array([codes.setdefault(key, len(codes)) for key in keys], dtype=np.int64)
        groups = len(codes)
        arrived = np.bincount(index, weights=self._arrived, minlength=groups) if groups else np.zeros(0)
        last = self._samples[-1]
        backlog = np.bincount(index, weights=_pad(last[1], len(index)), minlength=groups) if groups else np.zeros(0)
        saturated = self._saturated(index, groups)
        out = pd.DataFrame(list(codes), columns=names) if names else pd.DataFrame(index=[0])
        out["arrived"] = arrived.astype(np.int64) if groups else 0
        out["backlog"] = backlog.astype(np.int64) if groups else 0
        out["saturated"] = saturated if groups else False
        return out.sort_values(names).reset_index(drop=True) if names else out

    def _saturated(self, index: np.ndarray, groups: int) -> np.ndarray:
        """Whether each group's backlog grew steadily over the measured window."""
        samples = [s for s in self._samples if self.scenario.warmup <= s[0] <= self._arrivals_end]
        if len(samples) < 2 or not groups:
            return np.zeros(groups, dtype=bool)
        first, last = samples[0], samples[-1]
        size = len(index)
        grew = np.bincount(index, weights=_pad(last[1], size) - _pad(first[1], size), minlength=groups)
        came = np.bincount(index, weights=_pad(last[2], size) - _pad(first[2], size), minlength=groups)
        batch = np.bincount(index, weights=self._batch_limit, minlength=groups)
        return np.asarray((grew > SATURATION * came) & (grew > batch))

    @property
    def saturated(self) -> bool:
        """Whether any tube was flagged saturated (see `summary`)."""
        return bool(self._flags(list(analysis.GROUP))["saturated"].any() or self._flags([])["saturated"].any())

    # --- over time and per loop --------------------------------------------------

    def backlog(self, by: str | Iterable[str] = ("handler", "thread")) -> pd.DataFrame:
        """Messages waiting (registered, not acked) over time, per group.

        Returns:
            Long format: ``time``, the group columns and ``backlog``.
        """
        names = analysis.group_columns(by)
        keys = self._keys(names)
        codes: dict[tuple[Any, ...], int] = {}
        index = np.array([codes.setdefault(key, len(codes)) for key in keys], dtype=np.int64)
        parts = []
        for at, waiting, _ in self._samples:
            level = np.bincount(index, weights=_pad(waiting, len(index)), minlength=len(codes))
            part = pd.DataFrame(list(codes), columns=names) if names else pd.DataFrame(index=[0])
            part.insert(0, "time", at)
            part["backlog"] = level.astype(np.int64) if len(codes) else 0
            parts.append(part)
        return pd.concat(parts, ignore_index=True)

    @property
    def loops(self) -> pd.DataFrame:
        """Per loop: messages, performs, failures, binds, its storage calls (polls, acquires, cycles,
        releases), busy and bound seconds, utilisation."""
        frame = self._loops.copy()
        frame["utilisation"] = frame["busy"] / max(self.end, 1e-12)
        return frame

    @property
    def workers(self) -> pd.DataFrame:
        """Deprecated name of `loops`."""
        warnings.warn("Result.workers is now Result.loops", DeprecationWarning, stacklevel=2)
        return self.loops

    @property
    def processes(self) -> pd.DataFrame:
        """Per worker process: its loops, CPU seconds used (library and ``perform``), its event loop's
        lag as the worker's meter probes it (``lag``, mean, and ``lag_p99``, seconds; NaN when CPU
        is not modelled) and CPU utilisation."""
        frame = self._processes.copy()
        frame["cpu_utilisation"] = frame["cpu_busy"] / max(self.end, 1e-12)
        return frame

    @property
    def cpu_utilisation(self) -> float:
        """The busiest process's share of time its CPU was busy (1: the CPU limits the loops)."""
        return float(self._processes["cpu_busy"].max() / max(self.end, 1e-12))

    @property
    def utilisation(self) -> float:
        """Share of all loops' time spent in ``perform`` (failed performs included)."""
        return float(self._loops["busy"].sum() / (max(self.end, 1e-12) * self.scenario.loops))

    @property
    def storage_utilisation(self) -> float:
        """Share of time the storage server was busy (``Scenario.storage_cpu``; 0 when not modelled).
        Above 1: it was given more commands than it can serve in the run."""
        return float(self._storage_busy / max(self.end, 1e-12))

    @property
    def cores_utilisation(self) -> float:
        """Share of the machine's cores busy (``Scenario.cores``; 0 when not modelled)."""
        cores = self.scenario.cores
        return float(self._cores_busy / (max(self.end, 1e-12) * cores)) if cores else 0.0

    def utilisations(self) -> dict[str, float]:
        """Each resource that can run out, and its utilisation: the storage server, the busiest
        worker process's CPU, the machine's cores, and the loops (their time in ``perform``)."""
        return {
            "storage server": self.storage_utilisation,
            "a worker process's CPU": self.cpu_utilisation,
            "the machine's cores": self.cores_utilisation,
            "the loops": self.utilisation,
        }

    @property
    def bottleneck(self) -> str:
        """The resource with the highest utilisation (`utilisations`): the one to add to, when the
        run fell short (more Redis, more processes, more cores, or more loops)."""
        found = self.utilisations()
        return max(found, key=lambda name: found[name])

    @property
    def speed(self) -> float:
        """Simulated messages performed per wall-clock second."""
        return self.messages / self.wall if self.wall > 0 else math.inf

    # --- display -------------------------------------------------------------

    def headline(self) -> dict[str, Any]:
        """The run in one row: totals over all groups plus the scenario's main numbers."""
        overall = self.summary(())
        row = dict(self.scenario.describe())
        row.update(overall.iloc[0].to_dict())
        row.update(
            simulated=self.end, wall=self.wall, loop_utilisation=self.utilisation, cpu_utilisation=self.cpu_utilisation
        )
        return row

    @cached_property
    def _overall(self) -> pd.Series:
        """The one-row summary the reprs show (computed once: a long trace takes a while)."""
        return self.summary(()).iloc[0]

    def __repr__(self) -> str:
        overall = self._overall
        flag = "; SATURATED: a backlog kept growing" if self.saturated else ""
        return (
            f"<Result: {self.messages:,} of {self.arrived:,} messages performed in {duration(self.end)} simulated "
            f"({duration(self.wall)} wall): throughput {per_second(float(overall['throughput']))}, sojourn "
            f"p50 {duration(float(overall['sojourn_p50']))}, p99 {duration(float(overall['sojourn_p99']))}; "
            f"loops {self.utilisation:.1%} in perform, busiest CPU {self.cpu_utilisation:.1%}{flag}>"
        )

    def _repr_html_(self) -> str:
        head = html.escape(repr(self)[1:-1])
        by = ("handler", "order") if self._groups["order"].nunique() > 1 else ("handler",)
        shown = [*by, *_SHOWN]
        table = readable(self.summary(by), shown)
        return (
            f"<p><b>{head}</b></p>{html_table(table)}"
            f"<p><small>per {' and '.join(by)}; every column and group: <code>result.summary(by)</code>; "
            "latencies from enqueue: wait to the start of <code>perform</code>, sojourn to its end</small></p>"
        )


_SHOWN = (
    "count",
    "throughput",
    "batch_mean",
    "wait_p50",
    "wait_p99",
    "sojourn_p50",
    "sojourn_p99",
    "perform_share",
    "backlog",
    "saturated",
)
"""The summary columns `Result` shows in Jupyter."""


def _pad(values: np.ndarray, size: int) -> np.ndarray:
    """``values`` padded with zeros to ``size`` (tubes created after a sample)."""
    if len(values) >= size:
        return values[:size].astype(np.float64)
    return np.concatenate((values.astype(np.float64), np.zeros(size - len(values))))
