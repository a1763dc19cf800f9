"""simulator: the simpy twin of sharded_queue's worker, for capacity planning and teaching.

A `Scenario` takes the real `Handler` classes (their ``route()``, ``orders``,
``batch_size``) and the real `sharded_queue.Settings`, plus a workload, a
service-time model and a storage round-trip time. `simulate` runs the very
same `sharded_queue.core.worker_program` as the asyncio worker, in simulated
time, and returns a `Result` with a trace in the shared schema::

    from simulator import Poisson, Scenario, Service, Workload, Zipf, Keyed, simulate

    result = simulate(Scenario(
        Workload(NotifyHandler, Poisson(rate=500), Service(per_batch=0.01, per_message=0.001),
                 Keyed(Zipf(10_000, 1.1), make=NotifyRequest)),
        loops=4, duration=60, seed=1))
    result.summary()
"""

from .analysis import backlog, compare, summary
from .arrivals import Backlog, Deferred, Deterministic, OnOff, Poisson, Recurring, Registered, Replay
from .calibrate import Calibration, calibrate, calibrations
from .checks import ScenarioError
from .cpu import LIBRARY, NONE, SERVER, Overhead, Pauses, ServerCosts
from .display import readable
from .engine import SimulatedFailure
from .noise import Empirical, Exponential, Fixed, LogNormal
from .plots import plot_backlog, plot_latency, plot_sweep
from .predict import predict
from .requests import Generated, Keyed, KeySequence, RoundRobin, Uniform, Zipf
from .result import Result
from .scenario import Scenario
from .service import Service
from .simulation import simulate
from .sweep import Plan, plan, sweep
from .theory import bulk_service_wait, erlang_c, erlang_c_wait
from .workload import Workload

__all__ = [
    "LIBRARY",
    "NONE",
    "SERVER",
    "Backlog",
    "Calibration",
    "Deferred",
    "Deterministic",
    "Empirical",
    "Exponential",
    "Fixed",
    "Generated",
    "KeySequence",
    "Keyed",
    "LogNormal",
    "OnOff",
    "Overhead",
    "Pauses",
    "Plan",
    "Poisson",
    "Recurring",
    "Registered",
    "Replay",
    "Result",
    "RoundRobin",
    "Scenario",
    "ScenarioError",
    "ServerCosts",
    "Service",
    "SimulatedFailure",
    "Uniform",
    "Workload",
    "Zipf",
    "backlog",
    "bulk_service_wait",
    "calibrate",
    "calibrations",
    "compare",
    "erlang_c",
    "erlang_c_wait",
    "plan",
    "plot_backlog",
    "plot_latency",
    "plot_sweep",
    "predict",
    "readable",
    "simulate",
    "summary",
    "sweep",
]
