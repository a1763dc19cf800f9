"""`sweep`: many scenarios, one DataFrame; `plan`: the cheapest configuration that meets a goal.

A sweep runs every point of a grid (and each point ``replications`` times
with other seeds), spread over the machine's cores, with a progress bar for
terminals and Jupyter. With replications it reports, per metric, the mean
over the runs and a 90% confidence interval (Student's t).
"""

from __future__ import annotations

import dataclasses
import difflib
import html
import inspect
import itertools
import math
import multiprocessing
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import msgspec
import pandas as pd

from .analysis import CONFIDENCE as CONFIDENCE  # the level, here as before (90%)
from .analysis import t_quantile
from .arrivals import Deterministic, OnOff, Poisson, Registered
from .checks import ScenarioError
from .display import duration, html_table, per_second, readable
from .predict import prediction_runs
from .scenario import Scenario
from .simulation import simulate
from .workload import Workload

if TYPE_CHECKING:
    from .calibrate import Calibration


def grid_points(grid: Mapping[str, Sequence[Any]] | Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The points of a grid: the product of a mapping of value lists, or an explicit list."""
    if isinstance(grid, Mapping):
        names = list(grid)
        for name, values in grid.items():
            if isinstance(values, str | bytes) or not isinstance(values, Iterable):
                raise ScenarioError(f"sweep grid {name!r} must be a list of values, got {values!r}")
        return [
            dict(zip(names, values, strict=True)) for values in itertools.product(*(list(v) for v in grid.values()))
        ]
    points = [dict(point) for point in grid]
    if not points:
        raise ScenarioError("sweep grid has no points")
    return points


def check_keys(base: Scenario | Callable[..., Scenario], names: Sequence[str]) -> None:
    """Refuse grid keys that ``base`` cannot vary, listing the ones it can.

    Raises:
        ScenarioError: an unknown key, with the closest valid one when there is one.
    """
    if isinstance(base, Scenario):
        fields = sorted(f.name for f in dataclasses.fields(base) if f.name != "workloads")
        settings = sorted(base.settings.as_dict())
        valid = [*fields, *settings, "workers"]  # workers: the deprecated name of loops
        listing = f"scenario fields {', '.join(fields)}; settings {', '.join(settings)}"
    else:
        try:
            parameters = inspect.signature(base).parameters.values()
        except (TypeError, ValueError):  # no signature to check: the call will tell
            return
        if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
            return
        valid = [p.name for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
        listing = f"the parameters of {getattr(base, '__qualname__', base)}: {', '.join(valid) or 'none'}"
    unknown = [name for name in names if name not in valid]
    if unknown:
        shown = []
        for name in unknown:
            close = difflib.get_close_matches(name, valid, n=1)
            shown.append(f"{name!r} (did you mean {close[0]!r}?)" if close else repr(name))
        raise ScenarioError(f"sweep: unknown grid key {', '.join(shown)}; the keys are {listing}")


_JOBS: list[tuple[Scenario, tuple[str, ...]]] = []  # what forked workers simulate, by index


def _run(index: int) -> bytes:
    """Simulate job ``index``; its summary as JSON (no pickled objects cross processes)."""
    scenario, by = _JOBS[index]
    result = simulate(scenario)
    frame = result.summary(by)
    frame["utilisation"] = result.utilisation
    frame["cpu_utilisation"] = result.cpu_utilisation
    frame["storage_utilisation"] = result.storage_utilisation
    frame["cores_utilisation"] = result.cores_utilisation
    frame["bottleneck"] = result.bottleneck
    frame["simulated"] = result.end
    frame["wall"] = result.wall
    return msgspec.json.encode(frame.to_dict("list"))


def sweep(
    base: Scenario | Callable[..., Scenario],
    grid: Mapping[str, Sequence[Any]] | Sequence[Mapping[str, Any]],
    *,
    by: str | Iterable[str] = (),
    progress: bool = True,
    replications: int = 1,
    processes: int | None = None,
    calibrations: Sequence[Calibration] | None = None,
) -> pd.DataFrame:
    """Simulate every point of ``grid`` and gather the summaries in one DataFrame.

    Args:
        base: A `Scenario` to vary with `Scenario.replace` (scenario fields such as
            ``loops``, ``processes``, ``rtt``, ``seed`` and `Settings` fields such as
            ``worker_batch_size``, ``coordinator_delay``), or a function taking the
            grid's names as keyword arguments and returning a `Scenario`.
        grid: ``{"loops": [1, 2, 4], "worker_batch_size": [1, 32]}`` (every
            combination) or a list of such mappings of single values.
        by: Summary grouping per point (`Result.summary`); default one row per point.
        progress: Show a progress bar (``tqdm.auto``: a widget in Jupyter, text elsewhere).
        replications: Runs per point, with seeds ``seed, seed + 1, ...``; with more
            than one, each metric is the mean over them with a 90% confidence
            interval in ``<metric>_low`` and ``<metric>_high``.
        processes: Worker processes to spread the runs over; default: one per core
            (runs in this process when that is one, or where ``fork`` is unavailable).
        calibrations: Draws of a calibration (`simulator.calibrate.calibrations`): replication
            ``r`` of each point is calibrated by draw ``r`` (`simulator.predict`), and the
            interval of each metric holds 90% of the runs (a prediction interval: seeds,
            the calibration's uncertainty and the machine's noise), around their median.

    Returns:
        One row per point (and group): the grid's values, the summary columns
        (`Result.summary`: seconds for times, messages per second for
        throughput; ``perform_share`` is the group's share of the loops' time),
        ``utilisation`` of the loops (share of all their time in ``perform``),
        ``cpu_utilisation`` of the busiest worker process, ``simulated`` and ``wall``
        seconds; with replications also ``replications``, the intervals and
        ``saturated_share`` (share of the runs flagged saturated; ``saturated``
        is then whether any was).
    """
    if isinstance(replications, bool) or not isinstance(replications, int) or replications < 1:
        raise ScenarioError(f"sweep replications must be an integer >= 1, got {replications!r}")
    points = grid_points(grid)
    check_keys(base, list(dict.fromkeys(name for point in points for name in point)))
    scenarios = [base.replace(**point) if isinstance(base, Scenario) else base(**point) for point in points]
    for point, scenario in zip(points, scenarios, strict=True):
        if not isinstance(scenario, Scenario):
            raise ScenarioError(f"sweep: the scenario of {point} is {type(scenario).__name__}, not a Scenario")
    names = tuple([by] if isinstance(by, str) else by)
    frames = _simulate_all(_jobs(scenarios, names, replications, calibrations), progress, processes)
    rows = []
    for position, point in enumerate(points):
        runs = frames[position * replications : (position + 1) * replications]
        frame = runs[0] if replications == 1 else _replicated(runs, list(names), calibrations is not None)
        for name, value in reversed(point.items()):
            frame.insert(0, name, [value] * len(frame))
        rows.append(frame)
    return pd.concat(rows, ignore_index=True)


def _jobs(
    scenarios: list[Scenario], names: tuple[str, ...], replications: int, calibrations: Sequence[Calibration] | None
) -> list[tuple[Scenario, tuple[str, ...]]]:
    """Every run of a sweep, point after point: other seeds, or a prediction's runs (`prediction_runs`)."""
    if calibrations is not None:
        return [(run, names) for s in scenarios for run in prediction_runs(s, calibrations, replications)]
    return [(s.replace(seed=s.seed + r), names) for s in scenarios for r in range(replications)]


def _simulate_all(jobs: list[tuple[Scenario, tuple[str, ...]]], progress: bool, processes: int | None) -> list[Any]:
    """Every job's summary frame, in job order, on several cores when possible."""
    bar: Any = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(jobs), desc="sweep", unit="run")
    count = min(processes or os.cpu_count() or 1, len(jobs))
    encoded: list[bytes | None] = [None] * len(jobs)
    _JOBS[:] = jobs
    try:
        if count > 1 and "fork" in multiprocessing.get_all_start_methods():
            # Forked workers inherit the scenarios (handlers defined in a notebook included):
            # only job indices go out and JSON comes back.
            with multiprocessing.get_context("fork").Pool(count) as pool:
                for index, data in pool.imap_unordered(_indexed, range(len(jobs))):
                    encoded[index] = data
                    if bar is not None:
                        bar.update()
        else:
            for index in range(len(jobs)):
                encoded[index] = _run(index)
                if bar is not None:
                    bar.update()
    finally:
        _JOBS.clear()
        if bar is not None:
            bar.close()
    return [_decoded(data) for data in encoded if data is not None]


