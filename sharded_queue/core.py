"""The pure core: every decision of the queue, with no I/O and no clock.

The asyncio worker (`sharded_queue.worker`) and the simpy twin (`simulator`)
both run `worker_program`, a generator that *yields effects* (`Poll`,
`Acquire`, `Wait`, `Begin`, `Cycle`, `Perform`, `End`) and receives their
results. The shells only carry effects out: Redis and real handlers in one,
simulated time and service models in the other. So the choice of thread,
batch sizing, empty-limit/pause, release, retries with backoff and poison
bisection exist once, here.

Routing helpers (`group_by_tube`, `order_rank`, `order_key`) are shared the
same way by `Queue.register` and the simulator's workload.
"""

from __future__ import annotations

import enum
import math
import random
import zlib
from collections.abc import Generator, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple, TypeAlias, overload

from .errors import LeaseLost, RouteError, RouteTypeError
from .handler import RequestRoute, Route
from .settings import Settings

# --- routing -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ThreadRef:
    """One (handler, thread): the unit of exclusivity, leased by one loop at a time."""

    handler: str
    thread: str


@dataclass(frozen=True, slots=True)
class Tube:
    """One (handler, thread, order): a FIFO list of messages."""

    handler: str
    thread: str
    order: str

    @property
    def thread_ref(self) -> ThreadRef:
        """The thread this tube belongs to."""
        return ThreadRef(self.handler, self.thread)


def check_routes(requests: Sequence[Any], routes: Any, where: str) -> list[RequestRoute]:
    """Validate what ``route()`` returned: exactly one `RequestRoute` per request.

    Raises:
        RouteError: not a list/tuple, or not one item per request.
        RouteTypeError: an item is not a `RequestRoute`.
    """
    if not isinstance(routes, list | tuple):
        raise RouteTypeError(f"{where} must return a list of RequestRoute, got {type(routes).__name__}")
    if len(routes) != len(requests):
        raise RouteError(f"{where} returned {len(routes)} routes for {len(requests)} requests")
    for position, item in enumerate(routes):
        if not isinstance(item, RequestRoute):
            raise RouteTypeError(f"{where} item {position} is {type(item).__name__}, not RequestRoute")
        if not isinstance(item.route, Route):
            raise RouteTypeError(f"{where} item {position} has route {item.route!r}, not a Route")
    return list(routes)


def group_by_tube(handler: str, routes: Iterable[RequestRoute]) -> dict[Tube, list[Any]]:
    """Requests grouped by tube, each group in the order given (FIFO)."""
    groups: dict[tuple[str, str], list[Any]] = {}
    for item in routes:
        route = item.route
        key = (route.thread, route.order)
        group = groups.get(key)
        if group is None:
            groups[key] = [item.request]
        else:
            group.append(item.request)
    return {Tube(handler, thread, order): group for (thread, order), group in groups.items()}


def order_rank(order: str, declared: Sequence[str] | None) -> float:
    """Score of ``order`` in a thread's order index (lower is served first).

    Declared orders rank by position. Otherwise numeric orders rank by value and
    the rest rank last (``inf``), where Redis breaks ties by comparing members
    bytewise; `order_key` is the same total order for Python's ``sorted``.

    Raises:
        ValueError: ``order`` is not one of the ``declared`` orders.
    """
    if declared is not None:
        try:
            return float(declared.index(order))
        except ValueError:
            raise ValueError(f"order {order!r} is not one of the declared orders {list(declared)!r}") from None
    try:
        value = float(order)
    except ValueError:
        return math.inf
    return math.inf if math.isnan(value) else value


def order_key(order: str, declared: Sequence[str] | None) -> tuple[float, bytes]:
    """Sort key giving the same precedence as the storage's order index."""
    return order_rank(order, declared), order.encode()


def answering(peers: Sequence[str], thread: ThreadRef) -> str:
    """Which of ``peers`` (worker ids) answers ``thread``'s wake-ups: the one ranking
    highest for it (rendezvous hashing), so that one process, not all, polls for it
    and a worker coming or going moves only its own share of the threads."""
    key = f"\0{thread.handler}\0{thread.thread}".encode()
    return max(peers, key=lambda peer: zlib.crc32(peer.encode() + key))


# --- time: deferred and recurring requests ------------------------------------


