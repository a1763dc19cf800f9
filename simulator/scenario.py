"""A scenario: the same inputs the real queue takes, plus a workload and models.

The handler classes, their ``route()``, ``orders``, ``batch_size`` and
``retry_attempts``, and the `sharded_queue.Settings` are the real ones: a
notebook can take a production handler and simulate it.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import InitVar, dataclass, field
from typing import Any

from sharded_queue import Handler, Settings
from sharded_queue.core import LoopPolicy
from sharded_queue.handler import declared_orders, handler_name

from .cpu import LIBRARY, Overhead, Pauses, check_overhead
from .display import scenario_html, scenario_text
from .routing import check_bare_keys
from .workload import (
    Arrivals,
    Deferred,
    Fixed,
    Generated,
    Keyed,
    Noise,
    Registered,
    Replay,
    Requests,
    ScenarioError,
    Service,
    _count,
    _positive,
)


@dataclass(frozen=True)
class Workload:
    """One handler's share of a scenario.

    Args:
        handler: The real `Handler` subclass; its ``route()`` places every request.
        arrivals: When requests are registered (`Poisson`, `Deterministic`,
            `OnOff`, `Replay`, `Backlog`, `Registered`), or join their tube:
            `Deferred` (``defer=``), `Recurring` (``recurrent=``).
        service: How long ``perform`` takes for a batch (`Service`).
        requests: What the requests are (`Keyed` with a key distribution such as
            `Zipf`, or `Generated`); default: every request is the key 0.
    """

    handler: type[Handler]
    arrivals: Arrivals
    service: Service
    requests: Requests = field(default_factory=Keyed)

    def __post_init__(self) -> None:
        try:
            name = handler_name(self.handler)
            declared_orders(self.handler)
        except (TypeError, ValueError) as exc:
            raise ScenarioError(f"Workload handler: {exc}") from exc
        if not hasattr(self.arrivals, "chunks"):
            raise ScenarioError(f"Workload arrivals of {name} must be an arrival process, got {self.arrivals!r}")
        if not isinstance(self.service, Service):
            raise ScenarioError(f"Workload service of {name} must be a Service, got {self.service!r}")
        if not isinstance(self.requests, Keyed | Generated):
            raise ScenarioError(f"Workload requests of {name} must be Keyed or Generated, got {self.requests!r}")
        if isinstance(self.requests, Keyed) and self.requests.make is None:
            check_bare_keys(self.handler, self.requests)
        for attribute in ("batch_size", "retry_attempts"):
            value = getattr(self.handler, attribute)
            if value is not None:
                _count(f"{self.handler.__qualname__}.{attribute}", value)

    @property
    def name(self) -> str:
        """The handler's stored name."""
        return handler_name(self.handler)


@dataclass(frozen=True)
class Scenario:
    """Everything one simulation run needs; reproducible from its ``seed``.

    Args:
        workloads: One `Workload` per handler (a single one is accepted too).
        loops: Number of worker loops (``Worker.loop`` calls, ``--loops``) across all processes.
        processes: Number of worker processes (`Worker` objects, ``--processes``) the
            loops are spread over, round robin; each routes wake-ups to its own
            loops and has one CPU that its loops share (see `simulator.cpu`).
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
        cores: The cores of the machine the worker processes share (`simulator.cpu.Cores`);
            None (the default): each process has a core of its own. With fewer cores
            than busy processes, work waits for a core.
        background: CPU seconds that other programs on those cores spend per message
            performed (a producer or a storage server on the same machine), run as one
            more process; needs ``cores``.
        storage_cpu: Seconds the storage server spends on each command; 0 (the default):
            the round trip is all there is. Otherwise Redis is one server that runs
            commands one at a time (`simulator.cpu.StorageServer`): every storage call
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
    storage_cpu: float = 0.0
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
        _count("Scenario loops", self.loops)
        _count("Scenario processes", self.processes)
        if self.processes > self.loops:
            raise ScenarioError(f"Scenario processes ({self.processes}) must not outnumber loops ({self.loops})")
        check_overhead(self.overhead)
        if not isinstance(self.pauses, Pauses):
            raise ScenarioError(f"Scenario pauses must be a Pauses, got {self.pauses!r}")
        if self.cores is not None:
            _count("Scenario cores", self.cores)
        _positive("Scenario background", self.background, zero=True)
        if self.background and self.cores is None:
            raise ScenarioError(
                f"Scenario background ({self.background:g} s per message) runs on the machine's cores: set cores too"
            )
        if not isinstance(self.settings, Settings):
            raise ScenarioError(f"Scenario settings must be sharded_queue.Settings, got {self.settings!r}")
        _positive("Scenario rtt", self.rtt, zero=True)
        _positive("Scenario storage_cpu", self.storage_cpu, zero=True)
        if not hasattr(self.rtt_noise, "sample"):
            raise ScenarioError(f"Scenario rtt_noise must be a noise model (Fixed, Empirical), got {self.rtt_noise!r}")
        if self.duration is not None:
            _positive("Scenario duration", self.duration)
        if self.messages is not None:
            _count("Scenario messages", self.messages)
        if (
            self.duration is None
            and self.messages is None
            and not all(finite_replay(w.arrivals) is not None for w in workloads)
        ):
            raise ScenarioError("Scenario needs a duration or a message count (or only finite Replay arrivals)")
        _positive("Scenario warmup", self.warmup, zero=True)
        if self.duration is not None and self.warmup >= self.duration:
            raise ScenarioError(f"Scenario warmup ({self.warmup}) must be shorter than its duration ({self.duration})")
        _count("Scenario seed", self.seed, minimum=0)
        _count("Scenario backlog_samples", self.backlog_samples, minimum=2)

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


def finite_replay(arrivals: Any) -> Replay | None:
    """The `Replay` an arrival process ends with (it, or one it is built on), or None."""
    while isinstance(arrivals, Deferred | Registered):
        arrivals = arrivals.arrivals
    return arrivals if isinstance(arrivals, Replay) else None