def _decoded(data: bytes) -> pd.DataFrame:
    """A summary frame back from JSON, where a NaN travelled as null (a run that performed nothing)."""
    frame = pd.DataFrame(msgspec.json.decode(data))
    for column in frame.columns:
        values = frame[column]
        if values.dtype == object and all(
            v is None or (isinstance(v, int | float) and not isinstance(v, bool)) for v in values
        ):
            frame[column] = values.astype("float64")
    return frame


def _indexed(index: int) -> tuple[int, bytes]:
    return index, _run(index)


def _replicated(runs: list[pd.DataFrame], names: list[str], prediction: bool = False) -> pd.DataFrame:
    """Mean and 90% confidence interval of every metric over the runs of one point (per group);
    with ``prediction``, their median and the interval holding 90% of them."""
    stacked = pd.concat(runs, ignore_index=True)
    numeric = [c for c in stacked.columns if c not in names and c != "saturated" and _numeric(stacked[c])]
    grouped = stacked.groupby(names, sort=True) if names else stacked.groupby(lambda _: 0)
    count = grouped.size()
    if prediction:
        tail = (1 - CONFIDENCE) / 2
        out = grouped[numeric].median()
        low, high = grouped[numeric].quantile(tail), grouped[numeric].quantile(1 - tail)
    else:
        out = grouped[numeric].mean()
        spread = grouped[numeric].std(ddof=1)
        half = spread.mul(count.map(lambda n: t_quantile(n - 1) / math.sqrt(n) if n > 1 else math.nan), axis=0)
        low, high = out - half, out + half
    for column in numeric:
        out[f"{column}_low"] = low[column]
        out[f"{column}_high"] = high[column]
    saturated = grouped["saturated"].mean()
    if "bottleneck" in stacked.columns:  # the resource most runs of the point ran out of
        out["bottleneck"] = grouped["bottleneck"].agg(lambda names: names.value_counts().index[0])
    out["saturated"] = saturated > 0
    out["saturated_share"] = saturated
    out["replications"] = count
    return out.reset_index(drop=not names)


