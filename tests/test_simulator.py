"""The simulator: checked against closed forms, exact timelines, and its own contracts.

The theory checks are statistical, so they are sized for a standard error
near 1% (asserted, so they cannot pass on too little data) and run their
seeds on every core. Everything is seeded, hence deterministic.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import math
import multiprocessing
import os
import random
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure

from sharded_queue import Handler, RequestRoute, Route, RouteError, Settings, SettingsError
from sharded_queue.trace import COLUMNS
from simulator import (
    Backlog,
    Deferred,
    Deterministic,
    Exponential,
    Generated,
    Keyed,
    LogNormal,
    OnOff,
    Pauses,
    Poisson,
    Recurring,
    Registered,
    Replay,
    RoundRobin,
    Scenario,
    ScenarioError,
    Service,
    Uniform,
    Workload,
    Zipf,
    analysis,
    calibrate,
    calibrations,
    compare,
    plan,
    plot_backlog,
    plot_latency,
    plot_sweep,
    plots,
    predict,
    readable,
    simulate,
    summary,
    sweep,
)
from simulator.calibrate import unrelated_load
from simulator.cpu import LIBRARY, NONE, SERVER, ServerCosts
from simulator.theory import (
    PollingRecursion,
    ReplayedChoice,
    WaitEstimate,
    bulk_service_wait,
    cpu_scenario,
    erlang_c,
    erlang_c_wait,
    fcfs_waits,
    mean_wait,
    mm1_sojourn,
    mm1_wait,
    mmc_scenario,
    polling_paths,
    polling_scenario,
    rebinding_mean_wait,
    rebinding_wait,
    setup_wait,
    uniform_choice,
)

# --- handlers ----------------------------------------------------------------------


class OneThread(Handler):
    """Everything on the default thread and order (the default route)."""

    name = "one-thread"


@dataclass(frozen=True)
class Note:
    user: int
    urgent: bool = False


class Notify(Handler):
    """Users spread over 4 threads, two declared orders."""

    name = "notify"
    orders = ("urgent", "normal")

    @classmethod
    async def route(cls, *requests: Note) -> list[RequestRoute]:
        return [RequestRoute(r, Route(thread=r.user % 4, order="urgent" if r.urgent else "normal")) for r in requests]


class Small(Handler):
    """A handler with its own batch size."""

    name = "small"
    batch_size = 3


def settings(**changes: Any) -> Settings:
    return Settings().copy(**changes)


IMMEDIATE = {"coordinator_delay": 0.0, "worker_empty_pause": 0.0}


# --- theory: M/M/c and M/M^(1,B)/1 ---------------------------------------------------------


THEORY_PLAN = {
    "cpu-0.5": [("cpu", 0.5, 4, 300_000, seed) for seed in range(2)],
    "mmc-0.5": [("mmc", 0.5, 2, 40_000, seed) for seed in range(2)],
    "mmc-0.8": [("mmc", 0.8, 2, 40_000, seed) for seed in range(2)],
    "bulk-4": [("bulk", 0.5, 4, 200_000, seed) for seed in range(2)],
    "bulk-16": [("bulk", 0.5, 16, 500_000, seed) for seed in range(2)],
}
"""Sized for a standard error well under 1% of the mean wait, so that 3% is a check of
at least 3 standard errors (asserted). Longest runs first."""


@pytest.fixture(scope="module")
def theory_runs() -> dict[str, list[WaitEstimate]]:
    """Every long theory run, once, on every core (independent seeded runs)."""
    jobs = [job for group in THEORY_PLAN.values() for job in group]
    workers = min(len(jobs), os.cpu_count() or 1)
    if workers == 1:
        estimates = [mean_wait(*job) for job in jobs]
    else:
        context = multiprocessing.get_context("spawn")
        with concurrent.futures.ProcessPoolExecutor(workers, mp_context=context) as pool:
            estimates = list(pool.map(mean_wait, *zip(*jobs, strict=True)))
    runs = iter(estimates)
    return {name: [next(runs) for _ in group] for name, group in THEORY_PLAN.items()}


@pytest.mark.slow
@pytest.mark.timeout(900)  # the theory runs take a minute on two idle cores, more on busy ones
@pytest.mark.parametrize("rho", [0.5, 0.8])
def test_mean_wait_matches_erlang_c(theory_runs: dict[str, Any], rho: float) -> None:
    """Batch 1, no delays, a thread per message: the fleet is M/M/c.

    `simulator.theory.mmc_scenario` explains the settings: in particular
    ``worker_empty_limit=1``, because a loop polling its drained thread again
    (the default 16 times, ``empty_pause`` apart) idles while messages wait
    elsewhere, which M/M/c does not allow.

    The raw mean of 80k waits has a standard error of about 3% at utilisation
    0.8 (a million messages would be needed for 1%). So the check uses a control
    variate (`WaitEstimate.controlled`): an M/M/1 queue of rate ``c * mu`` fed
    the simulated arrival and service times, whose mean wait is known and
    whose sampling noise is about 97-99% correlated with the simulated one. It
    is computed from the trace's inputs, not from the simulated waits, so a
    wrong wait stays wrong in the estimate. The raw mean must agree too,
    within its own (wider) error.
    """
    runs = theory_runs[f"mmc-{rho}"]
    expected = erlang_c_wait(rho * 2, 1.0, 2)
    estimate, error = WaitEstimate.controlled(runs)
    assert error < 0.01 * expected, "too noisy for a 3% check to mean anything"
    assert estimate == pytest.approx(expected, rel=0.03)
    raw, raw_error = WaitEstimate.pooled(runs)
    assert abs(raw - expected) < 4 * raw_error


@pytest.mark.slow
@pytest.mark.timeout(900)  # the theory runs take a minute on two idle cores, more on busy ones
@pytest.mark.parametrize(("batch", "rho"), [(4, 0.5), (16, 0.5)])
def test_mean_wait_matches_bulk_service_queue(theory_runs: dict[str, Any], batch: int, rho: float) -> None:
    """One thread, one loop, batches up to B, service independent of the batch size,
    an idle loop fetching the first arrival at once: Bailey's M/M^(1,B)/1
    (see `simulator.theory.bulk_scenario`). Plain means of 400k to a million waits."""
    mean, error = WaitEstimate.pooled(theory_runs[f"bulk-{batch}"])
    expected = bulk_service_wait(rho * batch, 1.0, batch)
    assert error < 0.01 * expected, "too noisy for a 3% check to mean anything"
    assert mean == pytest.approx(expected, rel=0.03)


@pytest.mark.slow
@pytest.mark.timeout(900)  # the theory runs take a minute on two idle cores, more on busy ones
def test_loops_sharing_a_cpu_bound_perform_are_a_single_server(theory_runs: dict[str, Any]) -> None:
    """Four loops of one process whose ``perform`` is all CPU (exponential, mean 1 s) at load 0.5:
    they share the process's one CPU, so the fleet is M/M/1, not M/M/4. Mean sojourn
    ``1 / (mu - lambda)`` = 2 s, mean wait 1 s, where M/M/4 would wait 0.004 s and sojourn 1.004 s."""
    mean, error = WaitEstimate.pooled(theory_runs["cpu-0.5"])
    expected = mm1_sojourn(0.5, 1.0) - 1.0
    assert error < 0.01 * expected, "too noisy for a 3% check to mean anything"
    assert mean == pytest.approx(expected, rel=0.03)
    assert mean > 100 * erlang_c_wait(0.5, 1.0, 4)


def test_loops_sharing_a_cpu_are_exactly_one_fcfs_server() -> None:
    """Path by path: with the simulated arrivals and the service times in the order they started,
    a single FCFS server gives the very same total wait as the four loops sharing one CPU."""
    trace = simulate(cpu_scenario(0.7, 4, 20_000, seed=3, warmup=0.0)).trace
    services = trace.sort_values("started_at")["cpu"].to_numpy()
    waits = fcfs_waits(np.sort(trace["enqueued_at"].to_numpy()), services, 1)
    simulated = (trace["started_at"] - trace["enqueued_at"]).to_numpy()
    assert simulated.sum() == pytest.approx(waits.sum(), rel=1e-9)
    assert (trace["finished_at"] - trace["started_at"]).to_numpy() == pytest.approx(trace["cpu"].to_numpy())


def _spinning_drain(cores: int | None, background: float = 0.0, **changes: Any) -> Any:
    """Four processes of one loop each drain 400 messages over 4 threads; ``perform`` computes 10 ms."""
    workload = Workload(
        Notify, Backlog(400), Service(per_batch=0.01, cpu_per_batch=0.01), Keyed(RoundRobin(400), make=Note)
    )
    scenario = Scenario(
        workload,
        loops=4,
        processes=4,
        settings=settings(worker_batch_size=1, **IMMEDIATE),
        overhead=NONE,
        cores=cores,
        background=background,
    ).replace(**changes)
    return simulate(scenario)


@pytest.mark.parametrize(
    ("cores", "background", "seconds"), [(None, 0.0, 1.0), (4, 0.0, 1.0), (2, 0.0, 2.0), (1, 0.0, 4.0), (2, 0.01, 4.0)]
)
def test_processes_share_the_machines_cores(cores: int | None, background: float, seconds: float) -> None:
    """Four CPU-bound processes drain 4 CPU seconds in 4 / min(4, cores) seconds; other programs
    taking 10 ms of the cores per message (``background``) double the work the cores do."""
    assert _spinning_drain(cores, background).end == pytest.approx(seconds, rel=0.01)


@pytest.mark.parametrize(("processes", "unrelated", "seconds"), [(4, 1.0, 4.0), (4, 1.5, 8.0), (1, 1.0, 4.0)])
def test_unrelated_programs_take_their_share_of_the_cores(processes: int, unrelated: float, seconds: float) -> None:
    """Programs that keep ``unrelated`` of 2 cores busy leave the rest to the worker processes:
    4 CPU seconds take 4 / (2 - unrelated) seconds when the processes could use both cores;
    one process alone loses nothing to one core's worth of them (they run on the other)."""
    result = _spinning_drain(2, loops=processes, processes=processes, unrelated=unrelated)
    assert result.end == pytest.approx(seconds, rel=0.02)


def test_the_unrelated_programs_grain_hardly_matters(monkeypatch: pytest.MonkeyPatch) -> None:
    """The share, not the grain, sets the pace: pieces every 0.5 ms or every 3 ms drain alike."""
    from simulator import machine

    ends = []
    for quantum in (0.0005, 0.003):
        monkeypatch.setattr(machine, "UNRELATED_QUANTUM", quantum)
        ends.append(_spinning_drain(2, unrelated=0.7).end)
    assert ends[0] == pytest.approx(ends[1], rel=0.02)


def _server_drain(loops: int, storage_cpu: float, rtt: float = 0.0) -> Any:
    """``loops`` loops drain 2,000 messages of a no-op handler over 4 threads, a message a batch."""
    workload = Workload(Notify, Backlog(2000), Service(), Keyed(RoundRobin(2000), make=Note))
    scenario = Scenario(
        workload,
        loops=loops,
        settings=settings(worker_batch_size=1, **IMMEDIATE),
        overhead=NONE,
        rtt=rtt,
        storage_cpu=storage_cpu,
    )
    return simulate(scenario)


def test_the_storage_server_runs_one_command_at_a_time() -> None:
    """With ``storage_cpu``, every command queues at one server: a drain of 2,000 one-message
    batches lasts as long as its commands (a cycle per batch, the polls, and per thread bound
    an acquire, the empty cycle that ends it and a release) take the server, one after the
    other, however many loops; while 4 loops that only wait a round trip drain 4 times as fast."""
    for loops in (1, 4):
        result = _server_drain(loops, 0.001)
        counts = result.loops[["performs", "polls", "binds"]].sum()
        commands = counts["performs"] + counts["polls"] + 3 * counts["binds"]
        assert result.end == pytest.approx(commands * 0.001, rel=0.01)
    assert _server_drain(4, 0.0, rtt=0.001).end == pytest.approx(result.end / 4, rel=0.05)


