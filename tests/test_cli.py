"""The command line, run as a real subprocess against a spawned redis-server:
``worker`` (burst, SIGTERM, several processes, metrics), ``stats``, ``check`` and
``dead-letters``; and its usage errors."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import signal
import subprocess
import sys
import urllib.request
from collections import defaultdict
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from sharded_queue import Queue, Settings, ThreadRef, Tube
from sharded_queue.cli import import_handler, main
from sharded_queue.testing import RedisServer, free_port, wait_until
from tests.cli_handlers import Outer, Recorder

ROOT = Path(__file__).parent.parent
HANDLER = "tests.cli_handlers:Recorder"
_prefixes = itertools.count()


def interruptible() -> None:
    """In the child: Ctrl-C (SIGINT) as from a terminal, even when this run was started in the
    background (a shell starts background jobs with SIGINT ignored, and Python keeps it so)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@dataclass
class Cli:
    """``python -m sharded_queue`` with a key prefix of its own, and what its handler performed."""

    url: str
    prefix: str
    log: Path
    env: dict[str, str]

    def command(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "sharded_queue", *args]

    def run(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.command(*args), cwd=ROOT, env=self.env, capture_output=True, text=True, timeout=timeout
        )

    def start(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            self.command(*args),
            cwd=ROOT,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            preexec_fn=interruptible,
        )

    def performed(self) -> list[tuple[int, str, int]]:
        if not self.log.exists():
            return []
        return [(int(pid), thread, int(seq)) for pid, thread, seq in map(str.split, self.log.read_text().splitlines())]

    def queue(self) -> Queue:
        return Queue(self.url, settings=Settings(key_prefix=self.prefix))


@pytest.fixture
def cli(redis_url: str, tmp_path: Path) -> Iterator[Cli]:
    prefix = f"cli{next(_prefixes)}"
    env = {key: value for key, value in os.environ.items() if not key.startswith("QUEUE_")}
    env.update(
        QUEUE_STORAGE_URL=redis_url,
        QUEUE_KEY_PREFIX=prefix,
        QUEUE_COORDINATOR_DELAY="0.05",
        QUEUE_WORKER_EMPTY_PAUSE="0.01",
        QUEUE_WORKER_EMPTY_LIMIT="3",
        QUEUE_LEASE_TTL="2",
        QUEUE_RETRY_BACKOFF="0.01",
        QUEUE_RETRY_BACKOFF_MAX="0.05",
        CLI_TEST_LOG=str(tmp_path / "performed.log"),
    )
    yield Cli(redis_url, prefix, tmp_path / "performed.log", env)


@pytest.fixture
async def queue(cli: Cli) -> AsyncIterator[Queue]:
    async with cli.queue() as queue:
        yield queue


async def register(queue: Queue, threads: int, per_thread: int) -> None:
    await queue.register(Recorder, *[[thread, seq] for seq in range(per_thread) for thread in range(threads)])


def terminate(process: subprocess.Popen[str], sig: int = signal.SIGTERM) -> str:
    """Send ``sig`` and wait for the process to exit (kill it if it does not); its stderr."""
    if process.poll() is None:
        process.send_signal(sig)
    try:
        _, stderr = process.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        _, stderr = process.communicate()
    return stderr


def by_thread(performed: list[tuple[int, str, int]]) -> dict[str, list[int]]:
    seqs: dict[str, list[int]] = defaultdict(list)
    for _, thread, seq in performed:
        seqs[thread].append(seq)
    return dict(seqs)


async def test_worker_burst_drains_and_exits_0(cli: Cli, queue: Queue) -> None:
    await register(queue, threads=3, per_thread=20)
    done = cli.run("worker", HANDLER, "--burst", "--loops", "2")
    assert done.returncode == 0, done.stderr
    assert by_thread(cli.performed()) == {str(t): list(range(20)) for t in range(3)}  # each once, FIFO
    assert await queue.pending(Recorder) == 0
    assert await queue.storage.live_workers() == []  # removed its heartbeat record on the way out
    (started,) = [line for line in done.stderr.splitlines() if " started: " in line]
    assert " INFO " in started and "handlers cli:recorder, 2 loops" in started and cli.url in started


async def test_worker_burst_on_empty_tubes_exits_at_once(cli: Cli) -> None:
    done = cli.run("worker", HANDLER, "--burst")
    assert done.returncode == 0, done.stderr
    assert cli.performed() == []


