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
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, TypeVar

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
    LoopPolicy,
    Lost,
    Perform,
    Poll,
    Program,
    ThreadRef,
    Wait,
    worker_program,
)
from .errors import StorageError
from .handler import Handler
from .queue import DeadLetterRecord, HandlerSpec, Queue
from .settings import Settings
from .trace import CpuTimed, TraceRecorder

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

    def wake(self) -> None:
        """End the current (or next) wakeable wait early."""
        if self._future is not None and not self._future.done():
            self._future.set_result(None)

    async def wait(self, seconds: float, wakeable: bool = True) -> None:
        """Sleep ``seconds``, or less if woken (when ``wakeable``)."""
        if not wakeable or self._future is None:
            await asyncio.sleep(seconds)
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(self._future), seconds)


class Worker:
    """Performs registered requests, thread by thread, batch by batch.

    Args:
        queue: The queue whose storage to work on.
        handlers: Handler classes to run; default: those ``queue`` has registered.
            Tubes of other handlers are never touched (their names are never
            imported or resolved).
        settings: Settings to use instead of the queue's.
        trace: Record one row per performed message (see `Worker.trace`).
    """

    def __init__(
        self,
        queue: Queue,
        handlers: Sequence[type[Handler]] | None = None,
        *,
        settings: Settings | None = None,
        trace: bool = False,
    ) -> None:
        self.queue = queue
        self.settings = settings or queue.settings
        chosen = list(handlers) if handlers is not None else queue.handlers
        if not chosen:
            raise ValueError("Worker has no handlers: register requests through this queue or pass handlers=[...]")
        self.specs: dict[str, HandlerSpec] = {}
        for handler in chosen:
            spec = queue.spec(handler)
            self.specs[spec.name] = spec
        self.control = Control()
        self.recorder = TraceRecorder() if trace else None
        self._bound: dict[ThreadRef, Waker] = {}  # loops holding a thread, by thread
        self._idle: dict[Waker, None] = {}  # loops polling or waiting for work (not performing)
        self._listeners = 0
        self._listener: asyncio.Task[None] | None = None
        self._subscribed = asyncio.Event()
        self._loops: set[asyncio.Task[Any]] = set()
        self.identity = f"{socket.gethostname()}:{os.getpid()}"

    def policy(self) -> LoopPolicy:
        """The loop policy from current settings and the handlers' overrides."""
        return LoopPolicy.from_settings(
            self.settings,
            batch_sizes={n: s.handler.batch_size for n, s in self.specs.items() if s.handler.batch_size is not None},
            attempts={
                n: s.handler.retry_attempts for n, s in self.specs.items() if s.handler.retry_attempts is not None
            },
        )

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
        async with self._listening():
            return await _Loop(self, next(_loop_ids)).run(program)

    async def serve(self, loops: int = 1, limit: int | None = None) -> int:
        """Run ``loops`` loops until they reach ``limit`` each, or a signal, or `stop`.

        On the first SIGTERM or SIGINT every loop finishes and acks the batch in
        hand, calls ``stop()``, releases its thread and returns; on a second one
        the loops are cancelled at once (their unacked batches are performed
        again by the next holder). Returns how many messages the loops took.
        """
        event_loop = asyncio.get_running_loop()
        tasks = [asyncio.create_task(self.loop(limit)) for _ in range(loops)]
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
        failures = [r for r in results if isinstance(r, BaseException) and not isinstance(r, asyncio.CancelledError)]
        if failures:
            raise failures[0]
        return sum(r for r in results if isinstance(r, int))

    def stop(self) -> None:
        """Ask every loop to finish its batch, ack it, release its thread and return."""
        self.control.stopping = True
        for waker in [*self._bound.values(), *self._idle]:
            waker.wake()

    def _on_wake(self, threads: list[ThreadRef]) -> None:
        """A registration landed: wake the loop holding each thread, else one idle loop.

        Waking one idle loop per thread (not all of them) keeps a burst of
        registrations from turning every idle loop into a coordinator poll.
        """
        idle = iter(list(self._idle))
        for thread in threads:
            waker = self._bound.get(thread)
            if waker is None:
                waker = next(idle, None)
            if waker is not None:
                waker.wake()

    def trace(self) -> Any:
        """The recorded trace as a pandas DataFrame (schema in `sharded_queue.trace`)."""
        if self.recorder is None:
            raise RuntimeError("this worker does not record: create it with Worker(queue, trace=True)")
        return self.recorder.frame()

    @contextlib.asynccontextmanager
    async def _listening(self) -> AsyncIterator[None]:
        """Keep one wake-up subscription open while any loop of this worker runs."""
        self._listeners += 1
        if self._listener is None:
            self._subscribed = asyncio.Event()
            self._listener = asyncio.create_task(self._listen(self._subscribed))
        with contextlib.suppress(TimeoutError):  # without wake-ups loops still poll every coordinator_delay
            await asyncio.wait_for(self._subscribed.wait(), self.settings.storage_timeout)
        try:
            yield
        finally:
            self._listeners -= 1
            if self._listeners == 0 and self._listener is not None:
                listener, self._listener = self._listener, None
                listener.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await listener

    async def _listen(self, ready: asyncio.Event) -> None:
        storage = self.queue.storage
        while True:
            try:
                await storage.listen_wake(self._on_wake, ready.set)
            except Exception as exc:  # never let wake-ups die: loops would fall back to polling
                logger.warning("wake-up subscription failed, retrying: %r", exc)
                ready.set()  # loops still work without it, on coordinator_delay
                await asyncio.sleep(1.0)


