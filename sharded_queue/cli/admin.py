"""Commands that change the queue: ``enqueue``, ``unschedule``, ``dead-letters``, ``pause`` and ``resume``."""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections.abc import Sequence
from typing import Any

import msgspec

from ..deadletters import DeadLetterRecord
from ..errors import DecodeError
from ..handler import Handler
from ..queue import Queue
from .common import UsageError, import_handler, open_queue, plural, seconds, setup_logging, spec_name, storage_url


def add_parsers(commands: argparse._SubParsersAction[argparse.ArgumentParser], url: argparse.ArgumentParser) -> None:
    """The subcommands that change the queue."""
    enqueue = commands.add_parser("enqueue", parents=[url], help="register requests given as JSON values")
    enqueue.add_argument("handler", metavar="MODULE:HANDLER")
    enqueue.add_argument("requests", nargs="+", metavar="JSON", help="a request each, decoded as the handler's type")
    enqueue.add_argument("--defer", type=seconds, metavar="SECONDS", help="join the tube's tail after SECONDS")
    enqueue.add_argument("--if-not-exists", action="store_true", help="skip requests equal to a waiting one")
    enqueue.set_defaults(run=enqueue_command)

    unschedule = commands.add_parser("unschedule", parents=[url], help="stop a recurring request")
    unschedule.add_argument("handler", metavar="MODULE:HANDLER")
    unschedule.add_argument("requests", nargs="+", metavar="JSON", help="the recurring requests, as JSON values")
    unschedule.set_defaults(run=unschedule_command)

    dead = commands.add_parser("dead-letters", parents=[url], help="list, requeue or purge a handler's dead letters")
    dead.add_argument("action", choices=["list", "requeue", "purge"])
    dead.add_argument("handler", metavar="MODULE:HANDLER")
    dead.add_argument("--json", action="store_true", help="JSON output")
    dead.set_defaults(run=dead_letters_command)

    pause = commands.add_parser("pause", parents=[url], help="pause a handler, or one of its threads")
    pause.add_argument("handler", metavar="MODULE:HANDLER")
    pause.add_argument("--thread", metavar="T", help="the thread to pause (default: the whole handler)")
    pause.add_argument(
        "--for", dest="for_", type=seconds, metavar="SECONDS", help="end the pause after SECONDS (server clock)"
    )
    pause.set_defaults(run=pause_command)

    resume = commands.add_parser("resume", parents=[url], help="resume a paused handler, or one of its threads")
    resume.add_argument("handler", metavar="MODULE:HANDLER")
    resume.add_argument("--thread", metavar="T", help="the thread to resume (default: the handler-wide pause)")
    resume.set_defaults(run=resume_command)


def _decoded(queue: Queue, handler: type[Handler], texts: Sequence[str]) -> list[Any]:
    """The JSON ``texts`` as ``handler``'s requests; one that is not is a `UsageError` naming it."""
    codec = queue.spec(handler).codec
    requests = []
    for position, text in enumerate(texts, 1):
        try:
            _, request = codec.decode(b"[0," + text.encode() + b"]")
        except DecodeError as exc:
            raise UsageError(f"request {position} ({text!r}) is not a {handler.__qualname__} request: {exc}") from None
        requests.append(request)
    return requests


def _on_queue(arguments: argparse.Namespace, act: Any) -> int:
    """Run ``act(queue, handler)`` on a `Queue` at the command's URL for its handler."""
    setup_logging("WARNING")
    url = storage_url(arguments)
    handler = import_handler(arguments.handler)

    async def run() -> int:
        queue = open_queue(url)
        try:
            spec_name(queue, handler)
            code: int = await act(queue, handler)
            return code
        finally:
            await queue.close()

    return asyncio.run(run())


def enqueue_command(arguments: argparse.Namespace) -> int:
    """``enqueue MODULE:HANDLER JSON...``: `Queue.register`, printing how many were stored."""

    async def enqueue(queue: Queue, handler: type[Handler]) -> int:
        requests = _decoded(queue, handler, arguments.requests)
        stored = await queue.register(handler, *requests, defer=arguments.defer, if_not_exists=arguments.if_not_exists)
        print(f"stored {stored} of {plural(len(requests), 'request')} for {queue.spec(handler).name}")
        return 0

    return _on_queue(arguments, enqueue)


def unschedule_command(arguments: argparse.Namespace) -> int:
    """``unschedule MODULE:HANDLER JSON...``: `Queue.unschedule`, printing how many were removed."""

    async def unschedule(queue: Queue, handler: type[Handler]) -> int:
        removed = await queue.unschedule(handler, *_decoded(queue, handler, arguments.requests))
        print(f"removed {removed} (recurring and deferred) of {queue.spec(handler).name}")
        return 0

    return _on_queue(arguments, unschedule)


def dead_letters_command(arguments: argparse.Namespace) -> int:
    """``dead-letters list|requeue|purge MODULE:HANDLER``: the `Queue` dead-letter methods."""

    async def dead_letters(queue: Queue, handler: type[Handler]) -> int:
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
        text = f"{done} {plural(count, 'dead letter')} of {arguments.handler}"
        print(json.dumps({done: count}) if arguments.json else text)
        return 0

    return _on_queue(arguments, dead_letters)


def pause_command(arguments: argparse.Namespace) -> int:
    """``pause MODULE:HANDLER [--thread T] [--for SECONDS]``: `Queue.pause`, then what is paused."""

    async def pause(queue: Queue, handler: type[Handler]) -> int:
        await queue.pause(handler, thread=arguments.thread, for_=arguments.for_)
        what = f"thread {arguments.thread}" if arguments.thread is not None else "every thread"
        until = f" for {arguments.for_:g} s" if arguments.for_ is not None else " until resumed"
        print(f"paused {what} of {queue.spec(handler).name}{until}; paused: {_paused(await queue.paused(handler))}")
        return 0

    return _on_queue(arguments, pause)


def resume_command(arguments: argparse.Namespace) -> int:
    """``resume MODULE:HANDLER [--thread T]``: `Queue.resume`, then what is still paused."""

    async def resume(queue: Queue, handler: type[Handler]) -> int:
        await queue.resume(handler, thread=arguments.thread)
        what = f"thread {arguments.thread}" if arguments.thread is not None else "the handler"
        print(f"resumed {what} of {queue.spec(handler).name}; paused: {_paused(await queue.paused(handler))}")
        return 0

    return _on_queue(arguments, resume)


def _paused(threads: Sequence[str]) -> str:
    return ", ".join(threads) if threads else "none"


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
            f"{record.thread}/{record.order}  {when}  {plural(record.attempts, 'attempt')}  "
            f"{record.error_type}: {record.error}  {payload}"
        )
    return "\n".join(lines)
