"""`calibrate`: fit the service-time and round-trip model from a real trace."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd

from .analysis import check_trace
from .scenario import Scenario
from .workload import Empirical, Fixed, Service


@dataclass(frozen=True)
class Calibration:
    """What `calibrate` found.

    Attributes:
        service: A fitted `Service` per handler name.
        rtt: Estimated storage round trip (seconds), or NaN when the trace has no
            back-to-back batches to measure it from.
        fit: Per handler: ``per_batch``, ``per_message``, ``cv`` of the noise,
            ``batches`` used and ``rtt_samples``.
    """

    service: Mapping[str, Service]
    rtt: float
    fit: pd.DataFrame

    def apply(self, scenario: Scenario) -> Scenario:
        """``scenario`` with the fitted service of each of its handlers and the fitted rtt."""
        workloads = tuple(
            dataclasses.replace(w, service=self.service.get(w.name, w.service))
            for w in scenario.workloads  # type: ignore[union-attr]
        )
        rtt = scenario.rtt if math.isnan(self.rtt) else self.rtt
        return dataclasses.replace(scenario, workloads=workloads, rtt=rtt)


def calibrate(trace: pd.DataFrame, noise: bool = True) -> Calibration:
    """Fit ``perform`` time = ``per_batch + per_message * n`` (times noise) per handler, and the round trip.

    Each batch's duration is ``finished_at - started_at``; a least-squares line
    through duration against batch size gives the two costs (clipped at 0).
    The noise is the empirical distribution of duration / fitted mean (`Fixed`
    when ``noise`` is False or the durations fit exactly). The round trip is
    the median gap between a loop's back-to-back batches of one thread (the
    next batch already waiting), which in the worker is one ack+fetch round trip.

    Args:
        trace: A trace (real, or simulated to check the fit).
        noise: Keep the measured noise (`Empirical`) instead of `Fixed`.
    """
    check_trace(trace)
    if trace.empty:
        raise ValueError("cannot calibrate from an empty trace")
    batches = (
        trace.groupby(["worker", "batch"], sort=False, observed=True)
        .agg(
            handler=("handler", "first"),
            thread=("thread", "first"),
            size=("enqueued_at", "size"),
            first_enqueued=("enqueued_at", "min"),
            started=("started_at", "first"),
            finished=("finished_at", "first"),
        )
        .reset_index()
    )
    batches["duration"] = batches["finished"] - batches["started"]
    services: dict[str, Service] = {}
    rows = []
    for handler, part in batches.groupby("handler", sort=True):
        size = part["size"].to_numpy(dtype=np.float64)
        duration = part["duration"].to_numpy()
        per_batch, per_message = _fit(size, duration)
        mean = per_batch + per_message * size
        factors = np.divide(duration, mean, out=np.ones_like(duration), where=mean > 0)
        cv = float(np.std(factors) / np.mean(factors)) if len(factors) > 1 and np.mean(factors) > 0 else 0.0
        model = Empirical(factors) if noise and cv > 1e-9 else Fixed()
        services[str(handler)] = Service(per_batch=per_batch, per_message=per_message, noise=model)
        rows.append(
            {"handler": handler, "per_batch": per_batch, "per_message": per_message, "cv": cv, "batches": len(part)}
        )
    gaps = _gaps(batches)
    fit = pd.DataFrame(rows)
    fit["rtt_samples"] = len(gaps)
    return Calibration(services, float(np.median(gaps)) if len(gaps) else math.nan, fit)


def _fit(size: np.ndarray, duration: np.ndarray) -> tuple[float, float]:
    """Least-squares ``duration = a + b * size`` with ``a, b >= 0``."""
    if len(np.unique(size)) < 2:
        return float(max(duration.mean(), 0.0)), 0.0
    (a, b), *_ = np.linalg.lstsq(np.column_stack((np.ones_like(size), size)), duration, rcond=None)
    if b < 0:
        return float(max(duration.mean(), 0.0)), 0.0
    if a < 0:
        return 0.0, float(max((size @ duration) / (size @ size), 0.0))
    return float(a), float(b)


def _gaps(batches: pd.DataFrame) -> np.ndarray:
    """Gaps between a loop's consecutive batches of one thread when the next was already waiting."""
    ordered = batches.sort_values(["worker", "started"])
    same = (
        (ordered["worker"].to_numpy()[1:] == ordered["worker"].to_numpy()[:-1])
        & (ordered["thread"].to_numpy()[1:] == ordered["thread"].to_numpy()[:-1])
        & (ordered["handler"].to_numpy()[1:] == ordered["handler"].to_numpy()[:-1])
    )
    finished = ordered["finished"].to_numpy()[:-1]
    ready = ordered["first_enqueued"].to_numpy()[1:] <= finished
    gaps = ordered["started"].to_numpy()[1:] - finished
    return np.asarray(gaps[same & ready])
