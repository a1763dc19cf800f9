"""Losing the Redis primary: Sentinel URLs, ``QUEUE_REGISTER_REPLICAS``, a lost ack's fencing,
and failovers of Sentinel and of a Redis Cluster under load, against real processes.

The quick tests take a few seconds each; the runs of several failovers under load
are marked slow (``make test-all``). Every server is started here, on free loopback
ports. The numbers of ``docs/durability.md`` come from ``benchmarks/bench_failover.py``,
which runs the same `benchmarks.failover_run` with more failovers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import fakeredis
import pytest
import redis

from benchmarks.failover_run import Report, cluster_setup, run_failovers, sentinel_setup
from benchmarks.worker_process import ChaosHandler
from sharded_queue import (
    Handler,
    Queue,
    RequestRoute,
    Route,
    Settings,
    SettingsError,
    Storage,
    StorageError,
    SyncQueue,
    Worker,
)
from sharded_queue.core import Tube
from sharded_queue.storage import TubeWrite, connect, describe_client
from sharded_queue.storage.client import sentinel_parts
from sharded_queue.testing import RedisServer, free_port, wait_until
from sharded_queue.testing_servers import FAST_SYNC, ReplicatedCluster, SentinelGroup, info, wait_for
from tests.conftest import need_redis_server

ROOT = Path(__file__).resolve().parent.parent

# --- URLs and settings ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "sentinels", "service", "db", "tls"),
    [
        ("redis+sentinel://10.0.0.1:26379/mymaster", [("10.0.0.1", 26379)], "mymaster", 0, False),
        ("redis+sentinel://a:1,b,c:3/svc/2", [("a", 1), ("b", 26379), ("c", 3)], "svc", 2, False),
        ("rediss+sentinel://u:p@[::1]:5000,h:6000/svc/", [("::1", 5000), ("h", 6000)], "svc", 0, True),
    ],
)
def test_sentinel_url_is_taken_apart(
    url: str, sentinels: list[tuple[str, int]], service: str, db: int, tls: bool
) -> None:
    parts = sentinel_parts(url)
    assert (parts.sentinels, parts.service, parts.kwargs.get("db", 0), parts.tls) == (sentinels, service, db, tls)
    assert parts.sentinel_kwargs.get("ssl", False) is tls


def test_sentinel_url_credentials_go_where_they_belong() -> None:
    parts = sentinel_parts("redis+sentinel://app:s3cret@h:1/svc/1?sentinel_password=sent1nel&ssl_cert_reqs=none")
    assert (parts.kwargs["username"], parts.kwargs["password"], parts.kwargs["db"]) == ("app", "s3cret", 1)
    assert parts.sentinel_kwargs == {"password": "sent1nel"}  # the Sentinels' AUTH, not the primary's
    assert "sentinel_password" not in parts.kwargs


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("redis+sentinel://u:hunter2@h:1", "expected redis\\+sentinel://"),
        ("redis+sentinel://u:hunter2@h:port/svc", "not a number"),
        ("redis+sentinel://u:hunter2@h:1/svc/zero", "not a number"),
    ],
)
def test_bad_sentinel_url_fails_without_its_password(url: str, message: str) -> None:
    with pytest.raises(ValueError, match=message) as raised:
        connect(url, Settings())
    assert "hunter2" not in str(raised.value) and "u:***@" in str(raised.value)


async def test_sentinel_client_is_shown_without_passwords() -> None:
    url = "rediss+sentinel://app:s3cret@h1:1,h2:2/svc/3?sentinel_password=sent1nel"
    client = connect(url, Settings())
    shown = describe_client(client)
    assert shown == "rediss+sentinel://app:***@h1:1,h2:2/svc/3"
    assert Storage(client).location == shown
    pool = client.connection_pool
    assert pool.connection_kwargs["port"] == 0  # a connection that skipped the Sentinels could reach nothing
    assert issubclass(pool.connection_class, redis.asyncio.SSLConnection)  # TLS to the primary...
    sentinel = pool.sentinel_manager.sentinels[0].connection_pool
    assert issubclass(sentinel.connection_class, redis.asyncio.SSLConnection)  # ...and to the Sentinels
    settings = Settings(storage_url=url)
    assert "s3cret" not in repr(settings) and "sent1nel" not in repr(settings)
    await client.aclose()
    await pool.sentinel_manager.aclose()


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("-1", "QUEUE_REGISTER_REPLICAS='-1': must be >= 0"),
        ("one", "QUEUE_REGISTER_REPLICAS='one': expected an integer"),
        ("1.5", "QUEUE_REGISTER_REPLICAS='1.5': expected an integer"),
        ("", "QUEUE_REGISTER_REPLICAS='': expected an integer"),
    ],
)
def test_bad_register_replicas_names_the_variable(raw: str, message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        Settings.from_env({"QUEUE_REGISTER_REPLICAS": raw})


def test_register_replicas_defaults_to_none() -> None:
    assert Settings().register_replicas == 0
    assert Settings.from_env({"QUEUE_REGISTER_REPLICAS": "2"}).register_replicas == 2


# --- waiting for replicas ------------------------------------------------------------------------


@pytest.fixture
def primary_and_replica(tmp_path: Path) -> Iterator[tuple[RedisServer, RedisServer]]:
    need_redis_server()
    (tmp_path / "primary").mkdir()
    (tmp_path / "replica").mkdir()
    primary = RedisServer(tmp_path / "primary", *FAST_SYNC)
    replica = RedisServer(tmp_path / "replica", *FAST_SYNC, "--replicaof", "127.0.0.1", str(primary.port))
    wait_for(lambda: info(replica.port, "replication").get("master_link_status") == "up", 20, "replica in sync")
    wait_for(lambda: replica_online(primary.port), 20, "the primary sees its replica online")
    yield primary, replica
    if replica.process is not None:
        replica.process.send_signal(signal.SIGCONT)
    replica.stop()
    primary.stop()


def replica_online(port: int) -> bool:
    replica = info(port, "replication").get("slave0")
    return isinstance(replica, dict) and replica.get("state") == "online"


def one_write(queue: Queue, seq: int) -> tuple[str, list[TubeWrite]]:
    spec = queue.spec(ChaosHandler)
    return spec.name, [TubeWrite(Tube(spec.name, "0", "0"), 0.0, spec.codec.encode([[0, seq]], 0.0), False, "")]


@pytest.mark.parametrize("fast", [True, False], ids=["lanes", "public"])
async def test_register_waits_for_its_replicas(
    primary_and_replica: tuple[RedisServer, RedisServer], fast: bool
) -> None:
    """N=1 returns once the replica has the writes; a stalled replica makes it raise, saying so;
    a retried call (same stamp, another connection) waits for the first call's writes too. Calls
    that should succeed get a patient timeout (a loaded machine may take a while); the ones a
    stalled replica must fail get a short one."""
    primary, replica = primary_and_replica
    patient = Settings(key_prefix="waits", register_replicas=1, storage_timeout=10)
    hasty = Settings(key_prefix="waits", register_replicas=1, storage_timeout=0.2)
    queue = Queue(Storage.from_settings(patient, primary.url, fast=fast), settings=patient)
    stalled = Queue(Storage.from_settings(hasty, primary.url, fast=fast), settings=hasty)
    assert await queue.register(ChaosHandler, [0, 1], [1, 2]) == 2
    name, writes = one_write(queue, 3)
    first = Storage.from_settings(patient, primary.url, fast=fast)  # a call whose reply is lost...
    assert await first.push(name, writes, stamp="first", replicas=1, timeout=10) == 1
    assert replica.process is not None
    replica.process.send_signal(signal.SIGSTOP)  # the replica stops acknowledging
    with pytest.raises(StorageError, match="only 0 of the 1 replicas") as raised:
        await stalled.register(ChaosHandler, [0, 4], [1, 5], [2, 6])
    assert raised.value.stored == 3  # on the primary, not on a replica
    other = Storage.from_settings(patient, primary.url, fast=fast)  # ...is retried on a fresh connection
    with pytest.raises(StorageError, match="only 0 of the 1 replicas"):
        await other.push(name, writes, stamp="first", replicas=1, timeout=0.2)
    replica.process.send_signal(signal.SIGCONT)
    assert await other.push(name, writes, stamp="first", replicas=1, timeout=10) == 1
    assert await queue.pending(ChaosHandler) == 6  # the retried call appended nothing twice
    await first.close()
    await other.close()
    await stalled.close()
    await queue.close()


async def test_register_without_replicas_sends_no_wait(primary_and_replica: tuple[RedisServer, RedisServer]) -> None:
    primary, _ = primary_and_replica
    queue = Queue(primary.url, settings=Settings(key_prefix="nowait"))
    for seq in range(20):
        await queue.register(ChaosHandler, [seq % 4, seq])
    stats = await queue.storage.client.info("commandstats")
    assert "cmdstat_wait" not in stats
    await queue.close()


async def test_embedded_storage_has_no_replicas_to_wait_for() -> None:
    queue = Queue(
        Storage(fakeredis.FakeAsyncRedis(server=fakeredis.FakeServer())), settings=Settings(register_replicas=1)
    )
    with pytest.raises(StorageError, match="only 0 of the 1 replicas"):
        await queue.register(ChaosHandler, [0, 1])


# --- a lost ack: fencing after a failover -------------------------------------------------------


class Proxy:
    """A TCP proxy on a free loopback port: `switch` sends it (and every new connection) to another
    Redis and cuts the open ones, as a managed Redis's endpoint moves to the promoted replica."""

    def __init__(self, target: int) -> None:
        self.port = free_port()
        self.target = target
        self._open: set[asyncio.StreamWriter] = set()
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)

    def switch(self, target: int) -> None:
        self.target = target
        for writer in list(self._open):
            writer.close()

    async def _accept(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        server_reader, server_writer = await asyncio.open_connection("127.0.0.1", self.target)
        self._open |= {client_writer, server_writer}
        await asyncio.gather(
            self._pipe(client_reader, server_writer), self._pipe(server_reader, client_writer), return_exceptions=True
        )
        for writer in (client_writer, server_writer):
            self._open.discard(writer)
            writer.close()

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.close()

    async def stop(self) -> None:
        self.switch(self.target)
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


class Gated(Handler):
    """Requests are ints on thread 0, 4 per batch; the first `gates` performs wait for the test."""

    name = "failover:gated"
    batch_size = 4
    performed: ClassVar[list[list[int]]] = []
    started: ClassVar[asyncio.Event]
    gate: ClassVar[asyncio.Event]
    gates: ClassVar[int] = 2

    @classmethod
    async def route(cls, *requests: int) -> list[RequestRoute]:
        return [RequestRoute(r, Route(thread=0)) for r in requests]

    async def perform(self, *requests: int) -> None:
        Gated.started.set()
        if len(Gated.performed) < Gated.gates:
            await Gated.gate.wait()
            Gated.gate.clear()
        Gated.performed.append(list(requests))


async def _caught_up(primary: int, replica: int) -> bool:
    async with redis.asyncio.Redis(port=primary) as p, redis.asyncio.Redis(port=replica) as r:
        offset = (await p.info("replication"))["master_repl_offset"]
        return bool((await r.info("replication")).get("slave_repl_offset") == offset)


async def _next_perform() -> None:
    await wait_until(lambda: Gated.started.is_set(), timeout=10)
    Gated.started.clear()


@pytest.mark.parametrize("lease", ["replicated", "lost"])
async def test_an_ack_lost_in_a_failover_performs_its_batch_again_never_skips_it(
    primary_and_replica: tuple[RedisServer, RedisServer], lease: str
) -> None:
    """The replica is promoted (REPLICAOF NO ONE) before the ack of batch 1 reaches it; the worker then
    acks batch 2 on the promoted replica, whose head is still batch 1. The ack trims what it was
    performed (batch 1, from the new head) and batch 2 is performed again; or, when the lease did not
    reach the replica either, the loop loses it, takes the thread again and performs both again."""
    primary, replica = primary_and_replica
    Gated.performed, Gated.started, Gated.gate = [], asyncio.Event(), asyncio.Event()
    proxy = Proxy(primary.port)
    await proxy.start()
    settings = Settings(key_prefix="fenced", lease_ttl=10, coordinator_delay=0.05, retry_backoff_max=0.1)
    settings.storage_timeout, settings.register_replicas = 2, 1
    queue = Queue(f"redis://127.0.0.1:{proxy.port}/0", settings=settings)
    await queue.register(Gated, *range(12))
    freeze = ("REPLICAOF", "NO", "ONE")
    async with redis.asyncio.Redis(port=replica.port) as promoted:
        if lease == "lost":  # promoted before the worker even took the lease
            await promoted.execute_command(*freeze)
        worker = Worker(queue, handlers=[Gated])
        loop = asyncio.create_task(worker.loop())
        await _next_perform()  # batch 1 fetched from the primary, lease taken there
        if lease == "replicated":
            await wait_until(lambda: _caught_up(primary.port, replica.port), timeout=10)
            await promoted.execute_command(*freeze)  # it has the lease and batch 1, never its ack
        Gated.gate.set()  # ack batch 1 on the primary, fetch batch 2 there
        await _next_perform()
        proxy.switch(replica.port)  # the failover: the promoted replica serves from now on
        Gated.gate.set()  # ack batch 2: on the promoted replica
        await wait_until(lambda: _empty(queue), timeout=20)
        worker.stop()
        await asyncio.wait_for(loop, 10)
    first, second, third = [0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11]
    if lease == "replicated":
        assert Gated.performed == [first, second, second, third]
    else:
        assert Gated.performed == [first, second, first, second, third]
    await queue.close()
    await proxy.stop()


async def _empty(queue: Queue) -> bool:
    return await queue.pending(Gated) == 0 and len(Gated.performed) >= 4


# --- Sentinel: one failover, followed by everything ------------------------------------------------


class Noted(Handler):
    """Requests are ``[thread, seq]``; performs are noted in `performed`."""

    name = "failover:noted"
    performed: ClassVar[set[tuple[int, int]]] = set()

    @classmethod
    async def route(cls, *requests: list[int]) -> list[RequestRoute]:
        return [RequestRoute(r, Route(thread=r[0])) for r in requests]

    async def perform(self, *requests: list[int]) -> None:
        Noted.performed.update((thread, seq) for thread, seq in requests)


@pytest.fixture
def sentinels(tmp_path: Path) -> Iterator[SentinelGroup]:
    need_redis_server()
    group = SentinelGroup(tmp_path / "group")
    yield group
    group.stop()


async def _registers(queue: Queue, *requests: list[int]) -> bool:
    try:
        await queue.register(Noted, *requests)
    except StorageError:
        return False
    return True


def _sync_registers(queue: SyncQueue, *requests: list[int]) -> bool:
    try:
        queue.register(Noted, *requests)
    except StorageError:
        return False
    return True


def _check(url: str) -> int:
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "QUEUE_KEY_PREFIX": "smoke"}
    run = subprocess.run([sys.executable, "-m", "sharded_queue", "check", "--url", url], env=env, capture_output=True)
    return run.returncode


