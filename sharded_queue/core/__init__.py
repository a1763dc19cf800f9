"""The pure core: every decision of the queue, with no I/O and no clock.

The asyncio worker (`sharded_queue.worker`) and the simpy twin (`simulator`)
both run `worker_program`, a generator that *yields effects* (`effects`) and
receives their results. The shells only carry effects out: Redis and real
handlers in one, simulated time and service models in the other. So the
choice of thread, batch sizing, empty-limit/pause, release, retries with
backoff, poison bisection, start failures, due moves, timeouts (`program`,
`policy`) and the routing of wake-ups (`wakeups`) exist once, here.

Modules, each importing only those before it:

- `routing`: `Route`, `RequestRoute`, `ThreadRef`, `Tube`, order precedence;
- `schedule`: deferred and recurring requests' times;
- `controls`: rate limits read from their strings;
- `effects`: the effects, their results, batches;
- `policy`: `LoopPolicy`, the numbers a loop decides with;
- `wakeups`: which loops a registration wakes;
- `program`: `worker_program`.
"""

from .controls import Rate, parse_rate
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
    Envelopes,
    Fire,
    Held,
    Hold,
    Lost,
    Message,
    MoveDue,
    Perform,
    Poll,
    PollResult,
    Program,
    Short,
    Wait,
    enqueued_times,
)
from .policy import CANDIDATES_PER_HANDLER, LoopPolicy, after_losses, order_candidates
from .program import Control, worker_program
from .routing import (
    RequestRoute,
    Route,
    ThreadRef,
    Tube,
    check_name,
    check_routes,
    group_by_tube,
    order_key,
    order_rank,
)
from .schedule import MAX_DEFER, Cron, DueTick, Schedule, Tick, due_when, next_ticks
from .wakeups import answering, answers, wake_targets, waking_touch

__all__ = [
    "CANDIDATES_PER_HANDLER",
    "LOST",
    "MAX_DEFER",
    "Ack",
    "Acquire",
    "Batch",
    "Begin",
    "Control",
    "Cron",
    "Cycle",
    "DeadLetter",
    "DueMoves",
    "DueTick",
    "Effect",
    "End",
    "Envelopes",
    "Fire",
    "Held",
    "Hold",
    "LoopPolicy",
    "Lost",
    "Message",
    "MoveDue",
    "Perform",
    "Poll",
    "PollResult",
    "Program",
    "Rate",
    "RequestRoute",
    "Route",
    "Schedule",
    "Short",
    "ThreadRef",
    "Tick",
    "Tube",
    "Wait",
    "after_losses",
    "answering",
    "answers",
    "check_name",
    "check_routes",
    "due_when",
    "enqueued_times",
    "group_by_tube",
    "next_ticks",
    "order_candidates",
    "order_key",
    "order_rank",
    "parse_rate",
    "wake_targets",
    "waking_touch",
    "worker_program",
]
