"""The worker registry: who is working, on what, since when.

Each running `Worker` keeps a heartbeat record in storage (keys in
`sharded_queue.storage`): its id (``host:pid-suffix``), handlers, running
loops, counters and held threads, renewed every third of ``lease_ttl`` and
living ``lease_ttl`` without renewal. A worker whose loops all return deletes
its record at once; a killed one disappears when the record expires. Record
times (``started_at``, ``heartbeat_at``) are the storage server's clock.

A lease token names its holder, ``<worker id>:<loop>@<since ms>/<random>``, so
inspection shows which loop holds a thread and since when. ``since`` is the
holder's own clock: it is shown, never compared.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import msgspec

from .errors import StorageError
from .storage import Storage

if TYPE_CHECKING:
    import pandas as pd

    from .worker import Worker

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


def lease_token(holder: str, since: float) -> str:
    """A lease token naming ``holder`` (worker id and loop) and when it took the lease (its clock)."""
    return f"{holder}@{int(since * 1000)}/{secrets.token_hex(8)}"


def parse_lease_token(token: str) -> tuple[str, float | None]:
    """``(holder, since)`` of a lease token; a token of another format is its own holder."""
    named, slash, _ = token.rpartition("/")
    holder, at, since = named.rpartition("@")
    if not (slash and at and since.isdigit()):
        return token, None
    return holder, int(since) / 1000


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


def encode_record(worker: Worker) -> bytes:
    """The heartbeat record of ``worker`` now."""
    counters = worker.counters
    held = [(ref.handler, ref.thread, loop, since) for ref, (loop, since) in list(worker.held.items())]
    record = WorkerInfo(
        worker.id,
        list(worker.specs),
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
    """Keeps one worker's record in the registry while any of its loops runs."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self._task: asyncio.Task[None] | None = None
        self._sampler: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """Count one running loop; the first starts the heartbeat, the last removes the record."""
        worker = self.worker
        worker.running_loops += 1
        if self._task is None:
            self._stop = asyncio.Event()
            self._task = asyncio.create_task(self._beat(self._stop))
            if worker.metrics is not None:
                sample = worker.metrics.sample(worker.queue.storage, list(worker.specs), self._stop)
                self._sampler = asyncio.create_task(sample)
        try:
            yield
        finally:
            worker.running_loops -= 1
            if worker.running_loops == 0:
                await self._leave()

    async def _leave(self) -> None:
        tasks = [task for task in (self._task, self._sampler) if task is not None]
        self._task = self._sampler = None
        self._stop.set()  # also ends them should a client library swallow their cancellation
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)  # unlike awaiting them, never swallows our own cancellation
        for task in tasks:
            if not task.cancelled() and task.exception() is not None:
                logger.error("worker %s: %s failed", self.worker.id, task.get_coro(), exc_info=task.exception())
        worker = self.worker
        try:
            await worker.queue.storage.remove_worker(worker.id)
        except StorageError as exc:  # it expires by itself
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
        storage = worker.queue.storage
        logger.info(
            "worker %s started: handlers %s, %d loops, storage %s",
            worker.id,
            ", ".join(worker.specs),
            worker.running_loops,
            storage.location,
        )
        handlers = list(worker.specs)
        while not stop.is_set():
            ttl = worker.settings.lease_ttl
            try:
                _, worker.peers = await storage.beat_worker(worker.id, encode_record(worker), ttl, handlers)
            except StorageError as exc:  # retried at the next beat
                worker.health.failed(exc)
            else:
                worker.health.answered()
            await wait_or_stop(stop, ttl / 3)


async def wait_or_stop(stop: asyncio.Event, seconds: float) -> None:
    """Sleep ``seconds``, or less once ``stop`` is set."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)
