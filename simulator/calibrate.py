"""`calibrate`: fit the service-time, CPU and round-trip model from a real trace.

How `calibrate` fits each part:

* Service: each batch's duration is ``finished_at - started_at``; a
  least-squares line through duration against batch size gives
  ``per_batch`` and ``per_message`` (clipped at 0), and the noise is the
  empirical distribution of duration / fitted mean (`Fixed` when ``noise``
  is False or the durations fit exactly).
* CPU: when the trace has a ``cpu`` column (a real worker records it when
  tracing), the same line through each batch's CPU seconds gives the CPU
  part; without it ``perform`` is taken as all waiting.
* ``timer=True`` says that ``perform`` waits on an asyncio timer (a sleep): its
  waiting part is then the lower envelope of the waits (`TIMER_QUANTILE`),
  since an idle event loop rounds timers up to the millisecond, which the
  twin simulates, and the noise is `Fixed`.
* Round trip: the gaps between a loop's back-to-back batches of one thread
  (the next batch already waiting: one ack+fetch round trip), less the
  CPU its process spent meanwhile on this and its other loops (their
  ``perform`` CPU from the ``cpu`` column, the library's from ``overhead``),
  which the twin simulates itself: their median is the round trip, `Fixed`.
  Their long tail is the machine's contention (other processes on the
  cores, a busy storage server), which holds for a while and hits every
  loop together; the twin simulates its causes (the processes' CPU, the
  cores, pauses), and a spread drawn afresh for every round trip would
  add up on every message's path of several round trips: on 0.5 ms
  sleeps at 1200/s it put the p99 50-170% too high.
* The machine: a trace recorded by `simulator.lab.realrun` says how many cores
  the machine had and how much CPU the other programs on them used (the
  producer, a local storage server): per message performed, that is the
  scenario's ``background``. When it gives the storage server's own CPU,
  that is spread over the commands the run sent it (a cycle per batch, an
  acquire and a release per thread bound, `simulator.cpu.REGISTER_COMMANDS`
  per registration) as ``storage_cpu``: the twin then queues every command
  at the server, and its time per command is taken out of the round trip.
* Pauses: a ``perform`` that ended more than `PAUSE_MIN` later than it
  can (a timer: its envelope plus the timer's rounding; a CPU-bound one,
  `CPU_BOUND_WAIT`: its own CPU) was stopped by a pause of the machine.
  The late ends of all loops, merged where they overlap, give the pauses'
  rate and lengths (`simulator.cpu.Pauses`), and the pause is taken out of
  that ``perform``'s duration before its service is fitted.
* The machine's speed, given ``run``: the twin replays the trace's own run
  and the library's costs are scaled (`Overhead.scaled`, ``speed``) so that
  its worker processes use the CPU the real ones did (``attrs["process_cpu"]``,
  as `simulator.lab.realrun` records it), less ``perform``'s; then everything
  above is fitted again. ``overhead`` is measured once
  (`simulator.lab.measure.measure_overhead`), but a shared machine's speed
  moves within minutes (here a no-op drain ran at 200,000 and 355,000
  messages a second in consecutive runs): the speed during the run
  calibrated on is the best guess for the run predicted next. Only where
  the processes were busy (`SPEED_BUSY`) and ``perform``'s CPU is under
  `SPEED_PERFORM_SHARE` of theirs: the library's work then is most of it.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from .analysis import check_trace
from .checks import ScenarioError
from .cpu import LIBRARY, REGISTER_COMMANDS, Overhead, Pauses
from .noise import Empirical, Fixed, Noise
from .scenario import Scenario
from .service import Service
from .simulation import simulate

TIMER_QUANTILE = 0.02
"""With ``timer=True``, the quantile of a batch size's waits taken as the timer's own length:
an ``asyncio.sleep`` never ends early, and ends late by up to a millisecond when
the event loop is idle (`simulator.machine`), so its length is the lower envelope."""


PAUSE_MIN = 0.005
"""A ``perform`` that took this much longer than it can was stopped by a pause of the machine
(`simulator.cpu.Pauses`): the process was not running (the operating system, the hypervisor,
a garbage collection). Shorter delays are the event loop's own, which the twin simulates."""