@dataclass(frozen=True, slots=True)
class Schedule:
    """When a recurring request runs: every ``every`` seconds, or at each match of a ``cron`` string (UTC).

    A tick is registered once, by whichever worker finds it due. When no worker
    ran for several ticks, the missed ones collapse into one: the next tick is
    always the first one after now.
    """

    every: float | None = None
    cron: str | None = None

    @classmethod
    def of(cls, recurrent: float | int | timedelta | str) -> Schedule:
        """The schedule of a ``recurrent=`` argument: seconds, a `timedelta` or a cron string.

        Raises:
            ValueError: a period that is not a positive finite number, or an invalid cron string.
            TypeError: anything else.
        """
        if isinstance(recurrent, str):
            from croniter import croniter

            if not croniter.is_valid(recurrent):
                raise ValueError(f"recurrent={recurrent!r} is not a valid cron string")
            return cls(cron=recurrent)
        seconds = _seconds("recurrent", recurrent)
        if seconds <= 0:
            raise ValueError(f"recurrent={recurrent!r}: the period must be positive")
        return cls(every=seconds)

    def first_after(self, now: float) -> float:
        """The first tick after ``now`` (seconds since the epoch, the storage server's clock)."""
        if self.every is not None:
            return now + self.every
        from croniter import croniter

        assert self.cron is not None
        return float(croniter(self.cron, datetime.fromtimestamp(now, UTC)).get_next(float))

    def next_after(self, due: float, now: float) -> float:
        """The tick after the one due at ``due``: the first after ``now`` (missed ticks collapse)."""
        if self.every is not None:
            return due + self.every * (math.floor(max(0.0, now - due) / self.every) + 1)
        return self.first_after(max(due, now))

    def describe(self) -> float | str:
        """Seconds between ticks, or the cron string."""
        return self.every if self.every is not None else str(self.cron)


def due_when(defer: float | int | timedelta | datetime | None) -> str:
    """How the storage is told when a deferred request is due: '' now, '+seconds' from its
    own clock's now, or '@epoch seconds' for an aware datetime (compared on the server's clock).

    Raises:
        ValueError: a negative or non-finite delay, or a naive datetime.
        TypeError: anything else.
    """
    if defer is None:
        return ""
    if isinstance(defer, datetime):
        if defer.tzinfo is None or defer.utcoffset() is None:
            raise ValueError(f"defer={defer!r} is a naive datetime: give it a timezone (e.g. datetime.now(UTC))")
        return f"@{defer.timestamp()!r}"
    seconds = _seconds("defer", defer)
    if seconds < 0:
        raise ValueError(f"defer={defer!r}: a delay cannot be negative")
    return f"+{seconds!r}" if seconds else ""


def _seconds(what: str, value: object) -> float:
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    else:
        raise TypeError(f"{what}= takes seconds or a timedelta, got {type(value).__name__}: {value!r}")
    if not math.isfinite(seconds):
        raise ValueError(f"{what}={value!r} is not a finite number of seconds")
    return seconds


# --- the worker program ------------------------------------------------------


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


@dataclass(frozen=True, slots=True)
class Poll:
    """Ask the coordinator for threads that have messages and no lease.
    Result: ``Sequence[ThreadRef]``, most deserving first (`Candidates`: with when
    the next deferred or recurring request is due)."""


class Candidates(list[ThreadRef]):
    """What a `Poll` found: threads visible now, most deserving first; ``due_in``, the
    seconds until the next deferred or recurring request of the handlers is due; and
    ``moved``, how many due ones the poll moved into tubes (maybe the bound thread's)."""

    def __init__(self, threads: Iterable[ThreadRef] = (), due_in: float = math.inf, moved: int = 0) -> None:
        super().__init__(threads)
        self.due_in = due_in
        self.moved = moved


def due_in(found: Sequence[ThreadRef]) -> float:
    """Seconds until the next due request that a poll saw (infinite when it says nothing)."""
    return found.due_in if isinstance(found, Candidates) else math.inf


def moved(found: Sequence[ThreadRef]) -> bool:
    """Whether a poll moved due requests into tubes."""
    return isinstance(found, Candidates) and found.moved > 0


@dataclass(frozen=True, slots=True)
class Acquire:
    """Try to take ``thread``'s lease. Result: ``bool``."""

    thread: ThreadRef


@dataclass(frozen=True, slots=True)
class Wait:
    """Pause ``seconds``; a ``wakeable`` wait ends early when messages arrive."""

    seconds: float
    wakeable: bool = True


@dataclass(frozen=True, slots=True)
class Begin:
    """The thread is bound: call the handler's ``start()``."""

    thread: ThreadRef


@dataclass(frozen=True, slots=True)
class Cycle:
    """One round trip: apply ``ack`` (if any), then fetch up to ``limit`` messages
    (none when 0), both only if the lease is still ours.
    Result: `Batch`, ``None`` (thread empty) or `LOST`."""

    thread: ThreadRef
    ack: Ack | None
    limit: int


