"""The library's exceptions.

Every error the queue raises on purpose derives from `QueueError`::

    QueueError
    ├── SettingsError        a setting or QUEUE_* variable has a bad value (also ValueError)
    ├── RouteError           route() returned something that is not one route per request
    │                        (also ValueError; a wrong item type is also a TypeError)
    ├── SerializationError   a request cannot be encoded for storage (also TypeError)
    ├── DecodeError          a stored payload cannot be decoded (dead-lettered, never raised to users)
    ├── LeaseLost            a request kept losing its holder's lease (dead-lettered, never raised to users)
    ├── ThreadFull           a registration would put more than ``Handler.max_pending`` requests in a thread
    └── StorageError         Redis could not be reached or answered with an error
        ├── StorageTimeout   no answer within the timeout
        ├── StorageFull      Redis reached maxmemory (noeviction): registrations are refused
        └── StorageConfigError  Redis refused this configuration: a wrong password, an unknown
                             database or host; retrying cannot help

Raised by a handler's ``perform`` to steer its batch (never by the queue): `RateLimited`
(the batch waits at the head of its thread), `BatchFailed` (only some requests failed).

Warnings: `EmbeddedStorageWarning` (a `UserWarning`), when requests go to the
embedded in-process storage, where only this process can ever perform them.

redis-py's own exceptions are translated into `StorageError` in one place,
`sharded_queue.storage.scripts.translate_errors`, and chained (`raise ... from exc`).
"""

from __future__ import annotations

from collections.abc import Mapping


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


class ThreadFull(QueueError):
    """A registration would put more than ``Handler.max_pending`` requests in one thread.

    Nothing of the thread's part of the call was written (on one server, nothing of
    the call at all). Attributes: ``handler``, ``thread``, ``depth`` (requests waiting
    in its tubes), ``limit`` (``max_pending``), ``stored`` (requests of the call that
    were stored: on a cluster, other threads' parts).
    """

    def __init__(self, handler: str, thread: str, depth: int, limit: int, stored: int = 0) -> None:
        super().__init__(
            f"thread {thread!r} of {handler} is full: {depth} requests wait and max_pending is {limit}; "
            "register again once workers have drained it, or raise max_pending"
        )
        self.handler, self.thread, self.depth, self.limit, self.stored = handler, thread, depth, limit, stored


class RateLimited(Exception):
    """Raise from ``perform`` when a downstream service said "too many requests".

    The batch stays at the head of its thread, no attempt is counted, and the
    thread is not performed again before ``retry_after`` seconds (on the storage
    server's clock); other threads go on.

    Args:
        retry_after: Seconds to wait, a finite number >= 0.
    """

    def __init__(self, retry_after: float) -> None:
        if isinstance(retry_after, bool) or not isinstance(retry_after, int | float) or not 0 <= retry_after < 1e9:
            raise ValueError(f"RateLimited(retry_after=...) takes a finite number of seconds >= 0, got {retry_after!r}")
        super().__init__(f"rate limited: retry after {retry_after:g} s")
        self.retry_after = float(retry_after)


class BatchFailed(Exception):
    """Raise from ``perform`` when only some requests of the batch failed.

    ``failures`` maps the index of each failed request in ``perform``'s
    ``requests`` to its exception. Those take the retry and dead-letter path
    (the thread holds its FIFO order meanwhile); the others are acked and never
    performed again.

    Args:
        failures: ``{index: exception}``, at least one.
    """

    def __init__(self, failures: Mapping[int, BaseException]) -> None:
        if not isinstance(failures, Mapping) or not failures:
            raise ValueError(f"BatchFailed takes a non-empty {{index: exception}} mapping, got {failures!r}")
        for index, error in failures.items():
            if isinstance(index, bool) or not isinstance(index, int) or index < 0:
                raise ValueError(f"BatchFailed: an index must be an int >= 0, got {index!r}")
            if not isinstance(error, BaseException):
                raise ValueError(f"BatchFailed: request {index} must map to an exception, got {error!r}")
        super().__init__(f"{len(failures)} requests of the batch failed: {sorted(failures)}")
        self.failures = dict(failures)


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
