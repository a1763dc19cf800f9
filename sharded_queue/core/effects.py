"""The effects a worker program yields, the values its shells send back, and batches.

A shell (the asyncio `Worker`, the simpy twin) carries each effect out and
sends its result into the program:

==========  =========================================================  =========================
effect      what the shell does                                        result
==========  =========================================================  =========================
`Poll`      ask the coordinator for visible threads                    `PollResult`
`MoveDue`   move a thread's due deferred requests into its tubes       `DueMoves`
`Fire`      register due recurring ticks once, schedule the next       ``int`` registered
`Acquire`   take a thread's lease (and wake one more idle loop)        ``bool``
`Begin`     call the handler's ``start()``                             ``bool``: it succeeded
`Cycle`     ack the last batch and fetch the next, fenced by the lease `Batch`, None, `LOST`,
                                                                       `Held` or `Short`
`Perform`   call ``perform(*requests)``, cancelled at its timeout      the exception, or None
`Wait`      sleep, or less when woken                                  None
`End`       ``stop()`` (if started) and release the lease              None
==========  =========================================================  =========================
"""

from __future__ import annotations

import enum
import math
from collections.abc import Generator, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, TypeAlias, overload

from .routing import ThreadRef
from .schedule import DueTick, Tick


class Message(NamedTuple):
    """A decoded message of a batch; ``position`` is its place in the fetched batch."""

    position: int
    request: Any
    enqueued_at: float


class Envelopes(Sequence[Message]):
    """A batch that decoded whole, as a ``Sequence[Message]`` without a `Message` per request.

    ``perform`` takes `requests` straight from the decoded envelopes; `Message`
    objects are made only when indexed (bisecting a failing batch, tracing).
    """

    __slots__ = ("_envelopes", "_start")

    def __init__(self, envelopes: list[tuple[float, Any]], start: int = 0) -> None:
        self._envelopes = envelopes
        self._start = start

    def __len__(self) -> int:
        return len(self._envelopes)

    @overload
    def __getitem__(self, index: int) -> Message: ...

    @overload
    def __getitem__(self, index: slice) -> Envelopes: ...

    def __getitem__(self, index: int | slice) -> Message | Envelopes:
        if isinstance(index, slice):
            positions = range(len(self._envelopes))[index]
            if positions.step != 1:
                raise ValueError("Envelopes are sliced with step 1 only")
            return Envelopes(self._envelopes[index], self._start + (positions.start if positions else 0))
        position = range(len(self._envelopes))[index]
        enqueued_at, request = self._envelopes[position]
        return Message(self._start + position, request, enqueued_at)

    def requests(self) -> list[Any]:
        """The requests, in order."""
        return [request for _, request in self._envelopes]

    def enqueued_times(self) -> list[float]:
        """The messages' ``enqueued_at``, in order (for metrics, without a `Message` each)."""
        return [enqueued_at for enqueued_at, _ in self._envelopes]


@dataclass(frozen=True, slots=True)
class Batch:
    """What a `Cycle` fetched: the head of the most urgent non-empty tube.

    ``size`` counts every fetched payload; ``bad`` lists those that did not
    decode, with the error, and are not in ``messages``.
    """

    order: str
    size: int
    messages: Sequence[Message]
    bad: Sequence[tuple[int, BaseException]] = ()
    losses: int = 0
    """How many times earlier holders fetched this head and never acked it."""

    def head(self, size: int) -> Batch:
        """The first ``size`` messages of this batch (the rest stays in its tube)."""
        messages = self.messages
        if isinstance(messages, Envelopes):
            messages = messages[:size]
        else:
            messages = [message for message in messages if message.position < size]
        bad = [(position, error) for position, error in self.bad if position < size]
        return Batch(self.order, size, messages, bad, self.losses)


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A message of a batch that must go to the dead letters instead of being acked."""

    index: int
    error: BaseException
    attempts: int


@dataclass(frozen=True, slots=True)
class Ack:
    """Trim ``count`` messages from the head of the bound thread's ``order`` tube,
    moving ``dead`` ones to the dead letters in the same step."""

    order: str
    count: int
    dead: tuple[DeadLetter, ...] = ()
    clears_losses: bool = True
    """Forget the tube's unacked fetches (False: only this batch's, when it was a shrunk head)."""


class Lost(enum.Enum):
    """Result of a `Cycle` whose lease was no longer ours (fencing)."""

    LEASE = "lease"


LOST = Lost.LEASE


def enqueued_times(messages: Sequence[Message]) -> list[float]:
    """The messages' ``enqueued_at``, in order (without a `Message` each for `Envelopes`)."""
    if isinstance(messages, Envelopes):
        return messages.enqueued_times()
    return [message.enqueued_at for message in messages]


