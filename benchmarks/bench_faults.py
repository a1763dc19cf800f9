"""Fault benchmarks: Redis memory per waiting message, and what one huge `register` costs others.

``python -m benchmarks.bench_faults [--quick]`` (``make bench`` runs it too). It
starts its own ``redis-server`` on a free loopback port and prints:

1. **memory**: one-request `register` calls spread over 1,000 threads, as a web
   tier registers; Redis ``used_memory`` per waiting message against the
   envelope's size (target: at most 1.5 times the envelope + 40 bytes), the calls
   per second, and how many registration stamps are kept;
2. **huge register**: one `register` of 1,000,000 requests while another
   client (a process of its own) PINGs every millisecond: the longest PING,
   with the default ``QUEUE_REGISTER_CHUNK`` and with the whole call as one
   chunk;
3. **wake-ups**: 1, 4 and 12 idle worker processes (``sharded-queue worker``,
   2 loops each, coordinator delay 60 s so that only wake-ups make them poll)
   and one-request registrations on fresh threads, a registration once the
   previous one was performed: the workers' coordinator polls, calls to
   Redis, and Redis commands counting those its scripts run, per
   registration (Redis ``MONITOR``), less what they send while idle
   (heartbeats).
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from benchmarks import quick_main
from sharded_queue import Handler, Queue, RequestRoute, Route, Settings
from sharded_queue.testing import RedisServer


@dataclass
class Notice:
    user: int
    text: str


class Notices(Handler):
    name = "bench:notices"

    @classmethod
    async def route(cls, *requests: Notice) -> list[RequestRoute]:
        return [RequestRoute(r, Route(thread=r.user % 1000)) for r in requests]

    async def perform(self, *requests: Notice) -> None: ...


class Tiny(Handler):
    name = "bench:tiny"

    @classmethod
    async def route(cls, *requests: int) -> list[RequestRoute]:
        return [RequestRoute(r, Route(thread=r % 16)) for r in requests]

    async def perform(self, *requests: int) -> None: ...


async def memory(url: str, messages: int) -> dict[str, float]:
    """Register ``messages`` one per call over 1,000 threads; Redis bytes per waiting message."""
    queue = Queue(url, settings=Settings(key_prefix="mem"))
    client = queue.storage.client
    request = Notice(123_456, "x" * 21)  # a 69-byte envelope, as in the report this answers
    envelope = len(queue.spec(Notices).codec.encode([request], time.time()))
    await queue.register(Notices, Notice(0, ""))  # scripts loaded, structures created
    await client.flushall()
    before = (await client.info("memory"))["used_memory"]
    started = time.perf_counter()
    for user in range(messages):
        await queue.register(Notices, Notice(user, request.text))
    elapsed = time.perf_counter() - started
    after = (await client.info("memory"))["used_memory"]
    per_message = (after - before) / messages
    stamps = await client.zcard(queue.storage.keys.stamps())
    await queue.close()
    return {
        "messages": messages,
        "calls_per_s": messages / elapsed,
        "envelope_bytes": envelope,
        "redis_bytes_per_message": per_message,
        "target_bytes": 1.5 * envelope + 40,
        "stamps_kept": stamps,
    }


PINGER = """
import sys, threading, time, redis
probe, longest, done = redis.Redis.from_url(sys.argv[1]), 0.0, threading.Event()
threading.Thread(target=lambda: (sys.stdin.read(), done.set()), daemon=True).start()
print("ready", flush=True)
while not done.is_set():
    started = time.perf_counter()
    probe.ping()
    longest = max(longest, time.perf_counter() - started)
    time.sleep(0.001)
