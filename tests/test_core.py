"""The core's decisions as tables, with no Redis, no simpy and no clock (as h11 tests its state machine).

Each row feeds `worker_program` the results a shell would send and compares the
effects it yields; the wake-up, policy and schedule rows call the pure functions
the asyncio worker and the simulator both call.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

import pytest

from sharded_queue import Handler, Settings
from sharded_queue.core import (
    LOST,
    Ack,
    Acquire,
    Batch,
    Begin,
    Control,
    Cycle,
    DeadLetter,
    DueMoves,
    DueTick,
    Effect,
    End,
    Fire,
    LoopPolicy,
    Message,
    MoveDue,
    Perform,
    Poll,
    PollResult,
    Schedule,
    ThreadRef,
    Tick,
    Wait,
    answering,
    answers,
    next_ticks,
    wake_targets,
    waking_touch,
    worker_program,
)
from sharded_queue.errors import LeaseLost

A, B, C = ThreadRef("h", "a"), ThreadRef("h", "b"), ThreadRef("h", "c")
POLICY = LoopPolicy(batch_size=3, empty_limit=2, empty_pause=0.1, coordinator_delay=1.0, hold_limit=0)


class InOrder(random.Random):
    """Candidates tried in the order given (no shuffle); backoff jitter at its maximum."""

    def shuffle(self, x: Any, *args: Any) -> None:
        pass

    def random(self) -> float:
        return 1.0


def batch(*requests: int, order: str = "0", losses: int = 0) -> Batch:
    return Batch(order, len(requests), [Message(i, r, 0.0) for i, r in enumerate(requests)], (), losses)


def run(rows: Sequence[tuple[Any, Effect | None]], policy: LoopPolicy = POLICY, **options: Any) -> None:
    """Drive a program: each row is (result sent for the previous effect, the effect expected next).
    The first row's result is ignored (the program starts); None as the expected effect: it returns."""
    program = worker_program(policy, rng=InOrder(), **options)
    for step, (result, expected) in enumerate(rows):
        try:
            effect = next(program) if step == 0 else program.send(result)
        except StopIteration:
            assert expected is None, f"row {step}: the program returned, expected {expected!r}"
            return
        assert effect == expected, f"row {step}: got {effect!r}, expected {expected!r}"


def bound(thread: ThreadRef = A, *, wake_next: bool = False) -> list[tuple[Any, Effect]]:
    """The rows that bind ``thread``, the only candidate (or the first of several)."""
    return [
        (None, Poll()),
        (PollResult([thread]), Acquire(thread, wake_next=wake_next)),
        (True, Begin(thread)),
    ]


def test_idle_loop_waits_the_coordinator_delay_or_until_something_is_due() -> None:
    run([(None, Poll()), (PollResult(), Wait(1.0)), (None, Poll()), (PollResult(due_in=0.25), Wait(0.25))])


def test_a_poll_that_finds_due_requests_moves_them_then_polls_again() -> None:
    tick = DueTick(b"r\n0", 100.0, b"100.000000", Schedule(every=60), "0", False)
    run(
        [
            (None, Poll()),
            (PollResult(due=[A, B]), MoveDue(A)),
            (DueMoves(moved=2), MoveDue(B)),
            (DueMoves(0, [tick], now=130.0), Fire(B, [Tick(b"r\n0", b"100.000000", 160.0, "0", False)])),
            (1, Poll()),
            (PollResult([A]), Acquire(A)),
        ]
    )


def test_binding_tries_each_candidate_and_wakes_another_loop_while_more_wait() -> None:
    run(
        [
            (None, Poll()),
            (PollResult([A, B, C]), Acquire(A, wake_next=True)),
            (False, Acquire(B, wake_next=True)),
            (False, Acquire(C, wake_next=False)),
            (False, Wait(1.0)),
        ]
    )


def test_a_failed_start_gives_the_thread_back_pauses_and_tries_it_last() -> None:
    run(
        [
            *bound(),
            (False, End(A)),
            (None, Wait(POLICY.backoff(1, InOrder()), wakeable=False)),
            (None, Poll()),
            (PollResult([A, B]), Acquire(B, wake_next=True)),
        ]
    )


def test_a_batch_is_performed_with_its_handlers_timeout_then_acked_with_the_next_fetch() -> None:
    policy = LoopPolicy.from_settings(Settings(worker_batch_size=3, worker_hold_limit=0), timeouts={"h": 2.5})
    first = batch(1, 2, 3)
    run(
        [
            *bound(),
            (True, Cycle(A, None, 3)),
            (first, Perform(A, first.messages, 2.5)),
            (None, Cycle(A, Ack("0", 3), 3)),
        ],
        policy,
    )