async def test_two_processes_perform_every_message_once_in_fifo(cli: Cli, queue: Queue) -> None:
    cli.env.update(QUEUE_WORKER_BATCH_SIZE="4", CLI_TEST_PERFORM_SECONDS="0.002")
    await register(queue, threads=8, per_thread=50)
    done = cli.run("worker", HANDLER, "--processes", "2", "--loops", "2", "--burst")
    assert done.returncode == 0, done.stderr
    performed = cli.performed()
    assert len(performed) == 400  # none twice (a line per performed request)
    assert by_thread(performed) == {str(t): list(range(50)) for t in range(8)}  # none lost, FIFO per thread
    workers = {line.split(" started: ")[0].split()[-1] for line in done.stderr.splitlines() if " started: " in line}
    assert len(workers) == 2  # two worker processes ran, each with its own id
    assert await queue.pending(Recorder) == 0


async def test_sigterm_stops_a_running_worker_gracefully_and_check_follows(cli: Cli, queue: Queue) -> None:
    cli.env.update(QUEUE_WORKER_BATCH_SIZE="1", CLI_TEST_PERFORM_SECONDS="0.2")
    assert cli.run("check").returncode == 1  # no worker yet
    await register(queue, threads=1, per_thread=30)
    worker = cli.start("worker", HANDLER, "--loops", "1")
    try:
        await wait_until(lambda: len(cli.performed()) >= 2, timeout=30)
        running = cli.run("check")
        assert running.returncode == 0, running.stdout + running.stderr
        assert "healthy: 1 live worker" in running.stdout and "cli:recorder" in running.stdout
    finally:
        stderr = terminate(worker)
    assert worker.returncode == 0, stderr
    assert "stopping gracefully" in stderr
    performed = by_thread(cli.performed())["0"]
    assert performed == list(range(len(performed)))  # FIFO, nothing twice
    assert await queue.pending(Recorder) == 30 - len(performed)  # the batch in hand was acked, the rest waits
    assert await queue.storage.lease_token(ThreadRef("cli:recorder", "0")) is None  # released
    stopped = cli.run("check")
    assert stopped.returncode == 1 and "no live worker" in stopped.stdout  # its record went at once


async def test_a_killed_worker_disappears_when_its_heartbeat_expires(cli: Cli, queue: Queue) -> None:
    cli.env["QUEUE_LEASE_TTL"] = "1"
    worker = cli.start("worker", HANDLER, "--loops", "1")
    try:
        await wait_until(lambda: _live(queue, 1), timeout=30)
    finally:
        worker.kill()
        worker.communicate(timeout=30)
    await wait_until(lambda: _live(queue, 0), timeout=10)  # within the 1 s TTL, plus polling


async def _live(queue: Queue, count: int) -> bool:
    return len(await queue.storage.live_workers()) == count


async def test_stats_json_shows_depths_lags_holders_and_dead_letters(cli: Cli, queue: Queue) -> None:
    storage = queue.storage
    name = "cli:recorder"
    now = await storage.server_time()
    # envelopes as registered 100 s and 40 s ago (by the storage server's clock)
    await storage.append_raw(
        name,
        [
            (Tube(name, "7", "0"), 0, [f"[{now - 100},[7,{i}]]".encode() for i in range(3)]),
            (Tube(name, "7", "1"), 1, [f"[{now - 40},[7,9]]".encode()]),
            (Tube(name, "8", "0"), 0, [f"[{now - 40},[8,0]]".encode()]),
        ],
    )
    await storage.client.set(storage.keys.lease(ThreadRef(name, "8")), "host:42-abc:3@1700000000000/ff", px=60_000)
    await queue.register(Recorder, [8, 1])
    done = cli.run("stats", "--json")
    assert done.returncode == 0, done.stderr
    rows = json.loads(done.stdout)
    assert [set(row) for row in rows] == [
        {"handler", "thread", "order", "depth", "lag", "holder", "held_since", "deferred", "dead", "paused"}
    ] * 4
    assert [
        (r["handler"], r["thread"], r["order"], r["depth"], r["holder"], r["held_since"], r["dead"]) for r in rows
    ] == [
        (name, "7", "0", 3, None, None, 0),
        (name, "7", "1", 1, None, None, 0),
        (name, "8", "0", 2, "host:42-abc:3", 1700000000.0, 0),
        (name, None, None, 6, None, None, 0),
    ]
    lags = [row["lag"] for row in rows]
    assert 100 <= lags[0] < 130 and 40 <= lags[1] < 70 and 40 <= lags[2] < 70 and lags[3] == lags[0]
    table = cli.run("stats", "--handler", name)
    assert table.returncode == 0 and "(total)" in table.stdout and "host:42-abc:3" in table.stdout
    unknown = cli.run("stats", "--json", "--handler", "nobody:ever", "--handler", name)
    assert unknown.returncode == 2 and "unknown handler 'nobody:ever'" in unknown.stderr  # a typo is not zeros
    named = json.loads(cli.run("stats", "--json", "--handler", name).stdout)
    assert [row["depth"] for row in named] == [3, 1, 2, 6]


