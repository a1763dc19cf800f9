"""The standard figures; each returns a matplotlib `Figure` (shown by Jupyter, saved with ``savefig``).

No pyplot: figures are made without touching matplotlib's global state, and
matplotlib is imported when a figure is first drawn, not with `simulator`.
Every figure follows the project's rules for figures: a title (pass
``title=`` to state the figure's claim), units on every axis (latencies in ms),
legends outside the data, saturated points marked in the legend, and 90%
intervals drawn where a replicated sweep has them.
"""

from __future__ import annotations

import functools
import textwrap
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from .display import unit_of
from .result import Result

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.axis import Axis
    from matplotlib.figure import Figure

_LABELS = {
    "throughput": "throughput (messages/s)",
    "arrival_rate": "arrival rate (messages/s)",
    "rate": "arrival rate (messages/s)",
    "batch_mean": "mean batch (messages per perform)",
    "utilisation": "loops' time in perform (%)",
    "cpu_utilisation": "busiest worker process's CPU (%)",
    "perform_share": "share of the loops' time (%)",
    "saturated_share": "runs saturated (%)",
    "loops": "worker loops",
    "processes": "worker processes",
    "worker_batch_size": "worker_batch_size (most messages per perform)",
    "coordinator_delay": "coordinator_delay (s)",
    "worker_empty_pause": "worker_empty_pause (s)",
    "worker_empty_limit": "worker_empty_limit (empty polls)",
    "rtt": "storage round trip (ms)",
    "count": "messages performed",
    "backlog": "messages left waiting",
}

OTHERS = "#9a9a9a"
"""The colour of groups summed or drawn as "others" (no group line uses grey)."""


def __getattr__(name: str) -> Any:
    """``colormaps``: matplotlib's registry of colour maps, imported when first asked for."""
    if name == "colormaps":
        from matplotlib import colormaps

        return colormaps
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _figure(width: float, height: float) -> Figure:
    """A new figure of ``width`` by ``height`` inches, its layout constrained (no pyplot)."""
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def _line(**properties: Any) -> Any:
    """A line for a legend only (`matplotlib.lines.Line2D` without data)."""
    from matplotlib.lines import Line2D

    return Line2D([], [], **properties)


def palette(count: int) -> list[Any]:
    """``count`` distinct colours, none grey (grey is for "others"): tab10 without its grey, then tab20's light ones."""
    from matplotlib import colormaps

    dark = [c for i, c in enumerate(colormaps["tab10"].colors) if i != 7]  # type: ignore[attr-defined]
    light = [c for i, c in enumerate(colormaps["tab20"].colors) if i % 2 and i != 15]  # type: ignore[attr-defined]
    colours = dark + light
    return [colours[i % len(colours)] for i in range(count)]


def paired(count: int) -> list[tuple[Any, Any]]:
    """``count`` pairs (dark, light) of one hue each, none grey: one pair per group, sim and real."""
    from matplotlib import colormaps

    tab20 = colormaps["tab20"].colors  # type: ignore[attr-defined]
    pairs = [(tab20[i], tab20[i + 1]) for i in range(0, 20, 2) if i != 14]
    return [pairs[i % len(pairs)] for i in range(count)]


def label_of(column: str) -> str:
    """An axis label with the unit of a summary or sweep column."""
    if column in _LABELS:
        return _LABELS[column]
    found = unit_of(column)
    if found is None:
        return column
    unit = found[0]
    if column.startswith(("wait_", "sojourn_")):  # wait: enqueue to perform start; sojourn: to its end
        kind, stat = column.split("_", 1)
        return f"{kind} {stat.replace('_', ' ')} ({unit})"
    return f"{column} ({unit})"


@functools.cache
def _plain_log_formatter() -> Any:
    """`LogFormatter`'s choice of ticks to label, each written as a plain number (``0.4``, ``20``, ``3000``)."""
    from matplotlib.ticker import LogFormatter

    class PlainLogFormatter(LogFormatter):
        def _num_to_string(self, x: float, vmin: float, vmax: float) -> str:  # LogFormatter's hook for the text
            return f"{x:g}"

    return PlainLogFormatter


def plain_log_ticks(axis: Axis) -> None:
    """Label a log axis with plain numbers (``20``, ``50``, ``100``) instead of powers of ten."""
    formatter = _plain_log_formatter()
    axis.set_major_formatter(formatter(labelOnlyBase=False, minor_thresholds=(2, 0.5)))
    axis.set_minor_formatter(formatter(labelOnlyBase=False, minor_thresholds=(2, 0.5)))


