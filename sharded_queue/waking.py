"""Wake-ups in one worker process: each loop's `Waker`, which loops are idle or hold a thread
(`Wakeups`), and the subscription that delivers registrations' wake-up messages.

Whom a message wakes is the core's decision (`sharded_queue.core.wake_targets`);
this module keeps the state it decides on and carries the wake-ups out.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Iterator

from .core import ThreadRef, wake_targets
from .errors import StorageError
from .health import StorageHealth
from .storage import Storage, raise_if_cancelled

logger = logging.getLogger("sharded_queue")


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


class Wakeups:
    """The loops of one worker process as wake-ups see them.

    Args:
        answers: Whether this process answers a thread's wake-ups (`core.answers`).

    Attributes:
        bound: The waker of the loop holding each thread.
        idle: The wakers of loops polling or waiting for work (not performing), oldest first.
    """

    def __init__(self, answers: Callable[[ThreadRef], bool]) -> None:
        self.answers = answers
        self.bound: dict[ThreadRef, Waker] = {}
        self.idle: dict[Waker, None] = {}
        self._listeners = 0
        self._listener: asyncio.Task[None] | None = None
        self._subscribed = asyncio.Event()

    @property
    def ready(self) -> int:
        """Loops that polled at least once and are running: idle or holding a thread."""
        return len(self.idle) + len(self.bound)

    def polling(self, waker: Waker) -> None:
        """A loop asks the coordinator: arm its waker first, so no wake-up that follows is missed."""
        waker.arm()
        self.idle[waker] = None

    def busy(self, waker: Waker) -> None:
        """A loop is busy (binding, performing): wake-ups must go to another."""
        self.idle.pop(waker, None)

    def bind(self, thread: ThreadRef, waker: Waker) -> None:
        """A loop holds ``thread``: wake-ups of it go to that loop."""
        self.bound[thread] = waker

    def unbind(self, thread: ThreadRef) -> None:
        """No loop of this process holds ``thread`` any more."""
        self.bound.pop(thread, None)

    def on_message(self, threads: list[ThreadRef]) -> None:
        """A registration landed: wake the loops `core.wake_targets` names."""
        for waker in wake_targets(threads, self.bound.get, self.answers, self._unwoken()):
            waker.wake()

    def wake_next(self) -> None:
        """Wake the oldest idle loop not woken yet (`core.Acquire.wake_next`)."""
        waker = next(self._unwoken(), None)
        if waker is not None:
            waker.wake()

    def wake_all(self) -> None:
        """End every loop's wait (a stop)."""
        for waker in [*self.bound.values(), *self.idle]:
            waker.wake()

    def _unwoken(self) -> Iterator[Waker]:
        """The idle loops' wakers not woken yet, oldest first."""
        return (waker for waker in list(self.idle) if not waker.woken)

    @contextlib.asynccontextmanager
    async def listening(self, storage: Storage, health: StorageHealth, timeout: float) -> AsyncIterator[None]:
        """Keep one wake-up subscription open while any loop of this process runs (waiting up to
        ``timeout`` for it the first time: without wake-ups loops still poll every coordinator_delay)."""
        self._listeners += 1
        if self._listener is None:
            self._subscribed = asyncio.Event()
            self._listener = asyncio.create_task(self._listen(storage, health, self._subscribed))
        try:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._subscribed.wait()
            yield
        finally:
            self._listeners -= 1
            if self._listeners == 0 and self._listener is not None:
                listener, self._listener = self._listener, None
                listener.cancel()
                await asyncio.wait({listener})  # never swallows a cancellation of this task

    async def _listen(self, storage: Storage, health: StorageHealth, ready: asyncio.Event) -> None:
        while True:
            try:
                await storage.listen_wake(self.on_message, ready.set)
            except StorageError as exc:  # loops still work without wake-ups, on coordinator_delay
                health.failed(exc)
            except Exception as exc:  # never let wake-ups die: loops would fall back to polling
                logger.warning("wake-up subscription failed, retrying: %r", exc)
            raise_if_cancelled(asyncio.current_task())
            ready.set()
            await asyncio.sleep(1.0)