def test_an_empty_thread_is_released_at_once_when_others_wait() -> None:
    run([*bound(), (True, Cycle(A, None, 3)), (None, Poll()), (PollResult([B]), End(A)), (None, Poll())])


def test_an_empty_thread_is_kept_until_the_empty_limit_when_nothing_else_waits() -> None:
    run(
        [
            *bound(),
            (True, Cycle(A, None, 3)),
            (None, Poll()),
            (PollResult(due_in=0.05), Wait(0.05)),  # what comes due may be this thread's
            (None, Cycle(A, None, 3)),
            (None, End(A)),  # the second empty poll: empty_limit=2
        ]
    )


def test_an_empty_poll_that_moved_due_requests_looks_again_at_once() -> None:
    run(
        [
            *bound(),
            (True, Cycle(A, None, 3)),
            (None, Poll()),
            (PollResult(due=[A]), MoveDue(A)),
            (DueMoves(moved=1), Poll()),
            (PollResult(), Cycle(A, None, 3)),
        ]
    )


def test_a_lost_lease_ends_the_binding_without_an_ack() -> None:
    run([*bound(), (True, Cycle(A, None, 3)), (LOST, End(A)), (None, Poll())])


def test_a_failing_request_is_retried_isolated_and_dead_lettered_in_the_ack() -> None:
    policy = LoopPolicy(batch_size=2, retry_attempts=2, retry_backoff=0.5, retry_backoff_max=5.0, hold_limit=0)
    both = batch(1, 2)
    error = ValueError("poison")
    run(
        [
            *bound(),
            (True, Cycle(A, None, 2)),
            (both, Perform(A, both.messages, 300.0)),
            (error, Wait(0.5, wakeable=False)),
            (None, Perform(A, both.messages, 300.0, attempt=2)),
            (error, Perform(A, both.messages[:1], 300.0)),  # bisected: the first half succeeds
            (None, Perform(A, both.messages[1:], 300.0)),
            (error, Wait(0.5, wakeable=False)),
            (None, Perform(A, both.messages[1:], 300.0, attempt=2, final=True)),  # a failure dead-letters it
            (error, Cycle(A, Ack("0", 2, (DeadLetter(1, error, 2),)), 2)),
        ],
        policy,
    )


def test_a_head_that_keeps_losing_its_lease_is_shrunk_then_dead_lettered() -> None:
    """From ``retry_attempts`` losses on, each loss halves the head performed; a single request
    that keeps losing goes to the dead letters unperformed (`core.after_losses`)."""
    policy = LoopPolicy(batch_size=4, retry_attempts=2, hold_limit=0)
    lost_twice, lost_thrice = batch(1, 2, 3, 4, losses=2), batch(1, 2, 3, 4, losses=3)
    run([*bound(), (True, Cycle(A, None, 4)), (lost_twice, Perform(A, lost_twice.messages[:2], 300.0))], policy)
    run([*bound(), (True, Cycle(A, None, 4)), (lost_thrice, Perform(A, lost_thrice.messages[:1], 300.0))], policy)
    program = worker_program(policy, rng=InOrder())
    assert [next(program), program.send(PollResult([A])), program.send(True)] == [Poll(), Acquire(A), Begin(A)]
    assert program.send(True) == Cycle(A, None, 4)
    effect = program.send(batch(1, 2, 3, 4, losses=4))
    assert isinstance(effect, Cycle) and effect.ack is not None
    (dead,) = effect.ack.dead
    assert (effect.ack.count, dead.index, dead.attempts, type(dead.error)) == (1, 0, 4, LeaseLost)


def test_every_hold_limit_batches_a_busy_thread_lets_a_waiting_one_in() -> None:
    policy = LoopPolicy(batch_size=1, hold_limit=2)
    one, two = batch(1), batch(2)
    run(
        [
            *bound(),
            (True, Cycle(A, None, 1)),
            (one, Perform(A, one.messages, 300.0)),
            (None, Cycle(A, Ack("0", 1), 1)),
            (two, Perform(A, two.messages, 300.0)),
            (None, Poll()),  # the second batch: ask the coordinator
            (PollResult([B]), Cycle(A, Ack("0", 1), 0)),  # ack, fetch nothing
            (None, End(A)),
        ],
        policy,
    )


