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
* The machine and the storage server, from what a traced worker measured of its
  run (``trace.attrs["meter"]``: `sharded_queue.meter`, which ``Worker(trace=True)``
  and ``sharded-queue worker --trace FILE`` record; `simulator.lab.realrun` too),
  each from an instrument of its own:

  - ``cores``: the cores the worker processes could run on (``sched_getaffinity``);
  - ``background``: the storage server's own CPU (``INFO cpu``; none when it is on
    another machine) per message performed: one more process, whose work grows with
    the messages;
  - ``unrelated``: the CPU the other programs on the machine used (``/proc/stat`` less
    the worker processes' own ``process_time`` and the storage server's), per second of
    the run: the producer and whatever else runs there. A meter that could not read the
    server's CPU (a cluster) leaves it all in ``background``, per message, as one process;
  - ``storage_cpu``: each script's time on the server (``server``, `ServerCosts`), at the
    level the server's ``INFO commandstats`` says its scripts took over the run
    (`server_level`);
  - ``rtt``: the median ``PING`` round trip by the scripts' path (a probe every
    250 ms), each less the thread CPU the process spent meanwhile (the other
    loops' work its reply waited for, which the twin simulates itself) and the
    time the thread waited for a core (``schedstat``: the cores the twin shares), over
    the probes whose thread slept meanwhile (else the gaps below); the
    server's time for a script is ``storage_cpu``, queued at the server;
  - ``overhead`` at the run's speed: the speed probe (a fixed unit of CPU work,
    every second) against the speed it took when ``overhead`` was measured
    (`Overhead.speed`): `Overhead.at_speed`.

  A trace without ``attrs["meter"]`` (an older one, or a simulated one) keeps
  what the scenario says of the machine, and the round trip comes from the gaps
  above.

No constant here was chosen because a table then passed: each parameter is measured,
and `docs/model.md` lists every parameter with its instrument. The machine's pauses
are not inferred from late performs (nothing could falsify that): `Pauses` stay what
the scenario says.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from .analysis import check_trace
from .checks import ScenarioError
from .cpu import LIBRARY, SERVER, Overhead, Pauses, ServerCosts, models_server
from .noise import Empirical, Fixed, Noise
from .scenario import Scenario
from .service import Service

TIMER_QUANTILE = 0.02
"""With ``timer=True``, the quantile of a batch size's waits taken as the timer's own length:
an ``asyncio.sleep`` never ends early, and ends late by up to a millisecond when
the event loop is idle (`simulator.machine`), so its length is the lower envelope."""


@dataclass(frozen=True)
class Calibration:
    """What `calibrate` found.

    Attributes:
        service: A fitted `Service` per handler name (as stored in the trace).
        rtt: The storage round trip (seconds): from the ``PING`` probe when the trace
            was metered, else from back-to-back batches; NaN when neither says.
        rtt_noise: Unit-mean factor of each round trip; `calibrate` leaves it `Fixed`:
            the probe's spread is the event loop's and the cores' contention, which
            the twin simulates from their causes.
        fit: Per handler: ``per_batch``, ``per_message``, their CPU parts, ``cv``
            of the noise, ``batches`` used and ``rtt_samples``.
        overhead: The library's CPU per effect (at the run's speed, when measured), which `apply` sets.
        pauses: The machine's pauses (`apply` sets them): none, as `calibrate` infers none.
        cores: The cores the traced worker processes ran on (``attrs["meter"]``); None: unknown.
        background: CPU seconds a local storage server used per message performed
            (all the other programs', when its CPU was not read); `apply` sets it with ``cores``.
        unrelated: Cores' worth of CPU the other programs kept busy over the run (the
            producer, anything else on the machine), `Scenario.unrelated`.
        storage_cpu: The storage server's time per script (`ServerCosts`, at the level its
            ``INFO commandstats`` measured over the run), `Scenario.storage_cpu`; 0: not known.
        speed: The run's speed probe (seconds of `sharded_queue.meter.speed_unit`), median;
            NaN: not measured. `overhead` is `Overhead.at_speed` of it.
    """

    service: Mapping[str, Service]
    rtt: float
    fit: pd.DataFrame
    overhead: Overhead = LIBRARY
    rtt_noise: Noise = dataclasses.field(default_factory=Fixed)
    pauses: Pauses = dataclasses.field(default_factory=Pauses)
    cores: int | None = None
    background: float = 0.0
    unrelated: float = 0.0
    storage_cpu: float | ServerCosts = 0.0
    speed: float = math.nan

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
            pauses=scenario.pauses if self.pauses.none else self.pauses,
            cores=scenario.cores if self.cores is None else self.cores,
            background=scenario.background if self.cores is None else self.background,
            unrelated=scenario.unrelated if self.cores is None else self.unrelated,
            storage_cpu=self.storage_cpu if models_server(self.storage_cpu) else scenario.storage_cpu,
        )


