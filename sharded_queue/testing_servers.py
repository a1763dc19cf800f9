"""Throwaway replicated Redis set-ups on loopback ports, for failover tests and benchmarks.

`SentinelGroup` is a primary, its replicas and three Sentinels (``redis-server
--sentinel``); `ReplicatedCluster` is a Redis Cluster whose primaries have
replicas. Both can kill a primary (``kill -9``), wait for the promotion of a
replica and bring the killed node back as a replica, so that a test or a
benchmark can fail over again and again. Every process is started here, on a
free loopback port, in a directory of its own, and stopped by `stop`; nothing
here touches a server it did not start. Blocking calls: from asyncio code, run
them in a thread (``asyncio.to_thread``).
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import redis

from .testing import RedisServer, free_cluster_port, free_port

FAST_SYNC = ("--repl-diskless-sync-delay", "0")
"""redis-server arguments: a replica's full sync starts at once (not after 5 s waiting for others)."""


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll ``condition`` (a blocking call) every 20 ms until it holds; `TimeoutError` naming ``what`` if not."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if condition():
                return
        except (redis.RedisError, OSError):
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout:g} s")
        time.sleep(0.02)


def _client(port: int) -> redis.Redis:
    return redis.Redis(port=port, socket_timeout=2, socket_connect_timeout=2, decode_responses=True)


def info(port: int, section: str) -> dict[str, object]:
    with _client(port) as client:
        return dict(client.info(section))