def test_a_stop_acks_the_batch_in_hand_and_releases() -> None:
    control = Control()
    first = batch(1)
    program = worker_program(POLICY, rng=InOrder(), control=control)
    effects = [next(program), program.send(PollResult([A])), program.send(True), program.send(True)]
    assert effects[-1] == Cycle(A, None, 3)
    assert program.send(first) == Perform(A, first.messages, 300.0)
    control.stopping = True
    assert program.send(None) == Cycle(A, Ack("0", 1), 0)
    assert program.send(None) == End(A)
    with pytest.raises(StopIteration) as stopped:
        program.send(None)
    assert stopped.value.value == 1


def test_a_limit_caps_the_batches_and_ends_the_program() -> None:
    program = worker_program(POLICY, limit=2, rng=InOrder())
    assert [next(program), program.send(PollResult([A])), program.send(True)] == [Poll(), Acquire(A), Begin(A)]
    assert program.send(True) == Cycle(A, None, 2)
    two = batch(1, 2)
    assert program.send(two) == Perform(A, two.messages, 300.0)
    assert program.send(None) == Cycle(A, Ack("0", 2), 0)
    assert program.send(None) == End(A)
    with pytest.raises(StopIteration):
        program.send(None)


class _Overrides(Handler):
    batch_size = 7
    retry_attempts = 5
    timeout = 2.0


@pytest.mark.parametrize(
    ("handler", "batch", "attempts", "timeout"),
    [("own", 7, 5, 2.0), ("plain", 128, 3, 300.0)],
)
def test_the_policy_takes_each_handlers_overrides_else_the_settings(
    handler: str, batch: int, attempts: int, timeout: float
) -> None:
    policy = LoopPolicy.for_handlers(Settings(), {"own": _Overrides, "plain": Handler})
    assert (policy.batch_limit(handler, None), policy.attempts_for(handler), policy.timeout_for(handler)) == (
        batch,
        attempts,
        timeout,
    )
    assert policy.batch_limit(handler, 2) == 2


# --- wake-ups -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("threads", "held", "answered", "idle", "woken"),
    [
        ([A], {A: "L1"}, set(), ["I1"], ["L1"]),  # the holder, even where another process answers
        ([A], {}, {A}, ["I1", "I2"], ["I1"]),  # else the oldest idle loop
        ([A, B], {}, {A, B}, ["I1", "I2"], ["I1", "I2"]),  # one per thread
        ([A, B, C], {}, {A, B, C}, ["I1"], ["I1"]),  # no more than there are
        ([A], {}, set(), ["I1"], []),  # another process answers for it
        ([A, B], {A: "L1"}, {B}, ["I1"], ["L1", "I1"]),
    ],
)
def test_a_registration_wakes_the_holder_else_one_idle_loop(
    threads: list[ThreadRef], held: dict[ThreadRef, str], answered: set[ThreadRef], idle: list[str], woken: list[str]
) -> None:
    assert wake_targets(threads, held.get, answered.__contains__, iter(idle)) == woken


@pytest.mark.parametrize(
    ("peers", "me", "expected"),
    [([], "w1", True), (["w1"], "w1", True), (["w2", "w3"], "w1", True)],  # alone, or not beaten yet
)
def test_a_worker_answers_everything_until_it_sees_itself_among_others(
    peers: list[str], me: str, expected: bool
) -> None:
    assert answers(peers, me, A) is expected


def test_exactly_one_of_the_live_workers_answers_each_thread() -> None:
    peers = ["w1", "w2", "w3"]
    threads = [ThreadRef("h", str(i)) for i in range(300)]
    for thread in threads:
        assert sum(answers(peers, me, thread) for me in peers) == 1
        assert answers(peers, answering(peers, thread), thread)
    shares = [sum(answering(peers, t) == me for t in threads) for me in peers]
    assert min(shares) > 60  # rendezvous hashing spreads them


def test_the_closed_form_the_twin_uses_wakes_the_same_loops_as_per_registration_routing() -> None:
    """`waking_touch` (an idle loop with k unwoken loops ahead is woken by the (k+1)-th touch of an
    unheld, answered thread) against `wake_targets` applied registration by registration."""
    rng = random.Random(7)
    for _ in range(200):
        idle = [f"I{i}" for i in range(rng.randint(0, 6))]
        held = {A: "L1"} if rng.random() < 0.5 else {}
        answered = {t for t in (A, B, C) if rng.random() < 0.7}
        registrations = [[rng.choice([A, B, C]) for _ in range(rng.randint(1, 3))] for _ in range(rng.randint(1, 8))]
        woken_at: dict[str, int] = {}
        touches = 0
        for threads in registrations:
            unwoken = iter([loop for loop in idle if loop not in woken_at])
            targets = wake_targets(threads, held.get, answered.__contains__, unwoken)
            for number, loop in enumerate([loop for loop in targets if loop in idle], touches + 1):
                woken_at[loop] = number
            touches += sum(1 for thread in threads if thread not in held and thread in answered)
        expected = {loop: waking_touch(ahead) for ahead, loop in enumerate(idle) if waking_touch(ahead) <= touches}
        assert woken_at == expected