@dataclass(frozen=True, slots=True)
class Perform:
    """Call ``perform(*requests)``. Result: the exception it raised, or ``None``."""

    thread: ThreadRef
    messages: Sequence[Message]


@dataclass(frozen=True, slots=True)
class End:
    """Release the thread: ``stop()`` then delete the lease (if still ours)."""

    thread: ThreadRef


Effect: TypeAlias = Poll | Acquire | Wait | Begin | Cycle | Perform | End
Program: TypeAlias = Generator[Effect, Any, int]


@dataclass(slots=True)
class Control:
    """Shared, mutable switch a shell flips to stop loops gracefully."""

    stopping: bool = False


@dataclass(frozen=True)
class LoopPolicy:
    """The numbers a worker loop decides with, from `Settings` and handler overrides."""

    batch_size: int = 128
    empty_limit: int = 16
    empty_pause: float = 0.1
    coordinator_delay: float = 1.0
    retry_attempts: int = 3
    retry_backoff: float = 0.1
    retry_backoff_max: float = 5.0
    hold_limit: int = 16
    batch_sizes: Mapping[str, int] = field(default_factory=dict)
    attempts: Mapping[str, int] = field(default_factory=dict)

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        batch_sizes: Mapping[str, int] | None = None,
        attempts: Mapping[str, int] | None = None,
    ) -> LoopPolicy:
        """The policy of ``settings``, with per-handler batch sizes and attempts."""
        return cls(
            batch_size=settings.worker_batch_size,
            empty_limit=settings.worker_empty_limit,
            empty_pause=settings.worker_empty_pause,
            coordinator_delay=settings.coordinator_delay,
            retry_attempts=settings.retry_attempts,
            retry_backoff=settings.retry_backoff,
            retry_backoff_max=settings.retry_backoff_max,
            hold_limit=settings.worker_hold_limit,
            batch_sizes=dict(batch_sizes or {}),
            attempts=dict(attempts or {}),
        )

    def batch_limit(self, handler: str, remaining: int | None) -> int:
        """How many messages to fetch next: the batch size, capped by what is left."""
        size = self.batch_sizes.get(handler, self.batch_size)
        return size if remaining is None else min(size, remaining)

    def attempts_for(self, handler: str) -> int:
        """How many times a failing batch (or isolated request) is performed."""
        return self.attempts.get(handler, self.retry_attempts)

    def backoff(self, attempt: int, rng: random.Random) -> float:
        """Pause after failed attempt ``attempt`` (1-based): exponential, half jittered."""
        delay: float = min(self.retry_backoff_max, self.retry_backoff * 2.0 ** (attempt - 1))
        return delay * (0.5 + 0.5 * rng.random())


CANDIDATES_PER_HANDLER = 16
"""How many visible threads per handler a `Poll` reads from the coordinator's index."""


def order_candidates(candidates: Sequence[ThreadRef], rng: random.Random) -> list[ThreadRef]:
    """Order in which a loop tries the coordinator's candidates.

    Shuffled so that loops polling at the same moment try different threads
    instead of all racing for the first one.
    """
    ordered = list(candidates)
    rng.shuffle(ordered)
    return ordered


def worker_program(
    policy: LoopPolicy,
    limit: int | None = None,
    rng: random.Random | None = None,
    control: Control | None = None,
) -> Program:
    """One worker loop: bind a thread, drain it in batches, release it, repeat.

    A loop releases its thread after ``empty_limit`` empty polls, or at the
    first empty poll that finds another thread waiting for a loop: an idle
    system keeps its bindings (and handler contexts), a busy one never lets a
    loop sit on an empty thread while messages wait elsewhere. Under sustained
    load a thread is never empty, so every ``hold_limit`` batches the loop asks
    the coordinator and lets go when another thread waits: with more threads
    than loops, every thread is served (0 disables this).

    Returns (as the generator's value) how many messages were taken off tubes:
    performed, or dead-lettered. Ends after ``limit`` of them, or when
    ``control.stopping`` is set, or never.
    """
    rng = rng or random.Random()
    control = control or Control()
    done = 0
    left: ThreadRef | None = None
    while (limit is None or done < limit) and not control.stopping:
        thread = yield from _bind(policy, rng, control, left)
        if thread is None:
            break
        yield Begin(thread)
        done += yield from _drain(thread, policy, None if limit is None else limit - done, rng, control)
        yield End(thread)
        left = thread
    return done


