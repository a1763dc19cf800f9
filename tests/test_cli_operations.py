"""The command line under a hostile operator: stops while Redis is down or paused, permanent
errors, bounded ``check``/``stats``, usage errors on one line, and the commands users of
rq, arq and celery expect (``enqueue``, ``peek``, ``schedules``, ``unschedule``,
``settings``, ``--version``, JSON logs). Every command runs as a real subprocess against a
redis-server this suite starts (one of its own where a test pauses or stops it)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from sharded_queue import Queue, Settings
from sharded_queue.testing import RedisServer, free_port, wait_until
from tests.cli_handlers import Recorder
from tests.conftest import need_redis_server
from tests.test_cli import HANDLER, ROOT, Cli, cli, register, terminate

__all__ = ["cli"]  # the fixture


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of this test's own, which it may pause (SIGSTOP) or stop."""
    need_redis_server()
    server = RedisServer(tmp_path)
    yield server
    if server.process is not None:
        server.process.send_signal(signal.SIGCONT)
        server.stop()


@pytest.fixture
def own_cli(cli: Cli, own_redis: RedisServer) -> Cli:
    cli.env.update(QUEUE_STORAGE_URL=own_redis.url, QUEUE_STORAGE_TIMEOUT="1")
    cli.url = own_redis.url
    return cli


def pause(server: RedisServer) -> None:
    assert server.process is not None
    server.process.send_signal(signal.SIGSTOP)


def resume(server: RedisServer) -> None:
    assert server.process is not None
    server.process.send_signal(signal.SIGCONT)


def started(process: subprocess.Popen[str]) -> None:
    """Wait until a worker's first line ("worker ... started") is out."""
    assert process.stderr is not None
    line = process.stderr.readline()
    assert " started: handlers " in line, line


def exited(process: subprocess.Popen[str], timeout: float = 30) -> tuple[int, str]:
    """The exit code and stderr of a process that must end by itself within ``timeout``."""
    try:
        _, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        _, stderr = process.communicate()
        pytest.fail(f"the process did not exit within {timeout} s:\n{stderr}")
    return process.returncode, stderr


# --- stops while Redis is down or paused ----------------------------------------------------------


@pytest.mark.parametrize("outage", ["paused", "stopped"])
def test_sigterm_ends_an_idle_worker_while_redis_is_unreachable(
    own_cli: Cli, own_redis: RedisServer, outage: str
) -> None:
    worker = own_cli.start("worker", HANDLER, "--loops", "2")
    started(worker)
    pause(own_redis) if outage == "paused" else own_redis.stop()
    worker.send_signal(signal.SIGTERM)
    code, stderr = exited(worker)
    assert code == 0, stderr
    assert "stopping gracefully" in stderr


async def test_a_batch_held_when_redis_pauses_is_given_up_on_sigterm_and_performed_again(
    own_cli: Cli, own_redis: RedisServer
) -> None:
    own_cli.env["CLI_TEST_PERFORM_SECONDS"] = "1"
    async with own_cli.queue() as queue:
        await queue.register(Recorder, [0, 1], [0, 2])
    worker = own_cli.start("worker", HANDLER, "--loops", "1")
    started(worker)
    await wait_until(lambda: _holding(own_cli), timeout=20)
    pause(own_redis)  # mid-perform (it takes 1 s): its ack cannot reach Redis
    worker.send_signal(signal.SIGTERM)
    code, stderr = exited(worker)
    assert code == 0, stderr
    resume(own_redis)
    assert own_cli.performed() == [] or sorted(seq for _, _, seq in own_cli.performed()) == [1, 2]
    own_cli.env["CLI_TEST_PERFORM_SECONDS"] = "0"
    again = own_cli.run("worker", HANDLER, "--burst")
    assert again.returncode == 0, again.stderr
    seqs = [seq for _, _, seq in own_cli.performed()]
    assert seqs[-2:] == [1, 2]  # not acked: performed again by the next holder, in order


def _holding(cli: Cli) -> bool:
    """A loop of the worker holds thread 0 (its lease is taken)."""
    client = redis.Redis.from_url(cli.url)
    try:
        return bool(client.keys(f"{cli.env['QUEUE_KEY_PREFIX']}:*:lease"))
    finally:
        client.close()