def test_each_script_takes_the_storage_server_its_own_time() -> None:
    """With `ServerCosts`, a drain by one loop lasts exactly as long as its scripts take the
    server: each poll, acquire, release and cycle its own time, and every message moved (fetched
    once, acked once) the cycle's time per message; and the server counts every call. A backlog
    is registered before the run: its registration takes nothing of it."""
    costs = ServerCosts(poll=1e-3, acquire=2e-3, release=3e-3, cycle=4e-3, cycle_per_message=5e-4)
    result = _server_drain(1, 0.0).scenario.replace(storage_cpu=costs)
    result = simulate(result)
    counts = result.loops[["polls", "acquires", "cycles", "releases"]].sum()
    seconds = (
        counts["polls"] * costs.poll
        + counts["acquires"] * costs.acquire
        + counts["releases"] * costs.release
        + counts["cycles"] * costs.cycle
        + 2 * 2000 * costs.cycle_per_message
    )
    assert counts["cycles"] >= 2000 and counts["acquires"] >= 4
    assert result.storage_utilisation * result.end == pytest.approx(seconds)
    assert result.end == pytest.approx(seconds, rel=0.01)
    assert result.storage_calls == counts.sum()  # the backlog was registered before the run
    costly = simulate(result.scenario.replace(storage_cpu=dataclasses.replace(costs, register_per_message=1.0)))
    assert costly.end == pytest.approx(result.end)  # ...so its 2,000 requests cost the run nothing


def test_a_registration_takes_the_server_by_its_threads_and_requests() -> None:
    """Requests with the same enqueue time are one registration call: three requests on two
    threads at 0.5 s and one at 1 s cost ``register`` twice, ``register_per_thread`` three
    times and ``register_per_message`` four times."""
    costs = ServerCosts(register=1e-4, register_per_thread=1e-3, register_per_message=1e-2)
    result = simulate(replay([0.5, 0.5, 0.5, 1.0], ["a", "a", "b", "c"], storage_cpu=costs))
    assert len(result.trace) == 4
    registrations = 2 * costs.register + 3 * costs.register_per_thread + 4 * costs.register_per_message
    assert result.storage_utilisation * result.end == pytest.approx(registrations)


def test_registrations_keep_the_storage_server_busy() -> None:
    """Each registration takes `REGISTER_COMMANDS` commands of the server: at 400 registrations
    a second and 1 ms a command, they take 80% of it and the loop's fetches wait behind them."""
    from simulator.cpu import REGISTER_COMMANDS

    assert REGISTER_COMMANDS == 2

    def sojourn(storage_cpu: float) -> float:
        scenario = Scenario(
            Workload(OneThread, Poisson(400), Service()),
            settings=settings(worker_batch_size=1, **IMMEDIATE),
            overhead=NONE,
            rtt=0.0001,
            storage_cpu=storage_cpu,
            duration=20,
            warmup=2,
            seed=4,
        )
        trace = simulate(scenario).trace
        return float((trace["finished_at"] - trace["enqueued_at"]).mean())

    light, heavy = sojourn(0.0001), sojourn(0.001)
    assert light < 0.001 < 0.003 < heavy


def test_processes_on_one_core_are_exactly_one_fcfs_server() -> None:
    """Path by path: four processes of one loop each, their ``perform`` all CPU, on one core give
    the very same total wait as a single FCFS server fed the simulated arrivals and services."""
    scenario = dataclasses.replace(cpu_scenario(0.7, 4, 20_000, seed=3, warmup=0.0), processes=4, cores=1)
    trace = simulate(scenario).trace
    services = trace.sort_values("started_at")["cpu"].to_numpy()
    waits = fcfs_waits(np.sort(trace["enqueued_at"].to_numpy()), services, 1)
    simulated = (trace["started_at"] - trace["enqueued_at"]).to_numpy()
    assert simulated.sum() == pytest.approx(waits.sum(), rel=1e-9)
    separate = simulate(dataclasses.replace(scenario, cores=None)).trace  # a core each: far less waiting
    assert (separate["started_at"] - separate["enqueued_at"]).sum() < simulated.sum() / 2


def test_a_perform_resumes_after_the_cpu_work_queued_before_it() -> None:
    """Two loops of one process; ``perform`` computes 10 ms, then waits 1 ms. The first loop's
    wait ends while the other loop computes: its coroutine resumes (and its perform ends) only
    when the event loop is free again, as in asyncio, never in the middle of another's CPU."""
    scenario = Scenario(
        Workload(
            Notify,
            Backlog(40),
            Service(per_batch=0.011, cpu_per_batch=0.010),
            Keyed(RoundRobin(40), make=lambda k: Note(user=k)),
        ),
        loops=2,
        settings=settings(worker_batch_size=1, **IMMEDIATE),
        overhead=NONE,
    )
    trace = simulate(scenario).trace
    computing = trace.assign(until=trace["started_at"] + trace["cpu"])
    for row in trace.itertuples():
        others = computing[computing["worker"] != row.worker]
        assert not ((others["started_at"] < row.finished_at) & (row.finished_at < others["until"])).any()
    assert (trace["finished_at"] - trace["started_at"]).max() == pytest.approx(0.020)  # waited for the other's 10 ms


def test_pauses_stretch_a_cpu_bound_drain() -> None:
    """A machine that pauses ``rate`` times per running second for ``L`` seconds runs a CPU-bound
    drain of ``T`` CPU seconds in ``T * (1 + rate * L)``; a pause inside a perform lengthens it."""
    work, rate, length = 100.0, 2.0, 0.05
    pauses = Pauses(rate=rate, lengths=[length])
    result = simulate(
        Scenario(
            Workload(OneThread, Backlog(10_000), Service(per_batch=0.01, cpu_per_batch=0.01)),
            settings=settings(worker_batch_size=1),
            overhead=NONE,
            pauses=pauses,
        )
    )
    assert result.end == pytest.approx(work * (1 + rate * length), rel=0.03)
    durations = (result.trace["finished_at"] - result.trace["started_at"]).to_numpy()
    paused = (durations - 0.01) / length  # how many pauses each perform took
    assert paused == pytest.approx(np.round(paused), abs=1e-6) and paused.max() >= 1


@pytest.mark.parametrize("rho", [0.5, 0.9])
def test_fleet_is_exactly_a_work_conserving_mmc(rho: float) -> None:
    """Path by path, not just on average: with the simulated arrival times and the
    service times in the order services started, a c-server FCFS queue has the
    same number in system at every instant, hence the same total wait. Any idle
    loop while a message is visible (lost wake-up, stale index, a loop holding an
    empty thread) would make the simulated total larger."""
    result = simulate(mmc_scenario(rho, 3, 20_000, seed=7, warmup=0.0))
    trace = result.trace
    by_start = trace.sort_values("started_at")
    services = (by_start["finished_at"] - by_start["started_at"]).to_numpy()
    waits = fcfs_waits(np.sort(trace["enqueued_at"].to_numpy()), services, 3)
    simulated = (trace["started_at"] - trace["enqueued_at"]).to_numpy()
    assert simulated.sum() == pytest.approx(waits.sum(), rel=1e-9)


def bulk_wait_numerically(arrival: float, service: float, batch: int, states: int = 800) -> float:
    """Mean wait of M/M^(1,B)/1 from its balance equations, solved numerically (truncated).

    States: 0 = idle, 1 + n = busy with n waiting. Arrivals add one waiting (or
    start a batch of one when idle); a completion takes min(n, B) or goes idle.
    """
    size = states + 1
    generator = np.zeros((size, size))
    generator[0, 1] = arrival
    for n in range(states):
        if n + 1 < states:
            generator[1 + n, 2 + n] = arrival
        generator[1 + n, 0 if n == 0 else 1 + max(n - batch, 0)] += service
    np.fill_diagonal(generator, -generator.sum(axis=1))
    system = generator.T.copy()
    system[-1] = 1.0  # replace one (redundant) balance equation by the normalisation
    p = np.linalg.solve(system, np.concatenate((np.zeros(states), [1.0])))
    return float(np.arange(states) @ p[1:]) / arrival


def test_closed_forms() -> None:
    """The formulas themselves, on textbook values and on each other's special cases."""
    assert erlang_c(2, 1.0) == pytest.approx(1 / 3)
    assert erlang_c_wait(0.8, 1.0, 1) == pytest.approx(mm1_wait(0.8, 1.0))
    assert bulk_service_wait(0.8, 1.0, 1) == pytest.approx(mm1_wait(0.8, 1.0))
    assert bulk_service_wait(3.2, 1.0, 4) > bulk_service_wait(3.2, 1.0, 5)  # more room per batch, less wait
    assert bulk_service_wait(3.2, 1.0, 4) == pytest.approx(bulk_wait_numerically(3.2, 1.0, 4), rel=1e-5)
    with pytest.raises(ValueError, match="lambda < B"):
        bulk_service_wait(4.0, 1.0, 4)


# --- theory: one loop binding and releasing threads (a polling system with switchovers) ---------


REBINDING = (0.4, 0.2)
"""Arrival rate and round trip (``perform`` exponential, mean 1 s) of the one-thread checks:
a switch costs 0.6 s against a 1.2 s cycle and perform, so the switchovers are 37% of the wait."""


def rebinding_mutants(arrival_rate: float, rtt: float) -> dict[str, float]:
    """`rebinding_wait` with a wrong switchover: what a check must tell apart from the twin."""
    service = (rtt + 1.0, rtt * rtt + 2 * rtt + 2.0)
    return {
        "Welch, no close-down": setup_wait(arrival_rate, service, 0.0, 0.0, 3.5 * rtt) + rtt / 2,
        "a round trip fewer per switch": setup_wait(arrival_rate, service, rtt, rtt, 2.5 * rtt) + rtt / 2,
        "a round trip more per switch": setup_wait(arrival_rate, service, 3 * rtt, 3 * rtt, 3.5 * rtt) + rtt / 2,
    }


def test_polling_setup_wait_has_welchs_and_the_textbooks_special_cases() -> None:
    """Without close-down, `setup_wait` is Welch's M/G/1 with exceptional first service
    (a deterministic setup ``D``); without setups it is Pollaczek-Khinchine (here M/M/1)."""
    rate, setup = 0.5, 0.3
    welch = (2 * setup + rate * setup**2) / (2 * (1 + rate * setup))
    assert setup_wait(rate, (1.0, 2.0), 0.0, 0.0, setup) == pytest.approx(mm1_wait(rate, 1.0) + welch)
    assert setup_wait(rate, (1.0, 2.0), 0.0, 0.0, 0.0) == pytest.approx(mm1_wait(rate, 1.0))
    assert rebinding_wait(rate, 0.0) == pytest.approx(mm1_wait(rate, 1.0))  # no round trip, no switchover
    with pytest.raises(ValueError, match="lambda E"):
        rebinding_wait(0.9, 0.2)  # 0.9 * (1 + 0.2) >= 1: no steady state


