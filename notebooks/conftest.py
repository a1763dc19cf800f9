"""Notebooks run under nbval against a redis-server started here (the embedded
fakeredis when none is installed outside CI), through ``QUEUE_STORAGE_URL``,
which every kernel inherits."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

from sharded_queue.testing import RedisServer
from tests.conftest import CI

SLOW = {"cpu_and_io.ipynb", "tradeoffs.ipynb", "capacity_planning.ipynb"}
"""The large notebooks: run by ``make test-all`` (marked slow), not by the quick ``make test``."""

_server: RedisServer | None = None
_directory: tempfile.TemporaryDirectory[str] | None = None


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.path.name in SLOW:
            item.add_marker(pytest.mark.slow)


def pytest_sessionstart(session: pytest.Session) -> None:
    global _server, _directory
    if "QUEUE_STORAGE_URL" in os.environ:
        return  # the caller chose the storage
    if shutil.which("redis-server") is None:
        if CI:
            raise pytest.UsageError("redis-server is required under CI=true")
        return  # notebooks fall back to the embedded default
    _directory = tempfile.TemporaryDirectory(prefix="sq-notebooks-")
    _server = RedisServer(Path(_directory.name))
    os.environ["QUEUE_STORAGE_URL"] = _server.url


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if _server is not None:
        _server.stop()
        os.environ.pop("QUEUE_STORAGE_URL", None)
    if _directory is not None:
        _directory.cleanup()
