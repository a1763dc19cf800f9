"""`Loop`: one worker loop, carrying out the effects of `core.worker_program` against Redis.

Every effect the program yields is carried out here (a storage call, a handler
call or a wait) and its result is sent back. The decisions themselves live in
`sharded_queue.core`, shared with the simulator.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import math
import random
import time
import traceback
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

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
    Held,
    LoopPolicy,
    Lost,
    MoveDue,
    Perform,
    Poll,
    PollResult,
    Program,
    Short,
    ThreadRef,
    Wait,
    enqueued_times,
)
from .deadletters import DeadLetterRecord
from .errors import RateLimited, StorageError
from .handler import Handler, HandlerSpec
from .health import StorageHealth
from .leases import lease_token
from .meter import RunMeter
from .registry import Counters
from .serializer import traceparents
from .settings import Settings
from .storage import NO_CONTROLS, CycleControls, Storage, raise_if_cancelled
from .telemetry import Telemetry
from .trace import CpuTimed, TraceRecorder
from .waking import Waker, Wakeups

if TYPE_CHECKING:
    from .metrics import Metrics

logger = logging.getLogger("sharded_queue")

T = TypeVar("T")


class _GaveUp(Exception):
    """A storage call failed during a stop: the loop gives up its batch (redelivered) and returns."""


class LoopHost(Protocol):
    """What a `Loop` uses of the worker it runs in (`sharded_queue.Worker`)."""

    id: str
    settings: Settings
    control: Control
    stopped: asyncio.Event
    specs: dict[str, HandlerSpec]
    health: StorageHealth
    wakeups: Wakeups
    metrics: Metrics | None
    telemetry: Telemetry | None
    recorder: TraceRecorder | None
    meter: RunMeter | None
    observer: Callable[[Effect, Any], None] | None

    @property
    def storage(self) -> Storage:
        """Where the queue is."""

    @property
    def counters(self) -> Counters:
        """What the worker did."""

    @property
    def held(self) -> dict[ThreadRef, tuple[int, float]]:
        """Threads its loops hold."""

    def policy(self) -> LoopPolicy:
        """The loop policy."""


class Loop:
    """One running loop of a `Worker`: carries out the effects of one worker program."""

    def __init__(self, worker: LoopHost, number: int) -> None:
        self.worker = worker
        self.storage = worker.storage
        self.wakeups = worker.wakeups
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
        self.acked = 0  # messages this loop's acks took off tubes
        self.task: asyncio.Task[Any] | None = None
        self.in_call = False  # awaiting a storage call (`_retrying`)
        self.holding = False  # ... that acks a performed batch
        self.interrupted = False  # cancelled by `interrupt` (a stop), not from outside
        self.first_perform: tuple[list[bytes], object] | None = None  # telemetry: a fetched batch's first span

    async def run(self, program: Program) -> int:
        result: Any = None
        task = self.task = asyncio.current_task()
        assert task is not None
        observer = self.worker.observer
        meter = self.worker.meter
        counted = meter.effects if meter is not None else None  # tracing: the storage calls made, by effect
        try:
            while True:
                try:
                    effect = program.send(result)
                except StopIteration as stop:
                    return int(stop.value)
                result = await self.execute(effect)
                raise_if_cancelled(task)
                if counted is not None:
                    name = type(effect).__name__
                    counted[name] = counted.get(name, 0) + 1
                if observer is not None:
                    observer(effect, result)
        except _GaveUp:
            return self.acked
        except asyncio.CancelledError:
            if not self.interrupted:
                raise
            task.uncancel()  # our own stop: return like any stopped loop (after the cleanup below)
            return self.acked
        finally:
            self.wakeups.busy(self.waker)
            try:
                if self.bound is not None:  # cancelled or failed while bound: unacked batch stays
                    await asyncio.shield(self._end())
            finally:
                program.close()

    async def execute(self, effect: Effect) -> Any:
        if not isinstance(effect, Poll | Wait | Acquire):  # busy: wake-ups must go to another loop
            self.wakeups.busy(self.waker)
        match effect:
            case Cycle():
                return await self._cycle(effect)
            case Perform():
                if self.worker.telemetry is not None:
                    return await self._perform_traced(effect, self.worker.telemetry)
                return await self._perform(effect)
            case Poll():
                self.wakeups.polling(self.waker)
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
        self.wakeups.busy(self.waker)
        self.since = since
        if effect.wake_next:
            self.wakeups.wake_next()
        return True

    async def _begin(self, thread: ThreadRef) -> bool:
        self.bound = thread
        self.wakeups.bind(thread, self.waker)
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
        self.wakeups.unbind(thread)
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
            try:  # bounded: on a stop while Redis is down, the lease expires by itself
                async with asyncio.timeout(self.settings.storage_timeout):
                    await self.storage.release(thread, self.token)
            except (StorageError, TimeoutError) as exc:  # the lease expires by itself
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

    def _controls(self, effect: Cycle) -> CycleControls:
        """What the cycle passes of its thread's controls: rate limits, a hold, linger."""
        spec = self.worker.specs[effect.thread.handler]
        if spec.rate is None and spec.thread_rate is None and effect.hold is None and not effect.linger:
            return NO_CONTROLS
        size = spec.handler.batch_size or self.settings.worker_batch_size
        return CycleControls(
            "" if spec.thread_rate is None else spec.thread_rate.argument(size),
            "" if spec.rate is None else spec.rate.argument(size),
            effect.hold,
            effect.linger,
        )

    async def _cycle(self, effect: Cycle) -> Batch | Lost | Held | Short | None:
        thread, ack = effect.thread, effect.ack
        dead = self._dead_records(thread, ack) if ack is not None and ack.dead else []
        if ack is not None:
            self.seq += 1
        seq = self.seq
        self.waker.arm()
        controls = self._controls(effect)
        reply = await self._retrying(
            lambda: self.storage.cycle(
                thread, self.token, self.settings.lease_ttl, ack, seq, dead, effect.limit, controls
            ),
            holding=ack is not None,
        )
        if reply is False:
            logger.warning("lease of %s/%s lost: batch not acked, thread left", thread.handler, thread.thread)
            return LOST
        if ack is not None:
            self.acked += ack.count
            if ack.dead:
                self._dead_lettered(thread, ack)
        if reply is None or isinstance(reply, Held | Short):
            return reply
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
        except RateLimited as exc:  # not a failure: the batch waits at the head of its thread
            logger.info("%s.perform rate limited on thread %s: %s", handler, effect.thread.thread, exc)
            return exc
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
        if logger.isEnabledFor(logging.DEBUG):  # a line per batch, with its fields for --log-format json
            self._log_batch(effect, started)
        return None

    async def _perform_traced(self, effect: Perform, telemetry: Telemetry) -> BaseException | None:
        """`_perform` in a span linked to its requests' register spans and, unless it is the first
        perform of the fetched batch, to the first one's span."""
        raw, first = self.raw, self.first_perform
        link = first[1] if first is not None and first[0] is raw else None
        thread, count, registered = effect.thread, len(effect.messages), traceparents(raw, effect.messages)
        order, attempt = self.batch_order, effect.attempt
        with telemetry.perform(thread.handler, thread.thread, order, count, attempt, registered, link) as span:
            if link is None:
                self.first_perform = (raw, span.link)
            error = await self._perform(effect)
            span.finish(error, effect.final)
        return error

    def _log_batch(self, effect: Perform, started: float) -> None:
        thread, count, duration = effect.thread, len(effect.messages), time.time() - started
        fields = {"handler": thread.handler, "thread": thread.thread, "order": self.batch_order, "batch": count}
        logger.debug(
            "%s performed %d of %s thread %s order %s in %.3f s",
            self.name,
            count,
            thread.handler,
            thread.thread,
            self.batch_order,
            duration,
            extra={"fields": {**fields, "duration": round(duration, 6), "worker": self.name}},
        )

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

    def interrupt(self, force: bool = False) -> None:
        """A stop: cancel this loop if it is waiting on the storage (Redis may be down or paused),
        unless the call acks a performed batch and not ``force``. Its batch, if any, is performed
        again by the thread's next holder; `run` returns as for any stop."""
        if self.in_call and (force or not self.holding) and self.task is not None and not self.task.done():
            self.interrupted = True
            self.task.cancel()

    async def _retrying(self, call: Callable[[], Awaitable[T]], holding: bool = False) -> T:
        """Run a storage call until it succeeds, backing off while Redis is down (logged once).

        Once the worker is stopping, a failure is not retried: the loop gives up (`_GaveUp`);
        a batch it could not ack is performed again by the thread's next holder. ``holding``:
        the call acks a performed batch (a stop interrupts it only when forced).
        """
        self.in_call, self.holding = True, holding
        try:
            return await self._attempts(call)
        finally:
            self.in_call = False

    async def _attempts(self, call: Callable[[], Awaitable[T]]) -> T:
        health = self.worker.health
        for attempt in itertools.count(1):
            try:
                result = await call()
            except StorageError as exc:
                raise_if_cancelled(asyncio.current_task())  # the failure may be a cancellation a client turned
                health.failed(exc)
                if self.worker.control.stopping:
                    raise _GaveUp from exc
                with contextlib.suppress(TimeoutError):  # a stop ends the backoff
                    async with asyncio.timeout(self.worker.policy().backoff(min(attempt, 30), self.rng)):
                        await self.worker.stopped.wait()
                continue
            if health.failing_since is not None:
                health.answered()
            return result
        raise AssertionError("unreachable")  # pragma: no cover
