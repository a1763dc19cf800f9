"""sharded_queue: an asyncio job queue sharded into FIFO threads and priority orders,
performed in batches, on Redis, Redis Cluster or an embedded fakeredis.

The public names are listed in ``__all__``; every other module is private.
"""

from .core import Cron, ThreadRef, Tube
from .deadletters import DeadLetterRecord
from .errors import (
    BatchFailed,
    DecodeError,
    EmbeddedStorageWarning,
    QueueError,
    RateLimited,
    RouteError,
    RouteTypeError,
    SerializationError,
    SettingsError,
    StorageConfigError,
    StorageError,
    StorageFull,
    StorageTimeout,
    ThreadFull,
)
from .handler import Handler, RequestRoute, Route
from .metrics import Metrics
from .queue import Queue
from .settings import Settings, settings
from .storage import Storage
from .sync import SyncQueue
from .worker import Worker

__all__ = [
    "BatchFailed",
    "Cron",
    "DeadLetterRecord",
    "DecodeError",
    "EmbeddedStorageWarning",
    "Handler",
    "Metrics",
    "Queue",
    "QueueError",
    "RateLimited",
    "RequestRoute",
    "Route",
    "RouteError",
    "RouteTypeError",
    "SerializationError",
    "Settings",
    "SettingsError",
    "Storage",
    "StorageConfigError",
    "StorageError",
    "StorageFull",
    "StorageTimeout",
    "SyncQueue",
    "ThreadFull",
    "ThreadRef",
    "Tube",
    "Worker",
    "settings",
]
