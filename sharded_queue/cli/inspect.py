"""Read-only commands: ``stats``, ``check``, ``peek``, ``schedules`` and ``settings``."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Sequence
from typing import Any

import msgspec

from ..queue import Queue
from ..registry import WorkerInfo, collect_workers
from ..settings import ENV_PREFIX, Settings, redact_url, settings
from ..stats import COLUMNS, StatsRow, collect_stats
from ..storage import raise_if_cancelled
from .common import (
    UsageError,
    bounded,
    import_handler,
    open_queue,
    plural,
    seconds,
    setup_logging,
    spec_name,
    storage_url,
)


def add_parsers(commands: argparse._SubParsersAction[argparse.ArgumentParser], url: argparse.ArgumentParser) -> None:
    """The read-only subcommands."""
    timeout = argparse.ArgumentParser(add_help=False)
    timeout.add_argument(
        "--timeout", type=seconds, default=5.0, metavar="SECONDS", help="give up after SECONDS (default 5): exit 1"
    )
    stats = commands.add_parser("stats", parents=[url, timeout], help="depth, lag, holder and dead letters per tube")
    stats.add_argument(
        "--handler", action="extend", nargs="+", metavar="NAME", help="stored handler names (default: all)"
    )
    stats.add_argument("--json", action="store_true", help="a JSON array of rows (one per refresh with --watch)")
    stats.add_argument("--watch", type=seconds, metavar="SECONDS", help="refresh every SECONDS until Ctrl-C")
    stats.add_argument(
        "--limit", type=int, default=1000, metavar="N", help="threads shown (default 1000; 0: the totals only)"
    )
    stats.set_defaults(run=stats_command)

    check = commands.add_parser(
        "check", parents=[url, timeout], help="exit 0 if workers are alive for every handler with work, else 1"
    )
    check.add_argument(
        "--handler", action="append", metavar="MODULE:HANDLER", help="healthy only if this handler has a live worker"
    )
    check.add_argument("--json", action="store_true", help="JSON output")
    check.set_defaults(run=check_command)

    peek = commands.add_parser("peek", parents=[url, timeout], help="the first waiting requests of each thread")
    peek.add_argument("handler", metavar="MODULE:HANDLER")
    peek.add_argument("--thread", help="only this thread")
    peek.add_argument("--limit", type=int, default=10, help="requests per tube (default 10)")
    peek.add_argument("--json", action="store_true", help="JSON output")
    peek.set_defaults(run=peek_command)

    schedules = commands.add_parser("schedules", parents=[url, timeout], help="a handler's recurring requests")
    schedules.add_argument("handler", metavar="MODULE:HANDLER")
    schedules.add_argument("--json", action="store_true", help="JSON output")
    schedules.set_defaults(run=schedules_command)

    shown = commands.add_parser("settings", parents=[url], help="the effective settings and where each comes from")
    shown.add_argument("--json", action="store_true", help="JSON output")
    shown.set_defaults(run=settings_command)


# --- stats -------------------------------------------------------------------------------


def stats_command(arguments: argparse.Namespace) -> int:
    """``stats``: a table (or JSON) of depth, lag, holder and dead letters; ``--watch`` refreshes it."""
    setup_logging("WARNING")
    if arguments.limit < 0:
        raise UsageError(f"--limit must be >= 0, got {arguments.limit}")
    url = storage_url(arguments)
    try:
        return asyncio.run(_stats(arguments, url))
    except KeyboardInterrupt:
        if arguments.watch:  # the way to leave --watch
            return 0
        raise


async def _stats(arguments: argparse.Namespace, url: str) -> int:
    queue = open_queue(url)
    try:
        if arguments.handler:
            known = await bounded(queue.storage.handler_names(), arguments.timeout, "stats")
            unknown = [name for name in arguments.handler if name not in known]
            if unknown:
                raise UsageError(
                    f"unknown handler {', '.join(map(repr, unknown))}; the storage knows "
                    f"{', '.join(map(repr, known)) or 'no handler yet'}"
                )
        clear = arguments.watch and not arguments.json and sys.stdout.isatty()
        while True:
            read = collect_stats(queue.storage, arguments.handler, limit=arguments.limit)
            rows = await bounded(read, arguments.timeout, "stats")
            if arguments.json:
                print(json.dumps([row.as_dict() for row in rows]), flush=True)
            else:
                if clear:
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
    numeric = {"depth", "lag", "dead", "deferred"}
    for row in rows:
        values = row.as_dict()
        line = []
        for name in COLUMNS:
            value = values[name]
            if name == "thread" and value is None:
                value = "(total)"
            elif name == "held_since" and value is not None:
                value = time.strftime("%H:%M:%S", time.localtime(value))
            elif name == "lag" and value is not None:
                value = f"{value:.3f}"
            elif name == "paused":
                value = "paused" if value else None
            line.append("" if value is None else str(value))
        cells.append(line)
    widths = [max(len(line[column]) for line in cells) for column in range(len(COLUMNS))]
    return "\n".join(
        "  ".join(
            cell.rjust(widths[column]) if COLUMNS[column] in numeric else cell.ljust(widths[column])
            for column, cell in enumerate(line)
        ).rstrip()
        for line in cells
    )


# --- check ---------------------------------------------------------------------------------


def check_command(arguments: argparse.Namespace) -> int:
    """``check``: 0 when healthy, 1 otherwise; prints (or ``--json``) what it saw."""
    setup_logging("WARNING")
    url = storage_url(arguments)
    named = [import_handler(spec) for spec in arguments.handler or []]
    return asyncio.run(_check(arguments, url, named))


async def _check(arguments: argparse.Namespace, url: str, named: list[Any]) -> int:
    queue = open_queue(url)
    where = f"{queue.storage.location} (key prefix {queue.storage.keys.prefix!r})"
    try:
        required = [spec_name(queue, handler) for handler in named]
        now, workers, unserved = await bounded(_health(queue, required), arguments.timeout, "check")
    except Exception as exc:  # a storage error or the timeout: unhealthy, said once
        report: dict[str, Any] = {"healthy": False, "storage": where, "error": str(exc)}
        _print(arguments, report, f"unhealthy: cannot read the worker registry at {where}: {exc}")
        return 1
    finally:
        await queue.close()
    served = {name for info in workers for name in info.handlers}
    missing = [name for name in required if name not in served]
    healthy = bool(workers) and not missing and not unserved
    report = {
        "healthy": healthy,
        "storage": where,
        "workers": [msgspec.to_builtins(info) for info in workers],
        "missing": missing,
        "unserved": unserved,
    }
    _print(arguments, report, _check_text(healthy, where, now, workers, missing, unserved))
    return 0 if healthy else 1


async def _health(queue: Queue, required: list[str]) -> tuple[float, list[WorkerInfo], dict[str, int]]:
    """The server time, the live workers, and the handlers with waiting messages and no live worker."""
    now, workers = await collect_workers(queue.storage)
    served = {name for info in workers for name in info.handlers}
    names = [name for name in await queue.storage.handler_names() if name not in served]
    waiting = {name: await queue.storage.pending(name) for name in names}
    return now, workers, {name: count for name, count in waiting.items() if count}


def _check_text(
    healthy: bool, where: str, now: float, workers: list[WorkerInfo], missing: list[str], unserved: dict[str, int]
) -> str:
    lines = []
    if not workers:
        lines.append(f"unhealthy: no live worker heartbeat at {where}")
    else:
        state = "healthy" if healthy else "unhealthy"
        lines.append(f"{state}: {plural(len(workers), 'live worker')} at {where}")
    for name in missing:
        lines.append(f"  no live worker runs {name}")
    for name, count in unserved.items():
        lines.append(f"  {plural(count, 'message')} of {name} wait and no live worker runs it")
    for info in workers:
        lines.append(
            f"  {info.id}: handlers {', '.join(info.handlers)}; {plural(info.loops, 'loop')} holding "
            f"{plural(len(info.held), 'thread')}; performed {info.performed}, failed attempts {info.failed}, "
            f"dead-lettered {info.dead_lettered}; up {now - info.started_at:.0f} s, "
            f"last heartbeat {now - info.heartbeat_at:.1f} s ago"
        )
    return "\n".join(lines)


def _print(arguments: argparse.Namespace, report: dict[str, Any], text: str) -> None:
    print(json.dumps(report) if arguments.json else text)


# --- peek and schedules ---------------------------------------------------------------------


def peek_command(arguments: argparse.Namespace) -> int:
    """``peek MODULE:HANDLER``: the first waiting requests of each thread, decoded, untouched."""
    setup_logging("WARNING")
    if arguments.limit < 1:
        raise UsageError(f"--limit must be >= 1, got {arguments.limit}")
    url = storage_url(arguments)
    handler = import_handler(arguments.handler)

    async def peek(queue: Queue) -> Any:
        spec_name(queue, handler)
        return await queue.peek(handler, thread=arguments.thread, limit=arguments.limit)

    return _frame_command(arguments, url, peek, "nothing waits")


def schedules_command(arguments: argparse.Namespace) -> int:
    """``schedules MODULE:HANDLER``: its recurring requests and their next ticks."""
    setup_logging("WARNING")
    url = storage_url(arguments)
    handler = import_handler(arguments.handler)

    async def schedules(queue: Queue) -> Any:
        spec_name(queue, handler)
        return await queue.schedules(handler)

    return _frame_command(arguments, url, schedules, "no recurring requests")


def _frame_command(arguments: argparse.Namespace, url: str, read: Any, empty: str) -> int:
    async def run() -> Any:
        queue = open_queue(url)
        try:
            return await bounded(read(queue), arguments.timeout, arguments.command)
        finally:
            await queue.close()

    frame = asyncio.run(run())
    if arguments.json:
        records = [{key: _plain(value) for key, value in row.items()} for row in frame.to_dict("records")]
        print(json.dumps(records))
    else:
        print(frame.to_string(index=False) if len(frame) else empty)
    return 0


def _plain(value: Any) -> Any:
    """A DataFrame cell as JSON: requests as their JSON form, times as ISO strings."""
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return msgspec.to_builtins(value, enc_hook=lambda v: v.model_dump(mode="json"))


# --- settings ---------------------------------------------------------------------------------


def settings_command(arguments: argparse.Namespace) -> int:
    """``settings``: every effective setting, its value (credentials masked) and its source."""
    rows: list[dict[str, Any]] = []
    for name, value in settings.as_dict().items():
        variable = f"{ENV_PREFIX}{name.upper()}"
        source = f"environment ({variable})" if variable in _environ() else "default"
        if name == "storage_url" and arguments.url:
            value, source = arguments.url, "flag (--url)"
        shown = redact_url(value) if name == "storage_url" else value
        rows.append({"setting": name, "variable": variable, "value": shown, "source": source})
    if arguments.json:
        print(json.dumps(rows))
        return 0
    defaults = Settings().as_dict()
    width = max(len(str(row["variable"])) for row in rows)
    for row in rows:
        changed = "" if row["source"] == "default" else f"  (default {defaults[str(row['setting'])]!r})"
        print(f"{row['variable']!s:<{width}}  {row['value']!r:<24} {row['source']}{changed}")
    return 0


def _environ() -> dict[str, str]:
    import os

    return dict(os.environ)