async def test_stats_watch_refreshes_until_interrupted(cli: Cli, queue: Queue) -> None:
    await register(queue, threads=2, per_thread=3)
    watch = cli.start("stats", "--watch", "0.1", "--json")
    try:
        assert watch.stdout is not None
        first, second = json.loads(watch.stdout.readline()), json.loads(watch.stdout.readline())
    finally:
        terminate(watch, signal.SIGINT)
    assert watch.returncode == 0
    assert [row["depth"] for row in first] == [row["depth"] for row in second] == [3, 3, 6]
    assert second[-1]["lag"] > first[-1]["lag"]  # read again, later


async def test_dead_letters_list_requeue_purge_round_trip(cli: Cli, queue: Queue) -> None:
    cli.env["QUEUE_RETRY_ATTEMPTS"] = "1"
    await queue.register(Recorder, [0, 1], [0, -2], [0, 3])
    assert cli.run("worker", HANDLER, "--burst").returncode == 0
    listed = cli.run("dead-letters", "list", HANDLER, "--json")
    assert listed.returncode == 0, listed.stderr
    (letter,) = json.loads(listed.stdout)
    assert (letter["thread"], letter["error_type"], letter["error"], letter["attempts"]) == (
        "0",
        "ValueError",
        "poison request",
        1,
    )
    assert letter["payload"].endswith("[0,-2]]")
    assert "ValueError: poison request" in cli.run("dead-letters", "list", HANDLER).stdout
    requeued = cli.run("dead-letters", "requeue", HANDLER, "--json")
    assert json.loads(requeued.stdout) == {"requeued": 1}
    assert json.loads(cli.run("dead-letters", "list", HANDLER, "--json").stdout) == []
    assert await queue.pending(Recorder) == 1
    assert cli.run("worker", HANDLER, "--burst").returncode == 0  # fails again, dead again
    purged = cli.run("dead-letters", "purge", HANDLER)
    assert purged.returncode == 0 and purged.stdout.strip() == f"purged 1 dead letter of {HANDLER}"
    assert await queue.dead_letter_count(Recorder) == 0
    assert await queue.pending(Recorder) == 0
    assert by_thread(cli.performed()) == {"0": [1, 3]}


async def test_metrics_endpoint_serves_the_counters(cli: Cli, queue: Queue) -> None:
    await queue.register(Recorder, *[[t, s] for s in range(5) for t in range(2)])
    port = free_port()
    worker = cli.start("worker", HANDLER, "--loops", "2", "--metrics-port", str(port))
    try:
        await wait_until(lambda: len(cli.performed()) == 10, timeout=30)
        text = await wait_for_metric(port, 'sharded_queue_performed_total{handler="cli:recorder"} 10.0')
    finally:
        terminate(worker)
    assert worker.returncode == 0
    assert 'sharded_queue_failed_total{handler="cli:recorder"} 0.0' in text
    assert 'sharded_queue_dead_lettered_total{handler="cli:recorder"} 0.0' in text
    assert 'sharded_queue_sojourn_seconds_count{handler="cli:recorder"} 10.0' in text
    assert "sharded_queue_batch_size_bucket" in text and "sharded_queue_perform_seconds_bucket" in text
    assert 'sharded_queue_depth{handler="cli:recorder"}' in text
    assert 'sharded_queue_lag_seconds{handler="cli:recorder"}' in text


async def wait_for_metric(port: int, line: str) -> str:
    """The /metrics text once it contains ``line`` (the counters move after the log line is written)."""
    text = ""

    async def has_line() -> bool:
        nonlocal text
        text = await asyncio.to_thread(_get, f"http://127.0.0.1:{port}/metrics")
        return line in text

    await wait_until(has_line, timeout=30, interval=0.05)
    return text