async def test_a_sentinel_failover_is_followed_by_workers_producers_sync_queue_and_cli(
    sentinels: SentinelGroup, caplog: pytest.LogCaptureFixture
) -> None:
    """kill -9 of the primary: the worker, a Queue, a SyncQueue and the CLI go on with the promoted
    replica by themselves; the worker logs one WARNING when it fails and one INFO naming the failover."""
    caplog.set_level(logging.INFO, logger="sharded_queue")
    Noted.performed = set()
    settings = Settings(key_prefix="smoke", storage_timeout=1, lease_ttl=1.5, coordinator_delay=0.1)
    settings.retry_backoff_max = 0.2
    queue, sync = Queue(sentinels.url, settings=settings), SyncQueue(sentinels.url, settings=settings)
    worker = Worker(queue, handlers=[Noted])
    loops = [asyncio.create_task(worker.loop()) for _ in range(2)]
    await queue.register(Noted, *[[seq % 4, seq] for seq in range(10)])
    await asyncio.to_thread(sync.register, Noted, *[[seq % 4, seq] for seq in range(10, 20)])
    await wait_until(lambda: len(Noted.performed) == 20, timeout=20)
    assert await asyncio.to_thread(_check, sentinels.url) == 0
    old = await asyncio.to_thread(sentinels.kill_primary)
    new = await asyncio.to_thread(sentinels.wait_promoted, old)
    await wait_until(lambda: _registers(queue, [0, 20], [1, 21]), timeout=30, interval=0.1)
    await wait_until(lambda: asyncio.to_thread(_sync_registers, sync, [2, 22], [3, 23]), timeout=30, interval=0.1)
    await wait_until(lambda: {(0, 20), (1, 21), (2, 22), (3, 23)} <= Noted.performed, timeout=30)
    assert await asyncio.to_thread(_check, sentinels.url) == 0
    assert queue.storage.primaries() == frozenset([f"127.0.0.1:{new.port}"])
    await wait_until(lambda: "failover over" in caplog.text, timeout=30)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and "storage is failing" in r.message]
    infos = [r for r in caplog.records if r.levelno == logging.INFO and r.message.startswith("storage ")]
    assert len(warnings) == 1 and f"127.0.0.1:{old.port}" in warnings[0].message
    assert len(infos) == 1
    assert f"primary 127.0.0.1:{new.port} replaces 127.0.0.1:{old.port}" in infos[0].message
    worker.stop()
    await asyncio.gather(*loops)
    await asyncio.to_thread(sync.close)
    await queue.close()


