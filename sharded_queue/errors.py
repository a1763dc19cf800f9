"""The library's exceptions.

Every error the queue raises on purpose derives from `QueueError`::

    QueueError
    ├── SettingsError        a setting or QUEUE_* variable has a bad value (also ValueError)
    ├── RouteError           route() returned something that is not one route per request
    │                        (also ValueError; a wrong item type is also a TypeError)
    ├── SerializationError   a request cannot be encoded for storage (also TypeError)
    ├── DecodeError          a stored payload cannot be decoded (dead-lettered, never raised to users)
    ├── LeaseLost            a request kept losing its holder's lease (dead-lettered, never raised to users)
    └── StorageError         Redis could not be reached or answered with an error
        ├── StorageTimeout   no answer within the timeout
        ├── StorageFull      Redis reached maxmemory (noeviction): registrations are refused
        └── StorageConfigError  Redis refused this configuration: a wrong password, an unknown
                             database or host; retrying cannot help

Warnings: `EmbeddedStorageWarning` (a `UserWarning`), when requests go to the
embedded in-process storage, where only this process can ever perform them.

redis-py's own exceptions are translated into `StorageError` in one place,
`sharded_queue.storage.scripts.translate_errors`, and chained (`raise ... from exc`).
"""

from __future__ import annotations


class QueueError(Exception):
    """Base class of every error raised by sharded_queue."""


class SettingsError(QueueError, ValueError):
    """A setting (attribute or ``QUEUE_*`` environment variable) has a bad value."""


class RouteError(QueueError, ValueError):
    """``Handler.route`` did not return exactly one `RequestRoute` per request."""


class RouteTypeError(RouteError, TypeError):
    """``Handler.route`` returned an item that is not a `RequestRoute`."""


class SerializationError(QueueError, TypeError):
    """A request cannot be encoded with the handler's request type."""


class DecodeError(QueueError):
    """A payload found in storage cannot be decoded into the handler's request type."""


class LeaseLost(QueueError):
    """A request was at the head of every batch whose holder lost its lease, too many times.

    Recorded in the dead letter of a request whose ``perform`` blocks the event
    loop longer than the lease TTL (so no heartbeat runs), or kills its worker.
    """


class StorageError(QueueError):
    """The storage (Redis) failed: unreachable, connection lost, or an error reply.

    Attributes:
        stored: For a `Queue.register` call written in chunks (more requests
            than ``settings.register_chunk``), how many of its requests, in
            order, were stored before the failure; when fewer replicas than
            ``settings.register_replicas`` acknowledged the writes, the requests
            the primary holds, the last chunk's included; 0 otherwise.
    """

    stored: int = 0


class StorageTimeout(StorageError):
    """The storage did not answer in time."""


class StorageFull(StorageError):
    """Redis reached ``maxmemory`` with ``noeviction``: it refuses registrations.

    Workers keep draining a full Redis (their scripts are allowed to run), which
    frees memory; registrations succeed again once it has room.
    """


class StorageConfigError(StorageError):
    """Redis refused this configuration (a wrong password or user, an unknown database, an
    unknown host): retrying cannot help, unlike an outage."""


class EmbeddedStorageWarning(UserWarning):
    """Requests went to the embedded in-process storage (no URL, no ``QUEUE_STORAGE_URL``): they
    live in this process only, and are lost when it exits unless a worker in it performs them."""