async def test_a_second_signal_cancels_the_loops_and_exits_non_zero(own_cli: Cli) -> None:
    own_cli.env["CLI_TEST_PERFORM_SECONDS"] = "30"
    async with own_cli.queue() as queue:
        await queue.register(Recorder, [0, 1])
    worker = own_cli.start("worker", HANDLER, "--loops", "1")
    started(worker)
    await wait_until(lambda: _holding(own_cli), timeout=20)
    worker.send_signal(signal.SIGTERM)
    assert worker.stderr is not None
    first = worker.stderr.readline()  # signals sent at once may be delivered as one
    assert "stopping gracefully" in first
    worker.send_signal(signal.SIGTERM)
    code, stderr = exited(worker)
    assert code == 128 + signal.SIGTERM, stderr
    assert "stopped by a second SIGTERM" in stderr


def test_burst_gives_up_on_an_unreachable_redis_after_the_storage_timeout(cli: Cli) -> None:
    cli.env.update(QUEUE_STORAGE_URL=f"redis://127.0.0.1:{free_port()}/0", QUEUE_STORAGE_TIMEOUT="1")
    done = cli.run("worker", HANDLER, "--burst", timeout=60)
    assert done.returncode == 1, done.stderr
    assert "burst: storage failing for over 1 s" in done.stderr.splitlines()[-1]


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("redis://app:wrong@127.0.0.1:{port}/0", "invalid username-password pair"),
        ("redis://127.0.0.1:{port}/99", "DB index is out of range"),
        ("redis://no-such-host.invalid:6379/0", "no-such-host.invalid"),
    ],
)
def test_a_configuration_redis_refuses_fails_at_start_with_one_line(
    cli: Cli, own_redis: RedisServer, url: str, message: str
) -> None:
    client = redis.Redis(port=own_redis.port)
    client.execute_command("ACL", "SETUSER", "app", "on", ">right", "~*", "+@all")
    client.close()
    cli.env["QUEUE_STORAGE_URL"] = url.format(port=own_redis.port)
    done = cli.run("worker", HANDLER, "--loops", "1", timeout=60)
    assert done.returncode == 1, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("sharded-queue worker: error: storage refused the configuration") and message in last
    assert "Traceback" not in done.stderr and "wrong" not in done.stderr  # no password either


# --- check and stats -----------------------------------------------------------------------------


def test_check_and_stats_give_up_after_their_timeout_on_a_paused_redis(own_cli: Cli, own_redis: RedisServer) -> None:
    pause(own_redis)
    for command in (["check", "--timeout", "1"], ["stats", "--timeout", "1"]):
        done = own_cli.run(*command, timeout=30)
        assert done.returncode == 1, done
        assert "within 1 s" in done.stdout + done.stderr


async def test_check_names_handlers_with_waiting_messages_and_no_live_worker(cli: Cli) -> None:
    async with cli.queue() as queue:
        await register(queue, threads=2, per_thread=3)
    worker = cli.start("worker", "tests.cli_handlers:Outer.Inner", "--loops", "1")
    started(worker)
    try:
        done = cli.run("check", "--json")
        report = json.loads(done.stdout)
        assert done.returncode == 1 and not report["healthy"]
        assert report["unserved"] == {"cli:recorder": 6} and len(report["workers"]) == 1
        assert "6 messages of cli:recorder wait and no live worker runs it" in cli.run("check").stdout
        named = cli.run("check", "--handler", HANDLER)
        assert named.returncode == 1 and "no live worker runs cli:recorder" in named.stdout
        served = cli.run("check", "--handler", "tests.cli_handlers:Outer.Inner", "--json")
        assert json.loads(served.stdout)["missing"] == []
    finally:
        terminate(worker)
    drained = cli.run("worker", HANDLER, "--burst")
    assert drained.returncode == 0
    assert cli.run("check").returncode == 1  # nothing waits, but no live worker at all


async def test_stats_refuses_an_unknown_handler_name_and_lists_the_known_ones(cli: Cli) -> None:
    async with cli.queue() as queue:
        await register(queue, threads=1, per_thread=1)
    done = cli.run("stats", "--handler", "cli:recordr")
    assert done.returncode == 2
    assert "unknown handler 'cli:recordr'; the storage knows 'cli:recorder'" in done.stderr


