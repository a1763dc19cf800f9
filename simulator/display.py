"""Numbers for people: durations with their unit, and summary tables with units in their headers.

The simulator computes in seconds and messages per second; these helpers only
format. `readable` turns a summary, sweep or plan table into a copy to read
(latencies in ms, shares in %, units in the column names); the reprs of
`Result`, `Scenario` and `Plan` use the same rules.
"""

from __future__ import annotations

import html
import math
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from .scenario import Scenario, Workload

_LATENCY = re.compile(r"^(wait|sojourn)_(mean|max|p[0-9_]+)(_low|_high)?$")
_SHARE = re.compile(r"^(perform_share|utilisation|cpu_utilisation|saturated_share)(_low|_high)?$")
_RATE = re.compile(r"^(throughput|arrival_rate|rate)(_low|_high)?$")
_SECONDS = {"coordinator_delay", "worker_empty_pause", "simulated", "wall", "busy", "bound", "lease_ttl", "warmup"}


def duration(seconds: float) -> str:
    """A duration with a unit that keeps it readable: ``850 µs``, ``3.76 ms``, ``1.10 s``, ``2.5 min``."""
    if seconds is None or (isinstance(seconds, float) and math.isnan(seconds)):
        return "-"
    size = abs(seconds)
    if size == 0:
        return "0 s"
    if size < 1e-3:
        return f"{seconds * 1e6:.3g} µs"
    if size < 1:
        return f"{seconds * 1e3:.3g} ms"
    if size < 120:
        return f"{seconds:.3g} s"
    return f"{seconds / 60:.3g} min"


def per_second(rate: float) -> str:
    """Messages per second, thousands separated: ``2,990/s``."""
    if math.isnan(rate):
        return "-"
    return f"{rate:,.0f}/s" if rate >= 100 else f"{rate:.3g}/s"


def unit_of(column: str) -> tuple[str, float] | None:
    """The display unit of a summary/sweep column and the factor from its stored value, or None."""
    if _LATENCY.match(column) or column == "rtt":
        return "ms", 1e3
    if _SHARE.match(column):
        return "%", 100.0
    if _RATE.match(column):
        return "msg/s", 1.0
    if column.startswith("batch_mean"):
        return "msg/batch", 1.0
    if column in _SECONDS:
        return "s", 1.0
    return None


def readable(frame: pd.DataFrame, columns: Sequence[str] | None = None, digits: int = 3) -> pd.DataFrame:
    """A copy of a summary, sweep or plan table to read: units in the headers, latencies in ms.

    Wait and sojourn columns (and their ``_low``/``_high`` interval ends) and
    ``rtt`` become milliseconds, shares (``perform_share``, ``utilisation``,
    ``cpu_utilisation``) percentages, throughput keeps messages per second;
    each renamed ``"<name> (<unit>)"``. Values are rounded to ``digits``
    significant digits. Compute with the original frame, read this one.

    Args:
        frame: A frame of `Result.summary`, `sweep` or `Plan.table`.
        columns: The columns to keep, in order (default: all).
        digits: Significant digits of floats.
    """
    chosen = frame[list(columns)] if columns is not None else frame
    out = pd.DataFrame(index=chosen.index)
    for column in chosen.columns:
        values = chosen[column]
        found = unit_of(str(column))
        if found is not None and pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values):
            unit, factor = found
            out[f"{column} ({unit})"] = _whole((values.astype(float) * factor).map(lambda v: _round(v, digits)))
        elif pd.api.types.is_float_dtype(values):
            out[column] = _whole(values.map(lambda v: _round(v, digits)))
        else:
            out[column] = values
    return out


def _whole(values: pd.Series) -> pd.Series:
    """Integers when every value is one after rounding (``23139``, not ``23139.0``)."""
    known = values.dropna()
    if len(known) and (known == known.round()).all() and (known.abs() < 2**53).all():
        return values.astype("Int64")
    return values


def _round(value: float, digits: int) -> float:
    """``value`` to ``digits`` significant digits (integers above that keep their units)."""
    if not math.isfinite(value) or value == 0:
        return value
    places = digits - 1 - math.floor(math.log10(abs(value)))
    return round(value, max(places, 0))


# --- scenario --------------------------------------------------------------------------------


def perform_text(workload: Workload) -> str:
    """``perform`` of a workload in words: ``4 ms + 0.2 ms/msg (LogNormal cv 0.5), 2 ms of it CPU``."""
    service = workload.service
    parts = []
    if service.per_batch or not service.per_message:
        parts.append(duration(service.per_batch))
    if service.per_message:
        parts.append(f"{duration(service.per_message)}/msg")
    text = " + ".join(parts)
    noise = type(service.noise).__name__
    if noise != "Fixed":
        cv = getattr(service.noise, "cv", None)
        text += f" ({noise}" + (f" cv {cv:g})" if cv is not None else ")")
    cpu = []
    if service.cpu_per_batch:
        cpu.append(duration(service.cpu_per_batch))
    if service.cpu_per_message:
        cpu.append(f"{duration(service.cpu_per_message)}/msg")
    if cpu:
        text += f", CPU {' + '.join(cpu)}"
    if service.timer:
        text += ", on a timer"
    if service.failure_rate:
        text += f", {service.failure_rate:.1%} fail"
    return text