# --- failovers under load (slow) ----------------------------------------------------------------


@pytest.fixture
def clock(tmp_path: Path) -> Iterator[RedisServer]:
    """The worker processes' global clock: a Redis of its own, which no failover touches."""
    need_redis_server()
    (tmp_path / "clock").mkdir()
    server = RedisServer(tmp_path / "clock")
    yield server
    server.stop()


def _workers_logged_each_failover_once(report: Report) -> None:
    """Every worker process that saw the storage fail logged one WARNING and one failover INFO per failover."""
    assert report.logs, "no worker process logged a failover"
    for pid, lines in report.logs.items():
        assert lines["failing"] == lines["failover_over"] <= len(report.failovers), (pid, lines)
        assert lines["recovered"] == 0, (pid, lines)


def _never_lost(report: Report) -> None:
    summary = report.summary()
    print("failovers:", summary)
    assert report.lost == [], f"{len(report.lost)} acknowledged requests lost: {report.lost[:10]}"
    assert report.fifo_violations == 0
    assert report.acknowledged > 1000  # the load ran through the failovers


async def _failovers(directory: Path, clock: RedisServer, kind: str, failovers: int, replicas: int) -> Report:
    """``failovers`` failovers under load of a fresh `SentinelGroup` (``kind`` sentinel or lagging) or
    `ReplicatedCluster` (cluster), with QUEUE_REGISTER_REPLICAS=``replicas`` (`benchmarks.failover_run`)."""
    need_redis_server()
    (directory / "servers").mkdir()
    (directory / "run").mkdir()
    servers: SentinelGroup | ReplicatedCluster
    if kind == "cluster":
        servers = await asyncio.to_thread(ReplicatedCluster, directory / "servers")
        setup = cluster_setup(servers)
    else:
        servers = await asyncio.to_thread(SentinelGroup, directory / "servers")
        setup = sentinel_setup(servers, lagging=kind == "lagging")
    try:
        return await run_failovers(setup, directory / "run", clock.url, failovers, replicas)
    finally:
        servers.stop()


