"""Command line, ``sharded-queue`` (the same program as ``python -m sharded_queue``)::

    sharded-queue worker MODULE:HANDLER [MODULE:HANDLER ...] [--url URL] [--loops N] [--processes P]
                         [--burst] [--metrics-port PORT] [--log-level LEVEL]
    sharded-queue stats [--url URL] [--handler NAME ...] [--json] [--watch SECONDS]
    sharded-queue dead-letters list|requeue|purge MODULE:HANDLER [--url URL] [--json]
    sharded-queue check [--url URL]
    sharded-queue demo

A thin shell: every command calls the library (`Worker.serve`, `collect_stats`,
`collect_workers`, the `Queue` dead-letter methods) and only parses, prints and
exits. ``--url`` defaults to ``QUEUE_STORAGE_URL``; no command but ``demo`` runs
on the embedded default, which no other process can see. Only the handlers
named on the command line are ever imported, never names found in storage.

Exit codes: 0 done (``check``: a live worker was seen); 1 ``check`` saw no live
worker, or the storage failed; 2 bad usage (arguments, no URL, a handler that
cannot be imported or is not a valid `Handler`); 130 interrupted before work began.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import logging
import os
import signal
import sys
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import msgspec

from .deadletters import DeadLetterRecord
from .errors import QueueError, StorageError
from .handler import Handler, RequestRoute, Route
from .metrics import Metrics
from .queue import Queue
from .registry import collect_workers
from .settings import settings
from .stats import COLUMNS, StatsRow, collect_stats
from .storage import raise_if_cancelled
from .worker import Worker

logger = logging.getLogger("sharded_queue.cli")

NO_URL = (
    "no storage URL. Without one this command would use the embedded in-process store, which no other "
    "process can ever read or write: pass --url redis://HOST:6379/0 (rediss://, redis+cluster:// too) "
    "or set QUEUE_STORAGE_URL."
)


class UsageError(Exception):
    """Bad command-line input: printed, exit code 2."""


@dataclass
class NotifyRequest:
    """The seed example's request."""

    user_id: int
    urgent: bool = False


class NotifyHandler(Handler):
    """The seed example's handler: users spread over 3 threads, urgent ones first."""

    name = "demo:notify"
    orders = ("urgent", "normal")
    performed: ClassVar[list[tuple[str, str, str, list[int]]]] = []

    @classmethod
    async def route(cls, *requests: NotifyRequest) -> list[RequestRoute]:
        return [
            RequestRoute(r, Route(thread=str(r.user_id % 3), order="urgent" if r.urgent else "normal"))
            for r in requests
        ]

    async def perform(self, *requests: NotifyRequest) -> None:
        task = asyncio.current_task()
        loop = task.get_name() if task else "?"
        first = requests[0]
        order = "urgent" if first.urgent else "normal"
        self.performed.append((loop, str(first.user_id % 3), order, [r.user_id for r in requests]))


async def demo() -> None:
    """The seed scenario on the embedded default, plus urgent requests registered last."""
    queue = Queue()
    await queue.register(NotifyHandler, *[NotifyRequest(i) for i in range(1, 10)])
    await queue.register(NotifyHandler, *[NotifyRequest(i, urgent=True) for i in (10, 11, 12)])
    print("registered users 1..9 (normal) and 10..12 (urgent), routed by user_id % 3 into threads 0, 1, 2")
    worker = Worker(queue)
    started = time.perf_counter()
    loops = [asyncio.create_task(worker.loop(4), name=f"loop-{n}") for n in (1, 2, 3)]
    counts = await asyncio.gather(*loops)
    elapsed = time.perf_counter() - started
    by_thread: dict[str, list[str]] = defaultdict(list)
    for loop, thread, order, users in NotifyHandler.performed:
        by_thread[thread].append(f"{loop} performed {order:>6} batch {users}")
    for thread in sorted(by_thread):
        print(f"thread {thread}:")
        for line in by_thread[thread]:
            print(f"  {line}")
    print(f"3 loops performed {sum(counts)} requests in {elapsed * 1000:.1f} ms; FIFO per thread, urgent first")
    await queue.close()


# --- shared helpers -------------------------------------------------------------


