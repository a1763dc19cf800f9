"""A scenario: one `Workload` per handler (`simulator.workload`), the fleet, the real settings,
the storage's round trip and the machine's models; reproducible from its seed.

The handler classes, their ``route()``, ``orders``, ``batch_size`` and
``retry_attempts``, and the `sharded_queue.Settings` are the real ones: a
notebook can take a production handler and simulate it.
"""

from __future__ import annotations

import dataclasses
import html
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import InitVar, dataclass, field
from typing import Any

import numpy as np

from sharded_queue import Handler, Settings
from sharded_queue.core import LoopPolicy
from sharded_queue.handler import handler_name

from .arrivals import finite_replay
from .checks import ScenarioError, check_count, check_positive
from .cpu import LIBRARY, Overhead, Pauses, ServerCosts, check_overhead, check_storage_cpu
from .display import duration
from .noise import Fixed, Noise
from .workload import Workload, arrivals_text, perform_text, requests_text


@dataclass(frozen=True)
class Scenario:
    """Everything one simulation run needs; reproducible from its ``seed``.

    Args:
        workloads: One `Workload` per handler (a single one is accepted too).
        loops: Number of worker loops (``Worker.loop`` calls, ``--loops``) across all processes.
        processes: Number of worker processes (`Worker` objects, ``--processes``) the
            loops are spread over, round robin; each routes wake-ups to its own
            loops and has one CPU that its loops share (see `simulator.machine`).
        settings: The real settings (batch size, coordinator delay, empty
            limit/pause, lease TTL, retries); default: the library defaults,
            not the environment (pass ``sharded_queue.settings`` for that).
        rtt: Storage round-trip time in seconds (the mean); every Redis round trip
            of the real storage costs one.
        rtt_noise: Unit-mean factor of each round trip (`Fixed` by default, as `calibrate`
            leaves it; `Empirical` resamples measured factors).
        duration: Simulated seconds; arrivals stop then and so does the run.
        messages: Total requests to register; without ``duration`` the run goes
            on until all of them are performed.
        warmup: Seconds at the start whose arrivals are left out of the summary.
        seed: Seed of every random choice (arrivals, keys, service, loops).
        trace: Keep the per-message trace (memory grows with messages); when
            False the summary is computed on the fly from histograms.
        backlog_samples: About how many times per run the per-thread backlog is sampled.
        overhead: The library's CPU per effect (`simulator.cpu.LIBRARY`, measured on
            this project's machine); `simulator.cpu.NONE` makes every loop an
            independent server, as the textbook queues assume.
        pauses: When the machine stops running the worker processes (`simulator.cpu.Pauses`;
            none by default; `calibrate` measures them).
        cores: The cores of the machine the worker processes share (`simulator.machine.Cores`);
            None (the default): each process has a core of its own. With fewer cores
            than busy processes, work waits for a core.
        background: CPU seconds that other programs on those cores spend per message
            performed (a producer or a storage server on the same machine), run as one
            more process; needs ``cores``.
        unrelated: Cores' worth of CPU that programs unrelated to the queue keep busy on
            those cores, whatever the queue does (other services, a test suite); 0 (the
            default): none. Needs ``cores``.
        storage_cpu: Seconds the storage server spends on each command, or `ServerCosts`:
            each script's own (`simulator.cpu.SERVER`: measured here); 0 (the default):
            the round trip is all there is. Otherwise Redis is one server that runs
            commands one at a time (`simulator.machine.StorageServer`): every storage call
            and every registration queues there, so round trips grow with the load;
            ``rtt`` is then the rest of a round trip (network and client).
        workers: Deprecated name of ``loops``.
    """

    workloads: Sequence[Workload] | Workload
    loops: int = 1
    processes: int = 1
    settings: Settings = field(default_factory=Settings)
    rtt: float = 0.0
    rtt_noise: Noise = field(default_factory=Fixed)
    duration: float | None = None
    messages: int | None = None
    warmup: float = 0.0
    seed: int = 0
    trace: bool = True
    backlog_samples: int = 200
    overhead: Overhead = LIBRARY
    pauses: Pauses = field(default_factory=Pauses)
    cores: int | None = None
    background: float = 0.0
    storage_cpu: float | ServerCosts = 0.0
    unrelated: float = 0.0
    workers: InitVar[int | None] = None

    def __post_init__(self, workers: int | None) -> None:
        if workers is not None:
            _deprecated_workers()
            if self.loops != 1 and self.loops != workers:
                raise ScenarioError(f"Scenario got loops={self.loops} and workers={workers}: use loops only")
            object.__setattr__(self, "loops", workers)
        workloads = (self.workloads,) if isinstance(self.workloads, Workload) else tuple(self.workloads)
        object.__setattr__(self, "workloads", workloads)
        self.validate()

    def validate(self) -> None:
        """Check every value; called on creation.

        Raises:
            ScenarioError: an impossible value, named.
        """
        workloads: tuple[Workload, ...] = self.workloads  # type: ignore[assignment]
        if not workloads:
            raise ScenarioError("Scenario needs at least one Workload")
        names: dict[str, Workload] = {}
        for workload in workloads:
            if not isinstance(workload, Workload):
                raise ScenarioError(f"Scenario workloads must be Workload objects, got {workload!r}")
            if workload.name in names:
                raise ScenarioError(f"two workloads for handler {workload.name!r}: merge them into one")
            names[workload.name] = workload
        check_count("Scenario loops", self.loops)
        check_count("Scenario processes", self.processes)
        if self.processes > self.loops:
            raise ScenarioError(f"Scenario processes ({self.processes}) must not outnumber loops ({self.loops})")
        check_overhead(self.overhead)
        if not isinstance(self.pauses, Pauses):
            raise ScenarioError(f"Scenario pauses must be a Pauses, got {self.pauses!r}")
        if self.cores is not None:
            check_count("Scenario cores", self.cores)
        check_positive("Scenario background", self.background, zero=True)
        if self.background and self.cores is None:
            raise ScenarioError(
                f"Scenario background ({self.background:g} s per message) runs on the machine's cores: set cores too"
            )
        check_positive("Scenario unrelated", self.unrelated, zero=True)
        if self.unrelated and self.cores is None:
            raise ScenarioError(
                f"Scenario unrelated ({self.unrelated:g} cores busy) runs on the machine's cores: set cores too"
            )
        if not isinstance(self.settings, Settings):
            raise ScenarioError(f"Scenario settings must be sharded_queue.Settings, got {self.settings!r}")
        check_positive("Scenario rtt", self.rtt, zero=True)
        check_storage_cpu(self.storage_cpu)
        if not hasattr(self.rtt_noise, "sample"):
            raise ScenarioError(f"Scenario rtt_noise must be a noise model (Fixed, Empirical), got {self.rtt_noise!r}")
        if self.duration is not None:
            check_positive("Scenario duration", self.duration)
        if self.messages is not None:
            check_count("Scenario messages", self.messages)
        if (
            self.duration is None
            and self.messages is None
            and not all(finite_replay(w.arrivals) is not None for w in workloads)
        ):
            raise ScenarioError("Scenario needs a duration or a message count (or only finite Replay arrivals)")
        check_positive("Scenario warmup", self.warmup, zero=True)
        if self.duration is not None and self.warmup >= self.duration:
            raise ScenarioError(f"Scenario warmup ({self.warmup}) must be shorter than its duration ({self.duration})")
        check_count("Scenario seed", self.seed, minimum=0)
        check_count("Scenario backlog_samples", self.backlog_samples, minimum=2)

    @property
    def handlers(self) -> list[type[Handler]]:
        """The handler classes, in workload order."""
        return [workload.handler for workload in self.workloads]  # type: ignore[union-attr]

    def policy(self) -> LoopPolicy:
        """The loop policy the real `Worker` would use for these settings and handlers."""
        return LoopPolicy.for_handlers(self.settings, {handler_name(h): h for h in self.handlers})

    def replace(self, **changes: Any) -> Scenario:
        """A copy with some fields changed; names of `Settings` fields change the settings.

        ``scenario.replace(loops=8, worker_batch_size=32)`` sets ``loops`` on
        the scenario and ``worker_batch_size`` on a copy of its settings.
        """
        if "workers" in changes:
            _deprecated_workers(stacklevel=4)
            changes = dict(changes)
            changes["loops"] = changes.pop("workers")
        own = {f.name for f in dataclasses.fields(self)}
        setting_names = set(self.settings.as_dict())
        mine = {k: v for k, v in changes.items() if k in own}
        theirs = {k: v for k, v in changes.items() if k not in own}
        unknown = set(theirs) - setting_names
        if unknown:
            raise ScenarioError(
                f"unknown scenario or settings field(s): {sorted(unknown)}; "
                f"scenario fields: {sorted(own - {'workloads'})}; settings: {sorted(setting_names)}"
            )
        if theirs:
            mine["settings"] = self.settings.copy(**theirs)
        return dataclasses.replace(self, **mine)

    def __repr__(self) -> str:
        return scenario_text(self)

    def _repr_html_(self) -> str:
        return scenario_html(self)

    def describe(self) -> Mapping[str, Any]:
        """The scenario's main numbers, flat, named as the `Scenario` and `Settings` fields
        that `replace` and `sweep` vary (``worker_batch_size``, not ``batch_size``)."""
        workloads: tuple[Workload, ...] = self.workloads  # type: ignore[assignment]
        policy = self.policy()
        return {
            "loops": self.loops,
            "processes": self.processes,
            "worker_batch_size": policy.batch_size,
            "coordinator_delay": policy.coordinator_delay,
            "worker_empty_limit": policy.empty_limit,
            "worker_empty_pause": policy.empty_pause,
            "rtt": self.rtt,
            "arrival_rate": sum((w.arrivals.mean_rate() or 0.0) for w in workloads),
            "seed": self.seed,
        }


def _deprecated_workers(stacklevel: int = 4) -> None:
    warnings.warn(
        "the simulator's 'workers' is now 'loops' (the library's word: Worker.loop, --loops); "
        "'workers' will be removed",
        DeprecationWarning,
        stacklevel=stacklevel,
    )


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
    storage = scenario.storage_cpu
    if isinstance(storage, ServerCosts):
        fleet += f", storage {duration(storage.cycle)}/cycle, {duration(storage.registration(1, 1))}/registration"
    elif storage:
        fleet += f", storage {duration(storage)}/command"
    if not scenario.pauses.none:
        fleet += f", pauses {scenario.pauses.rate:.3g}/s of {duration(float(np.mean(scenario.pauses.lengths)))}"
    if scenario.cores is not None:
        fleet += f", {scenario.cores} core{'s' if scenario.cores != 1 else ''}"
        if scenario.background:
            fleet += f" (others {duration(scenario.background)}/message)"
        if scenario.unrelated:
            fleet += f" ({scenario.unrelated:.2g} busy with unrelated programs)"
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
        ("handler " + w.name, f"{arrivals_text(w)}; perform {perform_text(w)}; requests {requests_text(w)}")
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