@pytest.mark.slow
async def test_sentinel_failovers_under_load_lose_no_register_that_waited_for_a_replica(
    tmp_path: Path, clock: RedisServer
) -> None:
    """QUEUE_REGISTER_REPLICAS=1, 2 worker processes, producers registering: kill -9 of the primary,
    three times. Nothing acknowledged is lost, FIFO holds per thread, and the work resumes by itself
    after each failover (`benchmarks.failover_run` waits for performs of new requests, up to 60 s)."""
    report = await _failovers(tmp_path, clock, "sentinel", failovers=3, replicas=1)
    _never_lost(report)
    assert sum(lines["failing"] for lines in report.logs.values()) == 2 * 3  # both workers, each failover
    _workers_logged_each_failover_once(report)


@pytest.mark.slow
@pytest.mark.parametrize("replicas", [0, 1])
async def test_a_lagging_replica_promoted_loses_acknowledged_registers_unless_they_waited_for_it(
    tmp_path: Path, clock: RedisServer, replicas: int
) -> None:
    """The primary dies while its replica lags half a second behind (`SentinelGroup.kill_primary_lagging`):
    with QUEUE_REGISTER_REPLICAS=0 registrations it acknowledged are lost; with 1, none is, since
    none of those was acknowledged. (Run both ways: the test can see a loss.)"""
    report = await _failovers(tmp_path, clock, "lagging", failovers=2, replicas=replicas)
    print("lagging replica:", report.summary())
    if replicas:
        _never_lost(report)
    else:
        assert report.lost, "no acknowledged request lost: the scenario did not make the replica lag"
        assert report.fifo_violations == 0