def plot_sweep(
    frame: pd.DataFrame,
    x: str,
    y: Sequence[str] | str = ("throughput", "sojourn_p99"),
    hue: str | None = None,
    logy: Sequence[str] | None = None,
    *,
    title: str | None = None,
    goal: Mapping[str, float] | None = None,
) -> Figure:
    """Metrics of a `sweep` against one varied input, a line per value of ``hue``.

    Latencies are drawn in ms. With a replicated sweep (``<metric>_low`` and
    ``<metric>_high`` columns) each point has its 90% confidence interval, the
    lines nudged sideways so that intervals do not hide each other. Saturated
    points (see `Result.summary`; with replications: any run saturated) are
    crossed, and the legend, outside the axes, says so.

    Args:
        frame: The DataFrame returned by `sweep` (or `Plan.table`).
        x: Column on the x axis (e.g. ``"loops"`` or ``"worker_batch_size"``).
        y: One subplot per column (e.g. throughput and a latency percentile).
        hue: Column whose values get one line each.
        logy: Columns drawn on a log scale (default: latency columns).
        title: The figure's title: say what it shows (default: what is plotted against what).
        goal: A horizontal dashed line per metric, e.g. ``{"sojourn_p99": 0.2}`` (in the
            column's own unit: seconds for latencies).
    """
    metrics = [y] if isinstance(y, str) else list(y)
    for column in [x, *metrics, *([hue] if hue else [])]:
        if column not in frame.columns:
            raise ValueError(f"plot_sweep: no column {column!r} in the sweep frame")
    logs = set(logy) if logy is not None else {m for m in metrics if m.startswith(("wait", "sojourn"))}
    scale = {m: (unit_of(m) or ("", 1.0))[1] for m in metrics}
    figure = _figure(4.6 * len(metrics) + 1.6, 3.8)
    axes = figure.subplots(1, len(metrics), squeeze=False)[0]
    groups = list(frame.groupby(hue, sort=True)) if hue else [(None, frame)]
    colours = palette(len(groups))
    handles: list[Any] = []
    saturated = False
    for number, (value, part) in enumerate(groups):
        part = part.sort_values(x)
        label = None if hue is None else f"{hue} {value}"
        nudge = (number - (len(groups) - 1) / 2) * 5.0  # points sideways, so that intervals do not overlap
        for ax, metric in zip(axes, metrics, strict=True):
            line, hot = _sweep_line(figure, ax, part, x, metric, scale[metric], colours[number], label, nudge)
            saturated = saturated or hot
        if label is not None:
            handles.append(line)
    for ax, metric in zip(axes, metrics, strict=True):
        handles += _sweep_axes(ax, frame, x, metric, metric in logs, scale[metric], goal)
    _sweep_legend(figure, handles, saturated, any(f"{m}_low" in frame.columns for m in metrics))
    width = int(figure.get_figwidth() * 12)  # characters of a medium title per inch
    figure.suptitle(textwrap.fill(title or f"{' and '.join(metrics)} against {x}", width), fontsize="medium")
    return figure


def _sweep_line(
    figure: Figure,
    ax: Axes,
    part: pd.DataFrame,
    x: str,
    metric: str,
    scale: float,
    colour: Any,
    label: str | None,
    nudge: float,
) -> tuple[Any, bool]:
    """One group's line of ``metric`` (with its intervals, nudged sideways by ``nudge`` points, and
    its saturated points crossed). Returns the artist the legend shows, and whether any point saturated."""
    from matplotlib.transforms import offset_copy

    values = part[metric].astype(float) * scale
    low, high = f"{metric}_low", f"{metric}_high"
    artists: list[Any] = []
    if low in part.columns and high in part.columns:
        below = values - part[low].astype(float) * scale
        above = part[high].astype(float) * scale - values
        drawn = ax.errorbar(
            part[x], values, yerr=[below.clip(lower=0), above.clip(lower=0)], marker="o", capsize=3,
            color=colour, label=label,
        )  # fmt: skip
        line: Any = drawn  # the container carries the label
        artists += [drawn.lines[0], *drawn.lines[1], *drawn.lines[2]]
    else:
        (line,) = ax.plot(part[x], values, marker="o", color=colour, label=label)
    saturated = "saturated" in part.columns and bool(part["saturated"].astype(bool).any())
    if saturated:
        hot = part["saturated"].astype(bool).to_numpy()
        artists += ax.plot(part[x][hot], values[hot], "x", color="black", markersize=11, mew=2, zorder=5)
    if artists and low in part.columns:  # drawn in data space (autoscaled), then moved sideways
        shift = offset_copy(ax.transData, fig=figure, x=nudge, units="points")
        for artist in artists:
            artist.set_transform(shift)
    return line, saturated