@dataclass(frozen=True, slots=True)
class PollResult:
    """What a `Poll` found.

    Attributes:
        threads: Threads with messages and no lease, most deserving first.
        due_in: Seconds until the next deferred or recurring request of the
            handlers is due (``inf``: none).
        due: Threads with deferred or recurring requests due now, to `MoveDue`.
    """

    threads: Sequence[ThreadRef] = ()
    due_in: float = math.inf
    due: Sequence[ThreadRef] = ()


@dataclass(frozen=True, slots=True)
class DueMoves:
    """What a `MoveDue` did: deferred requests moved, recurring ticks found due, at ``now`` (server clock)."""

    moved: int = 0
    ticks: Sequence[DueTick] = ()
    now: float = 0.0


@dataclass(frozen=True, slots=True)
class Poll:
    """Ask the coordinator for threads that have messages and no lease. Result: `PollResult`."""


@dataclass(frozen=True, slots=True)
class MoveDue:
    """Move ``thread``'s due deferred requests to its tubes' tails. Result: `DueMoves`."""

    thread: ThreadRef


@dataclass(frozen=True, slots=True)
class Fire:
    """Register each of ``ticks`` once (whoever else tries) and schedule its next. Result: ``int``."""

    thread: ThreadRef
    ticks: Sequence[Tick]


@dataclass(frozen=True, slots=True)
class Acquire:
    """Try to take ``thread``'s lease. Result: ``bool``.

    ``wake_next``: on success, also wake another idle loop of this process, because
    the poll found more threads than this loop takes.
    """

    thread: ThreadRef
    wake_next: bool = False


@dataclass(frozen=True, slots=True)
class Wait:
    """Pause ``seconds``; a ``wakeable`` wait ends early when messages arrive."""

    seconds: float
    wakeable: bool = True


@dataclass(frozen=True, slots=True)
class Begin:
    """The thread is bound: call the handler's ``start()``. Result: ``bool``, whether it succeeded."""

    thread: ThreadRef


@dataclass(frozen=True, slots=True)
class Hold:
    """Keep the bound thread from being performed for ``seconds`` (on the storage's clock); its
    lease is released next. ``order``: a tube whose fetched head goes back unperformed, its
    fetch not counted as a loss (a ``perform`` that raised `RateLimited`)."""

    seconds: float
    order: str = ""


@dataclass(frozen=True, slots=True)
class Held:
    """What a `Cycle` returns when the thread's controls hold it back: nothing was fetched.

    ``paused``: the thread or its handler is paused, or not to be performed yet
    (`Hold`): let it go. Else the rate limit's bucket is empty for ``wait`` seconds.
    """

    wait: float = 0.0
    paused: bool = False


@dataclass(frozen=True, slots=True)
class Short:
    """What a lingering `Cycle` returns when fewer than its limit wait in the most urgent
    tube: nothing was fetched. ``waiting`` wait there; ``now`` is the storage's clock."""

    waiting: int
    now: float


@dataclass(frozen=True, slots=True)
class Cycle:
    """One round trip: apply ``ack`` (if any), then fetch up to ``limit`` messages
    (none when 0), both only if the lease is still ours.
    Result: `Batch`, ``None`` (thread empty), `LOST`, `Held` (controls: paused, rate limit)
    or, when ``linger``, `Short` (fewer than ``limit`` wait: nothing fetched).

    ``hold``: store a not-before for the thread (and put a fetched head back)."""

    thread: ThreadRef
    ack: Ack | None
    limit: int
    hold: Hold | None = None
    linger: bool = False


@dataclass(frozen=True, slots=True)
class Perform:
    """Call ``perform(*requests)``, cancelled after ``timeout`` seconds.
    Result: the exception it raised (a `TimeoutError` when cancelled), or ``None``.

    ``attempt`` counts the performs of these messages (1, 2, ...; each half of a
    bisection starts at 1); ``final``: a failure dead-letters the request (its
    last attempt, alone). Shells only report them (telemetry)."""

    thread: ThreadRef
    messages: Sequence[Message]
    timeout: float = math.inf
    attempt: int = 1
    final: bool = False


@dataclass(frozen=True, slots=True)
class End:
    """Release the thread: ``stop()`` (if ``start()`` succeeded) then delete the lease (if still ours)."""

    thread: ThreadRef


Effect: TypeAlias = Poll | MoveDue | Fire | Acquire | Wait | Begin | Cycle | Perform | End
Program: TypeAlias = Generator[Effect, Any, int]