def calibrate(
    trace: pd.DataFrame,
    noise: bool = True,
    timer: bool = False,
    overhead: Overhead = LIBRARY,
    server: ServerCosts = SERVER,
) -> Calibration:
    """Fit ``perform`` time, its CPU part, the round trip and the machine, per handler, from a trace
    (how each part is measured: the module's docstring, and ``docs/model.md``).

    Args:
        trace: A trace (real, or simulated to check the fit); a real worker's carries what
            it measured of its run in ``attrs["meter"]`` (`sharded_queue.meter`).
        noise: Keep the measured noise of ``perform`` (`Empirical`) instead of `Fixed`.
        timer: ``perform`` waits by sleeping (``asyncio.sleep``), not on I/O.
        overhead: The library's CPU per effect, as measured (`simulator.lab.measure.measure_overhead`);
            taken to the run's speed when both speeds are known (`Overhead.at_speed`).
        server: Each script's time on the storage server, as measured
            (`simulator.lab.measure.measure_server`); taken to the run's server by what its
            ``INFO commandstats`` says the scripts took (`server_level`).

    Raises:
        ValueError: the trace is empty.
    """
    check_trace(trace)
    if trace.empty:
        raise ValueError("cannot calibrate from an empty trace")
    meter = list(trace.attrs.get("meter") or [])
    machine = _machine(meter, len(trace)) if meter else {}
    if "speed" in machine:
        overhead = overhead.at_speed(machine["speed"])
    batches = _batches(trace)
    storage = server_level(meter, trace, batches, server)
    if storage is not None:
        machine["storage_cpu"] = storage
    lag = float(np.median(np.concatenate([m["lag"] for m in meter]))) if meter and _samples(meter, "lag") else 0.0
    services: dict[str, Service] = {}
    rows = []
    for handler, part in batches.groupby("handler", sort=True):
        services[str(handler)], row = _fit_handler(part, "cpu" in batches.columns, noise, timer, overhead, lag)
        rows.append({"handler": handler, **row})
    fit = pd.DataFrame(rows)
    if "rtt" in machine:  # a PING: the server's time for it is nothing to speak of
        rtt = machine.pop("rtt")
        fit["rtt_samples"] = machine.pop("rtt_samples")
    else:  # gaps between batches: the server's part of them is queued at the server, so it comes off
        trips = _round_trips(batches, overhead)
        fit["rtt_samples"] = len(trips)
        rtt = float(np.median(trips)) - (storage.cycle if storage is not None else 0.0) if len(trips) else math.nan
    rtt = max(rtt, 0.0) if rtt > 0 else math.nan
    return Calibration(services, rtt, fit, overhead, **machine)


def _batches(trace: pd.DataFrame) -> pd.DataFrame:
    """One row per performed batch: handler, thread, size, first enqueue, start, end, duration (and CPU)."""
    aggregations = {
        "handler": ("handler", "first"),
        "thread": ("thread", "first"),
        "size": ("enqueued_at", "size"),
        "first_enqueued": ("enqueued_at", "min"),
        "started": ("started_at", "first"),
        "finished": ("finished_at", "first"),
    }
    if "cpu" in trace.columns and bool(trace["cpu"].notna().all()):
        aggregations["cpu"] = ("cpu", "first")
    batches = trace.groupby(["worker", "batch"], sort=False, observed=True).agg(**aggregations).reset_index()
    batches["duration"] = batches["finished"] - batches["started"]
    return batches


def _samples(meter: list[dict[str, Any]], name: str) -> bool:
    return any(m.get(name) for m in meter)


