"""Failovers under load, with real processes: what an acknowledged `register` can lose.

Producers in this process register ``[thread, seq, attempt]`` requests at a
steady rate (a call that raises `StorageError` is made again with the next
attempt number, so that every message is unique); worker processes
(``benchmarks/worker_process.py``, which logs each perform with a global clock kept
in a Redis of its own) drain them; meanwhile the primary of a replicated Redis
is killed (``kill -9``) again and again, a replica promoted in its place and
the killed node brought back as a replica. At the end the queue is drained
and the perform log audited (`audit`).

Used by ``tests/test_failover.py`` (correctness, a few failovers) and
``benchmarks/bench_failover.py`` (the numbers in ``docs/durability.md``).
"""

from __future__ import annotations

import asyncio
import itertools
import math
import statistics
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.processes import Processes
from benchmarks.worker_process import ChaosHandler
from sharded_queue import Queue, Settings, StorageError
from sharded_queue.testing import wait_until
from sharded_queue.testing_servers import ReplicatedCluster, SentinelGroup

WORKER_ENV = {
    "QUEUE_KEY_PREFIX": "failover",
    "QUEUE_LEASE_TTL": "1.5",
    "QUEUE_COORDINATOR_DELAY": "0.1",
    "QUEUE_WORKER_BATCH_SIZE": "32",
    "QUEUE_WORKER_EMPTY_LIMIT": "4",
    "QUEUE_WORKER_EMPTY_PAUSE": "0.05",
    "QUEUE_STORAGE_TIMEOUT": "2",
    "QUEUE_RETRY_BACKOFF_MAX": "0.5",
    "TEST_PERFORM_SECONDS": "0.002",
    "TEST_LOG_LEVEL": "INFO",
}
"""The worker processes' settings (the producers use the same prefix, lease and timeout)."""

Message = tuple[str, int, int]  # thread, seq, attempt


@dataclass
class Setup:
    """A replicated Redis the run can fail over.

    Attributes:
        url: Its storage URL.
        kill: ``kill -9`` its primary (blocking); returns what the other two take.
        promoted: Wait until a replica serves in place of the killed primary.
        rejoin: Start the killed node again, as a replica.
    """

    url: str
    kill: Callable[[], Any]
    promoted: Callable[[Any], Any]
    rejoin: Callable[[Any], Any]


def sentinel_setup(group: SentinelGroup, lagging: bool = False) -> Setup:
    """Fail a `SentinelGroup` over, its replica caught up (or ``lagging`` half a second behind)."""
    kill = group.kill_primary_lagging if lagging else group.kill_primary
    return Setup(group.url, kill, group.wait_promoted, group.rejoin)


def cluster_setup(cluster: ReplicatedCluster) -> Setup:
    """Fail a `ReplicatedCluster` over, killing another of its primaries each time."""
    turn = itertools.count()
    return Setup(cluster.url, lambda: cluster.kill_primary(next(turn) % 3), cluster.wait_promoted, cluster.rejoin)


class Producers:
    """``count`` producers, each registering one request on each of its threads per call, ``rate`` calls/s."""

    def __init__(self, url: str, settings: Settings, threads: int, count: int, rate: float) -> None:
        self.url, self.settings, self.threads, self.count, self.rate = url, settings, threads, count, rate
        self.returned: dict[Message, float] = {}  # acknowledged message -> when its register returned
        self.started: dict[Message, float] = {}  # acknowledged message -> when its (last) register began
        self.raised = 0
        self.stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        for index in range(self.count):
            threads = list(range(index, self.threads, self.count))
            self._tasks.append(asyncio.create_task(self._produce(threads)))

    async def finish(self) -> None:
        self.stop.set()
        await asyncio.gather(*self._tasks)

    def returned_after(self, moment: float) -> int:
        return sum(1 for at in self.returned.values() if at > moment)

    async def _produce(self, threads: list[int]) -> None:
        queue = Queue(self.url, settings=self.settings)
        try:
            for seq in itertools.count():
                started = time.monotonic()
                if not await self._register(queue, threads, seq):
                    return
                await asyncio.sleep(max(0.0, 1 / self.rate - (time.monotonic() - started)))
        finally:
            await queue.close()

    async def _register(self, queue: Queue, threads: list[int], seq: int) -> bool:
        """Register ``seq`` on ``threads`` until a call returns; False if stopped first."""
        for attempt in itertools.count():
            if self.stop.is_set():
                return False
            started = time.time()
            try:
                await queue.register(ChaosHandler, *[[thread, seq, attempt] for thread in threads])
            except StorageError:
                self.raised += 1
                await asyncio.sleep(0.02)
                continue
            now = time.time()
            self.returned.update({(str(thread), seq, attempt): now for thread in threads})
            self.started.update({(str(thread), seq, attempt): started for thread in threads})
            return True
        raise AssertionError("unreachable")  # pragma: no cover


