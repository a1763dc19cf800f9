"""The key schema: every Redis key of the queue, what it holds, and the invariants the scripts keep.

Keys (``P`` is ``settings.key_prefix``; ``{H/T}`` is the hash tag of thread T of
handler H, so a thread's keys share one cluster slot and its scripts stay
single-slot)::

    P:{H/T}:o:<order>   list    a tube: envelopes, FIFO (RPUSH at the tail, trimmed at the head)
    P:{H/T}:orders      zset    non-empty orders of the thread, scored by precedence
    P:{H/T}:lease       string  the lease token of the loop bound to the thread (PX ttl)
    P:{H/T}:acked       string  token:seq of the last ack applied (PX ttl), so retries never re-trim
    P:{H/T}:losses      hash    per order: fetches of the tube's head never acked (lease lost, holder died)
    P:{H/T}:deferred    zset    deferred envelopes (sequence, envelope, rank, order), scored by due time
    P:{H/T}:deferred-seq string counter: deferred envelopes due together keep their registration order
    P:{H/T}:u:<order>   set     requests registered with if_not_exists that wait in the tube (or are
                                deferred to it), as 'request] '; their envelopes end in a space,
                                which marks them as owners: an owner's ack removes the mark
    P:{H/T}:recurring   zset    recurring requests (request newline order), scored by their next tick
    P:{H/T}:schedules   hash    recurring request -> its schedule (JSON: every or cron, rank, unique)
    P:{H/T}:dead        list    dead letters of the thread (JSON records, each with its order's rank)
    P:{H/T}:controls    hash    what holds the thread back (see Controls): paused, all, after
    P:{H/T}:bucket      hash    the thread's rate-limit token bucket: tokens, at (PX: until full)
    P:{H}:threads       zset    index of non-empty threads, scored by when they become
                                visible to the coordinator (now, or lease expiry while leased),
                                on the storage server's clock
    P:stamps            zset    one server: stamps of recent registrations (retries append once)
    P:{H/T}:stamps      zset    a cluster: the same, per thread (each slot's call is retried alone)
    P:{H}:dead-threads  zset    threads of H that have dead letters (scored by the first one's time)
    P:{H}:due           zset    threads of H with deferred or recurring requests, scored by the
                                earliest due time (server clock): workers look only at what is due
    P:{H}:counts        hash    the handler's counts: waiting, deferred, dead (see Counts), and
                                recounted (server seconds of the last `Storage.recount`)
    P:{H}:tallies       hash    thread -> 'waiting deferred dead head': the counts of each of its
                                threads last applied to P:{H}:counts (none for an empty thread)
    P:{H}:gone          zset    a cluster: threads whose tally went to nothing, scored by its version
                                (their node's microseconds), kept ten minutes: a late tally is left out
    P:{H}:heads         zset    threads that hold messages, scored by the enqueued_at of the oldest
                                head of their tubes: the handler's lag
    P:{H}:paused        hash    the handler's pauses: thread (or '*', the whole handler) -> when it ends
    P:{H}:pause-copies  set     threads given a copy of a handler-wide pause (their controls' 'all')
    P:{H}:bucket        hash    the handler's rate-limit token bucket (one server; see Controls)
    P:wake              channel a message per registration naming its threads, to wake loops

Operations (worker registry and inspection; see `sharded_queue.registry` and
`sharded_queue.stats`)::

    P:{registry}:handlers  set   names of every handler registered or worked on (read by stats;
                                 a name is only ever displayed, never imported)
    P:{registry}:workers   zset  worker registry: worker id -> when its record expires (server ms)
    P:{registry}:w:<id>    hash  a worker's record: JSON (handlers, loops, counters, held threads),
                                 started_at and beat_at (server ms); PX ttl, renewed by heartbeat

A lease's token names its holder: ``<worker id>:<loop>@<since ms>/<random>``
(``since`` is the holder's own clock, for display only).

Invariants: an order is in ``orders`` iff its tube is non-empty (scripts keep
it so); a non-empty thread is always in the index, because registration adds it
*after* appending, and removal from the index is atomic with the emptiness check
(one server) or remove-then-recheck-then-re-add (a cluster, where the index lives
in another slot than the thread): `layout.SingleServer` and `layout.Cluster`.

Counts: every script that changes what a thread holds (push, cycle, due, fire,
unschedule, dead, tally) ends by counting the thread (``lib.lua``'s ``count_thread``): it
reads the thread's tally (the lengths of its tubes, deferred zset and dead-letter
list, and the oldest head's enqueued_at: a few O(1) reads per order, from the
keys above, which the scripts derive from the thread's stem ``P:{H/T}``) and
applies it to the handler's: ``counts`` moves by the difference from the
thread's last tally in ``tallies``, and ``heads`` scores it, in one step, so
``counts`` is always the sum of ``tallies``. `Storage.pending` and stats' totals
read one hash, and the handler's lag one zset entry, however many threads.
On one server this happens in the script's own call, atomically. On a cluster
the handler's keys are another slot: the script returns the tally and the
client applies it with ``counts.lua`` right after (`layout.Cluster`). A tally is
absolute, so applying one is idempotent, and it carries a version (the thread's
node's clock in microseconds): two clients changing one thread at once may apply
their tallies out of order, and the older one is then left out (``gone`` keeps
the version of a thread that emptied, so a late tally cannot bring it back). A
client that crashes (or loses its connection) between the two leaves the
handler's counts off by that thread's change (a drift), until the thread
changes again; a retried push or ack, which returns the tally again, mends it. `Storage.recount` (`Queue.recount`)
rebuilds a handler's counts from its threads: it counts again every thread of
its indexes and tallies (walked once, by ZSCAN and HSCAN), then sets ``counts``
and ``heads`` to what the tallies add up to (one call, O(threads)); safe while
workers run. Reads run it by themselves once per handler, when ``recounted`` is
missing: a handler written by a version without counts (whose threads were
counted only as they changed), or never read yet. Nothing else runs it.

Controls: a thread's ``controls`` hash holds, each as a time on the storage
server's clock (``1e15`` for a pause without end): ``paused`` (the thread is
paused), ``all`` (a copy of a handler-wide pause) and ``after`` (not before:
a ``perform`` raised `RateLimited`, or a rate limit's bucket stays empty long).
acquire.lua refuses a thread they hold back, or whose handler is paused
(``P:{H}:paused``'s ``'*'``: read by acquire.lua on one server, by index.lua's
``take`` on a cluster, both in the handler's slot), and hides it in the index
until then; cycle.lua returns no batch for it, so its holder acks and lets go.
Fields that have passed are dropped as they are read; a thread with none set
costs acquire and cycle one ``EXISTS``. A handler-wide pause is written to
``P:{H}:paused`` first, then copied to the threads of the index (a thread that
joins the index later is refused at acquire); a resume removes it and the copies
(``pause-copies``), and shows the threads again. Rate limits are token buckets
that cycle.lua reads and spends on its clock, cutting the batch to what they
hold: the thread's in its slot; the handler's in ``P:{H}:bucket``, passed to
cycle.lua on one server, and on a cluster (another slot) reserved by
``bucket.lua`` before the cycle, and what a short batch left unused given back.

Time: every score and expiry the storage compares is the storage server's clock
(Lua ``TIME``) or a relative TTL, never a client's ``time.time()``: clients'
clocks may be off by hours. The envelope's ``enqueued_at`` is the registering
client's clock, kept for traces only.

A full Redis (``maxmemory`` with ``noeviction``): the scripts that only move
leases or free memory (acquire, cycle, renew, release, index) are declared
``allow-oom``, so workers keep draining; ``push`` is refused whole (`StorageFull`).
"""