def test_polling_recursion_matches_the_rebinding_closed_form() -> None:
    """The derivation of `rebinding_wait`, checked without the twin: `PollingRecursion` (one
    thread, batch 1) fed 150k Poisson arrivals and exponential performs. The control variate
    is the FIFO M/G/1 queue with service ``rtt + S`` on the same arrivals and performs (mean
    by Pollaczek-Khinchine): it takes away the sampling noise, none of the switchovers. The
    switchovers one round trip shorter or longer, or Welch's setup without the close-down,
    are rejected by many standard errors."""
    rate, rtt = REBINDING
    rng = np.random.default_rng(11)
    arrivals = np.cumsum(rng.exponential(1 / rate, 150_000))
    performs = rng.exponential(1.0, len(arrivals))
    draws = iter(performs.tolist())
    waits = PollingRecursion([arrivals], 1, rtt, lambda _: next(draws), uniform_choice(random.Random(0))).run()[0]
    kept = arrivals >= 200.0
    control = fcfs_waits(arrivals, performs + rtt, 1)[kept]
    service = (rtt + 1.0, rtt * rtt + 2 * rtt + 2.0)
    estimate = WaitEstimate(
        float(waits[kept].mean()),
        int(kept.sum()),
        tuple(float(p.mean()) for p in np.array_split(waits[kept], 20)),
        tuple(float(p.mean()) for p in np.array_split(control, 20)),
        setup_wait(rate, service, 0.0, 0.0, 0.0),
    )
    mean, error = WaitEstimate.controlled([estimate])
    expected = rebinding_wait(rate, rtt)
    assert error < 0.002 * expected, "too noisy to tell a round trip"
    assert abs(mean - expected) < 4 * error
    for name, wrong in rebinding_mutants(rate, rtt).items():
        assert abs(mean - wrong) > 10 * error, name


@pytest.mark.parametrize(
    ("rate", "threads", "batch", "rtt", "hold_limit", "coordinator_delay"),
    [
        (0.4, 1, 1, 0.2, 0, None),  # `rebinding_wait`'s loop
        (1.5, 2, 4, 0.05, 0, None),  # two threads: the choice is forced, visits alternate
        (2.0, 5, 4, 0.05, 2, 1.0),  # hold-limited visits; idle polls after 1 s
        (1.0, 3, 2, 0.1, 0, 0.0),  # coordinator_delay=0: an idle loop polls again at once
        (3.0, 4, 8, 0.02, 3, 1.0),
        (1.2, 20, 2, 0.01, 1, 0.5),  # more threads than a poll's 16 candidates
    ],
)
def test_polling_twin_equals_the_recursion_path_by_path(
    rate: float, threads: int, batch: int, rtt: float, hold_limit: int, coordinator_delay: float | None
) -> None:
    """One loop, several threads: fed the twin's arrivals, ``perform`` times and choices of
    thread (each checked to be one the rule allows: any visible thread but the one just
    left, among the 16 oldest-visible), `PollingRecursion` gives every message the twin's
    wait, to float rounding. A switchover a round trip off moves every wait after the
    first switch by that round trip (`test_polling_path_check_sees_a_switchover_a_round_trip_off`)."""
    delay = {} if coordinator_delay is None else {"coordinator_delay": coordinator_delay}
    result = simulate(polling_scenario(rate, threads, batch, 3_000, rtt, seed=1, hold_limit=hold_limit, **delay))
    arrivals, waits, performs, visits = polling_paths(result.trace, threads)
    durations = iter(performs)
    recursion = PollingRecursion(
        arrivals,
        batch,
        rtt,
        lambda _: next(durations),
        ReplayedChoice(visits),
        hold_limit=hold_limit,
        coordinator_delay=result.scenario.settings.coordinator_delay,
    )
    expected = recursion.run()
    assert next(durations, None) is None, "the recursion performed fewer batches than the twin"
    assert result.loops.iloc[0]["binds"] > 300  # many switchovers, idle periods among them
    for simulated, computed in zip(waits, expected, strict=True):
        assert simulated == pytest.approx(computed, abs=1e-6)


class ShortSwitch(PollingRecursion):
    """A release that costs no round trip: a switchover of two round trips instead of three."""

    def _release(self, thread: int) -> None:
        self.released[thread] = self.now


def test_polling_path_check_sees_a_switchover_a_round_trip_off() -> None:
    """The path-by-path check fails for a loop whose switchover is one round trip short."""
    result = simulate(polling_scenario(0.4, 1, 1, 2_000, 0.2, seed=1))
    arrivals, waits, performs, visits = polling_paths(result.trace, 1)
    durations = iter(performs)
    short = ShortSwitch(arrivals, 1, 0.2, lambda _: next(durations), ReplayedChoice(visits)).run()
    assert np.abs(waits[0] - short[0]).max() > 0.19


def test_polling_choices_are_uniform_among_the_other_visible_threads() -> None:
    """The rule behind the replayed choices: the twin binds any visible thread but the one
    just left with equal chances (`sharded_queue.core.order_candidates` shuffles). Over
    10k choices among 2 to 4 threads, the share of the oldest-visible and the mean rank
    by age are within 4 standard errors of uniform; always taking the oldest would be
    off by more than 50."""
    result = simulate(polling_scenario(2.0, 5, 4, 40_000, 0.05, seed=2, hold_limit=2))
    arrivals, _, performs, visits = polling_paths(result.trace, 5)
    durations, choices = iter(performs), ReplayedChoice(visits)
    PollingRecursion(arrivals, 4, 0.05, lambda _: next(durations), choices, hold_limit=2).run()
    ranks = np.array([rank for rank in choices.ranks if rank[1] > 1])
    assert len(ranks) > 5_000

    def deviations(rank: np.ndarray, among: np.ndarray) -> tuple[float, float]:
        """z-scores of the share of oldest picks and of the mean rank, against uniform choices."""
        oldest = ((rank == 0) - 1 / among).sum() / math.sqrt((1 / among * (1 - 1 / among)).sum())
        mean = (rank - (among - 1) / 2).sum() / math.sqrt(((among**2 - 1) / 12).sum())
        return float(oldest), float(mean)

    assert max(map(abs, deviations(ranks[:, 0], ranks[:, 1]))) < 4
    assert min(map(abs, deviations(np.zeros(len(ranks)), ranks[:, 1]))) > 50


@pytest.fixture(scope="module")
def rebinding_runs() -> list[WaitEstimate]:
    """Two seeded twin runs of `rebinding_wait`'s loop, 200k messages each, on two cores."""
    jobs = [(*REBINDING, 200_000, seed) for seed in range(2)]
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(min(2, os.cpu_count() or 1), mp_context=context) as pool:
        return list(pool.map(rebinding_mean_wait, *zip(*jobs, strict=True)))


@pytest.mark.slow
@pytest.mark.timeout(900)  # two runs of about 12 s each on an idle core
def test_polling_mean_wait_matches_the_rebinding_closed_form(rebinding_runs: list[WaitEstimate]) -> None:
    """One thread, one loop that releases it when empty and binds it again (3 round trips
    a switch, 3.5 from idle): the twin's mean wait is `rebinding_wait`'s, the M/G/1 with
    a close-down and setups, within 4 standard errors of a control-variate estimate
    (the FIFO M/G/1 on the same arrivals and performs). The raw mean agrees within its
    own error; every wrong switchover of `rebinding_mutants` is many errors away."""
    expected = rebinding_wait(*REBINDING)
    mean, error = WaitEstimate.controlled(rebinding_runs)
    assert error < 0.002 * expected, "too noisy to tell a round trip"
    assert abs(mean - expected) < 4 * error
    raw, raw_error = WaitEstimate.pooled(rebinding_runs)
    assert abs(raw - expected) < 4 * raw_error
    for name, wrong in rebinding_mutants(*REBINDING).items():
        assert abs(mean - wrong) > 10 * error, name


# --- deterministic timelines -------------------------------------------------------------


