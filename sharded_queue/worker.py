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
import math
import os
import random
import secrets
import signal
import socket
import time
import traceback
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from .core import (
    CANDIDATES_PER_HANDLER,
    LOST,
    Ack,
    Acquire,
    Batch,
    Begin,
    Control,
    Cycle,
    Effect,
    End,
    Envelopes,
    Fire,
    LoopPolicy,
    Lost,
    MoveDue,
    Perform,
    Poll,
    PollResult,
    Program,
    ThreadRef,
    Wait,
    answers,
    enqueued_times,
    wake_targets,
    worker_program,
)
from .deadletters import DeadLetterRecord
from .errors import StorageError
from .handler import Handler, HandlerSpec
from .health import StorageHealth
from .leases import lease_token
from .queue import Queue
from .registry import Counters, Presence, WorkerState, wait_or_stop
from .settings import Settings
from .stats import collect_stats
from .storage import raise_if_cancelled
from .trace import CpuTimed, TraceRecorder

if TYPE_CHECKING:
    from .metrics import Metrics

logger = logging.getLogger("sharded_queue")

T = TypeVar("T")
_loop_ids = itertools.count(1)


class Waker:
    """One loop's wake-up: a wake between arming and waiting is not lost."""

    def __init__(self) -> None:
        self._future: asyncio.Future[None] | None = None

    def arm(self) -> None:
        """Take a fresh wake-up *before* looking for work, so none that follows is missed."""
        if self._future is None or self._future.done():
            self._future = asyncio.get_running_loop().create_future()

    @property
    def woken(self) -> bool:
        """Woken since it was last armed: the loop is on its way to a poll."""
        return self._future is not None and self._future.done()

    def wake(self) -> None:
        """End the current (or next) wakeable wait early."""
        if self._future is not None and not self._future.done():
            self._future.set_result(None)

    async def wait(self, seconds: float, wakeable: bool = True) -> None:
        """Sleep ``seconds``, or less if woken (when ``wakeable``)."""
        if not wakeable or self._future is None:
            await asyncio.sleep(seconds)
            return
        # asyncio.wait, not wait_for: Python 3.11's wait_for returns normally when
        # cancelled just as its future completes, swallowing the cancellation
        await asyncio.wait({self._future}, timeout=seconds)


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

    While any of its loops runs, a worker keeps a heartbeat record in storage
    under `id` (see `Queue.workers`), and its loops' leases name it.

    Raises:
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
        self.control = Control()
        self.recorder = TraceRecorder() if trace else None
        self._bound: dict[ThreadRef, Waker] = {}  # loops holding a thread, by thread
        self._idle: dict[Waker, None] = {}  # loops polling or waiting for work (not performing)
        self._listeners = 0
        self._listener: asyncio.Task[None] | None = None
        self._subscribed = asyncio.Event()
        self._loops: set[asyncio.Task[Any]] = set()
        self.identity = f"{socket.gethostname()}:{os.getpid()}"
        self.health = StorageHealth()
        self.id = f"{self.identity}-{secrets.token_hex(3)}"  # pids are reused, hosts cloned
        self.state = WorkerState(self.id, list(self.specs))
        sampler = self._sample_metrics if metrics is not None else None
        self._presence = Presence(self.state, queue.storage, self.settings, self.health, sampler)

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
        return len(self._idle) + len(self._bound)

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
        async with self._presence.running(), self._listening():
            return await _Loop(self, next(_loop_ids)).run(program)

    async def serve(self, loops: int = 1, limit: int | None = None, *, burst: bool = False) -> int:
        """Run ``loops`` loops until they reach ``limit`` each, or a signal, or `stop`.

        On the first SIGTERM or SIGINT every loop finishes and acks the batch in
        hand, calls ``stop()``, releases its thread and returns; on a second one
        the loops are cancelled at once (their unacked batches are performed
        again by the next holder). Returns how many messages the loops took.

        Args:
            loops: Concurrent loops.
            limit: Messages per loop, or None for no limit.
            burst: Stop once no message of the worker's handlers waits in storage
                (checked every ``coordinator_delay``, at most every 0.5 s).
        """
        event_loop = asyncio.get_running_loop()
        tasks = [asyncio.create_task(self.loop(limit)) for _ in range(loops)]
        watcher = asyncio.create_task(self._stop_when_empty()) if burst else None
        signals = 0

        def on_signal() -> None:
            nonlocal signals
            signals += 1
            logger.warning("signal received: %s", "stopping gracefully" if signals == 1 else "cancelling loops")
            if signals == 1:
                self.stop()
            else:
                for task in tasks:
                    task.cancel()

        for sig in (signal.SIGTERM, signal.SIGINT):
            event_loop.add_signal_handler(sig, on_signal)
        try:
            results = await asyncio.gather(*tasks, return_exceptions=True)
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                event_loop.remove_signal_handler(sig)
            if watcher is not None:
                watcher.cancel()
                await asyncio.wait([watcher])
        failures = [r for r in results if isinstance(r, BaseException) and not isinstance(r, asyncio.CancelledError)]
        if failures:
            raise failures[0]
        return sum(r for r in results if isinstance(r, int))

    async def _stop_when_empty(self) -> None:
        """`stop` once no message of this worker's handlers waits (``serve(burst=True)``)."""
        storage = self.queue.storage
        pause = min(max(self.settings.coordinator_delay, 0.01), 0.5)
        while True:
            try:
                waiting = [await storage.pending(name) for name in self.specs]
            except StorageError as exc:  # the loops retry and report outages; check again later
                logger.debug("burst: could not count waiting messages: %s", exc)
            else:
                if not any(waiting):
                    logger.info("worker %s: no message waits for its handlers; stopping (burst)", self.id)
                    self.stop()
                    return
            await asyncio.sleep(pause)

    def stop(self) -> None:
        """Ask every loop to finish its batch, ack it, release its thread and return."""
        self.control.stopping = True
        for waker in [*self._bound.values(), *self._idle]:
            waker.wake()

    def _on_wake(self, threads: list[ThreadRef]) -> None:
        """A registration landed: wake the loops `core.wake_targets` names."""
        for waker in wake_targets(threads, self._bound.get, self.answers, self._unwoken()):
            waker.wake()

    def _wake_idle(self) -> None:
        """Wake the oldest idle loop not woken yet (`core.Acquire.wake_next`)."""
        waker = next(self._unwoken(), None)
        if waker is not None:
            waker.wake()

    def _unwoken(self) -> Iterator[Waker]:
        """The idle loops' wakers not woken yet, oldest first."""
        return (waker for waker in list(self._idle) if not waker.woken)

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
                rows = await collect_stats(self.queue.storage, handlers)
            except StorageError as exc:  # the loops report outages; keep the last values
                logger.debug("metrics: sampling depth and lag failed: %s", exc)
            else:
                for row in rows:
                    if row.thread is None:  # the handler's total
                        metrics.record_backlog(row.handler, row.depth, row.lag)
            await wait_or_stop(stop, metrics.sample_interval)

    def trace(self) -> Any:
        """The recorded trace as a pandas DataFrame (schema in `sharded_queue.trace`)."""
        if self.recorder is None:
            raise RuntimeError("this worker does not record: create it with Worker(queue, trace=True)")
        return self.recorder.frame()

    def __repr__(self) -> str:
        counters, settings = self.counters, self.settings
        return (
            f"<Worker {self.id}: {self.running_loops} loops running, {len(self.held)} threads held; "
            f"performed {counters.performed}, failed attempts {counters.failed}, dead-lettered "
            f"{counters.dead_lettered}; handlers {', '.join(self.specs) or '-'}; storage "
            f"{self.queue.storage.location}; worker_batch_size {settings.worker_batch_size}, "
            f"coordinator_delay {settings.coordinator_delay:g} s>"
        )

    @contextlib.asynccontextmanager
    async def _listening(self) -> AsyncIterator[None]:
        """Keep one wake-up subscription open while any loop of this worker runs."""
        self._listeners += 1
        if self._listener is None:
            self._subscribed = asyncio.Event()
            self._listener = asyncio.create_task(self._listen(self._subscribed))
        try:
            with contextlib.suppress(TimeoutError):  # without wake-ups loops still poll every coordinator_delay
                async with asyncio.timeout(self.settings.storage_timeout):
                    await self._subscribed.wait()
            yield
        finally:
            self._listeners -= 1
            if self._listeners == 0 and self._listener is not None:
                listener, self._listener = self._listener, None
                listener.cancel()
                await asyncio.wait({listener})  # never swallows a cancellation of this task

    async def _listen(self, ready: asyncio.Event) -> None:
        storage = self.queue.storage
        while True:
            try:
                await storage.listen_wake(self._on_wake, ready.set)
            except StorageError as exc:  # loops still work without wake-ups, on coordinator_delay
                self.health.failed(exc)
            except Exception as exc:  # never let wake-ups die: loops would fall back to polling
                logger.warning("wake-up subscription failed, retrying: %r", exc)
            raise_if_cancelled(asyncio.current_task())
            ready.set()
            await asyncio.sleep(1.0)