CPU_BOUND_WAIT = 0.001
"""A ``perform`` whose median wait (duration less CPU) is under this is CPU-bound: the rest of
its duration is a pause. Pauses are not looked for in a ``perform`` that waits on I/O: its
waits vary by themselves."""

SPEED_PERFORM_SHARE = 0.25
"""`calibrate` follows the machine's speed (``run=``) only where ``perform``'s own CPU is
under this share of the worker processes' CPU. Above it the library's part is the small
difference of two large numbers: on CPU-bound performs here its factor came out
1.1-2.1 from one run to the next, and moved the predicted p50 by up to 45 points."""

SPEED_BUSY = 0.3
"""`calibrate` follows the machine's speed only where the worker processes were busy at least
this share of the run (their CPU seconds over their count times the span from the first
``perform`` to the last). An idle process pays to wake up, which the twin leaves out: in the
accuracy grid's sleeping runs here (processes 1-13% busy) the factor was that cost, 1.2-4.9,
not the machine's speed."""


@dataclass(frozen=True)
class Calibration:
    """What `calibrate` found.

    Attributes:
        service: A fitted `Service` per handler name (as stored in the trace).
        rtt: Estimated storage round trip (seconds), or NaN when the trace has no
            back-to-back batches to measure it from.
        rtt_noise: Unit-mean factor of each round trip; `calibrate` leaves it `Fixed`
            (the spread of the measured gaps is the machine's contention, see `calibrate`).
        fit: Per handler: ``per_batch``, ``per_message``, their CPU parts, ``cv``
            of the noise, ``batches`` used and ``rtt_samples``.
        overhead: The library's CPU per effect the fit assumed (and `apply` sets).
        pauses: The machine's pauses seen in the trace (`apply` sets them).
        cores: The cores of the machine the trace was recorded on, when the trace says
            (``attrs["machine"]``, as `simulator.lab.realrun` records it); None: unknown.
        background: CPU seconds the other programs on those cores used per message
            performed (the producer, a local storage server); `apply` sets both.
        storage_cpu: CPU seconds a local storage server spent per command, when the trace
            says (`Scenario.storage_cpu`; `apply` sets it); ``rtt`` is then the rest of a
            round trip. 0: not known.
        speed: The factor `calibrate` scaled ``overhead`` by to follow the machine's speed
            during the trace (``run=``); 1: not scaled.
    """

    service: Mapping[str, Service]
    rtt: float
    fit: pd.DataFrame
    overhead: Overhead = LIBRARY
    rtt_noise: Noise = dataclasses.field(default_factory=Fixed)
    pauses: Pauses = dataclasses.field(default_factory=Pauses)
    cores: int | None = None
    background: float = 0.0
    storage_cpu: float = 0.0
    speed: float = 1.0

    def apply(self, scenario: Scenario, handlers: Mapping[str, str] | None = None) -> Scenario:
        """``scenario`` with the fitted service of each handler, the round trip, the overhead, the
        pauses, and the machine's cores, background and storage server when the trace gave them.

        Args:
            scenario: The scenario to calibrate.
            handlers: Scenario handler name -> trace handler name, for handlers whose
                names differ (e.g. a simulated copy of a production handler).

        Raises:
            ScenarioError: a handler of the scenario has no fitted service (neither
                under its own name nor mapped), or a mapping names one that is not
                there: nothing is silently left uncalibrated.
        """
        handlers = dict(handlers or {})
        names = [w.name for w in scenario.workloads]  # type: ignore[union-attr]
        unknown = sorted(set(handlers) - set(names))
        if unknown:
            raise ScenarioError(f"Calibration.apply: the scenario has no handler {unknown}; it has {names}")
        workloads = []
        for workload in scenario.workloads:  # type: ignore[union-attr]
            source = handlers.get(workload.name, workload.name)
            if source not in self.service:
                raise ScenarioError(
                    f"Calibration.apply: no fitted service for handler {workload.name!r}"
                    + (f" (mapped to {source!r})" if source != workload.name else "")
                    + f"; the trace has {sorted(self.service)}: pass handlers={{scenario name: trace name}}"
                )
            workloads.append(dataclasses.replace(workload, service=self.service[source]))
        if math.isnan(self.rtt):
            rtt, noise = scenario.rtt, scenario.rtt_noise
        else:
            rtt, noise = self.rtt, self.rtt_noise
        return dataclasses.replace(
            scenario,
            workloads=tuple(workloads),
            rtt=rtt,
            rtt_noise=noise,
            overhead=self.overhead,
            pauses=self.pauses,
            cores=scenario.cores if self.cores is None else self.cores,
            background=scenario.background if self.cores is None else self.background,
            storage_cpu=self.storage_cpu or scenario.storage_cpu,
        )