def _numeric(column: pd.Series) -> bool:
    return bool(pd.api.types.is_numeric_dtype(column)) and not pd.api.types.is_bool_dtype(column)


# --- planning ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    """What `plan` found: the cheapest configuration meeting the goal, and the table behind it.

    Attributes:
        choice: The chosen grid values (e.g. ``{"loops": 4, "processes": 1}``), or None
            when no point of the grid meets the goal.
        row: The chosen point's row of `table` (means and 90% intervals).
        table: Every point, replicated, with ``meets``, ordered cheapest first.
        rate: The arrival rate planned for (per second).
        p99: The goal on ``sojourn_p99`` (seconds).
    """

    choice: dict[str, Any] | None
    row: pd.Series | None
    table: pd.DataFrame
    rate: float
    p99: float

    def __repr__(self) -> str:
        goal = f"{per_second(self.rate)} with p99 sojourn <= {duration(self.p99)}"
        if self.choice is None or self.row is None:
            return f"<Plan: no configuration of the grid meets {goal}; {self.shortfalls()}>"
        row = self.row
        chosen = ", ".join(f"{k}={v}" for k, v in self.choice.items())
        return (
            f"<Plan for {goal}: {chosen}; p99 {duration(row['sojourn_p99'])} "
            f"(90% CI {duration(row['sojourn_p99_low'])} to {duration(row['sojourn_p99_high'])}), "
            f"throughput {per_second(row['throughput'])}, busiest CPU {row['cpu_utilisation']:.0%}>"
        )

    def shortfalls(self) -> str:
        """Per point of the grid, the resource that ran out first (`Result.bottleneck`) and how busy it was:
        whether more loops, more processes, more cores or more Redis would help."""
        columns = {
            "storage server": "storage_utilisation",
            "a worker process's CPU": "cpu_utilisation",
            "the machine's cores": "cores_utilisation",
            "the loops": "utilisation",
        }
        parts = []
        for _, row in self.table.iterrows():
            point = ", ".join(f"{name}={row[name]}" for name in self.grid)
            name = str(row.get("bottleneck", ""))
            share = row.get(columns.get(name, ""), math.nan)
            parts.append(f"{point}: {name} {share:.0%} busy" if name else point)
        return "; ".join(parts)

    @property
    def grid(self) -> list[str]:
        """The names varied (the table's first columns)."""
        columns = list(self.table.columns)
        return columns[: columns.index("count")] if "count" in columns else []

    def _repr_html_(self) -> str:
        head = html.escape(repr(self)[1:-1])
        shown = [*self.grid, *_PLAN_SHOWN]
        table = readable(self.table, [c for c in shown if c in self.table.columns])
        return (
            f"<p><b>{head}</b></p>{html_table(table)}"
            "<p><small>cheapest first; means over the replications with the 90% interval of p99 "
            "(<code>_low</code>, <code>_high</code>); every column: <code>plan.table</code></small></p>"
        )


_PLAN_SHOWN = (
    "throughput",
    "sojourn_p50",
    "sojourn_p99",
    "sojourn_p99_low",
    "sojourn_p99_high",
    "cpu_utilisation",
    "storage_utilisation",
    "bottleneck",
    "saturated_share",
    "meets",
)
"""The table columns `Plan` shows in Jupyter."""


def with_rate(scenario: Scenario, rate: float) -> Scenario:
    """``scenario`` with every workload's arrival rate scaled so that they add up to ``rate``.

    Raises:
        ScenarioError: an arrival process without a rate to scale (a replay, a backlog).
    """
    workloads = scenario.workloads  # type: ignore[union-attr]
    for workload in workloads:
        inner = workload.arrivals.arrivals if isinstance(workload.arrivals, Registered) else workload.arrivals
        if not isinstance(inner, Poisson | Deterministic | OnOff):
            raise ScenarioError(
                f"plan(rate=...) scales Poisson, Deterministic or OnOff arrivals (or those Registered in bulk); "
                f"{workload.name} has {type(inner).__name__}"
            )
    factor = rate / sum(w.arrivals.mean_rate() for w in workloads)
    return dataclasses.replace(scenario, workloads=tuple(_scaled(w, factor) for w in workloads))


def _scaled(workload: Workload, factor: float) -> Workload:
    """``workload`` with its arrival rate times ``factor`` (a bulk producer's inner arrivals)."""
    arrivals = workload.arrivals
    if isinstance(arrivals, Registered):
        inner = dataclasses.replace(arrivals.arrivals, rate=arrivals.arrivals.rate * factor)
        return dataclasses.replace(workload, arrivals=dataclasses.replace(arrivals, arrivals=inner))
    return dataclasses.replace(workload, arrivals=dataclasses.replace(arrivals, rate=arrivals.rate * factor))


def plan(
    scenario: Scenario,
    *,
    rate: float,
    p99: float,
    over: Mapping[str, Sequence[Any]],
    replications: int = 5,
    progress: bool = True,
    processes: int | None = None,
    calibrations: Sequence[Calibration] | None = None,
) -> Plan:
    """The cheapest configuration of ``over`` that keeps up with ``rate`` within the ``p99`` goal.

    Every point of ``over`` is simulated ``replications`` times (`sweep`). A point
    meets the goal when no run was flagged saturated, its mean throughput is
    within 2% of ``rate`` (it keeps up), and the *upper* end of the 90%
    confidence interval of ``sojourn_p99`` (enqueue to finish) is at most
    ``p99``. "Cheapest" means fewest loops, then fewest worker processes (a
    process costs memory and connections, a loop a coroutine), then the lowest
    p99; the table is in that order.

    Args:
        scenario: The scenario to plan for (its duration and warm-up set each run's length).
        rate: Total arrivals per second to plan for (the workloads' rates are scaled).
        p99: The goal on ``sojourn_p99``, in seconds.
        over: The grid of candidates, e.g. ``{"loops": [2, 4, 8], "processes": [1, 2]}``;
            points with more processes than loops are skipped.
        replications: Runs per point (at least 2, for an interval).
        progress: Show a progress bar.
        processes: Cores to use (see `sweep`).
        calibrations: Draws of a calibration: the intervals are then prediction intervals
            (`sweep`), so a point meets the goal when 95% of its predicted runs do.
    """
    _positive_goal("rate", rate)
    _positive_goal("p99", p99)
    if replications < 2:
        raise ScenarioError(f"plan needs at least 2 replications for an interval, got {replications}")
    base = with_rate(scenario, rate)
    points = [p for p in grid_points(over) if _fits(base, p)]
    if not points:
        raise ScenarioError(f"plan: no point of {dict(over)} is a valid configuration")
    table = sweep(
        base, points, progress=progress, replications=replications, processes=processes, calibrations=calibrations
    )
    table["meets"] = ~table["saturated"] & (table["throughput"] >= 0.98 * rate) & (table["sojourn_p99_high"] <= p99)
    loops = table["loops"] if "loops" in table.columns else pd.Series(base.loops, index=table.index)
    workers = table["processes"] if "processes" in table.columns else pd.Series(base.processes, index=table.index)
    order = pd.DataFrame({"loops": loops, "processes": workers, "p99": table["sojourn_p99_high"]})
    table = table.loc[order.sort_values(["loops", "processes", "p99"], kind="stable").index].reset_index(drop=True)
    met = table[table["meets"]]
    if met.empty:
        return Plan(None, None, table, rate, p99)
    row = met.iloc[0]
    return Plan({name: row[name] for name in points[0]}, row, table, rate, p99)


def _fits(scenario: Scenario, point: Mapping[str, Any]) -> bool:
    loops = point.get("loops", scenario.loops)
    return bool(point.get("processes", scenario.processes) <= loops)


def _positive_goal(name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
        raise ScenarioError(f"plan {name} must be a number > 0, got {value!r}")
