"""Wake-ups: which loops a registration wakes, and which worker process answers for a thread.

Every registration publishes the threads it touched. Each worker process then
wakes, for each thread, the loop holding it, or else, if it is the process
answering for the thread (`answers`), its oldest idle loop not woken yet
(idle: it has polled and since done nothing but acquire attempts and waits;
woken: on its way to its next poll, where it will take one thread).

Waking one idle loop per thread (not all of them) keeps a burst of
registrations from turning every idle loop into a coordinator poll; one
process answering keeps it from turning every process into one. The others
find the thread at their next poll.

The asyncio worker applies `wake_targets` to each message as it arrives. The
simulator, which never handles registrations one by one, uses its closed form
`waking_touch`: checked equal to `wake_targets` by the core's tests.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TypeVar

from .routing import ThreadRef

L = TypeVar("L")


def answering(peers: Sequence[str], thread: ThreadRef) -> str:
    """Which of ``peers`` (worker ids) answers ``thread``'s wake-ups: the one ranking
    highest for it (rendezvous hashing), so that one process, not all, polls for it
    and a worker coming or going moves only its own share of the threads."""
    key = f"\0{thread.handler}\0{thread.thread}".encode()
    return max(peers, key=lambda peer: zlib.crc32(peer.encode() + key))


def answers(peers: Sequence[str], me: str, thread: ThreadRef) -> bool:
    """Whether worker ``me`` answers ``thread``'s wake-ups, given the live workers ``peers``
    (as of its last heartbeat). While its view lacks itself (not beaten yet) or it is
    alone, it answers everything."""
    if len(peers) < 2 or me not in peers:
        return True
    return answering(peers, thread) == me


def wake_targets(
    threads: Iterable[ThreadRef],
    holder: Callable[[ThreadRef], L | None],
    answered: Callable[[ThreadRef], bool],
    idle: Iterator[L],
) -> list[L]:
    """The loops one registration of ``threads`` wakes in one worker process.

    Args:
        threads: The threads the registration touched, in its order.
        holder: The loop of this process holding a thread, or None.
        answered: Whether this process answers a thread's wake-ups (`answers`).
        idle: This process's idle loops not woken yet, oldest first; consumed.

    Returns:
        For each thread, its holder, or else (when this process answers for it)
        the next idle loop; threads that find neither wake nobody.
    """
    woken: list[L] = []
    for thread in threads:
        loop = holder(thread)
        if loop is None and answered(thread):
            loop = next(idle, None)
        if loop is not None:
            woken.append(loop)
    return woken


def waking_touch(ahead: int) -> int:
    """`wake_targets` counted over registrations: an idle loop with ``ahead`` idle loops not
    woken yet before it is woken by the ``ahead + 1``-th touch of a thread that no loop of its
    process holds and that its process answers for (each such touch wakes the oldest one left)."""
    return ahead + 1
