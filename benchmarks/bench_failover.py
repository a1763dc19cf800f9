"""Durability benchmarks: what losing the Redis primary costs, measured (``docs/durability.md``).

``python -m benchmarks.bench_failover [--quick] [--failovers N] [--only cost,aof,sentinel,cluster] [--json FILE]``
(``make bench`` runs it too). Every Redis, Sentinel and worker process is started
here, on free loopback ports:

1. **cost**: `register` calls per second with ``QUEUE_REGISTER_REPLICAS`` 0 and 1,
   on a primary with one replica: one-request calls one after the other, and 16
   producers at once;
2. **aof**: a single Redis with AOF ``everysec``, with ``always``, and without
   persistence, ``kill -9``-ed ``--failovers`` times under load and restarted at
   once: acknowledged requests lost, duplicates, and when work resumed;
3. **sentinel**: a primary, a replica and three Sentinels; producers registering,
   2 worker processes draining, the primary killed ``--failovers`` times
   (`benchmarks.failover_run`), with ``QUEUE_REGISTER_REPLICAS`` 0 and 1: acknowledged
   requests lost, duplicates, and the time until registrations and performs
   resumed; then the same with the replica lagging half a second behind when the
   primary dies (`SentinelGroup.kill_primary_lagging`);
4. **cluster**: the same on a 3-primary, 3-replica Redis Cluster.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from benchmarks.failover_run import Report, Setup, cluster_setup, run_failovers, sentinel_setup
from benchmarks.worker_process import ChaosHandler
from sharded_queue import Queue, Settings, StorageError
from sharded_queue.testing import RedisServer
from sharded_queue.testing_servers import FAST_SYNC, ReplicatedCluster, SentinelGroup, info, wait_for

# --- the cost of waiting for a replica ------------------------------------------------------------


async def register_rate(url: str, replicas: int, calls: int, producers: int) -> float:
    """One-request `register` calls per second, ``producers`` at once, ``calls`` in all."""
    settings = Settings(key_prefix=f"cost{replicas}x{producers}", register_replicas=replicas)
    queues = [Queue(url, settings=settings) for _ in range(producers)]
    for queue in queues:
        await queue.register(ChaosHandler, [0, -1])  # connected, scripts loaded
    each = calls // producers

    async def produce(queue: Queue, first: int) -> None:
        for seq in range(first, first + each):
            await queue.register(ChaosHandler, [seq % 64, seq])

    started = time.perf_counter()
    await asyncio.gather(*(produce(queue, index * each) for index, queue in enumerate(queues)))
    elapsed = time.perf_counter() - started
    for queue in queues:
        await queue.storage.client.flushdb()
        await queue.close()
    return each * producers / elapsed


async def cost(directory: Path, quick: bool) -> dict[str, Any]:
    (directory / "primary").mkdir()
    (directory / "replica").mkdir()
    primary = RedisServer(directory / "primary", *FAST_SYNC)
    replica = RedisServer(directory / "replica", *FAST_SYNC, "--replicaof", "127.0.0.1", str(primary.port))
    wait_for(lambda: info(replica.port, "replication").get("master_link_status") == "up", 30, "replica in sync")
    rows: dict[str, Any] = {}
    try:
        for producers in (1, 16):
            calls = (3000 if quick else 20_000) * (2 if producers > 1 else 1)
            rates = {0: 0.0, 1: 0.0}
            for replicas in (0, 1, 0, 1):  # interleaved, the better of two each: less of the machine's noise
                rates[replicas] = max(rates[replicas], await register_rate(primary.url, replicas, calls, producers))
            rows[f"{producers} producer{'s' if producers > 1 else ''}"] = {
                "replicas_0_calls_per_s": rates[0],
                "replicas_1_calls_per_s": rates[1],
                "cost": 1 - rates[1] / rates[0],
            }
    finally:
        replica.stop()
        primary.stop()
    for name, row in rows.items():
        print(
            f"  {name}: {row['replicas_0_calls_per_s']:,.0f} calls/s with QUEUE_REGISTER_REPLICAS=0, "
            f"{row['replicas_1_calls_per_s']:,.0f} with 1 ({row['cost']:.0%} fewer)"
        )
    return rows


# --- a single Redis, killed: what its persistence keeps -----------------------------------------------


async def aof(directory: Path, count: int) -> dict[str, Any]:
    """A single Redis ``kill -9``-ed ``count`` times under load (`benchmarks.failover_run`), restarted at once
    from its files, as a supervisor would: what was lost, performed twice, and when work resumed."""
    rows = {}
    for name, persistence in (
        ("no persistence", ()),
        ("AOF everysec", ("--appendonly", "yes", "--appendfsync", "everysec")),
        ("AOF always", ("--appendonly", "yes", "--appendfsync", "always")),
    ):
        where = directory / name.replace(" ", "-")
        for part in ("redis", "run", "clock"):
            (where / part).mkdir(parents=True)
        server, clock = RedisServer(where / "redis", *persistence), RedisServer(where / "clock")

        def kill(server: RedisServer = server) -> RedisServer:
            server.stop(kill=True)
            return server

        setup = Setup(server.url, kill, RedisServer.start, lambda _: None)
        try:
            report = await run_failovers(setup, where / "run", clock.url, count, replicas=0)
        finally:
            server.stop()
            clock.stop()
        rows[name] = _row(report)
        print(f"  {name}: {json.dumps(rows[name])}")
    return rows


# --- failovers -------------------------------------------------------------------------------------


async def failovers(
    name: str, make: Callable[[Path], Any], setup: Callable[[Any], Setup], directory: Path, count: int
) -> dict[str, Any]:
    """Run ``count`` failovers with QUEUE_REGISTER_REPLICAS 0, then 1, each on a fresh set-up."""
    rows = {}
    for replicas in (0, 1):
        where = directory / f"{name}-{replicas}"
        (where / "servers").mkdir(parents=True)
        (where / "run").mkdir()
        (where / "clock").mkdir()
        clock = RedisServer(where / "clock")
        servers = await asyncio.to_thread(make, where / "servers")
        try:
            report = await run_failovers(setup(servers), where / "run", clock.url, count, replicas)
        finally:
            servers.stop()
            clock.stop()
        rows[f"replicas={replicas}"] = _row(report)
        print(f"  {name}, QUEUE_REGISTER_REPLICAS={replicas}: {json.dumps(rows[f'replicas={replicas}'])}")
    return rows


def _row(report: Report) -> dict[str, Any]:
    summary = report.summary()
    summary["lost_examples"] = [list(message) for message in report.lost[:5]]
    summary["worker_log_lines"] = {str(pid): lines for pid, lines in report.logs.items()}
    return summary


def _lagging(group: SentinelGroup) -> Setup:
    return sentinel_setup(group, lagging=True)


# --- the run ---------------------------------------------------------------------------------------


async def run(only: set[str], count: int, quick: bool) -> dict[str, Any]:
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="sq-bench-failover-") as name:
        directory = Path(name)
        steps: list[tuple[str, str, Callable[[], Awaitable[Any]]]] = [
            ("cost", "register with QUEUE_REGISTER_REPLICAS=1 against 0", lambda: cost(directory, quick)),
            ("aof", f"a single Redis killed (kill -9) {count} times under load", lambda: aof(directory, count)),
            (
                "sentinel",
                f"Sentinel: {count} failovers under load",
                lambda: failovers("sentinel", SentinelGroup, sentinel_setup, directory, count),
            ),
            (
                "sentinel",
                f"Sentinel: {count} failovers while the replica lags 0.5 s behind",
                lambda: failovers("lagging", SentinelGroup, _lagging, directory, count),
            ),
            (
                "cluster",
                f"Redis Cluster (3 primaries, 3 replicas): {count} failovers under load",
                lambda: failovers("cluster", ReplicatedCluster, cluster_setup, directory, count),
            ),
        ]
        for key, title, step in steps:
            if key in only:
                print(title, flush=True)
                results[title] = await step()
    return results


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m benchmarks.bench_failover``."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_failover", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="3 failovers, fewer calls and kills: a smoke run")
    parser.add_argument("--failovers", type=int, default=None, help="failovers per run (default 20)")
    parser.add_argument("--only", default="cost,aof,sentinel,cluster", help="comma-separated sections to run")
    parser.add_argument("--json", type=Path, default=None, help="also write the results to this file")
    arguments = parser.parse_args(argv)
    count = arguments.failovers or (3 if arguments.quick else 20)
    try:
        results = asyncio.run(run(set(arguments.only.split(",")), count, arguments.quick))
    except StorageError as exc:
        print(f"failed: {exc}")
        return 1
    if arguments.json is not None:
        arguments.json.write_text(json.dumps(results, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
