"""The record of a run: its columnar trace, on-the-fly statistics when the trace is not kept,
and `RunRecord`, the plain data a `Result` reads.

One ``add`` per performed batch: the batch's scalars go to lists, its enqueue
times are copied into one growing float64 buffer. With ``keep=False`` the
buffer is folded into per-group statistics (counts, sums, log-binned
histograms of wait and sojourn) every million messages and reused, so memory
stays flat however many messages are simulated.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from .scenario import Scenario

FLUSH = 1 << 20
"""Messages buffered before folding them into statistics (``keep=False``)."""

SUBBINS = 7
"""Each power of two is split into 2**7 = 128 linear bins: 0.4% to 0.8% wide."""

_SHIFT = 52 - SUBBINS
_LOW = int(np.float64(1e-7).view(np.int64)) >> _SHIFT
_HIGH = int(np.float64(1e6).view(np.int64)) >> _SHIFT
BINS = _HIGH - _LOW + 2
"""Bins from 100 ns to 10**6 s, plus one below (with 0) and one above (the max stays exact).
Two histograms of 32-bit counts per tube: about 45 KB a tube."""


def bin_of(values: np.ndarray) -> np.ndarray:
    """Histogram bin of each non-negative value: the top bits of its IEEE-754 pattern,
    which orders non-negative floats like their values (no logarithm needed)."""
    bins: np.ndarray = (np.ascontiguousarray(values, dtype=np.float64).view(np.int64) >> _SHIFT) - (_LOW - 1)
    return np.clip(bins, 0, BINS - 1)


def bin_edges() -> np.ndarray:
    """Lower edge of every bin (the first bin starts at 0)."""
    edges = ((np.arange(BINS, dtype=np.int64) + (_LOW - 1)) << _SHIFT).view(np.float64)
    edges[0] = 0.0
    return edges


def histogram_quantile(counts: np.ndarray, q: float, maximum: float) -> float:
    """The ``q`` quantile (0..1) of a histogram, like numpy's linear percentile of the values.

    Each order statistic is placed inside its bin (spread evenly), then the two
    around rank ``q * (n - 1)`` are interpolated linearly.
    """
    total = int(counts.sum())
    if total == 0:
        return math.nan
    cumulative = np.cumsum(counts)
    edges = bin_edges()

    def order_statistic(rank: int) -> float:
        index = int(np.searchsorted(cumulative, rank, "right"))
        if index >= BINS - 1:
            return maximum
        low, high = edges[index], min(edges[index + 1], maximum)
        before = int(cumulative[index - 1]) if index else 0
        inside = (rank - before + 0.5) / int(counts[index])
        return float(low + (high - low) * inside)

    rank = q * (total - 1)
    below = math.floor(rank)
    value = order_statistic(below)
    if rank > below:
        value += (rank - below) * (order_statistic(below + 1) - value)
    return min(value, maximum)


class GroupStats:
    """Per-group aggregates as arrays indexed by group (tube): counts, sums, maxima, histograms.

    Memory: two histograms of `BINS` 32-bit counts per group (about 45 KB a tube).
    """

    SCALARS = (
        "count",
        "performed",
        "batches",
        "busy",
        "wait_sum",
        "wait_max",
        "sojourn_sum",
        "sojourn_max",
        "first_enqueued",
        "last_finished",
    )

    def __init__(self) -> None:
        self.size = 0
        self.count = np.zeros(0)
        self.performed = np.zeros(0)  # messages whose batch finished after the warm-up, whenever enqueued
        self.batches = np.zeros(0)
        self.busy = np.zeros(0)
        self.wait_sum = np.zeros(0)
        self.wait_max = np.zeros(0)
        self.sojourn_sum = np.zeros(0)
        self.sojourn_max = np.zeros(0)
        self.first_enqueued = np.zeros(0)  # earliest enqueue counted (the group's own window starts there)
        self.last_finished = np.zeros(0)  # latest finish after the warm-up (and ends there)
        self.wait_hist = np.zeros((0, BINS), np.int32)
        self.sojourn_hist = np.zeros((0, BINS), np.int32)

    def grow(self, size: int) -> None:
        """Make room for groups ``0 .. size - 1``."""
        if size <= self.size:
            return
        extra = size - self.size
        for name in self.SCALARS:
            fill = math.inf if name == "first_enqueued" else -math.inf if name == "last_finished" else 0.0
            setattr(self, name, np.concatenate((getattr(self, name), np.full(extra, fill))))
        self.wait_hist = np.concatenate((self.wait_hist, np.zeros((extra, BINS), np.int32)))
        self.sojourn_hist = np.concatenate((self.sojourn_hist, np.zeros((extra, BINS), np.int32)))
        self.size = size

    def by(self, keys: np.ndarray, count: int) -> GroupStats:
        """The aggregates merged into ``count`` groups: group ``g`` goes to ``keys[g]``."""
        merged = GroupStats()
        merged.grow(count)
        size = min(self.size, len(keys))
        keys = keys[:size]
        for name in self.SCALARS:
            values = getattr(self, name)[:size]
            target = getattr(merged, name)
            if name.endswith("_max") or name == "last_finished":
                np.maximum.at(target, keys, values)
            elif name == "first_enqueued":
                np.minimum.at(target, keys, values)
            else:
                np.add.at(target, keys, values)
        np.add.at(merged.wait_hist, keys, self.wait_hist[:size])
        np.add.at(merged.sojourn_hist, keys, self.sojourn_hist[:size])
        return merged


class Recorder:
    """Records performed batches; keeps the trace or folds it into `GroupStats`."""

    def __init__(self, keep: bool, warmup: float) -> None:
        self.keep = keep
        self.warmup = warmup
        self.enqueued = np.empty(1 << 16)
        self.used = 0
        self.rows: list[tuple[int, int, float, float, int, float]] = []  # per batch: group, loop, start, end, size, cpu
        self.stats = GroupStats()
        self.batches = 0

    def add(self, group: int, worker: int, started: float, finished: float, times: np.ndarray, cpu: float) -> None:
        """Record one successful ``perform`` of the messages enqueued at ``times`` (``cpu``: its CPU seconds)."""
        count = len(times)
        used = self.used
        if used + count > len(self.enqueued):
            if not self.keep and used + count > FLUSH:
                self.flush()
                used = 0
            if used + count > len(self.enqueued):
                grown = np.empty(max(2 * len(self.enqueued), used + count))
                grown[:used] = self.enqueued[:used]
                self.enqueued = grown
        self.enqueued[used : used + count] = times
        self.used = used + count
        self.rows.append((group, worker, started, finished, count, cpu))

    def _batches(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Per batch: group, worker, started, finished, size, cpu."""
        if not self.rows:
            empty = np.zeros(0, dtype=np.int64)
            return empty, empty, np.zeros(0), np.zeros(0), empty, np.zeros(0)
        table = np.array(self.rows, dtype=np.float64)
        ints = table[:, [0, 1, 4]].astype(np.int64)
        return ints[:, 0], ints[:, 1], table[:, 2], table[:, 3], ints[:, 2], table[:, 5]

    def columns(self) -> dict[str, np.ndarray]:
        """The kept trace, one entry per message: group, worker, batch and the three times."""
        group, worker, started, finished, size, cpu = self._batches()
        return {
            "group": np.repeat(group, size),
            "worker": np.repeat(worker, size),
            "batch": np.repeat(np.arange(self.batches + 1, self.batches + len(size) + 1, dtype=np.int64), size),
            "enqueued_at": self.enqueued[: self.used].copy(),
            "started_at": np.repeat(started, size),
            "finished_at": np.repeat(finished, size),
            "cpu": np.repeat(cpu, size),
        }

    def flush(self) -> None:
        """Fold the buffered batches into the per-group statistics and empty the buffer."""
        if not self.rows:
            return
        batch_group, _, started, finished, size, _ = self._batches()
        busy = finished - started
        enqueued = self.enqueued[: self.used]
        row_group = np.repeat(batch_group, size)
        wait = np.repeat(started, size) - enqueued  # started - enqueued, per message
        sojourn = wait + np.repeat(busy, size)
        kept = enqueued
        if enqueued[0] >= self.warmup:  # all counted (arrivals after the warm-up)
            batch_counted = np.ones(len(size), dtype=bool)
        else:
            counted = enqueued >= self.warmup
            first = np.concatenate(([0], np.cumsum(size)[:-1]))
            batch_counted = np.add.reduceat(counted.astype(np.int64), first) > 0  # batches are never empty
            row_group, wait, sojourn, kept = row_group[counted], wait[counted], sojourn[counted], enqueued[counted]
        stats = self.stats
        stats.grow(int(batch_group.max()) + 1)
        groups = batch_group[batch_counted]
        late = finished >= self.warmup
        stats.performed[: stats.size] += np.bincount(batch_group[late], weights=size[late], minlength=stats.size)[
            : stats.size
        ]
        stats.batches[: stats.size] += np.bincount(groups, minlength=stats.size)[: stats.size]
        stats.busy[: stats.size] += np.bincount(groups, weights=busy[batch_counted], minlength=stats.size)[: stats.size]
        np.maximum.at(stats.last_finished, batch_group[late], finished[late])
        if len(row_group):
            stats.count += np.bincount(row_group, minlength=stats.size)
            stats.wait_sum += np.bincount(row_group, weights=wait, minlength=stats.size)
            stats.sojourn_sum += np.bincount(row_group, weights=sojourn, minlength=stats.size)
            np.maximum.at(stats.wait_max, row_group, wait)
            np.maximum.at(stats.sojourn_max, row_group, sojourn)
            np.minimum.at(stats.first_enqueued, row_group, kept)
            for hist, values in ((stats.wait_hist, wait), (stats.sojourn_hist, sojourn)):
                codes = row_group * BINS + bin_of(values)
                if stats.size * BINS <= 1 << 23:  # few tubes: count every cell
                    hist.reshape(-1)[:] += np.bincount(codes, minlength=stats.size * BINS).astype(np.int32)
                else:  # many tubes: count the cells that occur
                    cells, counts = np.unique(codes, return_counts=True)
                    hist.reshape(-1)[cells] += counts.astype(np.int32)
        self.batches += len(self.rows)
        self.used = 0
        self.rows = []