def import_handler(spec: str) -> type[Handler]:
    """The `Handler` subclass named by ``MODULE:HANDLER`` (the current directory on the path).

    Raises:
        UsageError: not of that form, not importable, or not a Handler subclass.
    """
    module_name, colon, qualname = spec.partition(":")
    if not (colon and module_name and qualname):
        raise UsageError(f"{spec!r} is not MODULE:HANDLER (for example myapp.jobs:NotifyHandler)")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        target: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise UsageError(f"cannot import module {module_name!r} of {spec!r}: {exc}") from exc
    for part in qualname.split("."):
        if not hasattr(target, part):
            raise UsageError(f"module {module_name!r} has no {qualname!r}")
        target = getattr(target, part)
    if not (isinstance(target, type) and issubclass(target, Handler)):
        raise UsageError(f"{spec} is {target!r}, not a Handler subclass")
    return target


def storage_url(arguments: argparse.Namespace) -> str:
    """``--url``, else ``QUEUE_STORAGE_URL``; never the embedded default."""
    url: str | None = arguments.url or settings.storage_url
    if not url:
        raise UsageError(NO_URL)
    return url


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _port(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be a TCP port (0-65535), got {value}")
    return value


def _seconds(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0 seconds, got {text}")
    return value


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=level, format="%(asctime)s %(levelname)s [%(process)d] %(name)s: %(message)s", stream=sys.stderr
    )


# --- worker --------------------------------------------------------------------------


def worker_command(arguments: argparse.Namespace) -> int:
    """``worker``: run the named handlers in ``--processes`` processes of ``--loops`` loops."""
    _setup_logging(arguments.log_level)
    url = storage_url(arguments)
    handlers = [import_handler(spec) for spec in arguments.handlers]
    if arguments.processes > 1:
        return asyncio.run(_supervise(arguments, url))
    return asyncio.run(_work(arguments, url, handlers))


async def _work(arguments: argparse.Namespace, url: str, handlers: list[type[Handler]]) -> int:
    queue = Queue(url)
    metrics: Metrics | None = None
    try:
        try:
            worker = Worker(queue, handlers=handlers, metrics=Metrics() if arguments.metrics_port is not None else None)
        except (TypeError, ValueError) as exc:
            raise UsageError(str(exc)) from exc
        metrics = worker.metrics
        if metrics is not None:
            port = metrics.serve(arguments.metrics_port)
            logger.info("worker %s serves metrics on http://0.0.0.0:%d/metrics", worker.id, port)
        await worker.serve(arguments.loops, burst=arguments.burst)
    finally:
        await queue.close()
        if metrics is not None:
            metrics.close()
    return 0


async def _supervise(arguments: argparse.Namespace, url: str) -> int:
    """Run ``--processes`` worker processes; forward SIGTERM/SIGINT; exit with the first failure.

    Children get the URL through ``QUEUE_STORAGE_URL`` (never on a command line
    that ``ps`` shows) and run in their own process group, so a terminal's
    Ctrl-C reaches them once, forwarded from here.
    """
    env = {**os.environ, "QUEUE_STORAGE_URL": url}
    children = []
    for index in range(arguments.processes):
        command = [sys.executable, "-m", "sharded_queue", "worker", *arguments.handlers]
        command += ["--loops", str(arguments.loops), "--log-level", arguments.log_level]
        if arguments.burst:
            command.append("--burst")
        if arguments.metrics_port is not None:
            command += ["--metrics-port", str(arguments.metrics_port + index if arguments.metrics_port else 0)]
        children.append(await asyncio.create_subprocess_exec(*command, env=env, process_group=0))
    logger.info("started %d worker processes: %s", len(children), ", ".join(str(child.pid) for child in children))

    def forward(sig: signal.Signals) -> None:
        logger.info("%s received: forwarding it to the worker processes", sig.name)
        for child in children:
            if child.returncode is None:
                child.send_signal(sig)

    event_loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        event_loop.add_signal_handler(sig, forward, sig)
    waits = {asyncio.create_task(child.wait()): child for child in children}
    status = 0
    try:
        while waits:
            done, _ = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                child, code = waits.pop(task), task.result()
                if code != 0 and status == 0:
                    status = code if code > 0 else 1
                    logger.error("worker process %d exited with %d: stopping the others", child.pid, code)
                    for other in waits.values():
                        other.send_signal(signal.SIGTERM)
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            event_loop.remove_signal_handler(sig)
    return status


# --- stats -------------------------------------------------------------------------------


def stats_command(arguments: argparse.Namespace) -> int:
    """``stats``: a table (or JSON) of depth, lag, holder and dead letters; ``--watch`` refreshes it."""
    _setup_logging("WARNING")
    url = storage_url(arguments)
    try:
        return asyncio.run(_stats(arguments, url))
    except KeyboardInterrupt:
        if arguments.watch:  # the way to leave --watch
            return 0
        raise


async def _stats(arguments: argparse.Namespace, url: str) -> int:
    queue = Queue(url)
    try:
        while True:
            rows = await collect_stats(queue.storage, arguments.handler)
            if arguments.json:
                print(json.dumps([row.as_dict() for row in rows]), flush=True)
            else:
                if arguments.watch:
                    sys.stdout.write("\x1b[H\x1b[2J")  # refresh in place: cursor home, clear screen
                print(stats_table(rows), flush=True)
                if arguments.watch:
                    print(f"\n{queue.storage.location}, every {arguments.watch:g} s; Ctrl-C to quit", flush=True)
            if not arguments.watch:
                return 0
            raise_if_cancelled(asyncio.current_task())  # Ctrl-C cancels; a client may have swallowed it
            await asyncio.sleep(arguments.watch)
    finally:
        await queue.close()


def stats_table(rows: Sequence[StatsRow]) -> str:
    """Stats rows as an aligned text table; a handler's total row shows ``(total)`` as its thread."""
    if not rows:
        return "no handlers in storage (nothing registered and no worker ran yet)"
    cells = [list(COLUMNS)]
    for row in rows:
        since = time.strftime("%H:%M:%S", time.localtime(row.held_since)) if row.held_since is not None else ""
        cells.append(
            [
                row.handler,
                "(total)" if row.thread is None else row.thread,
                row.order or "",
                str(row.depth),
                "" if row.lag is None else f"{row.lag:.3f}",
                row.holder or "",
                since,
                str(row.dead),
            ]
        )
    widths = [max(len(line[column]) for line in cells) for column in range(len(COLUMNS))]
    numeric = {COLUMNS.index(name) for name in ("depth", "lag", "dead")}
    return "\n".join(
        "  ".join(
            cell.rjust(widths[column]) if column in numeric else cell.ljust(widths[column])
            for column, cell in enumerate(line)
        ).rstrip()
        for line in cells
    )


# --- check ---------------------------------------------------------------------------------


def check_command(arguments: argparse.Namespace) -> int:
    """``check``: 0 when a worker has a live heartbeat, 1 otherwise; prints what it saw."""
    _setup_logging("WARNING")
    return asyncio.run(_check(storage_url(arguments)))


async def _check(url: str) -> int:
    queue = Queue(url)
    where = f"{queue.storage.location} (key prefix {queue.storage.keys.prefix!r})"
    try:
        now, workers = await collect_workers(queue.storage)
    except StorageError as exc:
        print(f"unhealthy: cannot read the worker registry at {where}: {exc}")
        return 1
    finally:
        await queue.close()
    if not workers:
        print(f"unhealthy: no live worker heartbeat at {where}")
        return 1
    print(f"healthy: {len(workers)} live worker{'s' if len(workers) > 1 else ''} at {where}")
    for info in workers:
        print(
            f"  {info.id}: handlers {', '.join(info.handlers)}; {info.loops} loops holding {len(info.held)} threads; "
            f"performed {info.performed}, failed attempts {info.failed}, dead-lettered {info.dead_lettered}; "
            f"up {now - info.started_at:.0f} s, last heartbeat {now - info.heartbeat_at:.1f} s ago"
        )
    return 0


# --- dead letters ---------------------------------------------------------------------------


def dead_letters_command(arguments: argparse.Namespace) -> int:
    """``dead-letters list|requeue|purge MODULE:HANDLER``: the `Queue` dead-letter methods."""
    _setup_logging("WARNING")
    url = storage_url(arguments)
    handler = import_handler(arguments.handler)
    return asyncio.run(_dead_letters(arguments, url, handler))


async def _dead_letters(arguments: argparse.Namespace, url: str, handler: type[Handler]) -> int:
    queue = Queue(url)
    try:
        try:
            queue.spec(handler)
        except (TypeError, ValueError) as exc:
            raise UsageError(str(exc)) from exc
        if arguments.action == "list":
            records = await queue.dead_letters(handler)
            if arguments.json:
                print(json.dumps([msgspec.json.decode(record.encode()) for record in records]))
            else:
                print(dead_letters_table(records))
            return 0
        if arguments.action == "requeue":
            count = await queue.requeue_dead_letters(handler)
        else:
            count = await queue.purge_dead_letters(handler)
        done = "requeued" if arguments.action == "requeue" else "purged"
        print(json.dumps({done: count}) if arguments.json else f"{done} {count} dead letters of {arguments.handler}")
        return 0
    finally:
        await queue.close()


def dead_letters_table(records: Sequence[DeadLetterRecord]) -> str:
    """One line per dead letter: where, when, attempts, the error and the start of the payload."""
    if not records:
        return "no dead letters"
    lines = []
    for record in records:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(record.failed_at))
        payload = record.payload.decode(errors="replace")
        payload = payload if len(payload) <= 60 else payload[:57] + "..."
        lines.append(
            f"{record.thread}/{record.order}  {when}  attempts {record.attempts}  "
            f"{record.error_type}: {record.error}  {payload}"
        )
    return "\n".join(lines)


