"""Operations in the library: stats, the worker registry and lease holders, perform
timeouts, metrics, logs, and handler mistakes caught where they are made. Contract
tests run on fakeredis, a real redis-server and a Redis Cluster."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, ClassVar

import pytest
import redis.exceptions
from prometheus_client import CollectorRegistry

from sharded_queue import (
    Handler,
    Metrics,
    Queue,
    RequestRoute,
    Route,
    Settings,
    SettingsError,
    Storage,
    StorageFull,
    Worker,
)
from sharded_queue.leases import lease_token, parse_lease_token
from sharded_queue.stats import COLUMNS, collect_stats
from sharded_queue.testing import RedisServer, drain, fresh_queue, wait_until
from tests.conftest import need_redis_server

# --- stats ----------------------------------------------------------------------------------


class Gate(Handler):
    """Routes ``[thread, seq]``; performs wait until the test opens the gate."""

    name = "ops:gate"
    orders = ("urgent", "normal")
    gate: ClassVar[asyncio.Event]
    entered: ClassVar[asyncio.Event]
    performed: ClassVar[list[list[Any]]] = []

    @classmethod
    async def route(cls, *requests: list[Any]) -> list[RequestRoute]:
        return [RequestRoute(r, Route(thread=r[0], order=r[2] if len(r) > 2 else "normal")) for r in requests]

    async def perform(self, *requests: list[Any]) -> None:
        self.entered.set()
        await self.gate.wait()
        self.performed.extend(requests)


def reset_gate(open_: bool = False) -> None:
    Gate.gate, Gate.entered, Gate.performed = asyncio.Event(), asyncio.Event(), []
    if open_:
        Gate.gate.set()


async def test_stats_show_depth_lag_holder_and_totals(queue: Queue) -> None:
    reset_gate()
    await queue.register(Gate, *[[1, seq] for seq in range(3)], [1, 3, "urgent"], [2, 0], [10, 0])
    before = await queue.storage.server_time()
    worker = Worker(queue)
    loop = asyncio.create_task(worker.loop(1))  # holds one thread, stuck in perform
    await asyncio.wait_for(Gate.entered.wait(), 10)
    stats = await queue.stats()
    assert list(stats.columns) == list(COLUMNS)
    rows = stats.to_dict("records")
    held = [row for row in rows if isinstance(row["holder"], str)]
    assert len({row["thread"] for row in held}) == 1  # the thread the loop holds, on each of its rows
    holding = held[0]
    holder_worker, _, loop_number = holding["holder"].rpartition(":")
    assert holder_worker == worker.id and loop_number.isdigit()  # worker id and loop
    assert abs(holding["held_since"] - time.time()) < 60  # the holder's clock, for display
    by_tube = {(row["thread"], row["order"]): row["depth"] for row in rows if isinstance(row["thread"], str)}
    # the batch in flight still counts: it is acked only after perform returns
    assert sum(by_tube.values()) == 6 and by_tube[("2", "normal")] == 1 and by_tube[("10", "normal")] == 1
    assert [key[0] for key in by_tube] == sorted((key[0] for key in by_tube), key=int)  # "2" before "10"
    total = rows[-1]
    assert (total["handler"], total["depth"], total["dead"]) == ("ops:gate", 6, 0)
    assert total["thread"] is None and total["order"] is None
    lags = [row["lag"] for row in rows]
    assert all(0 <= lag < 60 for lag in lags) and total["lag"] == max(lags)
    assert await queue.storage.server_time() >= before
    Gate.gate.set()
    assert await asyncio.wait_for(loop, 10) == 1
    assert list((await queue.stats(handlers=[Gate]))["handler"].unique()) == ["ops:gate"]


async def test_stats_of_an_unknown_handler_and_of_dead_letters(queue: Queue, settings: Settings) -> None:
    class Failing(Handler):
        name = "ops:failing"
        retry_attempts = 1

        async def perform(self, *requests: int) -> None:
            if 13 in requests:
                raise ValueError("unlucky")

    await queue.register(Failing, 12, 13, 14)
    await drain(Worker(queue))
    rows = await collect_stats(queue.storage, ["ops:failing", "nobody:ever"])
    assert [(r.handler, r.thread, r.order, r.depth, r.lag, r.dead) for r in rows] == [
        ("ops:failing", "0", None, 0, None, 1),  # a thread with dead letters and nothing waiting
        ("ops:failing", None, None, 0, None, 1),
        ("nobody:ever", None, None, 0, None, 0),
    ]
    assert [row.handler for row in await collect_stats(queue.storage)] == ["ops:failing", "ops:failing"]


async def test_stats_cost_a_fixed_number_of_round_trips(queue: Queue, monkeypatch: pytest.MonkeyPatch) -> None:
    storage = queue.storage
    client = storage.client
    round_trips: list[str] = []
    real_pipeline, real_time, real_lane = client.pipeline, client.time, storage.scripts.on_lane

    def pipeline(*args: Any, **kwargs: Any) -> Any:
        pipe = real_pipeline(*args, **kwargs)
        execute = pipe.execute

        async def counted(*a: Any, **k: Any) -> Any:
            round_trips.append("pipeline")
            return await execute(*a, **k)

        pipe.execute = counted
        return pipe

    async def server_time() -> Any:
        round_trips.append("time")
        return await real_time()

    async def on_lane(commands: Any) -> Any:
        round_trips.append("pipeline")  # a lane sends a pipeline of script calls (one Redis)
        return await real_lane(commands)

    monkeypatch.setattr(client, "pipeline", pipeline)
    monkeypatch.setattr(client, "time", server_time)
    monkeypatch.setattr(storage.scripts, "on_lane", on_lane)
    reset_gate(open_=True)
    counts = []
    waiting = 0
    for threads in (2, 40):
        await queue.register(Gate, *[[thread, 0] for thread in range(threads)])
        waiting += threads
        await queue.pending(Gate)  # the first read of a handler counts it once (an upgrade's recount)
        round_trips.clear()
        rows = await collect_stats(queue.storage, ["ops:gate"])
        assert rows[-1].depth == waiting and len(rows) == threads + 1
        counts.append(list(round_trips))
        round_trips.clear()
        assert await queue.pending(Gate) == waiting
        assert round_trips == []  # one HMGET, sent without a pipeline
    # the page of threads (scan.lua), the counts with what the threads hold (inspect.lua), the clock
    assert counts[0] == counts[1] == ["pipeline", "pipeline", "time"]


# --- the worker registry and lease holders ---------------------------------------------------


async def test_workers_are_listed_while_running_and_removed_at_once(queue: Queue) -> None:
    reset_gate()
    await queue.register(Gate, [1, 0], [2, 0])
    worker = Worker(queue)
    loops = [asyncio.create_task(worker.loop()) for _ in range(2)]
    await asyncio.wait_for(Gate.entered.wait(), 10)
    await wait_until(lambda: _listed(queue, worker))
    frame = await queue.workers()
    (row,) = frame.to_dict("records")
    assert row["id"] == worker.id and row["id"].count(":") == 1 and row["loops"] == 2
    assert row["handlers"] == ["ops:gate"]
    assert row["heartbeat_at"] >= row["started_at"] > 0
    assert await queue.storage.live_workers() == [worker.id]
    Gate.gate.set()
    await wait_until(lambda: len(Gate.performed) == 2)
    worker.stop()
    assert sum(await asyncio.wait_for(asyncio.gather(*loops), 10)) == 2
    assert await queue.storage.live_workers() == []  # removed at once, no TTL to wait for
    assert len(await queue.workers()) == 0


async def _listed(queue: Queue, worker: Worker) -> bool:
    frame = await queue.workers()
    return len(frame) == 1 and any(frame.iloc[0]["held"])


async def test_a_record_without_heartbeat_expires(storage: Storage) -> None:
    await storage.beat_worker("ghost:1-abc", b'{"not": "a record"}', ttl=0.3)
    assert await storage.live_workers() == ["ghost:1-abc"]
    now, (info,) = await storage.worker_records()
    assert info.worker_id == "ghost:1-abc" and info.beat_at <= now
    await wait_until(lambda: _none_live(storage), timeout=10)


async def _none_live(storage: Storage) -> bool:
    return await storage.live_workers() == []


async def test_heartbeats_go_on_under_a_full_redis(tmp_path: Path) -> None:
    """Workers draining a Redis at maxmemory stay visible: the heartbeat script is allow-oom."""
    need_redis_server()
    server = RedisServer(tmp_path, "--maxmemory-policy", "noeviction")
    storage = Storage.from_settings(Settings(key_prefix="full"), server.url)
    try:
        for number in range(20):
            await storage.client.set(f"full:ballast:{number}", b"x" * 100_000)
        await storage.client.config_set("maxmemory", 1_000_000)  # well below what is used: full
        with pytest.raises(redis.exceptions.OutOfMemoryError):
            await storage.client.set("full:one-more", b"x")
        await storage.beat_worker("busy:1-abc", b"{}", ttl=30, handlers=["ops:gate"])
        assert await storage.live_workers() == ["busy:1-abc"]
        assert await storage.handler_names() == ["ops:gate"]
        with pytest.raises(StorageFull):  # the rest of the registry stays a normal write
            await storage.add_handlers(["ops:more"])
    finally:
        await storage.close()
        server.stop()


async def test_workers_frame_tolerates_a_foreign_record(queue: Queue) -> None:
    await queue.storage.beat_worker("other:2-def", b"[1, 2]", ttl=30)
    (row,) = (await queue.workers()).to_dict("records")
    assert (row["id"], row["handlers"], row["loops"]) == ("other:2-def", [], 0)
    await queue.storage.remove_worker("other:2-def")


def test_lease_tokens_name_their_holder() -> None:
    token = lease_token("host.example:123-abcdef:4", 1700000000.5)
    assert parse_lease_token(token) == ("host.example:123-abcdef:4", 1700000000.5)
    assert parse_lease_token("f00dfeed" * 4) == ("f00dfeed" * 4, None)  # another format: shown as is
    assert parse_lease_token("a@b/c") == ("a@b/c", None)
    assert lease_token("h:1-a:1", 1.0) != lease_token("h:1-a:1", 1.0)


# --- perform timeout -----------------------------------------------------------------------------


class Hanging(Handler):
    name = "ops:hanging"
    timeout = 0.5
    retry_attempts = 2
    batch_size = 1
    performed: ClassVar[list[int]] = []

    async def perform(self, *requests: int) -> None:
        if 1 in requests:
            await asyncio.Event().wait()  # never returns
        self.performed.extend(requests)


async def test_a_hanging_perform_times_out_is_dead_lettered_and_the_thread_goes_on(queue: Queue) -> None:
    Hanging.performed = []
    await queue.register(Hanging, 1, 2, 3)
    await drain(Worker(queue), timeout=30)
    assert Hanging.performed == [2, 3]
    (letter,) = await queue.dead_letters(Hanging)
    assert (letter.error_type, letter.attempts) == ("TimeoutError", 2)
    assert letter.error == "perform did not finish within 0.5 s and was cancelled"
    assert letter.payload.endswith(b",1]")


async def test_the_setting_bounds_performs_of_handlers_without_a_timeout(settings: Settings) -> None:
    class Slow(Handler):
        retry_attempts = 1

        async def perform(self, *requests: int) -> None:
            await asyncio.sleep(30)

    queue = fresh_queue(settings.copy(perform_timeout=0.2))
    await queue.register(Slow, 1)
    worker = Worker(queue)
    assert worker.policy().timeout_for(queue.spec(Slow).name) == 0.2
    await drain(worker, timeout=30)
    (letter,) = await queue.dead_letters(Slow)
    assert letter.error_type == "TimeoutError" and "0.2 s" in letter.error


@pytest.mark.parametrize("value", [0, -1, float("nan"), float("inf"), "5", True])
def test_a_bad_handler_timeout_is_refused(value: Any) -> None:
    bad = type("BadTimeout", (Hanging,), {"timeout": value, "name": "ops:bad-timeout"})
    with pytest.raises(ValueError, match="BadTimeout.timeout must be a number of seconds > 0"):
        fresh_queue().spec(bad)


@pytest.mark.parametrize("raw", ["abc", "0", "-1"])
def test_a_bad_perform_timeout_variable_fails_naming_it(raw: str) -> None:
    with pytest.raises(SettingsError, match="QUEUE_PERFORM_TIMEOUT"):
        Settings.from_env({"QUEUE_PERFORM_TIMEOUT": raw})
    assert Settings().perform_timeout == 300


# --- mistakes caught where they are made ------------------------------------------------------------


class SyncPerform(Handler):
    calls: ClassVar[int] = 0

    def perform(self, *requests: int) -> None:  # type: ignore[override]
        SyncPerform.calls += 1


class SyncRoute(Handler):
    @classmethod
    def route(cls, *requests: int) -> list[RequestRoute]:  # type: ignore[override]
        return [RequestRoute(r, Route()) for r in requests]

    async def perform(self, *requests: int) -> None: ...


class InstanceRoute(Handler):
    async def route(self, *requests: int) -> list[RequestRoute]:  # type: ignore[override]
        return [RequestRoute(r, Route()) for r in requests]

    async def perform(self, *requests: int) -> None: ...


class StaticRoute(Handler):
    @staticmethod
    async def route(*requests: int) -> list[RequestRoute]:  # type: ignore[override]
        return [RequestRoute(r, Route()) for r in requests]

    async def perform(self, *requests: int) -> None: ...


class SyncStop(Handler):
    async def perform(self, *requests: int) -> None: ...

    def stop(self) -> None:  # type: ignore[override]
        pass


@pytest.mark.parametrize(
    ("handler", "message"),
    [
        (SyncPerform, r"SyncPerform.perform must be a coroutine function: declare it `async def perform"),
        (SyncRoute, r"SyncRoute.route must be a coroutine function"),
        (InstanceRoute, r"InstanceRoute.route must be a classmethod"),
        (StaticRoute, r"StaticRoute.route must be a classmethod"),
        (SyncStop, r"SyncStop.stop must be a coroutine function"),
    ],
)
async def test_handler_mistakes_are_type_errors_before_anything_is_written(
    queue: Queue, handler: type[Handler], message: str
) -> None:
    SyncPerform.calls = 0
    with pytest.raises(TypeError, match=message):
        await queue.register(handler, 1, 2)
    with pytest.raises(TypeError, match=message):
        Worker(queue, handlers=[handler])
    prefix = queue.storage.keys.prefix
    assert await queue.storage.client.keys(f"{prefix}:*") == []  # nothing written
    assert SyncPerform.calls == 0  # nothing performed


def test_a_worker_on_the_embedded_default_that_registered_nothing_warns() -> None:
    embedded = Queue(settings=Settings(storage_url=None))
    assert embedded.storage.embedded_default
    with pytest.warns(UserWarning, match="nothing will arrive for ops:hanging from anywhere else"):
        Worker(embedded, handlers=[Hanging])


async def test_no_warning_once_the_queue_registered_or_on_another_store(recwarn: pytest.WarningsRecorder) -> None:
    Hanging.performed = []
    embedded = Queue(settings=Settings(storage_url=None))
    await embedded.register(Hanging, 2)
    Worker(embedded, handlers=[Hanging])
    Worker(fresh_queue(), handlers=[Hanging])  # a private fakeredis of its own (tests, notebooks)
    assert not fresh_queue().storage.embedded_default
    assert not [w for w in recwarn if "nothing will arrive" in str(w.message)]
    await drain(Worker(embedded))
    assert Hanging.performed == [2]


# --- logs and reprs --------------------------------------------------------------------------------


SECRET = "s3cret-Pa55"


@pytest.fixture
def secured_url(tmp_path: Path) -> Any:
    need_redis_server()
    server = RedisServer(tmp_path, "--user", "alice", "on", f">{SECRET}", "~*", "&*", "+@all")
    yield f"redis://alice:{SECRET}@127.0.0.1:{server.port}/0"
    server.stop()


async def test_logs_say_what_happens_and_never_show_credentials(
    secured_url: str, settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    class Flaky(Handler):
        name = "ops:flaky"
        retry_attempts = 2

        @classmethod
        async def route(cls, *requests: int) -> list[RequestRoute]:
            return [RequestRoute(r, Route(thread=r % 2)) for r in requests]

        async def perform(self, *requests: int) -> None:
            if 3 in requests:
                raise ValueError("cannot do 3")

    caplog.set_level(logging.DEBUG, logger="sharded_queue")
    queue = Queue(secured_url, settings=settings)
    await queue.register(Flaky, 1, 2, 3, 4)
    worker = Worker(queue)
    await drain(worker, loops=2)
    await queue.close()
    messages = [record.getMessage() for record in caplog.records]
    redacted = f"redis://alice:***@{secured_url.split('@')[1]}"
    (started,) = [m for m in messages if " started: " in m]
    assert started == f"worker {worker.id} started: handlers ops:flaky, 2 loops, storage {redacted}"
    (dead,) = [(r.levelname, r.getMessage()) for r in caplog.records if "dead letter" in r.getMessage()]
    assert dead[0] == "ERROR"
    assert dead[1].startswith("dead letter: ops:flaky thread 1 order 0: ValueError: cannot do 3")
    assert dead[1].endswith("(after 2 attempts)")
    assert any(m.startswith(f"{worker.id}:") and " bound ops:flaky/" in m for m in messages)
    assert any(m.startswith(f"{worker.id}:") and " released ops:flaky/" in m for m in messages)
    assert [m for m in messages if " stopped: " in m] == [
        f"worker {worker.id} stopped: performed 3, failed attempts 4, dead-lettered 1"
    ]
    assert not [m for m in messages if SECRET in m]
    knobs = f"worker_batch_size {settings.worker_batch_size}, coordinator_delay {settings.coordinator_delay:g} s"
    assert repr(queue) == (
        f"<Queue on {redacted}, prefix 'sq'; registered ops:flaky; "
        f"settings {knobs}, lease_ttl {settings.lease_ttl:g} s>"
    )
    assert repr(worker) == (
        f"<Worker {worker.id}: 0 loops running, 0 threads held; performed 3, failed attempts 4, dead-lettered 1; "
        f"handlers ops:flaky; storage {redacted}; {knobs}>"
    )
    assert worker.counters.performed == 3 and worker.counters.dead_lettered == 1


def test_storage_locations_are_urls_without_passwords() -> None:
    from sharded_queue.storage import connect

    settings = Settings()
    cases = {
        "redis://alice:pw@host:6380/2": "redis://alice:***@host:6380/2",
        "rediss://:pw@host:6390/0": "rediss://:***@host:6390/0",
        "redis://host": "redis://host:6379/0",
        "unix:///run/redis.sock?db=3": "unix:///run/redis.sock?db=3",
        "redis+cluster://bob:pw@10.0.0.1:7000": "redis+cluster://bob:***@10.0.0.1:7000",
    }
    for url, shown in cases.items():
        assert Storage(connect(url, settings)).location == shown
    assert fresh_queue().storage.location == "embedded fakeredis"


# --- metrics -----------------------------------------------------------------------------------


async def test_metrics_count_observe_and_sample(queue: Queue) -> None:
    class Counted(Handler):
        name = "ops:counted"
        retry_attempts = 1
        batch_size = 4

        @classmethod
        async def route(cls, *requests: int) -> list[RequestRoute]:
            return [RequestRoute(r, Route(thread=r % 2)) for r in requests]

        async def perform(self, *requests: int) -> None:
            if 7 in requests:
                raise ValueError("seven")

    metrics = Metrics(sample_interval=0.05)
    await queue.register(Counted, *range(10))
    await drain(Worker(queue, metrics=metrics), loops=2)
    value = metrics.registry.get_sample_value
    labels = {"handler": "ops:counted"}
    assert value("sharded_queue_performed_total", labels) == 9
    assert value("sharded_queue_dead_lettered_total", labels) == 1
    # 7 sits in batch [1, 3, 5, 7]: the batch fails, then its halves, then 7 alone
    assert value("sharded_queue_failed_total", labels) == 3
    assert value("sharded_queue_sojourn_seconds_count", labels) == 9
    assert value("sharded_queue_batch_size_sum", labels) == 9
    assert value("sharded_queue_perform_seconds_count", labels) == value("sharded_queue_batch_size_count", labels) + 3


async def test_metrics_gauges_follow_the_queue(settings: Settings) -> None:
    reset_gate()
    queue = fresh_queue(settings)
    await queue.register(Gate, *[[1, seq] for seq in range(5)])
    metrics = Metrics(sample_interval=0.02)
    worker = Worker(queue, metrics=metrics)
    loop = asyncio.create_task(worker.loop())
    labels = {"handler": "ops:gate"}
    await wait_until(lambda: metrics.registry.get_sample_value("sharded_queue_depth", labels) == 5)
    Gate.gate.set()
    await wait_until(lambda: metrics.registry.get_sample_value("sharded_queue_depth", labels) == 0)
    assert metrics.registry.get_sample_value("sharded_queue_lag_seconds", labels) == 0
    worker.stop()
    assert await asyncio.wait_for(loop, 10) == 5


def test_metrics_of_two_workers_do_not_collide_and_serve_http() -> None:
    first, second = Metrics(), Metrics(registry=CollectorRegistry())
    first.performed.labels("a").inc(2)
    assert second.registry.get_sample_value("sharded_queue_performed_total", {"handler": "a"}) is None
    port = first.serve(0, addr="127.0.0.1")
    try:
        import urllib.request

        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            assert 'sharded_queue_performed_total{handler="a"} 2.0' in response.read().decode()
    finally:
        first.close()
    with pytest.raises(ValueError, match="sample_interval"):
        Metrics(sample_interval=0)


def test_a_batch_histogram_equals_a_histogram_observed_per_message() -> None:
    import random

    from prometheus_client import Histogram

    from sharded_queue.metrics import SOJOURN_BUCKETS, BatchHistogram

    registry = CollectorRegistry()
    batched = BatchHistogram("batched_seconds", "by batch", SOJOURN_BUCKETS)
    registry.register(batched)
    single = Histogram("single_seconds", "by message", ["handler"], buckets=SOJOURN_BUCKETS, registry=registry)
    rng = random.Random(5)
    for batch in range(50):
        finished = 1_000_000.0 + batch
        ages = [rng.choice([*SOJOURN_BUCKETS, -1.0, 0.0, 7200.0]) for _ in range(rng.randint(1, 20))]
        ages += [rng.expovariate(0.2) for _ in range(rng.randint(0, 20))]  # on the bounds and between them
        handler = f"h{batch % 3}"
        batched.observe_batch(handler, finished, [finished - age for age in ages])
        for age in ages:
            single.labels(handler).observe(age)
    for handler in ("h0", "h1", "h2"):
        for bound in [*map(repr, map(float, SOJOURN_BUCKETS)), "+Inf"]:
            labels = {"handler": handler, "le": bound}
            expected = registry.get_sample_value("single_seconds_bucket", labels)
            assert registry.get_sample_value("batched_seconds_bucket", labels) == expected, labels
        for suffix in ("_count", "_sum"):
            expected = registry.get_sample_value(f"single_seconds{suffix}", {"handler": handler})
            assert registry.get_sample_value(f"batched_seconds{suffix}", {"handler": handler}) == pytest.approx(
                expected
            )


def test_importing_the_library_does_not_import_prometheus_or_pandas() -> None:
    code = (
        "import sys, sharded_queue\n"
        "from sharded_queue.testing import fresh_queue\n"
        "q = fresh_queue()\n"
        "class H(sharded_queue.Handler):\n"
        "    async def perform(self, *r: int) -> None: ...\n"
        "sharded_queue.Worker(q, handlers=[H])\n"
        "print(sorted({'prometheus_client', 'pandas'} & set(sys.modules)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
