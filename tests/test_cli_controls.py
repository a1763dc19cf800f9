"""Thread controls across processes: ``sharded-queue pause`` / ``resume`` run as real subprocesses
against worker processes under load, ``stats``' paused column, and a handler-wide rate limit held
by two worker processes sharing one bucket (counted per window from the perform log)."""

from __future__ import annotations

import itertools
import json
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from sharded_queue import Queue, ThreadRef
from sharded_queue.testing import wait_until
from tests.cli_handlers import RatedRecorder, Recorder
from tests.test_cli import Cli, by_thread, terminate

_prefixes = itertools.count()


@pytest.fixture
def cli(redis_url: str, tmp_path: Path) -> Iterator[Cli]:
    prefix = f"ctl{next(_prefixes)}"
    env = {key: value for key, value in os.environ.items() if not key.startswith("QUEUE_")}
    env.update(
        QUEUE_STORAGE_URL=redis_url,
        QUEUE_KEY_PREFIX=prefix,
        QUEUE_COORDINATOR_DELAY="0.05",
        QUEUE_WORKER_EMPTY_PAUSE="0.01",
        QUEUE_WORKER_EMPTY_LIMIT="3",
        QUEUE_LEASE_TTL="2",
        CLI_TEST_LOG=str(tmp_path / "performed.log"),
    )
    yield Cli(redis_url, prefix, tmp_path / "performed.log", env)


@pytest.fixture
async def queue(cli: Cli) -> AsyncIterator[Queue]:
    async with cli.queue() as queue:
        yield queue


async def let_go(queue: Queue, handler: str, thread: str) -> bool:
    """An acquire refused the paused thread (hid it until resumed), and nobody holds it."""
    score = await queue.storage.client.zscore(queue.storage.keys.index(handler), thread)
    return score is not None and score >= 1e14 and await queue.storage.lease_token(ThreadRef(handler, thread)) is None


async def test_pause_and_resume_a_thread_from_the_command_line_under_load(cli: Cli, queue: Queue) -> None:
    cli.env.update(QUEUE_WORKER_BATCH_SIZE="2", CLI_TEST_PERFORM_SECONDS="0.02")
    sizes = {"0": 40, "1": 300, "2": 40, "3": 40}  # thread 1 takes 3 s at least: it is paused midway
    await queue.register(Recorder, *[[int(t), seq] for t, size in sizes.items() for seq in range(size)])
    worker = cli.start("worker", "tests.cli_handlers:Recorder", "--processes", "2", "--loops", "2")
    try:
        await wait_until(lambda: len(by_thread(cli.performed()).get("1", [])) >= 4, timeout=60)
        paused = cli.run("pause", "tests.cli_handlers:Recorder", "--thread", "1")
        assert paused.returncode == 0, paused.stderr
        assert "paused thread 1 of cli:recorder until resumed; paused: 1" in paused.stdout
        await wait_until(lambda: let_go(queue, "cli:recorder", "1"), timeout=60)
        stopped_at = len(by_thread(cli.performed())["1"])
        others = {t: list(range(size)) for t, size in sizes.items() if t != "1"}
        await wait_until(lambda: {t: s for t, s in by_thread(cli.performed()).items() if t != "1"} == others, 60)
        assert len(by_thread(cli.performed())["1"]) == stopped_at < 300  # nothing of it performed while paused
        stats = json.loads(cli.run("stats", "--json").stdout)
        rows = [row for row in stats if row["thread"] == "1"]
        assert rows and all(row["paused"] for row in rows)
        assert not any(row["paused"] for row in stats if row["thread"] != "1")
        resumed = cli.run("resume", "tests.cli_handlers:Recorder", "--thread", "1")
        assert resumed.returncode == 0, resumed.stderr
        assert "paused: none" in resumed.stdout
        await wait_until(lambda: len(by_thread(cli.performed()).get("1", [])) == 300, timeout=60)
    finally:
        stderr = terminate(worker)
    assert worker.returncode == 0, stderr
    assert by_thread(cli.performed()) == {t: list(range(size)) for t, size in sizes.items()}  # FIFO, none twice


async def test_pause_for_a_duration_and_bad_usage_from_the_command_line(cli: Cli, queue: Queue) -> None:
    paused = cli.run("pause", "tests.cli_handlers:Recorder", "--for", "60")
    assert paused.returncode == 0, paused.stderr
    assert "paused every thread of cli:recorder for 60 s; paused: *" in paused.stdout
    assert await queue.paused("cli:recorder") == ["*"]
    assert cli.run("resume", "tests.cli_handlers:Recorder").returncode == 0
    assert await queue.paused("cli:recorder") == []
    bad = cli.run("pause", "tests.cli_handlers:Recorder", "--for", "-1")
    assert bad.returncode == 2 and "seconds > 0" in bad.stderr
    missing = cli.run("resume", "tests.cli_handlers:Nope")
    assert missing.returncode == 2 and "Nope" in missing.stderr


def worst_window(times: list[tuple[float, int]], seconds: float) -> int:
    return max(sum(n for t, n in times if start <= t < start + seconds) for start, _ in times)


async def test_two_worker_processes_share_a_handler_wide_rate_limit(cli: Cli, queue: Queue) -> None:
    total = 8 * 16
    await queue.register(RatedRecorder, *[[thread, seq] for seq in range(16) for thread in range(8)])
    done = cli.run("worker", "tests.cli_handlers:RatedRecorder", "--processes", "2", "--loops", "2", "--burst")
    assert done.returncode == 0, done.stderr
    assert by_thread(cli.performed()) == {str(t): list(range(16)) for t in range(8)}
    lines = Path(str(cli.log) + ".times").read_text().splitlines()
    times = sorted((float(at), int(count)) for at, count in map(str.split, lines))
    assert sum(count for _, count in times) == total
    # 40/s and a bucket of one batch (4). The times are taken in the workers as each perform
    # starts, a little after its fetch, so two fetches may land closer: one batch more of slack.
    for window in (0.5, 1.0, 2.0):
        assert worst_window(times, window) <= 40 * window + 2 * RatedRecorder.batch_size
    assert times[-1][0] - times[0][0] >= (total - 2 * RatedRecorder.batch_size) / 40
    assert await queue.pending(RatedRecorder) == 0
