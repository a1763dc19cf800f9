"""Summaries and comparisons of *any* trace: a real worker's or the simulator's.

A trace is the DataFrame of `sharded_queue.trace` (one row per performed
message: ``handler, thread, order, worker, batch, enqueued_at, started_at,
finished_at``). For each group (by default per handler, thread and order):

* ``count``, ``throughput`` (messages performed per second over the group's
  own window, from its first enqueue (or the warm-up's end) to its last
  finish, whenever they were enqueued: a saturated group still drains its
  warm-up backlog at full speed; a window shared by all groups would make
  every group's throughput its arrivals over that window, whatever was
  simulated), ``batches`` and ``batch_mean`` (mean messages per ``perform``);
* ``wait`` = ``started_at - enqueued_at`` and ``sojourn`` = ``finished_at -
  enqueued_at``: mean, percentiles and max;
* ``perform_share``: the share of all loops' time spent performing the
  group's batches (called ``utilisation`` before; a sweep's ``utilisation`` is
  the loops' own, all groups together).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import pandas as pd

from sharded_queue.trace import COLUMNS

GROUP = ("handler", "thread", "order")
"""The default grouping: one row per tube."""

PERCENTILES = (50, 90, 99)
"""Percentiles reported for wait and sojourn."""

METRICS = ("throughput", "batch_mean", "wait_mean", "wait_p50", "wait_p90", "wait_p99", "sojourn_mean", "sojourn_p99")
"""What `compare` compares by default."""


def check_trace(trace: pd.DataFrame) -> None:
    """Raise ValueError unless ``trace`` has the shared trace columns."""
    if not isinstance(trace, pd.DataFrame):
        raise TypeError(f"a trace is a pandas DataFrame, got {type(trace).__name__}")
    missing = [name for name in COLUMNS if name not in trace.columns]
    if missing:
        raise ValueError(f"not a trace: missing column(s) {missing}; expected {list(COLUMNS)}")


def group_columns(by: str | Iterable[str]) -> list[str]:
    """The columns to group by (``"thread"``, ``("handler", "order")``, ``()``), checked.

    Raises:
        ValueError: a column that is not handler, thread, order or worker.
    """
    names = [by] if isinstance(by, str) else list(by)
    unknown = [name for name in names if name not in ("handler", "thread", "order", "worker")]
    if unknown:
        raise ValueError(f"cannot group by {unknown}: use handler, thread, order or worker")
    return names


def summary(
    trace: pd.DataFrame,
    by: str | Iterable[str] = GROUP,
    *,
    start: float | None = None,
    end: float | None = None,
    loops: int | None = None,
    percentiles: Sequence[float] = PERCENTILES,
    workers: int | None = None,
) -> pd.DataFrame:
    """Per-group count, throughput, batch size, wait and sojourn percentiles, perform share.

    Args:
        trace: A trace DataFrame (real or simulated).
        by: Columns to group by; ``()`` for one overall row.
        start: Only messages enqueued at or after ``start`` count (a warm-up
            cut); default: the first enqueue time.
        end: End of the window; default: the last finish time.
        loops: Worker loops, for ``perform_share``; default: distinct ``worker`` values.
        percentiles: Percentiles (0..100) of wait and sojourn to report.

    Returns:
        One row per group, sorted by the group columns.
    """
    check_trace(trace)
    names = group_columns(by)
    frame = trace if start is None else trace[trace["enqueued_at"] >= start]
    if frame.empty:
        return pd.DataFrame(columns=[*names, *metric_columns(percentiles)])
    begin = float(frame["enqueued_at"].min()) if start is None else float(start)
    finish = float(frame["finished_at"].max()) if end is None else float(end)
    window = max(finish - begin, 1e-12)
    if workers is not None:
        warnings.warn("summary(workers=...) is now summary(loops=...)", DeprecationWarning, stacklevel=2)
        loops = workers if loops is None else loops
    loops = int(trace["worker"].nunique()) if loops is None else loops
    work = frame.assign(
        wait=frame["started_at"] - frame["enqueued_at"],
        sojourn=frame["finished_at"] - frame["enqueued_at"],
    )
    grouped = _groups(work, names)
    out = pd.DataFrame({"count": grouped.size()})
    finished = _groups(trace[(trace["finished_at"] >= begin) & (trace["finished_at"] <= finish)], names)
    out["performed"] = finished["finished_at"].size().reindex(out.index, fill_value=0)
    out["last_finished"] = finished["finished_at"].max().reindex(out.index)
    out["first_enqueued"] = grouped["enqueued_at"].min()
    batches = work.drop_duplicates(["worker", "batch"]).assign(busy=lambda f: f["finished_at"] - f["started_at"])
    batch_groups = _groups(batches, names)
    out["batches"] = batch_groups.size()
    out["busy"] = batch_groups["busy"].sum()
    for name in ("wait", "sojourn"):
        out[f"{name}_mean"] = grouped[name].mean()
        for p in percentiles:
            out[f"{name}_p{percentile_label(p)}"] = grouped[name].quantile(p / 100)
        out[f"{name}_max"] = grouped[name].max()
    out = derived_columns(out, window, loops, begin)
    out = out.reset_index(drop=not names)
    if not names:
        out = out.drop(columns=[c for c in out.columns if c not in metric_columns(percentiles)])
    return out[[*names, *metric_columns(percentiles)]]


def _groups(frame: pd.DataFrame, names: list[str]) -> Any:
    """``frame`` grouped by ``names``, or as one group when there are none."""
    return frame.groupby(names or [np.zeros(len(frame), dtype=np.int64)], sort=True, observed=True)


def percentile_label(p: float) -> str:
    """How a percentile is written in a column name: ``50``, ``99_9``."""
    return f"{p:g}".replace(".", "_")


def metric_columns(percentiles: Sequence[float]) -> list[str]:
    """The metric columns of a summary with these ``percentiles``, in order."""
    columns = ["count", "throughput", "batches", "batch_mean"]
    for name in ("wait", "sojourn"):
        columns += [f"{name}_mean", *(f"{name}_p{percentile_label(p)}" for p in percentiles), f"{name}_max"]
    return [*columns, "perform_share"]


def derived_columns(out: pd.DataFrame, window: float, loops: int, begin: float = -math.inf) -> pd.DataFrame:
    """Add the derived columns from count, performed, batches and busy (throughput over each group's own
    window: ``first_enqueued`` (not before ``begin``) to ``last_finished``, when known)."""
    if "first_enqueued" in out.columns:
        own = out["last_finished"] - out["first_enqueued"].clip(lower=begin)
        out["throughput"] = out["performed"] / own.where(own > 0, 1e-12)
    else:
        out["throughput"] = out["performed"] / window
    out["batch_mean"] = out["count"] / out["batches"].where(out["batches"] > 0)
    out["perform_share"] = out["busy"] / (max(loops, 1) * window)
    return out


def compare(
    sim: pd.DataFrame | Sequence[pd.DataFrame],
    real: pd.DataFrame,
    by: str | Iterable[str] = GROUP,
    metrics: Sequence[str] = METRICS,
    prediction: bool = False,
    **options: Any,
) -> pd.DataFrame:
    """Relative errors of a simulation against a real run, per group and metric.

    The twin is a sample path too: pass several simulated traces (the same
    scenario with other seeds) to compare their mean, with its 90% confidence
    interval, rather than one path's draw. With ``prediction=True`` the runs are a
    prediction's draws (other seeds, calibration draws and machine noise:
    `simulator.predict`): ``sim`` is their median, the interval holds 90% of them
    (5th to 95th percentile), and ``covered`` says whether the real value is inside.

    Args:
        sim: Simulated trace, or its `summary`; or a list of them (replications).
        real: Real trace, or its `summary`.
        by: Grouping (as in `summary`); groups present in only one side are dropped.
        metrics: Summary columns to compare (``utilisation``, the old name of
            ``perform_share``, still works, with a DeprecationWarning).
        prediction: For a list: a prediction interval of the runs (see above), not the mean's.
        **options: Passed to `summary` for traces (``start``, ``loops``...).

    Returns:
        Long format: the group columns, ``metric``, ``sim``, ``real`` and
        ``rel_error`` = ``(sim - real) / real``; for a list of simulations ``sim``
        is their mean, with ``replications`` and the 90% intervals ``sim_low``,
        ``sim_high``, ``rel_error_low`` and ``rel_error_high`` (Student's t).
    """
    names = group_columns(by)
    if "utilisation" in metrics:
        warnings.warn(
            "the summary's 'utilisation' is now 'perform_share' (a sweep's 'utilisation' is the loops' own)",
            DeprecationWarning,
            stacklevel=2,
        )
        metrics = ["perform_share" if m == "utilisation" else m for m in metrics]
    if not isinstance(sim, pd.DataFrame):
        return _compare_replications(list(sim), real, names, metrics, options, prediction)
    left = summary(sim, names, **options) if "enqueued_at" in sim.columns else sim
    right = summary(real, names, **options) if "enqueued_at" in real.columns else real
    missing = [m for m in metrics if m not in left.columns or m not in right.columns]
    if missing:
        raise ValueError(f"cannot compare {missing}: not in both summaries")
    return _relative_errors(left, right, names, metrics)


def _relative_errors(left: pd.DataFrame, right: pd.DataFrame, names: list[str], metrics: Sequence[str]) -> pd.DataFrame:
    """`compare` of two summaries: long format, ``rel_error = (sim - real) / real``."""
    if names:
        merged = left[[*names, *metrics]].merge(right[[*names, *metrics]], on=names, suffixes=("_sim", "_real"))
    else:
        merged = pd.concat(
            [
                left[list(metrics)].add_suffix("_sim").reset_index(drop=True),
                right[list(metrics)].add_suffix("_real").reset_index(drop=True),
            ],
            axis=1,
        )
    rows = []
    for metric in metrics:
        part = merged[names].copy() if names else pd.DataFrame(index=merged.index)
        part["metric"] = metric
        part["sim"] = merged[f"{metric}_sim"].astype(float)
        part["real"] = merged[f"{metric}_real"].astype(float)
        rows.append(part)
    out = pd.concat(rows, ignore_index=True)
    out["rel_error"] = (out["sim"] - out["real"]) / out["real"].where(out["real"] != 0)
    return out


def _compare_replications(
    sims: list[pd.DataFrame],
    real: pd.DataFrame,
    names: list[str],
    metrics: Sequence[str],
    options: dict[str, Any],
    prediction: bool = False,
) -> pd.DataFrame:
    """`compare` of several simulations: their mean with its 90% interval, or (``prediction``)
    their median with the interval holding 90% of them."""
    if not sims:
        raise ValueError("compare needs at least one simulated trace")
    right = summary(real, names, **options) if "enqueued_at" in real.columns else real
    stacked = pd.concat([compare(one, right, names, metrics, **options) for one in sims], ignore_index=True)
    keys = [*names, "metric"]
    grouped = stacked.groupby(keys, sort=False, observed=True)
    center = "median" if prediction else "mean"
    out = grouped.agg(sim=("sim", center), real=("real", "first"), replications=("sim", "size")).reset_index()
    if prediction:
        tail = (1 - CONFIDENCE) / 2
        out["sim_low"] = grouped["sim"].quantile(tail).to_numpy()
        out["sim_high"] = grouped["sim"].quantile(1 - tail).to_numpy()
    else:
        spread = grouped["sim"].std(ddof=1).to_numpy()
        count = out["replications"].to_numpy()
        half = np.array([t_quantile(int(n) - 1) / math.sqrt(n) if n > 1 else math.nan for n in count]) * spread
        out["sim_low"], out["sim_high"] = out["sim"] - half, out["sim"] + half
    out["covered"] = (out["sim_low"] <= out["real"]) & (out["real"] <= out["sim_high"])
    scale = out["real"].where(out["real"] != 0)
    for column in ("", "_low", "_high"):
        out[f"rel_error{column}"] = (out[f"sim{column}"] - out["real"]) / scale
    return out


CONFIDENCE = 0.90
"""Level of every interval the simulator reports (`compare` of several runs, `sweep`, `plan`,
`simulator.predict`): 90%, so that coverage can be measured on a few dozen held-out runs."""

# Two-sided 90% Student t quantiles by degrees of freedom (1..30); the normal's beyond.
_T90 = (6.314, 2.920, 2.353, 2.132, 2.015, 1.943, 1.895, 1.860, 1.833, 1.812, 1.796, 1.782, 1.771, 1.761, 1.753)
_T90 += (1.746, 1.740, 1.734, 1.729, 1.725, 1.721, 1.717, 1.714, 1.711, 1.708, 1.706, 1.703, 1.701, 1.699, 1.697)


def t_quantile(degrees: int) -> float:
    """The 95% quantile of Student's t with ``degrees`` degrees of freedom (a two-sided 90% interval)."""
    return _T90[degrees - 1] if degrees <= len(_T90) else 1.645


def backlog(trace: pd.DataFrame, by: str | Iterable[str] = ("handler", "thread"), points: int = 200) -> pd.DataFrame:
    """Messages enqueued but not yet performed, over time, per group, from a trace.

    Only performed messages are in a trace, so a run that ended with messages
    still queued under-counts its last backlog (the simulator's own
    `Result.backlog` counts them).

    Returns:
        Long format: ``time``, the group columns and ``backlog``.
    """
    check_trace(trace)
    names = group_columns(by)
    if trace.empty:
        return pd.DataFrame(columns=["time", *names, "backlog"])
    times = np.linspace(float(trace["enqueued_at"].min()), float(trace["finished_at"].max()), points)
    parts = []
    groups = trace.groupby(names, sort=True, observed=True) if names else [((), trace)]
    for key, group in groups:
        enqueued = np.sort(group["enqueued_at"].to_numpy())
        finished = np.sort(group["finished_at"].to_numpy())
        level = np.searchsorted(enqueued, times, "right") - np.searchsorted(finished, times, "right")
        part = pd.DataFrame({"time": times, "backlog": level})
        for name, value in zip(names, key if isinstance(key, tuple) else (key,), strict=True):
            part[name] = value
        parts.append(part)
    return pd.concat(parts, ignore_index=True)[["time", *names, "backlog"]]
