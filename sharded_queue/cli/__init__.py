"""Command line, ``sharded-queue`` (the same program as ``python -m sharded_queue``)::

    sharded-queue worker MODULE:HANDLER [MODULE:HANDLER ...] [--url URL] [--loops N] [--processes P]
                         [--burst] [--metrics-port PORT] [--metrics-host HOST] [--log-level LEVEL]
                         [--log-format text|json] [--log-file PATH]
    sharded-queue stats [--url URL] [--handler NAME ...] [--json] [--watch SECONDS] [--timeout SECONDS]
    sharded-queue check [--url URL] [--handler MODULE:HANDLER ...] [--json] [--timeout SECONDS]
    sharded-queue peek MODULE:HANDLER [--thread T] [--limit N] [--json] [--url URL]
    sharded-queue schedules MODULE:HANDLER [--json] [--url URL]
    sharded-queue enqueue MODULE:HANDLER JSON [JSON ...] [--defer SECONDS] [--if-not-exists] [--url URL]
    sharded-queue unschedule MODULE:HANDLER JSON [JSON ...] [--url URL]
    sharded-queue dead-letters list|requeue|purge MODULE:HANDLER [--url URL] [--json]
    sharded-queue pause MODULE:HANDLER [--thread T] [--for SECONDS] [--url URL]
    sharded-queue resume MODULE:HANDLER [--thread T] [--url URL]
    sharded-queue settings [--url URL] [--json]
    sharded-queue dashboard [--url URL] [--host HOST] [--port PORT] [--allow-actions] [--token TOKEN]
    sharded-queue demo
    sharded-queue --version

A thin shell: every command calls the library (`Worker.serve`, `collect_stats`,
`collect_workers`, the `Queue` methods) and only parses, prints and exits.
``--url`` defaults to ``QUEUE_STORAGE_URL``; no command but ``demo`` runs on the
embedded default, which no other process can see. Only the handlers named on
the command line are ever imported, never names found in storage.

Modules: `common` (shared arguments, logging, exit codes), `work` (``worker``),
`inspect` (read-only commands), `admin` (commands that change the queue),
`dashboard` (the web dashboard), `demo`.
Exit codes are listed in `common`.
"""

from __future__ import annotations

import argparse
import sys
from importlib.metadata import PackageNotFoundError, version

from ..errors import QueueError, StorageError
from . import admin, dashboard, demo, inspect, work
from .common import UsageError, import_handler

__all__ = ["UsageError", "import_handler", "main", "parser"]


def _version() -> str:
    try:
        return version("sharded-queue")
    except PackageNotFoundError:  # pragma: no cover - run from a source tree without install
        return "unknown"


def parser() -> argparse.ArgumentParser:
    """The argument parser of ``sharded-queue``."""
    top = argparse.ArgumentParser(
        prog="sharded-queue",
        description="Run and inspect sharded_queue workers.",
        epilog="Exit codes: 0 ok; 1 unhealthy, or the storage failed; 2 bad usage; 128+N stopped by signal N twice.",
    )
    top.add_argument("--version", action="version", version=f"sharded-queue {_version()}")
    commands = top.add_subparsers(dest="command", required=True)
    url = argparse.ArgumentParser(add_help=False)
    url.add_argument(
        "--url",
        help="storage URL (default: QUEUE_STORAGE_URL); redis://, rediss://, redis+cluster://, redis+sentinel://",
    )
    work.add_parser(commands, url)
    inspect.add_parsers(commands, url)
    admin.add_parsers(commands, url)
    dashboard.add_parser(commands, url)
    shown = commands.add_parser("demo", help="run the seed example on the embedded fakeredis and show what ran where")
    shown.set_defaults(run=demo.demo_command)
    return top


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``sharded-queue`` and ``python -m sharded_queue``; returns the exit code."""
    arguments = parser().parse_args(argv)
    try:
        code: int = arguments.run(arguments)
    except UsageError as exc:
        print(f"sharded-queue {arguments.command}: error: {exc}", file=sys.stderr)
        return 2
    except (StorageError, QueueError, TimeoutError) as exc:
        print(f"sharded-queue {arguments.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return code
