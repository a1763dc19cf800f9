"""The worker program: one worker loop as a generator of effects (`sharded_queue.core.effects`).

Bind a thread, drain it in batches, release it, repeat: the choice of thread,
batch sizing, empty-limit/pause, release, retries with backoff, poison
bisection, lease-loss handling and what the thread controls ask (a pause, a
rate limit, `RateLimited`, `BatchFailed`, linger) are decided here, once, for
the asyncio worker and the simulator alike.
"""

from __future__ import annotations

import random
from collections.abc import Generator, Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import BatchFailed, LeaseLost, RateLimited
from .effects import (
    LOST,
    Ack,
    Acquire,
    Batch,
    Begin,
    Cycle,
    DeadLetter,
    DueMoves,
    Effect,
    End,
    Fire,
    Held,
    Hold,
    Message,
    MoveDue,
    Perform,
    Poll,
    PollResult,
    Program,
    Short,
    Wait,
)
from .policy import LoopPolicy, after_losses, order_candidates
from .routing import ThreadRef
from .schedule import next_ticks


class _HoldBack(Exception):
    """A ``perform`` raised `RateLimited`: the batch goes back whole, the thread waits ``seconds``."""

    def __init__(self, seconds: float) -> None:
        super().__init__(seconds)
        self.seconds = seconds


@dataclass(slots=True)
class Lingering:
    """A loop's wait for a short batch to fill: until ``until`` (the storage's clock), then
    ``settled`` (fetch what there is)."""

    until: float | None = None
    settled: bool = False


@dataclass(slots=True)
class Control:
    """Shared, mutable switch a shell flips to stop loops gracefully."""

    stopping: bool = False


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
    than loops, every thread is served (0 disables this). A handler whose
    ``start()`` fails gets its thread released untouched, and the loop pauses
    (one backoff step) before it binds again.

    Thread controls: a cycle held back by a pause lets the thread go; one held
    back by an empty rate bucket waits, or holds the thread and lets it go
    (`_held_back`); a ``perform`` that raises `RateLimited` sends its batch back
    and holds the thread; one that raises `BatchFailed` retries only the
    requests it names (`_perform`); with a linger, a short batch waits to fill.

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
        if not (yield Begin(thread)):  # start() failed: give the thread back, untouched, and pause
            yield End(thread)
            yield Wait(policy.backoff(1, rng), wakeable=False)
            left = thread
            continue
        done += yield from _drain(thread, policy, None if limit is None else limit - done, rng, control)
        yield End(thread)
        left = thread
    return done


def _bind(
    policy: LoopPolicy, rng: random.Random, control: Control, left: ThreadRef | None
) -> Generator[Effect, Any, ThreadRef | None]:
    """Take a thread; the one just left goes last, so letting go of it serves another.

    A loop that takes a thread while the poll found others asks its shell to
    wake another idle loop: a wake-up that landed while this loop was polling
    woke only this one, and the other threads would wait for someone's next
    poll (up to ``coordinator_delay``) while loops idle.
    """
    while not control.stopping:
        found, _ = yield from _poll()
        ordered = order_candidates(found.threads, rng, left)
        last = len(ordered) - 1
        for position, thread in enumerate(ordered):
            if (yield Acquire(thread, wake_next=position < last)):
                return thread
        yield Wait(min(policy.coordinator_delay, found.due_in))
    return None


def _poll() -> Generator[Effect, Any, tuple[PollResult, int]]:
    """Ask the coordinator; move what came due first, then ask again. Returns what the
    (last) poll found and how many due requests were moved into tubes."""
    found: PollResult = yield Poll()
    if not found.due:
        return found, 0
    moved = 0
    for thread in found.due:
        due: DueMoves = yield MoveDue(thread)
        moved += due.moved
        if due.ticks:
            moved += yield Fire(thread, next_ticks(due.ticks, due.now))
    found = yield Poll()
    return found, moved


def _drain(
    thread: ThreadRef, policy: LoopPolicy, remaining: int | None, rng: random.Random, control: Control
) -> Generator[Effect, Any, int]:
    done = 0
    empty = 0
    held = 0
    leaving = False
    ack: Ack | None = None
    linger = policy.linger_for(thread.handler)
    lingering = Lingering()
    while True:
        left = None if remaining is None else remaining - done
        want = 0 if control.stopping or leaving else policy.batch_limit(thread.handler, left)
        if want == 0 and ack is None:
            return done
        batch = yield Cycle(thread, ack, want, linger=linger > 0 and not lingering.settled)
        ack = None
        if batch is LOST or want == 0:
            return done
        if batch is None:
            empty += 1
            if empty >= policy.empty_limit:
                return done
            waiting, moved = yield from _poll()
            if waiting.threads:  # other threads wait for a loop: don't sit on an empty one
                return done
            if not moved:  # else what came due may be this thread's: look at once
                yield Wait(min(policy.empty_pause, waiting.due_in))
            continue
        if isinstance(batch, Held | Short):
            if not (yield from _held_back(thread, batch, policy, linger, lingering)):
                return done
            continue
        assert isinstance(batch, Batch)
        empty = 0
        lingering = Lingering()
        try:
            ack, performed = yield from _performed(thread, batch, policy, rng, want)
        except _HoldBack as hold:  # RateLimited: the batch goes back whole, the thread waits
            yield Cycle(thread, None, 0, hold=Hold(hold.seconds, batch.order))
            return done
        done += ack.count
        if not performed:
            continue
        held += 1
        if policy.hold_limit and held >= policy.hold_limit:
            held = 0
            waiting, _ = yield from _poll()
            leaving = bool(waiting.threads)  # other threads wait for a loop: ack, then let go