def _sweep_axes(
    ax: Axes, frame: pd.DataFrame, x: str, metric: str, log: bool, scale: float, goal: Mapping[str, float] | None
) -> list[Any]:
    """Labels, scale, ticks and goal of one metric's axes; returns the goal's legend entry, if any."""
    handles = []
    ax.set_xlabel(label_of(x))
    ax.set_ylabel(label_of(metric))
    if log:
        ax.set_yscale("log")
        plain_log_ticks(ax.yaxis)
    elif values_nonnegative(frame[metric]):
        ax.set_ylim(bottom=0)
    if goal and metric in goal:
        ax.axhline(goal[metric] * scale, color="red", linestyle="--", linewidth=1)
        handles.append(_line(color="red", linestyle="--", label=f"goal: {_value(goal[metric], metric)}"))
    if pd.api.types.is_numeric_dtype(frame[x]) and frame[x].nunique() <= 12:
        ticks = sorted(frame[x].unique())
        ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
    ax.grid(alpha=0.3, which="both" if log else "major")
    return handles


def _sweep_legend(figure: Figure, handles: list[Any], saturated: bool, intervals: bool) -> None:
    """The legend under the axes: the groups and goals, and what crosses and bars mean."""
    if saturated:
        handles.append(_line(marker="x", color="black", linestyle="", markersize=9, mew=2,
                             label="saturated: backlog\nstill growing"))  # fmt: skip
    if intervals:
        handles.append(_line(color="black", marker="|", linestyle="", markersize=12, label="90% interval"))
    if handles:
        figure.legend(handles=handles, loc="outside lower center", ncol=min(len(handles), 5), fontsize="small",
                      frameon=False)  # fmt: skip


def _axes_title(ax: Any, text: str) -> None:
    """A title over the axes only (a legend outside on the right never meets it), wrapped to their width."""
    width = int(ax.get_position().width * ax.figure.get_figwidth() * 12)
    ax.set_title(textwrap.fill(text, max(width, 30)), fontsize="medium")


def values_nonnegative(values: pd.Series) -> bool:
    """Whether a column is all zero or above (its axis then starts at 0)."""
    numbers = pd.to_numeric(values, errors="coerce")
    return bool(numbers.notna().any() and (numbers.dropna() >= 0).all())


def _value(value: float, metric: str) -> str:
    found = unit_of(metric)
    if found is None:
        return f"{value:g}"
    unit, factor = found
    return f"{value * factor:g} {unit}"


