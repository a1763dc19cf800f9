"""OpenTelemetry spans of `Queue.register` and of each ``perform`` call (the ``otel`` extra).

``pip install 'sharded-queue[otel]'``, then ``Queue(..., telemetry=True)`` and
``Worker(..., telemetry=True)``, or ``QUEUE_OTEL=1``: spans go to the global tracer
provider (configure the SDK, or run under ``opentelemetry-instrument``). To use another
provider, pass ``telemetry=OpenTelemetry(tracer_provider)``. Off, nothing here is
imported (`sharded_queue.telemetry`).

Spans:

- ``sharded_queue.register`` (kind PRODUCER), one per `Queue.register` call, a child of
  the caller's current span. Its W3C traceparent is written in every envelope of the call
  (`sharded_queue.serializer`), which is how a worker finds it.
- ``sharded_queue.perform`` (kind CONSUMER), one per ``perform`` call: a root span, current
  while ``perform`` runs (the handler's own spans are its children), **linked** to the
  register span of each of its requests (once per register call) and, for a later attempt
  at the same fetched batch (a retry, each half of a bisection, a request isolated by it),
  to the first attempt's span.

Attributes (OpenTelemetry's messaging conventions where one fits):

=================================  ========  =========================================================
attribute                          span      value
=================================  ========  =========================================================
``messaging.system``               both      ``sharded_queue``
``messaging.operation.type``       both      ``send`` (register), ``process`` (perform)
``messaging.operation.name``       both      ``register``, ``perform``
``messaging.destination.name``     both      the handler's stored name
``messaging.batch.message_count``  both      requests of the call, messages of the batch
``sharded_queue.thread_count``     register  distinct threads the requests were routed to
``sharded_queue.threads``          register  those threads, sorted, the first `THREADS_SHOWN`
``sharded_queue.stored``           register  requests stored (``if_not_exists`` drops duplicates)
``sharded_queue.thread``           perform   the thread
``sharded_queue.order``            perform   the order
``sharded_queue.attempt``          perform   1 for a first attempt, then 2, 3... (a bisection's
                                             halves start again at 1)
``sharded_queue.outcome``          perform   ``ok``, ``error``, ``timeout`` (cancelled at its timeout,
                                             or raised `TimeoutError`), ``dead_lettered`` (a failure
                                             of a request's last attempt), ``cancelled``
``error.type``                     both      the exception's class, when it failed
=================================  ========  =========================================================

Each link carries ``sharded_queue.link``: ``register`` or ``first_attempt``. A failed
perform has status ERROR and the exception as an event. Recurring requests' ticks are
registered by workers, not by a register call: they carry no traceparent, and their
perform spans have no register link.
"""

from __future__ import annotations

import contextlib
from collections.abc import Collection, Iterable, Iterator
from importlib.metadata import PackageNotFoundError, version
from typing import Any

try:
    from opentelemetry import trace
    from opentelemetry.context import Context
    from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
except ImportError as exc:  # pragma: no cover - the extra is installed in the test environment
    raise ImportError(
        "telemetry needs OpenTelemetry, which is not installed: pip install 'sharded-queue[otel]'"
    ) from exc

REGISTER = "sharded_queue.register"
PERFORM = "sharded_queue.perform"
SYSTEM = "sharded_queue"
THREADS_SHOWN = 64
"""Most thread names a register span lists (``sharded_queue.thread_count`` counts them all)."""
OUTCOME = "sharded_queue.outcome"
_ROOT = Context()  # a perform span starts a trace of its own, whatever the loop's task holds
_REGISTERED = {"sharded_queue.link": "register"}
_FIRST = {"sharded_queue.link": "first_attempt"}
_LINKS_KEPT = 1024  # register spans whose links are kept for the next batches (then forgotten at once)


def _version() -> str:
    try:
        return version("sharded-queue")
    except PackageNotFoundError:  # pragma: no cover - run from a source tree
        return "unknown"


def error_type(error: BaseException) -> str:
    """``error.type`` of an exception: its class, with its module unless a builtin."""
    kind = type(error)
    return kind.__qualname__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__qualname__}"