# --- schedules ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("every", "due", "now", "next_due"),
    [(60.0, 100.0, 100.0, 160.0), (60.0, 100.0, 130.0, 160.0), (60.0, 100.0, 400.0, 460.0)],  # missed ticks collapse
)
def test_the_next_tick_is_the_first_after_now(every: float, due: float, now: float, next_due: float) -> None:
    (tick,) = next_ticks([DueTick(b"m", due, b"stored", Schedule(every=every), "1", True)], now)
    assert tick == Tick(b"m", b"stored", next_due, "1", True)


# --- thread controls (issue #27): what a loop decides when a cycle is held back ---------------


def test_a_paused_thread_is_let_go_after_the_batch_in_hand_is_acked() -> None:
    from sharded_queue.core import Held

    run(
        [
            *bound(),
            (True, Cycle(A, None, 3)),
            (batch(1, 2), Perform(A, batch(1, 2).messages, 300.0, 1, False)),
            (None, Cycle(A, Ack("0", 2), 3)),
            (Held(paused=True), End(A)),
        ]
    )


def test_an_empty_bucket_keeps_the_thread_for_a_short_wait_and_holds_it_for_a_long_one() -> None:
    from sharded_queue.core import Held, Hold

    run(
        [
            *bound(),
            (True, Cycle(A, None, 3)),
            (Held(wait=0.25), Wait(0.25, wakeable=False)),  # up to coordinator_delay: keep it
            (None, Cycle(A, None, 3)),
            (Held(wait=30.0), Cycle(A, None, 0, hold=Hold(30.0))),  # longer: not before, let go
            (None, End(A)),
        ]
    )


def test_rate_limited_sends_the_batch_back_whole_and_holds_the_thread() -> None:
    from sharded_queue.core import Hold
    from sharded_queue.errors import RateLimited

    fetched = batch(1, 2, 3)
    run(
        [
            *bound(),
            (True, Cycle(A, None, 3)),
            (fetched, Perform(A, fetched.messages, 300.0, 1, False)),
            (RateLimited(5.0), Cycle(A, None, 0, hold=Hold(5.0, "0"))),  # no retry, no attempt
            (None, End(A)),
        ]
    )


def test_batch_failed_retries_only_the_named_requests_then_dead_letters_them() -> None:
    from sharded_queue.errors import BatchFailed

    fetched = batch(10, 11, 12, 13)
    first, third = ValueError("one"), ValueError("three")
    policy = LoopPolicy(batch_size=4, empty_limit=2, coordinator_delay=1.0, hold_limit=0, retry_attempts=2)
    failed = [fetched.messages[1], fetched.messages[3]]
    run(
        [
            *bound(),
            (True, Cycle(A, None, 4)),
            (fetched, Perform(A, fetched.messages, 300.0, 1, False)),
            (BatchFailed({1: first, 3: third}), Wait(policy.backoff(1, InOrder()), wakeable=False)),
            (None, Perform(A, failed, 300.0, 2, False)),
            (
                BatchFailed({0: first, 1: third}),
                Cycle(A, Ack("0", 4, (DeadLetter(1, first, 2), DeadLetter(3, third, 2))), 4),
            ),
        ],
        policy,
    )


def test_a_lingering_loop_waits_for_the_batch_to_fill_then_takes_what_there_is() -> None:
    from sharded_queue.core import Short

    policy = LoopPolicy(batch_size=3, empty_limit=2, coordinator_delay=1.0, hold_limit=0, batch_linger=0.5)
    run(
        [
            *bound(),
            (True, Cycle(A, None, 3, linger=True)),
            (Short(1, now=100.0), Wait(0.5)),  # woken by a registration, or after the linger
            (None, Cycle(A, None, 3, linger=True)),
            (Short(2, now=100.25), Wait(0.25)),
            (None, Cycle(A, None, 3, linger=True)),
            (Short(2, now=100.5), Cycle(A, None, 3)),  # the linger has passed: take what there is
            (batch(1, 2), Perform(A, batch(1, 2).messages, 300.0, 1, False)),
            (None, Cycle(A, Ack("0", 2), 3, linger=True)),  # the next batch lingers again
        ],
        policy,
    )