@pytest.mark.slow
async def test_cluster_failovers_under_load_lose_no_register_that_waited_for_a_replica(
    tmp_path: Path, clock: RedisServer
) -> None:
    """A 3-primary, 3-replica cluster; kill -9 of a primary (another each time), three times, under load."""
    report = await _failovers(tmp_path, clock, "cluster", failovers=3, replicas=1)
    _never_lost(report)
    _workers_logged_each_failover_once(report)


@pytest.mark.slow
async def test_cluster_register_waits_for_each_node_replica(tmp_path: Path) -> None:
    """On a cluster each node's writes wait for its own replica: one stalled replica makes register raise."""
    need_redis_server()
    (tmp_path / "cluster").mkdir()
    cluster = await asyncio.to_thread(ReplicatedCluster, tmp_path / "cluster")
    settings = Settings(key_prefix="waits", register_replicas=1, storage_timeout=0.5)
    queue = Queue(cluster.url, settings=settings)
    try:
        assert await queue.register(ChaosHandler, *[[seq % 16, seq] for seq in range(64)]) == 64
        roles = cluster.roles()
        replica = next(node for node in cluster.nodes if roles[node.port] == "slave")
        assert replica.process is not None
        replica.process.send_signal(signal.SIGSTOP)
        try:
            with pytest.raises(StorageError, match="only 0 of the 1 replicas") as raised:
                await queue.register(ChaosHandler, *[[seq % 16, seq] for seq in range(64, 128)])
        finally:
            replica.process.send_signal(signal.SIGCONT)
        assert raised.value.stored == 64
        assert await queue.register(ChaosHandler, *[[seq % 16, seq] for seq in range(128, 192)]) == 64
        assert await queue.pending(ChaosHandler) == 192
    finally:
        await queue.close()
        cluster.stop()