def calibrate(
    trace: pd.DataFrame,
    noise: bool = True,
    timer: bool = False,
    overhead: Overhead = LIBRARY,
    run: Scenario | None = None,
) -> Calibration:
    """Fit ``perform`` time, its CPU part and the round trip, per handler, from a trace.

    How each part is fitted (service, CPU, timers, round trip, the machine,
    pauses, the machine's speed) is in the module's docstring.

    Args:
        trace: A trace (real, or simulated to check the fit).
        noise: Keep the measured noise of ``perform`` (`Empirical`) instead of `Fixed`.
        timer: ``perform`` waits by sleeping (``asyncio.sleep``), not on I/O.
        overhead: The library's CPU per effect on the machine the trace comes from.
        run: The trace's own run as a scenario (its handlers, loops, processes,
            settings, and requests at the trace's enqueue times): follow the
            machine's speed, as above. None: take ``overhead`` as it is.

    Raises:
        ValueError: the trace is empty, or ``run`` is given and the trace does not say its
            worker processes' CPU.
    """
    fitted = _calibrate(trace, noise, timer, overhead)
    factor = _speed(trace, fitted, run) if run is not None else None
    if factor is None:
        return fitted
    return dataclasses.replace(_calibrate(trace, noise, timer, overhead.scaled(factor)), speed=factor)


def _speed(trace: pd.DataFrame, fitted: Calibration, run: Scenario) -> float | None:
    """What the library's costs are times the fitted ones during ``trace``: its worker processes'
    CPU against the twin's, each less ``perform``'s; None where the trace cannot say."""
    if not trace.attrs.get("process_cpu"):
        raise ValueError(
            "calibrate(run=...): the trace does not say its worker processes' CPU seconds"
            ' (attrs["process_cpu"], as simulator.lab.realrun records it); leave run out'
        )
    used = float(sum(trace.attrs["process_cpu"]))
    performed = 0.0
    if "cpu" in trace.columns and bool(trace["cpu"].notna().all()):
        performed = float(trace.groupby(["worker", "batch"], observed=True)["cpu"].first().sum())
    span = float(trace["finished_at"].max() - trace["started_at"].min())
    processes = len(trace.attrs["process_cpu"])
    if used <= 0 or performed >= SPEED_PERFORM_SHARE * used or used < SPEED_BUSY * processes * span:
        return None
    twin = float(simulate(fitted.apply(run)).processes["cpu_busy"].sum()) - performed
    return (used - performed) / twin if twin > 0 else None


def _calibrate(trace: pd.DataFrame, noise: bool, timer: bool, overhead: Overhead) -> Calibration:
    check_trace(trace)
    if trace.empty:
        raise ValueError("cannot calibrate from an empty trace")
    has_cpu = "cpu" in trace.columns and bool(trace["cpu"].notna().all())
    aggregations = {
        "handler": ("handler", "first"),
        "thread": ("thread", "first"),
        "size": ("enqueued_at", "size"),
        "first_enqueued": ("enqueued_at", "min"),
        "started": ("started_at", "first"),
        "finished": ("finished_at", "first"),
    }
    if has_cpu:
        aggregations["cpu"] = ("cpu", "first")
    batches = trace.groupby(["worker", "batch"], sort=False, observed=True).agg(**aggregations).reset_index()
    batches["duration"] = batches["finished"] - batches["started"]
    services: dict[str, Service] = {}
    rows = []
    stopped: list[np.ndarray] = []  # [start, end) of each perform's part that a pause took
    for handler, part in batches.groupby("handler", sort=True):
        services[str(handler)], row, paused = _fit_handler(part, has_cpu, noise, timer, overhead)
        rows.append({"handler": handler, **row})
        if paused is not None:
            stopped.append(paused)
    trips, ends = _round_trips(batches, overhead)
    rtt = float(np.median(trips)) if len(trips) else math.nan
    machine = _machine(trace, batches)
    if len(trips):  # a round trip far above the usual one: the machine stopped meanwhile
        late = trips - rtt
        paused = late > PAUSE_MIN
        stopped.append(np.column_stack((ends[paused] - late[paused], ends[paused])))
    fit = pd.DataFrame(rows)
    fit["rtt_samples"] = len(trips)
    pauses = _pauses(stopped, float(batches["finished"].max() - batches["started"].min()))
    # the storage server's time per command is simulated at the server: the rest is the round trip
    rtt = max(rtt - machine.get("storage_cpu", 0.0), 0.0) if rtt > 0 else math.nan
    return Calibration(services, rtt, fit, overhead, pauses=pauses, **machine)