print(longest * 1000, flush=True)
"""


async def huge_register(url: str, requests: int, chunk: int) -> dict[str, float]:
    """The longest PING another client (a process of its own) waits while one `register` writes ``requests``."""
    queue = Queue(url, settings=Settings(key_prefix=f"huge{chunk}", register_chunk=chunk))
    await queue.register(Tiny, 0)
    pinger = subprocess.Popen(
        [sys.executable, "-c", PINGER, url], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert pinger.stdout is not None and pinger.stdin is not None
    pinger.stdout.readline()  # ready
    started = time.perf_counter()
    await queue.register(Tiny, *range(requests))
    elapsed = time.perf_counter() - started
    longest, _ = pinger.communicate("")
    await queue.storage.client.flushall()
    await queue.close()
    return {"requests": requests, "chunk": chunk, "register_s": elapsed, "longest_ping_ms": float(longest)}


class Woken(Handler):
    """One-request registrations on fresh threads (``sharded-queue worker benchmarks.bench_faults:Woken``)."""

    name = "bench:woken"

    @classmethod
    async def route(cls, *requests: int) -> list[RequestRoute]:
        return [RequestRoute(r, Route(thread=r)) for r in requests]

    async def perform(self, *requests: int) -> None: ...


def wake_ups(url: str, processes: int, registrations: int) -> dict[str, float]:
    """Polls and commands per registration with ``processes`` idle worker processes."""
    import os
    import threading

    import redis

    from sharded_queue.storage import Storage, connect

    settings = Settings(key_prefix="woken", coordinator_delay=60, lease_ttl=1.5)
    env = {**os.environ, "QUEUE_KEY_PREFIX": "woken", "QUEUE_COORDINATOR_DELAY": "60", "QUEUE_LEASE_TTL": "1.5"}
    env.update(QUEUE_WORKER_EMPTY_LIMIT="1", PYTHONPATH=str(Path(__file__).resolve().parent.parent))
    command = [sys.executable, "-m", "sharded_queue", "worker", "benchmarks.bench_faults:Woken", "--url", url]
    workers = [
        subprocess.Popen([*command, "--loops", "2"], env=env, stderr=subprocess.DEVNULL) for _ in range(processes)
    ]
    sha = Storage(connect(url, settings), "woken")._candidates.sha
    counts = {"commands": 0, "calls": 0, "polls": 0}
    idle = {"commands": 0.0, "calls": 0.0, "polls": 0.0, "seconds": 0.0}  # per second idle; the run's length
    own: list[str] = []  # the benchmark's connection: its commands are not counted
    stop = threading.Event()

    def monitor() -> None:
        with redis.Redis.from_url(url).monitor() as feed:
            for line in feed.listen():
                if stop.is_set():
                    return
                if line.get("client_type") == "lua":  # run by a script the count already has
                    counts["commands"] += bool(own)
                elif own and f"{line['client_address']}:{line['client_port']}" not in own:
                    counts["commands"] += 1
                    counts["calls"] += 1
                    counts["polls"] += sha in line["command"]

    async def register() -> None:
        queue = Queue(url, settings=settings)
        while len(await queue.storage.live_workers()) < processes:
            await asyncio.sleep(0.1)
        await asyncio.sleep(1.0)  # two heartbeats: every worker has seen the others
        own.append((await queue.storage.client.client_info())["addr"])
        await asyncio.sleep(2.0)  # idle: heartbeats only, subtracted below
        idle.update({name: count / 2.0 for name, count in counts.items()})
        counts.update(commands=0, calls=0, polls=0)
        started = time.monotonic()
        for number in range(registrations):
            await queue.register(Woken, number)
            while await queue.pending(Woken):
                await asyncio.sleep(0.02)
            await asyncio.sleep(0.2)  # the loop lets go of the thread and idles again
        idle["seconds"] = time.monotonic() - started
        own.clear()
        await queue.close()

    watcher = threading.Thread(target=monitor, daemon=True)
    watcher.start()
    try:
        asyncio.run(register())
    finally:
        stop.set()
        for worker in workers:
            worker.terminate()
        for worker in workers:
            worker.wait(10)
        redis.Redis.from_url(url).ping()  # wakes the monitor to see stop
    return {
        "processes": processes,
        "polls": (counts["polls"] - idle["polls"] * idle["seconds"]) / registrations,
        "calls": (counts["calls"] - idle["calls"] * idle["seconds"]) / registrations,
        "commands": (counts["commands"] - idle["commands"] * idle["seconds"]) / registrations,
        "idle_calls_per_s": idle["calls"],
    }


async def run(quick: bool) -> None:
    with tempfile.TemporaryDirectory(prefix="sq-bench-faults-") as directory:
        server = RedisServer(Path(directory))
        try:
            print("memory per waiting message (one-request register calls over 1,000 threads)")
            result = await memory(server.url, 20_000 if quick else 200_000)
            verdict = "met" if result["redis_bytes_per_message"] <= result["target_bytes"] else "MISSED"
            print(
                f"  {result['messages']:,} messages at {result['calls_per_s']:,.0f} calls/s: "
                f"{result['redis_bytes_per_message']:.1f} bytes each for a {result['envelope_bytes']}-byte envelope "
                f"(target <= {result['target_bytes']:.1f}: {verdict}); stamps kept: {result['stamps_kept']}"
            )
            print("one huge register against another client's PING every 1 ms")
            size = 200_000 if quick else 1_000_000
            for chunk in (Settings().register_chunk, size):
                row = await huge_register(server.url, size, chunk)
                print(
                    f"  {row['requests']:,} requests, chunks of {row['chunk']:,}: register {row['register_s']:.2f} s, "
                    f"longest PING {row['longest_ping_ms']:.1f} ms"
                )
            print("wake-ups: per one-request registration, with idle worker processes of 2 loops")
            for processes in (1, 4, 12):
                woken = await asyncio.to_thread(wake_ups, server.url, processes, 10 if quick else 30)
                print(
                    f"  {processes:>2} processes: {woken['polls']:.1f} coordinator polls, {woken['calls']:.1f} calls "
                    f"to Redis, {woken['commands']:.1f} Redis commands with those scripts ran "
                    f"(idle heartbeats: {woken['idle_calls_per_s']:.0f} calls/s, subtracted)"
                )
        finally:
            server.stop()


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m benchmarks.bench_faults``."""
    return quick_main("python -m benchmarks.bench_faults", __doc__, run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