class SentinelServer:
    """One ``redis-server --sentinel`` process monitoring ``service`` at a primary (quorum 2)."""

    def __init__(self, directory: Path, service: str, primary: int, down_after_ms: int, failover_ms: int) -> None:
        self.port = free_port()
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.config = directory / "sentinel.conf"
        self.config.write_text(
            f"port {self.port}\nbind 127.0.0.1\ndir {directory}\nlogfile {directory / 'sentinel.log'}\n"
            f"sentinel monitor {service} 127.0.0.1 {primary} 2\n"
            f"sentinel down-after-milliseconds {service} {down_after_ms}\n"
            f"sentinel failover-timeout {service} {failover_ms}\n"
            f"sentinel parallel-syncs {service} 1\n"
        )
        self.process: subprocess.Popen[bytes] | None = None
        binary = shutil.which("redis-server")
        assert binary is not None
        self.process = subprocess.Popen(
            [binary, str(self.config), "--sentinel"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        wait_for(lambda: bool(_client(self.port).ping()), 10, f"Sentinel on port {self.port}")

    def primary_port(self, service: str) -> int | None:
        """The primary's port as this Sentinel sees it."""
        with _client(self.port) as client:
            address = client.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", service)
        return int(address[1]) if address else None

    def healthy_replicas(self, service: str) -> set[int]:
        """Ports of the replicas this Sentinel may promote (known, answering: no other flag than ``slave``)."""
        with _client(self.port) as client:
            replicas = client.execute_command("SENTINEL", "REPLICAS", service)
        return {int(replica["port"]) for replica in replicas if replica["flags"] == "slave"}

    def settled(self, service: str) -> bool:
        """Whether this Sentinel sees the primary up and runs no failover of it."""
        with _client(self.port) as client:
            return bool(client.execute_command("SENTINEL", "MASTER", service)["flags"] == "master")

    def peers(self, service: str) -> int:
        """How many other Sentinels this one knows (they find each other through the primary)."""
        with _client(self.port) as client:
            return len(client.execute_command("SENTINEL", "SENTINELS", service))

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        self.process = None


class SentinelGroup:
    """A primary, ``replicas`` replicas and ``sentinels`` Sentinels monitoring them, on loopback.

    Sentinel notices a dead primary after ``down_after_ms`` and promotes a replica;
    `url` is the ``redis+sentinel://`` URL of the group. Persistence is off unless
    ``extra`` (redis-server arguments of every data node) turns it on.
    """

    def __init__(
        self,
        directory: Path,
        replicas: int = 1,
        sentinels: int = 3,
        service: str = "sq",
        extra: tuple[str, ...] = (),
        down_after_ms: int = 2000,
        failover_ms: int = 4000,
    ) -> None:
        self.service = service
        self.directory = directory
        self.extra = extra = (*FAST_SYNC, *extra)
        primary = RedisServer(self._dir("node0"), *extra)
        self.nodes = [primary]
        for index in range(1, replicas + 1):
            self.nodes.append(RedisServer(self._dir(f"node{index}"), *extra, *self._replica_of(primary.port)))
        for node in self.nodes[1:]:
            self._wait_linked(node, 30)
        self.sentinels = [
            SentinelServer(directory / f"sentinel{index}", service, primary.port, down_after_ms, failover_ms)
            for index in range(sentinels)
        ]
        self._wait_watched(primary.port, {node.port for node in self.nodes[1:]}, 30)
        wait_for(
            lambda: all(sentinel.peers(service) == sentinels - 1 for sentinel in self.sentinels),
            30,
            "Sentinels knowing each other",
        )

    def _dir(self, name: str) -> Path:
        path = self.directory / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    @staticmethod
    def _replica_of(port: int) -> tuple[str, ...]:
        return ("--replicaof", "127.0.0.1", str(port))

    @property
    def url(self) -> str:
        """``redis+sentinel://`` URL of the group: every Sentinel, the service name, database 0."""
        hosts = ",".join(f"127.0.0.1:{sentinel.port}" for sentinel in self.sentinels)
        return f"redis+sentinel://{hosts}/{self.service}/0"

    def primary(self) -> RedisServer:
        """The node the Sentinels name primary (a majority of those answering)."""
        ports = [port for port in self._sentinel_views() if port is not None]
        port = max(set(ports), key=ports.count)
        return next(node for node in self.nodes if node.port == port)

    def _sentinel_views(self) -> list[int | None]:
        views = []
        for sentinel in self.sentinels:
            try:
                views.append(sentinel.primary_port(self.service))
            except (redis.RedisError, OSError):
                views.append(None)
        return views

    def kill_primary(self) -> RedisServer:
        """``kill -9`` the primary; returns its node (stopped)."""
        node = self.primary()
        node.stop(kill=True)
        return node

    def kill_primary_lagging(self, seconds: float = 0.5, filler_mb: int = 32) -> RedisServer:
        """``kill -9`` the primary while its replicas lag ``seconds`` behind it; returns its node (stopped).

        The replicas are stopped (SIGSTOP), the primary writes a ``filler_mb`` MB
        key (``testing:filler``), which fills the sockets' buffers to them, so that
        what it is written next waits in the primary's own memory, as behind a slow
        link; ``seconds`` later the primary is killed, then the replicas go on.
        """
        node = self.primary()
        replicas = [other for other in self.nodes if other is not node and other.process is not None]
        for replica in replicas:
            assert replica.process is not None
            replica.process.send_signal(signal.SIGSTOP)
        try:
            with _client(node.port) as client:
                client.set("testing:filler", b"x" * (filler_mb << 20))
            time.sleep(seconds)  # the replicas fall this far behind: the scenario, not a wait for a condition
            node.stop(kill=True)
        finally:
            for replica in replicas:
                if replica.process is not None:
                    replica.process.send_signal(signal.SIGCONT)
        return node

    def wait_promoted(self, old: RedisServer, timeout: float = 60) -> RedisServer:
        """Wait until every Sentinel names another primary, which says it is one; returns it."""

        def promoted() -> bool:
            views = self._sentinel_views()
            if len(set(views)) != 1 or views[0] == old.port:
                return False
            port = views[0]
            return port is not None and info(port, "replication")["role"] == "master"

        wait_for(promoted, timeout, f"a replica promoted in place of port {old.port}")
        wait_for(lambda: all(s.settled(self.service) for s in self.sentinels), timeout, "the failover finished")
        return self.primary()

    def rejoin(self, node: RedisServer, timeout: float = 60) -> None:
        """Start a stopped node again as a replica of the current primary (empty: it syncs in full)."""
        primary = self.primary()
        node.extra = (*self.extra, *self._replica_of(primary.port))
        node.start()
        self._wait_linked(node, timeout)
        self._wait_watched(primary.port, {other.port for other in self.nodes if other is not primary}, timeout)

    def _wait_linked(self, node: RedisServer, timeout: float) -> None:
        wait_for(
            lambda: info(node.port, "replication").get("master_link_status") == "up",
            timeout,
            f"replica on port {node.port} in sync",
        )

    def _wait_watched(self, primary: int, replicas: set[int], timeout: float) -> None:
        """Until every Sentinel knows the primary and would promote each of ``replicas``."""
        wait_for(
            lambda: all(
                sentinel.primary_port(self.service) == primary and replicas <= sentinel.healthy_replicas(self.service)
                for sentinel in self.sentinels
            ),
            timeout,
            "Sentinels watching the primary and its replicas",
        )

    def stop(self) -> None:
        """Stop every process of the group."""
        for sentinel in self.sentinels:
            sentinel.stop()
        for node in self.nodes:
            node.stop()


class ReplicatedCluster:
    """A Redis Cluster of ``primaries`` primaries with ``replicas`` replicas each, on loopback.

    A primary that stops answering for ``node_timeout_ms`` (None: Redis's default,
    15 s) is failed over to its replica by the cluster itself. `url` is its
    ``redis+cluster://`` URL.
    """

    def __init__(
        self, directory: Path, primaries: int = 3, replicas: int = 1, node_timeout_ms: int | None = 1000
    ) -> None:
        timeout = () if node_timeout_ms is None else ("--cluster-node-timeout", str(node_timeout_ms))
        self.nodes: list[RedisServer] = []
        for index in range(primaries * (1 + replicas)):
            node_dir = directory / f"node{index}"
            node_dir.mkdir(parents=True)
            self.nodes.append(
                RedisServer(
                    node_dir,
                    *("--cluster-enabled", "yes", "--cluster-config-file", str(node_dir / "nodes.conf")),
                    *timeout,
                    *FAST_SYNC,
                    port=free_cluster_port(),
                )
            )
        addresses = [f"127.0.0.1:{node.port}" for node in self.nodes]
        subprocess.run(
            ["redis-cli", "--cluster", "create", *addresses, "--cluster-replicas", str(replicas), "--cluster-yes"],
            check=True,
            capture_output=True,
            timeout=60,
        )
        self.primary_count = primaries
        self.wait_healthy(60)

    @property
    def url(self) -> str:
        """``redis+cluster://`` URL of the first live node (the client learns the others from it)."""
        node = next(node for node in self.nodes if node.process is not None)
        return f"redis+cluster://127.0.0.1:{node.port}"

    def roles(self) -> dict[int, str]:
        """Port -> ``master`` or ``slave`` of each node not flagged failing, as a live node sees the cluster."""
        for node in self.nodes:
            if node.process is None:
                continue
            with _client(node.port) as client:
                nodes = client.execute_command("CLUSTER NODES")
            return {
                int(address.split("@")[0].rsplit(":", 1)[1]): "master" if "master" in state["flags"] else "slave"
                for address, state in nodes.items()
                if "fail" not in state["flags"]
            }
        raise RuntimeError("no live cluster node")

    def primaries(self) -> list[RedisServer]:
        """The live primaries."""
        roles = self.roles()
        return [node for node in self.nodes if node.process is not None and roles.get(node.port) == "master"]

    def wait_healthy(self, timeout: float) -> None:
        """Until every live node says ``cluster_state:ok`` and knows as many primaries as it has replicas' worth."""
        live = [node for node in self.nodes if node.process is not None]

        def healthy() -> bool:
            for node in live:
                with _client(node.port) as client:
                    if client.execute_command("CLUSTER INFO").get("cluster_state") != "ok":
                        return False
            return all(info(node.port, "replication").get("master_link_status", "up") == "up" for node in live)

        wait_for(healthy, timeout, "the cluster healthy")

    def kill_primary(self, index: int = 0) -> RedisServer:
        """``kill -9`` the ``index``-th live primary; returns its node (stopped)."""
        node = self.primaries()[index]
        node.stop(kill=True)
        return node

    def wait_promoted(self, old: RedisServer, timeout: float = 60) -> None:
        """Until a replica has taken over the killed primary's slots and the cluster is healthy again."""
        wait_for(
            lambda: len(self.primaries()) == self.primary_count,
            timeout,
            f"a replica promoted in place of port {old.port}",
        )
        self.wait_healthy(timeout)

    def rejoin(self, node: RedisServer, timeout: float = 60) -> None:
        """Start a stopped node again: it rejoins as a replica of the primary that replaced it and syncs."""
        node.start()
        wait_for(lambda: self.roles().get(node.port) == "slave", timeout, f"node {node.port} back as a replica")
        self.wait_healthy(timeout)

    def stop(self) -> None:
        """Stop every node."""
        for node in self.nodes:
            node.stop()


class RedisClusterNodes(ReplicatedCluster):
    """Three cluster-enabled redis-server processes joined into one cluster (no replicas), on free
    loopback ports, their files in ``directory``; for tests and benchmarks. `stop` ends them."""

    def __init__(self, directory: Path, count: int = 3) -> None:
        super().__init__(directory, primaries=count, replicas=0, node_timeout_ms=None)