async def test_stats_watch_writes_no_terminal_codes_into_a_pipe(cli: Cli) -> None:
    async with cli.queue() as queue:
        await register(queue, threads=1, per_thread=1)
    watching = cli.start("stats", "--watch", "0.1")
    assert watching.stdout is not None
    first = watching.stdout.readline()
    terminate(watching, signal.SIGINT)
    assert first.startswith("handler") and "\x1b" not in first


# --- usage errors ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("arguments", "env", "message"),
    [
        (["stats", "--url", "localhost:6379"], {}, "has no scheme"),
        (["stats", "--url", "http://localhost/"], {}, "unknown scheme 'http'"),
        (["check", "--url", "redis://localhost:port/0"], {}, "Port could not be cast"),
        (["stats"], {"QUEUE_WORKER_BATCH_SIZE": "abc"}, "QUEUE_WORKER_BATCH_SIZE='abc': expected an integer"),
        (["stats", "--watch", "inf"], {}, "must be a finite number of seconds"),
        (["enqueue", HANDLER, "[0, 1]", "{oops"], {}, "request 2 ('{oops') is not a Recorder request"),
    ],
)
def test_usage_errors_are_one_line_and_exit_2(
    cli: Cli, arguments: list[str], env: dict[str, str], message: str
) -> None:
    cli.env.update(env)
    done = cli.run(*arguments)
    assert done.returncode == 2, done
    lines = done.stderr.strip().splitlines()
    assert message in lines[-1] and "Traceback" not in done.stderr


