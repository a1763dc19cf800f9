"""What every command shares: handler and URL arguments, argument types, logging, and errors.

Exit codes: 0 done; 1 the storage failed or was unhealthy (``check``), or a worker
was stopped by a second signal (128 + its number); 2 bad usage (arguments, no
URL, a URL without a known scheme, a handler that cannot be imported or is not
a valid `Handler`, an unknown handler name, a busy port, a missing extra).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import logging
import math
import os
import sys
from collections.abc import Coroutine
from typing import Any, TypeVar

from ..handler import Handler
from ..queue import Queue
from ..settings import settings

T = TypeVar("T")

NO_URL = (
    "no storage URL. Without one this command would use the embedded in-process store, which no other "
    "process can ever read or write: pass --url redis://HOST:6379/0 (rediss://, redis+cluster:// too) "
    "or set QUEUE_STORAGE_URL."
)


class UsageError(Exception):
    """Bad command-line input: printed on one line, exit code 2."""


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


def open_queue(url: str) -> Queue:
    """A `Queue` on ``url``; a URL that cannot be used (no or an unknown scheme, a bad port) is a `UsageError`."""
    try:
        return Queue(url)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def spec_name(queue: Queue, handler: type[Handler]) -> str:
    """The stored name of ``handler``; an invalid handler is a `UsageError`."""
    try:
        return queue.spec(handler).name
    except (TypeError, ValueError) as exc:
        raise UsageError(str(exc)) from exc


async def bounded(call: Coroutine[Any, Any, T], seconds: float, what: str) -> T:
    """``call``, or `TimeoutError` naming ``what`` after ``seconds`` (one bounded try)."""
    try:
        async with asyncio.timeout(seconds):
            return await call
    except TimeoutError:
        raise TimeoutError(f"{what}: no answer from the storage within {seconds:g} s") from None


def positive_int(text: str) -> int:
    """An argument type: an int >= 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def port(text: str) -> int:
    """An argument type: a TCP port number."""
    value = int(text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be a TCP port (0-65535), got {value}")
    return value


def seconds(text: str) -> float:
    """An argument type: a finite number of seconds > 0."""
    value = float(text)
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"must be a finite number of seconds > 0, got {text}")
    return value


def plural(count: int, noun: str, nouns: str | None = None) -> str:
    """``1 thread``, ``2 threads`` (``nouns``: an irregular plural)."""
    return f"{count} {noun if count == 1 else nouns or noun + 's'}"


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, process, logger, message, and the fields a
    record carries in its ``fields`` extra (``handler``, ``thread``, ``order``, ``batch``,
    ``duration`` and ``worker`` on batch lines)."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}",
            "level": record.levelname,
            "process": record.process,
            "logger": record.name,
            "message": record.getMessage(),
        }
        line.update(getattr(record, "fields", {}))
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


def setup_logging(level: str, form: str = "text", file: str | None = None) -> None:
    """Log ``level`` and above to stderr, or to ``file``, as text or JSON lines."""
    try:
        handler: logging.Handler = logging.FileHandler(file) if file else logging.StreamHandler(sys.stderr)
    except OSError as exc:
        raise UsageError(f"cannot open the log file {file!r}: {exc}") from exc
    if form == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s [%(process)d] %(name)s: %(message)s"))
    logging.basicConfig(level=level, handlers=[handler], force=True)