def _bind(
    policy: LoopPolicy, rng: random.Random, control: Control, left: ThreadRef | None
) -> Generator[Effect, Any, ThreadRef | None]:
    """Take a thread; the one just left goes last, so letting go of it serves another."""
    while not control.stopping:
        candidates: Sequence[ThreadRef] = yield Poll()
        ordered = order_candidates(candidates, rng)
        if left in ordered:
            ordered.remove(left)
            ordered.append(left)
        for thread in ordered:
            if (yield Acquire(thread)):
                return thread
        yield Wait(min(policy.coordinator_delay, due_in(candidates)))
    return None


def _drain(
    thread: ThreadRef, policy: LoopPolicy, remaining: int | None, rng: random.Random, control: Control
) -> Generator[Effect, Any, int]:
    done = 0
    empty = 0
    held = 0
    leaving = False
    ack: Ack | None = None
    while True:
        left = None if remaining is None else remaining - done
        want = 0 if control.stopping or leaving else policy.batch_limit(thread.handler, left)
        if want == 0 and ack is None:
            return done
        batch: Batch | Lost | None = yield Cycle(thread, ack, want)
        ack = None
        if batch is LOST or want == 0:
            return done
        if batch is None:
            empty += 1
            if empty >= policy.empty_limit:
                return done
            waiting = yield Poll()
            if waiting:  # other threads wait for a loop: don't sit on an empty one
                return done
            if not moved(waiting):  # else what came due may be this thread's: look at once
                yield Wait(min(policy.empty_pause, due_in(waiting)))
            continue
        assert isinstance(batch, Batch)
        empty = 0
        clears = True
        if batch.losses >= policy.attempts_for(thread.handler):
            shrunk = after_losses(batch, policy.attempts_for(thread.handler), want)
            if shrunk is None:
                error = LeaseLost(
                    f"lease lost {batch.losses} times with this request at the head of its tube: a perform "
                    "that blocks the event loop longer than the lease TTL, or that kills its worker"
                )
                ack = Ack(batch.order, 1, (DeadLetter(0, error, batch.losses),))
                done += 1
                continue
            batch, clears = shrunk, False
        dead = [DeadLetter(index, error, 0) for index, error in batch.bad]
        if batch.messages:
            dead += yield from _perform(thread, batch.messages, policy, rng, whole=True)
        ack = Ack(batch.order, batch.size, tuple(sorted(dead, key=lambda d: d.index)) if dead else (), clears)
        done += batch.size
        held += 1
        if policy.hold_limit and held >= policy.hold_limit:
            held = 0
            leaving = bool((yield Poll()))  # other threads wait for a loop: ack, then let go


def after_losses(batch: Batch, attempts: int, limit: int) -> Batch | None:
    """The head to perform of a batch (fetched with ``limit``) that earlier holders fetched
    ``batch.losses`` times without acking it.

    A holder loses its lease mid-batch when its ``perform`` blocks the event loop
    longer than the lease TTL (no heartbeat can run), or kills the worker. The
    losses are counted in storage, so the search for the culprit survives them:
    from ``attempts`` losses on, each further loss halves the head that is
    performed; a head that is performed and acked keeps the count, one that
    loses again halves it. Once a single request keeps losing, this returns
    None: it goes to the dead letters unperformed. So batches of up to B
    cost at most ``attempts + floor(log2 B) + 1`` lost leases before the
    culprit is dead-lettered, whatever their contents.
    """
    size = min(batch.size, limit >> (batch.losses - attempts + 1))
    return batch.head(size) if size else None


def _perform(
    thread: ThreadRef, messages: Sequence[Message], policy: LoopPolicy, rng: random.Random, whole: bool
) -> Generator[Effect, Any, list[DeadLetter]]:
    """Perform with retries; bisect a batch that keeps failing to isolate its poison.

    The whole batch and single requests get ``attempts`` performs; the halves in
    between get one each, so one poison request in a batch of B costs at most
    ``2 * attempts + 2 * ceil(log2(B)) - 1`` performs, and a request that
    succeeds is performed at most ``attempts + ceil(log2(B))`` times.
    """
    attempts = policy.attempts_for(thread.handler) if whole or len(messages) == 1 else 1
    error: BaseException | None = None
    for attempt in range(1, attempts + 1):
        error = yield Perform(thread, messages)
        if error is None:
            return []
        if attempt < attempts:
            yield Wait(policy.backoff(attempt, rng), wakeable=False)
    assert error is not None
    if len(messages) == 1:
        return [DeadLetter(messages[0].position, error, attempts)]
    middle = len(messages) // 2
    dead = yield from _perform(thread, messages[:middle], policy, rng, whole=False)
    dead += yield from _perform(thread, messages[middle:], policy, rng, whole=False)
    return dead