def plot_backlog(
    source: Result | pd.DataFrame, by: str = "thread", top: int = 10, *, title: str | None = None
) -> Figure:
    """Backlog over time, a line per group (the ``top`` largest by peak), the rest summed in grey.

    Args:
        source: A `Result` (its sampled backlog) or a long DataFrame with
            ``time``, ``by`` and ``backlog`` (`Result.backlog`, `analysis.backlog`).
        by: The group column (``"thread"``, ``"handler"`` or ``"order"``).
        top: Most groups drawn; the rest are summed into one grey "others" line.
        title: The figure's title: say what it shows.
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
    figure = _figure(9, 3.8)
    ax = figure.subplots()
    multi = len({k[0] if isinstance(k, tuple) else k for k in levels.columns}) > 1 if len(keys) > 1 else False
    for key, colour in zip(shown, palette(len(shown)), strict=True):
        name = key[-1] if isinstance(key, tuple) else key
        label = f"{key[0].rsplit(':', 1)[-1]}/{name}" if multi and isinstance(key, tuple) else str(name)
        ax.step(levels.index, levels[key], where="post", color=colour, label=f"{by} {label}")
    rest = [k for k in levels.columns if k not in shown]
    if rest:
        ax.step(levels.index, levels[rest].sum(axis=1), where="post", color=OTHERS, linestyle="--", linewidth=2,
                label=f"{len(rest)} other {by}s, summed")  # fmt: skip
    ax.set_xlabel("simulated time (s)" if isinstance(source, Result) else "time (s)")
    ax.set_ylabel("messages waiting")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    figure.legend(loc="outside right upper", fontsize="small", frameon=False)
    _axes_title(ax, title or f"messages waiting per {by} (the {min(top, len(shown))} highest peaks)")
    return figure


def plot_latency(
    traces: pd.DataFrame | Result | Mapping[str, pd.DataFrame | Result],
    metric: str = "sojourn",
    by: str | None = None,
    *,
    top: int = 8,
    title: str | None = None,
) -> Figure:
    """Distribution (CCDF, log-log, in ms) of wait or sojourn, to compare runs or groups.

    Each group (a value of ``by``) has one hue; each trace of ``traces`` one
    shade and line style of it: the first dark and solid, the next light and
    dashed (pass ``{"real": ..., "sim": ...}`` to pair a run with its twin).
    With more than ``top`` groups, the ``top`` with the longest tails (p99 of
    the first trace) are coloured and the others drawn thin and grey.

    Args:
        traces: A trace, a `Result`, or ``{"real": ..., "sim": ...}``.
        metric: ``"wait"`` (started - enqueued) or ``"sojourn"`` (finished - enqueued).
        by: Also split each trace by this column (e.g. ``"order"``).
        top: Most groups coloured.
        title: The figure's title: say what it shows.
    """
    if metric not in ("wait", "sojourn"):
        raise ValueError(f"plot_latency: metric must be 'wait' or 'sojourn', got {metric!r}")
    named: Mapping[str, Any] = traces if isinstance(traces, Mapping) else {"": traces}
    end = "started_at" if metric == "wait" else "finished_at"
    frames = {name: (source.trace if isinstance(source, Result) else source) for name, source in named.items()}
    frames = {name: frame.assign(_ms=(frame[end] - frame["enqueued_at"]) * 1000) for name, frame in frames.items()}
    values = _by_tail(frames, by)
    figure = _figure(7.5, 4.2)
    ax = figure.subplots()
    handles = _ccdfs(ax, frames, by, values, top)
    ax.set_xscale("log")
    ax.set_yscale("log")
    plain_log_ticks(ax.xaxis)
    what = "wait: enqueue to perform start" if metric == "wait" else "sojourn: enqueue to perform end"
    ax.set_xlabel(f"{what} (ms)")
    ax.set_ylabel("share of messages slower than x")
    ax.grid(alpha=0.3, which="both")
    if handles and any(not str(h.get_label()).startswith("_") for h in handles):
        figure.legend(handles=handles, loc="outside right upper", fontsize="small", frameon=False)
    split = f" per {by}" if by else ""
    _axes_title(ax, title or f"distribution of {metric}{split}")
    return figure


def _by_tail(frames: Mapping[str, pd.DataFrame], by: str | None) -> list[Any]:
    """The values of ``by``, longest tail first (p99 of the first trace), then the others'."""
    if not by:
        return [None]
    first = next(iter(frames))
    tails = frames[first].groupby(by, observed=True)["_ms"].quantile(0.99).sort_values(ascending=False)
    values = list(tails.index)
    values += sorted(set().union(*(set(f[by].unique()) for f in frames.values())) - set(values), key=str)
    return values


def _ccdfs(ax: Axes, frames: Mapping[str, pd.DataFrame], by: str | None, values: list[Any], top: int) -> list[Any]:
    """One CCDF per trace and group, the first ``top`` groups coloured (a hue each, a shade and style
    per trace), the others thin and grey. Returns the legend's handles, each group's traces together."""
    coloured = values[:top]
    colour = dict(zip(coloured, paired(len(coloured)), strict=True))
    styles = ("-", "--", ":", "-.")
    others = 0
    entries: list[tuple[int, int, Any]] = []  # (group, trace, line): the legend pairs each group's traces
    for position, (name, frame) in enumerate(frames.items()):
        groups = dict(list(frame.groupby(by, sort=False, observed=True))) if by else {None: frame}
        for rank, value in enumerate(values):
            part = groups.get(value)
            if part is None or part.empty:
                continue
            times = np.sort(part["_ms"].to_numpy())
            ccdf = 1.0 - np.arange(len(times)) / len(times)
            if value in colour:
                shade = colour[value][0 if position == 0 else 1]
                text = " ".join(s for s in (name, "" if value is None else f"{by} {value}") if s) or None
                (line,) = ax.step(times, ccdf, where="post", color=shade, linestyle=styles[position % 4],
                                  linewidth=1.6 if position == 0 else 2.0, label=text)  # fmt: skip
                entries.append((rank, position, line))
            else:
                others += position == 0
                ax.step(times, ccdf, where="post", color=OTHERS, linewidth=0.6, alpha=0.6,
                        linestyle=styles[position % 4])  # fmt: skip
    handles = [line for _, _, line in sorted(entries, key=lambda entry: entry[:2]) if line.get_label()]
    if others:
        handles += ax.plot([], [], color=OTHERS, linewidth=0.6, label=f"{others} other {by}s")
    return handles