def test_a_busy_metrics_port_and_a_missing_prometheus_client_are_usage_errors(cli: Cli, tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = cli.run("worker", HANDLER, "--metrics-port", str(port), "--burst")
    assert done.returncode == 2 and f"cannot serve metrics on 0.0.0.0:{port}" in done.stderr
    hidden = tmp_path / "hidden"
    hidden.mkdir()
    (hidden / "prometheus_client.py").write_text("raise ImportError('not installed here')\n")
    cli.env["PYTHONPATH"] = f"{hidden}{os.pathsep}{ROOT}"
    done = cli.run("worker", HANDLER, "--metrics-port", "0", "--burst")
    assert done.returncode == 2 and "pip install 'sharded-queue[metrics]'" in done.stderr.splitlines()[-1]


# --- the commands users expect -------------------------------------------------------------------------


async def test_enqueue_decodes_json_into_the_handlers_requests_then_peek_shows_them(cli: Cli) -> None:
    done = cli.run("enqueue", HANDLER, "[0, 1]", "[0, 2]", "[1, 7]")
    assert done.returncode == 0 and done.stdout.strip() == "stored 3 of 3 requests for cli:recorder"
    again = cli.run("enqueue", HANDLER, "[0, 1]", "--if-not-exists")
    assert again.stdout.strip() == "stored 1 of 1 request for cli:recorder"  # [0, 1] was not registered so
    later = cli.run("enqueue", HANDLER, "[2, 9]", "--defer", "3600")
    assert later.returncode == 0
    peeked = json.loads(cli.run("peek", HANDLER, "--json").stdout)
    assert [(row["thread"], row["request"]) for row in peeked] == [
        ("0", [0, 1]),
        ("0", [0, 2]),
        ("0", [0, 1]),
        ("1", [1, 7]),
    ]
    one = json.loads(cli.run("peek", HANDLER, "--thread", "1", "--json").stdout)
    assert [row["request"] for row in one] == [[1, 7]]
    async with cli.queue() as queue:
        assert await queue.pending(Recorder) == 4  # peek took nothing
    assert "[0, 2]" in cli.run("peek", HANDLER, "--limit", "5").stdout


async def test_schedules_and_unschedule_from_the_shell(cli: Cli) -> None:
    async with cli.queue() as queue:
        await queue.register(Recorder, [3, 3], recurrent=3600)
    listed = json.loads(cli.run("schedules", HANDLER, "--json").stdout)
    assert [(row["request"], row["every"]) for row in listed] == [([3, 3], 3600.0)]
    done = cli.run("unschedule", HANDLER, "[3, 3]")
    assert done.returncode == 0 and done.stdout.startswith("removed 1 ")
    assert cli.run("schedules", HANDLER).stdout.strip() == "no recurring requests"


def test_version_and_settings_with_their_sources_and_no_password(cli: Cli) -> None:
    version = subprocess.run([sys.executable, "-m", "sharded_queue", "--version"], capture_output=True, text=True)
    assert version.returncode == 0 and version.stdout.startswith("sharded-queue ")
    cli.env["QUEUE_WORKER_BATCH_SIZE"] = "64"
    done = cli.run("settings", "--json", "--url", "redis://user:s3cret@127.0.0.1:1/0")
    rows = {row["setting"]: row for row in json.loads(done.stdout)}
    assert rows["worker_batch_size"]["value"] == 64
    assert rows["worker_batch_size"]["source"] == "environment (QUEUE_WORKER_BATCH_SIZE)"
    assert rows["lease_ttl"]["source"] == "environment (QUEUE_LEASE_TTL)"
    assert rows["retry_attempts"]["source"] == "default"
    assert (rows["storage_url"]["value"], rows["storage_url"]["source"]) == (
        "redis://user:***@127.0.0.1:1/0",
        "flag (--url)",
    )
    text = cli.run("settings").stdout
    assert "QUEUE_WORKER_BATCH_SIZE" in text and "(default 128)" in text and "s3cret" not in done.stdout + text


async def test_json_logs_carry_the_batch_fields_and_go_to_the_log_file(cli: Cli, tmp_path: Path) -> None:
    async with cli.queue() as queue:
        await register(queue, threads=2, per_thread=3)
    log = tmp_path / "worker.log"
    done = cli.run("worker", HANDLER, "--burst", "--log-level", "debug", "--log-format", "json", "--log-file", str(log))
    assert done.returncode == 0 and done.stderr == ""
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    batches = [line for line in lines if "batch" in line]
    assert sum(line["batch"] for line in batches) == 6
    assert {line["thread"] for line in batches} == {"0", "1"}
    assert all(line["handler"] == "cli:recorder" and line["duration"] >= 0 for line in batches)
    assert any(line["level"] == "INFO" and " started: handlers " in line["message"] for line in lines)


async def test_the_supervisor_stops_the_others_when_a_worker_process_exits_on_its_own(cli: Cli) -> None:
    supervisor = cli.start("worker", HANDLER, "--processes", "2", "--loops", "1")
    assert supervisor.stderr is not None
    line = supervisor.stderr.readline()
    assert "started 2 worker processes: " in line, line
    first = int(line.rsplit(": ", 1)[1].split(", ")[0])
    await wait_until(lambda: cli.run("check").returncode == 0, timeout=30)
    os.kill(first, signal.SIGTERM)  # not through the supervisor: it exits 0 on its own
    code, stderr = exited(supervisor)
    assert code == 1
    assert f"worker process {first} exited on its own (exit 0, no signal): stopping the others" in stderr


async def test_grammar_of_counts_in_outputs(cli: Cli) -> None:
    async with cli.queue() as queue:
        await queue.register(Recorder, [0, -1])  # one poison request
    cli.env["QUEUE_RETRY_ATTEMPTS"] = "1"
    assert cli.run("worker", HANDLER, "--burst").returncode == 0
    listed = cli.run("dead-letters", "list", HANDLER).stdout
    assert " 1 attempt " in listed and "1 attempts" not in listed
    assert cli.run("dead-letters", "purge", HANDLER).stdout.strip() == f"purged 1 dead letter of {HANDLER}"


def test_a_handler_defined_in_a_script_needs_a_name_off_the_embedded_default(cli: Cli, tmp_path: Path) -> None:
    script = tmp_path / "producer.py"
    script.write_text(
        "import asyncio, sys\n"
        "from sharded_queue import Handler, Queue, Settings\n"
        "class Local(Handler):\n"
        "    async def perform(self, *requests: int) -> None: ...\n"
        "class Named(Handler):\n"
        "    name = 'named'\n"
        "    async def perform(self, *requests: int) -> None: ...\n"
        "async def main() -> None:\n"
        "    queue = Queue(sys.argv[1], settings=Settings(key_prefix='script'))\n"
        "    print(await queue.register(Named, 1))\n"
        "    try:\n"
        "        await queue.register(Local, 1)\n"
        "    except ValueError as exc:\n"
        "        print(exc)\n"
        "    await queue.close()\n"
        "asyncio.run(main())\n"
    )
    env = {key: value for key, value in os.environ.items() if not key.startswith("QUEUE_")}
    done = subprocess.run([sys.executable, str(script), cli.url], capture_output=True, text=True, cwd=ROOT, env=env)
    first, second = done.stdout.splitlines()
    assert first == "1"
    assert second.startswith(
        "Local is defined in the script being run (__main__), so it would be stored as '__main__:Local'"
    )


async def test_a_closed_queue_refuses_calls(cli: Cli) -> None:
    queue = Queue(cli.url, settings=Settings(key_prefix=cli.prefix))
    await queue.register(Recorder, [0, 1])
    await queue.close()
    with pytest.raises(RuntimeError, match="this Queue is closed"):
        await queue.register(Recorder, [0, 2])
    with pytest.raises(RuntimeError, match="this Queue is closed"):
        await queue.pending(Recorder)
    with pytest.raises(RuntimeError, match="this Queue is closed"):
        await queue.stats()
    await queue.close()  # twice is fine


def test_a_producer_on_the_embedded_default_is_warned_at_register_and_at_close() -> None:
    """Requests on the embedded in-process storage die with the process unless a worker in it
    performs them: the producer hears it at its first registration, and again when it closes
    with requests still waiting."""
    script = (
        "import asyncio, warnings\n"
        "from sharded_queue import EmbeddedStorageWarning, Handler, Queue\n"
        "class Local(Handler):\n"
        "    async def perform(self, *requests: int) -> None: ...\n"
        "async def main() -> None:\n"
        "    queue = Queue()\n"
        "    with warnings.catch_warnings(record=True) as caught:\n"
        "        warnings.simplefilter('always')\n"
        "        await queue.register(Local, 1, 2)\n"
        "        await queue.register(Local, 3)\n"
        "        await queue.close()\n"
        "    for warning in caught:\n"
        "        assert warning.category is EmbeddedStorageWarning\n"
        "        print(str(warning.message)[:40])\n"
        "asyncio.run(main())\n"
    )
    env = {key: value for key, value in os.environ.items() if not key.startswith("QUEUE_")}  # the embedded default
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "Local requests went to the embedded in-p",
        "closing a Queue on the embedded in-proce",
    ]


