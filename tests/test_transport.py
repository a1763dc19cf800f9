"""The transport borrows redis-py's internals (`sharded_queue.storage.transport`): the installed
redis-py must have them, an untested one takes the public path, and the public path works."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import redis

from sharded_queue import Queue, Settings, Storage
from sharded_queue.storage import transport
from tests import test_queue


def test_the_installed_redis_py_has_what_the_transport_borrows() -> None:
    gone = transport.missing()
    assert not gone, (
        f"redis-py {redis.__version__} lacks {', '.join(gone)}, which sharded_queue/storage/transport.py "
        "borrows: adapt the transport to this release, or keep redis-py below it in pyproject.toml"
    )
    low, high = transport.TESTED
    assert low <= transport.version() < high, (
        f"redis-py {redis.__version__} is outside transport.TESTED {transport.TESTED}: the library takes "
        "the public path on it; run the suite on it and widen TESTED (and pyproject.toml's bound)"
    )
    assert transport.fast_path()


@pytest.mark.parametrize(
    ("installed", "gone", "fast"),
    [
        ((8, 2), [], True),
        ((7, 0), [], True),
        ((9, 0), [], False),  # a major nobody tested
        ((6, 4), [], False),
        ((8, 2), ["AbstractConnection._writer"], False),
    ],
)
def test_an_untested_or_changed_redis_py_takes_the_public_path(
    installed: tuple[int, int], gone: list[str], fast: bool
) -> None:
    assert transport.fast_path_for(installed, gone) is fast


@pytest.fixture
async def public_queue(redis_url: str, settings: Settings) -> AsyncIterator[Queue]:
    storage = Storage.from_settings(Settings(key_prefix="public"), redis_url, fast=False)
    assert storage.scripts.lanes is None
    assert not storage.client.connection_pool.connection_class.__name__.startswith("Hiredis")
    queue = Queue(storage, settings=settings)
    yield queue
    await storage.close()


async def test_the_public_path_performs_everything_in_order(public_queue: Queue) -> None:
    await test_queue.test_seed_example(public_queue)
    await test_queue.test_fifo_per_thread_with_concurrent_loops(public_queue)
    await test_queue.test_retried_registration_appends_once(public_queue)
