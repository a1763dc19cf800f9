"""Numbers for people: durations with their unit, and summary tables with units in their headers.

The simulator computes in seconds and messages per second; these helpers only
format. `readable` turns a summary, sweep or plan table into a copy to read
(latencies in ms, shares in %, units in the column names); the reprs of
`Result`, `Scenario` and `Plan` use the same rules.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

import pandas as pd

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


def html_table(frame: pd.DataFrame) -> str:
    """``frame`` as an HTML table without index (numbers as `readable` leaves them)."""
    return frame.to_html(index=False, float_format=lambda v: f"{v:,.4g}", na_rep="-")
