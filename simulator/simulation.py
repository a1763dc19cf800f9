"""One run of a `Scenario`: the storage model, the feed, the machine and the worker loops, built,
run in simulated time, and recorded (`simulator.record.RunRecord`) for the `Result`.

`simulate` is the entry point. The loops carry out the core's effects in
`simulator.engine`; everything random is seeded from `Scenario.seed`, so a
run is reproducible.
"""

from __future__ import annotations

import gc
import math
import random
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import simpy

from sharded_queue.meter import LAG_EVERY

from .arrivals import finite_replay
from .checks import ScenarioError
from .cpu import REGISTER_COMMANDS, ServerCosts, models_server
from .engine import RoundTrips, Shared, SimLoop
from .feed import Feed
from .lookups import Lookups
from .loops import LoopState, SimProcess
from .machine import Cores, Cpu, PauseSchedule, StorageServer, lag_probe
from .noise import Fixed
from .record import Recorder, RunRecord, Sample
from .result import Result
from .scenario import Scenario
from .service import ServiceSampler
from .storage_model import SimStorage
from .wake import Wakeups
from .workload import Workload


class Simulation:
    """One run of a `Scenario`: the storage model, the feed, the machine and the worker loops."""

    def __init__(self, scenario: Scenario) -> None:
        self.scenario = scenario
        self.env = simpy.Environment()
        workloads: Sequence[Workload] = scenario.workloads  # type: ignore[assignment]
        root = np.random.SeedSequence(scenario.seed)
        feed_seed, service_seed, loop_seed, rtt_seed, pause_seed = root.spawn(5)
        policy = scenario.policy()
        sizes = {workload.name: policy.batch_limit(workload.name, None) for workload in workloads}
        self.storage = SimStorage(workloads, scenario.processes, sizes)
        self.feed = Feed(scenario, self.storage, feed_seed.spawn(len(workloads)))
        service_rngs = [np.random.default_rng(s) for s in service_seed.spawn(len(workloads))]
        self.loop_seeds = [int(s.generate_state(1)[0]) for s in loop_seed.spawn(scenario.loops)]
        self.processes = [SimProcess(i) for i in range(scenario.processes)]
        self.loops = [LoopState(i, self.processes[i % scenario.processes]) for i in range(scenario.loops)]
        for loop in self.loops:
            loop.process.loops.append(loop)
        self.samples: list[Sample] = []
        # A wake-up message is published by the storage server once it has run the registration
        # (a one-request call's, without the queue there), then travels on to the worker processes.
        delivery = scenario.rtt + _registration_seconds(scenario.storage_cpu)
        wakeups = Wakeups(self.env, self.feed, Lookups(self.feed, self.storage), delivery, self.processes)
        self.feed.low_water = lambda: min(loop.armed_at for loop in self.loops) - delivery
        noisy = scenario.rtt and not isinstance(scenario.rtt_noise, Fixed)
        cores = self._machine(delivery, pause_seed)
        self.shared = Shared(
            self.env,
            self.storage,
            self.feed,
            wakeups,
            Recorder(keep=scenario.trace, warmup=scenario.warmup),
            policy=scenario.policy(),
            samplers={w.name: ServiceSampler(w.service, rng) for w, rng in zip(workloads, service_rngs, strict=True)},
            rtt=scenario.rtt,
            round_trips=RoundTrips(scenario.rtt, scenario.rtt_noise, rtt_seed) if noisy else None,
            overhead=scenario.overhead,
            cores=cores,
            background=scenario.background if cores is not None else 0.0,
            server=StorageServer(self.feed, scenario.storage_cpu, scenario.rtt / 2)
            if models_server(scenario.storage_cpu)
            else None,
            target=_target(scenario),
        )

    def _machine(self, delivery: float, pause_seed: np.random.SeedSequence) -> Cores | None:
        """Give every process its CPU, when CPU is modelled; the machine's cores, if limited."""
        scenario = self.scenario
        workloads: Sequence[Workload] = scenario.workloads  # type: ignore[assignment]
        paused = not scenario.pauses.none
        # Without library CPU, CPU in perform or pauses, loops are independent servers: skip the CPU entirely.
        if scenario.overhead.zero and not any(w.service.uses_cpu for w in workloads) and not paused:
            return None
        # The machine's cores, when fewer than the processes may want: shared by their CPUs and the background.
        cores = Cores(scenario.cores, scenario.unrelated) if scenario.cores is not None else None
        pauses = PauseSchedule(scenario.pauses, np.random.default_rng(pause_seed)) if paused else None
        for process in self.processes:
            process.cpu = Cpu(self.env, self.feed, scenario.overhead, delivery, pauses, cores)
        return cores

    def run(self) -> Result:
        """Simulate, and return the `Result`."""
        wall = time.perf_counter()
        self.feed.ensure(0.0)  # route the first arrivals: a bad route fails before simulating
        for stats, seed in zip(self.loops, self.loop_seeds, strict=True):
            self.env.process(SimLoop(self.shared, stats).run(random.Random(seed)))
        self.env.process(self._sample())
        for process in self.processes:
            if process.cpu is not None:
                self.env.process(lag_probe(self.env, process.cpu, LAG_EVERY, process.lags))
        duration = self.scenario.duration
        # The heap (pandas, numpy, the user's objects) does not change during a run: keep
        # the cyclic garbage collector from walking it over and over (up to 30% of the time).
        gc.freeze()
        try:
            self.env.run(until=duration if duration is not None else self.shared.done)
        finally:
            gc.unfreeze()
        end = self.env.now
        self._snapshot(end)
        return Result(self.record(end, time.perf_counter() - wall))

    def record(self, end: float, wall: float) -> RunRecord:
        """What the run produced, as plain data, once it stopped at ``end``."""
        tubes = self.storage.tubes
        policy = self.shared.policy
        return RunRecord(
            scenario=self.scenario,
            end=end,
            wall=wall,
            messages=sum(loop.messages for loop in self.loops),
            dead=self.shared.dead,
            arrived=self.feed.total,
            last_arrival=self.feed.last,
            recorder=self.shared.recorder,
            tubes=[(t.tube.handler, t.tube.thread, t.tube.order) for t in tubes],
            arrived_after_warmup=np.array([t.arrived_after_warmup for t in tubes], dtype=np.int64),
            batch_limits=np.array([policy.batch_limit(t.tube.handler, None) for t in tubes], dtype=np.int64),
            samples=self.samples,
            loops=[
                {
                    "index": loop.index,
                    "process": loop.process.index,
                    "messages": loop.messages,
                    "performs": loop.performs,
                    "failures": loop.failures,
                    "binds": loop.binds,
                    "polls": loop.polls,
                    "acquires": loop.acquires,
                    "cycles": loop.cycles,
                    "releases": loop.releases,
                    "busy": loop.busy,
                    "bound": loop.bound + (0.0 if math.isnan(loop.bound_since) else end - loop.bound_since),
                }
                for loop in self.loops
            ],
            processes=[
                {
                    "index": p.index,
                    "loops": len(p.loops),
                    "cpu_busy": p.cpu.busy if p.cpu is not None else 0.0,
                    "lag": float(np.mean(p.lags)) if p.lags else math.nan,
                    "lag_p99": float(np.quantile(p.lags, 0.99)) if p.lags else math.nan,
                }
                for p in self.processes
            ],
            storage_busy=self.shared.server.busy if self.shared.server is not None else 0.0,
            storage_calls=self.shared.server.calls if self.shared.server is not None else 0,
            cores_busy=self.shared.cores.busy if self.shared.cores is not None else 0.0,
        )

    def _sample(self) -> Any:
        """Sample every tube's backlog and arrivals; halve the resolution when samples pile up."""
        scenario = self.scenario
        target = scenario.backlog_samples
        if scenario.duration is not None:
            step = scenario.duration / target
        else:
            rate = sum((w.arrivals.mean_rate() or 0.0) for w in scenario.workloads)  # type: ignore[union-attr]
            guess = (scenario.messages or 0) / rate if rate else 1.0
            step = max(guess, 1e-9) / target
        while True:
            self._snapshot(self.env.now)
            if len(self.samples) >= 2 * target:
                self.samples = self.samples[::2]
                step *= 2
            yield self.env.timeout(step)

    def _snapshot(self, at: float) -> None:
        arrived = self.feed.arrived(at)
        waiting = arrived - self.storage.acked[: len(arrived)]
        if self.samples and self.samples[-1][0] == at:
            self.samples.pop()
        self.samples.append((at, waiting, arrived))


def _registration_seconds(storage: float | ServerCosts) -> float:
    """The server's time for a registration call of one request."""
    return storage.registration(1, 1) if isinstance(storage, ServerCosts) else REGISTER_COMMANDS * storage


def _target(scenario: Scenario) -> float:
    """Messages after which a run without a duration is over."""
    target = math.inf if scenario.messages is None else scenario.messages
    workloads: Sequence[Workload] = scenario.workloads  # type: ignore[assignment]
    replays = [finite_replay(w.arrivals) for w in workloads]
    if all(replay is not None for replay in replays):
        target = min(target, sum(len(replay.times) for replay in replays))  # type: ignore[union-attr]
    return target


def simulate(scenario: Scenario) -> Result:
    """Run ``scenario`` and return its `Result` (trace, summary, backlog, loop stats).

    Raises:
        ScenarioError: an impossible value or a ``route()`` that returns the wrong
            thing, before anything is simulated.
        RouteError: ``route()`` did not return one `RequestRoute` per request.
    """
    if not isinstance(scenario, Scenario):
        raise ScenarioError(f"simulate() takes a Scenario, got {type(scenario).__name__}")
    return Simulation(scenario).run()