def arrivals_text(workload: Workload) -> str:
    """The arrival process in words: ``Poisson 3,000/s``, ``backlog of 4,000``."""
    arrivals = workload.arrivals
    name = type(arrivals).__name__
    mean = arrivals.mean_rate()
    if name == "Replay":
        times = getattr(arrivals, "times", ())
        if len(times) and float(times[-1]) == float(times[0]):
            return f"backlog of {len(times):,}"
        return f"replay of {len(times):,}" + (f" ({per_second(mean)})" if mean else "")
    return f"{name} {per_second(mean)}" if mean else name


def scenario_text(scenario: Scenario) -> str:
    """A `Scenario` in one line: per handler its arrivals and ``perform``, then the fleet and the run."""
    workloads: Sequence[Workload] = scenario.workloads  # type: ignore[assignment]
    handlers = "; ".join(f"{w.name}: {arrivals_text(w)}, perform {perform_text(w)}" for w in workloads)
    policy = scenario.policy()
    fleet = (
        f"{scenario.loops} loop{'s' if scenario.loops != 1 else ''} in {scenario.processes} "
        f"process{'es' if scenario.processes != 1 else ''}, worker_batch_size {policy.batch_size}, "
        f"coordinator_delay {duration(policy.coordinator_delay)}, rtt {duration(scenario.rtt)}"
    )
    if scenario.storage_cpu:
        fleet += f", storage {duration(scenario.storage_cpu)}/command"
    if not scenario.pauses.none:
        fleet += f", pauses {scenario.pauses.rate:.3g}/s of {duration(float(np.mean(scenario.pauses.lengths)))}"
    if scenario.cores is not None:
        fleet += f", {scenario.cores} core{'s' if scenario.cores != 1 else ''}"
        if scenario.background:
            fleet += f" (others {duration(scenario.background)}/message)"
    run = []
    if scenario.duration is not None:
        run.append(duration(scenario.duration))
    if scenario.messages is not None:
        run.append(f"{scenario.messages:,} messages")
    if scenario.warmup:
        run.append(f"warm-up {duration(scenario.warmup)}")
    run.append(f"seed {scenario.seed}")
    return f"<Scenario {handlers}; {fleet}; {', '.join(run)}>"


def scenario_html(scenario: Scenario) -> str:
    """A `Scenario` as a small HTML table: one row per handler, then the fleet and the run."""
    workloads: Sequence[Workload] = scenario.workloads  # type: ignore[assignment]
    policy = scenario.policy()
    rows = [
        ("handler " + w.name, f"{arrivals_text(w)}; perform {perform_text(w)}; requests {_requests_text(w)}")
        for w in workloads
    ]
    rows.append(
        (
            "fleet",
            f"{scenario.loops} loops in {scenario.processes} process(es); worker_batch_size "
            f"{policy.batch_size}; coordinator_delay {duration(policy.coordinator_delay)}; "
            f"rtt {duration(scenario.rtt)}",
        )
    )
    run = [f"duration {duration(scenario.duration)}" if scenario.duration is not None else "until drained"]
    if scenario.messages is not None:
        run.append(f"{scenario.messages:,} messages")
    run += [f"warm-up {duration(scenario.warmup)}", f"seed {scenario.seed}"]
    run.append(f"trace {'on' if scenario.trace else 'off'}")
    rows.append(("run", "; ".join(run)))
    body = "".join(
        f"<tr><th style='text-align:left'>{html.escape(k)}</th><td style='text-align:left'>{html.escape(v)}</td></tr>"
        for k, v in rows
    )
    return f"<table><caption style='text-align:left'><b>Scenario</b></caption>{body}</table>"


def _requests_text(workload: Workload) -> str:
    requests: Any = workload.requests
    keys = getattr(requests, "keys", None)
    if keys is None:
        return "generated"
    made = getattr(requests, "make", None)
    return f"{type(keys).__name__}({getattr(keys, 'n', '?')} keys)" + (
        f" -> {getattr(made, '__qualname__', 'make')}" if made is not None else ""
    )


def html_table(frame: pd.DataFrame) -> str:
    """``frame`` as an HTML table without index (numbers as `readable` leaves them)."""
    return frame.to_html(index=False, float_format=lambda v: f"{v:,.4g}", na_rep="-")