@pytest.mark.parametrize(("count", "batch", "rtt"), [(1000, 128, 0.002), (7, 3, 0.0), (128, 128, 0.01)])
def test_backlog_drains_in_the_computed_time(count: int, batch: int, rtt: float) -> None:
    """One loop, a backlog at t=0, fixed service ``a + b*n``: every batch's start is exact.

    Timeline: Poll (1 round trip), Acquire (1: the script also hides the thread in
    the index), then per batch a Cycle (1) and the perform; the last Cycle acks and
    finds the thread empty.
    """
    per_batch, per_message = 0.05, 0.001
    result = simulate(
        Scenario(
            Workload(OneThread, Backlog(count), Service(per_batch, per_message)),
            settings=settings(worker_batch_size=batch),
            rtt=rtt,
            overhead=NONE,
        )
    )
    sizes = [batch] * (count // batch) + ([count % batch] if count % batch else [])
    start = 2 * rtt
    expected = []
    for size in sizes:
        start += rtt  # the cycle that fetches this batch (and acks the previous one)
        expected.append((start, size))
        start += per_batch + per_message * size
    batches = result.trace.groupby("batch").agg(started=("started_at", "first"), size=("batch", "size"))
    assert list(batches["size"]) == [size for _, size in expected]
    assert batches["started"].to_numpy() == pytest.approx([s for s, _ in expected], abs=1e-12)
    assert result.end == pytest.approx(start, abs=1e-12)  # the run ends when the last batch is performed
    assert result.summary(()).loc[0, "count"] == count


def test_backlog_timeline_with_the_librarys_cpu() -> None:
    """The same drain with the library's CPU (`simulator.cpu.LIBRARY`): each effect first takes
    its CPU, and an effect that finds the process idle (after a round trip or a perform's
    wait) pays the wake-up too. Every batch's start is exact."""
    o, rtt, per_batch, per_message = LIBRARY, 0.002, 0.05, 0.001
    result = simulate(
        Scenario(
            Workload(OneThread, Backlog(300), Service(per_batch, per_message)),
            settings=settings(worker_batch_size=128),
            rtt=rtt,
        )
    )
    t = o.poll + o.idle + rtt  # poll: CPU, then one round trip
    t += o.acquire + o.idle + rtt  # acquire: one script (it hides the thread in the index too)
    t += o.begin + o.idle  # begin: after the round trip the process was idle
    idle = 0.0  # the first cycle follows begin in the same callback
    expected = []
    for size in (128, 128, 44):
        t += o.cycle + idle + rtt  # ack+fetch
        t += o.idle + o.perform + (o.decode + o.perform_per_message) * size  # the reply wakes the process
        expected.append(t)
        t += per_batch + per_message * size  # perform's waiting: no CPU
        idle = o.idle  # the next cycle wakes the process after that wait
    started = result.trace.groupby("batch")["started_at"].first().to_numpy()
    assert started == pytest.approx(expected, abs=1e-12)
    performs = 3 * (o.cycle + o.idle + o.perform) + 300 * (o.decode + o.perform_per_message)
    acks = 3 * o.idle + o.cycle  # the wake-ups after each perform's wait, and the last ack
    binding = o.poll + o.acquire + o.begin + 3 * o.idle
    wakes = o.wake  # the backlog is one registration: one wake-up message
    assert result.processes["cpu_busy"].iloc[0] == pytest.approx(performs + acks + binding + wakes, rel=1e-9)


class Named(Handler):
    """Request "x" goes to thread "x"."""

    name = "named"

    @classmethod
    async def route(cls, *requests: str) -> list[RequestRoute]:
        return [RequestRoute(r, Route(thread=r)) for r in requests]


def replay(times: list[float], threads: list[str], **changes: Any) -> Scenario:
    """Requests registered at ``times`` on ``threads``, one loop, perform 0.01 s."""
    from simulator import KeySequence

    return Scenario(
        Workload(Named, Replay(times, shift=False), Service(per_batch=0.01), Keyed(KeySequence(threads))),
        settings=settings(worker_empty_limit=3, worker_empty_pause=0.1, coordinator_delay=1.0),
        overhead=NONE,
    ).replace(**changes)


def test_empty_limit_keeps_a_quiet_thread_bound() -> None:
    """The real empty-limit/pause logic and wake-ups, on an exact timeline.

    One thread, messages at 0, 0.05 and 0.5; ``empty_limit=3``, ``empty_pause=0.1``.
    After its first message the loop polls the thread empty and pauses; the
    registration at 0.05 wakes it (it holds the thread) and it performs at
    once. Then empty polls at 0.06, 0.16 and 0.26: released at 0.26. Idle, the
    registration at 0.5 wakes it (the oldest idle loop) and it binds again.
    """
    result = simulate(replay([0.0, 0.05, 0.5], ["a", "a", "a"]))
    assert list(result.trace["started_at"]) == pytest.approx([0.0, 0.05, 0.5])
    loop = result.loops.iloc[0]
    assert loop["binds"] == 2
    assert loop["bound"] == pytest.approx(0.26 + 0.01)


def test_an_empty_thread_is_released_when_another_waits() -> None:
    """Thread "a" has a message at 0, "b" one at 0.05. The loop holding the drained
    "a" is woken by b's registration (it is the oldest idle loop), polls "a"
    empty again, finds "b" waiting and releases "a" at once, whatever the empty
    limit: "b" starts at 0.05."""
    result = simulate(replay([0.0, 0.05], ["a", "b"]))
    trace = result.trace.set_index("thread")
    assert trace.loc["a", "started_at"] == pytest.approx(0.0)
    assert trace.loc["b", "started_at"] == pytest.approx(0.05)
    assert result.loops.iloc[0]["binds"] == 2


def test_one_idle_loop_is_woken_per_registration() -> None:
    """Wake-ups name their thread: a worker process wakes the loop holding it, else, if it
    answers for the thread (`core.answering`), its oldest idle loop not woken yet. Round
    trip 0.1 s (a wake-up message arrives a round trip after its registration), coordinator
    delay 1 s, two idle loops; "a" is registered at 0.5 and "b" at 0.51. In one process
    both registrations wake the same (oldest) idle loop, which is polling again (armed,
    not woken) when "b" comes; it takes one thread, and, having seen the other waiting,
    wakes the other loop (`Worker._wake_idle`), which takes it two round trips later.
    With two processes, "a" and "b" are answered by different ones (process 1 and 0):
    each wakes its own idle loop and both threads start within a few round trips.
    Threads that one process answers for wake only its loops, and a loop wakes only
    loops of its own process: "a" and "c" wait for the other process's coordinator
    delay."""
    one = simulate(replay([0.5, 0.51], ["a", "b"], loops=2, rtt=0.1))
    two = simulate(replay([0.5, 0.51], ["a", "b"], loops=2, processes=2, rtt=0.1))
    same = simulate(replay([0.5, 0.51], ["a", "c"], loops=2, processes=2, rtt=0.1))
    one_waits = sorted(one.trace["started_at"] - one.trace["enqueued_at"])
    two_waits = sorted(two.trace["started_at"] - two.trace["enqueued_at"])
    same_waits = sorted(same.trace["started_at"] - same.trace["enqueued_at"])
    assert one_waits[0] == pytest.approx(0.395, abs=0.006)  # woken 0.6, poll -0.7, acquire -0.8, cycle -0.9
    assert one_waits[1] == pytest.approx(0.595, abs=0.006)  # woken 0.8, poll -0.9, acquire -1.0, cycle -1.1
    assert two_waits[1] < 0.6
    assert same_waits[1] > 0.7


def test_a_wake_up_leaves_the_storage_server_after_the_registration_it_announces() -> None:
    """Redis publishes a registration's wake-up once it has run the registration
    (`REGISTER_COMMANDS` commands), and the message then travels on to the workers. One
    idle loop, round trip 0.1 s; with the server busy 10 ms a command the loop is woken
    20 ms later, and its poll, acquire and cycle take 10 ms more each."""
    from simulator.cpu import REGISTER_COMMANDS

    def wait(result: Any) -> float:
        return float(result.trace["started_at"].iloc[0] - result.trace["enqueued_at"].iloc[0])

    plain = simulate(replay([0.5], ["a"], rtt=0.1))
    served = simulate(replay([0.5], ["a"], rtt=0.1, storage_cpu=0.01))
    assert wait(served) - wait(plain) == pytest.approx((REGISTER_COMMANDS + 3) * 0.01)


def test_idle_loops_with_zero_delays_wait_for_a_wake_up() -> None:
    """``coordinator_delay=0`` does not spin: idle loops sleep until the next registration,
    and start it at once (wait 0), with a bounded number of polls."""
    result = simulate(
        Scenario(
            Workload(OneThread, Deterministic(1.0), Service(per_batch=0.1)),
            loops=3,
            settings=settings(worker_empty_limit=1, **IMMEDIATE),
            messages=50,
            overhead=NONE,
        )
    )
    overall = result.summary(()).iloc[0]
    assert overall["count"] == 50
    assert overall["wait_max"] == 0.0
    assert result.loops["polls"].sum() <= 4 * 50


def test_orders_are_served_by_precedence_and_fifo_within_a_tube() -> None:
    """A backlog of mixed orders: per thread every urgent message before any normal one,
    and each tube strictly FIFO."""
    rng = np.random.default_rng(3)
    urgent = rng.random(400) < 0.3
    result = simulate(
        Scenario(
            Workload(
                Notify,
                Backlog(400),
                Service(per_batch=0.01, per_message=0.001),
                Keyed(RoundRobin(400), make=lambda k: Note(user=k, urgent=bool(urgent[k]))),
            ),
            loops=2,
            settings=settings(worker_batch_size=16),
        )
    )
    trace = result.trace
    assert set(trace["order"]) == {"urgent", "normal"}
    for _, part in trace.groupby("thread"):
        last_urgent = part.loc[part["order"] == "urgent", "started_at"].max()
        first_normal = part.loc[part["order"] == "normal", "started_at"].min()
        assert last_urgent < first_normal


def test_each_tube_is_fifo() -> None:
    """Within a tube, messages start in the order they were registered."""
    trace = simulate(zipf_scenario(duration=20)).trace
    for _, tube in trace.groupby(["thread", "order"]):
        assert tube["started_at"].is_monotonic_increasing  # the trace is in perform order
        assert tube["enqueued_at"].is_monotonic_increasing


def test_per_handler_batch_size_and_two_handlers() -> None:
    """Handler.batch_size overrides the setting, per handler; loops serve both handlers."""
    result = simulate(
        Scenario(
            [
                Workload(Small, Poisson(50), Service(per_batch=0.01)),
                Workload(OneThread, Poisson(50), Service(per_batch=0.01)),
            ],
            loops=2,
            settings=settings(worker_batch_size=10),
            duration=30,
        )
    )
    sizes = result.trace.groupby(["handler", "batch"]).size()
    assert sizes["small"].max() == 3
    assert sizes["one-thread"].max() > 3
    assert sizes["one-thread"].max() <= 10


def test_failures_go_through_retries_to_dead_letters() -> None:
    """Failing performs run the core's retry/backoff/bisection; every message is either
    performed once (traced) or dead-lettered, none lost."""
    result = simulate(
        Scenario(
            Workload(OneThread, Poisson(20), Service(per_batch=0.01, failure_rate=0.4)),
            settings=settings(worker_batch_size=8, retry_attempts=2, retry_backoff=0.01),
            messages=2000,
            seed=5,
        )
    )
    assert result.dead > 0
    assert result.messages + result.dead == result.arrived == 2000
    assert len(result.trace) == result.messages
    assert result.loops["failures"].sum() > 0


class Slow(Handler):
    """Everything on one thread; ``perform`` may run for 0.5 s at most."""

    name = "slow"
    timeout = 0.5

    async def perform(self, *requests: int) -> None: ...


def test_performs_past_the_timeout_fail_at_the_timeout() -> None:
    """As the worker cancels a ``perform`` at ``Handler.timeout`` (``QUEUE_PERFORM_TIMEOUT``),
    a simulated one longer than it fails then: retries, then dead letters. 3 requests, batch
    1, one attempt each, 2 s performs: three failures of 0.5 s each, back to back."""
    result = simulate(
        Scenario(
            Workload(Slow, Backlog(3), Service(per_batch=2.0)),
            settings=settings(worker_batch_size=1, retry_attempts=1),
            overhead=NONE,
        )
    )
    assert (result.dead, result.messages) == (3, 0)
    assert result.loops["failures"].sum() == 3
    assert result.loops["busy"].sum() == pytest.approx(1.5)
    quick = simulate(  # shorter than the timeout: performed
        Scenario(Workload(Slow, Backlog(3), Service(per_batch=0.4)), settings=settings(worker_batch_size=1))
    )
    assert (quick.dead, quick.messages) == (0, 3)


def test_deferred_requests_join_their_tube_when_due() -> None:
    """`Deferred` arrivals enter the tube at registration + delay, in due order: each starts
    no earlier than its due time, which the twin records as its ``enqueued_at``."""
    registered = [0.0, 0.1, 0.2, 0.25]
    fixed = simulate(
        Scenario(Workload(OneThread, Deferred(Replay(registered, shift=False), 1.0), Service(per_batch=0.01)))
    )
    assert sorted(fixed.trace["enqueued_at"]) == pytest.approx([1.0, 1.1, 1.2, 1.25])
    assert (fixed.trace["started_at"] >= fixed.trace["enqueued_at"]).all()
    spread = simulate(
        Scenario(
            Workload(OneThread, Deferred(Poisson(200), 2.0, Exponential()), Service(per_batch=0.001)),
            duration=30,
            seed=4,
        )
    )
    due = spread.trace.sort_values("batch")["enqueued_at"].to_numpy()
    assert (np.diff(due) >= 0).all()  # one thread: performed in due order
    assert (spread.trace["started_at"] >= spread.trace["enqueued_at"]).all()
    assert spread.summary(()).loc[0, "count"] == spread.messages > 4000  # about 200/s over 28 s


def test_recurring_requests_arrive_on_the_librarys_ticks() -> None:
    """`Recurring` arrivals are the ticks of `sharded_queue.core.Schedule`: a period's
    first tick one period in, a cron string's at each match (here every minute)."""
    every = simulate(Scenario(Workload(OneThread, Recurring(0.5), Service(per_batch=0.01)), duration=5.2))
    assert sorted(every.trace["enqueued_at"]) == pytest.approx([0.5 * k for k in range(1, 11)])
    cron = simulate(Scenario(Workload(OneThread, Recurring("* * * * *"), Service(per_batch=0.01)), duration=301))
    assert sorted(cron.trace["enqueued_at"]) == pytest.approx([60.0, 120.0, 180.0, 240.0, 300.0])
    with pytest.raises(ScenarioError, match="not a valid cron"):
        Recurring("every day")


# --- reproducibility, summaries, saturation --------------------------------------------------


def zipf_scenario(**changes: Any) -> Scenario:
    base = Scenario(
        Workload(
            Notify,
            Poisson(400),
            Service(per_batch=0.004, per_message=0.0005, noise=LogNormal(0.4)),
            Keyed(Zipf(1000, 1.1), make=lambda k: Note(user=k, urgent=k % 10 == 0)),
        ),
        loops=4,
        settings=settings(coordinator_delay=0.05),
        rtt=0.0005,
        duration=60,
        warmup=5,
        seed=11,
    )
    return base.replace(**changes)


def test_same_seed_same_trace_other_seed_other_trace() -> None:
    first = simulate(zipf_scenario()).trace
    again = simulate(zipf_scenario()).trace
    other = simulate(zipf_scenario(seed=12)).trace
    assert list(first.columns) == [*COLUMNS, "cpu"]
    pd.testing.assert_frame_equal(first, again)
    assert len(first) != len(other) or not first["enqueued_at"].equals(other["enqueued_at"])


def test_summary_without_trace_matches_the_trace_summary() -> None:
    """trace=False folds the run into histograms: same counts and means, percentiles within
    a histogram bin (0.4% to 0.8% wide)."""
    exact = simulate(zipf_scenario()).summary()
    folded = simulate(zipf_scenario(trace=False)).summary()
    assert list(exact.columns) == list(folded.columns)
    pd.testing.assert_frame_equal(
        exact[["handler", "thread", "order", "count", "batches"]],
        folded[["handler", "thread", "order", "count", "batches"]],
    )
    for column in ("throughput", "wait_mean", "sojourn_mean", "perform_share", "wait_max"):
        assert folded[column].to_numpy() == pytest.approx(exact[column].to_numpy(), rel=1e-9)
    for column in ("wait_p50", "wait_p90", "wait_p99", "sojourn_p50", "sojourn_p99"):
        assert folded[column].to_numpy() == pytest.approx(exact[column].to_numpy(), rel=0.008, abs=1e-6)


def test_summary_columns_and_utilisation() -> None:
    result = simulate(zipf_scenario())
    table = result.summary()
    assert list(table[["handler", "thread", "order"]].drop_duplicates().itertuples(index=False)) == list(
        table[["handler", "thread", "order"]].itertuples(index=False)
    )
    overall = result.summary(()).iloc[0]
    assert overall["count"] == table["count"].sum()
    assert "utilisation" not in table.columns  # one name, one meaning: the loops' own is Result.utilisation
    assert overall["perform_share"] == pytest.approx(table["perform_share"].sum())
    assert 0 < overall["perform_share"] < 1
    assert not overall["saturated"]
    busy = result.loops["busy"].sum() / (result.end * 4)
    assert result.utilisation == pytest.approx(busy)
    assert "<table" in result._repr_html_()


def test_reprs_show_units_and_the_numbers_read_first() -> None:
    """Result, Scenario and summary tables say what their numbers are: ms, msg/s, %."""
    scenario = zipf_scenario(duration=6, warmup=1)
    assert repr(scenario) == (
        "<Scenario notify: Poisson 400/s, perform 4 ms + 500 µs/msg (LogNormal cv 0.4); 4 loops in 1 process, "
        "worker_batch_size 128, coordinator_delay 50 ms, rtt 500 µs; 6 s, warm-up 1 s, seed 11>"
    )
    assert "<td style='text-align:left'>4 loops in 1 process(es)" in scenario._repr_html_()
    assert "rtt 500 µs, pauses 2/s of 20 ms; 6 s" in repr(scenario.replace(pauses=Pauses(2.0, [0.01, 0.03])))
    assert "rtt 500 µs, 2 cores (others 300 µs/message); 6 s" in repr(scenario.replace(cores=2, background=3e-4))
    assert "rtt 500 µs, storage 120 µs/command; 6 s" in repr(scenario.replace(storage_cpu=1.2e-4))
    result = simulate(scenario)
    overall = result.summary(()).iloc[0]
    p99 = f"{overall['sojourn_p99'] * 1000:.3g} ms"
    assert f"sojourn p50 {overall['sojourn_p50'] * 1000:.3g} ms, p99 {p99}; loops" in repr(result)
    assert f"throughput {overall['throughput']:,.0f}/s" in repr(result)
    page = result._repr_html_()
    assert "<th>sojourn_p99 (ms)</th>" in page and "<th>throughput (msg/s)</th>" in page
    table = readable(result.summary(()), ["count", "wait_p99", "perform_share", "throughput", "saturated"])
    assert list(table.columns) == ["count", "wait_p99 (ms)", "perform_share (%)", "throughput (msg/s)", "saturated"]
    assert table["wait_p99 (ms)"].iloc[0] == pytest.approx(overall["wait_p99"] * 1000, rel=1e-2)
    assert table["perform_share (%)"].iloc[0] == pytest.approx(overall["perform_share"] * 100, rel=1e-2)


def test_saturation_is_flagged() -> None:
    """Arrivals above capacity are simulated, and flagged instead of passed off as steady state."""
    fast = simulate(zipf_scenario(duration=30))
    slow = Scenario(
        Workload(OneThread, Poisson(300), Service(per_batch=0.01, per_message=0.004)),
        settings=settings(worker_batch_size=16),
        duration=30,
    )
    flooded = simulate(slow)
    assert not fast.saturated
    assert flooded.saturated
    row = flooded.summary().iloc[0]
    assert row["saturated"] and row["backlog"] > 1000
    assert row["throughput"] == pytest.approx(16 / (0.01 + 16 * 0.004), rel=0.02)  # full batches back to back


def test_backlog_over_time() -> None:
    result = simulate(zipf_scenario(duration=20))
    frame = result.backlog()
    assert {"time", "handler", "thread", "backlog"} <= set(frame.columns)
    assert frame["time"].is_monotonic_increasing
    assert (frame["backlog"] >= 0).all()
    from_trace = analysis.backlog(result.trace)
    assert (from_trace["backlog"] >= 0).all()


# --- bad input --------------------------------------------------------------------------------


class WrongCount(Handler):
    name = "wrong-count"

    @classmethod
    async def route(cls, *requests: Any) -> list[RequestRoute]:
        return [RequestRoute(requests[0], Route())]


class WrongType(Handler):
    name = "wrong-type"

    @classmethod
    async def route(cls, *requests: Any) -> list[Any]:
        return [Route() for _ in requests]


class Undeclared(Handler):
    name = "undeclared"
    orders = ("high", "low")

    @classmethod
    async def route(cls, *requests: Any) -> list[RequestRoute]:
        return [RequestRoute(r, Route(order="medium")) for r in requests]


class ZeroBatch(Handler):
    name = "zero-batch"
    batch_size = 0


@pytest.mark.parametrize(
    ("build", "error", "match"),
    [
        (lambda: Poisson(-1.0), ScenarioError, "Poisson rate"),
        (lambda: Service(per_batch=-0.1), ScenarioError, "per_batch"),
        (lambda: Scenario(Workload(OneThread, Poisson(1), Service()), loops=0, duration=1), ScenarioError, "loops"),
        (lambda: Scenario(Workload(OneThread, Poisson(1), Service()), duration=-5), ScenarioError, "duration"),
        (lambda: Scenario(Workload(OneThread, Poisson(1), Service())), ScenarioError, "duration or a message count"),
        (lambda: Scenario(Workload(OneThread, Poisson(1), Service()), duration=1, rtt=math.nan), ScenarioError, "rtt"),
        (lambda: Workload(ZeroBatch, Poisson(1), Service()), ScenarioError, "batch_size"),
        (lambda: settings(worker_batch_size=0), SettingsError, "worker_batch_size"),
        (lambda: Workload(int, Poisson(1), Service()), ScenarioError, "Handler subclass"),  # type: ignore[arg-type]
        (lambda: Zipf(0), ScenarioError, "Zipf n"),
        (lambda: Service(failure_rate=1.0), ScenarioError, "failure_rate"),
        (lambda: Pauses(rate=-1.0), ScenarioError, "Pauses rate"),
        (lambda: Pauses(rate=1.0, lengths=[]), ScenarioError, "Pauses lengths"),
        (
            lambda: Scenario(Workload(OneThread, Poisson(1), Service()), duration=1, pauses=0.1),
            ScenarioError,
            "a Pauses",
        ),
        (lambda: Scenario(Workload(OneThread, Poisson(1), Service()), duration=1, cores=0), ScenarioError, "cores"),
        (lambda: Scenario(Workload(OneThread, Poisson(1), Service()), duration=1, cores=1.5), ScenarioError, "cores"),
        (
            lambda: Scenario(Workload(OneThread, Poisson(1), Service()), duration=1, cores=1, background=-1e-3),
            ScenarioError,
            "background",
        ),
        (
            lambda: Scenario(Workload(OneThread, Poisson(1), Service()), duration=1, background=1e-3),
            ScenarioError,
            "set cores too",
        ),
        (
            lambda: Scenario(Workload(OneThread, Poisson(1), Service()), duration=1, storage_cpu=-1e-4),
            ScenarioError,
            "storage_cpu",
        ),
    ],
)
def test_impossible_values_fail_clearly(build: Any, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        build()


@pytest.mark.parametrize(
    ("handler", "error", "match"),
    [
        (WrongCount, RouteError, "1 routes for"),
        (WrongType, TypeError, "not RequestRoute"),
        (Undeclared, ScenarioError, "medium"),
    ],
)
def test_bad_route_fails_before_simulating(handler: type[Handler], error: type[Exception], match: str) -> None:
    scenario = Scenario(Workload(handler, Poisson(1), Service(per_batch=1.0), Keyed(Uniform(5))), duration=10**9)
    with pytest.raises(error, match=match):
        simulate(scenario)


def test_generated_requests_are_routed_one_by_one() -> None:
    """Generated requests skip the per-key cache: route() sees every request."""
    seen: list[int] = []

    class Counting(Handler):
        name = "counting"

        @classmethod
        async def route(cls, *requests: Note) -> list[RequestRoute]:
            seen.extend(r.user for r in requests)
            return [RequestRoute(r, Route(thread=r.user % 2)) for r in requests]

    result = simulate(
        Scenario(
            Workload(
                Counting,
                Poisson(100),
                Service(per_batch=0.001),
                Generated(lambda rng, n: [Note(int(u)) for u in rng.integers(0, 50, n)]),
            ),
            messages=300,
        )
    )
    assert len(seen) == 300 and result.messages == 300
    assert set(result.trace["thread"]) == {"0", "1"}


def test_awaiting_routes_run_on_an_event_loop() -> None:
    class Awaiting(Handler):
        name = "awaiting"

        @classmethod
        async def route(cls, *requests: int) -> list[RequestRoute]:
            import asyncio

            await asyncio.sleep(0.001)
            return [RequestRoute(r, Route(thread=r % 3)) for r in requests]

    result = simulate(Scenario(Workload(Awaiting, Poisson(10), Service(), Keyed(Uniform(9))), messages=20))
    assert set(result.trace["thread"]) <= {"0", "1", "2"}


# --- workloads -------------------------------------------------------------------------------


def test_arrival_processes_have_their_rates() -> None:
    rng = np.random.default_rng(0)
    for process, rate in [(Poisson(50), 50), (Deterministic(20, start=1), 20), (OnOff(100, on=1, off=3), 25)]:
        times = next(process.chunks(rng))
        assert np.all(np.diff(times) >= 0)
        assert len(times) / (times[-1] - times[0]) == pytest.approx(rate, rel=0.03)
        assert process.mean_rate() == pytest.approx(rate)
    bursty = next(OnOff(100, on=1, off=3).chunks(rng))
    assert np.all((bursty % 4) <= 1.0 + 1e-9)  # nothing during the off-periods
    random_periods = next(OnOff(100, on=1, off=3, random=True).chunks(rng))
    assert len(random_periods) / random_periods[-1] == pytest.approx(25, rel=0.15)
    replay = Replay([5.0, 3.0, 4.0])
    assert list(next(replay.chunks(rng))) == [0.0, 1.0, 2.0]


def test_registered_arrivals_come_in_calls() -> None:
    """A producer registering every 10 ms: every enqueue time is a call's, none moved back,
    none lost, at most 10 ms late; the twin sees one registration (one wake-up) per call."""
    rng = np.random.default_rng(0)
    arrivals = next(Poisson(1000).chunks(np.random.default_rng(0)))
    called = next(Registered(Poisson(1000), every=0.01).chunks(rng))
    assert len(called) == len(arrivals)
    assert np.allclose(called / 0.01, np.round(called / 0.01))
    assert ((called - arrivals >= 0) & (called - arrivals < 0.01 + 1e-12)).all()
    assert Registered(Poisson(1000), every=0.01).mean_rate() == 1000
    result = simulate(Scenario(Workload(OneThread, Registered(Poisson(1000), every=0.01), Service()), duration=2))
    assert result.trace["enqueued_at"].nunique() <= 201


def test_zipf_keys_are_skewed() -> None:
    keys = Zipf(100, 1.0).sample(np.random.default_rng(0), 0, 200_000)
    counts = np.bincount(keys, minlength=100) / 200_000
    assert counts == pytest.approx(Zipf(100, 1.0).probabilities(), abs=0.004)
    assert counts[0] > 10 * counts[50]


def test_service_noise_has_mean_one() -> None:
    rng = np.random.default_rng(1)
    for noise in (Exponential(), LogNormal(0.5)):
        factors = noise.sample(rng, 200_000)
        assert factors.mean() == pytest.approx(1.0, rel=0.01)
    assert LogNormal(0.5).sample(rng, 200_000).std() == pytest.approx(0.5, rel=0.03)


# --- analysis on any trace --------------------------------------------------------------------


def handmade_trace() -> pd.DataFrame:
    """Two batches of thread 0 and one of thread 1, with round numbers."""
    return pd.DataFrame(
        {
            "handler": ["h"] * 5,
            "thread": ["0", "0", "0", "1", "1"],
            "order": ["0"] * 5,
            "worker": ["w1", "w1", "w1", "w2", "w2"],
            "batch": [1, 1, 2, 1, 1],
            "enqueued_at": [0.0, 1.0, 2.0, 0.0, 2.0],
            "started_at": [2.0, 2.0, 4.0, 3.0, 3.0],
            "finished_at": [4.0, 4.0, 5.0, 5.0, 5.0],
        }
    )


def test_summary_of_a_handmade_trace() -> None:
    table = summary(handmade_trace(), percentiles=(50,))
    first = table.iloc[0]
    assert (first["count"], first["batches"], first["batch_mean"]) == (3, 2, 1.5)
    assert first["wait_mean"] == pytest.approx((2 + 1 + 2) / 3)
    assert first["wait_p50"] == 2.0
    assert first["sojourn_max"] == 4.0
    assert first["throughput"] == pytest.approx(3 / 5)
    assert first["perform_share"] == pytest.approx((2 + 1) / (2 * 5))
    overall = summary(handmade_trace(), ()).iloc[0]
    assert overall["count"] == 5 and overall["perform_share"] == pytest.approx((2 + 1 + 2) / 10)
    with pytest.raises(ValueError, match="missing column"):
        summary(handmade_trace().drop(columns=["batch"]))


def test_each_groups_throughput_is_over_its_own_window() -> None:
    """Thread "late" works from 10 s to 12 s, "early" from 0 to 2: each performed 2 messages
    in 2 seconds. Over the run's shared window (12 s) both would read 2/12 per second, their
    arrivals over it, whatever happened."""
    trace = (
        handmade_trace()
        .iloc[:4]
        .assign(
            thread=["early", "early", "late", "late"],
            batch=[1, 1, 2, 2],
            enqueued_at=[0.0, 1.0, 10.0, 11.0],
            started_at=[1.0, 1.0, 11.0, 11.0],
            finished_at=[2.0, 2.0, 12.0, 12.0],
        )
    )
    table = summary(trace, "thread").set_index("thread")
    assert table.loc["early", "throughput"] == pytest.approx(1.0)
    assert table.loc["late", "throughput"] == pytest.approx(1.0)
    assert summary(trace, ()).iloc[0]["throughput"] == pytest.approx(4 / 12)


def test_compare_gives_relative_errors() -> None:
    real = handmade_trace()
    sim = real.assign(started_at=real["started_at"] * 1.1, finished_at=real["finished_at"] * 1.1)
    table = compare(sim, real, by=(), metrics=("count", "wait_max"))
    errors = dict(zip(table["metric"], table["rel_error"], strict=True))
    assert errors["count"] == 0
    assert errors["wait_max"] == pytest.approx(3.3 / 3.0 - 1)


def test_calibrate_recovers_the_service_model() -> None:
    """Fitting a simulated trace gives back the service costs, the CPU part and the round trip
    it was made with (the per-message costs within 8%: the other loop's decoding, queued on
    the same process's CPU, lengthens performs a little; the round trip within 10%: the CPU
    the other loop used during a gap is subtracted as the trace shows it, the library's
    part of it approximately)."""
    scenario = Scenario(
        Workload(
            OneThread,
            Poisson(900),
            Service(0.004, 0.0002, noise=LogNormal(0.2), cpu_per_batch=0.001, cpu_per_message=0.00005),
        ),
        loops=2,
        settings=settings(worker_batch_size=64),
        rtt=0.001,
        duration=60,
    )
    fitted = calibrate(simulate(scenario).trace)
    service = fitted.service["one-thread"]
    assert service.per_batch == pytest.approx(0.004, rel=0.05)
    assert service.per_message == pytest.approx(0.0002, rel=0.08)
    assert service.cpu_per_batch == pytest.approx(0.001, rel=0.05)
    assert service.cpu_per_message == pytest.approx(0.00005, rel=0.08)
    assert fitted.rtt == pytest.approx(0.001, rel=0.1)
    again = fitted.apply(scenario)
    assert again.rtt == pytest.approx(fitted.rtt) and again.workloads[0].service is service  # type: ignore[index]
    assert again.overhead == LIBRARY


def test_calibration_maps_handler_names_or_refuses() -> None:
    """A calibration never silently leaves a handler uncalibrated: other names are mapped or refused."""
    trace = simulate(Scenario(Workload(OneThread, Poisson(50), Service(0.01)), duration=20)).trace
    fitted = calibrate(trace)
    other = Scenario(Workload(Small, Poisson(50), Service()), duration=5)
    with pytest.raises(ScenarioError, match="no fitted service for handler 'small'.*one-thread"):
        fitted.apply(other)
    with pytest.raises(ScenarioError, match="no handler"):
        fitted.apply(other, handlers={"nope": "one-thread"})
    mapped = fitted.apply(other, handlers={"small": "one-thread"})
    assert mapped.workloads[0].service is fitted.service["one-thread"]  # type: ignore[index]


def meter(**readings: Any) -> dict[str, Any]:
    """One worker process's meter reading (`sharded_queue.meter`), with what a test sets."""
    found: dict[str, Any] = {"pid": 1, "cores": 2, "loops": 4, "process_cpu": 0.0, "lag": [], "speed": [], "ping": []}
    found.update(readings)
    return found


def test_calibrate_takes_the_machine_from_the_meter() -> None:
    """A trace whose worker measured its run (``attrs["meter"]``) calibrates the scenario's cores and
    the other programs' CPU per message (the machine's busy CPU less the worker processes'); one
    that did not leaves the scenario's own."""
    trace = simulate(Scenario(Workload(OneThread, Poisson(50), Service(0.01)), duration=20)).trace
    target = Scenario(Workload(OneThread, Poisson(50), Service()), duration=5, cores=8)
    assert calibrate(trace).apply(target).cores == 8
    trace.attrs["meter"] = [meter(cores=2, process_cpu=0.5, machine_busy=0.5 + len(trace) * 3e-4)]
    fitted = calibrate(trace)
    assert fitted.cores == 2 and fitted.background == pytest.approx(3e-4) and fitted.storage_cpu == 0.0
    applied = fitted.apply(target)
    assert applied.cores == 2 and applied.background == pytest.approx(3e-4) and applied.storage_cpu == 0.0


def test_calibrate_splits_the_other_programs_by_what_drives_them() -> None:
    """The machine's busy CPU less the workers': a local storage server's own CPU (``INFO cpu``)
    grows with the messages (``background``, per message); the rest, the producer and unrelated
    programs, is cores' worth busy over the run (``unrelated``). A server on another machine is
    none of it."""
    trace = simulate(Scenario(Workload(OneThread, Poisson(50), Service(0.01)), duration=20)).trace
    busy = 0.5 + 0.2 + 1.5 * 10  # the workers, the server, unrelated programs at 1.5 cores for 10 s
    reading = meter(process_cpu=0.5, machine_busy=busy, started=100.0, stopped=110.0, storage_local=True)
    reading["storage"] = {"commands": {}, "cpu": 0.2}
    trace.attrs["meter"] = [reading]
    fitted = calibrate(trace)
    assert fitted.background == pytest.approx(0.2 / len(trace)) and fitted.unrelated == pytest.approx(1.5)
    assert unrelated_load(trace) == pytest.approx(1.5)  # the run's condition, for a prediction of it
    applied = fitted.apply(Scenario(Workload(OneThread, Poisson(50), Service()), duration=5))
    assert applied.cores == 2 and applied.unrelated == pytest.approx(1.5)
    reading["storage_local"] = False
    fitted = calibrate(trace)
    assert fitted.background == 0.0 and fitted.unrelated == pytest.approx(1.52)
    trace.attrs["meter"] = []
    assert unrelated_load(trace) is None


def test_calibrate_takes_the_storage_and_the_round_trip_from_their_instruments() -> None:
    """``INFO commandstats``' scripts (their microseconds: the server's time for everything they
    do) set the level of each script's measured time (`SERVER`): a run on a server twice as slow
    comes out at about twice as much. The ``PING`` probe, each less the process's CPU meanwhile,
    is the round trip, each less the process's CPU and its wait for a core meanwhile."""
    workload = Workload(Notify, Poisson(100), Service(0.002), Keyed(RoundRobin(8), make=Note))
    slow = SERVER.scaled(2)
    run = simulate(Scenario(workload, loops=2, duration=20, storage_cpu=slow).replace(rtt=0.001, worker_batch_size=4))
    trace = run.trace
    usec = run.storage_utilisation * run.end * 1e6
    commands = {"evalsha": {"calls": run.storage_calls, "usec": usec}, "publish": {"calls": 100, "usec": 10_000}}
    pings, used, waited = [0.0012, 0.0013, 0.0014, 0.003], [0.0001, 0.0001, 0.0001, 0.0018], [0.0001] * 4
    loops = run.loops
    effects = {"Poll": loops["polls"].sum(), "Acquire": loops["acquires"].sum(), "Cycle": loops["cycles"].sum()}
    effects["End"] = loops["releases"].sum()  # as the worker counts its storage calls
    storage = {"commands": commands, "cpu": 0.2}
    trace.attrs["meter"] = [meter(storage=storage, effects=effects, ping=pings, ping_cpu=used, ping_wait=waited)]
    fitted = calibrate(trace)
    assert isinstance(fitted.storage_cpu, ServerCosts)
    assert fitted.storage_cpu.cycle == pytest.approx(slow.cycle, rel=1e-3)  # the last batch was never acked
    assert fitted.storage_cpu.registration(1, 1) == pytest.approx(slow.registration(1, 1), rel=1e-3)
    assert fitted.rtt == pytest.approx(0.0011)  # the median of 1.0, 1.1, 1.2 and 1.1 ms
    assert fitted.fit["rtt_samples"].iloc[0] == len(pings)
    explained = [p - u for p, u in zip(pings, used, strict=True)]  # busy all along: the network unseen
    trace.attrs["meter"] = [meter(storage=storage, effects=effects, ping=pings, ping_cpu=used, ping_wait=explained)]
    gaps = calibrate(trace)
    assert gaps.fit["rtt_samples"].iloc[0] != len(pings) and gaps.rtt == pytest.approx(0.001, rel=0.3)
    del commands["evalsha"]  # the server ran no script the meter saw: not known
    assert calibrate(trace).storage_cpu == 0.0


def test_calibrate_takes_the_library_to_the_runs_speed() -> None:
    """The speed probe of the run against the speed ``overhead`` was measured at (`Overhead.speed`):
    a drain on a machine twice as slow gives back twice the costs and the slow drain's throughput.
    Without either speed the costs are kept."""

    def throughput(scenario: Scenario) -> float:
        return float(simulate(scenario).summary(by=())["throughput"].iloc[0])

    drain = Workload(Notify, Backlog(20_000), Service(), Keyed(RoundRobin(8), make=Note))
    run = Scenario(drain, loops=4, rtt=0.0002, settings=settings(worker_batch_size=64))
    measured = dataclasses.replace(LIBRARY, speed=0.001)
    slow = simulate(run.replace(overhead=measured.scaled(2)))
    trace = slow.trace
    trace.attrs["meter"] = [meter(speed=[0.0019, 0.002, 0.0021])]
    fitted = calibrate(trace, overhead=measured)
    assert fitted.speed == pytest.approx(0.002)
    assert fitted.overhead.cycle == pytest.approx(2 * LIBRARY.cycle)
    slow_throughput = float(slow.summary(by=())["throughput"].iloc[0])
    assert throughput(fitted.apply(run)) == pytest.approx(slow_throughput, rel=0.05)
    assert calibrate(trace, overhead=LIBRARY).overhead == LIBRARY  # the costs' own speed unknown: kept
    trace.attrs["meter"] = [meter()]
    assert calibrate(trace, overhead=measured).overhead == measured  # the run's speed unknown: kept


def test_calibrations_draw_what_the_trace_and_its_probes_leave_uncertain() -> None:
    """Draws resample the batches and the probes: the first is `calibrate` itself, the others vary
    around it, and a prediction over them brackets the trace's own metrics."""
    workload = Workload(Notify, Poisson(200), Service(0.002, noise=Exponential()), Keyed(RoundRobin(8), make=Note))
    scenario = Scenario(workload, loops=4, duration=10, rtt=0.0005)
    trace = simulate(scenario).trace
    trace.attrs["meter"] = [meter(ping=list(np.linspace(0.0004, 0.0008, 40)), lag=[0.0])]
    draws = calibrations(trace, 12, seed=3)
    assert draws[0].rtt == calibrate(trace).rtt
    per_batch = [draw.service["notify"].per_batch for draw in draws]
    assert (len(set(per_batch)) > 6 and min(per_batch) < per_batch[0] < max(per_batch)) or len(set(per_batch)) > 6
    assert len({draw.rtt for draw in draws}) > 3
    table = compare(predict(scenario.replace(seed=7), draws), trace, by=(), prediction=True)
    assert {"sim_low", "sim_high", "covered"} <= set(table.columns)
    assert (table["sim_low"] <= table["sim"]).all() and (table["sim"] <= table["sim_high"]).all()


# --- sweep and plots --------------------------------------------------------------------------


def test_sweep_gathers_one_row_per_point() -> None:
    frame = sweep(zipf_scenario(duration=10, warmup=1), {"loops": [1, 4], "worker_batch_size": [1, 32]}, progress=False)
    assert len(frame) == 4
    assert list(frame.columns[:2]) == ["loops", "worker_batch_size"]
    assert {"throughput", "wait_p99", "saturated", "utilisation", "wall"} <= set(frame.columns)
    by_handler = sweep(
        lambda rate: zipf_scenario(duration=5, warmup=1).replace(seed=rate),
        {"rate": [1, 2]},
        by="handler",
        progress=False,
    )
    assert len(by_handler) == 2
    with pytest.raises(ScenarioError, match="unknown"):
        sweep(zipf_scenario(), {"wrokers": [1]}, progress=False)


def test_sweep_keys_are_the_names_describe_uses_and_unknown_ones_are_listed() -> None:
    """One name per knob: describe() says worker_batch_size, as sweep and Settings do; an unknown
    key names the closest valid one and lists them all, for a Scenario and for a function."""
    scenario = zipf_scenario(duration=2, warmup=0)
    described = scenario.describe()
    assert "worker_batch_size" in described and "batch_size" not in described
    scenario.replace(**{name: described[name] for name in described if name != "arrival_rate"})  # all variable
    with pytest.raises(ScenarioError, match=r"'batch_size' \(did you mean 'worker_batch_size'\?\).*loops.*lease_ttl"):
        sweep(scenario, {"batch_size": [1, 16]}, progress=False)
    with pytest.raises(ScenarioError, match=r"'rat' \(did you mean 'rate'\?\); .*: rate$"):
        sweep(lambda rate: scenario, {"rat": [1]}, progress=False)


def test_summary_utilisation_is_now_perform_share() -> None:
    """The summary's per-group share of the loops' time is perform_share; a sweep's utilisation is
    the loops' own (Result.utilisation), all groups together; compare() still takes the old name."""
    scenario = zipf_scenario(duration=6, warmup=1)
    result = simulate(scenario)
    row = sweep(scenario, {"loops": [4]}, progress=False).iloc[0]
    assert row["utilisation"] == pytest.approx(result.utilisation)
    assert row["perform_share"] == pytest.approx(result.summary(()).iloc[0]["perform_share"])
    with pytest.warns(DeprecationWarning, match="now 'perform_share'"):
        table = compare(result.trace, result.trace, by=(), metrics=["utilisation"])
    assert list(table["metric"]) == ["perform_share"] and table["rel_error"].iloc[0] == 0


def test_compare_of_several_twin_paths_is_their_mean_with_an_interval() -> None:
    """The twin is a sample path: compare() of several seeds gives their mean, the 90% interval
    (Student's t) and the relative error of each end."""
    base = zipf_scenario(duration=6, warmup=1)
    real = simulate(base.replace(seed=50)).trace
    paths = [simulate(base.replace(seed=seed)).trace for seed in (1, 2, 3)]
    table = compare(paths, real, by="order", metrics=("sojourn_p99", "throughput")).set_index(["order", "metric"])
    for order in ("normal", "urgent"):
        singles = [compare(path, real, by="order", metrics=("sojourn_p99",)) for path in paths]
        values = [float(one[one["order"] == order]["sim"].iloc[0]) for one in singles]
        row = table.loc[(order, "sojourn_p99")]
        assert row["replications"] == 3 and row["sim"] == pytest.approx(np.mean(values))
        assert row["sim_high"] - row["sim"] == pytest.approx(2.920 * np.std(values, ddof=1) / math.sqrt(3))
        assert row["rel_error_low"] == pytest.approx((row["sim_low"] - row["real"]) / row["real"])
        assert row["rel_error_low"] < row["rel_error"] < row["rel_error_high"]


def test_keyed_without_make_fails_at_construction_naming_the_fix() -> None:
    """Without make= each key itself is the request: a route() that needs a Note fails clearly,
    before simulating, and a route() that takes the key as it is still works."""
    with pytest.raises(ScenarioError, match=r"Keyed without make=.*Notify.route\(\).*'user'.*make=Note\)"):
        Workload(Notify, Poisson(10), Service(), Keyed(Zipf(100)))
    assert Workload(Notify, Poisson(10), Service(), Keyed(Zipf(100), make=Note)).requests.make is Note
    Workload(Spread, Poisson(10), Service(), Keyed(Zipf(100)))  # ints are Spread's requests


def test_sweep_replications_give_means_and_intervals() -> None:
    """Each point runs with seeds seed, seed + 1, ...: the mean is theirs and the 90% interval
    brackets it; the runs spread over processes give the same numbers as runs here."""
    base = zipf_scenario(duration=6, warmup=1)
    frame = sweep(base, {"loops": [2, 4]}, replications=3, progress=False)
    assert list(frame["replications"]) == [3, 3]
    singles = [simulate(base.replace(loops=4, seed=base.seed + r)).summary(()).iloc[0] for r in range(3)]
    row = frame.set_index("loops").loc[4]
    assert row["sojourn_p99"] == pytest.approx(np.mean([s["sojourn_p99"] for s in singles]), rel=1e-9)
    assert row["sojourn_p99_low"] < row["sojourn_p99"] < row["sojourn_p99_high"]
    half = 2.920 * np.std([s["sojourn_p99"] for s in singles], ddof=1) / math.sqrt(3)
    assert row["sojourn_p99_high"] - row["sojourn_p99"] == pytest.approx(half, rel=1e-9)
    serial = sweep(base, {"loops": [2, 4]}, replications=3, progress=False, processes=1)
    pd.testing.assert_frame_equal(frame.drop(columns=["wall", "wall_low", "wall_high"]),
                                  serial.drop(columns=["wall", "wall_low", "wall_high"]))  # fmt: skip


def test_plan_is_the_cheapest_configuration_that_meets_the_goal() -> None:
    """Fewest loops, then fewest processes, among the points whose p99 interval is within the goal."""
    scenario = Scenario(
        Workload(Spread, Poisson(100), Service(0.02, 0.001, LogNormal(0.5)), Keyed(RoundRobin(8))),
        rtt=0.0005,
        duration=15,
        warmup=2,
        trace=False,
    )
    found = plan(scenario, rate=400, p99=0.2, over={"loops": [2, 4, 6, 8], "processes": [1, 2]}, progress=False)
    assert found.choice is not None and found.row is not None
    table = found.table
    chosen = table.index[table["meets"]][0]
    assert (table.loc[: chosen - 1, "meets"] == False).all()  # noqa: E712 - every cheaper point misses
    assert found.choice == {"loops": table.loc[chosen, "loops"], "processes": table.loc[chosen, "processes"]}
    assert found.row["sojourn_p99_high"] <= 0.2 and found.row["throughput"] == pytest.approx(400, rel=0.02)
    assert list(table["loops"]) == sorted(table["loops"])
    assert "Plan for 400/s" in repr(found)
    hopeless = plan(scenario, rate=400, p99=0.001, over={"loops": [2]}, progress=False)
    assert hopeless.choice is None and "no configuration" in repr(hopeless)


def test_workers_is_a_deprecated_name_of_loops() -> None:
    workload = Workload(OneThread, Poisson(1), Service())
    with pytest.warns(DeprecationWarning, match="'workers' is now 'loops'"):
        old = Scenario(workload, workers=3, duration=1)
    assert old.loops == 3
    with pytest.warns(DeprecationWarning, match="'workers' is now 'loops'"):
        assert old.replace(workers=2).loops == 2
    with pytest.raises(ScenarioError, match="use loops only"), pytest.warns(DeprecationWarning):
        Scenario(workload, loops=2, workers=3, duration=1)


def test_plots_return_figures() -> None:
    result = simulate(zipf_scenario(duration=10, warmup=1))
    frame = sweep(zipf_scenario(duration=5, warmup=1), {"loops": [1, 2]}, progress=False)
    for figure in (
        plot_sweep(frame, x="loops"),
        plot_backlog(result),
        plot_latency({"sim": result.trace, "again": result}, by="order"),
    ):
        assert isinstance(figure, Figure)
        assert figure.axes


def _legend_texts(figure: Figure) -> list[str]:
    assert not [ax for ax in figure.axes if ax.get_legend() is not None]  # no legend over the data
    return [text.get_text() for legend in figure.legends for text in legend.get_texts()]


def test_figures_have_units_titles_and_legends_off_the_data() -> None:
    """The rules for figures, checked on the drawn objects: units on the axes (ms for latencies),
    the caller's title, legends outside the axes, saturation and intervals said in the legend."""
    base = zipf_scenario(duration=5, warmup=1)
    frame = sweep(base, {"loops": [1, 4], "worker_batch_size": [1, 32]}, progress=False, replications=2)
    figure = plot_sweep(frame, x="loops", y=["throughput", "sojourn_p99"], hue="worker_batch_size",
                        title="the claim", goal={"sojourn_p99": 0.2})  # fmt: skip
    assert figure.get_suptitle() == "the claim"
    assert [ax.get_ylabel() for ax in figure.axes] == [
        "throughput (messages/s)",
        "sojourn p99 (ms)",
    ]
    texts = _legend_texts(figure)
    assert {"worker_batch_size 1", "worker_batch_size 32", "goal: 200 ms", "90% interval"} <= set(texts)
    assert any(text.startswith("saturated") for text in texts) == bool(frame["saturated"].any())
    p99 = figure.axes[1].get_lines()[0].get_ydata()
    assert max(p99) == pytest.approx(frame[frame["worker_batch_size"] == 1]["sojourn_p99"].max() * 1000)
    assert figure.axes[0].get_ylim()[0] == 0  # a rate's axis starts at 0

    many = simulate(zipf_scenario(duration=5, warmup=1).replace(loops=4))  # Zipf keys on 4 threads

    class Wide(Handler):
        name = "wide"

        @classmethod
        async def route(cls, *requests: int) -> list[RequestRoute]:
            return [RequestRoute(r, Route(thread=r % 32)) for r in requests]

    wide = Scenario(Workload(Wide, Poisson(400), Service(0.001), Keyed(RoundRobin(32))), loops=8, duration=2)
    latency = plot_latency(simulate(wide), by="thread", top=5)
    texts = _legend_texts(latency)
    assert len(texts) == 6 and texts[-1] == "27 other threads"
    assert latency.axes[0].get_xlabel() == "sojourn: enqueue to perform end (ms)"
    pair = plot_latency({"real": many, "sim": many.trace}, by="order")
    lines = {line.get_label(): line.get_color() for line in pair.axes[0].get_lines()}
    assert _legend_texts(pair) == ["real order normal", "sim order normal", "real order urgent", "sim order urgent"]
    for order in ("normal", "urgent"):  # one hue per order: the real run's dark shade, the twin's light one
        real, twin = np.array(lines[f"real order {order}"]), np.array(lines[f"sim order {order}"])
        assert tuple(real) in plots.colormaps["tab20"].colors and twin.sum() > real.sum()
    assert lines["real order normal"] != lines["real order urgent"]

    backlog = plot_backlog(simulate(wide), top=3)
    colours = {line.get_label(): line.get_color() for line in backlog.axes[0].get_lines()}
    assert colours.pop("29 other threads, summed") == plots.OTHERS
    assert len(colours) == 3 and plots.OTHERS not in colours.values()


def test_docs_example_runs(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """The example of the docs' simulator page runs, shortened."""
    import pathlib
    import re
    import sys
    import types

    text = (pathlib.Path(__file__).parent.parent / "docs" / "simulator.md").read_text()
    code = re.search(r"```python\n(.*?)```", text, re.S)
    assert code is not None
    source = code.group(1).replace("duration=30,", "duration=6,").replace("[2, 4, 8]", "[2, 8]")
    source = source.replace('"worker_batch_size": [1, 16, 64]})', '"worker_batch_size": [1, 64]}, progress=False)')
    monkeypatch.chdir(tmp_path)
    module = types.ModuleType("docs_example")  # dataclasses look their module up
    monkeypatch.setitem(sys.modules, module.__name__, module)
    exec(compile(source, "docs/simulator.md", "exec"), module.__dict__)
    assert (tmp_path / "sweep.png").stat().st_size > 0


class Spread(Handler):
    """Request ``r`` on thread ``r % 8``."""

    name = "spread"

    @classmethod
    async def route(cls, *requests: int) -> list[RequestRoute]:
        return [RequestRoute(r, Route(thread=r % 8)) for r in requests]


def test_a_registration_of_several_threads_wakes_one_idle_loop_per_thread() -> None:
    """As `core.wake_targets` does: a burst registered at once after a quiet spell starts every
    idle loop at once, not one loop now and the others a coordinator delay later."""
    scenario = Scenario(
        Workload(Spread, Backlog(400, at=0.5), Service(per_batch=0.005), Keyed(RoundRobin(8))),
        loops=8,
        settings=settings(coordinator_delay=5.0, worker_batch_size=10),
        rtt=0.0005,
    )
    first = simulate(scenario).trace.groupby("thread")["started_at"].min()
    assert len(first) == 8 and (first < 0.51).all(), first


def test_throughput_after_a_warm_up_counts_the_backlog_drained() -> None:
    """A saturated loop performs at its full rate after the warm-up too, even though it is
    still working on messages that arrived during the warm-up."""
    scenario = Scenario(
        Workload(OneThread, Poisson(200), Service(per_batch=0.01)),
        settings=settings(worker_batch_size=1),
        duration=20,
        warmup=5,
    )
    for kept in (True, False):
        row = simulate(scenario.replace(trace=kept)).summary(()).iloc[0]
        assert row["saturated"] and row["throughput"] == pytest.approx(100, rel=0.02), (kept, row["throughput"])


def test_idle_cost_is_what_busy_drains_save_per_round_trip() -> None:
    """`simulator.lab.measure.idle_cost`: the one-loop costs, less the busy drains' CPU, per round trip."""
    from simulator.lab.measure import idle_cost

    costs = {"poll": 150e-6, "acquire": 150e-6, "begin": 30e-6, "cycle": 120e-6, "decode": 1e-6}
    costs |= {"perform": 20e-6, "perform_per_message": 0.5e-6, "end": 200e-6}
    samples = [("Poll", 0, 0.0, 1), ("Acquire", 0, 0.0, 1), ("Begin", 0, 0.0, 0)]
    samples += [("Cycle", 16, 0.0, 1), ("Perform", 16, 0.0, 0)] * 50 + [("End", 0, 0.0, 1)]
    one_loop = 150e-6 * 2 + 30e-6 + 50 * (120e-6 + 16e-6 + 20e-6 + 8e-6) + 200e-6
    trips = 1 + 1 + 50 + 1
    busy = [(samples, one_loop - trips * 40e-6, 0), (samples, one_loop - trips * 60e-6, 0)]
    assert idle_cost(costs, busy) == pytest.approx(50e-6)
    assert idle_cost(costs, [(samples, one_loop * 2, 0)]) == 0.0  # busier than one loop: no saving, not negative


class _Registrations:
    """A feed of wake-up messages at fixed times, for `Cpu` alone."""

    def __init__(self, times: list[float]) -> None:
        self.times = np.asarray(times)

    def registrations(self, after: float, until: float) -> np.ndarray:
        return self.times[(self.times > after) & (self.times <= until)]


@pytest.mark.parametrize(
    ("times", "free", "busy", "end"),
    [
        ([0.0, 1.0, 2.0], -math.inf, 3 * 100e-6, 2.0 + 100e-6),  # apart: each wakes the idle process
        ([0.0, 0.0, 0.0], -math.inf, 100e-6 + 2 * 60e-6, 220e-6),  # a burst: the first wakes it, the others share
        ([0.0, 0.0, 0.0], 1.0, 3 * 60e-6, 1.0 + 180e-6),  # the process is busy: all share its wake-up
        (list(np.arange(20.0)), -math.inf, 20 * 100e-6, 19.0 + 100e-6),  # many, apart
        # 17: three in a burst are done at 220 us, so the fourth, at 250 us, wakes the process again
        ([0.0] * 3 + [250e-6] + [1.0 + k for k in range(13)], -math.inf, 1620e-6, 13.0001),
        ([0.0] * 20, -math.inf, 100e-6 + 19 * 60e-6, 100e-6 + 19 * 60e-6),
        ([0.0] * 20, 1.0, 20 * 60e-6, 1.0 + 20 * 60e-6),
    ],
)
def test_a_wake_up_message_that_finds_the_process_busy_costs_idle_less(
    times: list[float], free: float, busy: float, end: float
) -> None:
    """Wake-up messages cost `Overhead.wake` (an idle listener's) when they wake the process, and
    `Overhead.idle` less when it is busy; they are handled in order, first come first served."""
    from simulator.cpu import Overhead
    from simulator.machine import Cpu

    cpu = Cpu(None, _Registrations(times), Overhead(wake=100e-6, idle=40e-6), delivery=0.0)  # type: ignore[arg-type]
    cpu.free = free
    cpu._messages(100.0)
    assert cpu.busy == pytest.approx(busy)
    assert cpu.free == pytest.approx(end)


def test_plan_says_which_resource_ran_out_when_nothing_meets_the_goal() -> None:
    """Every run of every point saturates the storage server (registrations cost it 1 ms a command):
    the plan has no choice, says so for each point, and does not crash on runs that performed nothing."""

    class Busy(Handler):
        name = "busy"

        async def perform(self, *requests: int) -> None: ...

    sc = Scenario(
        Workload(Busy, Poisson(rate=3000), Service(per_batch=0.002, per_message=0.0001), Keyed(Uniform(16))),
        loops=2,
        settings=Settings(worker_batch_size=32),
        duration=3,
        warmup=0.5,
        seed=1,
        storage_cpu=0.001,
    )
    found = plan(sc, rate=3000, p99=0.15, over={"loops": [2, 4]}, replications=2, progress=False)
    assert found.choice is None
    assert list(found.table["bottleneck"]) == ["storage server", "storage server"]
    assert (found.table["storage_utilisation"] > 1).all()
    assert "loops=2: storage server" in repr(found) and "loops=4: storage server" in repr(found)
    cpu = sc.replace(
        storage_cpu=0.0,
        overhead=LIBRARY,
        workloads=(
            Workload(Busy, Poisson(rate=3000), Service(per_batch=0.002, cpu_per_batch=0.002), Keyed(Uniform(16))),
        ),
    )
    assert simulate(cpu).bottleneck == "a worker process's CPU"


class Controlled(Notify):
    """`Notify` with the controls a class can set (issue #27): 40 requests a second per thread."""

    name = "notify-controlled"
    thread_rate_limit = "40/s"
    rate_limit = "1000/s"
    batch_linger = 0.05


class Lingers(Notify):
    name = "notify-lingers"
    batch_linger = 0.5


def _controlled(handler: type[Handler], workload_arrivals: Any, messages: int) -> Any:
    workload = Workload(handler, workload_arrivals, Service(), Keyed(RoundRobin(messages), make=Note))
    quick = settings(coordinator_delay=0.05, worker_empty_pause=0.01, worker_batch_size=8)
    return simulate(Scenario(workload, loops=4, settings=quick, overhead=NONE, messages=messages))


def test_the_twin_holds_each_thread_to_its_rate_limit() -> None:
    """4 threads of 100 messages at 40/s each: a bucket of 8 (one batch), then 40 a second, as
    cycle.lua keeps it; without the limit the drain takes no time at all."""
    trace = _controlled(Controlled, Backlog(400), 400).trace
    assert len(trace) == 400
    for _, part in trace.groupby("thread"):
        span = part["started_at"].max() - part["started_at"].min()
        assert span == pytest.approx((100 - 8) / 40, rel=0.05)
    unlimited = _controlled(Notify, Backlog(400), 400).trace
    assert unlimited["started_at"].max() < 0.1


def test_the_twin_lingers_for_fuller_batches() -> None:
    """Sparse arrivals (20 a second over 4 threads): lingering half a second for a batch of 8
    makes batches larger than the one or two messages a loop finds without it."""
    plain = _controlled(Notify, Poisson(20.0), 400).trace
    lingering = _controlled(Lingers, Poisson(20.0), 400).trace

    def mean_batch(trace: pd.DataFrame) -> float:
        return float(trace.groupby(["worker", "batch"]).size().mean())

    assert len(lingering) == 400
    assert mean_batch(lingering) > 2 * mean_batch(plain)
