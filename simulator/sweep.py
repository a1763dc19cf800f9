"""`sweep`: many scenarios, one DataFrame (with a progress bar for terminals and Jupyter)."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import pandas as pd

from .engine import simulate
from .scenario import Scenario
from .workload import ScenarioError


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


def sweep(
    base: Scenario | Callable[..., Scenario],
    grid: Mapping[str, Sequence[Any]] | Sequence[Mapping[str, Any]],
    *,
    by: str | Iterable[str] = (),
    progress: bool = True,
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

    Returns:
        One row per point (and group): the grid's values, the summary columns,
        ``utilisation`` of the loops, ``simulated`` and ``wall`` seconds.
    """
    points = grid_points(grid)
    scenarios = [base.replace(**point) if isinstance(base, Scenario) else base(**point) for point in points]
    for point, scenario in zip(points, scenarios, strict=True):
        if not isinstance(scenario, Scenario):
            raise ScenarioError(f"sweep: the scenario of {point} is {type(scenario).__name__}, not a Scenario")
    bar: Any = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(points), desc="sweep", unit="run")
    rows = []
    try:
        for point, scenario in zip(points, scenarios, strict=True):
            result = simulate(scenario)
            frame = result.summary(by).rename(columns={"utilisation": "perform_share"})
            for name, value in reversed(point.items()):
                frame.insert(0, name, [value] * len(frame))
            frame["utilisation"] = result.utilisation
            frame["simulated"] = result.end
            frame["wall"] = result.wall
            rows.append(frame)
            if bar is not None:
                bar.update()
    finally:
        if bar is not None:
            bar.close()
    return pd.concat(rows, ignore_index=True)
