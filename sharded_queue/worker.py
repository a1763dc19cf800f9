"""`Worker`: the asyncio shell that runs `core.worker_program` against Redis.

Each `Worker.loop` drives one program: every effect it yields is carried out
here (a storage call, a handler call or a wait) and the result is sent back.
The decisions themselves (which thread, how big a batch, when to release,
retry, bisect) live in `sharded_queue.core`, shared with the simulator.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import random
import secrets
import signal
import socket
import time
import warnings
from collections.abc import AsyncIterator, Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from .core import (
    Control,
    Effect,
    LoopPolicy,
    ThreadRef,
    answers,
    worker_program,
)
from .errors import StorageError
from .handler import Handler, HandlerSpec
from .health import StorageHealth
from .loop import Loop
from .meter import RunMeter
from .queue import Queue
from .registry import Counters, Presence, WorkerState, wait_or_stop
from .settings import Settings
from .stats import collect_stats
from .storage import Storage
from .telemetry import Telemetry, resolve_telemetry
from .trace import TraceRecorder, save_trace
from .waking import Wakeups

if TYPE_CHECKING:
    from .metrics import Metrics

logger = logging.getLogger("sharded_queue")

T = TypeVar("T")
_loop_ids = itertools.count(1)


class Worker:
    """Performs registered requests, thread by thread, batch by batch.

    Args:
        queue: The queue whose storage to work on.
        handlers: Handler classes to run; default: those ``queue`` has registered.
            Tubes of other handlers are never touched (their names are never
            imported or resolved).
        settings: Settings to use instead of the queue's.
        trace: Record one row per performed message (see `Worker.trace`).
        metrics: Export Prometheus metrics into this `Metrics` (off by default).
        observer: Called as ``observer(effect, result)`` after each effect a loop
            carried out (`sharded_queue.core`), in the loop's task: for
            instruments that time the library per effect. Off by default.
        telemetry: A span per ``perform`` call, linked to its requests' register
            spans (`sharded_queue.otel`, the ``otel`` extra): True, False, a
            `sharded_queue.otel.OpenTelemetry`, or None to do as ``queue`` does.

    While any of its loops runs, a worker keeps a heartbeat record in storage
    under `id` (see `Queue.workers`), and its loops' leases name it.

    Raises:
        ImportError: telemetry is on and the ``otel`` extra is not installed.
        ValueError: no handlers (none given and none registered through ``queue``).
        TypeError: a handler's methods are not coroutine functions, or its
            ``route`` is not a classmethod.
    """

    def __init__(
        self,
        queue: Queue,
        handlers: Sequence[type[Handler]] | None = None,
        *,
        settings: Settings | None = None,
        trace: bool = False,
        metrics: Metrics | None = None,
        observer: Callable[[Effect, Any], None] | None = None,
        telemetry: bool | Telemetry | None = None,
    ) -> None:
        self.queue = queue
        self.observer = observer
        self.settings = settings or queue.settings
        chosen = list(handlers) if handlers is not None else queue.handlers
        if not chosen:
            raise ValueError("Worker has no handlers: register requests through this queue or pass handlers=[...]")
        self.specs: dict[str, HandlerSpec] = {}
        for handler in chosen:
            spec = queue.spec(handler)
            self.specs[spec.name] = spec
        if queue.storage.embedded_default and not queue.handlers:
            warnings.warn(
                f"Worker on the embedded in-process storage (no URL and no QUEUE_STORAGE_URL), but this Queue "
                f"registered nothing: only registrations made in this process can reach it, so nothing will arrive "
                f"for {', '.join(self.specs)} from anywhere else. Give Queue a redis:// URL or set QUEUE_STORAGE_URL.",
                stacklevel=2,
            )
        self.metrics = metrics
        self.telemetry = queue.telemetry if telemetry is None else resolve_telemetry(telemetry, self.settings)
        self.control = Control()
        self.stopped = asyncio.Event()  # set with control.stopping: ends waits that must not outlast a stop
        self.forced: signal.Signals | None = None  # the second signal of `serve`, which cancelled the loops
        self._running: set[Loop] = set()
        self.recorder = TraceRecorder() if trace else None
        self.meter = RunMeter(queue.storage) if trace else None  # what calibrating the twin needs
        self._metered = 0
        self.wakeups = Wakeups(self.answers)
        self._loops: set[asyncio.Task[Any]] = set()
        self.identity = f"{socket.gethostname()}:{os.getpid()}"
        self.health = StorageHealth(queue.storage.primaries)
        self.id = f"{self.identity}-{secrets.token_hex(3)}"  # pids are reused, hosts cloned
        self.state = WorkerState(self.id, list(self.specs))
        sampler = self._sample_metrics if metrics is not None else None
        self._presence = Presence(self.state, queue.storage, self.settings, self.health, sampler)

    @property
    def storage(self) -> Storage:
        """The queue's storage."""
        return self.queue.storage

    @property
    def counters(self) -> Counters:
        """What this worker did since it was created."""
        return self.state.counters

    @property
    def held(self) -> dict[ThreadRef, tuple[int, float]]:
        """Threads bound by this worker's loops: loop number, since when (this worker's clock)."""
        return self.state.held

    @property
    def running_loops(self) -> int:
        """Loops running now."""
        return self.state.running_loops

    @property
    def peers(self) -> list[str]:
        """Live workers' ids at the last heartbeat: wake-ups are shared out among them."""
        return self.state.peers

    @property
    def ready_loops(self) -> int:
        """How many loops are running and have asked the coordinator at least once (idle or holding a thread)."""
        return self.wakeups.ready

    def policy(self) -> LoopPolicy:
        """The loop policy from current settings and the handlers' overrides."""
        return LoopPolicy.for_handlers(self.settings, {name: spec.handler for name, spec in self.specs.items()})

    async def loop(self, limit: int | None = None) -> int:
        """Perform messages until ``limit`` were taken off the queue, or forever.

        Several loops of one worker run concurrently, each bound to its own
        thread. Returns how many messages this loop took (performed or
        dead-lettered). Cancelling the loop leaves its unacked batch at the
        head of its tube for the next holder.
        """
        if limit is not None and limit < 0:
            raise ValueError(f"limit must be >= 0 or None, got {limit}")
        program = worker_program(self.policy(), limit, random.Random(), self.control)
        listening = self.wakeups.listening(self.queue.storage, self.health, self.settings.storage_timeout)
        async with self._presence.running(), listening, self._metering():
            loop = Loop(self, next(_loop_ids))
            self._running.add(loop)
            try:
                return await loop.run(program)
            finally:
                self._running.discard(loop)

    async def serve(self, loops: int = 1, limit: int | None = None, *, burst: bool = False) -> int:
        """Run ``loops`` loops until they reach ``limit`` each, or a signal, or `stop`.

        On the first SIGTERM or SIGINT every loop finishes and acks the batch in
        hand, calls ``stop()``, releases its thread and returns (while Redis is
        down, idle loops return at once and a loop gives its batch up: it is
        performed again by the next holder); on a second one the loops are
        cancelled at once (their unacked batches are performed again by the next
        holder) and `forced` names the signal. Returns how many messages the
        loops took.

        Args:
            loops: Concurrent loops.
            limit: Messages per loop, or None for no limit.
            burst: Stop once no message of the worker's handlers waits in storage
                (checked every ``coordinator_delay``, at most every 0.5 s).

        Raises:
            StorageError: with ``burst``, the storage failed for longer than
                ``storage_timeout`` (the loops were stopped first).
        """
        event_loop = asyncio.get_running_loop()
        tasks = [asyncio.create_task(self.loop(limit)) for _ in range(loops)]
        watcher = asyncio.create_task(self._stop_when_empty()) if burst else None
        signals = 0

        def on_signal(sig: signal.Signals) -> None:
            nonlocal signals
            signals += 1
            logger.warning("signal received: %s", "stopping gracefully" if signals == 1 else "cancelling loops")
            if signals == 1:
                self.stop()
            else:
                self.forced = sig
                for task in tasks:
                    task.cancel()

        for sig in (signal.SIGTERM, signal.SIGINT):
            event_loop.add_signal_handler(sig, on_signal, sig)
        try:
            results = await asyncio.gather(*tasks, return_exceptions=True)
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                event_loop.remove_signal_handler(sig)
            if watcher is not None:
                watcher.cancel()
                await asyncio.wait([watcher])
        failures = [r for r in results if isinstance(r, BaseException) and not isinstance(r, asyncio.CancelledError)]
        if watcher is not None and not watcher.cancelled() and watcher.exception() is not None:
            failures.insert(0, watcher.exception())  # type: ignore[arg-type]
        if failures:
            raise failures[0]
        return sum(r for r in results if isinstance(r, int))

    async def _stop_when_empty(self) -> None:
        """`stop` once no message of this worker's handlers waits (``serve(burst=True)``).

        Raises:
            StorageError: the storage failed for longer than ``storage_timeout`` (after `stop`).
        """
        storage = self.queue.storage
        pause = min(max(self.settings.coordinator_delay, 0.01), 0.5)
        failing_since: float | None = None
        while True:
            try:
                waiting = [await storage.pending(name) for name in self.specs]
            except StorageError as exc:  # the loops retry and report outages; check again later
                logger.debug("burst: could not count waiting messages: %s", exc)
                failing_since = failing_since or time.monotonic()
                if time.monotonic() - failing_since > self.settings.storage_timeout:
                    self.stop()
                    raise StorageError(
                        f"burst: storage failing for over {self.settings.storage_timeout:g} s: {exc}"
                    ) from exc
            else:
                failing_since = None
                if not any(waiting):
                    logger.info("worker %s: no message waits for its handlers; stopping (burst)", self.id)
                    self.stop()
                    return
            await asyncio.sleep(pause)

    def stop(self) -> None:
        """Ask every loop to finish its batch, ack it, release its thread and return.

        A loop waiting on the storage (down, or paused) returns at once, unless its call
        acks a performed batch: that one gets ``storage_timeout`` more, then it gives the
        batch up too (performed again by the thread's next holder).
        """
        self.control.stopping = True
        self.stopped.set()
        self.wakeups.wake_all()
        for loop in list(self._running):
            loop.interrupt()
        try:
            event_loop = asyncio.get_running_loop()
        except RuntimeError:  # stopped from outside any event loop: no later deadline to set
            return
        event_loop.call_later(self.settings.storage_timeout, self._interrupt_all)

    def _interrupt_all(self) -> None:
        for loop in list(self._running):
            loop.interrupt(force=True)

    def answers(self, thread: ThreadRef) -> bool:
        """Whether this worker answers ``thread``'s wake-ups (`core.answers`)."""
        return answers(self.peers, self.id, thread)

    async def _sample_metrics(self, stop: asyncio.Event) -> None:
        """Hand the metrics the handlers' depth and lag every ``sample_interval`` until ``stop``."""
        metrics = self.metrics
        assert metrics is not None
        handlers = list(self.specs)
        metrics.declare(handlers)
        while not stop.is_set():
            try:
                rows = await collect_stats(self.queue.storage, handlers, limit=0)  # the totals: O(1) each
            except StorageError as exc:  # the loops report outages; keep the last values
                logger.debug("metrics: sampling depth and lag failed: %s", exc)
            else:
                for row in rows:
                    if row.thread is None:  # the handler's total
                        metrics.record_backlog(row.handler, row.depth, row.lag)
            await wait_or_stop(stop, metrics.sample_interval)

    def trace(self) -> Any:
        """The recorded trace as a pandas DataFrame (schema in `sharded_queue.trace`), with what
        this process measured of its run in ``attrs["meter"]`` (`sharded_queue.meter`)."""
        if self.recorder is None or self.meter is None:
            raise RuntimeError("this worker does not record: create it with Worker(queue, trace=True)")
        frame = self.recorder.frame()
        frame.attrs["meter"] = [self.meter.summary()]
        return frame

    def save_trace(self, path: str) -> None:
        """Write the recorded trace and what was measured to ``path`` as JSON (`trace.load_trace` reads it)."""
        if self.recorder is None or self.meter is None:
            raise RuntimeError("this worker does not record: create it with Worker(queue, trace=True)")
        save_trace(path, self.recorder.columns, [self.meter.summary()])

    @contextlib.asynccontextmanager
    async def _metering(self) -> AsyncIterator[None]:
        """Measure the run (`RunMeter`) from the first loop's start to the last one's end, when tracing."""
        meter = self.meter
        if meter is None:
            yield
            return
        self._metered += 1
        meter.loops = max(meter.loops, self._metered)
        if self._metered == 1:
            await meter.start()
        try:
            yield
        finally:
            self._metered -= 1
            if self._metered == 0:
                await meter.stop()

    def __repr__(self) -> str:
        counters, settings = self.counters, self.settings
        return (
            f"<Worker {self.id}: {self.running_loops} loops running, {len(self.held)} threads held; "
            f"performed {counters.performed}, failed attempts {counters.failed}, dead-lettered "
            f"{counters.dead_lettered}; handlers {', '.join(self.specs) or '-'}; storage "
            f"{self.queue.storage.location}; worker_batch_size {settings.worker_batch_size}, "
            f"coordinator_delay {settings.coordinator_delay:g} s>"
        )