@dataclass
class Failover:
    """One failover: when the primary was killed, and how long until each thing happened again (s).

    Registrations resumed when the first call begun after the kill returned;
    performs, when the first request such a call registered was performed.
    """

    killed_at: float
    promoted_s: float
    rejoined_s: float
    register_resumed_s: float = float("nan")
    perform_resumed_s: float = float("nan")


@dataclass
class Report:
    """What a run measured (see `audit`)."""

    acknowledged: int
    performed: int
    lost: list[Message]
    duplicates: int
    fifo_violations: int
    stored_though_raised: int
    raised: int
    failovers: list[Failover]
    logs: dict[int, dict[str, int]] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        """The report as plain numbers (times: median and worst)."""

        def spread(values: list[float]) -> str:
            return f"{statistics.median(values):.2f} / {max(values):.2f}" if values else "-"

        return {
            "failovers": len(self.failovers),
            "acknowledged": self.acknowledged,
            "lost": len(self.lost),
            "duplicates": self.duplicates,
            "fifo_violations": self.fifo_violations,
            "register_raised": self.raised,
            "stored_though_raised": self.stored_though_raised,
            "promoted_s": spread([f.promoted_s for f in self.failovers]),
            "register_resumed_s": spread([f.register_resumed_s for f in self.failovers]),
            "perform_resumed_s": spread([f.perform_resumed_s for f in self.failovers]),
        }


async def run_failovers(
    setup: Setup,
    directory: Path,
    clock_url: str,
    failovers: int,
    replicas: int,
    *,
    threads: int = 16,
    producers: int = 2,
    rate: float = 100.0,
    workers: int = 2,
    load_seconds: float = 1.0,
) -> Report:
    """Fail ``setup`` over ``failovers`` times under load, drain the queue, and audit the performs.

    Args:
        replicas: The producers' ``QUEUE_REGISTER_REPLICAS``.
        threads, producers, rate: The load: ``producers`` producers of ``rate``
            calls per second, each call one request on each of its share of ``threads``.
        workers: Worker processes, 2 loops each.
        load_seconds: Load between the end of one failover and the next kill.
    """
    settings = Settings(key_prefix="failover", storage_timeout=2, register_replicas=replicas, lease_ttl=1.5)
    group = Processes(setup.url, directory, {**WORKER_ENV, "TEST_CLOCK_URL": clock_url})
    load = Producers(setup.url, settings, threads, producers, rate)
    done: list[Failover] = []
    try:
        for _ in range(workers):
            group.spawn(loops=2)
        load.start()
        for _ in range(failovers):
            await _loaded(load, group, load_seconds)
            done.append(await _fail_over(setup))
        await _loaded(load, group, load_seconds)
        await load.finish()
        await wait_until(lambda: _drained(setup.url, settings), timeout=120, interval=0.2)
    finally:
        if not load.stop.is_set():
            await load.finish()
        group.stop_all()
    return audit(group, load, done)