from __future__ import annotations

from ..core import ThreadRef, Tube


class Keys:
    """Every Redis key name of the queue, under one prefix."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.wake = f"{prefix}:wake"

    def thread(self, ref: ThreadRef) -> str:
        """Common hash-tagged stem of a thread's keys."""
        return f"{self.prefix}:{{{ref.handler}/{ref.thread}}}"

    def tube_prefix(self, ref: ThreadRef) -> str:
        """Tube key of order O is this plus O."""
        return f"{self.thread(ref)}:o:"

    def tube(self, tube: Tube) -> str:
        """The list holding a tube's envelopes."""
        return f"{self.tube_prefix(tube.thread_ref)}{tube.order}"

    def orders(self, ref: ThreadRef) -> str:
        """Zset of a thread's non-empty orders."""
        return f"{self.thread(ref)}:orders"

    def lease(self, ref: ThreadRef) -> str:
        """A thread's lease."""
        return f"{self.thread(ref)}:lease"

    def stamps(self, ref: ThreadRef | None = None) -> str:
        """Stamps of recent registrations: one zset per prefix, or per thread on a cluster."""
        return f"{self.prefix}:stamps" if ref is None else f"{self.thread(ref)}:stamps"

    def acked(self, ref: ThreadRef) -> str:
        """Stamp of the last ack applied under a lease (makes acks idempotent)."""
        return f"{self.thread(ref)}:acked"

    def deferred(self, ref: ThreadRef) -> str:
        """Zset of a thread's deferred envelopes, scored by due time."""
        return f"{self.thread(ref)}:deferred"

    def deferred_seq(self, ref: ThreadRef) -> str:
        """Counter ordering a thread's deferred envelopes due at the same time."""
        return f"{self.thread(ref)}:deferred-seq"

    def marks_prefix(self, ref: ThreadRef) -> str:
        """The marks set of a thread's order O is this plus O."""
        return f"{self.thread(ref)}:u:"

    def marks(self, tube: Tube) -> str:
        """Set of a tube's waiting ``if_not_exists`` requests."""
        return f"{self.marks_prefix(tube.thread_ref)}{tube.order}"

    def recurring(self, ref: ThreadRef) -> str:
        """Zset of a thread's recurring requests (request, newline, order), scored by next tick."""
        return f"{self.thread(ref)}:recurring"

    def schedules(self, ref: ThreadRef) -> str:
        """Hash of a thread's recurring requests -> their schedule (JSON)."""
        return f"{self.thread(ref)}:schedules"

    def due_index(self, handler: str) -> str:
        """Zset of a handler's threads with deferred or recurring requests, scored by the earliest due."""
        return f"{self.prefix}:{{{handler}}}:due"

    def losses(self, ref: ThreadRef) -> str:
        """Per order, fetches of the head never acked (lease lost or holder dead mid-batch)."""
        return f"{self.thread(ref)}:losses"

    def controls(self, ref: ThreadRef) -> str:
        """Hash of what holds a thread back: paused, all (a handler-wide pause's copy), after."""
        return f"{self.thread(ref)}:controls"

    def bucket(self, ref: ThreadRef | str) -> str:
        """A rate limit's token bucket: a thread's, or (by name) its handler's."""
        if isinstance(ref, str):
            return f"{self.prefix}:{{{ref}}}:bucket"
        return f"{self.thread(ref)}:bucket"

    def paused(self, handler: str) -> str:
        """Hash of a handler's pauses: thread (``*``: all of them) -> when it ends."""
        return f"{self.prefix}:{{{handler}}}:paused"

    def pause_copies(self, handler: str) -> str:
        """Set of the threads given a copy of the handler-wide pause."""
        return f"{self.prefix}:{{{handler}}}:pause-copies"

    def dead(self, ref: ThreadRef) -> str:
        """A thread's dead letters."""
        return f"{self.thread(ref)}:dead"

    def counts(self, handler: str) -> str:
        """Hash of a handler's counts: waiting, deferred, dead, and when it was last recounted."""
        return f"{self.prefix}:{{{handler}}}:counts"

    def tallies(self, handler: str) -> str:
        """Hash of the counts of a handler's threads last applied to its counts."""
        return f"{self.prefix}:{{{handler}}}:tallies"

    def gone(self, handler: str) -> str:
        """A cluster: zset of the threads whose tally went to nothing, scored by its version."""
        return f"{self.prefix}:{{{handler}}}:gone"

    def heads(self, handler: str) -> str:
        """Zset of a handler's threads holding messages, scored by their oldest head's enqueued_at."""
        return f"{self.prefix}:{{{handler}}}:heads"

    def index(self, handler: str) -> str:
        """Zset of a handler's non-empty threads."""
        return f"{self.prefix}:{{{handler}}}:threads"

    def dead_index(self, handler: str) -> str:
        """Zset of a handler's threads that hold dead letters."""
        return f"{self.prefix}:{{{handler}}}:dead-threads"

    # --- operations ---

    @property
    def handlers(self) -> str:
        """Set of the names of every handler registered or worked on (in the registry's slot)."""
        return f"{self.prefix}:{{registry}}:handlers"

    @property
    def workers(self) -> str:
        """Zset of live workers' ids, scored by when their record expires (server ms)."""
        return f"{self.prefix}:{{registry}}:workers"

    def worker(self, worker_id: str) -> str:
        """A worker's heartbeat record (in the registry's slot)."""
        return f"{self.prefix}:{{registry}}:w:{worker_id}"
