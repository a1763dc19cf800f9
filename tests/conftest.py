"""Storage fixtures: every contract test runs on embedded fakeredis, on a real
``redis-server`` and on a three-node Redis Cluster, all started by this suite on
free loopback ports (never the server on 6379)."""

from __future__ import annotations

import itertools
import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from typing import Any

import fakeredis
import pytest

from sharded_queue import Queue, Settings, Storage
from sharded_queue.core import PollResult
from sharded_queue.testing import RedisServer
from sharded_queue.testing_servers import RedisClusterNodes

CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
_prefixes = itertools.count()


def need_redis_server() -> None:
    if shutil.which("redis-server") is None:
        if CI:
            pytest.fail("redis-server is not installed (required under CI=true)")
        pytest.skip("redis-server is not installed")


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    need_redis_server()
    with tempfile.TemporaryDirectory(prefix="sq-redis-") as directory:
        server = RedisServer(Path(directory))
        yield server
        server.stop()


@pytest.fixture(scope="session")
def redis_url(redis_server: RedisServer) -> str:
    return redis_server.url


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[RedisClusterNodes]:
    need_redis_server()
    with tempfile.TemporaryDirectory(prefix="sq-cluster-") as directory:
        cluster = RedisClusterNodes(Path(directory))
        yield cluster
        cluster.stop()


WORKER_ENV = {
    "QUEUE_LEASE_TTL": "1.5",
    "QUEUE_COORDINATOR_DELAY": "0.1",
    "QUEUE_WORKER_EMPTY_LIMIT": "4",
    "QUEUE_WORKER_EMPTY_PAUSE": "0.05",
    "QUEUE_KEY_PREFIX": "chaos",
    "TEST_PERFORM_SECONDS": "0",
}


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[Any]:
    """Worker processes (`benchmarks.worker_process`) against a redis-server of their own."""
    from benchmarks.processes import Processes

    need_redis_server()
    server = RedisServer(tmp_path)
    group = Processes(server.url, tmp_path, dict(WORKER_ENV))
    yield group
    group.stop_all()
    server.stop()


class PollCounting(Storage):
    """The real storage, counting coordinator polls once they have read the index."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.poll_log: list[None] = []

    @property
    def polls(self) -> int:
        return len(self.poll_log)

    async def candidates(self, handlers: Sequence[str], count: int) -> PollResult:
        found = await super().candidates(handlers, count)
        self.poll_log.append(None)
        return found


@pytest.fixture
def settings() -> Settings:
    """Settings for fast tests: short waits, short leases."""
    return Settings(
        coordinator_delay=0.05,
        worker_empty_pause=0.01,
        worker_empty_limit=3,
        lease_ttl=2.0,
        retry_backoff=0.01,
        retry_backoff_max=0.05,
    )


@pytest.fixture(params=["fakeredis", "redis", "cluster"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def storage(backend: str, request: pytest.FixtureRequest) -> AsyncIterator[Storage]:
    prefix = f"t{next(_prefixes)}"
    if backend == "fakeredis":
        store = Storage(fakeredis.FakeAsyncRedis(server=fakeredis.FakeServer()), prefix)
    elif backend == "redis":
        store = Storage.from_settings(Settings(key_prefix=prefix), request.getfixturevalue("redis_url"))
    else:
        store = Storage.from_settings(Settings(key_prefix=prefix), request.getfixturevalue("redis_cluster").url)
    yield store
    await store.close()


@pytest.fixture
async def queue(storage: Storage, settings: Settings) -> AsyncIterator[Queue]:
    yield Queue(storage, settings=settings)
