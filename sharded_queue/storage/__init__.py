"""Redis storage: every key, every Lua script and every round trip of the queue.

One implementation speaks the Redis protocol through redis-py's asyncio client:
embedded fakeredis (no URL), a Redis/Valkey server (``redis://``, ``rediss://``)
or a Redis Cluster (``redis+cluster://``, ``rediss+cluster://``). The client is
held, not subclassed; the worker and the queue use the operations of
`protocol.QueueStorage`. By concern, each module importing only those above it:

- `keys`: the key schema (every key, what it holds, the invariants), `Keys`;
- `client`: a URL to a redis-py client (`connect`) and back to a URL safe to log;
- `transport`: the only module touching redis-py's internals (lanes, hiredis packing);
- `scripts`: the Lua scripts of ``sharded_queue/lua/``, run by SHA; error translation;
- `protocol`: `QueueStorage`, the narrow protocol, and the values passed through it;
- `layout`: the handlers' indexes on one server (`SingleServer`) or a cluster (`Cluster`);
- `reads`: counts and recounts, pages of threads, what a thread holds, deferred and recurring requests;
- `admin`: writes off the hot path: schedules, dead letters, the worker registry;
- `controls`: pausing and resuming threads and handlers;
- `store`: `Storage`, the queue's hot path over all of these.
"""

from __future__ import annotations

from .admin import DeadTake, WorkerRecordRaw
from .client import CLIENT_BACKOFF_CAP, CLIENT_RETRIES, CLUSTER_SCHEMES, connect, describe_client, stamp_window
from .keys import Keys
from .protocol import NO_CONTROLS, CycleControls, QueueStorage, StoredSchedule, TubeWrite
from .reads import DeferredEntry, HandlerCounts, Position, ThreadPage, ThreadView, TubeView
from .scripts import SCRIPTS, translate_errors
from .store import Storage, raise_if_cancelled, wake_threads

__all__ = [
    "CLIENT_BACKOFF_CAP",
    "CLIENT_RETRIES",
    "CLUSTER_SCHEMES",
    "NO_CONTROLS",
    "SCRIPTS",
    "CycleControls",
    "DeadTake",
    "DeferredEntry",
    "HandlerCounts",
    "Keys",
    "Position",
    "QueueStorage",
    "Storage",
    "StoredSchedule",
    "ThreadPage",
    "ThreadView",
    "TubeView",
    "TubeWrite",
    "WorkerRecordRaw",
    "connect",
    "describe_client",
    "raise_if_cancelled",
    "stamp_window",
    "translate_errors",
    "wake_threads",
]