Sample = tuple[float, np.ndarray, np.ndarray]
"""A backlog sample: its time, and per tube the messages waiting and those arrived by then."""


@dataclass(frozen=True)
class RunRecord:
    """What one simulation run produced, as plain data: what `Result` reads.

    ``scenario``, ``end``, ``wall``, ``messages``, ``dead`` and ``arrived`` are the
    `Result`'s own (see there); the rest it turns into tables.

    Attributes:
        last_arrival: Enqueue time of the last registered message.
        recorder: The trace (or its statistics).
        tubes: Per tube (the trace's ``group``): its handler, thread and order.
        arrived_after_warmup: Per tube: messages registered after the warm-up.
        batch_limits: Per tube: its handler's batch size.
        samples: The backlog over time (`Sample`).
        loops: Per loop: ``index``, ``process``, ``messages``, ``performs``, ``failures``,
            ``binds``, ``polls``, ``acquires``, ``cycles``, ``releases``, ``busy`` and ``bound`` (seconds).
        processes: Per worker process: ``index``, ``loops`` and ``cpu_busy`` (CPU seconds).
        storage_busy: Seconds of commands the storage server was given (0: not modelled).
        storage_calls: Commands it was given.
        cores_busy: CPU seconds placed on the machine's cores (0: not modelled).
    """

    scenario: Scenario
    end: float
    wall: float
    messages: int
    dead: int
    arrived: int
    last_arrival: float
    recorder: Recorder
    tubes: list[tuple[str, str, str]]
    arrived_after_warmup: np.ndarray
    batch_limits: np.ndarray
    samples: list[Sample]
    loops: list[dict[str, Any]]
    processes: list[dict[str, Any]]
    storage_busy: float = 0.0
    storage_calls: int = 0
    cores_busy: float = 0.0
