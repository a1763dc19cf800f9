"""``sharded-queue worker``: run the named handlers, in one process or several."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Callable

from ..errors import StorageConfigError, StorageError
from ..handler import Handler
from ..metrics import Metrics
from ..storage import Storage
from ..trace import merge_traces
from ..worker import Worker
from .common import UsageError, import_handler, open_queue, plural, setup_logging, storage_url

logger = logging.getLogger("sharded_queue.cli")


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser], url: argparse.ArgumentParser) -> None:
    """The ``worker`` subcommand."""
    from .common import port, positive_int

    worker = commands.add_parser(
        "worker", parents=[url], help="perform the named handlers' requests until SIGTERM/SIGINT (or empty, --burst)"
    )
    worker.add_argument("handlers", nargs="+", metavar="MODULE:HANDLER", help="handler classes to run")
    worker.add_argument("--loops", type=positive_int, default=8, help="concurrent loops per process (default 8)")
    worker.add_argument("--processes", type=positive_int, default=1, help="worker processes (default 1)")
    worker.add_argument("--burst", action="store_true", help="exit 0 once the handlers' tubes are empty")
    worker.add_argument(
        "--metrics-port", type=port, help="serve Prometheus /metrics on this port (process i on PORT+i)"
    )
    worker.add_argument("--metrics-host", default="0.0.0.0", help="address /metrics listens on (default 0.0.0.0)")
    worker.add_argument(
        "--log-level",
        type=str.upper,
        default="INFO",
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="default INFO",
    )
    worker.add_argument(
        "--log-format", choices=["text", "json"], default="text", help="text (default), or one JSON object per line"
    )
    worker.add_argument("--log-file", metavar="PATH", help="append the log to PATH instead of stderr")
    worker.add_argument(
        "--trace",
        metavar="FILE",
        help="record a trace and what the run cost (for the simulator's calibrate) and write it to FILE at exit",
    )
    worker.set_defaults(run=worker_command)


def worker_command(arguments: argparse.Namespace) -> int:
    """``worker``: run the named handlers in ``--processes`` processes of ``--loops`` loops."""
    setup_logging(arguments.log_level, arguments.log_format, arguments.log_file)
    url = storage_url(arguments)
    handlers = [import_handler(spec) for spec in arguments.handlers]
    if arguments.processes > 1:
        return asyncio.run(_supervise(arguments, url))
    return asyncio.run(_work(arguments, url, handlers))


def _metrics(arguments: argparse.Namespace) -> Metrics | None:
    """``--metrics-port``'s `Metrics`; without prometheus_client, a `UsageError` naming the extra."""
    if arguments.metrics_port is None:
        return None
    try:
        return Metrics()
    except ImportError as exc:
        raise UsageError(str(exc)) from None


async def _work(arguments: argparse.Namespace, url: str, handlers: list[type[Handler]]) -> int:
    queue = open_queue(url)
    metrics = _metrics(arguments)
    try:
        try:
            worker = Worker(queue, handlers=handlers, metrics=metrics, trace=arguments.trace is not None)
        except (TypeError, ValueError) as exc:
            raise UsageError(str(exc)) from exc
        await _check_storage(queue.storage)
        if worker.metrics is not None:
            try:
                bound = worker.metrics.serve(arguments.metrics_port, arguments.metrics_host)
            except OSError as exc:
                where = f"{arguments.metrics_host}:{arguments.metrics_port}"
                raise UsageError(f"cannot serve metrics on {where}: {exc}") from None
            logger.info("worker %s serves metrics on http://%s:%d/metrics", worker.id, arguments.metrics_host, bound)
        try:
            await worker.serve(arguments.loops, burst=arguments.burst)
        finally:
            if arguments.trace is not None:
                worker.save_trace(arguments.trace)
    finally:
        await queue.close()
        if metrics is not None:
            metrics.close()
    if worker.forced is not None:
        logger.warning(
            "stopped by a second %s: loops cancelled, their batches will be performed again", worker.forced.name
        )
        return 128 + worker.forced.value
    return 0


async def _check_storage(storage: Storage) -> None:
    """Fail at start on a configuration the storage refuses (password, database, host); an outage is
    only logged (the loops retry until it ends, or a stop)."""
    try:
        await storage.server_time()
    except StorageConfigError:
        raise
    except StorageError as exc:
        logger.warning("storage not answering at start; the loops retry until it does: %s", exc)


async def _supervise(arguments: argparse.Namespace, url: str) -> int:
    """Run ``--processes`` worker processes; forward SIGTERM/SIGINT; exit with the first failure.

    Children get the URL through ``QUEUE_STORAGE_URL`` (never on a command line
    that ``ps`` shows) and run in their own process group, so a terminal's
    Ctrl-C reaches them once, forwarded from here. A child that exits 0 while no
    signal was forwarded and not in burst mode is unexpected: the others are stopped.
    """
    env = {**os.environ, "QUEUE_STORAGE_URL": url}
    children = [
        await asyncio.create_subprocess_exec(*_child(arguments, i), env=env, process_group=0)
        for i in range(arguments.processes)
    ]
    logger.info(
        "started %s: %s",
        plural(len(children), "worker process", "worker processes"),
        ", ".join(str(c.pid) for c in children),
    )
    signalled = False

    def forward(sig: signal.Signals) -> None:
        nonlocal signalled
        signalled = True
        logger.info("%s received: forwarding it to the worker processes", sig.name)
        for child in children:
            if child.returncode is None:
                child.send_signal(sig)

    event_loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        event_loop.add_signal_handler(sig, forward, sig)
    waits = {asyncio.create_task(child.wait()): child for child in children}
    try:
        status = await _wait_children(arguments, waits, lambda: signalled)
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            event_loop.remove_signal_handler(sig)
    if arguments.trace is not None:
        parts = [f"{arguments.trace}.{index}" for index in range(len(children))]
        merge_traces(arguments.trace, [part for part in parts if os.path.exists(part)])
        for part in parts:
            with contextlib.suppress(FileNotFoundError):
                os.remove(part)
    return status


async def _wait_children(
    arguments: argparse.Namespace,
    waits: dict[asyncio.Task[int], asyncio.subprocess.Process],
    signalled: Callable[[], bool],
) -> int:
    """Wait for the children; at the first that fails (or exits on its own), stop the others."""
    status = 0
    while waits:
        done, _ = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            child, code = waits.pop(task), task.result()
            if status or (code == 0 and (signalled() or arguments.burst)):
                continue
            status = code if code > 0 else 1
            why = f"exited with {code}" if code else "exited on its own (exit 0, no signal)"
            logger.error("worker process %d %s: stopping the others", child.pid, why)
            for other in waits.values():
                other.send_signal(signal.SIGTERM)
    return status


def _child(arguments: argparse.Namespace, index: int) -> list[str]:
    command = [sys.executable, "-m", "sharded_queue", "worker", *arguments.handlers]
    command += ["--loops", str(arguments.loops), "--log-level", arguments.log_level]
    command += ["--log-format", arguments.log_format]
    if arguments.log_file:
        command += ["--log-file", arguments.log_file]
    if arguments.burst:
        command.append("--burst")
    if arguments.trace is not None:
        command += ["--trace", f"{arguments.trace}.{index}"]
    if arguments.metrics_port is not None:
        port = arguments.metrics_port + index if arguments.metrics_port else 0
        command += ["--metrics-port", str(port), "--metrics-host", arguments.metrics_host]
    return command
