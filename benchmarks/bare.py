"""The bare-metal ceiling: the same workload straight on redis-py, no library.

``python -m benchmarks.bare REDIS_URL`` speaks the protocol of
`benchmarks.workload.serve`. It talks to Redis through the same client set-up
as the library (`sharded_queue.storage.connect`: redis-py with hiredis parsing
and packing). What a queue cannot do without, and nothing else:

- register: route each call with the library runner's very ``route()``
  (`benchmarks.lib_runner.BenchHandler`, the same `Route` and `RequestRoute`
  objects), group by tube (thread, order), encode ``[enqueued_at, job]``
  envelopes with msgspec, then one non-transactional pipeline of one RPUSH per
  tube per call;
- process: ``loops`` concurrent loops; each takes a thread from a shared list,
  takes its lease (``SET NX PX``), then repeats one Lua call that checks the
  lease, trims the previous batch, renews the lease and reads the next batch;
  decodes with msgspec into the same dataclass; awaits a no-op ``perform``.

No validation of the routes, no stamps (a retried call may append twice), no
coordinator index, no orders, no heartbeat task, no retries, no dead letters,
no wake-ups: this is the floor of the work, the number the library is held to.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections import defaultdict
from typing import Any

import msgspec
import redis.asyncio as aioredis

from sharded_queue import Settings, settings
from sharded_queue.storage import connect

from .lib_runner import BenchHandler
from .workload import Counter, Job, chunks, make_jobs, serve

CYCLE = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return false
end
local ack = tonumber(ARGV[3])
if ack > 0 then
  redis.call('LTRIM', KEYS[2], ack, -1)
end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return redis.call('LRANGE', KEYS[2], 0, tonumber(ARGV[4]) - 1)
"""
RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""
LEASE_TTL_MS = 10_000
COUNTER = Counter()
URL = ""


async def perform(*requests: Job) -> None:
    """The no-op handler."""
    COUNTER.add(len(requests))


async def _setup(url: str) -> None:
    global URL
    URL = url


def _client() -> aioredis.Redis:
    """The very client the library's storage makes for this URL (hiredis packing, same timeouts)."""
    client: aioredis.Redis = connect(URL, Settings())
    return client


def tube_key(thread: str, order: str) -> str:
    """The list of one tube."""
    return f"bare:{thread}:{order}"


async def fill(command: dict[str, Any]) -> dict[str, Any]:
    """Register ``n`` jobs: per call, route, group by tube and encode, one pipeline of RPUSH per tube."""
    BenchHandler.threads = command["threads"]
    route = BenchHandler.route
    calls = chunks(make_jobs(command["n"]), command["chunk"])
    encode = msgspec.json.Encoder().encode
    client = _client()
    try:
        await client.ping()
        started, cpu = time.perf_counter(), time.process_time()
        for call in calls:
            now = time.time()
            groups: defaultdict[tuple[str, str], list[bytes]] = defaultdict(list)
            for routed in await route(*call):
                groups[routed.route.thread, routed.route.order].append(encode((now, routed.request)))
            pipe = client.pipeline(transaction=False)
            for (thread, order), payloads in groups.items():
                pipe.rpush(tube_key(thread, order), *payloads)
            await pipe.execute()
        seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    finally:
        await client.aclose()
    return {"seconds": seconds, "cpu": cpu, "registered": command["n"]}


async def drain(command: dict[str, Any]) -> dict[str, Any]:
    """Drain every thread with ``loops`` concurrent loops; time until all jobs were performed."""
    COUNTER.reset(command["n"], command.get("rss_every", 0))
    batch = command["batch"]
    decode = msgspec.json.Decoder(tuple[float, Job]).decode
    client = _client()
    cycle = client.register_script(CYCLE)
    release = client.register_script(RELEASE)
    tubes = [tube_key(str(thread), settings.default_order) for thread in range(command["threads"])]  # route()'s
    todo = tubes[:]

    async def loop() -> None:
        while todo:
            tube = todo.pop(0)
            lease, token = f"{tube}:lease", secrets.token_hex(16)
            if not await client.set(lease, token, nx=True, px=LEASE_TTL_MS):
                continue
            ack = 0
            while True:
                payloads = await cycle(keys=[lease, tube], args=[token, LEASE_TTL_MS, ack, batch])
                if not payloads:  # empty, or the lease was lost (fenced: nothing trimmed)
                    break
                await perform(*[decode(payload)[1] for payload in payloads])
                ack = len(payloads)
            await release(keys=[lease], args=[token])

    try:
        await client.ping()
        await cycle(keys=["bare:warm:lease", "bare:warm"], args=["-", LEASE_TTL_MS, 0, 1])  # load the scripts
        await release(keys=["bare:warm:lease"], args=["-"])
        assert COUNTER.done is not None
        started, cpu = time.perf_counter(), time.process_time()
        loops: asyncio.Future[Any] = asyncio.gather(*[loop() for _ in range(command["loops"])])
        finished: asyncio.Future[Any] = asyncio.create_task(COUNTER.done.wait())
        await asyncio.wait([finished, loops], timeout=command.get("timeout", 300), return_when="FIRST_COMPLETED")
        # The same stop as the library's: every job performed.
        seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
        finished.cancel()
        await asyncio.wait_for(loops, 60)
        if not COUNTER.done.is_set():
            raise RuntimeError(f"drain did not finish: {COUNTER.count}/{command['n']} performed")
        left = sum([await client.llen(tube) for tube in tubes])
    finally:
        await client.aclose()
    return COUNTER.report(seconds, cpu, left)


if __name__ == "__main__":
    serve({"fill": fill, "drain": drain}, _setup)
