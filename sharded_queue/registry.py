"""The worker registry: who is working, on what, since when.

Each running `Worker` keeps a heartbeat record in storage (keys in
`sharded_queue.storage`): its id (``host:pid-suffix``), handlers, running
loops, counters and held threads, renewed every third of ``lease_ttl`` and
living ``lease_ttl`` without renewal. A worker whose loops all return deletes
its record at once; a killed one disappears when the record expires. Record
times (``started_at``, ``heartbeat_at``) are the storage server's clock.

A lease token names its holder (`sharded_queue.leases`), so inspection shows
which loop holds a thread and since when.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import msgspec

from .core import ThreadRef
from .errors import StorageError
from .frames import require_pandas
from .health import StorageHealth
from .settings import Settings
from .storage import Storage

if TYPE_CHECKING:
    import pandas as pd

logger = logging.getLogger("sharded_queue")

WORKER_COLUMNS = (
    "id",
    "handlers",
    "loops",
    "performed",
    "failed",
    "dead_lettered",
    "held",
    "started_at",
    "heartbeat_at",
)


@dataclass(slots=True)
class Counters:
    """What one worker did since it was created.

    Attributes:
        performed: Messages whose ``perform`` call returned.
        failed: ``perform`` calls that raised or timed out (failed attempts).
        dead_lettered: Messages moved to the dead letters (failing or undecodable).
    """

    performed: int = 0
    failed: int = 0
    dead_lettered: int = 0


@dataclass(slots=True)
class WorkerState:
    """What one worker's heartbeat record tells, kept current by the worker (the registry reads only this).

    Attributes:
        id: ``host:pid-suffix``.
        handlers: Names of the handlers it runs.
        counters: What it did.
        held: Threads its loops hold: loop number and since when (the worker's clock).
        running_loops: Loops running now.
        peers: Live workers' ids as of its last heartbeat (wake-ups are shared out among them).
    """

    id: str
    handlers: list[str]
    counters: Counters = field(default_factory=Counters)
    held: dict[ThreadRef, tuple[int, float]] = field(default_factory=dict)
    running_loops: int = 0
    peers: list[str] = field(default_factory=list)


class WorkerInfo(msgspec.Struct, frozen=True):
    """One live worker: its heartbeat record, as `Queue.workers` shows it.

    Attributes:
        id: ``host:pid-suffix``.
        handlers: Names of the handlers it runs.
        loops: Loops running at its last heartbeat.
        performed, failed, dead_lettered: Its `Counters` at its last heartbeat.
        held: Threads its loops held at its last heartbeat: ``(handler, thread,
            loop, since)``, ``since`` by the worker's clock.
        started_at: Its first heartbeat (storage server's clock, seconds).
        heartbeat_at: Its last heartbeat (storage server's clock, seconds).
    """

    id: str
    handlers: list[str]
    loops: int
    performed: int
    failed: int
    dead_lettered: int
    held: list[tuple[str, str, int, float]]
    started_at: float = 0.0  # not in the stored JSON: from the record's hash
    heartbeat_at: float = 0.0


def encode_record(worker: WorkerState) -> bytes:
    """The heartbeat record of ``worker`` now."""
    counters = worker.counters
    held = [(ref.handler, ref.thread, loop, since) for ref, (loop, since) in list(worker.held.items())]
    record = WorkerInfo(
        worker.id,
        list(worker.handlers),
        worker.running_loops,
        counters.performed,
        counters.failed,
        counters.dead_lettered,
        held,
    )
    return msgspec.json.encode(record, order="deterministic")


async def collect_workers(storage: Storage) -> tuple[float, list[WorkerInfo]]:
    """The storage server's time (seconds) and every live worker, in one round trip."""
    now, raws = await storage.worker_records()
    workers = []
    for raw in raws:
        try:
            info = msgspec.json.decode(raw.record, type=WorkerInfo)
        except msgspec.DecodeError:  # written by another version: show what is certain
            info = WorkerInfo(raw.worker_id, [], 0, 0, 0, 0, [])
        workers.append(msgspec.structs.replace(info, started_at=raw.started_at, heartbeat_at=raw.beat_at))
    workers.sort(key=lambda info: info.started_at)
    return now, workers


def workers_frame(workers: list[WorkerInfo]) -> pd.DataFrame:
    """Workers as a DataFrame with the columns of `WORKER_COLUMNS` (``held`` as ``handler/thread``)."""
    require_pandas("Queue.workers()")
    import pandas as pd

    rows = [
        [
            [f"{handler}/{thread}" for handler, thread, _, _ in info.held] if name == "held" else getattr(info, name)
            for name in WORKER_COLUMNS
        ]
        for info in workers
    ]
    return pd.DataFrame(rows, columns=list(WORKER_COLUMNS))


class Presence:
    """Keeps one worker's record in the registry while any of its loops runs.

    Args:
        worker: The worker's state, which the record is made of.
        storage: Where the registry is.
        settings: For ``lease_ttl``: the record lives that long, renewed every third of it.
        health: Where storage failures are reported.
        companion: Run alongside the heartbeat, from the first loop's start until
            the last one returns, given the event that is set then (a sampler).
    """

    def __init__(
        self,
        worker: WorkerState,
        storage: Storage,
        settings: Settings,
        health: StorageHealth,
        companion: Callable[[asyncio.Event], Awaitable[None]] | None = None,
    ) -> None:
        self.worker = worker
        self.storage = storage
        self.settings = settings
        self.health = health
        self.companion = companion
        self._tasks: list[asyncio.Task[None]] = []
        self._stop = asyncio.Event()

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """Count one running loop; the first starts the heartbeat, the last removes the record."""
        worker = self.worker
        worker.running_loops += 1
        if not self._tasks:
            self._stop = asyncio.Event()
            self._tasks.append(asyncio.create_task(self._beat(self._stop)))
            if self.companion is not None:
                self._tasks.append(asyncio.create_task(_run(self.companion, self._stop)))
        try:
            yield
        finally:
            worker.running_loops -= 1
            if worker.running_loops == 0:
                await self._leave()

    async def _leave(self) -> None:
        tasks, self._tasks = self._tasks, []
        self._stop.set()  # also ends them should a client library swallow their cancellation
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)  # unlike awaiting them, never swallows our own cancellation
        for task in tasks:
            if not task.cancelled() and task.exception() is not None:
                logger.error("worker %s: %s failed", self.worker.id, task.get_coro(), exc_info=task.exception())
        worker = self.worker
        try:  # bounded: on a stop while Redis is down, the record expires by itself
            async with asyncio.timeout(self.settings.storage_timeout):
                await self.storage.remove_worker(worker.id)
        except (StorageError, TimeoutError) as exc:  # it expires by itself
            logger.debug("worker %s could not remove its record: %s", worker.id, exc)
        counters = worker.counters
        logger.info(
            "worker %s stopped: performed %d, failed attempts %d, dead-lettered %d",
            worker.id,
            counters.performed,
            counters.failed,
            counters.dead_lettered,
        )

    async def _beat(self, stop: asyncio.Event) -> None:
        worker = self.worker
        storage = self.storage
        logger.info(
            "worker %s started: handlers %s, %d loops, storage %s",
            worker.id,
            ", ".join(worker.handlers),
            worker.running_loops,
            storage.location,
        )
        while not stop.is_set():
            ttl = self.settings.lease_ttl
            try:
                _, worker.peers = await storage.beat_worker(worker.id, encode_record(worker), ttl, worker.handlers)
            except StorageError as exc:  # retried at the next beat
                self.health.failed(exc)
            else:
                self.health.answered()
            await wait_or_stop(stop, ttl / 3)


async def _run(companion: Callable[[asyncio.Event], Awaitable[None]], stop: asyncio.Event) -> None:
    await companion(stop)


async def wait_or_stop(stop: asyncio.Event, seconds: float) -> None:
    """Sleep ``seconds``, or less once ``stop`` is set."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)
