"""The worker program: one worker loop as a generator of effects (`sharded_queue.core.effects`).

Bind a thread, drain it in batches, release it, repeat: the choice of thread,
batch sizing, empty-limit/pause, release, retries with backoff, poison
bisection and lease-loss handling are decided here, once, for the asyncio
worker and the simulator alike.
"""

from __future__ import annotations

import random
from collections.abc import Generator, Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import LeaseLost
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
    Lost,
    Message,
    MoveDue,
    Perform,
    Poll,
    PollResult,
    Program,
    Wait,
)
from .policy import LoopPolicy, after_losses, order_candidates
from .routing import ThreadRef
from .schedule import next_ticks


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
            waiting, moved = yield from _poll()
            if waiting.threads:  # other threads wait for a loop: don't sit on an empty one
                return done
            if not moved:  # else what came due may be this thread's: look at once
                yield Wait(min(policy.empty_pause, waiting.due_in))
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
            waiting, _ = yield from _poll()
            leaving = bool(waiting.threads)  # other threads wait for a loop: ack, then let go


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
        final = attempt == attempts and len(messages) == 1
        error = yield Perform(thread, messages, policy.timeout_for(thread.handler), attempt, final)
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
