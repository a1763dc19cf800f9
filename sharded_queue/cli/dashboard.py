"""``sharded-queue dashboard``: the web dashboard (`sharded_queue.dashboard`), read-only by default."""

from __future__ import annotations

import argparse
import asyncio
import os

from .common import UsageError, open_queue, port, setup_logging, storage_url

NEEDS = ("starlette", "uvicorn", "pandas")
"""What the ``dashboard`` extra brings."""


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser], url: argparse.ArgumentParser) -> None:
    """The ``dashboard`` subcommand."""
    dashboard = commands.add_parser(
        "dashboard", parents=[url], help="a web dashboard: handlers, threads, workers, dead letters, schedules"
    )
    dashboard.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    dashboard.add_argument("--port", type=port, default=8000, help="TCP port (default 8000)")
    dashboard.add_argument(
        "--allow-actions", action="store_true", help="enable requeue/purge of dead letters, for token holders"
    )
    dashboard.add_argument("--token", help="the actions' bearer token (default: QUEUE_DASHBOARD_TOKEN, safer)")
    levels = ["DEBUG", "INFO", "WARNING", "ERROR"]
    dashboard.add_argument("--log-level", type=str.upper, default="INFO", choices=levels, help="default INFO")
    dashboard.set_defaults(run=dashboard_command)


def dashboard_command(arguments: argparse.Namespace) -> int:
    """``dashboard``: serve the web dashboard until SIGTERM/SIGINT."""
    try:
        from ..dashboard import serve
    except ModuleNotFoundError as exc:
        missing = (exc.name or "").partition(".")[0]
        if missing not in NEEDS:
            raise
        raise UsageError(
            f"needs the dashboard extra ({missing} is missing): pip install 'sharded-queue[dashboard]'"
        ) from None
    setup_logging(arguments.log_level)
    url = storage_url(arguments)
    token = arguments.token or os.environ.get("QUEUE_DASHBOARD_TOKEN") or None
    if arguments.allow_actions and not token:
        raise UsageError("--allow-actions needs a token: set QUEUE_DASHBOARD_TOKEN (or pass --token)")

    async def run() -> int:
        async with open_queue(url) as queue:
            await serve(
                queue,
                host=arguments.host,
                port=arguments.port,
                allow_actions=arguments.allow_actions,
                token=token,
                access_log=arguments.log_level == "DEBUG",
            )
        return 0

    return asyncio.run(run())
