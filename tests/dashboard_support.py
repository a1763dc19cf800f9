"""What the dashboard's tests share: handlers a worker process imports by name, a redis-server
with a password, and ``sharded-queue dashboard`` as a real subprocess."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import redis

from sharded_queue import Handler, RequestRoute, Route
from sharded_queue.testing import RedisServer, free_port

ROOT = Path(__file__).parent.parent
SECRET = "Redis-pa55-never-shown"
TOKEN = "dashboard-t0ken-never-shown"


class Gated(Handler):
    """Requests ``[thread, seq]``; a negative ``seq`` fails. Every perform waits until the file named
    by ``DASHBOARD_GATE`` exists (none named: no wait), so a test decides when batches finish."""

    name = "dash:gated"
    retry_attempts = 1

    @classmethod
    async def route(cls, *requests: list[int]) -> list[RequestRoute]:
        return [RequestRoute(r, Route(thread=r[0])) for r in requests]

    async def perform(self, *requests: list[int]) -> None:
        if any(seq < 0 for _, seq in requests):
            raise ValueError(f"poison request {[r for r in requests if r[1] < 0]}")
        gate = os.environ.get("DASHBOARD_GATE")
        while gate and not os.path.exists(gate):
            await asyncio.sleep(0.02)


class Reminder(Handler):
    """Only ever scheduled (no worker runs it here)."""

    name = "dash:reminder"

    async def perform(self, *requests: dict[str, int]) -> None: ...


def secured_redis(directory: Path) -> tuple[RedisServer, str]:
    """A redis-server that wants a password, and its URL with that password in it."""
    server = RedisServer(directory)
    client = redis.Redis(port=server.port)
    client.config_set("requirepass", SECRET)
    client.close()
    return server, f"redis://:{SECRET}@127.0.0.1:{server.port}/0"


def cli_env(url: str, prefix: str, **extra: str) -> dict[str, str]:
    """The environment of a ``python -m sharded_queue`` child: no inherited ``QUEUE_*``, short waits."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("QUEUE_")}
    env.update(
        QUEUE_STORAGE_URL=url,
        QUEUE_KEY_PREFIX=prefix,
        QUEUE_COORDINATOR_DELAY="0.05",
        QUEUE_WORKER_EMPTY_PAUSE="0.01",
        QUEUE_WORKER_EMPTY_LIMIT="3",
        QUEUE_LEASE_TTL="2",
        **extra,
    )
    return env


class DashboardProcess:
    """``python -m sharded_queue dashboard ARGS --port P``, started and ready (its /api/info answers)."""

    def __init__(self, env: dict[str, str], *args: str) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        command = [sys.executable, "-m", "sharded_queue", "dashboard", *args, "--port", str(self.port)]
        self.process = subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        deadline = time.monotonic() + 30
        while request(self.base + "/api/info")[0] != 200:
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the dashboard did not start:\n{self.stop()[1]}")
            time.sleep(0.05)

    def stop(self, sig: int = signal.SIGTERM) -> tuple[int, str]:
        """Send ``sig``; its exit code and everything it logged."""
        if self.process.poll() is None:
            self.process.send_signal(sig)
        try:
            log, _ = self.process.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            log, _ = self.process.communicate()
        return self.process.returncode, log


def request(url: str, method: str = "GET", headers: dict[str, str] | None = None) -> tuple[int, str]:
    """Status and body of one HTTP request (status 0: nothing listens)."""
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method=method, headers=headers or {}), timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()
    except OSError:
        return 0, ""


def get_json(url: str) -> Any:
    status, body = request(url)
    assert status == 200, (url, status, body)
    return json.loads(body)