def _fit_handler(
    part: pd.DataFrame, has_cpu: bool, noise: bool, timer: bool, overhead: Overhead
) -> tuple[Service, dict[str, Any], np.ndarray | None]:
    """One handler's batches (``part``): its fitted `Service`, its row of `Calibration.fit`, and
    the ``[start, end)`` of the parts of its performs that a pause of the machine took (or None)."""
    size = part["size"].to_numpy(dtype=np.float64)
    duration = part["duration"].to_numpy()
    busy = np.minimum(part["cpu"].to_numpy(), duration) if has_cpu else np.zeros_like(duration)
    cpu_batch, cpu_message = _fit(size, busy)
    wait = duration - busy
    if timer:
        wait_batch, wait_message = _envelope(size, wait)
        late = wait - (wait_batch + wait_message * size + overhead.timer_resolution + overhead.timer_slack)
    elif has_cpu and np.median(wait) < CPU_BOUND_WAIT:
        late = wait
    else:
        late = np.zeros_like(wait)
    paused = late > PAUSE_MIN
    stopped = None
    if paused.any():
        finished = part["finished"].to_numpy()[paused]
        stopped = np.column_stack((finished - late[paused], finished))
        duration = np.where(paused, duration - late, duration)  # the machine's pause, not perform's time
    if timer:
        per_batch, per_message = cpu_batch + wait_batch, cpu_message + wait_message
    else:
        per_batch, per_message = _fit(size, duration)
    cpu_batch, cpu_message = min(cpu_batch, per_batch), min(cpu_message, per_message)
    mean = per_batch + per_message * size
    factors = np.divide(duration, mean, out=np.ones_like(duration), where=mean > 0)
    cv = float(np.std(factors) / np.mean(factors)) if len(factors) > 1 and np.mean(factors) > 0 else 0.0
    model = Empirical(factors) if noise and not timer and cv > 1e-9 else Fixed()
    service = Service(
        per_batch=per_batch,
        per_message=per_message,
        noise=model,
        cpu_per_batch=cpu_batch,
        cpu_per_message=cpu_message,
        timer=timer,
    )
    row = {
        "per_batch": per_batch,
        "per_message": per_message,
        "cpu_per_batch": cpu_batch,
        "cpu_per_message": cpu_message,
        "cv": cv,
        "batches": len(part),
    }
    return service, row, stopped


def _machine(trace: pd.DataFrame, batches: pd.DataFrame) -> dict[str, Any]:
    """The machine's cores, the other programs' CPU per message and the storage server's per
    command, from ``trace.attrs["machine"]``."""
    machine = trace.attrs.get("machine")
    if not machine:
        return {}
    storage = float(machine.get("storage_cpu", 0.0))
    found = {"cores": int(machine["cores"]), "background": float(machine["other_cpu"]) / len(trace)}
    if storage > 0:
        ordered = batches.sort_values(["worker", "started"], kind="stable")
        loop, thread = ordered["worker"].to_numpy(), ordered["thread"].to_numpy()
        binds = 1 + int(np.count_nonzero((loop[1:] != loop[:-1]) | (thread[1:] != thread[:-1])))
        commands = len(batches) + 2 * binds + REGISTER_COMMANDS * int(machine.get("registrations", 0))
        found["storage_cpu"] = storage / commands
    return found