def test_without_pandas_the_dataframe_methods_name_the_extra_and_the_rest_works(tmp_path: Path) -> None:
    hidden = tmp_path / "hidden"
    hidden.mkdir()
    (hidden / "pandas.py").write_text("raise ImportError('not installed here')\n")
    script = (
        "import asyncio\n"
        "from sharded_queue import Handler, Worker\n"
        "from sharded_queue.testing import drain, fresh_queue\n"
        "class Plain(Handler):\n"
        "    name = 'plain'\n"
        "    async def perform(self, *requests: int) -> None: ...\n"
        "async def main() -> None:\n"
        "    queue = fresh_queue()\n"
        "    await queue.register(Plain, 1, 2)\n"
        "    print(await drain(Worker(queue)), await queue.pending(Plain))\n"
        "    for call in (queue.stats(), queue.workers(), queue.peek(Plain)):\n"
        "        try:\n"
        "            await call\n"
        "        except ImportError as exc:\n"
        "            print(exc)\n"
        "asyncio.run(main())\n"
    )
    env = {key: value for key, value in os.environ.items() if not key.startswith("QUEUE_")}
    env["PYTHONPATH"] = f"{hidden}{os.pathsep}{ROOT}"
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, env=env)
    assert done.returncode == 0, done.stderr
    first, *errors = done.stdout.splitlines()
    assert first == "2 0"
    assert errors == [
        f"{what} returns a pandas DataFrame and pandas is not installed: pip install 'sharded-queue[pandas]'"
        for what in ("Queue.stats()", "Queue.workers()", "Queue.peek()")
    ]
