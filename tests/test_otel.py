"""OpenTelemetry (`sharded_queue.otel`): register and perform spans, the links between them, the
traceparent in the envelopes (with ``if_not_exists``, ``unschedule`` and mixed queues on every
backend), and nothing at all when off. Spans go to the SDK's in-memory exporter, on a
`TracerProvider` handed to the library (the global one is set only in subprocesses)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from typing import ClassVar

import msgspec
import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from sharded_queue import Handler, Queue, RequestRoute, Route, Settings, SettingsError, Storage, SyncQueue, Tube, Worker
from sharded_queue.otel import PERFORM, REGISTER, OpenTelemetry
from sharded_queue.serializer import traceparent_of
from sharded_queue.testing import drain


@dataclass(frozen=True)
class Note:
    user: int


class Notify(Handler):
    """Routes by ``user % 2``; fails each request of ``failing`` that many times."""

    name = "otel-notify"
    performed: ClassVar[list[Note]] = []
    failing: ClassVar[dict[Note, int]] = {}

    @classmethod
    async def route(cls, *requests: Note) -> list[RequestRoute]:
        return [RequestRoute(r, Route(thread=r.user % 2)) for r in requests]

    async def perform(self, *requests: Note) -> None:
        for request in requests:
            if self.failing.get(request, 0) > 0:
                self.failing[request] -= 1
                raise ValueError(f"poison {request.user}")
        self.performed.extend(requests)


class Plain(Handler):
    """One thread; string requests."""

    name = "otel-plain"
    performed: ClassVar[list[str]] = []

    async def perform(self, *requests: str) -> None:
        self.performed.extend(requests)


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def provider(exporter: InMemorySpanExporter) -> Iterator[TracerProvider]:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield provider
    provider.shutdown()


@pytest.fixture
def telemetry(provider: TracerProvider) -> OpenTelemetry:
    return OpenTelemetry(provider)


@pytest.fixture
def traced(storage: Storage, settings: Settings, telemetry: OpenTelemetry) -> Queue:
    Notify.performed, Notify.failing, Plain.performed = [], {}, []
    return Queue(storage, settings=settings.copy(retry_attempts=2), telemetry=telemetry)


def spans(exporter: InMemorySpanExporter, name: str) -> list[ReadableSpan]:
    return [span for span in exporter.get_finished_spans() if span.name == name]


def links_of(span: ReadableSpan, kind: str) -> set[tuple[int, int]]:
    return {
        (link.context.trace_id, link.context.span_id)
        for link in span.links
        if link.attributes == {"sharded_queue.link": kind}
    }


def ids(span: ReadableSpan) -> tuple[int, int]:
    assert span.context is not None
    return span.context.trace_id, span.context.span_id


async def run(worker: Worker, *limits: int) -> None:
    """Run a loop per limit until each took that many messages (not `drain`, which asks the
    handler's counts: on a cluster those can stay behind, a known issue of their own)."""
    await asyncio.wait_for(asyncio.gather(*(worker.loop(limit) for limit in limits)), 30)


async def envelopes(queue: Queue, handler: type[Handler], thread: str = "0", order: str = "0") -> list[bytes]:
    key = queue.storage.keys.tube(Tube(queue.spec(handler).name, thread, order))
    return list(await queue.storage.client.lrange(key, 0, -1))


async def test_a_perform_span_is_linked_to_the_register_span_of_its_requests(
    traced: Queue, provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    with provider.get_tracer("app").start_as_current_span("request") as outer:
        assert await traced.register(Notify, *[Note(user) for user in range(5)]) == 5
    (register,) = spans(exporter, REGISTER)
    assert register.kind is SpanKind.PRODUCER
    assert register.parent is not None and register.parent.span_id == outer.get_span_context().span_id
    assert dict(register.attributes or {}) == {
        "messaging.system": "sharded_queue",
        "messaging.operation.type": "send",
        "messaging.operation.name": "register",
        "messaging.destination.name": "otel-notify",
        "messaging.batch.message_count": 5,
        "sharded_queue.thread_count": 2,
        "sharded_queue.threads": ("0", "1"),
        "sharded_queue.stored": 5,
    }
    for envelope in await envelopes(traced, Notify, "1"):  # the register span's context, in W3C's format
        version, trace_id, span_id, _ = str(traceparent_of(envelope)).split("-")
        assert (version, int(trace_id, 16), int(span_id, 16)) == ("00", *ids(register))

    await run(Worker(traced), 5)  # one loop: a batch per thread
    performs = spans(exporter, PERFORM)
    assert sorted(span.attributes["sharded_queue.thread"] for span in performs) == ["0", "1"]  # type: ignore[index]
    for span in performs:
        assert span.kind is SpanKind.CONSUMER and span.parent is None  # a trace of its own ...
        assert [link.context.span_id for link in span.links] == [ids(register)[1]]  # ... linked, once per batch
        assert links_of(span, "register") == {ids(register)}
        attributes = dict(span.attributes or {})
        assert attributes["messaging.destination.name"] == "otel-notify"
        assert attributes["messaging.operation.type"] == "process"
        assert attributes["sharded_queue.order"] == "0"
        assert attributes["messaging.batch.message_count"] == (3 if attributes["sharded_queue.thread"] == "0" else 2)
        assert (attributes["sharded_queue.attempt"], attributes["sharded_queue.outcome"]) == (1, "ok")


async def test_a_batch_from_two_register_calls_links_to_both(traced: Queue, exporter: InMemorySpanExporter) -> None:
    await traced.register(Plain, "a", "b")
    await traced.register(Plain, "c")
    first, second = spans(exporter, REGISTER)
    await run(Worker(traced), 3)
    (perform,) = spans(exporter, PERFORM)
    assert perform.attributes["messaging.batch.message_count"] == 3  # type: ignore[index]
    assert links_of(perform, "register") == {ids(first), ids(second)}
    assert Plain.performed == ["a", "b", "c"]


async def test_a_retry_and_a_bisection_are_new_spans_linked_to_the_first_attempt(
    traced: Queue, exporter: InMemorySpanExporter
) -> None:
    """retry_attempts=2: the batch [0, 2, 4] (thread 0) fails twice, is bisected into [0] and
    [2, 4]; [0] fails twice and is dead-lettered; [2, 4] succeeds."""
    Notify.failing = {Note(0): 10}
    await traced.register(Notify, Note(0), Note(2), Note(4))
    (register,) = spans(exporter, REGISTER)
    await run(Worker(traced), 3)
    performs = spans(exporter, PERFORM)
    summary = [
        (
            span.attributes["messaging.batch.message_count"],
            span.attributes["sharded_queue.attempt"],
            span.attributes["sharded_queue.outcome"],
        )  # type: ignore[index]
        for span in performs
    ]
    assert summary == [(3, 1, "error"), (3, 2, "error"), (1, 1, "error"), (1, 2, "dead_lettered"), (2, 1, "ok")]
    first, *later = performs
    assert not links_of(first, "first_attempt")
    for span in later:
        assert links_of(span, "first_attempt") == {ids(first)}
        assert span.links[0].attributes == {"sharded_queue.link": "first_attempt"}
    assert len({ids(span) for span in performs}) == len(performs)
    for span in performs:
        assert links_of(span, "register") == {ids(register)}
    failed = performs[3]
    assert failed.status.status_code is StatusCode.ERROR
    assert failed.attributes["error.type"] == "ValueError"  # type: ignore[index]
    assert [event.name for event in failed.events] == ["exception"]
    assert performs[4].status.status_code is StatusCode.UNSET
    assert await traced.dead_letter_count(Notify) == 1


class Slow(Handler):
    name = "otel-slow"
    timeout = 0.05
    retry_attempts = 2
    slow: ClassVar[int] = 1

    async def perform(self, *requests: int) -> None:
        if Slow.slow:
            Slow.slow -= 1
            await asyncio.sleep(5)


@pytest.mark.parametrize("backend", ["fakeredis"])
async def test_a_perform_cancelled_at_its_timeout_has_the_outcome_timeout(
    traced: Queue, exporter: InMemorySpanExporter
) -> None:
    Slow.slow = 1
    await traced.register(Slow, 1)
    await run(Worker(traced), 1)
    outcomes = [span.attributes["sharded_queue.outcome"] for span in spans(exporter, PERFORM)]  # type: ignore[index]
    assert outcomes == ["timeout", "ok"]


async def test_if_not_exists_and_unschedule_work_with_tracing_on(
    traced: Queue, storage: Storage, settings: Settings
) -> None:
    """Marks and schedules hold the request's bytes whatever the envelope carries after it."""
    untraced = Queue(storage, settings=settings, telemetry=False)
    assert await traced.register(Plain, "x", "x", if_not_exists=True) == 1
    assert await traced.register(Plain, "x", if_not_exists=True) == 0  # another register span, same mark
    assert await untraced.register(Plain, "x", if_not_exists=True) == 0  # and without a traceparent
    assert traceparent_of((await envelopes(traced, Plain))[0]) is not None
    assert (await envelopes(traced, Plain))[0].endswith(b'"] ')  # the owner's space follows the traceparent
    await run(Worker(traced), 1)
    assert Plain.performed == ["x"]
    assert await traced.register(Plain, "x", if_not_exists=True) == 1  # its ack took the mark
    marks = storage.keys.marks(Tube("otel-plain", "0", "0"))
    assert await storage.client.smembers(marks) == {b'"x"] '}

    assert await traced.register(Plain, "later", defer=60, if_not_exists=True) == 1
    assert await traced.register(Plain, "later", if_not_exists=True) == 0
    assert await traced.unschedule(Plain, "later") == 1  # found by its request's bytes, mark and all
    assert await storage.client.smembers(marks) == {b'"x"] '}
    assert await untraced.register(Plain, "later", if_not_exists=True) == 1

    assert await traced.register(Plain, "tick", recurrent=3600) == 1
    assert len(await traced.schedules(Plain)) == 1
    assert await traced.unschedule(Plain, "tick") == 1
    assert len(await traced.schedules(Plain)) == 0


async def test_a_queue_mixing_envelopes_with_and_without_traceparent_is_performed_in_order(
    traced: Queue, storage: Storage, settings: Settings, telemetry: OpenTelemetry, exporter: InMemorySpanExporter
) -> None:
    """A rolling upgrade: producers with and without telemetry, one worker with it."""
    untraced = Queue(storage, settings=settings, telemetry=False)
    await traced.register(Plain, "new-1")
    await untraced.register(Plain, "old-1")
    await traced.register(Plain, "new-2", if_not_exists=True)
    await untraced.register(Plain, "old-2", if_not_exists=True)
    stored = await envelopes(traced, Plain)
    assert [traceparent_of(envelope) is not None for envelope in stored] == [True, False, True, False]
    peeked = await traced.peek(Plain)
    assert peeked["request"].tolist() == ["new-1", "old-1", "new-2", "old-2"]
    assert peeked["enqueued_at"].notna().all()
    stats = await untraced.stats([Plain])  # the lag of a traced head
    assert stats["lag"].notna().all()
    register_ids = {ids(span) for span in spans(exporter, REGISTER)}
    assert len(register_ids) == 2
    await run(Worker(untraced, telemetry=telemetry), 4)
    assert Plain.performed == ["new-1", "old-1", "new-2", "old-2"]
    (perform,) = spans(exporter, PERFORM)
    assert links_of(perform, "register") == register_ids


@pytest.mark.parametrize("backend", ["fakeredis"])
async def test_a_string_request_shaped_like_a_traceparent_is_a_request(traced: Queue) -> None:
    """A request is one JSON value: ``[t,"00-..."]`` has no traceparent, here or in the scripts."""
    shaped = "00-" + "a" * 32 + "-" + "b" * 16 + "-01"
    untraced = Queue(traced.storage, settings=traced.settings, telemetry=False)
    assert await untraced.register(Plain, shaped, if_not_exists=True) == 1
    assert traceparent_of((await envelopes(traced, Plain))[0]) is None
    assert await traced.register(Plain, shaped, if_not_exists=True) == 0
    marks = traced.storage.keys.marks(Tube("otel-plain", "0", "0"))
    assert await traced.storage.client.smembers(marks) == {msgspec.json.encode(shaped) + b"] "}
    await run(Worker(traced), 1)
    assert Plain.performed == [shaped]


@pytest.mark.parametrize("backend", ["fakeredis", "redis"])
async def test_off_writes_the_envelopes_of_before_and_records_nothing(
    storage: Storage, settings: Settings, exporter: InMemorySpanExporter
) -> None:
    Plain.performed = []
    queue = Queue(storage, settings=settings)
    assert queue.telemetry is None and not settings.otel
    await queue.register(Plain, "a", "b", if_not_exists=True)
    for envelope, request in zip(await envelopes(queue, Plain), ["a", "b"], strict=True):
        enqueued_at, decoded = msgspec.json.decode(envelope)
        assert envelope == msgspec.json.encode([enqueued_at, request]) + b" " and decoded == request
    worker = Worker(queue)
    assert worker.telemetry is None
    await drain(worker)
    assert Plain.performed == ["a", "b"]
    assert exporter.get_finished_spans() == ()


def run_python(code: str, **env: str) -> str:
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", **env},
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


DRAIN = """
    import asyncio, sys
    from sharded_queue import Handler, Worker
    from sharded_queue.testing import drain, fresh_queue

    class H(Handler):
        name = "h"
        async def perform(self, *requests: int) -> None: ...

    async def run(telemetry=None):
        queue = fresh_queue()
        queue.telemetry = queue.telemetry if telemetry is None else telemetry
        await queue.register(H, 1, 2, 3)
        await drain(Worker(queue))
"""


def test_off_imports_nothing_of_opentelemetry() -> None:
    """Off, neither `sharded_queue.otel` nor any OpenTelemetry module is imported by the library;
    (redis-py >= 8 imports OpenTelemetry's metrics SDK itself when it is installed: the modules
    ``import redis`` loads are not ours)."""
    code = (
        DRAIN
        + """
    import warnings; warnings.simplefilter("ignore")
    otel = lambda: {m for m in sys.modules if m.split(".")[0] == "opentelemetry" or m == "sharded_queue.otel"}
    import redis
    before = otel()
    asyncio.run(run())
    print(sorted(otel() - before))
    """
    )
    assert run_python(code) == "[]"


def test_queue_otel_turns_it_on_with_the_global_tracer_provider() -> None:
    """``QUEUE_OTEL=1``: spans go to the global provider; ``telemetry=False`` wins over it."""
    code = (
        DRAIN
        + """
    import warnings; warnings.simplefilter("ignore")
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from sharded_queue import Queue, settings
    from sharded_queue.otel import OpenTelemetry

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    assert settings.otel and isinstance(Queue().telemetry, OpenTelemetry) and Queue(telemetry=False).telemetry is None
    asyncio.run(run(Queue().telemetry))
    print(sorted(span.name for span in exporter.get_finished_spans()))
    """
    )
    assert run_python(code, QUEUE_OTEL="1") == "['sharded_queue.perform', 'sharded_queue.register']"


def test_enabling_without_the_extra_names_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "opentelemetry", None)
    monkeypatch.delitem(sys.modules, "sharded_queue.otel", raising=False)
    with pytest.raises(ImportError, match=r"pip install 'sharded-queue\[otel\]'"):
        Queue(telemetry=True)
    with pytest.raises(ImportError, match=r"sharded-queue\[otel\]"):
        Queue(settings=Settings(otel=True))


def test_a_bad_queue_otel_fails_naming_the_variable() -> None:
    with pytest.raises(SettingsError, match="QUEUE_OTEL"):
        Settings.from_env({"QUEUE_OTEL": "maybe"})
    assert Settings.from_env({"QUEUE_OTEL": "yes"}).otel and not Settings.from_env({"QUEUE_OTEL": "0"}).otel
    with pytest.raises(TypeError, match="telemetry="):
        Queue(telemetry="on")  # type: ignore[arg-type]


def test_a_sync_queue_register_span_is_a_child_of_the_callers_span(
    provider: TracerProvider, telemetry: OpenTelemetry, exporter: InMemorySpanExporter, redis_url: str
) -> None:
    """`SyncQueue` runs `Queue.register` on its own event loop's thread, in the caller's context."""
    with SyncQueue(redis_url, settings=Settings(key_prefix="otel-sync"), telemetry=telemetry) as queue:
        with provider.get_tracer("app").start_as_current_span("view") as view:
            assert queue.register(Plain, "s") == 1
        assert queue.queue.storage.embedded_default is False
    (register,) = spans(exporter, REGISTER)
    assert register.parent is not None and register.parent.span_id == view.get_span_context().span_id