def _machine(meter: list[dict[str, Any]], messages: int) -> dict[str, Any]:
    """What the worker processes measured of the machine and the storage server (each an instrument:
    the module's docstring), as `Calibration` fields; ``rtt`` and ``rtt_samples`` besides."""
    found: dict[str, Any] = {"cores": min(int(m["cores"]) for m in meter)}
    used = sum(float(m.get("process_cpu") or 0.0) for m in meter)
    busy = [float(m["machine_busy"]) for m in meter if m.get("machine_busy") is not None]
    if busy and messages:  # every process read the same machine over about the same span: the widest
        others = max(max(busy) - used, 0.0)
        remote = any(m.get("storage_local") is False for m in meter)  # its CPU is not on these cores
        server = 0.0 if remote else max((float(m["storage"]["cpu"]) for m in meter if m.get("storage")), default=None)
        spans = [float(m["stopped"]) - float(m["started"]) for m in meter if m.get("started") is not None]
        if server is None or not spans:
            found["background"] = others / messages
        else:
            found["background"] = min(server, others) / messages
            found["unrelated"] = max(others - server, 0.0) / max(spans)
    if _samples(meter, "speed"):
        found["speed"] = float(np.median(np.concatenate([m["speed"] for m in meter if m.get("speed")])))
    if _samples(meter, "ping"):
        pings = np.concatenate([m["ping"] for m in meter if m.get("ping")])
        used = [m.get("ping_cpu") or [0.0] * len(m["ping"]) for m in meter if m.get("ping")]
        waited = [m.get("ping_wait") or [0.0] * len(m["ping"]) for m in meter if m.get("ping")]
        # A probe that ran or waited for a core all along (a busy event loop) hid the network
        # behind them: only the probes whose thread slept meanwhile see it.
        seen = pings - np.concatenate(used) - np.concatenate(waited)
        seen = seen[seen > 0]
        if seen.size:
            found["rtt"], found["rtt_samples"] = float(np.median(seen)), int(seen.size)
    return found


def unrelated_load(trace: pd.DataFrame) -> float | None:
    """Cores' worth of CPU that programs other than the workers and the storage server kept busy
    over a traced run (``attrs["meter"]``, as `calibrate` reads it); None when it did not say.
    A condition of the run, as its arrival times are: what a planner states of the machine."""
    meter = trace.attrs.get("meter") or []
    if not meter:
        return None
    found = _machine(meter, max(len(trace), 1))
    return found.get("unrelated")


SCRIPTS = ("evalsha", "evalsha_ro", "eval", "eval_ro", "fcall", "fcall_ro")
"""The commands that run a script. ``INFO commandstats`` counts the commands a script runs too,
and times them inside the script's own microseconds: the scripts' are the server's time."""


def scripts(meter: Sequence[dict[str, Any]]) -> tuple[int, float]:
    """Script calls and their microseconds on the storage server over the run (``INFO commandstats``,
    read by each worker process over its own lifetime: the longest reading); (0, 0) when no
    process could read it (a cluster, a server that refuses ``INFO``)."""
    readings = []
    for reading in meter:
        if reading.get("storage"):
            commands = reading["storage"]["commands"]
            chosen = [stats for name, stats in commands.items() if name in SCRIPTS]
            readings.append((sum(c["calls"] for c in chosen), float(sum(c["usec"] for c in chosen))))
    return max(readings, default=(0, 0.0))


def server_level(
    meter: Sequence[dict[str, Any]], trace: pd.DataFrame, batches: pd.DataFrame, server: ServerCosts
) -> ServerCosts | None:
    """``server`` taken to the run's storage server: scaled so that the scripts the run sent cost
    what the server's own clock says they took (``INFO commandstats``); None when it did not say.

    How many scripts of each kind: the workers counted their storage calls (``effects`` of
    their meters: polls, acquires, cycles, releases); each message was fetched once and acked
    once; a registration call is a distinct enqueue time within the workers' run (its requests
    and threads, from the trace). The server counted the rest (heartbeats, other clients'
    reads): charged as polls. A trace whose meters did not count effects takes a cycle per
    batch and an acquire and a release per thread bound, and charges the rest as polls.
    """
    calls, usec = scripts(meter)
    if not calls:
        return None
    start = min((float(m["started"]) for m in meter if m.get("started") is not None), default=-math.inf)
    stop = max((float(m["stopped"]) for m in meter if m.get("stopped") is not None), default=math.inf)
    inside = trace[(trace["enqueued_at"] >= start) & (trace["enqueued_at"] <= stop)]
    registered = inside.groupby("enqueued_at", sort=False).agg(
        messages=("thread", "size"), threads=("thread", "nunique")
    )
    counted = _effects(meter, batches)
    others = max(calls - len(registered) - sum(counted.values()), 0)
    predicted = (
        float(server.registration(registered["messages"], registered["threads"]).sum())
        + 2 * len(trace) * server.cycle_per_message
        + counted["Cycle"] * server.cycle
        + counted["Acquire"] * server.acquire
        + counted["End"] * server.release
        + (counted["Poll"] + others) * server.poll
    )
    return server.scaled(usec * 1e-6 / predicted) if predicted > 0 and usec > 0 else None