# --- TLS: rediss+sentinel:// -----------------------------------------------------------------------


def _certificates(directory: Path) -> dict[str, Path]:
    """A CA and a server certificate for 127.0.0.1 (openssl; ``directory`` has no space in its path)."""
    files = {name: directory / f"{name}.pem" for name in ("ca", "ca-key", "cert", "key", "csr")}
    ca, ca_key, cert, key, csr = files.values()
    for command in (
        f"req -x509 -new -nodes -newkey rsa:2048 -days 1 -subj /CN=test-ca -keyout {ca_key} -out {ca}",
        f"req -new -nodes -newkey rsa:2048 -subj /CN=127.0.0.1 -keyout {key} -out {csr}",
        f"x509 -req -in {csr} -CA {ca} -CAkey {ca_key} -days 1 -CAcreateserial -out {cert} -extfile /dev/stdin",
    ):
        extension = b"subjectAltName=IP:127.0.0.1\n"
        subprocess.run(["openssl", *command.split()], input=extension, check=True, capture_output=True)
    return files


async def test_rediss_sentinel_url_speaks_tls_to_the_sentinels_and_the_primary(tmp_path: Path) -> None:
    need_redis_server()
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    certs = _certificates(tmp_path)
    tls = ["--tls-cert-file", str(certs["cert"]), "--tls-key-file", str(certs["key"])]
    tls += ["--tls-ca-cert-file", str(certs["ca"]), "--tls-auth-clients", "no"]
    primary, sentinel = free_port(), free_port()
    (tmp_path / "sentinel.conf").write_text(
        f"port 0\ntls-port {sentinel}\nbind 127.0.0.1\ntls-replication yes\n"
        f"sentinel monitor tlsq 127.0.0.1 {primary} 1\n"
    )
    server = ["redis-server", "--port", "0", "--tls-port", str(primary), "--bind", "127.0.0.1", "--save", ""]
    processes = [
        subprocess.Popen([*server, "--dir", str(tmp_path), *tls], stdout=subprocess.DEVNULL),
        subprocess.Popen(
            ["redis-server", str(tmp_path / "sentinel.conf"), "--sentinel", *tls], stdout=subprocess.DEVNULL
        ),
    ]
    url = f"rediss+sentinel://127.0.0.1:{sentinel}/tlsq?ssl_ca_certs={certs['ca']}"
    queue = Queue(url, settings=Settings(key_prefix="tls", storage_timeout=2))
    try:
        await wait_until(lambda: _registers(queue, [0, 1]), timeout=20, interval=0.1)
        assert await queue.pending(Noted) == 1
        assert queue.storage.primaries() == frozenset([f"127.0.0.1:{primary}"])
    finally:
        await queue.close()
        for process in processes:
            process.kill()
            process.wait(10)