# --- demo and the parser ----------------------------------------------------------------------


def demo_command(arguments: argparse.Namespace) -> int:
    """``demo``: the seed example on the embedded default."""
    asyncio.run(demo())
    return 0


def parser() -> argparse.ArgumentParser:
    """The argument parser of ``sharded-queue``."""
    top = argparse.ArgumentParser(
        prog="sharded-queue",
        description="Run and inspect sharded_queue workers.",
        epilog="Exit codes: 0 ok; 1 check found no live worker, or storage failed; 2 bad usage.",
    )
    commands = top.add_subparsers(dest="command", required=True)
    url = argparse.ArgumentParser(add_help=False)
    url.add_argument(
        "--url",
        help="storage URL (default: QUEUE_STORAGE_URL); redis://, rediss://, redis+cluster://, redis+sentinel://",
    )

    worker = commands.add_parser(
        "worker", parents=[url], help="perform the named handlers' requests until SIGTERM/SIGINT (or empty, --burst)"
    )
    worker.add_argument("handlers", nargs="+", metavar="MODULE:HANDLER", help="handler classes to run")
    worker.add_argument("--loops", type=_positive_int, default=8, help="concurrent loops per process (default 8)")
    worker.add_argument("--processes", type=_positive_int, default=1, help="worker processes (default 1)")
    worker.add_argument("--burst", action="store_true", help="exit 0 once the handlers' tubes are empty")
    worker.add_argument(
        "--metrics-port", type=_port, help="serve Prometheus /metrics on this port (process i on PORT+i)"
    )
    worker.add_argument(
        "--log-level",
        type=str.upper,
        default="INFO",
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="default INFO",
    )
    worker.set_defaults(run=worker_command)

    stats = commands.add_parser("stats", parents=[url], help="depth, lag, holder and dead letters per tube")
    stats.add_argument(
        "--handler", action="extend", nargs="+", metavar="NAME", help="stored handler names (default: all)"
    )
    stats.add_argument("--json", action="store_true", help="a JSON array of rows (one per refresh with --watch)")
    stats.add_argument("--watch", type=_seconds, metavar="SECONDS", help="refresh every SECONDS until Ctrl-C")
    stats.set_defaults(run=stats_command)

    dead = commands.add_parser("dead-letters", parents=[url], help="list, requeue or purge a handler's dead letters")
    dead.add_argument("action", choices=["list", "requeue", "purge"])
    dead.add_argument("handler", metavar="MODULE:HANDLER")
    dead.add_argument("--json", action="store_true", help="JSON output")
    dead.set_defaults(run=dead_letters_command)

    check = commands.add_parser("check", parents=[url], help="exit 0 if a worker has a live heartbeat, else 1")
    check.set_defaults(run=check_command)

    demo = commands.add_parser("demo", help="run the seed example on the embedded fakeredis and show what ran where")
    demo.set_defaults(run=demo_command)
    return top


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``sharded-queue`` and ``python -m sharded_queue``; returns the exit code."""
    top = parser()
    arguments = top.parse_args(argv)
    try:
        code: int = arguments.run(arguments)
    except UsageError as exc:
        print(f"sharded-queue {arguments.command}: error: {exc}", file=sys.stderr)
        return 2
    except (StorageError, QueueError) as exc:
        print(f"sharded-queue {arguments.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return code