def _held_back(
    thread: ThreadRef, reply: Held | Short, policy: LoopPolicy, linger: float, lingering: Lingering
) -> Generator[Effect, Any, bool]:
    """A cycle fetched nothing because of the thread's controls. Returns whether the loop keeps it.

    Paused (or not to be performed yet): let it go. A rate limit's bucket empty for
    no longer than ``coordinator_delay``: keep the thread and wait (nothing else
    could be performed of it meanwhile); longer: hold the thread for that long and
    let it go, so the loop serves others. A short batch (linger): wait, woken by
    registrations, until the batch fills or ``linger`` has passed since the first
    short reply, then take what there is.
    """
    if isinstance(reply, Short):
        if lingering.until is None:
            lingering.until = reply.now + linger
        if reply.now >= lingering.until:
            lingering.settled = True
        else:
            yield Wait(lingering.until - reply.now)
        return True
    if reply.paused:
        return False
    if reply.wait <= policy.coordinator_delay:
        yield Wait(reply.wait, wakeable=False)
        return True
    yield Cycle(thread, None, 0, hold=Hold(reply.wait))
    return False


def _performed(
    thread: ThreadRef, batch: Batch, policy: LoopPolicy, rng: random.Random, want: int
) -> Generator[Effect, Any, tuple[Ack, bool]]:
    """Perform a fetched batch (a head of it, after lost leases). Returns the ack that takes it
    off its tube, and whether it was performed (False: its head kept losing leases, dead-lettered)."""
    clears = True
    if batch.losses >= policy.attempts_for(thread.handler):
        shrunk = after_losses(batch, policy.attempts_for(thread.handler), want)
        if shrunk is None:
            error = LeaseLost(
                f"lease lost {batch.losses} times with this request at the head of its tube: a perform "
                "that blocks the event loop longer than the lease TTL, or that kills its worker"
            )
            return Ack(batch.order, 1, (DeadLetter(0, error, batch.losses),)), False
        batch, clears = shrunk, False
    dead = [DeadLetter(index, error, 0) for index, error in batch.bad]
    if batch.messages:
        dead += yield from _perform(thread, batch.messages, policy, rng, whole=True)
    return Ack(batch.order, batch.size, tuple(sorted(dead, key=lambda d: d.index)) if dead else (), clears), True


def _perform(
    thread: ThreadRef, messages: Sequence[Message], policy: LoopPolicy, rng: random.Random, whole: bool
) -> Generator[Effect, Any, list[DeadLetter]]:
    """Perform with retries; bisect a batch that keeps failing to isolate its poison.

    The whole batch and single requests get ``attempts`` performs; the halves in
    between get one each, so one poison request in a batch of B costs at most
    ``2 * attempts + 2 * ceil(log2(B)) - 1`` performs, and a request that
    succeeds is performed at most ``attempts + ceil(log2(B))`` times.

    A ``perform`` that raises `BatchFailed` names its failed requests: the next
    attempts perform only those (the others are done), and those failing the last
    attempt are dead-lettered with their own errors, without bisection. One that
    raises `RateLimited` sends the whole batch back (`_HoldBack`), no attempt counted.
    """
    attempts = policy.attempts_for(thread.handler) if whole or len(messages) == 1 else 1
    error: BaseException | None = None
    failed: dict[int, BaseException] = {}  # position -> error, after a BatchFailed
    for attempt in range(1, attempts + 1):
        final = attempt == attempts and len(messages) == 1
        error = yield Perform(thread, messages, policy.timeout_for(thread.handler), attempt, final)
        if error is None:
            return []
        if isinstance(error, RateLimited):
            raise _HoldBack(error.retry_after)
        named = _named_failures(error, messages)
        if named:
            failed = named
            messages = [message for message in messages if message.position in named]
        if attempt < attempts:
            yield Wait(policy.backoff(attempt, rng), wakeable=False)
    assert error is not None
    if failed and isinstance(error, BatchFailed):
        return [DeadLetter(message.position, failed[message.position], attempts) for message in messages]
    if len(messages) == 1:
        return [DeadLetter(messages[0].position, error, attempts)]
    middle = len(messages) // 2
    dead = yield from _perform(thread, messages[:middle], policy, rng, whole=False)
    dead += yield from _perform(thread, messages[middle:], policy, rng, whole=False)
    return dead


def _named_failures(error: BaseException, messages: Sequence[Message]) -> dict[int, BaseException]:
    """The failed requests a `BatchFailed` names, by their position in the fetched batch
    (its indexes are into ``messages``, as ``perform`` got them); empty when it is another
    error or names none of them."""
    if not isinstance(error, BatchFailed):
        return {}
    return {messages[index].position: cause for index, cause in error.failures.items() if index < len(messages)}