def _get(url: str) -> str:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return str(response.read().decode())
    except OSError:  # not listening yet
        return ""


def test_console_script_imports_handlers_from_the_current_directory(cli: Cli, tmp_path: Path) -> None:
    script = Path(sys.executable).with_name("sharded-queue")
    if not script.exists():
        pytest.skip("the sharded-queue console script is not installed in this environment")
    (tmp_path / "my_jobs.py").write_text(
        "from sharded_queue import Handler\n\n"
        "class Jobs(Handler):\n"
        "    async def perform(self, *requests: int) -> None: ...\n"
    )
    done = subprocess.run(
        [str(script), "worker", "my_jobs:Jobs", "--burst"], cwd=tmp_path, env=cli.env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert "handlers my_jobs:Jobs" in done.stderr


def test_worker_refuses_the_embedded_default(cli: Cli) -> None:
    del cli.env["QUEUE_STORAGE_URL"]
    done = cli.run("worker", HANDLER)
    assert done.returncode == 2
    assert "no storage URL" in done.stderr and "--url" in done.stderr and "QUEUE_STORAGE_URL" in done.stderr
    for command in (["stats"], ["check"], ["dead-letters", "list", HANDLER]):
        refused = cli.run(*command)
        assert refused.returncode == 2 and "no storage URL" in refused.stderr, command


async def test_processes_get_credentials_only_in_their_environment_and_stop_on_sigterm(
    cli: Cli, queue: Queue, tmp_path: Path
) -> None:
    """``--processes 2`` with a password in ``--url``: no child's command line and no log line shows it,
    and SIGTERM to the parent stops both children gracefully."""
    server = RedisServer(tmp_path, *ACL_ALICE)
    try:
        secret_url = f"redis://alice:{SECRET}@127.0.0.1:{server.port}/0"
        del cli.env["QUEUE_STORAGE_URL"]
        parent = cli.start("worker", HANDLER, "--processes", "2", "--loops", "1", "--url", secret_url)
        async with Queue(secret_url, settings=Settings(key_prefix=cli.prefix)) as secured:
            try:
                await wait_until(lambda: _live(secured, 2), timeout=30)
                children = [pid for pid in _children(parent.pid)]
                assert len(children) == 2
                for pid in children:
                    assert SECRET not in Path(f"/proc/{pid}/cmdline").read_text()
            finally:
                stderr = terminate(parent)
            assert parent.returncode == 0, stderr
            assert stderr.count("stopping gracefully") == 2
            assert SECRET not in stderr and "alice:***@" in stderr
            assert await secured.storage.live_workers() == []
    finally:
        server.stop()


SECRET = "s3cret-Pa55"
ACL_ALICE = ("--user", "alice", "on", f">{SECRET}", "~*", "&*", "+@all")


def _children(pid: int) -> list[int]:
    return [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("no_colon", "is not MODULE:HANDLER"),
        ("no_such_module_here:Jobs", "cannot import module 'no_such_module_here'"),
        ("tests.cli_handlers:Missing", "has no 'Missing'"),
        ("tests.cli_handlers:NotAHandler", "not a Handler subclass"),
    ],
)
def test_bad_handler_names_are_usage_errors(spec: str, message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["dead-letters", "list", spec, "--url", "redis://127.0.0.1:1/0"]) == 2
    assert message in capsys.readouterr().err


def test_a_handler_with_a_sync_perform_is_refused_before_work(cli: Cli) -> None:
    done = cli.run("worker", "tests.cli_handlers:SyncPerform", "--burst")
    assert done.returncode == 2
    assert "SyncPerform.perform must be a coroutine function" in done.stderr


def test_import_handler_resolves_module_and_nested_names() -> None:
    assert import_handler(HANDLER) is Recorder
    assert import_handler("tests.cli_handlers:Outer.Inner") is Outer.Inner


@pytest.mark.parametrize(
    "arguments",
    [
        ["worker", HANDLER, "--loops", "0"],
        ["worker", HANDLER, "--processes", "-1"],
        ["worker", HANDLER, "--metrics-port", "70000"],
        ["stats", "--watch", "0"],
        ["dead-letters", "revive", HANDLER],
        ["worker"],
    ],
)
def test_bad_arguments_exit_2(arguments: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(arguments)
    assert exit_info.value.code == 2
    assert "error:" in capsys.readouterr().err