def _pauses(stopped: list[np.ndarray], span: float) -> Pauses:
    """The machine's pauses from the stopped parts of performs and round trips: overlapping ones
    are one pause (several loops stopped by it), as long as the longest of them (where in a
    perform the pause fell is not known); their rate per second of running time."""
    intervals = np.concatenate(stopped) if stopped else np.empty((0, 2))
    if not len(intervals):
        return Pauses()
    intervals = intervals[np.argsort(intervals[:, 0], kind="stable")]
    lengths = []
    end, longest = intervals[0][1], 0.0
    for begin, finish in intervals:
        if begin > end:
            lengths.append(longest)
            end, longest = finish, 0.0
        end = max(end, finish)
        longest = max(longest, finish - begin)
    lengths.append(longest)
    running = span - sum(lengths)
    return Pauses(rate=len(lengths) / running, lengths=lengths) if running > 0 else Pauses()


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


def _envelope(size: np.ndarray, wait: np.ndarray) -> tuple[float, float]:
    """``a + b * size`` through the low quantile of the waits of each batch size (weighted by count)."""
    sizes, counts = np.unique(size, return_counts=True)
    lows = np.array([np.quantile(wait[size == s], TIMER_QUANTILE) for s in sizes])
    if len(sizes) < 2:
        return float(max(lows[0], 0.0)), 0.0
    weights = np.sqrt(counts)
    (a, b), *_ = np.linalg.lstsq(np.column_stack((weights, weights * sizes)), weights * lows, rcond=None)
    if b < 0:
        return float(max(np.average(lows, weights=counts), 0.0)), 0.0
    if a < 0:
        return 0.0, float(max((sizes * counts) @ lows / ((sizes * counts) @ sizes), 0.0))
    return float(a), float(b)


def _round_trips(batches: pd.DataFrame, overhead: Overhead) -> tuple[np.ndarray, np.ndarray]:
    """Round trips seen in the trace, and when each ended: gaps between a loop's consecutive batches
    of one thread when the next was already waiting, less the CPU the loop's process used during
    the gap (clipped at 0).

    The process's CPU is every batch's ``perform`` CPU (``cpu`` column, when there)
    and the library's CPU before it (ack+fetch, wake-ups, decode, the call),
    which is what the twin simulates: what is left is the round trip proper.
    """
    ordered = batches.sort_values(["worker", "started"])
    worker = ordered["worker"].to_numpy()
    same = (
        (worker[1:] == worker[:-1])
        & (ordered["thread"].to_numpy()[1:] == ordered["thread"].to_numpy()[:-1])
        & (ordered["handler"].to_numpy()[1:] == ordered["handler"].to_numpy()[:-1])
    )
    finished = ordered["finished"].to_numpy()[:-1]
    started = ordered["started"].to_numpy()[1:]
    keep = same & (ordered["first_enqueued"].to_numpy()[1:] <= finished)
    if not keep.any():
        return np.empty(0), np.empty(0)
    size = ordered["size"].to_numpy()
    library = overhead.cycle + 2 * overhead.idle + overhead.perform + overhead.trace
    library += (overhead.decode + overhead.perform_per_message + overhead.trace_per_message) * size
    cpu = ordered["cpu"].to_numpy() if "cpu" in ordered.columns else np.zeros(len(ordered))
    begins = ordered["started"].to_numpy() - library
    ends = ordered["started"].to_numpy() + cpu
    process = np.array([str(w).rsplit(":", 1)[0] for w in worker])
    used = np.zeros(int(keep.sum()))
    gap_process = process[1:][keep]
    lows, highs = finished[keep], started[keep]
    for name in np.unique(process):
        mine = process == name
        busy = _busy(begins[mine], ends[mine])
        here = gap_process == name
        used[here] = busy(highs[here]) - busy(lows[here])
    return np.maximum(highs - lows - used, 0.0), highs


def _busy(begins: np.ndarray, ends: np.ndarray) -> Any:
    """``t -> CPU seconds of the segments [begin, end) up to t`` (overlaps counted twice)."""
    begins, ends = np.sort(begins), np.sort(ends)
    begun, ended = np.concatenate(([0.0], np.cumsum(begins))), np.concatenate(([0.0], np.cumsum(ends)))

    def upto(times: np.ndarray) -> np.ndarray:
        started = np.searchsorted(begins, times, "right")
        finished = np.searchsorted(ends, times, "right")
        return np.asarray((started * times - begun[started]) - (finished * times - ended[finished]))

    return upto