class _Loop:
    """One running loop: carries out the effects of one worker program."""

    def __init__(self, worker: Worker, number: int) -> None:
        self.worker = worker
        self.storage = worker.queue.storage
        self.settings = worker.settings
        self.number = number
        self.name = f"{worker.id}:{number}"
        self.since = 0.0
        self.rng = random.Random()
        self.waker = Waker()
        self.bound: ThreadRef | None = None
        self.token = ""
        self.instance: Handler | None = None
        self.heartbeat: asyncio.Task[None] | None = None
        self.raw: list[bytes] = []
        self.batch_order = ""
        self.seq = 0

    async def run(self, program: Program) -> int:
        result: Any = None
        task = asyncio.current_task()
        assert task is not None
        observer = self.worker.observer
        try:
            while True:
                try:
                    effect = program.send(result)
                except StopIteration as stop:
                    return int(stop.value)
                result = await self.execute(effect)
                raise_if_cancelled(task)
                if observer is not None:
                    observer(effect, result)
        finally:
            self.worker._idle.pop(self.waker, None)
            try:
                if self.bound is not None:  # cancelled or failed while bound: unacked batch stays
                    await asyncio.shield(self._end())
            finally:
                program.close()

    async def execute(self, effect: Effect) -> Any:
        if not isinstance(effect, Poll | Wait | Acquire):  # busy: wake-ups must go to another loop
            self.worker._idle.pop(self.waker, None)
        match effect:
            case Cycle():
                return await self._cycle(effect)
            case Perform():
                return await self._perform(effect)
            case Poll():
                self.waker.arm()
                self.worker._idle[self.waker] = None
                return await self._poll()
            case Acquire():
                return await self._acquire(effect)
            case Wait(seconds, wakeable):
                await self.waker.wait(seconds, wakeable)
                return None
            case Begin(thread):
                return await self._begin(thread)
            case End():
                await self._end()
                return None
            case MoveDue(thread):
                return await self._retrying(lambda: self.storage.move_due(thread))
            case Fire(thread, ticks):
                return await self._retrying(lambda: self.storage.fire(thread, ticks))
        raise TypeError(f"unknown effect {effect!r}")  # pragma: no cover

    async def _poll(self) -> PollResult:
        """The coordinator's candidates, and the threads with requests due."""
        handlers = list(self.worker.specs)
        return await self._retrying(lambda: self.storage.candidates(handlers, CANDIDATES_PER_HANDLER))

    async def _acquire(self, effect: Acquire) -> bool:
        token = lease_token(self.name, since := time.time())  # names the holder, for inspection
        ttl = self.settings.lease_ttl
        if not await self._retrying(lambda: self.storage.acquire(effect.thread, token, ttl)):
            return False
        self.token = token
        self.worker._idle.pop(self.waker, None)
        self.since = since
        if effect.wake_next:
            self.worker._wake_idle()
        return True

    async def _begin(self, thread: ThreadRef) -> bool:
        self.bound = thread
        self.worker._bound[thread] = self.waker
        self.worker.held[thread] = (self.number, self.since)
        logger.debug("%s bound %s/%s", self.name, thread.handler, thread.thread)
        self.seq = 0
        self.heartbeat = asyncio.create_task(self._heartbeat(thread, self.token))
        self.instance = self.worker.specs[thread.handler].handler()
        try:
            await self.instance.start()
        except Exception:
            logger.exception("%s start() failed on thread %s; thread released", thread.handler, thread.thread)
            self.instance = None  # End releases the thread without stop()
            return False
        return True

    async def _end(self) -> None:
        thread, self.bound = self.bound, None
        if thread is None:
            return
        self.worker._bound.pop(thread, None)
        self.worker.held.pop(thread, None)
        if self.heartbeat is not None:
            self.heartbeat.cancel()
            await asyncio.wait({self.heartbeat})  # never swallows a cancellation of this loop
        try:
            if self.instance is not None:
                await self.instance.stop()
        except Exception:
            logger.exception("%s stop() failed on thread %s", thread.handler, thread.thread)
        finally:
            self.instance = None
            try:
                await self.storage.release(thread, self.token)
            except StorageError as exc:  # the lease expires by itself
                logger.warning("could not release thread %s/%s: %s", thread.handler, thread.thread, exc)
            logger.debug("%s released %s/%s", self.name, thread.handler, thread.thread)

    async def _heartbeat(self, thread: ThreadRef, token: str) -> None:
        ttl = self.settings.lease_ttl
        health = self.worker.health
        while True:
            await asyncio.sleep(ttl / 3)
            try:
                renewed = await self.storage.renew(thread, token, ttl)
            except StorageError as exc:
                health.failed(exc)
                continue
            finally:  # a client may turn the cancellation at `_end` into an error or a reply
                raise_if_cancelled(asyncio.current_task())
            health.answered()
            if not renewed:
                logger.warning("lease of %s/%s lost; its batch will not be acked", thread.handler, thread.thread)
                return

    async def _cycle(self, effect: Cycle) -> Batch | Lost | None:
        thread, ack = effect.thread, effect.ack
        dead = self._dead_records(thread, ack) if ack is not None and ack.dead else []
        if ack is not None:
            self.seq += 1
        seq = self.seq
        self.waker.arm()
        reply = await self._retrying(
            lambda: self.storage.cycle(thread, self.token, self.settings.lease_ttl, ack, seq, dead, effect.limit)
        )
        if reply is False:
            logger.warning("lease of %s/%s lost: batch not acked, thread left", thread.handler, thread.thread)
            return LOST
        if ack is not None and ack.dead:
            self._dead_lettered(thread, ack)
        if reply is None:
            return None
        assert isinstance(reply, tuple)
        order, self.raw, losses = reply
        self.batch_order = order
        return self._decode(thread, order, self.raw, losses)

    def _decode(self, thread: ThreadRef, order: str, payloads: list[bytes], losses: int) -> Batch:
        messages, bad = self.worker.specs[thread.handler].codec.decode_batch(payloads)
        return Batch(order, len(payloads), messages, bad, losses)  # bad ones are logged once dead-lettered

    def _dead_lettered(self, thread: ThreadRef, ack: Ack) -> None:
        """The ack moved ``ack.dead`` to the dead letters: log each, count them."""
        for dead in ack.dead:
            logger.error(
                "dead letter: %s thread %s order %s: %s: %s (after %d attempts)",
                thread.handler,
                thread.thread,
                ack.order,
                type(dead.error).__qualname__,
                dead.error,
                dead.attempts,
            )
        self.worker.counters.dead_lettered += len(ack.dead)
        if self.worker.metrics is not None:
            self.worker.metrics.record_dead_letters(thread.handler, len(ack.dead))

    async def _perform(self, effect: Perform) -> BaseException | None:
        assert self.instance is not None
        worker = self.worker
        handler = effect.thread.handler
        messages = effect.messages
        timeout = effect.timeout
        started = time.time()
        deadline = asyncio.timeout(timeout if timeout < math.inf else None)
        timed: CpuTimed | None = None
        try:
            requests = messages.requests() if isinstance(messages, Envelopes) else [m.request for m in messages]
            async with deadline:
                if worker.recorder is None:
                    await self.instance.perform(*requests)
                else:  # tracing: count perform's own CPU time too
                    timed = CpuTimed(self.instance.perform(*requests))
                    await timed
        except Exception as exc:
            error = exc
            if isinstance(exc, TimeoutError) and deadline.expired():
                error = TimeoutError(f"perform did not finish within {timeout:g} s and was cancelled")
                error.__cause__ = exc
            logger.warning("%s.perform failed on thread %s: %r", handler, effect.thread.thread, error)
            worker.counters.failed += 1
            if worker.metrics is not None:
                worker.metrics.record_failure(handler, started, time.time())
            return error
        worker.counters.performed += len(messages)
        if worker.metrics is not None or worker.recorder is not None:
            finished = time.time()
            if worker.metrics is not None:
                worker.metrics.record_batch(handler, len(messages), enqueued_times(messages), started, finished)
            if worker.recorder is not None:
                cpu = timed.cpu if timed is not None else float("nan")
                worker.recorder.record(effect.thread, self.batch_order, self.name, messages, started, finished, cpu)
        return None

    def _dead_records(self, thread: ThreadRef, ack: Ack) -> list[bytes]:
        now = time.time()
        return [
            DeadLetterRecord(
                handler=thread.handler,
                thread=thread.thread,
                order=ack.order,
                payload=self.raw[dead.index],
                error_type=type(dead.error).__qualname__,
                error=str(dead.error),
                traceback="".join(traceback.format_exception(dead.error)),
                attempts=dead.attempts,
                failed_at=now,
            ).encode()
            for dead in ack.dead
        ]

    async def _retrying(self, call: Callable[[], Awaitable[T]]) -> T:
        """Run a storage call until it succeeds, backing off while Redis is down (logged once)."""
        health = self.worker.health
        for attempt in itertools.count(1):
            try:
                result = await call()
            except StorageError as exc:
                raise_if_cancelled(asyncio.current_task())  # the failure may be a cancellation a client turned
                health.failed(exc)
                await asyncio.sleep(self.worker.policy().backoff(min(attempt, 30), self.rng))
                continue
            if health.failing_since is not None:
                health.answered()
            return result
        raise AssertionError("unreachable")  # pragma: no cover