class OpenTelemetry:
    """Spans of registrations and performs, on an OpenTelemetry tracer provider.

    Args:
        tracer_provider: Where the spans go; default the global one
            (``opentelemetry.trace.set_tracer_provider``).
    """

    def __init__(self, tracer_provider: trace.TracerProvider | None = None) -> None:
        self.tracer = trace.get_tracer(SYSTEM, _version(), tracer_provider=tracer_provider)
        self.propagator = TraceContextTextMapPropagator()
        self._registered: dict[str, Link | None] = {}  # traceparent -> its link: the batches of a call share it

    @contextlib.contextmanager
    def register(self, handler: str, count: int) -> Iterator[RegisterSpan]:
        """A ``sharded_queue.register`` span, current while the call runs; an exception is recorded."""
        attributes: dict[str, Any] = {
            "messaging.system": SYSTEM,
            "messaging.operation.type": "send",
            "messaging.operation.name": "register",
            "messaging.destination.name": handler,
            "messaging.batch.message_count": count,
        }
        with self.tracer.start_as_current_span(REGISTER, kind=SpanKind.PRODUCER, attributes=attributes) as span:
            carrier: dict[str, str] = {}
            self.propagator.inject(carrier)  # the current context holds this span: nothing when not sampled in
            try:
                yield RegisterSpan(span, carrier.get("traceparent"))
            except Exception as exc:
                span.set_attribute("error.type", error_type(exc))
                raise

    @contextlib.contextmanager
    def perform(
        self,
        handler: str,
        thread: str,
        order: str,
        count: int,
        attempt: int,
        traceparents: Iterable[str],
        first: object | None,
    ) -> Iterator[PerformSpan]:
        """A root ``sharded_queue.perform`` span, current while ``perform`` runs, linked to its
        requests' register spans and (a later attempt) to the first attempt's span."""
        links = [Link(first, _FIRST)] if isinstance(first, SpanContext) else []
        for traceparent in traceparents:
            link = self._link(traceparent)
            if link is not None:
                links.append(link)
        attributes: dict[str, Any] = {
            "messaging.system": SYSTEM,
            "messaging.operation.type": "process",
            "messaging.operation.name": "perform",
            "messaging.destination.name": handler,
            "messaging.batch.message_count": count,
            "sharded_queue.thread": thread,
            "sharded_queue.order": order,
            "sharded_queue.attempt": attempt,
        }
        with self.tracer.start_as_current_span(
            PERFORM, context=_ROOT, kind=SpanKind.CONSUMER, attributes=attributes, links=links
        ) as span:
            try:
                yield PerformSpan(span)
            except BaseException:  # a cancelled loop (OpenTelemetry records exceptions, not this)
                span.set_attribute(OUTCOME, "cancelled")
                raise

    def _link(self, traceparent: str) -> Link | None:
        """The link to the register span a traceparent names (None: not a valid one), cached."""
        known = self._registered
        if traceparent in known:
            return known[traceparent]
        if len(known) >= _LINKS_KEPT:
            known.clear()
        context = trace.get_current_span(self.propagator.extract({"traceparent": traceparent})).get_span_context()
        link = known[traceparent] = Link(context, _REGISTERED) if context.is_valid else None
        return link

    def __repr__(self) -> str:
        return f"<OpenTelemetry tracer {SYSTEM!r}>"


class RegisterSpan:
    """The span of a `Queue.register` call (`sharded_queue.telemetry.RegisterSpan`)."""

    __slots__ = ("span", "traceparent")

    def __init__(self, span: trace.Span, traceparent: str | None) -> None:
        self.span = span
        self.traceparent = traceparent

    def routed(self, threads: Collection[str]) -> None:
        """Record the threads the requests were routed to."""
        self.span.set_attribute("sharded_queue.thread_count", len(threads))
        self.span.set_attribute("sharded_queue.threads", sorted(threads)[:THREADS_SHOWN])

    def stored(self, count: int) -> None:
        """Record how many requests were stored."""
        self.span.set_attribute("sharded_queue.stored", count)


class PerformSpan:
    """The span of a ``perform`` call (`sharded_queue.telemetry.PerformSpan`)."""

    __slots__ = ("span",)

    def __init__(self, span: trace.Span) -> None:
        self.span = span

    @property
    def link(self) -> SpanContext:
        """This span's context, which later attempts at the batch link to."""
        return self.span.get_span_context()

    def finish(self, error: BaseException | None, final: bool) -> None:
        """Record the outcome; a failure also as the span's status and an exception event."""
        span = self.span
        if error is None:
            span.set_attribute(OUTCOME, "ok")
            return
        outcome = "dead_lettered" if final else "timeout" if isinstance(error, TimeoutError) else "error"
        span.set_attribute(OUTCOME, outcome)
        span.set_attribute("error.type", error_type(error))
        span.record_exception(error)
        span.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}: {error}"))
