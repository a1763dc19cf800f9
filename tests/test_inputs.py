"""Bad input gets a clear error and loses nothing; good input of every supported type round-trips."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, ClassVar, NamedTuple

import msgspec
import pydantic
import pytest

from sharded_queue import (
    DecodeError,
    Handler,
    Queue,
    RequestRoute,
    Route,
    RouteError,
    SerializationError,
    Settings,
    SettingsError,
    StorageError,
    ThreadRef,
    Tube,
    Worker,
)
from sharded_queue.serializer import Codec
from sharded_queue.testing import drain


@dataclass
class Point:
    x: int
    label: str


async def stored_keys(queue: Queue) -> list[bytes]:
    return sorted(await queue.storage.client.keys(f"{queue.storage.keys.prefix}:*"))


class WrongCount(Handler):
    @classmethod
    async def route(cls, *requests: Point) -> list[RequestRoute]:
        return [RequestRoute(requests[0], Route())]

    async def perform(self, *requests: Point) -> None: ...


class WrongItem(Handler):
    @classmethod
    async def route(cls, *requests: Point) -> list[RequestRoute]:
        return [Route() for _ in requests]  # type: ignore[misc]

    async def perform(self, *requests: Point) -> None: ...


class BadRoute(Handler):
    @classmethod
    async def route(cls, *requests: Point) -> list[RequestRoute]:
        return [RequestRoute(r, "0") for r in requests]  # type: ignore[arg-type]

    async def perform(self, *requests: Point) -> None: ...


class NotAList(Handler):
    @classmethod
    async def route(cls, *requests: Point) -> list[RequestRoute]:
        return None  # type: ignore[return-value]

    async def perform(self, *requests: Point) -> None: ...


class Declared(Handler):
    orders = ("high", "low")

    @classmethod
    async def route(cls, *requests: Point) -> list[RequestRoute]:
        return [RequestRoute(r, Route(order=r.label)) for r in requests]

    async def perform(self, *requests: Point) -> None: ...


class Typed(Handler):
    performed: ClassVar[list[Point]] = []

    async def perform(self, *requests: Point) -> None:
        self.performed.extend(requests)


class Untyped(Handler):
    performed: ClassVar[list[Any]] = []

    async def perform(self, *requests):  # type: ignore[no-untyped-def]
        self.performed.extend(requests)


@pytest.mark.parametrize(
    ("handler", "error", "match"),
    [
        (WrongCount, RouteError, "returned 1 routes for 2 requests"),
        (WrongItem, TypeError, "item 0 is Route, not RequestRoute"),
        (NotAList, TypeError, "must return a list of RequestRoute"),
        (BadRoute, TypeError, "has route '0', not a Route"),
        (Declared, ValueError, "'middle' is not one of the declared orders"),
    ],
)
async def test_bad_route_writes_nothing(
    queue: Queue, handler: type[Handler], error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        await queue.register(handler, Point(1, "high"), Point(2, "middle"))
    assert await stored_keys(queue) == []


async def test_requests_with_newlines_survive_the_batched_push(queue: Queue) -> None:
    Untyped.performed = []
    requests = ["a\nb", {"k": "\n\r\n"}, "\\n", "", [1, "x\ny"]]
    await queue.register(Untyped, *requests)
    await drain(Worker(queue))
    assert Untyped.performed == requests


async def test_unserializable_request_writes_nothing(queue: Queue) -> None:
    with pytest.raises(SerializationError, match="cannot be serialized"):
        await queue.register(Untyped, {"ok": 1}, {"bad": object()})
    with pytest.raises(SerializationError, match="expected Point"):
        await queue.register(Typed, Point(1, "a"), {"x": 1, "label": "a"})
    assert await stored_keys(queue) == []


@dataclass
class Measure:
    value: float


class Measured(Handler):
    async def perform(self, *requests: Measure) -> None: ...


@pytest.mark.parametrize(
    ("handler", "good", "bad"),
    [
        (Untyped, {"v": None}, {"v": math.nan}),
        (Untyped, [1.5], [1.5, [math.inf]]),
        (Measured, Measure(1.5), Measure(math.nan)),
        (Measured, Measure(1.5), Measure(-math.inf)),
    ],
)
async def test_nan_and_infinity_are_refused_and_write_nothing(
    queue: Queue, handler: type[Handler], good: Any, bad: Any
) -> None:
    """JSON has no NaN or infinity: refused at register instead of arriving as None (or dead-lettered)."""
    with pytest.raises(SerializationError, match="NaN or infinity"):
        await queue.register(handler, good, bad)
    assert await stored_keys(queue) == []
    assert await queue.register(handler, good) == 1  # null from None is fine


def test_route_rejects_bad_names() -> None:
    assert Route(3, 7) == Route("3", "7")
    with pytest.raises(TypeError, match="thread must be a str or int"):
        Route(thread=1.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="free of"):
        Route(thread="a{b}")
    with pytest.raises(ValueError, match="non-empty"):
        Route(order="")


class ZeroBatch(Handler):
    batch_size = 0

    async def perform(self, *requests: int) -> None: ...


async def test_bad_handler_override_is_a_clear_error(queue: Queue) -> None:
    with pytest.raises(ValueError, match="ZeroBatch.batch_size must be an int >= 1"):
        await queue.register(ZeroBatch, 1)
    assert await stored_keys(queue) == []


def test_worker_needs_handlers(queue: Queue) -> None:
    with pytest.raises(ValueError, match="no handlers"):
        Worker(queue)


async def test_undecodable_payload_is_dead_lettered_and_thread_goes_on(queue: Queue) -> None:
    """A corrupt payload between good ones: the good ones are performed in order, the bad one is kept."""
    Typed.performed = []
    await queue.register(Typed, Point(1, "a"))
    name = queue.spec(Typed).name
    tube = Tube(name, "0", "0")
    await queue.storage.client.rpush(queue.storage.keys.tube(tube), b"\xff not json", b'[1.0, {"x": "wrong"}]')
    await queue.register(Typed, Point(2, "b"))
    await drain(Worker(queue))
    assert Typed.performed == [Point(1, "a"), Point(2, "b")]
    letters = await queue.dead_letters(Typed)
    assert [letter.payload for letter in letters] == [b"\xff not json", b'[1.0, {"x": "wrong"}]']
    assert {letter.error_type for letter in letters} == {"DecodeError"}
    assert all(letter.attempts == 0 and letter.thread == "0" for letter in letters)
    assert await queue.dead_letter_count(Typed) == 2
    assert await queue.purge_dead_letters(Typed) == 2
    assert await queue.dead_letters(Typed) == []


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"QUEUE_WORKER_HOLD_LIMIT": "-1"}, "QUEUE_WORKER_HOLD_LIMIT=.-1.: must be >= 0"),
        ({"QUEUE_WORKER_BATCH_SIZE": "abc"}, "QUEUE_WORKER_BATCH_SIZE='abc': expected an integer"),
        ({"QUEUE_WORKER_BATCH_SIZE": "0"}, "QUEUE_WORKER_BATCH_SIZE='0': must be >= 1"),
        ({"QUEUE_WORKER_BATCH_SIZE": "-1"}, "QUEUE_WORKER_BATCH_SIZE='-1': must be >= 1"),
        ({"QUEUE_COORDINATOR_DELAY": "soon"}, "QUEUE_COORDINATOR_DELAY='soon': expected a number"),
        ({"QUEUE_LEASE_TTL": "0"}, "QUEUE_LEASE_TTL='0': must be > 0"),
        ({"QUEUE_WORKER_EMPTY_PAUSE": "nan"}, "QUEUE_WORKER_EMPTY_PAUSE='nan': expected a finite number"),
    ],
)
def test_bad_environment_names_the_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError, match=message.replace("(", r"\(")):
        Settings.from_env(env)


def test_environment_is_read_with_seed_names_and_defaults() -> None:
    assert Settings.from_env({}) == Settings()
    defaults = Settings()
    assert (defaults.coordinator_delay, defaults.default_order, defaults.default_thread) == (1.0, "0", "0")
    assert (defaults.worker_batch_size, defaults.worker_empty_limit, defaults.worker_empty_pause) == (128, 16, 0.1)
    read = Settings.from_env(
        {"QUEUE_DEFAULT_ORDER": "'5'", "QUEUE_WORKER_BATCH_SIZE": "64", "QUEUE_STORAGE_URL": "redis://u:secret@h/0"}
    )
    assert (read.default_order, read.worker_batch_size) == ("5", 64)
    assert "secret" not in repr(read) and "u:***@h" in repr(read)
    with pytest.warns(UserWarning, match="QUEUE_WORKER_BATCHSIZE is not a sharded_queue setting"):
        Settings.from_env({"QUEUE_WORKER_BATCHSIZE": "3"})


def test_settings_assignment_is_validated() -> None:
    settings = Settings()
    settings.worker_batch_size = 64
    assert settings.worker_batch_size == 64
    with pytest.raises(SettingsError, match="settings.worker_batch_size=0"):
        settings.worker_batch_size = 0
    with pytest.raises(AttributeError, match="no setting 'batch_size'"):
        settings.batch_size = 3  # type: ignore[attr-defined]
    assert settings.worker_batch_size == 64


def test_bad_environment_fails_at_import() -> None:
    env = {**os.environ, "QUEUE_WORKER_BATCH_SIZE": "abc"}
    run = subprocess.run([sys.executable, "-c", "import sharded_queue"], env=env, capture_output=True, text=True)
    assert run.returncode != 0
    assert "QUEUE_WORKER_BATCH_SIZE='abc'" in run.stderr


def test_storage_url_errors_hide_credentials() -> None:
    with pytest.raises(ValueError, match="unknown scheme") as raised:
        Queue("http://user:hunter2@localhost/0")
    assert "hunter2" not in str(raised.value)


async def test_unreachable_redis_fails_fast_with_storage_error(settings: Settings) -> None:
    from sharded_queue.testing import free_port

    queue = Queue(f"redis://127.0.0.1:{free_port()}/0", settings=settings.copy(storage_timeout=2))
    with pytest.raises(StorageError):
        await queue.register(Typed, Point(1, "a"))
    await queue.close()


class Pair(NamedTuple):
    left: int
    right: str


class Model(pydantic.BaseModel):
    name: str
    when: datetime


class Record(msgspec.Struct):
    id: int
    tags: list[str]


@pytest.mark.parametrize(
    ("kind", "value"),
    [
        (Point, Point(1, "a")),
        (Point, Point(2, "line\nbreak \u2028 and \\n")),
        (Pair, Pair(2, "b")),
        (Model, Model(name="m", when=datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC))),
        (Record, Record(3, ["x", "y"])),
        (dict[str, int], {"a": 1}),
        (list[int], [1, 2, 3]),
        (Any, {"any": [1, "json", None, 2.5]}),
        (int, 5),
    ],
)
def test_codec_round_trips_supported_types(kind: Any, value: Any) -> None:
    codec = Codec(kind)
    payload = codec.encode([value], 123.5)
    assert b"\n" not in payload
    assert codec.decode(payload) == (123.5, value)


class PairHandler(Handler):
    async def perform(self, *requests: Pair) -> None: ...


@dataclass
class Inner:
    n: int


@dataclass
class Outer:
    """Nested, optional and typed fields: the register check (a Struct of the same fields) refuses
    what decoding into the dataclass refuses."""

    inner: Inner
    maybe: int | None = None
    when: datetime | None = None
    tags: list[str] | None = None


class OuterHandler(Handler):
    async def perform(self, *requests: Outer) -> None: ...


class RecordHandler(Handler):
    async def perform(self, *requests: Record) -> None: ...


@pytest.mark.parametrize(
    ("handler", "good", "bad"),
    [
        (Typed, Point(1, "a"), Point("s", "a")),  # type: ignore[arg-type]
        (PairHandler, Pair(1, "b"), Pair("s", "b")),  # type: ignore[arg-type]
        (RecordHandler, Record(3, ["x"]), Record("not an id", ["x"])),  # type: ignore[arg-type]
        (RecordHandler, Record(3, ["x"]), Record(3, "not a list")),  # type: ignore[arg-type]
        (OuterHandler, Outer(Inner(1), 2, datetime(2026, 1, 1, tzinfo=UTC), ["a"]), Outer(Inner("x"))),  # type: ignore[arg-type]
        (OuterHandler, Outer(Inner(1)), Outer(Inner(1), maybe="s")),  # type: ignore[arg-type]
        (OuterHandler, Outer(Inner(1)), Outer(Inner(1), tags=[1])),  # type: ignore[list-item]
        (OuterHandler, Outer(Inner(1)), Outer(Inner(1), when="not a time")),  # type: ignore[arg-type]
    ],
)
async def test_a_request_whose_fields_a_worker_could_not_decode_is_refused(
    queue: Queue, handler: type[Handler], good: Any, bad: Any
) -> None:
    """A dataclass, NamedTuple or Struct takes any value for a field; the worker's decoder does not."""
    with pytest.raises(SerializationError, match="a worker could not decode it"):
        await queue.register(handler, good, bad)
    assert await stored_keys(queue) == []