def _effects(meter: Sequence[dict[str, Any]], batches: pd.DataFrame) -> dict[str, int]:
    """The workers' storage calls by kind: as their meters counted them, else from the batches."""
    kinds = ("Poll", "Acquire", "Cycle", "End")
    if all(m.get("effects") for m in meter):
        return {kind: sum(int(m["effects"].get(kind, 0)) for m in meter) for kind in kinds}
    ordered = batches.sort_values(["worker", "started"], kind="stable")
    changed = (ordered["thread"] != ordered["thread"].shift()) | (ordered["worker"] != ordered["worker"].shift())
    binds = int(changed.sum())  # a loop's batches of one thread in a row: one bind
    return {"Poll": 0, "Acquire": binds, "Cycle": len(batches), "End": binds}


def _fit_handler(
    part: pd.DataFrame, has_cpu: bool, noise: bool, timer: bool, overhead: Overhead, lag: float
) -> tuple[Service, dict[str, Any]]:
    """One handler's batches (``part``): its fitted `Service` and its row of `Calibration.fit`.

    With ``timer``, ``perform`` sleeps: its waits are the sleep plus how late the event loop's
    timers fire. The run's lag probe measured that lateness (median ``lag``): the sleep is the
    waits less it. A trace without the probe (``lag`` 0) takes the waits' lower envelope
    (`TIMER_QUANTILE`): a sleep never ends early.
    """
    size = part["size"].to_numpy(dtype=np.float64)
    duration = part["duration"].to_numpy()
    busy = np.minimum(part["cpu"].to_numpy(), duration) if has_cpu else np.zeros_like(duration)
    cpu_batch, cpu_message = _fit(size, busy)
    wait = duration - busy
    if timer:
        wait_batch, wait_message = _fit(size, np.maximum(wait - lag, 0.0)) if lag else _envelope(size, wait)
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
    return service, row


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


def _round_trips(batches: pd.DataFrame, overhead: Overhead) -> np.ndarray:
    """Round trips seen in the trace: gaps between a loop's consecutive batches
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
        return np.empty(0)
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
    return np.maximum(highs - lows - used, 0.0)


def _busy(begins: np.ndarray, ends: np.ndarray) -> Any:
    """``t -> CPU seconds of the segments [begin, end) up to t`` (overlaps counted twice)."""
    begins, ends = np.sort(begins), np.sort(ends)
    begun, ended = np.concatenate(([0.0], np.cumsum(begins))), np.concatenate(([0.0], np.cumsum(ends)))

    def upto(times: np.ndarray) -> np.ndarray:
        started = np.searchsorted(begins, times, "right")
        finished = np.searchsorted(ends, times, "right")
        return np.asarray((started * times - begun[started]) - (finished * times - ended[finished]))

    return upto


def calibrations(
    trace: pd.DataFrame,
    draws: int,
    *,
    seed: int = 0,
    noise: bool = True,
    timer: bool = False,
    overhead: Overhead = LIBRARY,
    server: ServerCosts = SERVER,
) -> list[Calibration]:
    """``draws`` calibrations of ``trace`` as its uncertainty allows: the spread `predict` turns into intervals.

    Each draw resamples, with replacement, the trace's batches (the calibration's own
    uncertainty: what another run of the same length would have shown) and each probe
    of the run's meter (the machine's run-to-run noise: its speed, round trips and
    lag), then fits as `calibrate` does. The first draw is `calibrate` itself.
    """
    rng = np.random.default_rng(seed)
    found = [calibrate(trace, noise, timer, overhead, server)]
    keys = trace[["worker", "batch"]].drop_duplicates().to_numpy()
    for _ in range(draws - 1):
        chosen = keys[rng.integers(0, len(keys), len(keys))]
        picked = pd.DataFrame(chosen, columns=["worker", "batch"])
        # a batch drawn twice is two batches: number the copies apart
        picked["copy"] = picked.groupby(["worker", "batch"]).cumcount()
        resampled = picked.merge(trace, on=["worker", "batch"], how="left")
        resampled["batch"] = resampled["batch"] * (len(keys) + 1) + resampled["copy"]
        resampled = resampled.drop(columns="copy")
        resampled.attrs["meter"] = [_resample_meter(m, rng) for m in trace.attrs.get("meter") or []]
        found.append(calibrate(resampled, noise, timer, overhead, server))
    return found


def _resample_meter(meter: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
    """A meter reading whose probes (speed, round trips, lag) are resampled with replacement."""
    out = dict(meter)
    for name in ("speed", "ping", "lag"):
        samples = meter.get(name) or []
        if samples:
            out[name] = list(rng.choice(np.asarray(samples, dtype=np.float64), len(samples)))
    return out