class _Loop:
    """One running loop: carries out the effects of one worker program."""

    def __init__(self, worker: Worker, number: int) -> None:
        self.worker = worker
        self.storage = worker.queue.storage
        self.settings = worker.settings
        self.name = f"{worker.identity}:{number}"
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
        try:
            while True:
                try:
                    effect = program.send(result)
                except StopIteration as stop:
                    return int(stop.value)
                result = await self.execute(effect)
        finally:
            self.worker._idle.pop(self.waker, None)
            if self.bound is not None:  # cancelled or failed while bound: unacked batch stays
                await asyncio.shield(self._end())
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
                return await self._retrying(
                    lambda: self.storage.candidates(list(self.worker.specs), time.time(), CANDIDATES_PER_HANDLER)
                )
            case Acquire(thread):
                token = secrets.token_hex(16)
                ttl = self.settings.lease_ttl
                if await self._retrying(lambda: self.storage.acquire(thread, token, ttl, time.time())):
                    self.token = token
                    self.worker._idle.pop(self.waker, None)
                    return True
                return False
            case Wait(seconds, wakeable):
                await self.waker.wait(seconds, wakeable)
                return None
            case Begin(thread):
                await self._begin(thread)
                return None
            case End():
                await self._end()
                return None
        raise TypeError(f"unknown effect {effect!r}")  # pragma: no cover

    async def _begin(self, thread: ThreadRef) -> None:
        self.bound = thread
        self.worker._bound[thread] = self.waker
        self.seq = 0
        self.heartbeat = asyncio.create_task(self._heartbeat(thread, self.token))
        self.instance = self.worker.specs[thread.handler].handler()
        try:
            await self.instance.start()
        except Exception:
            # Give the thread back untouched; the next Cycle sees no lease (LOST) and the program re-binds.
            logger.exception("%s start() failed on thread %s; thread released", thread.handler, thread.thread)
            self.instance = None
            await self._end()
            await asyncio.sleep(self.worker.policy().backoff(1, self.rng))

    async def _end(self) -> None:
        thread, self.bound = self.bound, None
        if thread is None:
            return
        self.worker._bound.pop(thread, None)
        if self.heartbeat is not None:
            self.heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.heartbeat
        try:
            if self.instance is not None:
                await self.instance.stop()
        except Exception:
            logger.exception("%s stop() failed on thread %s", thread.handler, thread.thread)
        finally:
            self.instance = None
            try:
                await self.storage.release(thread, self.token, time.time())
            except StorageError as exc:  # the lease expires by itself
                logger.warning("could not release thread %s/%s: %s", thread.handler, thread.thread, exc)

    async def _heartbeat(self, thread: ThreadRef, token: str) -> None:
        ttl = self.settings.lease_ttl
        while True:
            await asyncio.sleep(ttl / 3)
            try:
                if not await self.storage.renew(thread, token, ttl, time.time()):
                    logger.warning("lease of %s/%s lost; its batch will not be acked", thread.handler, thread.thread)
                    return
            except StorageError as exc:
                logger.warning("lease renewal of %s/%s failed: %s", thread.handler, thread.thread, exc)

    async def _cycle(self, effect: Cycle) -> Batch | Lost | None:
        thread, ack = effect.thread, effect.ack
        if self.bound != thread:  # released after a failed start()
            return LOST
        dead = self._dead_records(thread, ack) if ack is not None and ack.dead else []
        if ack is not None:
            self.seq += 1
        seq = self.seq
        self.waker.arm()
        reply = await self._retrying(
            lambda: self.storage.cycle(
                thread,
                self.token,
                self.settings.lease_ttl,
                ack.order if ack else "",
                ack.count if ack else 0,
                seq,
                dead,
                effect.limit,
            )
        )
        if reply is False:
            logger.warning("lease of %s/%s lost: batch not acked, thread left", thread.handler, thread.thread)
            return LOST
        if reply is None:
            return None
        assert isinstance(reply, tuple)
        order, self.raw = reply
        self.batch_order = order
        return self._decode(thread, order, self.raw)

    def _decode(self, thread: ThreadRef, order: str, payloads: list[bytes]) -> Batch:
        messages, bad = self.worker.specs[thread.handler].codec.decode_batch(payloads)
        for _, error in bad:
            logger.error("undecodable payload in %s/%s dead-lettered: %s", thread.handler, thread.thread, error)
        return Batch(order, len(payloads), messages, bad)

    async def _perform(self, effect: Perform) -> BaseException | None:
        assert self.instance is not None
        recorder = self.worker.recorder
        started = time.time()
        timed: CpuTimed | None = None
        try:
            messages = effect.messages
            requests = messages.requests() if isinstance(messages, Envelopes) else [m.request for m in messages]
            if recorder is None:
                await self.instance.perform(*requests)
            else:  # tracing: count perform's own CPU time too
                timed = CpuTimed(self.instance.perform(*requests))
                await timed
        except Exception as exc:
            logger.warning("%s.perform failed on thread %s: %r", effect.thread.handler, effect.thread.thread, exc)
            return exc
        if recorder is not None:
            cpu = timed.cpu if timed is not None else float("nan")
            recorder.record(effect.thread, self.batch_order, self.name, effect.messages, started, time.time(), cpu)
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
        """Run a storage call until it succeeds, backing off while Redis is down."""
        for attempt in itertools.count(1):
            try:
                return await call()
            except StorageError as exc:
                delay = self.worker.policy().backoff(min(attempt, 30), self.rng)
                logger.warning("storage call failed (attempt %d), retrying in %.2fs: %s", attempt, delay, exc)
                await asyncio.sleep(delay)
        raise AssertionError("unreachable")  # pragma: no cover