def test_codec_rejects_wrong_values_and_garbage() -> None:
    with pytest.raises(SerializationError):
        Codec(dict[str, int]).encode([{"a": "not an int"}], 0)
    with pytest.raises(SerializationError):
        Codec(Model).encode([Point(1, "a")], 0)
    with pytest.raises(DecodeError):
        Codec(Point).decode(b'{"__reduce__": "os.system"}')


class Stamped(Handler):
    async def perform(self, *requests: Model) -> None: ...


async def test_envelope_carries_enqueue_time(queue: Queue) -> None:
    when = datetime(2026, 1, 1, tzinfo=UTC)
    await queue.register(Stamped, Model(name="x", when=when))
    (payload,) = await queue.storage.tube_payloads(Tube(queue.spec(Stamped).name, "0", "0"))
    enqueued_at, request = queue.spec(Stamped).codec.decode(payload)
    assert request == Model(name="x", when=when)
    assert enqueued_at > 1.7e9
    assert await queue.storage.lease_token(ThreadRef(queue.spec(Stamped).name, "0")) is None


async def test_a_nested_dataclass_passes_the_register_check_and_comes_back_whole(queue: Queue) -> None:
    good = Outer(Inner(1), 2, datetime(2026, 1, 1, tzinfo=UTC), ["a"])
    assert await queue.register(OuterHandler, good, Outer(Inner(2))) == 2
    spec = queue.spec(OuterHandler)
    payloads = await queue.storage.tube_payloads(Tube(spec.name, "0", "0"))
    assert [spec.codec.decode(p)[1] for p in payloads] == [good, Outer(Inner(2))]
