"""What `Queue` and `Worker` tell a telemetry exporter, through a small protocol, and whether they do.

Telemetry is off unless asked for: ``Queue(..., telemetry=True)``,
``Worker(..., telemetry=True)``, or ``QUEUE_OTEL=1`` (`Settings.otel`) for a `Queue`
given no ``telemetry=``; a `Worker` given none does as its queue does. A `Queue`
or `Worker` with telemetry off holds None and pays one ``is None`` check per
`Queue.register` call and per ``perform`` call, and its envelopes are
byte-identical to those of a version without telemetry. On, it holds a
`Telemetry`: `sharded_queue.otel.OpenTelemetry` (the ``otel`` extra), made on
the global tracer provider for ``True``, or one passed in. Nothing here imports
OpenTelemetry; `resolve_telemetry` imports `sharded_queue.otel` only when telemetry
is turned on.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from contextlib import AbstractContextManager
from typing import Protocol

from .settings import Settings


class RegisterSpan(Protocol):
    """The span of one `Queue.register` call, open while it runs."""

    @property
    def traceparent(self) -> str | None:
        """The W3C traceparent to write in the call's envelopes (None: write none)."""

    def routed(self, threads: Collection[str]) -> None:
        """The threads the requests were routed to (distinct)."""

    def stored(self, count: int) -> None:
        """How many requests the call stored (``if_not_exists`` drops duplicates)."""


class PerformSpan(Protocol):
    """The span of one ``perform`` call, open while it runs."""

    @property
    def link(self) -> object:
        """What a later attempt at the same fetched batch is linked to (opaque)."""

    def finish(self, error: BaseException | None, final: bool) -> None:
        """How the call ended: ``error`` is what it raised (None: it returned); ``final`` says that
        a failure dead-letters its request (its last attempt)."""


class Telemetry(Protocol):
    """A telemetry exporter as `Queue` and `Worker` use it (`sharded_queue.otel.OpenTelemetry`)."""

    def register(self, handler: str, count: int) -> AbstractContextManager[RegisterSpan]:
        """A span around a `Queue.register` of ``count`` requests of ``handler`` (its stored name)."""

    def perform(
        self,
        handler: str,
        thread: str,
        order: str,
        count: int,
        attempt: int,
        traceparents: Iterable[str],
        first: object | None,
    ) -> AbstractContextManager[PerformSpan]:
        """A span around a ``perform`` call of ``count`` messages, linked to the spans that registered
        them (``traceparents``, distinct) and, for a later attempt at the same fetched batch (a retry,
        a half of a bisection), to the ``link`` of its first attempt's span (``first``)."""


def resolve_telemetry(telemetry: bool | Telemetry | None, settings: Settings) -> Telemetry | None:
    """The `Telemetry` that ``telemetry=`` asks for: None for ``False``; for ``None``, as
    ``settings.otel`` says; an `OpenTelemetry` on the global tracer provider for ``True``.

    Raises:
        ImportError: telemetry is on and the ``otel`` extra is not installed (the message names it).
        TypeError: ``telemetry`` is none of these.
    """
    if telemetry is None:
        telemetry = settings.otel
    if telemetry is False:
        return None
    if telemetry is True:
        from .otel import OpenTelemetry  # only now: OpenTelemetry is imported when asked for

        return OpenTelemetry()
    if not callable(getattr(telemetry, "perform", None)) or not callable(getattr(telemetry, "register", None)):
        raise TypeError(f"telemetry= takes a bool or a Telemetry (sharded_queue.otel.OpenTelemetry), got {telemetry!r}")
    return telemetry
