"""The storage's thread controls off the batch path: pausing and resuming threads and handlers.

What the scripts do with a pause (acquire refuses the thread, cycle returns no
batch) is described with the keys (`keys`, "Controls"); here a pause is written
(the handler's paused hash, then the thread's controls or, for a whole handler,
a copy in every thread of its index) and removed again, and the threads it hid
are shown and their loops woken.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import msgspec

from ..core import ThreadRef
from .admin import Admin
from .scripts import translate_errors

FOREVER = 1e15
"""A pause without end, as stored (the scripts' ``FOREVER``)."""

ALL = "*"
"""The field of a handler-wide pause, and how `Controls.paused` lists it."""

_CHUNK = 1000


class Controls(Admin):
    """Pauses of threads and handlers (the rate limits and not-befores live in the scripts)."""

    async def pause(self, handler: str, thread: str | None = None, seconds: float | None = None) -> float:
        """Pause ``thread`` of ``handler`` (None: the whole handler) for ``seconds`` (None: until resumed).

        Returns when the pause ends, on the storage server's clock (``inf``: never).
        """
        keys = self.keys
        when = "" if seconds is None else f"+{seconds!r}"
        with translate_errors():
            ends = await self._eval(self.scripts.pause, [keys.paused(handler)], [thread or ALL, when])
            if thread is not None:
                ref = ThreadRef(handler, thread)
                await self._eval(self.scripts.pause, [keys.controls(ref)], ["paused", f"@{ends.decode()}"])
            else:
                await self._copy_pause(handler, ends.decode())
        return _ends(float(ends))

    async def _copy_pause(self, handler: str, ends: str) -> None:
        """Copy a handler-wide pause into every thread of its index (those a loop may hold)."""
        keys = self.keys
        threads = [member.decode() for member in await self.client.zrange(keys.index(handler), 0, -1)]
        for start in range(0, len(threads), _CHUNK):
            chunk = threads[start : start + _CHUNK]
            await self.client.sadd(keys.pause_copies(handler), *chunk)
            await self.scripts.eval_all(
                [
                    (self.scripts.pause, [keys.controls(ThreadRef(handler, thread))], ["all", f"@{ends}"])
                    for thread in chunk
                ]
            )

    async def resume(self, handler: str, thread: str | None = None) -> int:
        """End the pause of ``thread`` of ``handler`` (None: the handler-wide one), show the threads
        it hid to the coordinator and wake idle loops. Returns how many threads were shown."""
        keys = self.keys
        with translate_errors():
            await self.client.hdel(keys.paused(handler), thread or ALL)
            if thread is not None:
                await self.client.hdel(keys.controls(ThreadRef(handler, thread)), "paused")
                shown = [thread]
            else:
                await self._drop_copies(handler)
                shown = [member.decode() for member in await self.client.zrange(keys.index(handler), 0, -1)]
            await self._show(handler, shown)
        return len(shown)

    async def _drop_copies(self, handler: str) -> None:
        """Remove the copies of a handler-wide pause from its threads."""
        keys = self.keys
        copies = [member.decode() for member in await self.client.smembers(keys.pause_copies(handler))]
        await self.client.delete(keys.pause_copies(handler))
        for start in range(0, len(copies), _CHUNK):
            chunk = copies[start : start + _CHUNK]
            controls = [keys.controls(ThreadRef(handler, thread)) for thread in chunk]
            await self.scripts.send_all([("HDEL", key, "all") for key in controls])

    async def _show(self, handler: str, threads: Sequence[str]) -> None:
        """Make ``threads`` (those indexed) visible now, and wake idle loops for them."""
        index = self.keys.index(handler)
        for start in range(0, len(threads), _CHUNK):
            chunk = threads[start : start + _CHUNK]
            await self._eval(self._index, [index], ["wake", 0, *chunk])
            await self.client.publish(self.keys.wake, msgspec.json.encode([[handler, thread] for thread in chunk]))

    async def paused(self, handler: str) -> dict[str, float]:
        """The pauses of ``handler`` in force: thread (``*`` for the whole handler) -> when it ends
        (the storage server's clock; ``inf``: until resumed)."""
        with translate_errors():
            stored = await self.client.hgetall(self.keys.paused(handler))
        now = await self.server_time()
        pauses = {field.decode(): float(ends) for field, ends in stored.items()}
        return {thread: _ends(ends) for thread, ends in sorted(pauses.items()) if ends > now}


def _ends(ends: float) -> float:
    """A stored end of a pause, with no end as ``inf``."""
    return math.inf if ends >= FOREVER else ends
