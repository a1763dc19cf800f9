"""`predict`: what a scenario will do, with intervals that cover the twin's seeds, the calibration's
own uncertainty and the machine's run-to-run noise.

A prediction is many runs of the twin: run ``i`` takes draw ``i`` of `calibrations` (the trace's
batches and its meter's probes resampled: `simulator.calibrate.calibrations`) and seed
``seed + i``. The spread of a metric over the runs is what one real run of the scenario may
show: `compare` (``prediction=True``) and `sweep` (``calibrations=``) report its median and
the interval holding 90% of the runs, and whether a real run's value falls inside.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from .scenario import Scenario
from .simulation import simulate

if TYPE_CHECKING:
    import pandas as pd

    from .calibrate import Calibration


def prediction_runs(
    scenario: Scenario,
    calibrations: Sequence[Calibration],
    replications: int | None = None,
    handlers: Mapping[str, str] | None = None,
) -> list[Scenario]:
    """The scenarios of a prediction: ``replications`` (default one per calibration) runs, run ``i``
    calibrated by draw ``i`` (cycling) with seed ``scenario.seed + i``.

    Raises:
        ValueError: no calibration.
    """
    if not calibrations:
        raise ValueError("a prediction needs at least one calibration (simulator.calibrate.calibrations)")
    count = replications or len(calibrations)
    return [
        calibrations[i % len(calibrations)].apply(scenario.replace(seed=scenario.seed + i), handlers)
        for i in range(count)
    ]


def predict(
    scenario: Scenario,
    calibrations: Sequence[Calibration],
    replications: int | None = None,
    handlers: Mapping[str, str] | None = None,
) -> list[pd.DataFrame]:
    """The traces of a prediction's runs (`prediction_runs`), for `compare` with ``prediction=True``.

    The scenario must keep its trace (``trace=True``, the default).
    """
    return [simulate(run).trace for run in prediction_runs(scenario, calibrations, replications, handlers)]