async def _loaded(load: Producers, group: Processes, seconds: float) -> None:
    """Run the load ``seconds``, then until something registered since was performed."""
    since = time.time()
    await asyncio.sleep(seconds)  # the load between two failovers, not a wait for a condition
    await wait_until(lambda: load.returned_after(since) > 0, timeout=60, interval=0.05)
    await wait_until(lambda: _performed_after(group, since), timeout=60, interval=0.05)


def _performed_after(group: Processes, moment: float) -> bool:
    """Whether the log's last lines (its tail: it grows long) hold a perform after ``moment``."""
    if not group.log.exists():
        return False
    with group.log.open("rb") as log:
        log.seek(max(0, log.seek(0, 2) - 8192))
        tail = log.read().decode(errors="replace").splitlines()[1:]
    return any(row[3] == "perform" and float(row[1]) > moment for row in map(str.split, tail) if len(row) > 3)


async def _fail_over(setup: Setup) -> Failover:
    handle = await asyncio.to_thread(setup.kill)
    killed_at = time.time()  # once the process is gone (kill waits for it)
    await asyncio.to_thread(setup.promoted, handle)
    promoted = time.time()
    await asyncio.to_thread(setup.rejoin, handle)
    return Failover(killed_at, promoted - killed_at, time.time() - promoted)


async def _drained(url: str, settings: Settings) -> bool:
    queue = Queue(url, settings=settings)
    try:
        return await queue.pending(ChaosHandler) == 0
    except StorageError:
        return False
    finally:
        await queue.close()


def audit(group: Processes, load: Producers, failovers: list[Failover]) -> Report:
    """Lost: acknowledged and never performed. Duplicates: performs of a message beyond its first.
    FIFO: per thread, messages first performed (global clock) in the order they were registered."""
    first: dict[Message, tuple[int, float]] = {}
    counts: dict[Message, int] = defaultdict(int)
    for clock, stamp, _, _, thread, seqs in group.lines("perform"):
        for item in seqs.split(","):
            seq, attempt = map(int, item.split(":"))
            message = (thread, seq, attempt)
            counts[message] += 1
            if message not in first or int(clock) < first[message][0]:
                first[message] = (int(clock), float(stamp))
    by_thread: dict[str, list[tuple[int, int, int]]] = defaultdict(list)
    for (thread, seq, attempt), (clock, _) in first.items():
        by_thread[thread].append((seq, attempt, clock))
    violations = 0
    for performed in by_thread.values():
        clocks = [clock for _, _, clock in sorted(performed)]
        violations += sum(1 for a, b in itertools.pairwise(clocks) if b < a)
    for failover in failovers:
        after = [m for m, at in load.started.items() if at > failover.killed_at]
        failover.register_resumed_s = min((load.returned[m] for m in after), default=math.nan) - failover.killed_at
        failover.perform_resumed_s = (
            min((first[m][1] for m in after if m in first), default=math.nan) - failover.killed_at
        )
    acknowledged = set(load.returned)
    return Report(
        acknowledged=len(acknowledged),
        performed=len(first),
        lost=sorted(acknowledged - set(first)),
        duplicates=sum(n - 1 for n in counts.values()),
        fifo_violations=violations,
        stored_though_raised=len(set(first) - acknowledged),
        raised=load.raised,
        failovers=failovers,
        logs=_log_lines(group),
    )


def _log_lines(group: Processes) -> dict[int, dict[str, int]]:
    """Per worker process: its storage WARNINGs (outage or failover seen) and INFOs (over)."""
    found: dict[int, dict[str, int]] = defaultdict(lambda: {"failing": 0, "failover_over": 0, "recovered": 0})
    for line in group.errors().splitlines():
        pid, _, text = line.partition(" ")
        if not pid.isdigit():
            continue
        for key, needle in (
            ("failing", "WARNING storage is failing"),
            ("failover_over", "INFO storage failover over"),
            ("recovered", "INFO storage recovered"),
        ):
            found[int(pid)][key] += needle in text
    return dict(found)
