"""The lease token's format, in one place: a token names the loop holding a thread.

``<worker id>:<loop>@<since ms>/<random>``: inspection shows which loop holds a
thread and since when. ``since`` is the holder's own clock: it is shown, never
compared (the lease's expiry is the storage server's TTL). The random part
makes every token unique, which fencing relies on.
"""

from __future__ import annotations

import secrets


def lease_token(holder: str, since: float) -> str:
    """A lease token naming ``holder`` (worker id and loop) and when it took the lease (its clock)."""
    return f"{holder}@{int(since * 1000)}/{secrets.token_hex(8)}"


def parse_lease_token(token: str) -> tuple[str, float | None]:
    """``(holder, since)`` of a lease token; a token of another format is its own holder."""
    named, slash, _ = token.rpartition("/")
    holder, at, since = named.rpartition("@")
    if not (slash and at and since.isdigit()):
        return token, None
    return holder, int(since) / 1000
