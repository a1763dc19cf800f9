"""The contract between the storage and its shells: what the worker and the queue call to run.

`QueueStorage` lists the operations a worker loop and `Queue.register` use, and
nothing else: registration, the coordinator's poll, the bound thread's lease
and batch cycle, wake-ups. `Storage` satisfies it (checked by mypy, in
`sharded_queue.storage.store`); its other methods (stats, dead letters, the
worker registry, schedules: `sharded_queue.storage.admin` and
`sharded_queue.storage.reads`) are operations, off the per-batch path. Also
here: the values the queue hands the storage through it (`TubeWrite`,
`StoredSchedule`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import msgspec

from ..core import Ack, DueMoves, Held, Hold, PollResult, Schedule, Short, ThreadRef, Tick, Tube


@dataclass(frozen=True, slots=True)
class TubeWrite:
    """Envelopes to write to one tube (newline-joined, see `Codec.encode`), with the order's rank.

    Attributes:
        unique: Drop an envelope whose request equals a waiting one's (``if_not_exists``).
        when: ``''`` now, ``'+seconds'`` from the server's now, ``'@epoch'`` (`core.due_when`).
        schedule: For recurring requests: the JSON kept with each (`StoredSchedule`,
            see `Queue.register`); ``when`` is then the first tick.
    """

    tube: Tube
    rank: float
    envelopes: bytes
    unique: bool = False
    when: str = ""
    schedule: bytes = b""

    @property
    def immediate(self) -> bool:
        """Whether its envelopes join the tube now (neither deferred nor scheduled)."""
        return not self.when and not self.schedule


class StoredSchedule(msgspec.Struct, omit_defaults=True):
    """What is kept with a recurring request: its `Schedule`, its order's rank, ``if_not_exists``."""

    every: float | None = None
    cron: str | None = None
    rank: str = "0"
    unique: bool = False
    tz: str | None = None  # a cron string's time zone (None: UTC)

    def schedule(self) -> Schedule:
        """The schedule."""
        return Schedule(self.every, self.cron, self.tz)


class QueueStorage(Protocol):
    """What a worker loop and a registration need of the storage (see `Storage` for each)."""

    async def push(
        self,
        handler: str,
        writes: Sequence[TubeWrite],
        stamp: str | None = None,
        replicas: int = 0,
        timeout: float = 10.0,
        max_pending: int | None = None,
    ) -> int:
        """Append envelopes to ``handler``'s tubes, index their threads, wake idle loops; how many
        (once ``replicas`` replicas have them, waiting up to ``timeout`` seconds)."""
        ...

    async def server_time(self) -> float:
        """The storage server's clock, in seconds since the epoch."""
        ...

    async def add_handlers(self, names: Sequence[str]) -> None:
        """Add handler names to the set stats lists handlers from."""
        ...

    async def candidates(self, handlers: Sequence[str], count: int) -> PollResult:
        """A coordinator poll: threads visible now, and threads with requests due now."""
        ...

    async def move_due(self, ref: ThreadRef, limit: int = 1000) -> DueMoves:
        """Move ``ref``'s due deferred requests to their tubes; its recurring ticks that are due."""

    async def fire(self, ref: ThreadRef, ticks: Sequence[Tick]) -> int:
        """Register recurring ticks once each and schedule their next; how many this call registered."""
        ...

    async def acquire(self, ref: ThreadRef, token: str, ttl: float) -> bool:
        """Take ``ref``'s lease; False if the thread is empty or taken."""
        ...

    async def cycle(
        self,
        ref: ThreadRef,
        token: str,
        ttl: float,
        ack: Ack | None,
        ack_seq: int,
        dead: Sequence[bytes],
        limit: int,
        controls: CycleControls = ...,
    ) -> tuple[str, list[bytes], int] | Held | Short | bool | None:
        """Ack the previous batch and fetch the next, fenced by the lease and held back by controls."""
        ...

    async def renew(self, ref: ThreadRef, token: str, ttl: float) -> bool:
        """Extend our lease; False if it is gone or another's."""
        ...

    async def release(self, ref: ThreadRef, token: str) -> None:
        """Drop our lease (never another's)."""
        ...

    async def listen_wake(self, on_wake: Callable[[list[ThreadRef]], None], ready: Callable[[], None]) -> None:
        """Call ``on_wake`` with the threads of every registration, until cancelled."""
        ...

    async def pending(self, handler: str) -> int:
        """Messages waiting in all tubes of ``handler``, from its counts (one round trip)."""
        ...

    async def close(self) -> None:
        """Close the connections."""
        ...


@dataclass(frozen=True, slots=True)
class CycleControls:
    """What a batch cycle passes of its thread's controls (`QueueStorage.cycle`).

    Attributes:
        thread_rate: The thread's rate limit as the scripts take it (`core.Rate.argument`), or "".
        handler_rate: The handler's, or "".
        hold: Keep the thread from being performed for a while (`core.Hold`).
        linger: Fetch only a full batch; else report how many wait (`core.Short`).
    """

    thread_rate: str = ""
    handler_rate: str = ""
    hold: Hold | None = None
    linger: bool = False


NO_CONTROLS = CycleControls()
"""No control: today's cycle."""
