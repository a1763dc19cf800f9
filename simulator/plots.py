"""The standard figures; each returns a matplotlib `Figure` (shown by Jupyter, saved with ``savefig``).

No pyplot: figures are made without touching matplotlib's global state.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from .result import Result


def plot_sweep(
    frame: pd.DataFrame,
    x: str,
    y: Sequence[str] | str = ("throughput", "sojourn_p99"),
    hue: str | None = None,
    logy: Sequence[str] | None = None,
) -> Figure:
    """Metrics of a `sweep` against one varied input, a line per value of ``hue``.

    Saturated points (see `Result.summary`) are drawn as crosses.

    Args:
        frame: The DataFrame returned by `sweep`.
        x: Column on the x axis (e.g. ``"loops"`` or ``"worker_batch_size"``).
        y: One subplot per column (e.g. throughput and a latency percentile).
        hue: Column whose values get one line each.
        logy: Columns drawn on a log scale (default: latency columns).
    """
    metrics = [y] if isinstance(y, str) else list(y)
    for column in [x, *metrics, *([hue] if hue else [])]:
        if column not in frame.columns:
            raise ValueError(f"plot_sweep: no column {column!r} in the sweep frame")
    logs = set(logy) if logy is not None else {m for m in metrics if m.startswith(("wait", "sojourn"))}
    figure = Figure(figsize=(5 * len(metrics), 3.6), layout="constrained")
    axes = figure.subplots(1, len(metrics), squeeze=False)[0]
    groups = frame.groupby(hue, sort=True) if hue else [(None, frame)]
    for value, part in groups:
        part = part.sort_values(x)
        label = None if hue is None else f"{hue}={value}"
        for ax, metric in zip(axes, metrics, strict=True):
            (line,) = ax.plot(part[x], part[metric], marker="o", label=label)
            if "saturated" in part.columns and part["saturated"].any():
                hot = part[part["saturated"].astype(bool)]
                ax.plot(hot[x], hot[metric], "x", color=line.get_color(), markersize=10, mew=2)
    for ax, metric in zip(axes, metrics, strict=True):
        ax.set_xlabel(x)
        ax.set_ylabel(metric + (" (s)" if metric.startswith(("wait", "sojourn")) else ""))
        if metric in logs:
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
    if hue:
        axes[0].legend(fontsize="small")
    if "saturated" in frame.columns and frame["saturated"].any():
        figure.suptitle("x = saturated (backlog still growing)", fontsize="small")
    return figure


def plot_backlog(source: Result | pd.DataFrame, by: str = "thread", top: int = 10) -> Figure:
    """Backlog over time, a line per group (the ``top`` largest by peak).

    Args:
        source: A `Result` (its sampled backlog) or a long DataFrame with
            ``time``, ``by`` and ``backlog`` (`Result.backlog`, `analysis.backlog`).
        by: The group column (``"thread"``, ``"handler"`` or ``"order"``).
        top: Most groups drawn; the rest are summed into "others".
    """
    frame = (
        source.backlog(("handler", by) if by != "handler" else ("handler",)) if isinstance(source, Result) else source
    )
    for column in ("time", by, "backlog"):
        if column not in frame.columns:
            raise ValueError(f"plot_backlog: no column {column!r}")
    keys = [c for c in ("handler", by) if c in frame.columns] if by != "handler" else ["handler"]
    levels = frame.pivot_table(index="time", columns=keys, values="backlog", aggfunc="sum").fillna(0)
    peak = levels.max().sort_values(ascending=False)
    shown = list(peak.index[:top])
    figure = Figure(figsize=(8, 3.6), layout="constrained")
    ax = figure.subplots()
    multi = len({k[0] if isinstance(k, tuple) else k for k in levels.columns}) > 1 if len(keys) > 1 else False
    for key in shown:
        name = key[-1] if isinstance(key, tuple) else key
        label = f"{key[0].rsplit(':', 1)[-1]}/{name}" if multi and isinstance(key, tuple) else str(name)
        ax.step(levels.index, levels[key], where="post", label=f"{by} {label}")
    rest = [k for k in levels.columns if k not in shown]
    if rest:
        ax.step(levels.index, levels[rest].sum(axis=1), where="post", color="grey", label=f"{len(rest)} others")
    ax.set_xlabel("time (s)")
    ax.set_ylabel("messages waiting")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small", ncol=2)
    return figure


def plot_latency(
    traces: pd.DataFrame | Result | Mapping[str, pd.DataFrame | Result],
    metric: str = "sojourn",
    by: str | None = None,
) -> Figure:
    """Distribution (CCDF, log-log) of wait or sojourn, to compare runs or groups.

    Args:
        traces: A trace, a `Result`, or ``{"sim": ..., "real": ...}``.
        metric: ``"wait"`` (started - enqueued) or ``"sojourn"`` (finished - enqueued).
        by: Also split each trace by this column (e.g. ``"order"``).
    """
    if metric not in ("wait", "sojourn"):
        raise ValueError(f"plot_latency: metric must be 'wait' or 'sojourn', got {metric!r}")
    named: Mapping[str, Any] = traces if isinstance(traces, Mapping) else {"": traces}
    figure = Figure(figsize=(6, 4), layout="constrained")
    ax = figure.subplots()
    end = "started_at" if metric == "wait" else "finished_at"
    for name, source in named.items():
        trace = source.trace if isinstance(source, Result) else source
        groups = trace.groupby(by, sort=True) if by else [(None, trace)]
        for value, part in groups:
            values = np.sort((part[end] - part["enqueued_at"]).to_numpy())
            if not len(values):
                continue
            ccdf = 1.0 - np.arange(len(values)) / len(values)
            label = " ".join(s for s in (name, "" if value is None else f"{by}={value}") if s) or None
            ax.step(values, ccdf, where="post", label=label)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel(f"{metric} (s)")
    ax.set_ylabel("P(> x)")
    ax.grid(alpha=0.3, which="both")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize="small")
    return figure
